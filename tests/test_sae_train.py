"""SAE training: planted-dictionary recovery, metrics formulas, schedule, reproducibility, LR selection."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from captum_fgattr.sae import (
    SAEConfig,
    SAEMetrics,
    SparseAutoencoder,
    TrainConfig,
    evaluate_sae,
    sae_config_for,
    select_best,
    sweep_lr,
    train_sae,
)
from captum_fgattr.sae.train import _lr_lambda


pytestmark = pytest.mark.usefixtures("one_torch_thread")

D, M, S = 32, 64, 3  # width, planted directions, active directions per token


def planted(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens = sparse non-negative combinations of M known unit directions (rows of the 2nd output)."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(M, D, generator=g)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    active = torch.rand(n, M, generator=g).argsort(dim=1)[:, :S]
    coef = torch.zeros(n, M).scatter(1, active, torch.rand(n, S, generator=g) + 0.5)
    return coef @ dirs, dirs


FAST = TrainConfig(lr=1e-2, epochs=4, batch_tokens=512, warmup_steps=20, progress=False)


def test_planted_dictionary_is_recovered() -> None:
    x, dirs = planted(32768)
    result = train_sae(x, SAEConfig(d_in=D, n_features=128, k=S), FAST)
    best_cos = (dirs @ result.sae.W_dec.T).max(dim=1).values  # decoder rows are unit: cosine
    recovered = float((best_cos >= 0.9).float().mean())
    print(f"planted: EV={result.metrics.explained_variance:.4f} recovered={recovered:.3f}")
    assert result.metrics.explained_variance >= 0.9
    assert recovered >= 0.8
    assert_close(result.sae.W_dec.norm(dim=1), torch.ones(128))  # unit decoder rows kept
    assert result.metrics.mean_l0 <= S


def test_metrics_match_explicit_formulas() -> None:
    x = torch.randn(300, D) * 2 + 1
    sae = SparseAutoencoder(SAEConfig(d_in=D, n_features=64, k=4, normalize="layer_norm"), seed=0)
    with torch.no_grad():
        sae.W_enc[:, :20] = 0.0  # pre-activation 0 or b_enc: these features are rarely / never active
        sae.b_enc[:20] = -100.0
    m = evaluate_sae(sae, x, batch_tokens=64)  # several batches: streaming sums must match
    x64 = x.double()
    with torch.no_grad():
        x_hat = sae(x).double()
        f = sae.encode(x)
    ev = 1 - ((x64 - x_hat) ** 2).sum() / ((x64 - x64.mean(0)) ** 2).sum()
    assert m.explained_variance == pytest.approx(float(ev), rel=1e-6)
    assert m.mse == pytest.approx(float(((x64 - x_hat) ** 2).mean()), rel=1e-6)
    assert m.mean_l0 == pytest.approx(float((f != 0).sum(1).double().mean()))
    assert m.dead_fraction == pytest.approx(float((~(f != 0).any(0)).double().mean()))
    assert m.dead_fraction >= 20 / 64 and m.num_tokens == 300
    sub = evaluate_sae(sae, x, max_tokens=100)  # evenly spaced rows 0, ~3, ..., 299
    rows = torch.linspace(0, 299, 100).round().long()
    with torch.no_grad():
        mse_sub = float(((x64[rows] - sae(x[rows]).double()) ** 2).mean())
    assert sub.num_tokens == 100 and sub.mse == pytest.approx(mse_sub, rel=1e-6)


def test_schedule_is_linear_warmup_then_cosine() -> None:
    lr, warm, total = 1e-3, 5, 25
    factor = _lr_lambda(warm, total, 0.0)
    for step in range(total):
        if step < warm:
            expected = lr * (step + 1) / warm
        else:
            expected = lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
        assert lr * factor(step) == pytest.approx(expected)
    x, _ = planted(2000)
    cfg = TrainConfig(lr=lr, epochs=1, batch_tokens=80, warmup_steps=warm, progress=False, log_every=1)
    hist = train_sae(x, SAEConfig(d_in=D, n_features=64, k=4), cfg).history
    assert [h["lr"] for h in hist] == pytest.approx([lr * factor(s) for s in range(total)])


def test_seeded_training_is_reproducible_and_seed_matters() -> None:
    x, _ = planted(4096)
    cfg = TrainConfig(lr=3e-3, epochs=2, batch_tokens=256, warmup_steps=4, progress=False)
    a = train_sae(x, SAEConfig(d_in=D, n_features=64, k=4), cfg)
    b = train_sae(x, SAEConfig(d_in=D, n_features=64, k=4), cfg)
    c = train_sae(x, SAEConfig(d_in=D, n_features=64, k=4), TrainConfig(**{**cfg.__dict__, "seed": 1}))
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(a.sae, name), getattr(b.sae, name))
    assert not torch.equal(a.sae.W_dec, c.sae.W_dec)
    assert a.metrics == b.metrics


def test_iterable_and_memmap_sources(tmp_path) -> None:
    x, dirs = planted(16384, seed=1)
    chunks = list(x.reshape(128, 128, D))  # e.g. per-image token blocks
    cfg = TrainConfig(lr=1e-2, epochs=4, batch_tokens=250, warmup_steps=10, shuffle_buffer_tokens=1000, progress=False)
    it = train_sae(chunks, SAEConfig(d_in=D, n_features=128, k=S), cfg)
    assert it.metrics.explained_variance >= 0.8 and it.metrics.num_tokens == 16384
    steps = 4 * math.ceil(16384 / 250)  # ceil(N / batch) steps per epoch
    assert [h["step"] for h in it.history] == [*range(0, steps, cfg.log_every), steps - 1]
    again = train_sae(chunks, SAEConfig(d_in=D, n_features=128, k=S), cfg)
    assert torch.equal(it.sae.W_dec, again.sae.W_dec)

    path = tmp_path / "acts.bin"
    x.numpy().astype(np.float32).tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=tuple(x.shape))
    from_mm = train_sae(mm, SAEConfig(d_in=D, n_features=128, k=S), cfg)
    from_tensor = train_sae(x, SAEConfig(d_in=D, n_features=128, k=S), cfg)
    assert_close(from_mm.sae.W_dec, from_tensor.sae.W_dec)  # same rows per batch, same order of steps


def test_relu_sae_trains_with_l1() -> None:
    x, _ = planted(4096)
    cfg = TrainConfig(lr=3e-3, epochs=2, batch_tokens=256, warmup_steps=4, l1_coefficient=1e-3, progress=False)
    r = train_sae(x, SAEConfig(d_in=D, n_features=64, activation="relu", k=None), cfg)
    assert r.metrics.explained_variance > 0.5
    assert r.history[-1]["loss"] > r.history[-1]["mse"]  # the L1 term is part of the loss


def test_default_config_is_thesis_setup() -> None:
    cfg = TrainConfig()
    assert (cfg.lr, cfg.epochs, cfg.batch_tokens, cfg.warmup_steps) == (1e-3, 3, 4096, 500)
    sae_cfg = sae_config_for(768)
    assert (sae_cfg.n_features, sae_cfg.k, sae_cfg.activation) == (49152, 128, "topk")


def m(ev: float, dead: float) -> SAEMetrics:
    return SAEMetrics(explained_variance=ev, dead_fraction=dead, mean_l0=1.0, mse=0.0, num_tokens=1)


def test_selection_rule() -> None:
    # EV > 95%: fewest dead features wins even against a higher EV
    assert select_best([m(0.99, 0.3), m(0.96, 0.1), m(0.90, 0.0)]) == 1
    # none above 95%: best EV
    assert select_best([m(0.80, 0.0), m(0.93, 0.5), m(0.91, 0.2)]) == 1
    # tie on dead fraction among qualifying runs: higher EV
    assert select_best([m(0.96, 0.1), m(0.98, 0.1)]) == 1
    assert select_best([m(0.5, 0.0), m(0.6, 0.0)], ev_threshold=0.55) == 1
    with pytest.raises(ValueError, match="no runs"):
        select_best([])


def test_sweep_trains_each_lr_and_applies_rule() -> None:
    x, _ = planted(4096)
    cfg = TrainConfig(epochs=1, batch_tokens=256, warmup_steps=2, progress=False)
    sweep = sweep_lr(x, [1e-4, 3e-3], SAEConfig(d_in=D, n_features=64, k=S), cfg)
    assert [r.config.lr for r in sweep.results] == [1e-4, 3e-3]
    assert sweep.best_index == select_best([r.metrics for r in sweep.results])
    assert sweep.best is sweep.results[sweep.best_index]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=0.0), "lr=0.0"),
        (dict(epochs=0), "epochs=0"),
        (dict(batch_tokens=-1), "batch_tokens=-1"),
        (dict(b_dec_init="median"), "b_dec_init='median'"),
        (dict(batch_tokens=512, shuffle_buffer_tokens=256), "shuffle_buffer_tokens=256"),
        (dict(warmup_steps=-2), "warmup_steps=-2"),
    ],
)
def test_bad_train_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_bad_sources() -> None:
    with pytest.raises(ValueError, match="width 8"):
        train_sae(torch.randn(10, 8), SAEConfig(d_in=D, n_features=64, k=4), FAST)
    with pytest.raises(ValueError, match="no tokens"):
        train_sae(torch.randn(0, D), SAEConfig(d_in=D, n_features=64, k=4), FAST)
    with pytest.raises(TypeError, match="one-shot iterator"):
        train_sae(iter([torch.randn(10, D)]), SAEConfig(d_in=D, n_features=64, k=4), FAST)
    with pytest.raises(TypeError, match="expected a Tensor"):
        train_sae(3.0, SAEConfig(d_in=D, n_features=64, k=4), FAST)
