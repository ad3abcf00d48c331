"""``fgattr train-sae``: train one SAE per layer of a timm ViT on an image folder.

The model runs once over the images; patch-token activations of every requested layer go to an
on-disk cache (``numpy.memmap``), from which each layer's SAE is trained (one run per learning rate,
selected by the thesis rule). Output::

    OUTPUT/layer_{L}/config.json, sae.safetensors   the selected SAE of block L (0-based)
    OUTPUT/metrics.csv                              one row per (layer, lr) run, ``selected`` marks the pick;
                                                    heldout_* columns: explained variance, dead fraction
                                                    and L0 on the held-out images' tokens
    OUTPUT/run.json                                 the command's settings and the held-out images

A seeded, per-class fraction of the images (--heldout-fraction, default 0.1) is held out of SAE
training: the SAEs are judged on tokens they never saw, not only on their training tokens.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from captum_fgattr.bench.cli.main import json_argument
from captum_fgattr.sae.layers import METRIC_FIELDS

__all__ = ["add_parser", "run_train_sae", "heldout_split", "sized_defaults"]


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
                   help="0-based block indices (timm blocks[i]); default: the thesis's positions scaled to the "
                   "model's depth, blocks round(depth/6) .. depth-2 (2..10 of 12; 1..4 of 6)")
    s.add_argument("--expansion", type=int, default=None,
                   help="n_features = expansion * width (default from the width: 64 from 512 up, 32 from 256, else 16)")
    s.add_argument("--activation", choices=("topk", "relu"), default="topk")
    s.add_argument("--k", type=int, default=None, help="TopK active features (default width / 6: 128 for 768, 16 for 96)")
    s.add_argument("--normalize", choices=("none", "layer_norm", "constant_norm_rescale"), default="none")
    s.add_argument("--l1", type=float, default=1e-5, help="L1 coefficient for --activation relu")
    t = p.add_argument_group("training")
    t.add_argument("--lr", type=float, nargs="+", default=[5e-4, 1e-3], help="one or several (sweep) learning rates")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--batch-tokens", type=int, default=None,
                   help="tokens per step (default from the training tokens: a power of two near tokens/256, 64..4096)")
    t.add_argument("--warmup-steps", type=int, default=None,
                   help="linear warm-up steps (default 5%% of all steps, at most 500 as in the thesis)")
    t.add_argument("--ev-threshold", type=float, default=0.95, help="selection rule: EV above this, then fewest dead")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    o = p.add_argument_group("output")
    o.add_argument("--output", required=True, help="output folder")
    o.add_argument("--cache-dir", default=None, help="activation cache folder (default OUTPUT/activation_cache)")
    o.add_argument("--cache-dtype", choices=("float32", "float16"), default="float32")
    o.add_argument("--keep-cache", action="store_true", help="keep the activation cache after training")
    o.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_train_sae)
    return p


def sized_defaults(depth: int, width: int, tokens: int) -> dict[str, Any]:
    """SAE defaults sized by the model and the data (the thesis's values for ViT-B/16 on a large set).

    layers: the thesis's positions 2..10 of 12 blocks scaled to ``depth``, as ``fgattr run`` sizes them
    (:func:`captum_fgattr.bench.resolve.thesis_layers`); expansion: 64 from width
    512 up, 32 from 256, else 16; k: width / 6 (128 for 768); batch_tokens: the power of two nearest
    tokens / 256, within 64..4096 (a few hundred steps per epoch). The warm-up (5 % of all steps, at
    most 500) follows once the batch size is known.

    Example::

        >>> sized_defaults(12, 768, 2_000_000) == {"layers": list(range(2, 11)), "expansion": 64, "k": 128,
        ...                                        "batch_tokens": 4096}
        True
        >>> sized_defaults(6, 96, 134_464)
        {'layers': [1, 2, 3, 4], 'expansion': 16, 'k': 16, 'batch_tokens': 512}
    """
    from captum_fgattr.bench.resolve import thesis_layers

    batch = 2 ** round(math.log2(max(tokens / 256, 1)))
    return {"layers": thesis_layers(depth), "expansion": 64 if width >= 512 else 32 if width >= 256 else 16,
            "k": max(1, round(width / 6)), "batch_tokens": int(min(4096, max(64, batch)))}


def heldout_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(train indices, held-out indices)``: per class, a seeded ``round(fraction * n)`` of its images
    (at least one when ``fraction > 0`` and the class has two or more) are held out; both sorted."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"--heldout-fraction={fraction}; expected a number in [0, 1)")
    gen = torch.Generator().manual_seed(seed)
    heldout: list[int] = []
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        n = max(1, round(fraction * len(members))) if fraction > 0 and len(members) >= 2 else 0
        heldout += [members[j] for j in torch.randperm(len(members), generator=gen)[:n].tolist()]
    held = set(heldout)
    return [i for i in range(len(labels)) if i not in held], sorted(heldout)


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _print_table(rows: list[dict[str, object]], fields: tuple[str, ...]) -> None:
    cells = [[_fmt(r.get(f, "")) for f in fields] for r in rows]
    widths = [max(len(f), *(len(c[i]) for c in cells)) for i, f in enumerate(fields)]
    print("  ".join(f.rjust(w) for f, w in zip(fields, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))


def run_train_sae(args: argparse.Namespace) -> int:
    """Entry point of ``fgattr train-sae``; returns the exit status (bad input: ``fgattr``'s one error path)."""
    from captum_fgattr.adapters import get_adapter
    from captum_fgattr.bench.data.layouts import ImageFolderDataset, build_transform
    from captum_fgattr.bench.config import RunConfig, read_config_file
    from captum_fgattr.bench.models.loading import check_device
    from captum_fgattr.bench.resolve import load_model, preprocessing
    from captum_fgattr.sae.layers import train_layer_saes
    from captum_fgattr.sae.train import TrainConfig, sae_config_for

    for name in ("batch_size", "epochs", "batch_tokens", "expansion", "k"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)}; expected a positive int")
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = check_device(args.device, "--device")
    torch.manual_seed(args.seed)
    progress = not args.quiet

    config = RunConfig.from_dict(read_config_file(args.config)) if args.config else RunConfig()
    config = config.merged({"model.name": args.model, "model.checkpoint": args.checkpoint,
                            "model.num_classes": args.num_classes, "model.img_size": args.img_size,
                            "model.kwargs": args.model_kwargs, "data.resize": args.resize,
                            "data.mean": args.mean, "data.std": args.std})
    if not config.model.name:
        raise ValueError("no model: give --model (e.g. timm:vit_base_patch16_224) or a --config file with model.name")
    classes = ImageFolderDataset(args.data).classes  # a file listing: the class names CLIP classifies over
    model = load_model(config.model, class_names=classes).to(device)
    adapter = get_adapter(model)
    if args.layers is not None:
        bad = [layer for layer in args.layers if not 0 <= layer < adapter.depth]
        if bad:
            raise ValueError(f"--layers {bad} out of range for {config.model.name} with {adapter.depth} blocks "
                             f"(0..{adapter.depth - 1})")
    preprocess = preprocessing(config.data, model)
    dataset = ImageFolderDataset(args.data, build_transform(preprocess))
    train_ids, heldout_ids = heldout_split(dataset.targets, args.heldout_fraction, args.seed)

    def loader_of(ids: list[int]) -> torch.utils.data.DataLoader:
        subset = torch.utils.data.Subset(dataset, ids)
        return torch.utils.data.DataLoader(subset, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers)

    grid = adapter.grid_size()
    patches = grid[0] * grid[1]
    tokens = len(train_ids) * patches
    sized = sized_defaults(adapter.depth, adapter.embed_dim, tokens)
    given = {"layers": args.layers, "expansion": args.expansion, "k": args.k, "batch_tokens": args.batch_tokens}
    resolved = {name: value if value is not None else sized[name] for name, value in given.items()}
    steps = math.ceil(tokens / resolved["batch_tokens"]) * args.epochs
    resolved["warmup_steps"] = args.warmup_steps if args.warmup_steps is not None else min(500, max(1, steps // 20))
    layers = sorted(set(resolved["layers"]))
    sized_names = [name for name in (*given, "warmup_steps") if getattr(args, name) is None]
    print(f"{config.model.name}: {adapter.depth} blocks of width {adapter.embed_dim}, {patches} patches; "
          f"{tokens} training tokens -> layers {layers}, expansion {resolved['expansion']}, k {resolved['k']}, "
          f"batch {resolved['batch_tokens']} tokens, {steps} steps, warm-up {resolved['warmup_steps']} steps "
          f"(sized from the model and data: {', '.join(sized_names) or 'none'})", file=sys.stderr)
    sae_configs = {
        layer: sae_config_for(
            adapter.embed_dim, expansion=resolved["expansion"], k=resolved["k"], activation=args.activation,
            normalize=args.normalize, hook_layer=layer, model_name=config.model.name,
        )
        for layer in layers
    }  # bad --k / --expansion fail here, before the model runs
    train_cfg = TrainConfig(
        lr=args.lr[0], epochs=args.epochs, batch_tokens=resolved["batch_tokens"], warmup_steps=resolved["warmup_steps"],
        l1_coefficient=args.l1, seed=args.seed, progress=progress,
    )

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    settings = {key: value for key, value in vars(args).items() if key != "func"}
    settings["resolved"] = resolved
    settings.update(model=config.to_dict()["model"], device=str(device), num_images=len(dataset), classes=dataset.classes, preprocess=repr(preprocess),
                    heldout_images=[dataset.ids[i] for i in heldout_ids])
    print(f"training on {len(train_ids)} images, {len(heldout_ids)} held out for the held-out metrics", file=sys.stderr)
    (output / "run.json").write_text(json.dumps(settings, indent=2))

    start = time.perf_counter()
    rows = train_layer_saes(model, loader_of(train_ids), sae_configs, train_cfg, output, lrs=args.lr,
                            ev_threshold=args.ev_threshold, cache_dir=args.cache_dir, cache_dtype=args.cache_dtype,
                            keep_cache=args.keep_cache, device=device,
                            heldout_loader=loader_of(heldout_ids) if heldout_ids else None)
    _print_table(rows, METRIC_FIELDS)
    print(f"wrote {len(layers)} SAE folder(s) and metrics.csv to {output} in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return 0
