"""captum-fgattr: faithful attention attribution for Vision Transformers (Captum extension)."""
from captum_fgattr.attr import FeatureGradientTransMM, GatedLayer, TransMM
from captum_fgattr.clip import CLIPZeroShotClassifier
from captum_fgattr.sae import SparseAutoencoder

__all__ = ["TransMM", "FeatureGradientTransMM", "GatedLayer", "CLIPZeroShotClassifier", "SparseAutoencoder"]
