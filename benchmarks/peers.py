"""Published peers trained on the benchmark's own data: spender (Melchior et al. 2023, AJ 166, 74).

spender is optional and only ever imported here, never by the specae package. It is found either installed
(`pip install --no-deps spender nflows GPUtil humanize psutil`) or as a folder benchmarks/.peers put on
sys.path (`pip install --no-deps --target benchmarks/.peers ...`), which is how it travels to a machine
without internet. See benchmarks/README.md.

    peer = SpenderPeer(latent_dim=6, minutes=10).fit(train, val)
    flux = peer.denoise(test)          # (N, npix) reconstruction in the input's units; spender gives no sigma
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from specae.data.spectra import Spectra, _masked_median

PEERS_DIR = Path(__file__).resolve().parent / ".peers"
# spender's normalisation window [A, rest frame]: "flatish region that is well observed out to z ~ 0.5"
# (spender.data.sdss.SDSS.prepare_spectrum); used for redshifted spectra that cover it.
REST_NORM_WINDOW = (5300.0, 5850.0)


def import_spender():
    """The spender module, from the environment or benchmarks/.peers; raises ImportError saying why not."""
    if PEERS_DIR.is_dir() and str(PEERS_DIR) not in sys.path:
        sys.path.insert(0, str(PEERS_DIR))
    import spender                                           # noqa: F401  (ImportError names the missing piece)
    from spender import Instrument, SpectrumAutoencoder      # noqa: F401
    return spender


def spender_unavailable() -> str | None:
    """None when spender can be imported, else the reason (for the results table)."""
    try:
        import_spender()
    except Exception as e:                                   # any import-time failure means "cannot run it"
        return f"{type(e).__name__}: {e}"
    return None


class SpenderPeer:
    """spender's SpectrumAutoencoder trained with its own loss and recipe on `Spectra`.

    Recipe of spender's train/train_sdss.py (paper I): Adam, one-cycle learning rate peaking at lr (1e-3, its
    command-line default), the fidelity loss `model.loss` = sum 0.5 w (y - y')^2 / L with w the inverse
    variance of the normalised spectrum (0 where masked), up to 200 epochs, the last model kept. Spectra are
    divided by their median flux in the rest-frame window 5300-5850 A (spender's choice; the median of all valid
    pixels when the window is not covered), masked pixels set to 0 and given weight 0, as spender's data
    preparation does. With a redshift label the decoder works on a rest grid from min(wave)/(1+z_max) to
    max(wave)/(1+z_min) with int(npix (1+z_max)/(1+z_min)) bins (spender's linear grid); without one (z = 0)
    the rest grid is the observed grid plus one pixel at each end, so spender's interpolation is exact and
    its "outside the rest frame" zeroing never hits an observed pixel.

    Differences from the published runs, for a fixed budget: the number of epochs is min(epochs, what fits in
    `minutes` after timing the first epoch, run at the cycle's starting rate; `epochs` when `minutes` is
    None), the one-cycle schedule spans the epochs after it; batches hold min(batch_size, ceil(N/10))
    spectra so small training sets still take 10 steps per epoch; float32
    throughout (spender's scripts use fp16 mixed precision through accelerate).
    """

    def __init__(self, latent_dim: int = 6, redshift: str | None = None, minutes: float = 10.0, epochs: int = 200,
                 lr: float = 1e-3, batch_size: int = 512, device: str = "auto", seed: int = 0):
        self.latent_dim = latent_dim
        self.redshift = redshift
        self.minutes = minutes
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        self.seed = seed

    def fit(self, train: Spectra, val: Spectra | None = None) -> "SpenderPeer":
        """Train on `train` (validation loss on `val` is recorded, not used to choose a model)."""
        spender = import_spender()
        torch.manual_seed(self.seed)
        self.wave_ = train.wave.copy()
        z = self._z(train)
        wave = torch.as_tensor(train.wave, dtype=torch.float32)
        if self.redshift:
            lo, hi = train.wave[0] / (1 + z.max()), train.wave[-1] / (1 + z.min())
            rest = torch.linspace(lo, hi, int(train.npix * (1 + z.max()) / (1 + z.min())), dtype=torch.float32)
        else:
            rest = torch.cat([2 * wave[:1] - wave[1:2], wave, 2 * wave[-1:] - wave[-2:-1]])
        instrument = spender.Instrument(wave)
        self.model_ = spender.SpectrumAutoencoder(instrument, rest, n_latent=self.latent_dim).to(self.device)
        y, w, zt = (t.to(self.device) for t in self._tensors(train)[:3])
        val_t = None if val is None or len(val) == 0 else tuple(t.to(self.device) for t in self._tensors(val)[:3])

        batch = max(1, min(self.batch_size, math.ceil(len(train) / 10)))
        opt = torch.optim.Adam(self.model_.parameters(), lr=self.lr)
        # OneCycleLR starts at lr / 25 (its div_factor): the first epoch, which times the budget, runs there
        for group in opt.param_groups:
            group["lr"] = self.lr / 25
        gen = torch.Generator().manual_seed(self.seed)
        history = {"train_loss": [], "val_loss": []}
        start, sched, n_epochs, epoch = time.perf_counter(), None, self.epochs, 0
        while epoch < n_epochs:
            self.model_.train()
            total = 0.0
            for idx in torch.randperm(len(y), generator=gen).split(batch):
                idx = idx.to(self.device)
                loss = self.model_.loss(y[idx], w[idx], instrument=self.model_.encoder.instrument, z=zt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item()
            epoch += 1
            history["train_loss"].append(total / len(y))
            history["val_loss"].append(None if val_t is None else self._loss(*val_t) / len(val_t[0]))
            elapsed = time.perf_counter() - start
            if epoch == 1:
                fits = self.epochs if self.minutes is None else int(self.minutes * 60 / elapsed)
                n_epochs = max(1, min(self.epochs, fits))
                if n_epochs > 2:                              # the cycle spans the epochs after this one
                    sched = torch.optim.lr_scheduler.OneCycleLR(opt, self.lr, total_steps=n_epochs - 1)
            elif sched is not None and epoch < n_epochs:
                sched.step()
            if self.minutes is not None and elapsed > 1.1 * self.minutes * 60:   # the machine slowed down: stop
                break
        self.history_ = {**history, "epochs": epoch, "planned_epochs": n_epochs, "batch_size": batch,
                         "minutes": (time.perf_counter() - start) / 60}
        return self

    @torch.no_grad()
    def denoise(self, spectra: Spectra, batch_size: int = 256) -> np.ndarray:
        """Reconstructions (N, npix) float32 in the input's units (masked pixels included)."""
        y, _, z, norm = self._tensors(spectra)
        self.model_.eval()
        out = [self.model_(y[a:a + batch_size].to(self.device), instrument=self.model_.encoder.instrument,
                           z=z[a:a + batch_size].to(self.device)).float().cpu()
               for a in range(0, len(y), batch_size)]
        return (torch.cat(out).numpy() * norm[:, None]).astype(np.float32)

    @torch.no_grad()
    def encode(self, spectra: Spectra, batch_size: int = 256) -> np.ndarray:
        """spender's latents s, (N, latent_dim)."""
        y = self._tensors(spectra)[0]
        self.model_.eval()
        return torch.cat([self.model_.encode(y[a:a + batch_size].to(self.device)).float().cpu()
                          for a in range(0, len(y), batch_size)]).numpy()

    @torch.no_grad()
    def _loss(self, y, w, z, batch_size: int = 256) -> float:
        self.model_.eval()
        return sum(self.model_.loss(y[a:a + batch_size], w[a:a + batch_size], instrument=self.model_.encoder.instrument,
                                    z=z[a:a + batch_size]).item() for a in range(0, len(y), batch_size))

    def _z(self, spectra: Spectra) -> np.ndarray:
        return spectra.redshifts(self.redshift) if self.redshift else np.zeros(len(spectra))

    def _tensors(self, spectra: Spectra):
        """(y, w, z) float32 tensors (N, npix), (N, npix), (N,) as spender trains on them, and norm (N,) numpy."""
        if spectra.npix != self.wave_.size or not np.allclose(spectra.wave, self.wave_, rtol=1e-10, atol=0):
            raise ValueError("spectra are on a different wavelength grid than the one spender was trained on")
        z = self._z(spectra)
        rest = spectra.wave[None] / (1 + z[:, None])
        window = (rest > REST_NORM_WINDOW[0]) & (rest < REST_NORM_WINDOW[1])
        norm = _masked_median(spectra.flux, spectra.mask | ~window) if self.redshift else np.full(len(z), np.nan)
        fallback = _masked_median(spectra.flux, spectra.mask)
        norm = np.where(norm > 0, norm, np.where(fallback > 0, fallback, 1.0))
        y = np.where(spectra.mask, 0.0, spectra.flux / norm[:, None])
        w = np.where(spectra.mask, 0.0, spectra.ivar * norm[:, None] ** 2)
        return (torch.as_tensor(y, dtype=torch.float32), torch.as_tensor(w, dtype=torch.float32),
                torch.as_tensor(z, dtype=torch.float32), norm)
