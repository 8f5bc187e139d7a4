"""The Payne APOGEE spectrum emulator (El-Badry et al. 2018; The Payne, MIT licence) as a mock generator.

One tiny network per pixel maps 5 stellar labels to continuum-normalised H-band flux on APOGEE's
7214-pixel vacuum grid (15168-16937 A, chip gaps removed). The files live in ../shared/data/payne
beside the checkout (or $SPECAE_PAYNE_DIR) and are never copied into the repository.

    emu = PayneEmulator(default_payne_dir())
    noisy, clean = emu.mock(1000, seed=0)
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from specae.data.spectra import Spectra
from specae.data.synthetic import _chunks, _serial, _snr_range
from specae.errors import SpecaeError

LABEL_NAMES = ("TEFF", "LOGG", "FE_H", "MG_FE", "VMACRO")
# Where the emulator is valid (its training set: main-sequence stars): Teff [K], logg, [Fe/H], [Mg/Fe], vmacro [km/s]
VALID_RANGE = np.array([(4200.0, 7000.0), (4.0, 5.0), (-0.8, 0.4), (-0.3, 0.5), (0.0, 45.0)])
_FILES = ("NN_normalized_spectra.npz", "apogee_wavelength.npz", "apogee_mask.npz")


def default_payne_dir() -> Path | None:
    """$SPECAE_PAYNE_DIR if set, else ../shared/data/payne beside the repository, if that folder exists."""
    env = os.environ.get("SPECAE_PAYNE_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data" / "payne"
    return path if path.is_dir() else None


class PayneEmulator:
    """Continuum-normalised APOGEE spectra from (TEFF, LOGG, FE_H, MG_FE, VMACRO).

    Attributes: wave (7214,) vacuum A; bad_pixels (7214,) bool, APOGEE's pixels to ignore.
    """

    def __init__(self, directory=None):
        directory = default_payne_dir() if directory is None else Path(directory)
        if directory is None:
            raise SpecaeError("no Payne emulator folder: set SPECAE_PAYNE_DIR or pass the directory holding "
                              + ", ".join(_FILES))
        arrays = {}
        for name in _FILES:
            path = Path(directory) / name
            if not path.is_file():
                raise SpecaeError(f"{path}: Payne emulator file not found")
            try:
                with np.load(path) as f:
                    arrays.update({k: f[k] for k in f.files})
            except (OSError, ValueError) as e:
                raise SpecaeError(f"{path}: not a readable .npz file ({e})") from None
        try:
            w0, b0, w1, b1 = (arrays[k] for k in ("w_array_0", "b_array_0", "w_array_1", "b_array_1"))
            self._x_min, self._x_max = arrays["x_min"], arrays["x_max"]
            self.wave = np.asarray(arrays["wavelength"], dtype=np.float64)
            self.bad_pixels = np.asarray(arrays["apogee_mask"], dtype=bool)
        except KeyError as e:
            raise SpecaeError(f"{directory}: Payne emulator arrays incomplete, missing {e}") from None
        npix = self.wave.size
        if (w0.shape != (npix, 5, 5) or b0.shape != (npix, 5) or w1.shape != (npix, 5) or b1.shape != (npix,)
                or self.bad_pixels.shape != (npix,)):
            raise SpecaeError(f"{directory}: Payne emulator arrays do not match the {npix}-pixel wavelength grid")
        # (5 labels, npix*5 hidden units): the first layer of all pixels as one matrix product
        self._w0 = np.ascontiguousarray(w0.transpose(2, 0, 1).reshape(5, npix * 5), dtype=np.float32)
        self._b0 = b0.astype(np.float32)
        self._w1 = w1.astype(np.float32)
        self._b1 = b1.astype(np.float32)

    @property
    def npix(self) -> int:
        return self.wave.size

    def spectra(self, labels, batch_size: int = 256) -> np.ndarray:
        """(N, 7214) float32 normalised flux for labels (N, 5) or (5,) in LABEL_NAMES order.

        Warns when labels leave VALID_RANGE, where the emulator extrapolates."""
        labels = np.asarray(labels, dtype=np.float64)
        single = labels.ndim == 1
        labels = np.atleast_2d(labels)
        if labels.ndim != 2 or labels.shape[1] != 5:
            raise SpecaeError(f"Payne labels must have shape (N, 5) or (5,), got {np.shape(labels)}")
        if not np.all(np.isfinite(labels)):
            raise SpecaeError("Payne labels must be finite")
        outside = (labels < VALID_RANGE[:, 0]) | (labels > VALID_RANGE[:, 1])
        if outside.any():
            warnings.warn(f"{int(outside.any(axis=1).sum())} label sets lie outside the emulator's valid "
                          f"range and are extrapolated", stacklevel=2)
        scaled = ((labels - self._x_min) / (self._x_max - self._x_min) - 0.5).astype(np.float32)
        out = np.empty((len(labels), self.npix), np.float32)
        for start in range(0, len(labels), batch_size):      # bounds the (batch, npix, 5) hidden layer
            s = scaled[start:start + batch_size]
            z = (s @ self._w0).reshape(len(s), self.npix, 5) + self._b0
            hidden = 1 / (1 + np.exp(-z))
            out[start:start + len(s)] = np.einsum("npj,pj->np", hidden, self._w1) + self._b1
        return out[0] if single else out

    @staticmethod
    def sample_labels(n: int, seed=0) -> np.ndarray:
        """(n, 5) labels drawn uniformly inside VALID_RANGE."""
        rng = np.random.default_rng(seed)
        return VALID_RANGE[:, 0] + rng.uniform(size=(int(n), 5)) * (VALID_RANGE[:, 1] - VALID_RANGE[:, 0])

    def mock(self, n: int, seed=0, snr=(5, 80), masked_chunks: bool = True) -> tuple[Spectra, Spectra]:
        """(noisy, clean) mock APOGEE spectra with labels TEFF, LOGG, FE_H, MG_FE, VMACRO (+ SNR on noisy).

        Noise model of the data README: per-spectrum S/N log-uniform in `snr` (or exactly `snr`),
        sigma = flux / S/N, ivar = 1/sigma^2; APOGEE's bad pixels and, if masked_chunks, 0-3 random
        chunks of 5-60 pixels per spectrum get ivar = 0. `clean` has ivar = 1 and no mask.
        """
        lo, hi = _snr_range(snr)
        rng = np.random.default_rng(seed)
        labels = self.sample_labels(n, rng)
        flux = self.spectra(labels).astype(np.float64)
        s2n = lo * (hi / lo) ** rng.uniform(size=len(flux))
        # |flux| keeps sigma positive if the network dips below zero in a saturated line core
        sigma = np.maximum(np.abs(flux), 1e-3) / s2n[:, None]
        noisy = flux + sigma * rng.standard_normal(flux.shape)
        mask = np.broadcast_to(self.bad_pixels, flux.shape).copy()
        if masked_chunks:
            mask |= _chunks(rng, len(flux), self.npix)
        lab = dict(zip(LABEL_NAMES, labels.T))
        meta = {"flux_unit": "continuum-normalised", "source": "Payne APOGEE emulator", "frame": "rest"}
        ids = _serial("payne", len(flux))
        clean = Spectra(self.wave, flux, np.ones_like(flux), labels=dict(lab), ids=ids, meta=dict(meta))
        noisy = Spectra(self.wave, noisy, np.where(mask, 0.0, sigma**-2.0), mask, {**lab, "SNR": s2n}, ids,
                        meta=meta)
        return noisy, clean
