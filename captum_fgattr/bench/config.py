"""The run description: every setting of a benchmark run as frozen dataclasses, in one place.

:class:`RunConfig` holds a run's model (:class:`ModelConfig`), data (:class:`DataConfig`), SAEs, protocol
(:class:`Protocol`: what is evaluated) and evaluation (:class:`EvalConfig` with :class:`MetricConfig`: how);
:meth:`RunConfig.from_dict` / :meth:`RunConfig.to_dict` round-trip JSON/YAML files, rejecting unknown keys by
name and values of the wrong type by their dotted key. The loaders it drives are in
:mod:`captum_fgattr.bench.resolve`.

File format (JSON; YAML with the same keys when PyYAML is installed; every section and key optional)::

    {
      "run_dir": "runs/covid",
      "model": {"name": "timm:vit_base_patch16_224", "checkpoint": "vit.pth", "num_classes": 3,
                "img_size": 224, "rename": {"lin_head.": "head."}, "kwargs": {}},
      "data": {"kind": "covid-qu-ex", "root": "data/COVID-QU-Ex"},
      "saes": "saes/",                     # folder with layer_{L}/ (fgattr train-sae), {"9": "path", ...} or
                                           # a registered SAE source's name (resolve.SAE_SOURCES)
      "protocol": {"layers": [2, 3], "multi_layers": [[2, 3]], "val_images": 500, ...},   # Protocol fields
      "evaluation": {"batch_size": 16, "device": "cuda", "metrics": {"saco_groups": 10}, ...},  # EvalConfig
      "cache_dir": null                    # cached decoded images, retrained project models (default: user cache)
    }

``model.name`` is ``"timm:<name>"``, ``"clip:<open_clip name>"`` (zero-shot over the dataset's class names;
``checkpoint``: a local file, an open_clip pretrained tag, or none for random weights), a plain timm name, or
``"fgattr:<name>"``, a model the project defines itself (``models.loading.PROJECT_MODELS``; ``checkpoint`` as its
loader accepts, e.g. the embedded default's: none for its packaged weights, ``"retrain"`` to train them).
``data`` (:class:`DataConfig`) per dataset of the study (docs/method.md §5)::

    {"val": "images/val", "test": "images/test"}                   # "folder" (default): <class>/<image> folders
    {"kind": "covid-qu-ex", "root": "COVID-QU-Ex"}                  # official Val / Test folders
    {"kind": "hyperkvasir", "root": "hyper-kvasir", "seed": 42}     # seeded 80/10/10 split: val / test
    {"kind": "imagenet", "root": "imagenet", "class_names": "LOC_synset_mapping.txt"}
                                                                    # test: 10,000 of val/ (seed 42); val: the rest

Unknown keys raise a ``ValueError`` naming them and the accepted ones; every value is checked against its
field's type annotation (:func:`_build`: the dataclasses are the schema), e.g. ``protocol.layers=1; expected a
list of ints``, lists becoming tuples and ints floats where those are due.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, get_type_hints

from captum_fgattr.bench.choices import CONTROLS, DEFAULT_CONTROLS, METRIC_PRESETS, PF_SCALES, VARIANTS
from captum_fgattr.bench.data.layouts import IMAGENET_SUBSET, LAYOUTS
from captum_fgattr.bench.methods import METHODS
from captum_fgattr.bench.metrics import METRICS
from captum_fgattr.bench.values import Mismatch, typed, words
from captum_fgattr.bench.models.loading import check_device, check_kwarg_names
from captum_fgattr.gates import DECODER_PAIRED_VARIANTS, MAD_EPS_PLACEMENTS
from captum_fgattr.gates import VARIANTS as ALL_VARIANTS
from quantus_saco.engine import SACO_TARGETS
from quantus_saco.patches import REPLACEMENTS, SUBSET_SAMPLINGS, TIE_ORDERS
from quantus_saco.scores import PAIRINGS, UNDEFINED_SCORES

__all__ = [
    "positive_int", "MetricConfig", "EvalConfig", "Protocol", "ModelConfig", "DataConfig", "RunConfig",
    "read_config_file", "METRIC_PRESETS", "PF_SCALES", "TARGETS", "VARIANTS", "CONTROLS", "DEFAULT_CONTROLS",
    "NOT_BASELINES", "SPLITS", "DEFAULT_SPLITS", "DEFAULT_SUBSETS",
]

TARGETS = ("prediction", "label")


def positive_int(name: str, value: Any) -> None:
    """Refuse ``value`` unless it is an int >= 1 (bools are not ints here); the error names ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r}; expected an int >= 1")


