"""Measurements behind ``benchmarks/run.py``: models, SAEs, timers and side-by-side comparisons.

Every comparison runs its candidates on the same inputs, interleaved repetition by repetition
(A, B, C, A, B, C, ...), and reports each candidate's median wall time; on CUDA the device is
synchronised around every timed call. Peak memory: on CUDA ``torch.cuda.max_memory_allocated``
during the call (MiB, weights included); on CPU the growth of the process's peak RSS during the
call (``resource.getrusage``; coarse: a call that stays below an earlier peak reports 0).

Models (random weights: timing does not depend on them): ``tiny`` = the default benchmark ViT's
shape (:data:`captum_fgattr.bench.default.vit.DEFAULT_VIT`), ``clip_b32`` = open_clip ViT-B-32 vision
tower as a zero-shot classifier, ``vit_b16`` = timm ``vit_base_patch16_224``.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import platform
import resource
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from captum_fgattr import FeatureGradientTransMM, SparseAutoencoder, TransMM
from captum_fgattr.bench.default.vit import DEFAULT_VIT, ViTConfig, build_vit
from captum_fgattr.bench.metrics import metric_names
from captum_fgattr.sae import SAEConfig
from quantus_saco import PatchFaithfulnessCorrelation, PatchPixelFlipping, SaCo, evaluate_patch_metrics

MODELS: tuple[str, ...] = ("tiny", "clip_b32", "vit_b16")
SAE_EXPANSION = 64  # n_features = 64 * width, as in the thesis
SAE_K = 128  # TopK k at width 768; scaled in proportion for narrower models
REFERENCE_WIDTH = 768
FC_SUBSET_FRACTION = 20 / 196  # thesis: subsets of 20 of ViT-B/16's 196 patches


@dataclass(frozen=True)
class Sizes:
    """How much work the measurements of one model do."""

    attr_batch: int  # images per batched attribution call; the per-image loop runs the same images
    reps: int  # timed repetitions per candidate (the median is reported)
    eval_images: int  # images of the evaluation comparison (the first ``eval_images`` attributed ones)
    quantus: bool  # also time the Quantus-hosted metrics on the same images and settings
    saco_groups: int = 10  # SaCo's K
    fc_runs: int = 100  # Faithfulness-Correlation subsets per image
    pf_step: int = 1  # patches removed per Pixel-Flipping step
    n_gated: int = 3  # gated layers of FG-TransMM
    sae_expansion: int = SAE_EXPANSION  # SAE width / model width
    bound_batch: int = 16  # largest batch of the plain forwards timed for the evaluation bound

    def __post_init__(self) -> None:
        for name in ("attr_batch", "reps", "eval_images", "saco_groups", "fc_runs", "pf_step", "n_gated", "sae_expansion",
                     "bound_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}; expected >= 1")
        if self.eval_images > self.attr_batch:
            raise ValueError(f"eval_images={self.eval_images} > attr_batch={self.attr_batch}; the evaluated images are attributed ones")


# Per device and mode. CPU sizes fit a busy 2-core machine (quick: about 2 minutes in all); CUDA
# sizes follow the targets (ViT-B/16 at batch >= 32, the thesis's metric settings).
PLANS: dict[tuple[str, bool], dict[str, Sizes]] = {
    ("cpu", True): {
        "tiny": Sizes(attr_batch=16, reps=3, eval_images=8, quantus=True, fc_runs=20),
        "clip_b32": Sizes(attr_batch=4, reps=1, eval_images=2, quantus=True, fc_runs=10, pf_step=7),
        "vit_b16": Sizes(attr_batch=2, reps=1, eval_images=1, quantus=False, saco_groups=4, fc_runs=4, pf_step=49),
    },
    ("cpu", False): {
        "tiny": Sizes(attr_batch=32, reps=5, eval_images=16, quantus=True),
        "clip_b32": Sizes(attr_batch=8, reps=2, eval_images=2, quantus=True, fc_runs=20),
        "vit_b16": Sizes(attr_batch=4, reps=2, eval_images=1, quantus=True, fc_runs=10, pf_step=14),
    },
    ("cuda", True): {
        "tiny": Sizes(attr_batch=64, reps=3, eval_images=32, quantus=True, bound_batch=256),
        "clip_b32": Sizes(attr_batch=32, reps=3, eval_images=32, quantus=True, bound_batch=256),
        "vit_b16": Sizes(attr_batch=32, reps=3, eval_images=16, quantus=True, bound_batch=256),
    },
    ("cuda", False): {
        "tiny": Sizes(attr_batch=128, reps=10, eval_images=128, quantus=True, bound_batch=256),
        "clip_b32": Sizes(attr_batch=64, reps=5, eval_images=64, quantus=True, bound_batch=256),
        "vit_b16": Sizes(attr_batch=32, reps=5, eval_images=32, quantus=True, bound_batch=256),
    },
}


# ---------------------------------------------------------------------------------------------------
# Models and SAEs
# ---------------------------------------------------------------------------------------------------

@dataclass
class BenchModel:
    """A classifier to benchmark, in eval mode on its device."""

    name: str
    model: nn.Module  # (B, 3, S, S) -> (B, num_classes) logits
    img_size: int
    patch_size: int
    num_classes: int
    width: int  # residual width D
    depth: int  # number of blocks
    weights: str  # provenance of the weights, printed with the figures

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2


def tiny_model(device: torch.device, cfg: ViTConfig = DEFAULT_VIT) -> BenchModel:
    """The default benchmark ViT's architecture (``bench.default.vit.build_vit``) with random weights."""
    torch.manual_seed(0)
    model = build_vit(cfg).eval().to(device)
    return BenchModel("tiny", model, cfg.img_size, cfg.patch_size, cfg.num_classes, cfg.embed_dim, cfg.depth,
                      "random init, shape of bench.default.vit.DEFAULT_VIT (Br35H ViT)")


