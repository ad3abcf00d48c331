"""Training, quality metrics and learning-rate selection for sparse autoencoders (docs/method.md §3).

Thesis defaults (:class:`TrainConfig`, :meth:`SAEConfig` via :func:`sae_config_for`): expansion 64,
TopK k=128, Adam, linear warm-up (500 steps) then cosine annealing, 4,096-token batches, 3 epochs,
encoder initialised as the decoder's transpose, decoder rows kept at unit norm.

Sources of activations (``(num_tokens, d_in)`` rows):

* a ``torch.Tensor`` or ``numpy`` array (incl. ``numpy.memmap`` from :class:`ActivationCache`):
  reshuffled every epoch with a seeded permutation; only one batch at a time is materialised;
* a re-iterable of tensors (each (..., d_in), e.g. :class:`ActivationStream` or a list): re-batched
  through a bounded, seeded shuffle buffer of ``shuffle_buffer_tokens`` tokens.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Union

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from captum_fgattr.sae.model import SAEConfig, SparseAutoencoder

__all__ = [
    "TrainConfig",
    "SAEMetrics",
    "TrainResult",
    "SweepResult",
    "sae_config_for",
    "train_sae",
    "evaluate_sae",
    "select_best",
    "sweep_lr",
    "beyond_edge",
]

ActivationSource = Union[Tensor, np.ndarray, Iterable[Tensor]]
B_DEC_INITS = ("mean", "zeros")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (thesis setup by default)."""

    lr: float = 1e-3  # peak Adam learning rate (the thesis swept {5e-4, 1e-3})
    epochs: int = 3  # passes over the activations
    batch_tokens: int = 4096  # tokens per optimisation step
    warmup_steps: int = 500  # linear warm-up from lr/warmup_steps to lr, then cosine annealing
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    betas: tuple[float, float] = (0.9, 0.999)  # Adam betas
    l1_coefficient: float = 1e-5  # ReLU SAEs only: weight of the L1 penalty sum_k |f_k| (unit decoder rows)
    b_dec_init: str = "mean"  # "mean": b_dec = mean of the first (normalised) batch; "zeros"
    shuffle_buffer_tokens: int = 65536  # iterable sources only: tokens held in the shuffle buffer
    max_grad_norm: float | None = None  # optional gradient-norm clipping
    eval_tokens: int | None = 262144  # tokens used for the final metrics (None = all)
    seed: int = 0  # initialisation and shuffling
    progress: bool = True  # tqdm progress bars
    log_every: int = 50  # history entry every log_every steps

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr={self.lr!r}; expected a positive finite float")
        for name in ("epochs", "batch_tokens", "shuffle_buffer_tokens", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}={value!r}; expected a positive int")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps={self.warmup_steps!r}; expected an int >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio={self.min_lr_ratio!r}; expected a float in [0, 1]")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas={self.betas!r}; expected two floats in [0, 1)")
        if self.l1_coefficient < 0:
            raise ValueError(f"l1_coefficient={self.l1_coefficient!r}; expected >= 0")
        if self.b_dec_init not in B_DEC_INITS:
            raise ValueError(f"b_dec_init={self.b_dec_init!r}; expected one of {list(B_DEC_INITS)}")
        if self.shuffle_buffer_tokens < self.batch_tokens:
            raise ValueError(
                f"shuffle_buffer_tokens={self.shuffle_buffer_tokens} < batch_tokens={self.batch_tokens}; "
                "the shuffle buffer must hold at least one batch"
            )
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm={self.max_grad_norm!r}; expected None or > 0")
        if self.eval_tokens is not None and (not isinstance(self.eval_tokens, int) or self.eval_tokens <= 0):
            raise ValueError(f"eval_tokens={self.eval_tokens!r}; expected None or a positive int")


