"""Start-up benchmark: ``python benchmarks/startup.py [--runs N]``.

Measures the wall time of ``fgattr --help`` and of ``fgattr <command> --help`` for every command, each in a fresh
process, next to the start-up of a bare interpreter (``python -c pass``) measured in the same run: N rounds, each
round running every candidate once in turn (so a slow spell of a shared machine hits all of them alike). Prints
each candidate's median, fastest run and median over the bare interpreter's median, then one JSON object as the
last line. ``fgattr`` is the console script next to this interpreter (``python -m captum_fgattr.bench.cli.main``
where there is none).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from captum_fgattr.bench.cli.main import COMMANDS

BASELINE = "python -c pass"


def fgattr() -> list[str]:
    """The command line of ``fgattr`` for this interpreter."""
    script = Path(sys.executable).with_name("fgattr")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "captum_fgattr.bench.cli.main"]


def candidates() -> dict[str, list[str]]:
    """Label -> command line: the bare interpreter, ``fgattr --help`` and every ``fgattr <command> --help``."""
    return {BASELINE: [sys.executable, "-c", "pass"], "fgattr --help": [*fgattr(), "--help"],
            **{f"fgattr {name} --help": [*fgattr(), name, "--help"] for name in COMMANDS}}


def wall_time(command: list[str]) -> float:
    """Seconds of one fresh process running ``command`` (output discarded; a failure raises)."""
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def measure(commands: dict[str, list[str]], runs: int) -> dict[str, list[float]]:
    """``runs`` wall times per label, interleaved round by round."""
    times: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(runs):
        for label, command in commands.items():
            times[label].append(wall_time(command))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per command (default 5)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs {args.runs}; expected a positive int")
    times = measure(candidates(), args.runs)
    baseline = statistics.median(times[BASELINE])
    result = {}
    for label, seconds in times.items():
        median = statistics.median(seconds)
        result[label] = {"median_s": round(median, 3), "min_s": round(min(seconds), 3),
                         "over_python": round(median / baseline, 2), "runs": args.runs}
        print(f"{label:28s} median {median:.3f} s, fastest {min(seconds):.3f} s, {median / baseline:5.2f} × {BASELINE}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
