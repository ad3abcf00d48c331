"""The test experiment's claims and rankings as paired comparisons with four-outcome verdicts.

**Claims** (:func:`claim_comparisons`): for every selected FG configuration (real SAE) and every registered metric,
FG vs TransMM and vs each control on the same image ids. Fixed references are paired over the images; the random
controls (:data:`RANDOM_CONTROLS`: shuffled decoder, permuted gates) are random effects, compared at the level of
their seeds (:func:`~captum_fgattr.bench.stats.seed_comparison`). One Holm family over all of them.

**Rankings** (:func:`ranking_comparisons`): TransMM, the FG configurations and the baselines, each vs TransMM and vs
the selected (last) FG configuration, and the best method of each metric vs every other one: a second Holm family,
so that a "most faithful" method is only named where its tests support it (:func:`ranking_lines`).

Every comparison ends in one of :data:`~captum_fgattr.bench.stats.OUTCOMES` at the family-wise α = 0.05:
better / worse (Holm-adjusted paired test), equivalent (Holm-adjusted TOST at the margin ±δ), inconclusive. The margin
of a metric is fixed before the test set is read (:func:`equivalence_margins`): from the run description, or a
fraction of the configuration's paired validation gain over TransMM.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.stats import rankdata

from captum_fgattr.bench.config import Protocol
from captum_fgattr.bench.experiments import ControlGroup, control_groups, control_name, transmm_spec
from captum_fgattr.bench.methods import MethodSpec
from captum_fgattr.bench.metrics import metric_names, metric_spec
from captum_fgattr.bench.stats import (
    ALPHA, PairedComparison, holm_adjust, paired_comparison, seed_comparison, stars, summarize, verdict,
)
from captum_fgattr.bench.store import ResultStore

__all__ = ["Comparison", "Margin", "Ranking", "AGAINST_TITLES", "RANDOM_CONTROLS", "NO_SAE_CONTROLS",
           "stored_protocol", "equivalence_margins", "claim_comparisons", "ranking_comparisons", "format_p",
           "verdict_lines", "ranking_lines"]


#: how each comparison reads in tables and verdicts
AGAINST_TITLES = {
    "transmm": "TransMM",
    "shuffled_decoder": "shuffled decoder",
    "grad_input": "grad_input ⟨g, x⟩",
    "grad_input_centered": "grad_input_centered ⟨g, x − b_dec⟩",
    "bias_projection": "bias_projection −⟨g, b_dec⟩",
    "token_norm": "token_norm ‖x‖",
    "permuted_gates": "permuted gates",
}
#: controls drawn at random (several seeds): compared with FG at the level of their seeds
RANDOM_CONTROLS = ("shuffled_decoder", "permuted_gates")
#: controls that use no SAE feature: one equivalent to FG means the gain does not need the features
NO_SAE_CONTROLS = ("grad_input", "grad_input_centered", "bias_projection", "token_norm")


@dataclass(frozen=True)
class Margin:
    """The equivalence margin δ of one metric (metric units; NaN: no equivalence test) and where it came from."""

    value: float
    origin: str


@dataclass(frozen=True)
class Comparison:
    """One method (an FG configuration for the claims) vs one reference, on one metric."""

    configuration: MethodSpec  # A: the real-feature FG configuration (claims), or the ranked method
    against: str  # key of :data:`AGAINST_TITLES`, or the reference method's label
    references: tuple[MethodSpec, ...]  # B: one method, or a random control's seeds
    metric: str  # name of a registered metric
    result: PairedComparison  # A − B; p_holm and p_tost_holm over the family
    per_seed: tuple[PairedComparison, ...] = ()  # a random control: A vs each seed over the images (not tested)
    agreement: float = math.nan  # median per-image Spearman ρ between A's and B's stored patch maps
    margin_origin: str = ""  # where ``result.margin`` came from (:class:`Margin`)
    same_as: tuple[str, ...] = ()  # further references whose scores equal this one's on every image (reported once)

    @property
    def n_references(self) -> int:
        return len(self.references)

    @property
    def title(self) -> str:
        title = AGAINST_TITLES.get(self.against, self.against)
        n = self.n_references
        title = f"{title} ({n} seed{'s' * (n != 1)})" if self.result.unit == "seeds" else title
        merged = " = ".join(AGAINST_TITLES.get(a, a) for a in self.same_as)
        return f"{title} (= {merged}: identical scores)" if merged else title

    @property
    def outcome(self) -> str:
        """better / worse / equivalent / inconclusive, A's side (:func:`~captum_fgattr.bench.stats.verdict`)."""
        return verdict(self.result, metric_spec(self.metric).higher_is_better)