@dataclass(frozen=True)
class SAEMetrics:
    """Quality of an SAE on a set of tokens (reconstructions in the original, denormalised space)."""

    explained_variance: float  # 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2
    dead_fraction: float  # fraction of features never active on these tokens
    mean_l0: float  # mean number of active features per token
    mse: float  # mean over tokens and dimensions of (x - x_hat)^2
    num_tokens: int  # tokens evaluated

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class TrainResult:
    """A trained SAE, its quality metrics, the settings used and the loss history."""

    sae: SparseAutoencoder
    metrics: SAEMetrics
    config: TrainConfig
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class SweepResult:
    """All runs of a learning-rate sweep (in the order trained: the given rates, then any extensions) and the
    index of the one :func:`select_best` picked."""

    results: list[TrainResult]
    best_index: int

    @property
    def best(self) -> TrainResult:
        return self.results[self.best_index]

    @property
    def at_edge(self) -> bool:
        """The pick is the smallest or the largest of two or more distinct learning rates swept."""
        return beyond_edge([r.config.lr for r in self.results], self.best.config.lr) is not None


def sae_config_for(
    d_in: int,
    *,
    expansion: int = 64,
    k: int | None = 128,
    activation: str = "topk",
    normalize: str = "none",
    hook_layer: int | None = None,
    model_name: str | None = None,
) -> SAEConfig:
    """SAE architecture for width ``d_in`` with ``n_features = expansion * d_in`` (thesis: 64, k=128)."""
    if isinstance(expansion, bool) or not isinstance(expansion, int) or expansion <= 0:
        raise ValueError(f"expansion={expansion!r}; expected a positive int")
    return SAEConfig(
        d_in=d_in, n_features=expansion * d_in, activation=activation,
        k=k if activation == "topk" else None, normalize=normalize, hook_layer=hook_layer, model_name=model_name,
    )


# ---------------------------------------------------------------------------- batching
def _is_array(source: object) -> bool:
    return isinstance(source, (Tensor, np.ndarray))


def _check_array(source: Tensor | np.ndarray) -> None:
    if source.ndim != 2:
        raise ValueError(f"activations of shape {tuple(source.shape)}; expected (num_tokens, d_in)")
    if source.shape[0] == 0:
        raise ValueError("activations hold no tokens")


def _rows(source: Tensor | np.ndarray, index: np.ndarray) -> Tensor:
    if isinstance(source, Tensor):
        return source[torch.from_numpy(index).to(source.device)]
    return torch.from_numpy(np.asarray(source[np.sort(index)], dtype=np.float32))


def _array_batches(source: Tensor | np.ndarray, batch: int, gen: torch.Generator) -> Iterator[Tensor]:
    n = source.shape[0]
    perm = torch.randperm(n, generator=gen).numpy()
    for start in range(0, n, batch):
        yield _rows(source, perm[start : start + batch])


def _flat_chunks(source: Iterable[Tensor], d_in: int | None) -> Iterator[Tensor]:
    for chunk in source:
        if not isinstance(chunk, Tensor):
            raise TypeError(f"an activation batch is a {type(chunk).__name__}; expected a torch.Tensor (..., d_in)")
        if chunk.dim() == 0 or (d_in is not None and chunk.shape[-1] != d_in):
            raise ValueError(f"an activation batch has shape {tuple(chunk.shape)}; expected (..., d_in={d_in})")
        yield chunk.detach().reshape(-1, chunk.shape[-1])


