"""Models: the conv1D encoder, MLP/conv decoders and the heteroscedastic VAE/AE around them (tensors only; model
directories are written and read by specae.model_dir)."""

from specae.models.config import ModelConfig
from specae.models.vae import SpectrumVAE

__all__ = ["ModelConfig", "SpectrumVAE"]
