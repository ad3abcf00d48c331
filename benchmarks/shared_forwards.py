"""Shared perturbed forwards: ``python benchmarks/shared_forwards.py [--images N] [--threads T]``.

The study's test-set method set (:func:`method_set`, the demo's 23 methods) on the first N test images of the embedded default (shipped
ViT and SAEs, the demo's metric settings), evaluated twice in one process:

* **shared**: one ``evaluate_methods`` call, every method of a batch sharing its ``PerturbedForwards``;
* **alone**: one ``evaluate_methods`` call per method, so nothing is shared between methods (the metric engine
  before sharing forwarded every variant of every method: the "requested" count).

Prints the perturbed-image forwards per image and method (requested = without sharing; run = distinct
images + the repeats that fill a call's last chunk), the wall time of both evaluations and their ratio, and
whether the stored per-image scores are bit-identical; the last line is one JSON object with the figures.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from captum_fgattr.bench.default.demo import FULL  # noqa: E402
from captum_fgattr.bench.evaluate import evaluate_methods  # noqa: E402
from captum_fgattr.bench.experiments import baseline_spec, control_specs, fg_spec, transmm_spec  # noqa: E402
from captum_fgattr.bench.methods import MethodSpec  # noqa: E402
from captum_fgattr.bench.resolve import StudyInputs, load_study_inputs  # noqa: E402
from captum_fgattr.bench.store import ResultStore  # noqa: E402
from quantus_saco.forwards import PerturbedForwards  # noqa: E402


class Counts:
    """Perturbed images asked for and run through the model, summed over every PerturbedForwards.logits call."""

    def __init__(self) -> None:
        self.requested = self.run = 0
        self._logits = PerturbedForwards.logits

    def __enter__(self) -> Counts:
        counts, logits = self, self._logits

        def counted(forwards: PerturbedForwards, *args, **kwargs):
            before = (forwards.requested, forwards.forwarded + forwards.padded)
            out = logits(forwards, *args, **kwargs)
            counts.requested += forwards.requested - before[0]
            counts.run += forwards.forwarded + forwards.padded - before[1]
            return out

        PerturbedForwards.logits = counted  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        PerturbedForwards.logits = self._logits  # type: ignore[method-assign]


def method_set() -> list[MethodSpec]:
    """The demo's test experiment (23 methods): TransMM, each FG configuration the demo selects (block 1 at κ = 0.5,
    c_max = 10; blocks [1, 2, 3] at κ = 1, c_max = 50) followed by its controls, the baselines (AttnLRP left out:
    the main install does not have it)."""
    protocol = FULL.protocol
    specs = [transmm_spec()]
    for fg in (fg_spec([1], "combined", 0.5, 10.0), fg_spec([1, 2, 3], "combined", 1.0, 50.0)):
        specs += [fg, *(spec for controls in control_specs(fg, protocol).values() for spec in controls)]
    return specs + [baseline_spec(name, protocol) for name in protocol.baselines if name != "attnlrp"]


def demo_test_setup(images: int, threads: int) -> tuple[StudyInputs, list[MethodSpec], list[int]]:
    """The embedded default's inputs (shipped ViT and SAEs), :func:`method_set` and the first ``images`` test ids,
    with ``threads`` torch CPU threads."""
    torch.set_num_threads(threads)
    inputs = load_study_inputs(FULL.merged({"evaluation.progress": False}))
    return inputs, method_set(), list(range(min(images, len(inputs.test))))


def evaluate(inputs, specs: Sequence[MethodSpec], ids: list[int], folder: Path, together: bool) -> tuple[float, Counts]:
    """Wall seconds and forward counts of evaluating ``specs`` together (shared) or one call per method."""
    groups = [list(specs)] if together else [[spec] for spec in specs]
    config = replace(FULL.evaluation, progress=False)
    with Counts() as counts:
        start = time.perf_counter()
        for i, group in enumerate(groups):
            with ResultStore(folder / str(i)) as store:
                evaluate_methods(inputs.model, inputs.test, group, store, experiment="bench", split="test",
                                 image_ids=ids, saes=inputs.saes, config=config)
        return time.perf_counter() - start, counts


def stored_scores(folder: Path, specs: Sequence[MethodSpec], together: bool) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for i, spec in enumerate(specs):
        with ResultStore(folder / ("0" if together else str(i))) as store:
            out[spec.key] = store.scores("test", spec.key)
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="first N test images (default 48: 3 batches of 16)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    inputs, specs, ids = demo_test_setup(args.images, args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        shared_s, shared = evaluate(inputs, specs, ids, Path(tmp, "shared"), together=True)
        alone_s, alone = evaluate(inputs, specs, ids, Path(tmp, "alone"), together=False)
        a, b = stored_scores(Path(tmp, "shared"), specs, True), stored_scores(Path(tmp, "alone"), specs, False)
    identical = all(np.array_equal(a[k][c], b[k][c], equal_nan=True) for k in a for c in a[k])
    per = len(ids) * len(specs)
    figures = {
        "methods": len(specs), "images": len(ids), "threads": args.threads,
        "forwards_per_image_method_without_sharing": alone.requested / per,
        "forwards_per_image_method_alone": alone.run / per,
        "forwards_per_image_method_shared": shared.run / per,
        "seconds_alone": round(alone_s, 1), "seconds_shared": round(shared_s, 1),
        "wall_ratio_shared_over_alone": round(shared_s / alone_s, 3),
        "scores_bit_identical": identical,
    }
    print(f"{len(specs)} methods x {len(ids)} test images, demo metric settings (SaCo K = 10, FC 30 x 6 patches, "
          f"PF 2 patches per step), {args.threads} torch thread(s)")
    print("| evaluation | perturbed forwards per image and method | wall s |")
    print("|---|---|---|")
    print(f"| without sharing (every variant of every method) | {figures['forwards_per_image_method_without_sharing']:.1f} | – |")
    print(f"| one method per call (repeats within a call shared) | {figures['forwards_per_image_method_alone']:.1f} | "
          f"{alone_s:.1f} |")
    print(f"| methods of a batch sharing | {figures['forwards_per_image_method_shared']:.1f} | {shared_s:.1f} |")
    print(f"wall ratio shared / one method per call: {figures['wall_ratio_shared_over_alone']:.3f}; per-image scores "
          f"bit-identical: {identical}")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
