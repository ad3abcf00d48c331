"""Start-up benchmark: ``python benchmarks/startup.py [--runs N]``.

Measures the wall time of ``fgattr --help`` (the command list; no command module, no torch) and of
``fgattr demo --help`` (imports the demo's module and torch) in fresh processes, N runs each, and
prints the median and the fastest run, then one JSON object as the last line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

COMMANDS = {"fgattr --help": ["--help"], "fgattr demo --help": ["demo", "--help"]}


def wall_times(args: list[str], runs: int) -> list[float]:
    """Seconds per fresh ``python -m captum_fgattr.bench.cli.main ARGS`` process (output discarded)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "captum_fgattr.bench.cli.main", *args], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per command (default 5)")
    args = parser.parse_args()
    result = {}
    for label, argv in COMMANDS.items():
        times = wall_times(argv, args.runs)
        result[label] = {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3), "runs": args.runs}
        print(f"{label:20s} median {result[label]['median_s']:.3f} s, fastest {result[label]['min_s']:.3f} s")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
