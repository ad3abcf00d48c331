"""Ranks opening the same new store at once must all get in (SQLite's WAL switch can say "locked" at once)."""
from __future__ import annotations

import multiprocessing

from captum_fgattr.bench.store import ResultStore


def _open(run_dir, barrier) -> None:
    barrier.wait()
    with ResultStore(run_dir):
        pass


def test_concurrent_first_opens_of_a_store_all_succeed(tmp_path):
    ctx = multiprocessing.get_context("fork")
    exit_codes = []
    for round_ in range(20):  # the race hit 2-4 of 120 opens per 30 rounds before the retry
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=_open, args=(tmp_path / f"run{round_}", barrier)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        exit_codes += [p.exitcode for p in procs]
    assert exit_codes == [0] * 80
