"""The study's progress output: the ETA (formula, early line, resumed runs) on a fake clock, and the metrics'
warnings counted into one summary line per experiment instead of printed between the progress bar's lines."""
from __future__ import annotations

import copy
import io
import math
import pickle
import re
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from captum_fgattr.bench.evaluate import evaluate_methods
from captum_fgattr.bench.experiments import StudyClock, run_sweep, run_test, transmm_spec
from captum_fgattr.bench.config import EvalConfig, Protocol
from captum_fgattr.bench.methods import MethodSpec
from captum_fgattr.bench.store import ResultStore
from quantus_saco.scores import UndefinedScoreWarning, saco
from tests.test_bench_evaluate import CFG, tiny_setup

#: the protocol of ``test_run_study_python_api_on_tensors``: 8 val × 5 methods + 3 test × 16 methods = 88
PROTOCOL = Protocol(layers=(1,), variants=("combined", "activation"), multi_layers=((0, 2),), kappas=(0.5,),
                    c_maxes=(2.0,), baselines=("random",), shuffle_seeds=(0, 1), permute_seeds=(3,), val_images=None,
                    test_images=3)
LINE = re.compile(r"fgattr: (\S+) (?:at|finished \() ?([\d,]+) of ~([\d,]+) evaluations\)?; elapsed (\S+), ETA (\S+)")