def stored_protocol(store: ResultStore) -> Protocol:
    """The protocol of the run's latest command that recorded one (the defaults if none did)."""
    for _, _, config in reversed(store.invocations()):
        if isinstance(config.get("protocol"), dict):
            return Protocol.from_dict(config["protocol"])
    return Protocol()


class _Columns:
    """Per-image scores and patch maps of one split, read once per method."""

    def __init__(self, store: ResultStore, split: str, ids: Sequence[int]) -> None:
        self.store, self.split, self.ids = store, split, list(ids)
        self._scores: dict[str, dict[str, np.ndarray]] = {}
        self._maps: dict[str, dict[int, np.ndarray]] = {}

    def scores(self, spec: MethodSpec, metric: str) -> np.ndarray:
        """(len(ids),) scores of ``spec`` (NaN where undefined or missing)."""
        if spec.key not in self._scores:
            index = {image_id: i for i, image_id in enumerate(self.ids)}
            stored = self.store.scores(self.split, spec.key, self.ids)
            table = {}
            for name in metric_names():
                column = np.full(len(self.ids), math.nan)
                for image_id, value in zip(stored["image_id"], stored[name]):
                    column[index[int(image_id)]] = value
                table[name] = column
            self._scores[spec.key] = table
        return self._scores[spec.key][metric]

    def agreement(self, spec: MethodSpec, references: Sequence[MethodSpec]) -> float:
        """Median over images (and seeds) of the Spearman ρ between the stored patch maps of ``spec`` and of each
        reference; NaN where no image has both maps or every pair is constant."""
        mine = self._maps_of(spec)
        rhos = []
        for reference in references:
            theirs = self._maps_of(reference)
            for image_id in self.ids:
                if image_id in mine and image_id in theirs:
                    rho = _spearman(mine[image_id].reshape(-1), theirs[image_id].reshape(-1))
                    if math.isfinite(rho):
                        rhos.append(rho)
        return float(np.median(rhos)) if rhos else math.nan

    def _maps_of(self, spec: MethodSpec) -> dict[int, np.ndarray]:
        if spec.key not in self._maps:
            self._maps[spec.key] = self.store.attributions(self.split, spec.key)
        return self._maps[spec.key]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman ρ of two maps (average ranks for ties); NaN when either is constant."""
    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def equivalence_margins(store: ResultStore, configuration: MethodSpec, protocol: Protocol) -> dict[str, Margin]:
    """Metric -> equivalence margin for comparisons of ``configuration``, from validation only: the run description's
    ``protocol.equivalence_margins[metric]`` if given, else ``protocol.equivalence_fraction`` × |paired mean
    difference of ``configuration`` − TransMM| on the validation images of the first validation experiment that ran
    both (the selection's data). NaN (no equivalence test) without such results or for a zero gain."""
    unknown = sorted(set(protocol.equivalence_margins) - set(metric_names()))
    if unknown:
        raise ValueError(f"equivalence_margins names {unknown}; expected registered metrics {metric_names()}")
    transmm = transmm_spec()
    validation = [experiment for experiment, split in store.experiments() if split == "val" and
                  {configuration.key, transmm.key} <= {s.key for s in store.experiment_methods(experiment, split)}]
    columns = _Columns(store, "val", store.experiment_ids(validation[0], "val")) if validation else None
    out = {}
    for metric in metric_names():
        if metric in protocol.equivalence_margins:
            out[metric] = Margin(protocol.equivalence_margins[metric], "the run description (equivalence_margins)")
        elif columns is None:
            out[metric] = Margin(math.nan, "none: no validation results of this configuration with TransMM")
        else:
            gain = paired_comparison(columns.scores(configuration, metric), columns.scores(transmm, metric))
            value = protocol.equivalence_fraction * abs(gain.delta)
            out[metric] = Margin(value if value > 0 else math.nan,
                                 f"{protocol.equivalence_fraction:g} × |validation gain over TransMM| "
                                 f"= {protocol.equivalence_fraction:g} × {abs(gain.delta):.3f} "
                                 f"({validation[0]}, {gain.n} images)")
    return out


def _compare(columns: _Columns, a: MethodSpec, against: str, references: Sequence[MethodSpec], metric: str,
             margin: Margin, agreement: dict[tuple[str, ...], float]) -> Comparison:
    """A vs the references on one metric: paired over images, or at the seed level for a random control."""
    mine = columns.scores(a, metric)
    key = (a.key, *(r.key for r in references))
    if key not in agreement:
        agreement[key] = columns.agreement(a, references)
    if against in RANDOM_CONTROLS:
        seeds = np.stack([columns.scores(r, metric) for r in references])
        result = seed_comparison(mine, seeds, margin.value)
        per_seed = tuple(paired_comparison(mine, row) for row in seeds)
    else:
        result, per_seed = paired_comparison(mine, columns.scores(references[0], metric), margin.value), ()
    return Comparison(a, against, tuple(references), metric, result, per_seed, agreement[key], margin.origin)


#: why two references can score identically: their formulas differ by a term that vanished at the gated layers
IDENTITY_REASONS = {
    ("grad_input_centered", "bias_projection"): "⟨g̃, norm(x) − b_dec⟩ = ⟨g̃, norm(x)⟩ − ⟨g̃, b_dec⟩: the first term "
    "vanished (as when the gradient is orthogonal to the token, e.g. before a LayerNorm)",
    ("transmm", "grad_input"): "its gates were all neutral: ⟨g, x⟩ was at rounding level (e.g. before a LayerNorm)",
    ("transmm", "grad_input_centered"): "its gates were all neutral: its scores were at rounding level",
    ("transmm", "bias_projection"): "its gates were all neutral: its scores were at rounding level",
}


def _identical(columns: _Columns, a: MethodSpec, b: MethodSpec) -> bool:
    """Whether two methods' stored scores are equal on every image and metric (NaN where the other is NaN)."""
    return all(np.array_equal(columns.scores(a, m), columns.scores(b, m), equal_nan=True) for m in metric_names())


def merged_references(columns: _Columns, references: list[tuple[str, list[MethodSpec]]]
                      ) -> list[tuple[str, list[MethodSpec], tuple[str, ...]]]:
    """``(against, specs)`` references with every fixed one whose scores equal an earlier fixed one's on every image
    folded into that one (``(against, specs, same_as)``): two references identical at these layers are compared,
    counted in the family and reported once."""
    kept: list[tuple[str, list[MethodSpec], list[str]]] = []
    for against, specs in references:
        twin = next((k for k in kept if against not in RANDOM_CONTROLS and k[0] not in RANDOM_CONTROLS
                     and _identical(columns, k[1][0], specs[0])), None)
        if twin is None:
            kept.append((against, specs, []))
        else:
            twin[2].append(against)
    return [(against, specs, tuple(same)) for against, specs, same in kept]


def identity_notes(comparisons: Sequence[Comparison]) -> list[str]:
    """One sentence per merged reference: which references scored identically, and why where the formulas say."""
    notes = {}
    for c in comparisons:
        for other in c.same_as:
            reason = IDENTITY_REASONS.get((c.against, other), "")
            notes[(c.configuration.key, c.against, other)] = (
                f"{c.configuration.label}: {AGAINST_TITLES.get(other, other)} scored exactly as "
                f"{AGAINST_TITLES.get(c.against, c.against)} on every image" + (f" ({reason})" if reason else "")
                + "; compared and counted once.")
    return list(notes.values())


def _holm(raw: list[Comparison]) -> list[Comparison]:
    adjusted = holm_adjust([c.result for c in raw], ALPHA)
    return [replace(c, result=r) for c, r in zip(raw, adjusted)]


def claim_comparisons(store: ResultStore, experiment: str, split: str,
                      protocol: Protocol | None = None) -> list[Comparison]:
    """Every claim of ``experiment`` (FG real vs TransMM and vs each control, every metric) in one Holm family,
    with the equivalence margins of each configuration (``protocol``: default the run's stored one)."""
    protocol = protocol if protocol is not None else stored_protocol(store)
    specs = store.experiment_methods(experiment, split)
    columns = _Columns(store, split, store.experiment_ids(experiment, split))
    transmm = [s for s in specs if s.is_transmm]
    agreement: dict[tuple[str, ...], float] = {}
    raw = []
    for group in control_groups(specs):
        margins = equivalence_margins(store, group.real, protocol)
        references = merged_references(columns, ([("transmm", transmm)] if transmm else []) + list(group.controls.items()))
        for metric in metric_names():
            raw += [replace(_compare(columns, group.real, against, reference, metric, margins[metric], agreement),
                            same_as=same_as) for against, reference, same_as in references]
    return _holm(raw)


@dataclass(frozen=True)
class Ranking:
    """The ranking family: its comparisons and, per metric, the method with the best mean."""

    comparisons: list[Comparison]
    best: dict[str, MethodSpec]  # metric -> highest mean (lowest where lower is better)
    methods: list[MethodSpec]  # the ranked methods: TransMM, the FG configurations, the baselines
    margins: dict[str, Margin]  # the selected configuration's (every comparison of the family uses them)

    def outcome(self, a: MethodSpec, b: MethodSpec, metric: str) -> str:
        """The family's outcome of a vs b on ``metric`` from a's side (a stored b-vs-a comparison read reversed)."""
        for c in self.comparisons:
            if c.metric == metric and c.configuration == a and c.references == (b,):
                return c.outcome
            if c.metric == metric and c.configuration == b and c.references == (a,):
                return {"better": "worse", "worse": "better"}.get(c.outcome, c.outcome)
        raise KeyError(f"{a.label} vs {b.label} on {metric} is not in the ranking family")


def ranking_comparisons(store: ResultStore, experiment: str, split: str,
                        protocol: Protocol | None = None) -> Ranking | None:
    """The methods of ``experiment`` other than FG's controls, each vs TransMM and vs the selected (last) FG
    configuration, and each metric's best-mean method vs every other: one Holm family, at the selected
    configuration's equivalence margins. None with fewer than two such methods."""
    protocol = protocol if protocol is not None else stored_protocol(store)
    specs = store.experiment_methods(experiment, split)
    methods = [s for s in specs if not (s.is_fg and control_name(s) is not None)]
    if len(methods) < 2:
        return None
    columns = _Columns(store, split, store.experiment_ids(experiment, split))
    groups: list[ControlGroup] = control_groups(specs)
    selected = groups[-1].real if groups else None
    margins = (equivalence_margins(store, selected, protocol) if selected is not None else
               {m: Margin(math.nan, "none: no FG configuration in the experiment") for m in metric_names()})
    anchors = [s for s in methods if s.is_transmm] + ([selected] if selected is not None else [])
    agreement: dict[tuple[str, ...], float] = {}
    raw, best = [], {}
    for metric in metric_names():
        sign = 1.0 if metric_spec(metric).higher_is_better else -1.0
        oriented = {s: sign * summarize(columns.scores(s, metric)).mean for s in methods}  # NaN: nothing defined
        best[metric] = max(methods, key=lambda s: oriented[s] if math.isfinite(oriented[s]) else -math.inf)
        pairs: list[tuple[MethodSpec, MethodSpec]] = []
        for anchor in anchors:
            pairs += [(s, anchor) for s in methods if s != anchor and (anchor, s) not in pairs]
        pairs += [(best[metric], s) for s in methods
                  if s != best[metric] and (best[metric], s) not in pairs and (s, best[metric]) not in pairs]
        raw += [_compare(columns, a, b.label, [b], metric, margins[metric], agreement) for a, b in pairs]
    return Ranking(_holm(raw), best, methods, margins)


def format_p(p: float, marks: bool = True) -> str:
    """A p-value for tables: two significant digits, with stars (*** < 0.001, ** < 0.01, * < 0.05) only where
    ``marks`` (Holm-adjusted p-values: the stars are the verdict's α), – for NaN."""
    return "–" if not math.isfinite(p) else f"{p:.2g}{stars(p) if marks else ''}"


def _evidence(c: Comparison) -> str:
    """'Δ +0.100 [+0.050, +0.150], p_Holm 0.001, n 300' (+ the margin and the equivalence test where there is one)."""
    r = c.result
    n = f"{r.n} seeds" if r.unit == "seeds" else f"n {r.n}"
    text = f"Δ {r.delta:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}], p_Holm {format_p(r.p_holm)}"
    if math.isfinite(r.margin):
        text += f", margin ±{r.margin:.3f}, p_TOST,Holm {format_p(r.p_tost_holm)}"
    return f"{text}, {n}"


def _claim(comparisons: Sequence[Comparison]) -> str:
    """'SaCo better (Δ +0.10 [0.05, 0.15], p_Holm 0.001, …), FC equivalent (…), …'."""
    return ", ".join(f"{metric_spec(c.metric).short} {c.outcome} ({_evidence(c)})" for c in comparisons)


def _and_list(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return " and ".join(filter(None, [", ".join(items[:-1]), items[-1]])) if items else ""


def _controls_showed(by: dict[tuple[str, str], Comparison], controls: Sequence[str]) -> str:
    """'FG vs bias_projection −⟨g, b_dec⟩: SaCo equivalent, FC inconclusive; FG vs …' (every metric, FG's side)."""
    parts = []
    for a in controls:
        outcomes = [f"{metric_spec(m).short} {by[(a, m)].outcome}" for m in metric_names() if (a, m) in by]
        first = next(by[(a, m)] for m in metric_names() if (a, m) in by)
        parts.append(f"FG vs {first.title}: " + ", ".join(outcomes))
    return "; ".join(parts)


def _conclusion(configuration: MethodSpec, comparisons: Sequence[Comparison]) -> str:
    """Whether the configuration improves on TransMM and whether its controls explain the gain, as the outcomes
    allow: "not attributable" needs a no-SAE control *equivalent* to FG on every metric FG improves; "attributable"
    needs FG *better* than every no-SAE and random control there; anything else is inconclusive. What every control
    showed is stated in every case."""
    by = {(c.against, c.metric): c for c in comparisons}
    said = {key: c.outcome for key, c in by.items()}
    names = lambda metrics: ", ".join(metric_spec(m).short for m in metrics)  # noqa: E731
    tested = [m for m in metric_names() if ("transmm", m) in said]
    gains = [m for m in tested if said[("transmm", m)] == "better"]
    losses = [m for m in tested if said[("transmm", m)] == "worse"]
    controls = list(dict.fromkeys(c.against for c in comparisons if c.against != "transmm"))
    head = f"Conclusion for {configuration.label}: "
    showed = f"; {_controls_showed(by, controls)}" if controls else "; no controls were run"
    if not gains:
        if tested and len(losses) == len(tested):
            head += f"worse than TransMM on every metric ({names(losses)})"
        else:
            head += "no improvement over TransMM shown (" + ", ".join(
                f"{metric_spec(m).short} {said[('transmm', m)]}" for m in tested) + ")"
        return head + showed + "."
    head += f"better than TransMM on {names(gains)}" + (f", worse on {names(losses)}" if losses else "")
    if not controls:
        return head + "; no controls were run, so nothing credits the SAE's features."
    explaining = [a for a in controls if a in NO_SAE_CONTROLS and all(said.get((a, m)) == "equivalent" for m in gains)]
    if explaining:
        titles = [by[(a, gains[0])].title for a in explaining]
        verb = "is" if len(titles) == 1 else "are each"
        rest = [a for a in controls if a not in explaining]
        return (head + f"; {_and_list(titles)} {verb} equivalent to FG on {names(gains)} (TOST at the margins): the "
                "gain is not attributable to the SAE's features" + (f"; {_controls_showed(by, rest)}" if rest else "")
                + ".")
    if all(said.get((a, m)) == "better" for a in controls for m in gains):
        return head + f"; better than every control on {names(gains)}: the gain is attributable to the SAE's features."
    open_ = []
    for a in controls:
        for m in gains:
            if said.get((a, m)) != "better":
                gain = by[("transmm", m)].result.delta
                open_.append(f"{by[(a, m)].title} {said.get((a, m))} on {metric_spec(m).short} "
                             f"({_evidence(by[(a, m)])}; FG's gain over TransMM {gain:+.3f})")
    return head + "; whether the SAE's features cause the gain is inconclusive: " + "; ".join(open_) + "."


def verdict_lines(comparisons: Sequence[Comparison]) -> list[str]:
    """One plain-language line per claim (configuration × reference, every metric's outcome), then one conclusion
    per configuration (Holm family-wise α = 0.05 throughout)."""
    lines = []
    claims: dict[tuple[str, str], list[Comparison]] = {}
    for c in comparisons:
        claims.setdefault((c.configuration.key, c.against), []).append(c)
    for group in claims.values():
        first = group[0]
        lines.append(f"{first.configuration.label} vs {first.title}: {_claim(group)}.")
    configurations = {c.configuration.key: c.configuration for c in comparisons}
    for key, configuration in configurations.items():
        lines.append(_conclusion(configuration, [c for c in comparisons if c.configuration.key == key]))
    return lines


def ranking_lines(ranking: Ranking) -> list[str]:
    """Per metric, the best method where the family supports it (better than every other ranked method), else the
    methods it cannot be told from."""
    lines = []
    for metric, top in ranking.best.items():
        short = metric_spec(metric).short
        others = [s for s in ranking.methods if s != top]
        outcomes = {s: ranking.outcome(top, s, metric) for s in others}
        if all(o == "better" for o in outcomes.values()):
            lines.append(f"{short}: {top.label} is the most faithful method (better than each of the other "
                         f"{len(others)}, Holm).")
            continue
        tied = ", ".join(f"{s.label} ({o})" for s, o in outcomes.items() if o != "better")
        lines.append(f"{short}: {top.label} has the best mean but is not better than {tied}: no single most faithful "
                     "method is supported.")
    return lines