def build_model(name: str, device: torch.device) -> BenchModel:
    """One of :data:`MODELS`, randomly initialised, on ``device``."""
    if name == "tiny":
        return tiny_model(device)
    torch.manual_seed(0)
    if name == "vit_b16":
        import timm

        model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=1000)
        return BenchModel(name, model.eval().to(device), 224, 16, 1000, 768, 12, "random init, timm vit_base_patch16_224")
    if name == "clip_b32":
        import open_clip

        from captum_fgattr import CLIPZeroShotClassifier

        clip = open_clip.create_model("ViT-B-32", pretrained=None)
        classes = [f"class {i}" for i in range(10)]
        model = CLIPZeroShotClassifier(clip, classes, open_clip.get_tokenizer("ViT-B-32"))
        return BenchModel(name, model.eval().to(device), 224, 32, len(classes), 768, 12,
                          "random init, open_clip ViT-B-32 vision tower, 10-class zero-shot head")
    raise ValueError(f"model={name!r}; expected one of {list(MODELS)}")


def gated_layers(depth: int, n: int = 3) -> tuple[int, ...]:
    """``n`` gated blocks in the middle of the network: (4, 6, 7) for 12 blocks (a thesis configuration)."""
    if not 1 <= n <= depth:
        raise ValueError(f"n={n} gated layers; expected 1..{depth}")
    preferred = dict.fromkeys([depth // 3, depth // 2, min(depth // 2 + 1, depth - 1), *range(depth)])
    return tuple(sorted(list(preferred)[:n]))


def sae_k(width: int) -> int:
    """TopK k: 128 at width 768, in proportion for other widths (at least 1)."""
    return max(1, round(SAE_K * width / REFERENCE_WIDTH))


@functools.lru_cache(maxsize=8)
def _sae(width: int, n_features: int, k: int, seed: int, device: str) -> SparseAutoencoder:
    return SparseAutoencoder(SAEConfig(width, n_features, activation="topk", k=k, normalize="none"), seed=seed, device=device)


def make_saes(width: int, layers: Sequence[int], expansion: int, device: torch.device) -> dict[int, SparseAutoencoder]:
    """Random TopK SAEs of ``expansion * width`` features at ``layers`` (cached: models of one width share them)."""
    k = min(sae_k(width), expansion * width)
    return {layer: _sae(width, expansion * width, k, layer, str(device)) for layer in layers}


# ---------------------------------------------------------------------------------------------------
# Timing and memory
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Measurement:
    """Median wall time of one candidate over its repetitions and the largest peak memory seen."""

    seconds: float
    images: int
    peak_mib: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    def to_dict(self) -> dict[str, float]:
        return {"seconds": self.seconds, "images": self.images, "images_per_s": self.images_per_s, "peak_mib": self.peak_mib}


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model with the number of torch threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model} (CPU, {torch.get_num_threads()} torch threads)"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def timed_call(fn: Callable[[], object], device: torch.device) -> tuple[float, float, object]:
    """Run ``fn`` once -> (seconds, peak MiB as in the module docstring, its output)."""
    _synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _peak_rss_mib()
    start = time.perf_counter()
    out = fn()
    _synchronize(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = _peak_rss_mib() - rss_before
    return seconds, peak, out


def compare(
    candidates: Mapping[str, tuple[Callable[[], object], int]], reps: int, device: torch.device
) -> tuple[dict[str, Measurement], dict[str, object]]:
    """Time each ``name -> (fn, images)`` ``reps`` times, interleaved; -> (measurements, last outputs)."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    peaks: dict[str, float] = dict.fromkeys(candidates, 0.0)
    outputs: dict[str, object] = {}
    for _ in range(reps):
        for name, (fn, _images) in candidates.items():
            seconds, peak, outputs[name] = timed_call(fn, device)
            times[name].append(seconds)
            peaks[name] = max(peaks[name], peak)
    results = {name: Measurement(statistics.median(times[name]), images, peaks[name])
               for name, (_fn, images) in candidates.items()}
    return results, outputs


# ---------------------------------------------------------------------------------------------------
# The comparisons
# ---------------------------------------------------------------------------------------------------

def attribution_benchmark(
    bm: BenchModel, x: Tensor, target: Tensor, saes: Mapping[int, SparseAutoencoder], reps: int
) -> tuple[dict[str, Measurement], Tensor, float]:
    """TransMM batched vs the same rule one image per forward/backward, and FG-TransMM batched.

    Args:
        x: (B, 3, S, S) images on the model's device; target: (B,) classes.
        saes: gated block -> SAE for FG-TransMM.
    Returns:
        (measurements ``transmm_batched``, ``transmm_loop``, ``fg_transmm``; (B, P) batched TransMM
        patch attributions; max |batched − loop| of the attributions).
    """
    device = x.device
    B = len(x)
    transmm = TransMM(bm.model)
    fg = FeatureGradientTransMM(bm.model, saes)

    def batched() -> Tensor:
        return transmm.attribute(x, target, return_patches=True)

    def loop() -> Tensor:
        return torch.cat([transmm.attribute(x[i : i + 1], target[i : i + 1], return_patches=True) for i in range(B)])

    def gated() -> Tensor:
        return fg.attribute(x, target, return_patches=True)

    for method in (transmm, fg):  # warm-up: first-call allocations and kernel selection
        method.attribute(x[:1], target[:1], return_patches=True)
    results, outputs = compare({"transmm_batched": (batched, B), "transmm_loop": (loop, B), "fg_transmm": (gated, B)}, reps, device)
    attr = outputs["transmm_batched"].flatten(1)
    loop_diff = float((attr - outputs["transmm_loop"].flatten(1)).abs().max())
    return results, attr, loop_diff


def fg_encode_share(fg: FeatureGradientTransMM, x: Tensor, target: Tensor) -> tuple[float, dict[str, int] | None]:
    """One timed FG-TransMM call on (B, 3, S, S) images -> (share of its wall time spent in the SAE encodes,
    the fast-encode counts of its first SAE: tokens, candidates, fallback rows; None if it took the plain path)."""
    device = x.device
    spent = [0.0]
    saes = list(fg.saes.values())

    def timed(encode: Callable[[Tensor], tuple[Tensor, Tensor]]) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        def wrapper(tokens: Tensor) -> tuple[Tensor, Tensor]:
            _synchronize(device)
            start = time.perf_counter()
            out = encode(tokens)
            _synchronize(device)
            spent[0] += time.perf_counter() - start
            return out
        return wrapper

    for sae in saes:
        sae.last_fast_encode = None
        sae.encode_sparse = timed(sae.encode_sparse)  # instance attribute shadows the method for this call
    try:
        seconds, _, _ = timed_call(lambda: fg.attribute(x, target, return_patches=True), device)
    finally:
        for sae in saes:
            del sae.encode_sparse
    return spent[0] / seconds, saes[0].last_fast_encode


def forwards_per_image(settings: EvalSettings, patches: int) -> int:
    """Model forwards the three metrics need per image: SaCo K + FC runs + PF steps + 1 unperturbed."""
    return settings.saco_groups + settings.fc_runs + math.ceil(patches / settings.pf_step) + 1


def best_forward_seconds_per_image(model: nn.Module, x: Tensor, batches: Sequence[int], reps: int) -> float:
    """Fastest plain forward (no gradient) per image over batch sizes ``batches`` of copies of ``x[0]`` (1, 3, S, S)."""
    best = math.inf
    with torch.no_grad():
        for batch in batches:
            xb = x[:1].expand(batch, *x.shape[1:]).contiguous()
            model(xb)  # warm-up
            for _ in range(reps):
                seconds, _, _ = timed_call(lambda: model(xb), x.device)
                best = min(best, seconds / batch)
    return best


@dataclass(frozen=True)
class EvalSettings:
    """The three-metric suite's settings, shared by the fast evaluator and the Quantus-hosted metrics."""

    patch_size: int
    saco_groups: int
    fc_runs: int
    fc_subset_size: int
    pf_step: int
    seed: int = 0

    @classmethod
    def for_model(cls, bm: BenchModel, sizes: Sizes) -> EvalSettings:
        """Sizes clipped to the model's patch count; FC subsets of 20/196 of the patches."""
        P = bm.num_patches
        subset = min(P - 1, max(1, round(FC_SUBSET_FRACTION * P)))
        return cls(bm.patch_size, min(sizes.saco_groups, P), sizes.fc_runs, subset, min(sizes.pf_step, P))


def fast_metrics(model: nn.Module, x: Tensor, attr: Tensor, target: Tensor, s: EvalSettings, autocast: bool = False) -> dict[str, Tensor]:
    """The batched engine: ``quantus_saco.evaluate_patch_metrics`` -> (B,) scores per metric."""
    return evaluate_patch_metrics(
        model, x, attr, target, s.patch_size, saco_groups=s.saco_groups, fc_subset_size=s.fc_subset_size,
        fc_runs=s.fc_runs, pf_patches_per_step=s.pf_step, seed=s.seed, autocast=autocast)


def quantus_metrics(model: nn.Module, x: Tensor, attr: Tensor, target: Tensor, s: EvalSettings) -> dict[str, np.ndarray]:
    """The Quantus-hosted metrics (one forward of all B images per perturbation) -> (B,) scores per metric."""
    call = dict(model=model, x_batch=x.cpu().numpy(), y_batch=target.cpu().numpy(), a_batch=attr.cpu().numpy(),
                device=str(x.device), batch_size=len(x))
    common = dict(patch_size=s.patch_size, disable_warnings=True)
    return {
        "saco": np.asarray(SaCo(n_groups=s.saco_groups, **common)(**call)),
        "fc": np.asarray(PatchFaithfulnessCorrelation(nr_runs=s.fc_runs, subset_size=s.fc_subset_size, seed=s.seed, **common)(**call)),
        "pf_auc": np.asarray(PatchPixelFlipping(patches_in_step=s.pf_step, **common)(**call)),
    }


def _as_numpy(scores: Mapping[str, Tensor | np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v.cpu() if isinstance(v, Tensor) else v, dtype=np.float64) for k, v in scores.items()}


def compared_metrics(a: Mapping[str, object], b: Mapping[str, object]) -> list[str]:
    """The registered metrics (table order) that both ``a`` and ``b`` score: the engine's and Quantus's SaCo, FC and
    PF (a metric registered beyond them has no engine or Quantus counterpart to compare)."""
    return [k for k in metric_names() if k in a and k in b]


def max_abs_difference(a: Mapping[str, Tensor | np.ndarray], b: Mapping[str, Tensor | np.ndarray]) -> float:
    """Largest |a − b| over :func:`compared_metrics`; NaN where both are NaN counts as equal, elsewhere as inf."""
    a, b = _as_numpy(a), _as_numpy(b)
    worst = 0.0
    for k in compared_metrics(a, b):
        nan_a, nan_b = np.isnan(a[k]), np.isnan(b[k])
        if (nan_a != nan_b).any():
            return float("inf")
        if (~nan_a).any():
            worst = max(worst, float(np.abs(a[k] - b[k])[~nan_a].max()))
    return worst


def mean_abs_difference(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> dict[str, float]:
    """Per metric, the mean |a − b| over the images where both are defined."""
    a, b = _as_numpy(a), _as_numpy(b)
    return {k: float(np.nanmean(np.abs(a[k] - b[k]))) for k in compared_metrics(a, b)}


def evaluation_benchmark(
    bm: BenchModel, x: Tensor, attr: Tensor, target: Tensor, sizes: Sizes, autocast: bool = False
) -> tuple[dict[str, Measurement], dict[str, object]]:
    """The fast evaluator vs the Quantus-hosted metrics (and, if ``autocast``, the fast one under autocast).

    Args:
        x: (B, 3, S, S) images; attr: (B, P) patch attributions; target: (B,) classes.
    Returns:
        (measurements ``fast_eval`` [, ``quantus_eval``] [, ``fast_eval_autocast``]; a dict with the
        settings, ``max_abs_diff_fast_vs_quantus`` (None if Quantus was skipped) and, with autocast,
        ``autocast_mean_abs_diff`` per metric).
    """
    s = EvalSettings.for_model(bm, sizes)
    B = len(x)
    candidates: dict[str, tuple[Callable[[], object], int]] = {"fast_eval": (lambda: fast_metrics(bm.model, x, attr, target, s), B)}
    if sizes.quantus:
        candidates["quantus_eval"] = (lambda: quantus_metrics(bm.model, x, attr, target, s), B)
    if autocast:
        candidates["fast_eval_autocast"] = (lambda: fast_metrics(bm.model, x, attr, target, s, autocast=True), B)
    results, outputs = compare(candidates, sizes.reps, x.device)
    info: dict[str, object] = {"settings": dataclasses.asdict(s), "max_abs_diff_fast_vs_quantus": None}
    if sizes.quantus:
        info["max_abs_diff_fast_vs_quantus"] = max_abs_difference(outputs["fast_eval"], outputs["quantus_eval"])
    if autocast:
        info["autocast_mean_abs_diff"] = mean_abs_difference(outputs["fast_eval_autocast"], outputs["fast_eval"])
    return results, info


def _ratio(numerator: Measurement | None, denominator: Measurement | None) -> float | None:
    return None if numerator is None or denominator is None else numerator.seconds / denominator.seconds


def run_model(bm: BenchModel, sizes: Sizes, autocast: bool = False, seed: int = 0) -> dict[str, object]:
    """All measurements of one model on random inputs and targets -> one JSON-ready dict."""
    device = next(bm.model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(sizes.attr_batch, 3, bm.img_size, bm.img_size, generator=gen).to(device)
    target = torch.randint(bm.num_classes, (sizes.attr_batch,), generator=gen).to(device)
    layers = gated_layers(bm.depth, sizes.n_gated)
    saes = make_saes(bm.width, layers, sizes.sae_expansion, device)
    attribution, attr, loop_diff = attribution_benchmark(bm, x, target, saes, sizes.reps)
    encode_share, fast_encode = fg_encode_share(FeatureGradientTransMM(bm.model, saes), x, target)
    n = sizes.eval_images
    evaluation, eval_info = evaluation_benchmark(bm, x[:n], attr[:n], target[:n], sizes, autocast)
    timings = {**attribution, **evaluation}
    forwards = forwards_per_image(EvalSettings.for_model(bm, sizes), bm.num_patches)
    forward_s = best_forward_seconds_per_image(bm.model, x, sorted({1, sizes.bound_batch}), max(1, sizes.reps))
    eval_s_per_image = timings["fast_eval"].seconds / timings["fast_eval"].images
    return {
        "model": bm.name,
        "weights": bm.weights,
        "patches": bm.num_patches,
        "sizes": dataclasses.asdict(sizes),
        "gated_layers": list(layers),
        "sae": {"n_features": sizes.sae_expansion * bm.width, "k": next(iter(saes.values())).k},
        "timings": {name: m.to_dict() for name, m in timings.items()},
        "transmm_batched_over_loop": _ratio(timings["transmm_loop"], timings["transmm_batched"]),
        "fg_over_transmm": _ratio(timings["fg_transmm"], timings["transmm_batched"]),
        "fast_eval_over_quantus": _ratio(timings.get("quantus_eval"), timings["fast_eval"]),
        "eval_fraction_of_forward_bound": forwards * forward_s / eval_s_per_image,
        "fg_encode_share": encode_share,
        "bound": {"forwards_per_image": forwards, "best_forward_s_per_image": forward_s, "bound_batch": sizes.bound_batch},
        "sae_fast_encode": fast_encode,
        "max_abs_diff_transmm_batched_vs_loop": loop_diff,
        **eval_info,
    }


# ---------------------------------------------------------------------------------------------------
# Scaling sweep (small models)
# ---------------------------------------------------------------------------------------------------

def _sweep_point(bm: BenchModel, batch: int, n_gated: int, expansion: int, reps: int, eval_fc_runs: int | None) -> dict[str, float]:
    """Per-image seconds of TransMM and FG-TransMM (and the fast evaluator if ``eval_fc_runs``)."""
    device = next(bm.model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, bm.img_size, bm.img_size, generator=gen).to(device)
    target = torch.randint(bm.num_classes, (batch,), generator=gen).to(device)
    transmm = TransMM(bm.model)
    candidates: dict[str, tuple[Callable[[], object], int]] = {
        "transmm": (lambda: transmm.attribute(x, target, return_patches=True), batch)}
    if n_gated:
        fg = FeatureGradientTransMM(bm.model, make_saes(bm.width, gated_layers(bm.depth, n_gated), expansion, device))
        candidates["fg"] = (lambda: fg.attribute(x, target, return_patches=True), batch)
    if eval_fc_runs:
        attr = transmm.attribute(x, target, return_patches=True).flatten(1)
        s = EvalSettings.for_model(bm, Sizes(batch, 1, batch, False, fc_runs=eval_fc_runs))
        candidates["eval"] = (lambda: fast_metrics(bm.model, x, attr, target, s), batch)
    for fn, _ in candidates.values():  # warm-up
        fn()
    results, _ = compare(candidates, reps, device)
    row = {f"{name}_ms_per_image": 1e3 * m.seconds / batch for name, m in results.items()}
    if "fg" in results:
        row["fg_over_transmm"] = results["fg"].seconds / results["transmm"].seconds
    return row


def scaling_sweep(device: torch.device, quick: bool = False) -> list[dict[str, object]]:
    """Cost vs batch size, number of gated layers, SAE width and number of patches, on the tiny ViT shape.

    Defaults held fixed: batch 16, 3 gated layers, 64x SAEs, 64 patches; evaluation with
    10 SaCo groups, 20 FC runs, 1 patch per PF step.
    """
    reps = 2 if quick else 3
    tiny = tiny_model(device)
    rows: list[dict[str, object]] = []
    for batch in (1, 4, 16) if quick else (1, 4, 16, 64):
        rows.append({"axis": "batch", "value": batch, **_sweep_point(tiny, batch, 3, SAE_EXPANSION, reps, 20)})
    for n_gated in (0, 1, 3, 6) if quick else (0, 1, 2, 3, 4, 6):
        rows.append({"axis": "gated_layers", "value": n_gated, **_sweep_point(tiny, 16, n_gated, SAE_EXPANSION, reps, None)})
    for expansion in (16, 64) if quick else (8, 16, 32, 64, 128):
        rows.append({"axis": "sae_expansion", "value": expansion, **_sweep_point(tiny, 16, 3, expansion, reps, None)})
    for img_size in (32, 64, 96) if quick else (32, 64, 96, 128):
        bm = tiny_model(device, dataclasses.replace(DEFAULT_VIT, img_size=img_size))
        rows.append({"axis": "patches", "value": bm.num_patches, **_sweep_point(bm, 8, 3, SAE_EXPANSION, reps, 20)})
    return rows
