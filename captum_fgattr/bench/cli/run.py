"""``fgattr sweep / evaluate / run / report``: the study's protocol from the command line (parsing only).

Settings come from ``--config FILE`` (JSON or YAML, see :mod:`captum_fgattr.bench.resolve`) and flags,
flags winning; the resolved configuration is written to ``RUN_DIR/config.json`` and stored in the run's
database with every command. Rerunning a command resumes it. Data: generic image folders or the study's
published layouts, and timm or CLIP zero-shot models, e.g.::

    fgattr run --model timm:vit_base_patch16_224 --checkpoint vit.pth --data-kind covid-qu-ex --data-root COVID-QU-Ex
    fgattr run --model clip:ViT-B-32 --checkpoint clip.pt --data-kind imagenet --data-root ILSVRC  # 10,000 val images

Under ``torchrun`` every rank evaluates a disjoint shard of the batches into the same store, e.g.::

    python -m torch.distributed.run --nproc_per_node 2 -m captum_fgattr.bench.cli.main evaluate --config run.json
"""
from __future__ import annotations

import argparse
import sys
from types import ModuleType
from typing import TYPE_CHECKING

from captum_fgattr.bench.choices import CONTROLS, METRIC_PRESETS, PF_SCALES, VARIANTS
from captum_fgattr.bench.cli.main import SIZED_LAYERS, json_argument, layer_list
from captum_fgattr.bench.data.kinds import LAYOUTS
from captum_fgattr.bench.models.project import PROJECT_MODELS
from captum_fgattr.bench.sae_sources import SAE_SOURCES

if TYPE_CHECKING:
    from captum_fgattr.bench.config import RunConfig

__all__ = ["add_parser", "resolve_config"]