#: the evaluation settings every run folder has recorded in its fingerprint, at any value; every other setting (one
#: added later, e.g. the thesis author's variants or a registered metric's own) only where it differs from its
#: default, so run folders written before it existed stay resumable. Never extend this list.
_ALWAYS_FINGERPRINTED = ("saco_groups", "fc_subset_size", "fc_runs", "fc_correlation", "fc_repeats",
                         "pf_patches_per_step", "pf_scale", "seed", "preset", "target", "batch_size", "autocast")


def _without_defaults(values: Mapping[str, Any], defaults: Mapping[str, Any],
                      keep: Collection[str] = ()) -> dict[str, Any]:
    """``values`` without those equal to their ``defaults`` (but the ``keep`` ones): a fingerprint that a setting
    added later, with a default, leaves unchanged."""
    return {name: value for name, value in values.items() if name in keep or value != defaults[name]}


@dataclass(frozen=True)
class MetricConfig:
    """Settings of the three patch metrics; they change the numbers, so a run folder keeps them.

    ``preset`` (resolved by :meth:`resolved` once the patch count P is known) replaces every other field
    (docs/method.md §4, "Metric presets"):

    * ``paper``: SaCo K = 10, FC Pearson over 100 subsets of 20 patches (⌊P/2⌋ if P < 40), PF one patch per
      step, AUC in [0, 1] — the definitions as published; SaCo pairs groups re-sorted by salience;
    * ``thesis-code``: the thesis author's released code: SaCo K = ⌈P/4⌉ (49 of 196, 13 of 49 patches) scoring
      the perturbed image's top class, numpy tie orders, salience-sorted pairs; FC Spearman over 20 subsets ×
      3 seeds (42, 43, 44) averaged, subsets of round(20·√(P/196)) patches (20 of 196, 10 of 49) drawn from
      numpy's legacy generator; undefined SaCo / FC scored 0; PF with the running-mean replacement, × P.

    The other fields' defaults are the library's own rules (the numbers of runs without a preset).

    ``settings`` holds the registered metrics' own settings, ``{metric: {setting: value}}``, over the defaults their
    :class:`~captum_fgattr.bench.metrics.MetricSpec` declares (read with :meth:`settings_of`; presets keep them).
    """

    saco_groups: int = 10  # SaCo's K groups of the attribution ranking
    fc_subset_size: int = 20  # patches per Faithfulness-Correlation subset (thesis: 20 for ViT-B/16)
    fc_runs: int = 100  # random subsets per image
    fc_correlation: str = "pearson"  # or "spearman"
    fc_repeats: int = 1  # FC computed with seeds seed, seed+1, ... and averaged
    pf_patches_per_step: int = 1  # patches removed per Pixel-Flipping step
    pf_scale: str = "unit"  # PF AUC as reported: "unit" ([0, 1]) or "patches" (× P, the thesis tables)
    seed: int = 0  # FC subset sampling
    saco_target: str = "original"  # SaCo's scored confidence: the target's or "perturbed_top" (perturbed image's top class)
    saco_tie_order: str = "stable"  # SaCo ranking's order of equal attributions (quantus_saco.patches.TIE_ORDERS)
    saco_pairing: str = "ranking"  # SaCo's pairs in ranking order or groups re-sorted by "salience"
    fc_sampling: str = "per_image"  # FC subsets per (seed, image id), or "numpy_global" (the author's draws per call)
    pf_tie_order: str = "stable"  # Pixel-Flipping ranking's order of equal attributions
    pf_replacement: str = "original_mean"  # or "running_mean": step by step, the perturbed image's mean each step
    undefined_score: str = "nan"  # undefined SaCo / FC: "nan" (excluded, counted) or "zero"
    preset: str | None = None  # "paper" or "thesis-code": replaces the fields above (see :meth:`resolved`)
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # registered metrics' own settings
    extra: tuple[str, ...] = ()  # extra registered metrics (``MetricSpec.extra``, e.g. "srg") computed on the test
    # experiment only: shown in its table and the validity section, never in the selection or the Holm families

    def __post_init__(self) -> None:
        for name in ("saco_groups", "fc_subset_size", "fc_runs", "fc_repeats", "pf_patches_per_step"):
            positive_int(name, getattr(self, name))
        if self.fc_correlation not in ("pearson", "spearman"):
            raise ValueError(f"fc_correlation={self.fc_correlation!r}; expected 'pearson' or 'spearman'")
        if self.pf_scale not in PF_SCALES:
            raise ValueError(f"pf_scale={self.pf_scale!r}; expected one of {list(PF_SCALES)}")
        for name, choices in (("saco_target", SACO_TARGETS), ("saco_tie_order", TIE_ORDERS), ("saco_pairing", PAIRINGS),
                              ("fc_sampling", SUBSET_SAMPLINGS), ("pf_tie_order", TIE_ORDERS),
                              ("pf_replacement", REPLACEMENTS), ("undefined_score", UNDEFINED_SCORES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {list(choices)}")
        if self.preset is not None and self.preset not in METRIC_PRESETS:
            raise ValueError(f"metric preset {self.preset!r}; expected one of {list(METRIC_PRESETS)}")
        object.__setattr__(self, "extra", tuple(self.extra))
        extras = [name for name, spec in METRICS.items() if spec.extra]
        if [name for name in self.extra if name not in extras] or len(set(self.extra)) != len(self.extra):
            raise ValueError(f"extra={list(self.extra)!r}; expected distinct names of the extra metrics {extras}")
        with_settings = [name for name, spec in METRICS.items() if spec.settings]
        for metric, values in self.settings.items():
            if metric not in with_settings:
                raise ValueError(f"settings for {metric!r}; expected registered metrics with settings: {with_settings}")
            unknown = sorted(set(values) - set(METRICS[metric].settings))
            if unknown:
                raise ValueError(f"settings.{metric}: unknown settings {unknown}; expected some of "
                                 f"{sorted(METRICS[metric].settings)}")

    def settings_of(self, metric: str) -> dict[str, Any]:
        """The settings of the registered ``metric``: its declared defaults with this run's values over them."""
        return {**METRICS[metric].settings, **self.settings.get(metric, {})}

    def fingerprint(self) -> dict[str, Any]:
        """The fields as a dict, each only where it differs from its default (but :data:`_ALWAYS_FINGERPRINTED`)."""
        values = asdict(self)
        del values["extra"]  # adds columns to the test experiment, changes no stored number
        values["settings"] = {metric: changed for metric, given in self.settings.items()
                              if (changed := _without_defaults(given, METRICS[metric].settings))}
        return _without_defaults(values, asdict(MetricConfig()), keep=_ALWAYS_FINGERPRINTED)

    def resolved(self, num_patches: int) -> MetricConfig:
        """The concrete settings for a model with ``num_patches`` patches (self if no preset).

        Raises:
            ValueError: settings the patch metrics cannot use with ``num_patches`` patches (checked before a run
                folder records them), e.g. ``saco_groups=10; expected 2 <= saco_groups <= 4 (4 patches)``.
        """
        out = self._preset_values(num_patches)
        bounds = {"saco_groups": (2, num_patches), "fc_subset_size": (1, num_patches - 1), "fc_runs": (2, None),
                  "pf_patches_per_step": (1, num_patches)}
        for name, (low, high) in bounds.items():
            value = getattr(out, name)
            if value < low or (high is not None and value > high):
                where = f" with preset {self.preset!r}" if self.preset else ""
                expected = f"{name} >= {low}" if high is None else f"{low} <= {name} <= {high} ({num_patches} patches)"
                raise ValueError(f"{name}={value}{where}; expected {expected}")
        return out

    def _preset_values(self, num_patches: int) -> MetricConfig:
        """The settings of :attr:`preset` for ``num_patches`` patches (self if no preset); the fields a preset
        does not name (``seed`` under "paper", ``settings``) stay as given."""
        if self.preset == "paper":
            return replace(self, saco_groups=10, fc_subset_size=20 if num_patches >= 40 else max(1, num_patches // 2),
                           fc_runs=100, fc_correlation="pearson", fc_repeats=1, pf_patches_per_step=1,
                           pf_scale="unit", saco_target="original", saco_tie_order="stable", saco_pairing="salience",
                           fc_sampling="per_image", pf_tie_order="stable", pf_replacement="original_mean",
                           undefined_score="nan")
        if self.preset == "thesis-code":  # subsets: 20 for the 14×14 grid of ViT-B/16, scaled with the grid side
            return replace(self, saco_groups=math.ceil(num_patches / 4),
                           fc_subset_size=max(1, round(20 * math.sqrt(num_patches / 196))), fc_runs=20,
                           fc_correlation="spearman", fc_repeats=3, pf_patches_per_step=1, pf_scale="patches", seed=42,
                           saco_target="perturbed_top", saco_tie_order="numpy_reversed", saco_pairing="salience",
                           fc_sampling="numpy_global", pf_tie_order="numpy_negated", pf_replacement="running_mean",
                           undefined_score="zero")
        return self


@dataclass(frozen=True)
class EvalConfig:
    """How evaluation runs."""

    batch_size: int = 16  # images per attribution batch (and per committed transaction)
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", ...; model and SAEs are moved there
    autocast: bool = False  # torch.autocast for attribution and metric forwards (bf16 on CPU, fp16 on CUDA)
    target: str = "prediction"  # class explained and scored: the model's "prediction" or the "label"
    metric_batch: int = 256  # perturbed images per metric forward (a call's last chunk filled up by repetition)
    num_workers: int = 0  # DataLoader workers
    gallery: int = 8  # image ids of a split, spread evenly over its sorted ids, whose images and attributions are kept
    progress: bool = True  # tqdm progress bars
    metrics: MetricConfig = field(default_factory=MetricConfig)

    def __post_init__(self) -> None:
        positive_int("batch_size", self.batch_size)
        positive_int("metric_batch", self.metric_batch)
        if self.target not in TARGETS:
            raise ValueError(f"target={self.target!r}; expected one of {list(TARGETS)}")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"num_workers={self.num_workers!r}; expected an int >= 0")
        if isinstance(self.gallery, bool) or not isinstance(self.gallery, int) or self.gallery < 0:
            raise ValueError(f"gallery={self.gallery!r}; expected an int >= 0")
        check_device(self.device, "evaluation.device")
        if isinstance(self.metrics, Mapping):
            object.__setattr__(self, "metrics", MetricConfig(**self.metrics))

    def fingerprint(self) -> dict[str, Any]:
        """The settings that determine the stored numbers (checked when a run folder is reused), each only where
        it differs from its default (but :data:`_ALWAYS_FINGERPRINTED`)."""
        values = {name: getattr(self, name) for name in ("target", "batch_size", "autocast")}
        return {"metrics": self.metrics.fingerprint(),
                **_without_defaults(values, asdict(EvalConfig()), keep=_ALWAYS_FINGERPRINTED)}


#: registered methods that are no baseline: the reference and the method under test, which the protocol evaluates
#: with their selected parameters
NOT_BASELINES = ("transmm", "fg")


def _floats(name: str, values: Sequence[float], low: float) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if any(not math.isfinite(v) or v < low for v in out):
        raise ValueError(f"{name}={list(values)!r}; expected finite numbers >= {low}")
    return out


def _layer_tuple(name: str, values: Sequence[int]) -> tuple[int, ...]:
    out = tuple(values)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in out):
        raise ValueError(f"{name}={list(values)!r}; expected block indices (ints >= 0, 0-based)")
    return out


@dataclass(frozen=True)
class Protocol:
    """What the study evaluates (thesis defaults). Layers are 0-based block indices (timm ``blocks[i]``)."""

    layers: tuple[int, ...] = tuple(range(2, 11))  # single-layer sweep
    variants: tuple[str, ...] = VARIANTS  # score variants swept at every layer (the method + ablations)
    method_variant: str = "combined"  # the score under test: selected, multi-layer, κ × c_max and test
    kappa: float = 0.5  # gate strength for the layer sweeps
    c_max: float = 10.0  # gate range for the layer sweeps
    multi_layers: tuple[tuple[int, ...], ...] = ((2, 3, 4), (4, 6, 7), (6, 9, 10))  # multi-layer configurations
    kappas: tuple[float, ...] = (0.1, 0.5, 1.0)  # κ grid on the selected multi-layer configuration
    c_maxes: tuple[float, ...] = (2.0, 10.0, 50.0)  # c_max grid
    baselines: tuple[str, ...] = ("gradcam", "integrated_gradients", "saliency", "rollout", "raw_attention", "random",
                                   "attnlrp")  # attnlrp: skipped (with a note) without the lrp extra
    controls: tuple[str, ...] = DEFAULT_CONTROLS  # controls of every selected configuration on the test set
    shuffle_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # seeds of the shuffled-decoder control (a random effect)
    permute_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # seeds of the permuted-gates control (a random effect)
    equivalence_fraction: float = 0.5  # default equivalence margin δ per metric: this fraction of the selected
    # configuration's paired validation gain over TransMM, |mean Δ| (fixed before the test set is read)
    equivalence_margins: Mapping[str, float] = field(default_factory=dict)  # metric name -> δ (metric units),
    # replacing the fraction's margin for that metric
    gate_mad_eps: str | None = None  # robust scale of FG's scores (gates.MAD_EPS_PLACEMENTS); None: the metric
    # preset's ("in_mad", the author's 1.4826·(MAD + 1e-8), under thesis-code; else "after_scale")
    black_input: tuple[float, ...] | None = None  # model-input value of a black pixel per channel, (0 − mean)/std:
    # the Integrated-Gradients baseline (None: 0, the normalisation mean; ``fgattr run`` fills it from the data)
    val_images: int | None = 500  # validation images (seeded subset; None = all)
    test_images: int | None = None  # test images (seeded subset; None = all)
    subset_seed: int = 42  # seed of the image subsets
    replicate_controls: tuple[str, ...] = ("grad_input_centered", "bias_projection")  # controls of the selected
    # configuration evaluated in every replicate (RunConfig.replicates) beside it and TransMM, where in ``controls``
    validity_images: int | None = None  # test images (seeded subset) of the metric-validity checks
    # (bench.validity: randomisation, test–retest, replacement value); None: not run

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", _layer_tuple("layers", self.layers))
        if not self.layers or not self.variants:
            raise ValueError("the single-layer sweep needs at least one layer and one variant")
        object.__setattr__(self, "variants", tuple(self.variants))
        bad = [v for v in self.variants if v not in ALL_VARIANTS]
        if bad:
            raise ValueError(f"variants {bad}; expected a subset of {list(ALL_VARIANTS)}")
        if self.method_variant not in self.variants:
            raise ValueError(f"method_variant={self.method_variant!r} is not among the swept variants {list(self.variants)}")
        object.__setattr__(self, "controls", tuple(self.controls))
        object.__setattr__(self, "replicate_controls", tuple(self.replicate_controls))
        stray = [c for c in self.replicate_controls if c not in CONTROLS]
        if stray:
            raise ValueError(f"replicate_controls {stray}; expected a subset of {list(CONTROLS)} (those the run also "
                             "has in controls are evaluated)")
        unknown_controls = [c for c in self.controls if c not in CONTROLS]
        if unknown_controls:
            raise ValueError(f"controls {unknown_controls}; expected a subset of {list(CONTROLS)}")
        if "shuffled_decoder" in self.controls and self.method_variant not in DECODER_PAIRED_VARIANTS:
            raise ValueError(f"the shuffled-decoder control cannot differ for method_variant={self.method_variant!r} "
                             "(its score does not pair activations with decoder rows): remove 'shuffled_decoder' "
                             "from controls or test 'combined'")
        object.__setattr__(self, "shuffle_seeds", tuple(int(seed) for seed in self.shuffle_seeds))
        if self.gate_mad_eps is not None and self.gate_mad_eps not in MAD_EPS_PLACEMENTS:
            raise ValueError(f"gate_mad_eps={self.gate_mad_eps!r}; expected null (the metric preset's) or one of "
                             f"{list(MAD_EPS_PLACEMENTS)}")
        object.__setattr__(self, "permute_seeds", tuple(int(seed) for seed in self.permute_seeds))
        for control, seeds in (("shuffled_decoder", "shuffle_seeds"), ("permuted_gates", "permute_seeds")):
            values = getattr(self, seeds)
            if control in self.controls and not values:
                raise ValueError(f"the {control} control needs at least one seed ({seeds})")
            if len(set(values)) != len(values):
                raise ValueError(f"{seeds}={list(values)!r} repeats a seed")
        if not (math.isfinite(self.equivalence_fraction) and self.equivalence_fraction > 0):
            raise ValueError(f"equivalence_fraction={self.equivalence_fraction!r}; expected a number > 0")
        bad_margins = {k: v for k, v in self.equivalence_margins.items() if not (math.isfinite(v) and v > 0)}
        if bad_margins:
            raise ValueError(f"equivalence_margins {bad_margins}; expected numbers > 0 (in the metric's units)")
        object.__setattr__(self, "equivalence_margins", dict(self.equivalence_margins))
        if self.black_input is not None:
            object.__setattr__(self, "black_input", tuple(float(v) for v in self.black_input))
        object.__setattr__(self, "multi_layers", tuple(_layer_tuple("multi_layers", m) for m in self.multi_layers))
        if any(not m for m in self.multi_layers):
            raise ValueError(f"multi_layers={self.multi_layers!r}; every configuration needs at least one layer")
        object.__setattr__(self, "kappas", _floats("kappas", self.kappas, 0.0))
        object.__setattr__(self, "c_maxes", _floats("c_maxes", self.c_maxes, 1.0))
        _floats("kappa", [self.kappa], 0.0)
        _floats("c_max", [self.c_max], 1.0)
        object.__setattr__(self, "baselines", tuple(self.baselines))
        accepted = sorted(set(METHODS) - set(NOT_BASELINES))
        unknown = [b for b in self.baselines if b not in accepted]
        if unknown:
            raise ValueError(f"baselines={list(self.baselines)!r}; expected names from {accepted} (TransMM and FG "
                             "are evaluated by the protocol itself)")
        for name in ("val_images", "test_images", "validity_images"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r}; expected None ({'not run' if name == 'validity_images' else 'all images'}) "
                                 "or an int >= 1")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Protocol:
        """The protocol of plain values (a stored configuration's ``protocol``), every field checked by type."""
        return _build(cls, values, "protocol")

    def gated_layers(self) -> list[int]:
        """Every layer an SAE is needed for."""
        return sorted(set(self.layers).union(*self.multi_layers))


