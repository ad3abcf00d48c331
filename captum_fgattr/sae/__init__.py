"""Sparse autoencoders on ViT residual streams: model, streamed training, storage (docs/method.md §3)."""
from captum_fgattr.sae.collect import ActivationCache, ActivationStream, iter_patch_activations
from captum_fgattr.sae.io import read_sae_config
from captum_fgattr.sae.model import NormStats, SAEConfig, SparseAutoencoder, load_sae, save_sae
from captum_fgattr.sae.train import (
    SAEMetrics,
    SweepResult,
    TrainConfig,
    TrainResult,
    evaluate_sae,
    sae_config_for,
    select_best,
    sweep_lr,
    train_sae,
)

__all__ = [
    "SparseAutoencoder",
    "SAEConfig",
    "NormStats",
    "TrainConfig",
    "SAEMetrics",
    "TrainResult",
    "SweepResult",
    "sae_config_for",
    "train_sae",
    "evaluate_sae",
    "select_best",
    "sweep_lr",
    "save_sae",
    "load_sae",
    "read_sae_config",
    "iter_patch_activations",
    "ActivationStream",
    "ActivationCache",
]
