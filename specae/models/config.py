"""Model configuration: everything needed to rebuild a model, stored as plain JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from specae.plumbing import config_from_dict


@dataclass
class ModelConfig:
    npix: int = 0                          # pixels of the observed grid (set from the data by fit)
    kind: str = "vae"                      # "vae" (posterior q(z|x)) or "ae" (point encoder)
    latent_dim: int = 6
    decoder: str = "mlp"                   # "mlp" or "conv"
    dec_hidden: tuple = (64, 256, 1024)    # MLP decoder widths
    conv_channels: int = 32                # conv decoder width on the coarse grid
    conv_coarse: int = 16                  # conv decoder: pixels per coarse cell (2 rounds of x2, then x4)
    enc_channels: tuple = (16, 32, 64, 64)
    enc_hidden: int = 256
    enc_pool: int = 32                     # encoder conv map is pooled to this many cells
    enc_pca: int = 12                      # weighted-PCA projections given to the encoder (>= latent_dim)
    redshift: str | None = None            # label holding z: decode in the rest frame, then shift
    rest_npix: int = 0                     # pixels of the rest-frame grid (redshift mode)
    z_range: tuple | None = None           # redshifts of the training set (redshift mode)
    sigma_floor: float = 1e-3              # lower bound of sigma_model, in normalised flux units
    ivar_scale: float = 1.0                # typical sqrt(ivar) of normalised training data
    norm_window: tuple | None = None       # Angstrom window for per-spectrum median normalisation
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        """Read what `to_json` wrote (settings unknown to this version ignored)."""
        return config_from_dict(cls, json.loads(text))