SPLITS: tuple[str, ...] = ("val", "test")
#: split names below ``data.root`` when ``data.val`` / ``data.test`` are not given (else the split's own name):
#: ImageNet's labelled class-folder set is its validation set, so the test images come from it too
DEFAULT_SPLITS: Mapping[str, Mapping[str, str]] = {"imagenet": {"val": "val", "test": "val"}}
#: ``data.subset`` when not given: the study's ImageNet test subset (docs/method.md §5, seed 42)
DEFAULT_SUBSETS: Mapping[str, int] = {"imagenet": IMAGENET_SUBSET}


def _optional_dataclass(hint: Any) -> type | None:
    """The dataclass of a ``SomeDataclass | None`` annotation, else None."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) == 1 and len(typing.get_args(hint)) == 2 and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def _dataclass_items(hint: Any) -> type | None:
    """The dataclass of a ``tuple[SomeDataclass, ...]`` annotation, else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def _build(cls: type, values: Any, where: str = "") -> Any:
    """``cls(**values)`` for a configuration dataclass ``cls`` read from plain values at the dotted key ``where``
    ("" for the whole configuration): every value is checked against its field's type annotation (nested
    dataclasses built alike), so a wrong type is refused by name before anything is built or recorded.

    Raises:
        ValueError: ``where.key=value; expected <type in words>``, unknown keys, or ``cls``'s own range checks.
    """
    if not isinstance(values, Mapping):
        raise ValueError(f"{where or 'the configuration'}={values!r}; expected {words(cls)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names, key=str)
    if unknown:
        place = f"configuration section {where!r}" if where else "the configuration"
        raise ValueError(f"unknown keys {unknown} in {place}; expected some of {sorted(names)}")
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value, dotted)
            continue
        optional = _optional_dataclass(hints[key])
        if optional is not None:
            kwargs[key] = None if value is None else _build(optional, value, dotted)
            continue
        item = _dataclass_items(hints[key])
        if item is not None:
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{dotted}={value!r}; expected a list of {words(item)}")
            kwargs[key] = tuple(_build(item, v, f"{dotted}[{i}]") for i, v in enumerate(value))
            continue
        try:
            kwargs[key] = typed(hints[key], value)
        except Mismatch:
            raise ValueError(f"{dotted}={value!r}; expected {words(hints[key])}") from None
    return cls(**kwargs)


