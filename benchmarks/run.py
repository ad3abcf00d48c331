"""Benchmark entry point: ``python benchmarks/run.py [--quick] [--device cpu|cuda] [--autocast] [--scaling]
[--study-forwards N]``.

Measures, in one run and on the same inputs per model (tiny default ViT shape, CLIP ViT-B/32,
ViT-B/16; random weights): TransMM batched vs a per-image loop, FG-TransMM (3 gated layers, 64x TopK
SAEs) vs TransMM, and the fast patch-metric evaluator vs the Quantus-hosted metrics. Prints tables
and, as the last line, one JSON object with the figures. Method: ``docs/performance.md``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks import shared_forwards  # noqa: E402
from benchmarks.core import MODELS, PLANS, build_model, device_name, run_model, scaling_sweep  # noqa: E402

DEFINITIONS = {
    "transmm_batched_over_loop": "speed-up: per-image-loop time / batched time of TransMM (> 1: batching is faster)",
    "fg_over_transmm": "cost ratio: FG-TransMM time / TransMM time, both batched (1 = no overhead)",
    "fast_eval_over_quantus": "speed-up: Quantus-hosted time / fast-evaluator time, same images and settings",
    "eval_fraction_of_forward_bound": ("forwards needed per image (SaCo K + FC runs + PF steps + 1) x best per-image "
                                       "plain forward time (batch 1 or bound_batch) / measured fast-evaluator time per image "
                                       "(1 = at the bound)"),
    "fg_encode_share": "share of one FG-TransMM call's wall time spent in the SAE encodes (encode_sparse)",
}
RATIOS = tuple(DEFINITIONS)


def memory_note(device: torch.device) -> str:
    if device.type == "cuda":
        return "peak_mib: torch.cuda.max_memory_allocated during the call (weights included)"
    return ("peak_mib: growth of the process's peak RSS during the call (resource.getrusage); coarse: "
            "0 when the call stays below an earlier peak, and runs are ordered small model to large")


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return str(value)
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (also readable as plain text)."""
    cells = [list(map(str, headers))] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _timing(result: dict, name: str, key: str) -> object:
    return result["timings"].get(name, {}).get(key)


def attribution_table(results: Sequence[dict]) -> str:
    headers = ["model", "P", "B", "TransMM batched s", "img/s", "loop s", "img/s", "loop/batched",
               "FG s", "FG/TransMM", "FG encode share", "peak MiB batched/loop/FG"]
    rows = []
    for r in results:
        peaks = "/".join(_fmt(_timing(r, n, "peak_mib")) for n in ("transmm_batched", "transmm_loop", "fg_transmm"))
        rows.append([r["model"], r["patches"], r["sizes"]["attr_batch"],
                     _timing(r, "transmm_batched", "seconds"), _timing(r, "transmm_batched", "images_per_s"),
                     _timing(r, "transmm_loop", "seconds"), _timing(r, "transmm_loop", "images_per_s"),
                     r["transmm_batched_over_loop"], _timing(r, "fg_transmm", "seconds"), r["fg_over_transmm"],
                     r["fg_encode_share"], peaks])
    return table(headers, rows)


def evaluation_table(results: Sequence[dict]) -> str:
    headers = ["model", "images", "SaCo K / FC runs / PF step", "fast s", "img/s", "of forward bound", "Quantus s", "img/s",
               "Quantus/fast", "max |fast-Quantus|", "peak MiB fast/Quantus", "autocast s", "autocast mean |Δ| saco/fc/pf"]
    rows = []
    for r in results:
        s = r["settings"]
        quantus = r["max_abs_diff_fast_vs_quantus"]
        ac = r.get("autocast_mean_abs_diff")
        rows.append([
            r["model"], r["sizes"]["eval_images"], f"{s['saco_groups']} / {s['fc_runs']} / {s['pf_step']}",
            _timing(r, "fast_eval", "seconds"), _timing(r, "fast_eval", "images_per_s"), r["eval_fraction_of_forward_bound"],
            _timing(r, "quantus_eval", "seconds") if quantus is not None else "skipped (--quick)",
            _timing(r, "quantus_eval", "images_per_s"), r["fast_eval_over_quantus"], quantus,
            "/".join(_fmt(_timing(r, n, "peak_mib")) for n in ("fast_eval", "quantus_eval")),
            _timing(r, "fast_eval_autocast", "seconds"),
            "/".join(_fmt(v) for v in ac.values()) if ac else None,
        ])
    return table(headers, rows)


