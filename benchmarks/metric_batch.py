"""Chunk size of the metric forwards: ``python benchmarks/metric_batch.py [--images N] [--sizes 256 64] [--threads T]``.

Every forward of perturbed images has exactly ``evaluation.metric_batch`` images (a call's last chunk filled up by
repeating its last image, :mod:`quantus_saco.forwards`). The chunk size sets two costs: the model's time per image
at that batch size, and the repeats that fill each call's last chunk (up to ``metric_batch − 1`` per call). This
script evaluates the demo's test methods (:func:`shared_forwards.method_set`) on the first N test images of the
embedded default once per chunk size, in one process, and prints per size the images run through the model per
image and method (distinct + filling repeats), the wall time, its ratio to the first size, and whether the stored
per-image scores are bit-identical to the first size's (they are where the backend gives a row the same bits at
every batch size used); the last line is one JSON object with the figures.
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.shared_forwards import Counts, demo_test_setup, stored_scores  # noqa: E402
from captum_fgattr.bench.default.demo import FULL  # noqa: E402
from captum_fgattr.bench.evaluate import evaluate_methods  # noqa: E402
from captum_fgattr.bench.store import ResultStore  # noqa: E402


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="first N test images (default 32: 2 batches of 16)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 64], help="metric_batch values (first: baseline)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    inputs, specs, ids = demo_test_setup(args.images, args.threads)
    per = len(ids) * len(specs)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            config = replace(FULL.evaluation, progress=False, metric_batch=size)
            with Counts() as counts, ResultStore(Path(tmp, str(size))) as store:
                start = time.perf_counter()
                evaluate_methods(inputs.model, inputs.test, specs, store, experiment="bench", split="test",
                                 image_ids=ids, saes=inputs.saes, config=config)
                seconds = time.perf_counter() - start
            rows.append({"metric_batch": size, "forwards_per_image_method": round(counts.run / per, 2),
                         "seconds": round(seconds, 1)})
        scores = [stored_scores(Path(tmp, str(size)), specs, together=True) for size in args.sizes]
    first = scores[0]
    for row, other in zip(rows, scores):
        row["wall_ratio"] = round(row["seconds"] / rows[0]["seconds"], 3)
        row["scores_bit_identical"] = None if other is first else all(  # the baseline: nothing to compare
            np.array_equal(first[k][c], other[k][c], equal_nan=True) for k in first for c in first[k])
    print(f"{len(specs)} methods x {len(ids)} test images, the demo's metric settings, {args.threads} torch thread(s)")
    print("| metric_batch | images forwarded per image and method | wall s | ratio | scores bit-identical to the first |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['metric_batch']} | {row['forwards_per_image_method']:.1f} | {row['seconds']:.1f} | "
              f"{row['wall_ratio']:.3f} | {'–' if row['scores_bit_identical'] is None else row['scores_bit_identical']} |")
    figures = {"methods": len(specs), "images": len(ids), "threads": args.threads, "sizes": rows}
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