_OVERRIDES = "_override_keys"


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by sweep / evaluate / run; each ``dest`` is the dotted configuration key it overrides."""
    keys: list[str] = []

    def add(group: argparse._ArgumentGroup, flag: str, key: str, **kwargs: object) -> None:
        if "action" not in kwargs and "choices" not in kwargs:
            kwargs.setdefault("metavar", key.rsplit(".", 1)[-1].upper())
        group.add_argument(flag, dest=key, default=None, **kwargs)  # type: ignore[arg-type]
        keys.append(key)

    parser.add_argument("--config", help="JSON (or YAML) configuration file; flags override it")
    add(parser, "--run-dir", "run_dir", help="run folder: results.sqlite, config.json, report/ (default runs/fgattr)")
    g = parser.add_argument_group("model")
    add(g, "--model", "model.name", help="timm:<name> (e.g. timm:vit_base_patch16_224; the prefix is optional), "
        "clip:<open_clip name> (e.g. clip:ViT-B-32: zero-shot over the dataset's class names), a project model ("
        + ", ".join(f"fgattr:{name}" for name in PROJECT_MODELS) + ") or a timm checkpoint folder (config.json + model.safetensors or "
        "pytorch_model.bin, as timm's save_for_hf writes and model hubs hold: no --checkpoint needed)")
    add(g, "--checkpoint", "model.checkpoint", help="local state dict (.safetensors / .pt / .pth); for clip: also an "
        "open_clip pretrained tag (downloads); none: random weights (a project model: its packaged weights; retrain: "
        "trained into --cache-dir)")
    add(g, "--num-classes", "model.num_classes", type=int, help="classes of the checkpoint's head")
    add(g, "--img-size", "model.img_size", type=int, help="model input size")
    add(g, "--model-kwargs", "model.kwargs", type=json_argument, metavar="JSON",
        help='further constructor arguments of the timm ViT / open_clip model, e.g. \'{"patch_size": 4, '
        '"embed_dim": 64, "depth": 6}\'; checked against what the constructor accepts, weight-loading switches '
        '(weights_only, checkpoint_path, pretrained*) refused (the same spec as fgattr train-sae --model-kwargs)')
    g = parser.add_argument_group("data (docs/method.md §5 layouts; preprocessing defaults follow the kind)")
    add(g, "--data-kind", "data.kind", choices=sorted(LAYOUTS),
        help="folder (default: --val-data / --test-data are <class>/<image> folders), covid-qu-ex, hyperkvasir, "
        "imagenet (published layouts below --data-root) or "
        + ", ".join(f"{kind} ({summary})" for kind, summary in LAYOUTS.summaries().items()))
    add(g, "--data-root", "data.root", help="dataset folder (required for the published layouts; a layout with "
        "computed splits defaults to its own folder)")
    add(g, "--val-data", "data.val", help="validation folder, or split name below --data-root (default per kind: "
        "val; imagenet: the val/ images outside the test subset)")
    add(g, "--test-data", "data.test", help="test folder, or split name below --data-root (default per kind: test; "
        "imagenet: val)")
    add(g, "--subset", "data.subset", type=int, help="seeded subset of the test split (default all; imagenet 10000)")
    add(g, "--data-seed", "data.seed", type=int, help="seed of --subset and of the HyperKvasir split (default 42)")
    add(g, "--class-names", "data.class_names", metavar="FILE", help="class-names file (JSON or text; readable names "
        "for CLIP prompts); default: the class folder names (imagenet: CLIP's ImageNet names)")
    add(g, "--resize", "data.resize", type=int, help="shorter side before the center crop (default: the kind's)")
    add(g, "--mean", "data.mean", type=float, nargs="+", help="normalisation mean (default: the kind's; folder: "
        "the model's)")
    add(g, "--std", "data.std", type=float, nargs="+", help="normalisation std (default: the kind's; folder: the "
        "model's)")
    add(g, "--saes", "saes", help="folder with layer_{L}/ SAEs (output of fgattr train-sae), or a named source: "
        + ", ".join(f"{name} ({summary}s)" for name, summary in SAE_SOURCES.summaries().items()))
    g = parser.add_argument_group("protocol (docs/method.md §5; layers are 0-based block indices)")
    add(g, "--layers", "protocol.layers", type=int, nargs="+", help=f"single-layer sweep layers (default: sized to the model, {SIZED_LAYERS}; printed)")
    add(g, "--variants", "protocol.variants", nargs="+", choices=VARIANTS,
        help="score variants of the single-layer sweep: the method and its ablations (default: combined activation "
        "gradient gradient_signed)")
    add(g, "--method-variant", "protocol.method_variant", choices=VARIANTS,
        help="the score under test, selected and carried to the multi-layer, κ × c_max and test steps (default "
        "combined; any other refuses the shuffled-decoder control, which cannot differ for it)")
    add(g, "--kappa", "protocol.kappa", type=float, help="κ of the layer sweeps (default 0.5)")
    add(g, "--c-max", "protocol.c_max", type=float, help="c_max of the layer sweeps (default 10)")
    add(g, "--multi-layers", "protocol.multi_layers", type=layer_list, nargs="*",
        metavar="L,L,...", help="multi-layer configurations, e.g. 2,3,4 4,6,7 6,9,10 (default: sized to the model, "
        "these three of the thesis's 12 blocks scaled to its depth; printed)")
    add(g, "--kappas", "protocol.kappas", type=float, nargs="*", help="κ grid (default 0.1 0.5 1)")
    add(g, "--c-maxes", "protocol.c_maxes", type=float, nargs="*", help="c_max grid (default 2 10 50)")
    add(g, "--baselines", "protocol.baselines", nargs="*", help="baseline methods on the test set")
    add(g, "--val-images", "protocol.val_images", type=int, help="validation images (seeded subset; default 500)")
    add(g, "--test-images", "protocol.test_images", type=int, help="test images (seeded subset; default all)")
    add(g, "--controls", "protocol.controls", nargs="*", choices=CONTROLS,
        help="controls of each selected configuration on the test set (default: shuffled_decoder grad_input "
        "grad_input_centered bias_projection permuted_gates)")
    add(g, "--shuffle-seeds", "protocol.shuffle_seeds", type=int, nargs="+",
        help="seeds of the shuffled-decoder control (default 0 1 2 3 4)")
    add(g, "--permute-seeds", "protocol.permute_seeds", type=int, nargs="+",
        help="seeds of the permuted-gates control (default 0 1 2 3 4)")
    add(g, "--equivalence-fraction", "protocol.equivalence_fraction", type=float,
        help="equivalence margin per metric as this fraction of the selected configuration's validation gain over "
        "TransMM (default 0.5; fixed margins: protocol.equivalence_margins in a --config file)")
    add(parser, "--cache-dir", "cache_dir", help="cached decoded images and retrained project models (default: "
        "$FGATTR_CACHE or ~/.cache/captum-fgattr)")
    g = parser.add_argument_group("evaluation")
    add(g, "--device", "evaluation.device", help="cpu, cuda, cuda:1 (under torchrun: cuda = one GPU per rank)")
    add(g, "--batch-size", "evaluation.batch_size", type=int, help="images per batch and per commit (default 16)")
    add(g, "--autocast", "evaluation.autocast", action="store_const", const=True, help="mixed precision (off by default)")
    add(g, "--target", "evaluation.target", choices=("prediction", "label"), help="class explained (default prediction)")
    add(g, "--workers", "evaluation.num_workers", type=int, help="DataLoader workers")
    add(g, "--gallery", "evaluation.gallery", type=int, help="images kept for the overlay figure (default 8)")
    add(g, "--quiet", "evaluation.progress", action="store_const", const=False, help="no progress bars")
    g = parser.add_argument_group("metrics (docs/method.md §4)")
    add(g, "--metric-preset", "evaluation.metrics.preset", choices=METRIC_PRESETS,
        help="paper (the published definitions) or thesis-code (the thesis author's released code: SaCo K = P/4, FC "
        "Spearman 20 subsets x 3 seeds of 0.2 P patches, PF x P); replaces the metric flags below")
    add(g, "--saco-groups", "evaluation.metrics.saco_groups", type=int, help="SaCo groups K (default 10)")
    add(g, "--fc-runs", "evaluation.metrics.fc_runs", type=int, help="FC random subsets per image (default 100)")
    add(g, "--fc-subset-size", "evaluation.metrics.fc_subset_size", type=int,
        help="patches per FC subset (default: sized to the model's patch count P, the thesis's 20 of 196 scaled: "
        "round(20 P / 196); printed)")
    add(g, "--fc-correlation", "evaluation.metrics.fc_correlation", choices=("pearson", "spearman"))
    add(g, "--fc-repeats", "evaluation.metrics.fc_repeats", type=int, help="FC averaged over this many seeds (default 1)")
    add(g, "--pf-step", "evaluation.metrics.pf_patches_per_step", type=int, help="patches per PF step (default 1)")
    add(g, "--metric-seed", "evaluation.metrics.seed", type=int, help="FC subset seed (default 0)")
    parser.set_defaults(**{_OVERRIDES: keys})


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """Defaults < ``--config`` file < flags; the layers, multi-layer configurations and FC subset size that
    neither sets are sized by the model (:func:`~captum_fgattr.bench.resolve.size_to_model`) and printed."""
    from captum_fgattr.bench.config import RunConfig, read_config_file
    from captum_fgattr.bench.resolve import dotted_keys, size_to_model

    values = read_config_file(args.config) if args.config else {}
    overrides = {key: getattr(args, key) for key in getattr(args, _OVERRIDES)}
    config = (RunConfig.from_dict(values) if args.config else RunConfig()).merged(overrides)
    given = dotted_keys(values) | {key for key, value in overrides.items() if value is not None}
    config, sized = size_to_model(config, given)
    if sized:
        print("sized by the model: " + ", ".join(f"{key} = {value}" for key, value in sized.items()), file=sys.stderr)
    return config


def _steps() -> ModuleType:
    """The commands' bodies (:mod:`.run_steps`), imported when one runs: parsing and ``--help`` import no torch."""
    from captum_fgattr.bench.cli import run_steps

    return run_steps