def _buffered_batches(
    source: Iterable[Tensor], d_in: int | None, batch: int, capacity: int, gen: torch.Generator
) -> Iterator[Tensor]:
    """Seeded shuffle buffer: fill to ``capacity`` tokens, shuffle, emit full batches down to half
    the capacity, repeat; the remainder is shuffled and emitted at the end (last batch may be short)."""
    held: list[Tensor] = []
    size = 0
    for chunk in _flat_chunks(source, d_in):
        held.append(chunk)
        size += chunk.shape[0]
        if size >= capacity:
            data = torch.cat(held)
            data = data[torch.randperm(size, generator=gen).to(data.device)]
            emit = max((size - capacity // 2) // batch, 1) * batch
            for start in range(0, emit, batch):
                yield data[start : start + batch]
            held, size = [data[emit:]], size - emit
    if size:
        data = torch.cat(held)
        data = data[torch.randperm(size, generator=gen).to(data.device)]
        for start in range(0, size, batch):
            yield data[start : start + batch]


def _count_tokens(source: Iterable[Tensor], d_in: int | None) -> int:
    return sum(chunk.shape[0] for chunk in _flat_chunks(source, d_in))


def _first_width(source: ActivationSource) -> int:
    if _is_array(source):
        return int(source.shape[-1])
    for chunk in _flat_chunks(source, None):
        return int(chunk.shape[-1])
    raise ValueError("the activation source yielded no batches")


def _lr_lambda(warmup: int, total: int, floor: float):
    def factor(step: int) -> float:  # step = number of optimiser steps already taken
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


# ---------------------------------------------------------------------------- metrics
@torch.no_grad()
def evaluate_sae(
    sae: SparseAutoencoder,
    activations: ActivationSource,
    *,
    max_tokens: int | None = None,
    batch_tokens: int = 4096,
    progress: bool = False,
) -> SAEMetrics:
    """Explained variance, dead-feature fraction, mean L0 and MSE of ``sae`` on ``activations``,
    accumulated batch by batch.

    ``activations``: rows (num_tokens, d_in) as for :func:`train_sae`. With ``max_tokens``, an
    array source is subsampled evenly over all its rows (every image contributes); an iterable
    source contributes its first ``max_tokens`` tokens.
    """
    if _is_array(activations):
        _check_array(activations)
        n = activations.shape[0]
        index = np.arange(n) if max_tokens is None or max_tokens >= n else np.linspace(0, n - 1, max_tokens).round().astype(np.int64)
        chunks: Iterable[Tensor] = (
            _rows(activations, index[s : s + batch_tokens]) for s in range(0, len(index), batch_tokens)
        )
    else:
        chunks = _flat_chunks(activations, sae.d_in)
    sse = 0.0
    sum_sq = 0.0
    sum_x = torch.zeros(sae.d_in, dtype=torch.float64, device=sae.device)
    fired = torch.zeros(sae.n_features, dtype=torch.bool, device=sae.device)
    l0 = 0.0
    count = 0
    for x in tqdm(chunks, desc="evaluate SAE", disable=not progress, leave=False):
        if max_tokens is not None and count >= max_tokens:
            break
        if max_tokens is not None:
            x = x[: max_tokens - count]
        x = x.to(device=sae.device, dtype=sae.dtype)
        x_hat, f = sae.forward_with_codes(x)
        active = f != 0
        x64 = x.double()
        sse += float(((x64 - x_hat.double()) ** 2).sum())
        sum_sq += float((x64**2).sum())
        sum_x += x64.sum(0)
        fired |= active.any(0)
        l0 += float(active.sum())
        count += x.shape[0]
    if count == 0:
        raise ValueError("no tokens to evaluate the SAE on")
    total_var = sum_sq - float((sum_x**2).sum()) / count
    ev = 1.0 - sse / total_var if total_var > 0 else float("nan")
    return SAEMetrics(
        explained_variance=ev,
        dead_fraction=1.0 - float(fired.float().mean()),
        mean_l0=l0 / count,
        mse=sse / (count * sae.d_in),
        num_tokens=count,
    )


# ---------------------------------------------------------------------------- training
def train_sae(
    activations: ActivationSource,
    sae_config: SAEConfig | None = None,
    train_config: TrainConfig | None = None,
    *,
    eval_activations: ActivationSource | None = None,
    tokens_per_epoch: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> TrainResult:
    """Train a sparse autoencoder on ``activations`` (rows (num_tokens, d_in), see module doc).

    Args:
        activations: Tensor / numpy array (num_tokens, d_in), or a re-iterable of tensors (..., d_in).
        sae_config: architecture; default :func:`sae_config_for` the data width (64x, TopK 128).
        train_config: optimisation; default :class:`TrainConfig` (thesis setup).
        eval_activations: tokens for the final metrics (default: ``activations``, first
            ``train_config.eval_tokens`` of them).
        tokens_per_epoch: iterable sources only: tokens per pass, to plan the schedule. Default:
            the source's ``num_tokens`` attribute, else one counting pass over the source.
        device, dtype: where and in which precision the SAE trains.

    Returns:
        :class:`TrainResult` with the SAE (on ``device``), :class:`SAEMetrics` and the loss history.
        Same seed, data and settings give identical weights.

    Example:
        >>> x = torch.randn(512, 8)
        >>> cfg = TrainConfig(epochs=1, batch_tokens=128, warmup_steps=1, progress=False)
        >>> r = train_sae(x, SAEConfig(d_in=8, n_features=32, k=4), cfg)
        >>> r.sae.n_features, r.metrics.num_tokens, r.metrics.mean_l0 <= 4
        (32, 512, True)
    """
    cfg = train_config or TrainConfig()
    if _is_array(activations):
        _check_array(activations)
    elif isinstance(activations, Iterable):
        if iter(activations) is activations and cfg.epochs > 1:
            raise TypeError(
                "activations is a one-shot iterator but epochs > 1; pass a re-iterable (list, DataLoader-backed "
                "ActivationStream, tensor or memmap) or epochs=1"
            )
    else:
        raise TypeError(
            f"activations is a {type(activations).__name__}; expected a Tensor / numpy array (num_tokens, d_in) "
            "or an iterable of Tensors (..., d_in)"
        )
    d_in = _first_width(activations) if sae_config is None else sae_config.d_in
    if sae_config is None:
        sae_config = sae_config_for(d_in)
    if _is_array(activations) and activations.shape[1] != sae_config.d_in:
        raise ValueError(f"activations have width {activations.shape[1]}; the SAE config has d_in={sae_config.d_in}")

    if _is_array(activations):
        n_tokens = int(activations.shape[0])
    else:
        n_tokens = tokens_per_epoch or getattr(activations, "num_tokens", None) or _count_tokens(activations, d_in)
    if n_tokens <= 0:
        raise ValueError("the activation source holds no tokens")
    steps_per_epoch = math.ceil(n_tokens / cfg.batch_tokens)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.warmup_steps >= total_steps:
        warnings.warn(
            f"warmup_steps={cfg.warmup_steps} >= total steps {total_steps}: the learning rate never reaches "
            f"lr={cfg.lr}; lower warmup_steps for this little data",
            stacklevel=2,
        )

    device = torch.device(device) if device is not None else torch.device("cpu")
    sae = SparseAutoencoder(sae_config, dtype=dtype, device=device, seed=cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)  # data order
    optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.warmup_steps, total_steps, cfg.min_lr_ratio))
    history: list[dict[str, float]] = []
    step = 0
    bar = tqdm(total=total_steps, desc="train SAE", unit="step", disable=not cfg.progress, leave=False)
    try:
        for epoch in range(cfg.epochs):
            if _is_array(activations):
                batches = _array_batches(activations, cfg.batch_tokens, gen)
            else:
                batches = _buffered_batches(activations, d_in, cfg.batch_tokens, cfg.shuffle_buffer_tokens, gen)
            for x in batches:
                x = x.to(device=device, dtype=dtype)
                x_norm, _ = sae.normalize(x)
                if step == 0 and cfg.b_dec_init == "mean":
                    with torch.no_grad():
                        sae.b_dec.copy_(x_norm.mean(0))
                f = sae.activate(sae.pre_activation(x_norm))
                recon = sae.decode_normalized(f)
                mse = (recon - x_norm).pow(2).sum(-1).mean()
                loss = mse
                if sae_config.activation == "relu" and cfg.l1_coefficient > 0:
                    loss = loss + cfg.l1_coefficient * f.abs().sum(-1).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                with torch.no_grad():  # keep decoder rows on the unit sphere: drop the radial gradient
                    g, w = sae.W_dec.grad, sae.W_dec
                    g.sub_((g * w).sum(1, keepdim=True) * w)
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.max_grad_norm)
                lr_now = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                sae.normalize_decoder_()
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"SAE training diverged at step {step} (loss={loss_value}); lower lr={cfg.lr}")
                if step % cfg.log_every == 0 or step == total_steps - 1:
                    history.append({"step": step, "epoch": epoch, "lr": lr_now,
                                    "loss": loss_value, "mse": float(mse.detach())})
                    bar.set_postfix(loss=f"{loss_value:.4g}")
                step += 1
                bar.update(1)
    finally:
        bar.close()
    sae.eval()
    sae.requires_grad_(False)
    metrics = evaluate_sae(
        sae, activations if eval_activations is None else eval_activations,
        max_tokens=cfg.eval_tokens, batch_tokens=cfg.batch_tokens, progress=cfg.progress,
    )
    return TrainResult(sae=sae, metrics=metrics, config=cfg, history=history)


