"""``fgattr train-sae``: train one SAE per layer of a timm ViT on an image folder
(:mod:`captum_fgattr.bench.train_saes`).

The model runs once over the images; patch-token activations of every requested layer go to an
on-disk cache (``numpy.memmap``), from which each layer's SAE is trained (one run per learning rate,
selected by the thesis rule; a selection at the edge of the --lr grid extends it, --lr-extensions). Output::

    OUTPUT/layer_{L}/config.json, sae.safetensors   the selected SAE of block L (0-based)
    OUTPUT/metrics.csv                              one row per (layer, lr) run, ``selected`` marks the pick;
                                                    heldout_* columns: explained variance, dead fraction
                                                    and L0 on the held-out images' tokens
    OUTPUT/run.json                                 the command's settings and the held-out images

A seeded, per-class fraction of the images (--heldout-fraction, default 0.1) is held out of SAE
training: the SAEs are judged on tokens they never saw, not only on their training tokens.

--seeds 0,1,2 trains one SAE per layer and SAE seed (initialisation and token order), to replicate a study across
SAE seeds: the model runs once, all seeds train on the one activation cache, each seed sweeps and selects its own
learning rate, and each seed's SAEs equal those of a run with --seeds s alone. Output::

    OUTPUT/seed_{s}/layer_{L}/config.json, sae.safetensors   the selected SAE of block L for seed s
                                                             (fgattr run --saes OUTPUT/seed_{s})
    OUTPUT/metrics.csv                                       one row per (seed, layer, lr) run, a seed column first

Printed: per layer and seed the selected learning rate with the held-out EV, L0 and dead fraction, then per layer
the mean and range of the held-out EV over the seeds. --seed still seeds the held-out split (the same images for
every SAE seed) and a model without checkpoint.
"""
from __future__ import annotations

import argparse
import sys
import time

from captum_fgattr.bench.cli.main import SIZED_LAYERS, json_argument