def _sweep(args: argparse.Namespace) -> None:
    _steps().sweep(resolve_config(args))


def _evaluate(args: argparse.Namespace) -> None:
    _steps().evaluate(resolve_config(args), args.methods, args.experiment, args.split)


def _report(args: argparse.Namespace) -> None:
    _steps().report(args.run_dir, args.out, args.pf_scale)


def _run(args: argparse.Namespace) -> None:
    _steps().run(resolve_config(args), args.pf_scale)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``sweep``, ``evaluate``, ``run`` and ``report``; returns the ``run`` parser."""
    fmt = argparse.RawDescriptionHelpFormatter
    sweep = subparsers.add_parser(
        "sweep", formatter_class=fmt, help="validation sweeps: single layer, multi-layer, κ × c_max; selections",
        description="Experiments 1-3 of the protocol on the validation folder, each with its stored selection "
        "(the combined score's configuration with the best mean standardised paired effect over TransMM across SaCo, "
        "FC and PF; the other variants are ablations). Resumes an interrupted run.")
    _run_arguments(sweep)
    sweep.set_defaults(func=_sweep)

    evaluate = subparsers.add_parser(
        "evaluate", formatter_class=fmt, help="test evaluation of the selected configurations and the baselines",
        description="TransMM vs FG-TransMM (selected single- and multi-layer configurations, each with its "
        "controls: shuffled decoders, grad_input, grad_input_centered, bias_projection, permuted gates) and the "
        "baselines on the test folder; or --methods on any split. Resumes.")
    _run_arguments(evaluate)
    evaluate.add_argument("--methods", help='JSON list (or file) of methods, e.g. [{"name": "fg", "params": '
                          '{"layers": [6], "variant": "combined"}}]; TransMM is added as the baseline')
    evaluate.add_argument("--experiment", default="test", help="experiment name the rows are filed under")
    evaluate.add_argument("--split", default="test", choices=("val", "test"))
    evaluate.set_defaults(func=_evaluate)

    report = subparsers.add_parser(
        "report", formatter_class=fmt, help="Markdown/CSV tables and PNG figures from a run's store",
        description="Tables (mean ± SE, % improvement, Welch and paired t-tests vs TransMM) and figures of "
        "every experiment stored in RUN_DIR.")
    report.add_argument("--run-dir", required=True, help="run folder")
    report.add_argument("--out", default=None, help="output folder (default RUN_DIR/report)")
    report.add_argument("--pf-scale", choices=PF_SCALES, default=None,
                        help="PF AUC in [0, 1] or × number of patches (thesis tables)")
    report.set_defaults(func=_report)

    run = subparsers.add_parser("run", formatter_class=fmt, help="the whole protocol: sweep, evaluate, report",
                                description="sweep + evaluate + report in one resumable command.")
    _run_arguments(run)
    run.add_argument("--pf-scale", choices=PF_SCALES, default=None,
                     help="PF column of the tables: unit (AUC in [0, 1]) or patches (× number of patches); default: "
                     "the metric settings' (thesis-code preset: patches)")
    run.set_defaults(func=_run)
    return run