def select_best(metrics: Sequence[SAEMetrics], ev_threshold: float = 0.95) -> int:
    """Index of the run chosen by the thesis rule: among runs with explained variance
    > ``ev_threshold`` the one with the fewest dead features (ties: higher EV); if none
    qualifies, the run with the best explained variance (ties: fewer dead features)."""
    if not metrics:
        raise ValueError("no runs to select from")
    ok = [i for i, m in enumerate(metrics) if m.explained_variance > ev_threshold]
    ev = [m.explained_variance if math.isfinite(m.explained_variance) else -math.inf for m in metrics]
    if ok:
        return min(ok, key=lambda i: (metrics[i].dead_fraction, -ev[i], i))
    return min(range(len(metrics)), key=lambda i: (-ev[i], metrics[i].dead_fraction, i))


def beyond_edge(lrs: Sequence[float], best: float) -> float | None:
    """The next learning rate beyond the edge of ``lrs`` where ``best`` lies, one step of the grid's own factor
    there (the edge's ratio to its neighbour: ``[5e-4, 1e-3]``, best 1e-3 -> 2e-3; best 5e-4 -> 2.5e-4);
    ``None`` if ``best`` is interior or ``lrs`` holds fewer than two distinct values."""
    grid = sorted(set(lrs))
    if len(grid) < 2 or grid[0] < best < grid[-1]:
        return None
    return grid[-1] * (grid[-1] / grid[-2]) if best == grid[-1] else grid[0] / (grid[1] / grid[0])


