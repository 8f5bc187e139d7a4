"""Models: the conv1D encoder, MLP/conv decoders and the heteroscedastic VAE/AE around them."""

from specae.models.checkpoint import load_model, save_model
from specae.models.config import ModelConfig
from specae.models.vae import SpectrumVAE

__all__ = ["ModelConfig", "SpectrumVAE", "load_model", "save_model"]