@dataclass(frozen=True)
class ModelConfig:
    """A classifier built with :func:`captum_fgattr.bench.models.loading.load_model` (timm ViT or CLIP zero-shot)."""

    name: str = ""  # "timm:<name>", "clip:<open_clip name>", "fgattr:<project model>" or a plain timm name
    checkpoint: str | None = None  # local file (CLIP: or an open_clip pretrained tag); None = random weights
    #                                (fgattr: what the project model accepts, e.g. "retrain")
    num_classes: int | None = None  # timm head width (default: the checkpoint's); CLIP: the dataset's classes
    img_size: int | None = None
    rename: Mapping[str, str] = field(default_factory=dict)  # timm checkpoint key-prefix renames ({}: lin_head.->head.)
    kwargs: Mapping[str, Any] = field(default_factory=dict)  # further timm / open_clip create_model arguments
    seed: int = 0  # initialisation seed when there is no checkpoint

    def __post_init__(self) -> None:
        # untrusted input: loader switches (weights_only, checkpoint_path, ...) are refused before any model is built
        object.__setattr__(self, "kwargs", check_kwarg_names(self.kwargs))

    @property
    def spec(self) -> str:
        """``name`` as a :func:`~captum_fgattr.bench.models.loading.load_model` spec (plain names are timm's)."""
        return self.name if ":" in self.name else f"timm:{self.name}"

    @property
    def random_weights(self) -> bool:
        """Whether the model is built with random weights: no checkpoint (the project's own ``fgattr:`` models
        default to their packaged weights)."""
        return self.checkpoint is None and not self.spec.startswith("fgattr:")