class FakeTime:
    """A timer that stands still unless moved."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def seconds(text: str) -> float:
    """"1m05s" / "45s" / "?" (``_duration``) -> seconds (NaN for "?")."""
    if text == "?":
        return math.nan
    minutes, _, secs = text.rstrip("s").rpartition("m")
    return 60 * int(minutes or 0) + int(secs)


def parsed(stream: io.StringIO) -> list[tuple[str, int, int, float, float]]:
    """(experiment, evaluations done, planned, elapsed s, ETA s) of every progress line."""
    return [(m[1], int(m[2].replace(",", "")), int(m[3].replace(",", "")), seconds(m[4]), seconds(m[5]))
            for m in map(LINE.match, stream.getvalue().splitlines()) if m]


def test_the_eta_is_seconds_per_computed_evaluation_times_evaluations_left():
    time, out = FakeTime(), io.StringIO()
    clock = StudyClock(100, stream=out, timer=time, first_eta=10.0)
    a, b, c = (MethodSpec("random", {"seed": s}) for s in range(3))
    clock.begin("single_layer", "val", [a, b], 10)
    clock.start(20)
    time.now = 4.0
    clock.advance(10)
    assert out.getvalue() == ""  # 4 s measured: too early for an ETA
    time.now = 12.0
    clock.advance(10)  # 12 s for 20 evaluations; 80 left: ETA 0.6 s × 80
    assert out.getvalue() == "fgattr: single_layer/val at 20 of ~100 evaluations; elapsed 12s, ETA 48s\n"
    assert clock.next_eta == 24.0  # the next line once the measured time has doubled
    clock.finished("single_layer")
    time.now = 112.0  # selecting, loading: not computing
    clock.begin("multi_layer", "val", [a, c], 10)  # a counted before: 10 new evaluations
    clock.start(4)  # 6 of them stored by an earlier run: done, and not in the rate
    time.now = 116.0
    clock.advance(4)
    assert (clock.done, clock.computed, clock.busy, clock.pending) == (30, 24, 16.0, 0)
    assert clock.eta() == pytest.approx(16 / 24 * 70)
    clock.finished("multi_layer")
    clock.begin("test", "test", [a, b], 5)  # the last experiment: its methods replace the plan
    assert clock.planned == clock.done == 40 and clock.eta() == pytest.approx(16 / 24 * 10)
    assert math.isnan(StudyClock(10).eta())  # before anything was computed
    assert parsed(out) == [("single_layer/val", 20, 100, 12.0, 48.0), ("single_layer", 20, 100, 12.0, 48.0),
                           ("multi_layer", 30, 100, 116.0, 47.0)]


def test_for_study_plans_each_distinct_evaluation_once():
    # val: TransMM, 2 single-layer, 1 multi-layer, the κ × c_max grid less its point at (κ, c_max) = 1 + 2 + 1 + 1
    # test: TransMM, 2 configurations × (real + 2 shuffled + grad_input + centered + bias + 1 permuted), random
    assert StudyClock.for_study(PROTOCOL, 8, 6).planned == 8 * 5 + 3 * 16
    on_grid = replace(PROTOCOL, kappas=(0.5, 1.0), c_maxes=(10.0, 2.0))  # contains (κ, c_max) = (0.5, 10)
    assert StudyClock.for_study(on_grid, 8, 6).planned == 8 * (1 + 2 + 1 + 3) + 3 * 16


def test_the_replicates_are_planned_after_the_test_experiment():
    # a replicate: TransMM, the selected configuration and its replicate controls grad_input_centered, bias_projection
    planned = StudyClock.for_study(PROTOCOL, 8, 6, replicates=2)
    assert planned.replicate_evaluations == 2 * 3 * 4 and planned.planned == 8 * 5 + 3 * 16 + 2 * 3 * 4
    time, out = FakeTime(), io.StringIO()
    clock = replace(planned, stream=out, timer=time, first_eta=1.0)
    specs = [MethodSpec("random", {"seed": s}) for s in range(4)]
    clock.begin("test", "test", specs[:2], 3)  # the test experiment's methods replace the plan, the replicates stay
    assert (clock.done, clock.planned) == (6, 6 + 24)
    clock.start(6)
    time.now = 6.0
    clock.advance(6)
    clock.finished("test")
    clock.begin("test", "test@sae-seed-1", specs, 3)  # the same methods in another split: new evaluations
    assert (clock.done, clock.planned) == (18, 30)
    clock.start(12)
    time.now = 18.0
    clock.advance(12)
    clock.finished("test@sae-seed-1")
    assert parsed(out)[-1] == ("test@sae-seed-1", 18, 30, 18.0, 12.0)  # 1 s per evaluation, 12 left


def run_with_fake_time(run_dir, sweep_only=False) -> list[tuple[str, int, int, float, float]]:
    """The protocol on the tiny setup with a clock on which 1 s passes per evaluation computed (and no other time)."""
    model, data, saes = tiny_setup(8)
    images, labels = data.tensors
    time, out = FakeTime(), io.StringIO()
    clock = replace(StudyClock.for_study(PROTOCOL, 8, 6), stream=out, timer=time, first_eta=5.0)
    advance = clock.advance

    def computing(evaluations: int) -> None:
        time.now += evaluations
        advance(evaluations)

    clock.advance = computing  # type: ignore[method-assign]
    with ResultStore(run_dir) as store:
        run_sweep(model, (images, labels), saes, store, PROTOCOL, CFG, clock)
        if not sweep_only:
            run_test(model, (images[:6], labels[:6]), saes, store, PROTOCOL, CFG, clock)
    return parsed(out)


def test_an_eta_line_comes_before_the_first_experiment_ends_and_follows_the_formula(tmp_path):
    lines = run_with_fake_time(tmp_path)
    names = [name for name, *_ in lines]
    assert names[0] == "single_layer/val" and names.index("single_layer") > 0  # the ETA before the first experiment ends
    assert names[-1] == "test" and "test/test" in names
    for _, done, planned, elapsed, eta in lines:
        # fresh run at 1 s per evaluation: elapsed = evaluations done, ETA = evaluations left (the plan is exact)
        assert planned == 88 and elapsed == done and eta == planned - done


def test_stored_evaluations_of_a_resumed_run_do_not_enter_the_rate(tmp_path):
    run_with_fake_time(tmp_path, sweep_only=True)
    lines = run_with_fake_time(tmp_path)  # the sweep is stored: only the test is computed
    # nothing computed yet: the stored sweep counts as done, no rate, no ETA
    assert [line[:4] for line in lines[:3]] == [("single_layer", 24, 88, 0.0), ("multi_layer", 32, 88, 0.0),
                                                ("kappa_cmax", 40, 88, 0.0)]
    assert all(math.isnan(line[4]) for line in lines[:3])
    resumed = [line for line in lines if line[0] == "test/test"]
    assert resumed and all(eta == planned - done and elapsed == done - 40  # 40 validation evaluations stored
                           for _, done, planned, elapsed, eta in resumed)


def test_undefined_saco_is_counted_into_one_line_after_the_bar(tmp_path, capsys):
    model, data, _ = tiny_setup(6)
    with torch.no_grad():
        model.head.weight.zero_()  # constant logits: zero gradients, constant TransMM maps, SaCo undefined
    specs = [transmm_spec(), MethodSpec("random", {"seed": 1})]
    with ResultStore(tmp_path) as store, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate_methods(model, data, specs, store, experiment="e", split="val",
                         config=replace(CFG, progress=True))
        undefined = [int(np.isnan(store.scores("val", spec.key)["saco"]).sum()) for spec in specs]
    assert undefined == [6, 0]
    assert not [w for w in caught if issubclass(w.category, UndefinedScoreWarning)]
    err = re.split(r"[\r\n]", capsys.readouterr().err)
    assert "fgattr: e/val: SaCo undefined (all group saliences equal) for 6 of 12 evaluations; excluded and counted " \
           "in the tables" in err
    assert not [line for line in err if "Warning" in line]


def test_quantus_saco_users_still_get_the_warning():
    with pytest.warns(RuntimeWarning, match=r"SaCo is undefined \(all group saliences equal\) for 1 of 2 samples") as w:
        scores = saco(torch.tensor([[1.0, 1.0], [2.0, 1.0]]), torch.tensor([[0.5, 0.1], [0.5, 0.1]]))
    assert np.isnan(scores[0].item()) and scores[1].item() == 1.0
    warning = w[0].message
    assert isinstance(warning, UndefinedScoreWarning) and (warning.count, warning.total) == (1, 2)
    for twin in (copy.copy(warning), pickle.loads(pickle.dumps(warning))):
        assert str(twin) == str(warning) and twin.metric == "SaCo"


def test_a_config_without_bars_prints_the_same_summary(tmp_path, capsys):
    model, data, _ = tiny_setup(4)
    with torch.no_grad():
        model.head.weight.zero_()
    with ResultStore(tmp_path) as store:
        evaluate_methods(model, data, [transmm_spec()], store, experiment="e", split="val",
                         config=EvalConfig(batch_size=4, progress=False, metrics=CFG.metrics))
    assert capsys.readouterr().err == ("fgattr: e/val: SaCo undefined (all group saliences equal) for 4 of 4 "
                                       "evaluations; excluded and counted in the tables\n")