def sweep_lr(
    activations: ActivationSource,
    lrs: Sequence[float],
    sae_config: SAEConfig | None = None,
    train_config: TrainConfig | None = None,
    *,
    ev_threshold: float = 0.95,
    lr_extensions: int = 0,
    eval_activations: ActivationSource | None = None,
    tokens_per_epoch: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> SweepResult:
    """Train one SAE per learning rate in ``lrs`` (same seed and data otherwise) and pick one
    with :func:`select_best`.

    A pick at the edge of a grid of two or more rates says the best rate may lie outside it: the grid is then
    extended by one step beyond that edge (:func:`beyond_edge`) and the pick made again, up to ``lr_extensions``
    times in all (default 0: the given grid only). A pick still at an edge afterwards gets a ``UserWarning``
    naming the rates and their explained variances (:attr:`SweepResult.at_edge`).
    """
    if not lrs:
        raise ValueError("lrs is empty; give at least one learning rate")
    if isinstance(lr_extensions, bool) or not isinstance(lr_extensions, int) or lr_extensions < 0:
        raise ValueError(f"lr_extensions={lr_extensions!r}; expected an int >= 0")
    base = train_config or TrainConfig()

    def run(lr: float) -> TrainResult:
        return train_sae(activations, sae_config, replace(base, lr=float(lr)), eval_activations=eval_activations,
                         tokens_per_epoch=tokens_per_epoch, device=device, dtype=dtype)

    results = [run(lr) for lr in lrs]
    sweep = SweepResult(results=results, best_index=select_best([r.metrics for r in results], ev_threshold))
    for _ in range(lr_extensions):
        if not sweep.at_edge:
            break
        results.append(run(beyond_edge([r.config.lr for r in results], sweep.best.config.lr)))
        sweep.best_index = select_best([r.metrics for r in results], ev_threshold)
    if sweep.at_edge:
        ev = ", ".join(f"{r.config.lr:g}: {r.metrics.explained_variance:.4f}"
                       for r in sorted(results, key=lambda r: r.config.lr))
        warnings.warn(f"the selected learning rate {sweep.best.config.lr:g} lies at the edge of the swept grid after "
                      f"{len(results) - len(lrs)} extension(s) (lr_extensions={lr_extensions}); the best rate may lie "
                      f"outside it: extend the grid (explained variance per lr: {ev})", UserWarning, stacklevel=2)
    return sweep