@dataclass(frozen=True)
class DataConfig:
    """The validation and test images (docs/method.md §5) and their preprocessing.

    * ``kind="folder"`` (default): ``val`` / ``test`` are image folders ``<class>/<image>``; or, with ``root``,
      sub-folder names of ``root`` (default "val" / "test").
    * a published layout (``"covid-qu-ex"``, ``"hyperkvasir"``, ``"imagenet"``, or a registered one; see
      :mod:`captum_fgattr.bench.data.layouts`): ``root`` is the dataset folder (optional for a layout with computed
      splits and a default folder) and ``val`` / ``test`` are split names (default: :data:`DEFAULT_SPLITS`, else "val" / "test"). COVID-QU-Ex: the official Val / Test folders;
      HyperKvasir: the stratified 80/10/10 split seeded by ``seed``; ImageNet: only the class-folder
      validation set exists, so both name it.

    ``subset`` draws (with ``seed``) the images of the **test** split; the validation images are subsampled by
    ``protocol.val_images`` instead. When ``val`` and ``test`` name the same images (ImageNet by default), the
    validation split is the rest of them, disjoint from the test subset, so no configuration is selected on
    test images: ImageNet's test set is the study's 10,000 images (seed 42) and the sweeps draw their
    ``protocol.val_images`` from the other 40,000.

    Preprocessing: the kind's (e.g. COVID-QU-Ex resize 256 -> crop 224, mean 0.56 / std 0.21), its resize scaled
    when the model's input is not 224 pixels; "folder": resize to the model's input size and the model's own
    normalisation. ``resize`` / ``mean`` / ``std`` override either.
    """

    kind: str = "folder"  # dataset layout, one of bench.data.layouts.LAYOUTS
    root: str | None = None  # dataset folder (required for the published folder layouts)
    val: str | None = None  # validation folder ("folder" without root) or split name (sweeps, selection)
    test: str | None = None  # test folder ("folder" without root) or split name
    subset: int | None = None  # test images drawn with ``seed`` (None: all; imagenet: DEFAULT_SUBSETS)
    seed: int = 42  # seed of ``subset`` and of seeded splits (HyperKvasir)
    class_names: str | None = None  # class-names file (formats: bench.data.layouts); default: folder names
    resize: int | None = None  # shorter side before the center crop (default: the kind's, see above)
    mean: tuple[float, ...] | None = None  # normalisation (default: the kind's, see above)
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in LAYOUTS:
            raise ValueError(f"data.kind={self.kind!r}; expected one of {sorted(LAYOUTS)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"data.seed={self.seed!r}; expected an int")
        subset = self.subset
        if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 1):
            raise ValueError(f"data.subset={subset!r}; expected None (all test images) or an int >= 1")

    def location(self, split: str) -> tuple[str | None, str | None]:
        """``(folder, split name below it or None)`` of ``split`` ("val" / "test"), as :func:`load_dataset` takes
        (folder None: the layout's default folder, for a layout with computed splits).

        Raises:
            ValueError: unknown split; no ``root`` for a published layout; no folder for a "folder" split.
        """
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; expected one of {list(SPLITS)}")
        given = getattr(self, split)
        if self.root is not None:
            return self.root, given or DEFAULT_SPLITS.get(self.kind, {}).get(split, split)
        if LAYOUTS[self.kind].source is not None:  # computed splits with a default folder
            return None, given or split
        if self.kind != "folder":
            raise ValueError(f"data.kind={self.kind!r} needs data.root, the dataset folder (--data-root DIR)")
        if given is None:
            raise ValueError(f"no {split} data: set data.{split} (e.g. --{split}-data FOLDER) or data.root")
        return given, None

    @property
    def test_subset(self) -> int | None:
        """``subset``, or the kind's default (:data:`DEFAULT_SUBSETS`)."""
        return self.subset if self.subset is not None else DEFAULT_SUBSETS.get(self.kind)

    def same_images(self) -> bool:
        """Whether ``val`` and ``test`` name the same images (then validation = the rest of the test subset)."""
        if self.root is None and (self.val is None or self.test is None):
            return False
        return self.location("val") == self.location("test")

    def fingerprint(self, split: str) -> dict[str, Any]:
        """The settings that decide the images of ``split`` and their preprocessing (checked by the run's store).

        Settings at their defaults are left out, so run folders from before they existed still resume.
        """
        root, name = self.location(split)
        subset = self.test_subset if split == "test" or self.same_images() else None
        extra = {"kind": (self.kind, "folder"), "split": (name, None), "subset": (subset, None),
                 "seed": (self.seed, 42), "class_names": (self.class_names, None)}
        return {"root": root, "resize": self.resize, "mean": self.mean, "std": self.std,
                **{key: value for key, (value, default) in extra.items() if value != default}}