__all__ = ["add_parser", "sweep_lines", "seed_list"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``train-sae`` on the ``fgattr`` sub-command parser."""
    p = subparsers.add_parser(
        "train-sae",
        help="train sparse autoencoders on a ViT's residual stream (patch tokens) over an image folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=None,
                   help="the run configuration file of fgattr run (JSON / YAML): its model section and data "
                   "preprocessing (kind, resize, mean, std) are used, so both commands see the same model; flags override")
    m = p.add_argument_group("model (the same spec as fgattr run)")
    m.add_argument("--model", default=None, help="timm:<name> (the prefix is optional, e.g. vit_base_patch16_224) or "
                   "clip:<open_clip name>; random init unless --checkpoint")
    m.add_argument("--checkpoint", default=None, help="local state dict (.safetensors / .pt / .pth)")
    m.add_argument("--num-classes", type=int, default=None, help="classifier classes of the checkpoint")
    m.add_argument("--img-size", type=int, default=None, help="model input size (default: the model's)")
    m.add_argument("--model-kwargs", type=json_argument, default=None, metavar="JSON",
                   help='further constructor arguments of the timm ViT / open_clip model, e.g. \'{"patch_size": 4, '
                   '"embed_dim": 64, "depth": 6, "num_heads": 4}\'; checked against what the constructor accepts, '
                   'weight-loading switches refused (model.kwargs in a configuration file)')
    d = p.add_argument_group("data")
    d.add_argument("--data", required=True, help="image folder root/<class>/<image>")
    d.add_argument("--resize", type=int, default=None, help="resize shorter side before center-crop (default: img size)")
    d.add_argument("--mean", type=float, nargs="+", default=None, help="normalisation mean (default: as fgattr run: the model's)")
    d.add_argument("--std", type=float, nargs="+", default=None, help="normalisation std (default: as fgattr run: the model's)")
    d.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    d.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    d.add_argument("--heldout-fraction", type=float, default=0.1,
                   help="fraction of each class's images held out of training for the held-out metrics "
                   "(default 0.1, at least one image per class with two or more; 0: none)")
    s = p.add_argument_group("SAE")
    s.add_argument("--layers", type=int, nargs="+", default=None,
                   help=f"0-based block indices (timm blocks[i]); default: {SIZED_LAYERS}")
    s.add_argument("--expansion", type=int, default=None,
                   help="n_features = expansion * width (default from the width: 64 from 512 up, 32 from 256, else 16)")
    s.add_argument("--activation", choices=("topk", "relu"), default="topk")
    s.add_argument("--k", type=int, default=None, help="TopK active features (default width / 6: 128 for 768, 16 for 96)")
    s.add_argument("--normalize", choices=("none", "layer_norm", "constant_norm_rescale"), default="none")
    s.add_argument("--l1", type=float, default=1e-5, help="L1 coefficient for --activation relu")
    t = p.add_argument_group("training")
    t.add_argument("--lr", type=float, nargs="+", default=[5e-4, 1e-3], help="one or several (sweep) learning rates")
    t.add_argument("--lr-extensions", type=int, default=2,
                   help="a learning rate selected at the edge of a sweep of two or more extends the grid by one step "
                   "(its own factor there) beyond that edge, up to this many times per layer (default 2; 0: never); "
                   "a selection still at an edge is warned about")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--batch-tokens", type=int, default=None,
                   help="tokens per step (default from the training tokens: a power of two near tokens/256, 64..4096)")
    t.add_argument("--warmup-steps", type=int, default=None,
                   help="linear warm-up steps (default 5%% of all steps, at most 500 as in the thesis)")
    t.add_argument("--ev-threshold", type=float, default=0.95, help="selection rule: EV above this, then fewest dead")
    t.add_argument("--seed", type=int, default=0,
                   help="seed of the held-out split, of a model without checkpoint and, without --seeds, of the SAEs")
    t.add_argument("--seeds", type=seed_list, default=None, metavar="S,S,...",
                   help="several SAE seeds (initialisation and token order), e.g. 0,1,2: one SAE per layer and seed "
                   "in OUTPUT/seed_{s}/layer_{L}/ from one activation cache, a seed column in metrics.csv, and the "
                   "mean and range of the held-out EV over the seeds printed per layer")
    t.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    o = p.add_argument_group("output")
    o.add_argument("--output", required=True, help="output folder")
    o.add_argument("--cache-dir", default=None, help="activation cache folder (default OUTPUT/activation_cache)")
    o.add_argument("--cache-dtype", choices=("float32", "float16"), default="float32")
    o.add_argument("--keep-cache", action="store_true", help="keep the activation cache after training")
    o.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_main)
    return p


def seed_list(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``: distinct SAE seeds >= 0 (``--seeds``)."""
    try:
        seeds = [int(v) for v in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}; expected distinct ints >= 0 separated by commas, e.g. 0,1,2")
    return seeds


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _print_table(rows: list[dict[str, object]], fields: tuple[str, ...]) -> None:
    cells = [[_fmt(r.get(f, "")) for f in fields] for r in rows]
    widths = [max(len(f), *(len(c[i]) for c in cells)) for i, f in enumerate(fields)]
    print("  ".join(f.rjust(w) for f, w in zip(fields, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))


def _measured(row: dict[str, object], field: str) -> bool:
    return row.get(field) not in (None, "")


def sweep_lines(rows: list[dict[str, object]], given: list[float]) -> list[str]:
    """One line per layer (per layer and SAE seed where the rows have a ``seed``): the selected learning rate among
    those swept, the rates beyond the ``given`` grid (its extensions), the selected SAE's held-out EV, L0 and dead
    fraction where measured and, if the selection is still at an edge of the swept rates, that warning. With seeds,
    each layer's lines end with one over its seeds: the mean and range of the selected SAEs' held-out EV (of their
    training-token EV where no images were held out)."""
    from captum_fgattr.sae.train import beyond_edge  # imports torch: only when the command runs

    lines = []
    for layer in sorted({int(row["layer"]) for row in rows}):
        of_layer = [row for row in rows if int(row["layer"]) == layer]
        seeds = sorted({int(row["seed"]) for row in of_layer if "seed" in row})
        picks = []
        for seed in seeds or [None]:
            runs = sorted((row for row in of_layer if seed is None or int(row["seed"]) == seed),
                          key=lambda row: float(row["lr"]))
            lrs = [float(row["lr"]) for row in runs]
            pick = next(row for row in runs if str(row["selected"]) == "True")
            chosen = float(pick["lr"])
            picks.append(pick)
            added = [lr for lr in lrs if lr not in given]
            line = f"block {layer}{'' if seed is None else f', seed {seed}'}: lr {chosen:g} selected of "
            line += ", ".join(f"{lr:g}" for lr in lrs)
            line += f" (beyond the given grid: {', '.join(f'{lr:g}' for lr in added)})" if added else ""
            if _measured(pick, "heldout_explained_variance"):
                line += (f"; held-out EV {float(pick['heldout_explained_variance']):.4f}, "
                         f"L0 {float(pick['heldout_mean_l0']):.1f}, dead {float(pick['heldout_dead_fraction']):.3f}")
            if beyond_edge(lrs, chosen) is not None:
                line += "; still at the edge of the swept grid: extend --lr (or raise --lr-extensions)"
            lines.append(line)
        if seeds:
            heldout = all(_measured(pick, "heldout_explained_variance") for pick in picks)
            ev = [float(pick["heldout_explained_variance" if heldout else "explained_variance"]) for pick in picks]
            lines.append(f"block {layer} over seeds {', '.join(map(str, seeds))}: "
                         f"{'held-out EV' if heldout else 'EV (training tokens, none held out)'} mean "
                         f"{sum(ev) / len(ev):.4f}, range {min(ev):.4f}..{max(ev):.4f}")
    return lines


def _main(args: argparse.Namespace) -> int:
    from captum_fgattr.bench.config import RunConfig, read_config_file  # import torch: only when the command runs
    from captum_fgattr.bench.train_saes import SAETraining, train_saes
    from captum_fgattr.sae.layers import METRIC_FIELDS, SEEDED_METRIC_FIELDS

    config = RunConfig.from_dict(read_config_file(args.config)) if args.config else RunConfig()
    config = config.merged({"model.name": args.model, "model.checkpoint": args.checkpoint,
                            "model.num_classes": args.num_classes, "model.img_size": args.img_size,
                            "model.kwargs": args.model_kwargs, "data.resize": args.resize,
                            "data.mean": args.mean, "data.std": args.std})
    training = SAETraining(
        data=args.data, output=args.output, layers=args.layers, expansion=args.expansion,
        activation=args.activation, k=args.k, normalize=args.normalize, l1=args.l1, lrs=args.lr,
        lr_extensions=args.lr_extensions, epochs=args.epochs,
        batch_tokens=args.batch_tokens, warmup_steps=args.warmup_steps, ev_threshold=args.ev_threshold,
        seed=args.seed, seeds=args.seeds, device=args.device, batch_size=args.batch_size, num_workers=args.num_workers,
        heldout_fraction=args.heldout_fraction, cache_dir=args.cache_dir, cache_dtype=args.cache_dtype,
        keep_cache=args.keep_cache, progress=not args.quiet)
    start = time.perf_counter()
    rows = train_saes(config, training)
    _print_table(rows, METRIC_FIELDS if args.seeds is None else SEEDED_METRIC_FIELDS)
    for line in sweep_lines(rows, args.lr):
        print(line)
    folders = len({(row.get("seed"), row["layer"]) for row in rows})
    print(f"wrote {folders} SAE folder(s) and metrics.csv to {args.output} in "
          f"{time.perf_counter() - start:.1f}s", file=sys.stderr)
    return 0