def scaling_table(rows: Sequence[dict]) -> str:
    headers = ["axis", "value", "TransMM ms/img", "FG ms/img", "FG/TransMM", "fast eval ms/img"]
    return table(headers, [[r["axis"], r["value"], r.get("transmm_ms_per_image"), r.get("fg_ms_per_image"),
                            r.get("fg_over_transmm"), r.get("eval_ms_per_image")] for r in rows])


def report(device: torch.device, quick: bool, autocast: bool, results: Sequence[dict], scaling: list[dict] | None,
           wall_s: float) -> dict:
    """The JSON object: environment, ratio definitions, the three ratios per model, all timings."""
    return {
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "mode": "quick" if quick else "full",
        "autocast": autocast,
        "definitions": DEFINITIONS,
        **{ratio: {r["model"]: r[ratio] for r in results} for ratio in RATIOS},
        "max_abs_diff_fast_vs_quantus": {r["model"]: r["max_abs_diff_fast_vs_quantus"] for r in results},
        "notes": [memory_note(device)] + [
            f"{r['model']}: Quantus-hosted comparison skipped (--quick; ViT-B/16 on CPU is too slow for it)"
            for r in results if r["max_abs_diff_fast_vs_quantus"] is None],
        "models": {r["model"]: r for r in results},
        "scaling": scaling,
        "wall_s": wall_s,
    }


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about 2 minutes on a 2-core CPU)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--autocast", action="store_true", help="also time the fast evaluator under autocast and report how far the metrics move")
    parser.add_argument("--scaling", action="store_true", help="also sweep batch size, gated layers, SAE width and patches (tiny ViT)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="models to measure, in this order")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice); 1 is steadier on a shared machine")
    parser.add_argument("--study-forwards", type=int, default=0, metavar="N",
                        help="also run benchmarks/shared_forwards.py on N test images of the embedded default (the demo's "
                             "23 methods with and without shared perturbed forwards; 16 takes about 2 minutes on this CPU)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    device = torch.device(args.device)
    plan = PLANS[(device.type, args.quick)]

    start = time.perf_counter()
    print(f"device: {device_name(device)}; torch {torch.__version__}; mode {'quick' if args.quick else 'full'}", flush=True)
    results = []
    for name in args.models:
        bm = build_model(name, device)
        print(f"[{time.perf_counter() - start:6.1f}s] {name}: {bm.weights}", flush=True)
        results.append(run_model(bm, plan[name], args.autocast))
        del bm
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("\nAttribution (seconds per call of B images; median over reps)\n" + attribution_table(results))
    print("\nEvaluation: SaCo + patch FC + patch PF\n" + evaluation_table(results))
    scaling = None
    if args.scaling:
        scaling = scaling_sweep(device, args.quick)
        print("\nScaling (tiny ViT shape; defaults B=16, 3 gated layers, 64x SAEs, 64 patches)\n" + scaling_table(scaling))
    study = None
    if args.study_forwards:
        print("\nThe study's method set, shared perturbed forwards (benchmarks/shared_forwards.py)")
        study = shared_forwards.main(["--images", str(args.study_forwards), "--threads", str(torch.get_num_threads())])
    result = report(device, args.quick, args.autocast, results, scaling, time.perf_counter() - start)
    if study is not None:
        result["study_forwards"] = study
    print(memory_note(device))
    print(json.dumps(result))  # last line: the figures (NaN/Infinity as Python's json writes them)
    return result


if __name__ == "__main__":
    main()
