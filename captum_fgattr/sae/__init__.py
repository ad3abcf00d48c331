"""Sparse autoencoders on ViT residual streams: model, streamed training, storage (DESIGN §6)."""
from captum_fgattr.sae.model import NormStats, SAEConfig, SparseAutoencoder

__all__ = ["SparseAutoencoder", "SAEConfig", "NormStats"]