@dataclass(frozen=True)
class ReplicateConfig:
    """Another (model, SAEs) pair on which the run's selected FG configuration, its replicate controls
    (``protocol.replicate_controls``) and TransMM are evaluated, on the run's test images."""

    name: str  # lower-case letters, digits, "-" and "_", e.g. "sae-seed-1"; its results are filed under split
    # "test@<name>"
    saes: str | Mapping[str, str] | None = None  # as RunConfig.saes
    model: ModelConfig | None = None  # None: the run's model

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", self.name):
            raise ValueError(f"replicate name {self.name!r}; expected lower-case letters, digits, '-' and '_'")
        if self.saes is None:
            raise ValueError(f"replicate {self.name!r} names no SAEs (saes)")


@dataclass(frozen=True)
class RunConfig:
    """Everything a ``fgattr sweep / evaluate / run`` needs; stored with the run (``config.json``, and the store)."""

    run_dir: str = "runs/fgattr"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    saes: str | Mapping[str, str] | None = None  # folder of layer_{L}/ SAEs, {layer: SAE folder}, or an SAE source
    protocol: Protocol = field(default_factory=Protocol)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    cache_dir: str | None = None  # decoded images, retrained models (default $FGATTR_CACHE or ~/.cache/captum-fgattr)
    report_header: str | None = None  # a registered report header (study.REPORT_HEADERS) describing the run's data,
    # model and SAEs at the top of its report (the demo presets name theirs)
    replicates: tuple[ReplicateConfig, ...] = ()  # further (model, SAEs) pairs the selected configuration is tested
    # on (SAEs or models trained from other seeds): pooled over with the run's own in the report's replication section

    def __post_init__(self) -> None:
        names = [r.name for r in self.replicates]
        if len(set(names)) != len(names):
            raise ValueError(f"replicates named {names}; expected distinct names")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from nested plain values (a config file, flags merged in), checking every key and every value's
        type against the fields' annotations (lists become tuples, ints floats where due).

        Raises:
            ValueError: one line, e.g. ``protocol.layers=1; expected a list of ints`` or unknown keys by name.
        """
        return _build(cls, values)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable values (round-trips through :meth:`from_dict`)."""
        return json.loads(json.dumps(asdict(self)))

    def merged(self, overrides: Mapping[str, Any]) -> RunConfig:
        """A copy with ``overrides`` ({"section.key": value} or {"key": value}) applied; None values skipped."""
        values = self.to_dict()
        for dotted, value in overrides.items():
            if value is None:
                continue
            *path, key = dotted.split(".")
            target = values
            for part in path:
                target = target[part]
            target[key] = value
        return RunConfig.from_dict(values)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Plain values from a JSON (``.json``) or YAML (``.yaml`` / ``.yml``) configuration file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file: invalid JSON or YAML (with its line), a YAML tag (only plain values
            are read), or no mapping of sections.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"configuration file {str(path)!r} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as err:
            raise ImportError("YAML configuration files need PyYAML (pip install pyyaml); or use JSON") from err
        try:
            values = yaml.safe_load(text)  # plain values only: tags such as !!python/object are refused
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            if isinstance(err, yaml.constructor.ConstructorError):
                problem += " (only plain values are read: remove the tag)"
            raise ValueError(f"configuration file {path} is not valid YAML{where}: {problem}") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"configuration file {path} is not valid JSON: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"configuration file {path} must hold a mapping of sections")
    return values


