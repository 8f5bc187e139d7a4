"""Quality benchmark: denoisers compared on held-out spectra whose truth is known.

    python -m benchmarks.quality --set payne --quick                      # ~3 min on a CPU
    python -m benchmarks.quality --set payne --n-train 4000 --minutes 20  # full size
    python -m benchmarks.quality --set galaxy --n-train 3000 --minutes 15
    python -m benchmarks.quality --set payne --sweep n-train=1000,10000,100000 --methods vae-mlp,pca
    python -m benchmarks.quality --set payne --sweep latent=4,6,8,12 --methods vae-mlp,pca
    python -m benchmarks.quality --set payne --n-train 100000 --stream /tmp/specae-bench --methods vae-mlp,pca
    python -m benchmarks.quality --set galaxy --n-train 3000 --minutes 0 --epochs 60 --sweep seed=0,1,2 --methods vae-mlp
    python -m benchmarks.quality --set galaxy --noise survey --ivar-factors 0.8,1.25 --methods vae-mlp,pca

Data: the Payne APOGEE emulator (../shared/data/payne; S/N 5-80, APOGEE's bad pixels and random masked
chunks) or the synthetic galaxies (galaxy_spectra + add_noise; specae and spender decode in the rest frame
from the redshift label Z, PCA and Savitzky-Golay work in the observed frame); --noise survey draws the noise
of both sets from add_survey_noise instead, --ivar-factors mis-state the test spectra's noise. Methods at one
latent size K: specae VAE (MLP or convolutional decoder), specae AE, weighted EM-PCA, Savitzky-Golay, spender;
plus the noisy input and, for the emulator, the oracle (the emulator fitted to each noisy spectrum). Figures: see
benchmarks/README.md. Writes benchmarks/results/<name>.json, .md and .png through benchmarks/report.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmarks.peers import SpenderPeer, spender_unavailable
from benchmarks.report import add_run_options, run_device, write_results
from specae.baselines import SavitzkyGolay, WeightedPCA
from specae.data.payne import LABEL_NAMES, PayneEmulator, default_payne_dir
from specae.data.readers import read_many
from specae.data.resample import loglam_grid
from specae.data.spectra import Spectra
from specae.data.synthetic import add_noise, add_survey_noise, galaxy_spectra, galaxy_wave
from specae.denoise import denoise, encode, heldout, rows_per_batch
from specae.metrics import coverage, error_over_sigma, gaussian_coverage, quantile_bins, rmse, sum_coverage
from specae.regress import r2, ridge_fit

SPECAE = {"vae-mlp": ("vae", "mlp"), "vae-conv": ("vae", "conv"), "ae": ("ae", "mlp")}
METHODS = (*SPECAE, "pca", "pca-rest", "sg", "spender")
# Galaxy pixels counted as thinly covered by the training set: their rest wavelength within the observed range
# of under this fraction of the training spectra
THIN_COVERAGE = 0.3
# Galaxy emission lines for the line-pixel figures [A, vacuum, rest frame]: [OII], Hbeta, [OIII], Halpha, [NII], [SII]
EMISSION_LINES = (3727.09, 3729.88, 4862.69, 4960.30, 5008.24, 6549.86, 6564.61, 6585.27, 6718.29, 6732.68)
LINE_HALF_WIDTH = 5.0        # A, rest frame
LINE_MIN_EW = 20.0           # A, H-alpha emission equivalent width of galaxies whose line pixels count
# Labels predicted from latents (R^2); skewed ones on a log scale so a few extremes do not dominate R^2
R2_LABELS = {"payne": {"TEFF": None, "LOGG": None, "FE_H": None},
             "galaxy": {"AGE": np.log10, "VDISP": None, "EBV": None, "HA_EW": np.log1p, "D4000": None}}
# EM iterations of the rest-frame PCA: with most rest-frame pixels missing, EM from a random start converges
# slowly and WeightedPCA's default 20 left the fit depending on the seed (galaxy test RMSE 0.28-0.87 over seeds
# 0-4); after 200 it is 0.249-0.254 for every seed: a fair, converged baseline
PCA_REST_ITER = 200
RIDGE_ALPHA = 1.0            # on standardised latents: a guard against collinear latents, not a prior
RIDGE_MAX_TRAIN = 5000       # training latents used for the ridge fit (encoding 1e5 spectra adds nothing)
# Real survey spectra for the held-out pixel check of each set (under the shared data folder): continuum-normalised
# APOGEE spectra like the emulator's; SDSS and DESI spectra with their redshifts (Z) for the galaxies
REAL_SPECTRA = {"payne": ("apogee/aspcapStar-*.fits",),
                "galaxy": ("sdss/spec-*.fits", "sdss/gelato-*.fits", "desi/coadd-*.fits")}
CHUNK = 10_000               # spectra generated per chunk (bounds the emulator's float64 temporaries)
IN_MEMORY_MAX = 20_000       # with --stream, training rows kept in memory for the methods that need them there
SWEEPS = {"n-train": None, "latent": "latent_dim", "seed": "seed"}   # --sweep: the option each point sets
NOISE = {"default": add_noise, "survey": add_survey_noise}     # --noise on galaxies (the emulator: see _mock)
SNR_BINS = ("low", "mid", "high")     # the test spectra's S/N terciles, each scored on its own
SUM_LENGTHS = (5, 20, 50)            # adjacent denoised pixels summed (a line flux, a band) for the sums' coverage
SUM_WINDOWS = 3                      # random windows of each length per test spectrum
QUICK = {"n_train": 400, "n_test": 100, "pixels": "1000", "minutes": 0.3, "spender_minutes": 0.3}


@dataclass
class Dataset:
    """A benchmark set: noisy training spectra, noisy test spectra and their truth (N_test, npix)."""
    name: str
    train: Spectra
    test: Spectra
    truth: np.ndarray
    evaluable: np.ndarray                 # (npix,) pixels any spectrum can have data at
    lines: np.ndarray | None              # (N_test, npix) emission-line pixels (galaxies)
    redshift: str | None                  # label holding z for the rest-frame models
    emulator: PayneEmulator | None = None
    files: tuple = ()                     # --stream: the whole training set in HDF5 files of CHUNK rows, which
                                          # specae streams; `train` then holds their first IN_MEMORY_MAX rows
    thin: np.ndarray | None = None        # (N_test, npix) pixels whose rest wavelength few training spectra cover
    real: Spectra | None = None           # real survey spectra on the set's grid (no truth: held-out pixels)

    @property
    def snr_bins(self) -> tuple[np.ndarray, np.ndarray]:
        """The test spectra's S/N terciles: edges (4,) and members (3, N_test) bool."""
        return quantile_bins(self.test.labels["SNR"], len(SNR_BINS))

    @property
    def n_train(self) -> int:
        return len(self.files) * CHUNK if self.files else len(self.train)

    def with_train(self, n: int) -> "Dataset":
        """The first n training spectra (from the files when they do not fit in memory)."""
        if n <= len(self.train):
            return replace(self, train=self.train[:n], files=())
        if n % CHUNK:
            raise SystemExit(f"streamed training sets come in multiples of {CHUNK} spectra, not {n}")
        return replace(self, files=self.files[:n // CHUNK])


@dataclass
class Output:
    """One method's result on the test set: flux/sigma (N_test, npix) in the input's units (sigma None when
    the method has none), latents of (a subset of) the training and of the test spectra, timings."""
    flux: np.ndarray
    sigma: np.ndarray | None = None
    latents: tuple[np.ndarray, np.ndarray] | None = None    # (train subset, test)
    labels: np.ndarray | None = None                        # oracle: fitted labels of the test spectra
    train_minutes: float | None = None
    denoise_seconds: float | None = None
    info: dict = field(default_factory=dict)
    is_input: bool = False                                  # the noisy input itself: values on valid pixels only
    predicted_coverage: Callable | None = None              # k -> (N_test, npix) P(truth within +-k sigma)
    sum_variance: Callable | None = None                    # weights (N_test, npix) -> (N_test,) variance of a sum

    def __post_init__(self):
        if self.sigma is not None:       # a baseline's sigma: a Gaussian standard deviation, pixels independent
            sigma = self.sigma
            self.predicted_coverage = self.predicted_coverage or (
                lambda k: np.full(sigma.shape, gaussian_coverage(k)))
            self.sum_variance = self.sum_variance or (   # sigma off the window may be inf: never multiply it by 0
                lambda w: ((w * np.where(w != 0, sigma, 0.0)) ** 2).sum(axis=1))


def _window(npix: int, spec: str | None) -> slice:
    """--pixels: "START:STOP" pixel indices, or "N" for N pixels centred on the grid; None for all."""
    if not spec:
        return slice(None)
    if ":" in spec:
        a, b = (int(v) if v else None for v in spec.split(":"))
        return slice(a, b)
    n = min(int(spec), npix)
    return slice((npix - n) // 2, (npix - n) // 2 + n)


def make_dataset(name: str, n_train: int, n_test: int, pixels: str | None = None, seed: int = 0,
                 stream=None, noise: str = "default") -> Dataset:
    """The named set; the test set depends on (seed, n_test, pixels, noise) only, so every training
    size and latent size of a sweep is scored on the same spectra, and smaller training sets are prefixes of
    larger ones. With `stream` (a directory) a training set above IN_MEMORY_MAX rows is written there in HDF5
    files (reused when present: the chunks are deterministic) and only its first IN_MEMORY_MAX rows are kept.
    noise: "default" (the set's own) or "survey" (add_survey_noise), for training and test spectra alike."""
    if stream and n_train > IN_MEMORY_MAX:
        if n_train % CHUNK:
            raise SystemExit(f"--stream: --n-train must be a multiple of {CHUNK}")
        return _streamed(name, n_train, n_test, pixels, seed, Path(stream), noise)
    if name == "payne":
        directory = default_payne_dir()
        if directory is None:
            raise SystemExit("the Payne emulator files (../shared/data/payne or $SPECAE_PAYNE_DIR) are absent")
        full = PayneEmulator(directory)
        emu = full.subset(_window(full.npix, pixels))
        test, clean = _mock(emu, n_test, [seed, 1], noise, [seed, 2])
        train = Spectra.concatenate([_train_chunk(emu, None, a, min(CHUNK, n_train - a), seed, noise)
                                     for a in range(0, n_train, CHUNK)])
        ds = Dataset(name, train, test, clean.flux, ~emu.bad_pixels, None, None, emu,
                     real=real_spectra(name, test.wave))
    elif name == "galaxy":
        wave = galaxy_wave()
        wave = wave[_window(wave.size, pixels)]
        clean = galaxy_spectra(n_test, seed=[seed, 1], wave=wave)
        test = NOISE[noise](clean, seed=[seed, 2])
        train = Spectra.concatenate([_train_chunk(None, wave, a, min(CHUNK, n_train - a), seed, noise)
                                     for a in range(0, n_train, CHUNK)])
        ds = Dataset(name, train, test, clean.flux, np.ones(wave.size, bool), emission_line_pixels(test), "Z",
                     thin=thin_coverage_pixels(train, test), real=real_spectra(name, wave))
    else:
        raise SystemExit(f"unknown set {name!r} (payne or galaxy)")
    return ds


def _mock(emu: PayneEmulator, n: int, seed, noise: str, noise_seed) -> tuple[Spectra, Spectra]:
    """(noisy, clean) emulator spectra: the emulator's own mock noise, or with noise "survey" add_survey_noise
    (seeded by `noise_seed`) with APOGEE's bad pixels masked as the mock masks them."""
    noisy, clean = emu.mock(n, seed=seed)
    if noise == "survey":
        noisy = add_survey_noise(replace(clean, mask=np.broadcast_to(emu.bad_pixels, clean.flux.shape)),
                                 seed=noise_seed)
    return noisy, clean


def _streamed(name: str, n_train: int, n_test: int, pixels: str | None, seed: int, directory: Path,
              noise: str) -> Dataset:
    """make_dataset with the training set in files of CHUNK rows, generated chunk by chunk."""
    from specae.data.hdf5 import write_h5

    ds = make_dataset(name, CHUNK, n_test, pixels, seed, None, noise)   # the test set, the first chunk
    directory.mkdir(parents=True, exist_ok=True)
    files, kept = [], []
    tag = "" if noise == "default" else f"-{noise}"
    for a in range(0, n_train, CHUNK):
        path = directory / f"{name}{tag}-{pixels or 'all'}-seed{seed}-{a:07d}.h5"
        chunk = None
        if a < IN_MEMORY_MAX or not path.exists():
            chunk = ds.train if a == 0 else _train_chunk(ds.emulator, ds.test.wave, a, CHUNK, seed, noise)
        if not path.exists():
            write_h5(chunk, path)
        if a < IN_MEMORY_MAX:
            kept.append(chunk)
        files.append(path)
    return replace(ds, train=Spectra.concatenate(kept), files=tuple(files))


def _train_chunk(emu: PayneEmulator | None, wave: np.ndarray | None, a: int, n: int, seed: int,
                 noise: str) -> Spectra:
    """Training spectra a .. a + n of a set: the emulator's stars, or (emu None) galaxies on `wave`, with the
    `noise` model's noise. Each chunk has its own seed, so a set's chunks are the same however many are drawn."""
    if emu is not None:
        return _mock(emu, n, [seed, 0, a], noise, [seed, 3, a])[0]
    return NOISE[noise](galaxy_spectra(n, seed=[seed, 0, a], wave=wave), seed=[seed, 3, a])


def shared_data_dir() -> Path | None:
    """$SPECAE_SHARED_DATA if set, else the folder holding the Payne emulator's (`default_payne_dir`), if any."""
    env = os.environ.get("SPECAE_SHARED_DATA")
    payne = default_payne_dir()
    path = Path(env) if env else (payne.parent if payne else None)
    return path if path is not None and path.is_dir() else None


def real_spectra(name: str, wave: np.ndarray) -> Spectra | None:
    """The set's real survey spectra (REAL_SPECTRA) on `wave`, spectra without data dropped; None when absent."""
    root = shared_data_dir()
    paths = sorted(p for pattern in REAL_SPECTRA[name] for p in root.glob(pattern)) if root else []
    return read_many(paths, wave=wave).drop_empty() if paths else None


def real_check(model, ds: Dataset) -> dict:
    """Held-out pixel figures of a denoiser on the set's real spectra (`specae.denoise.heldout`): the fraction
    of pixels inside +-1 and +-2 sigma (noise included) and the prediction error in units of the noise."""
    if ds.real is None:
        return {}
    h = heldout(model, ds.real)
    ok = np.isfinite(h.z)
    err = (ds.real.flux - h.flux)[ok] ** 2 * ds.real.ivar[ok]
    return {"real_within_1sigma": float(np.mean(np.abs(h.z[ok]) < 1)),
            "real_within_2sigma": float(np.mean(np.abs(h.z[ok]) < 2)),
            "real_err_over_noise": float(np.sqrt(np.mean(err))), "real_pixels": int(ok.sum())}


def thin_coverage_pixels(train: Spectra, test: Spectra, below: float = THIN_COVERAGE) -> np.ndarray:
    """(N_test, npix) bool: test pixels whose rest wavelength lies inside the observed range of fewer than a
    fraction `below` of the training spectra (the rest-frame ends of a redshift survey)."""
    z = np.sort(train.labels["Z"])
    rest = test.wave[None] / (1 + test.labels["Z"][:, None])
    inside = np.searchsorted(z, train.wave[-1] / rest - 1, "right") - np.searchsorted(z, train.wave[0] / rest - 1, "left")
    return inside < below * len(z)


def emission_line_pixels(s: Spectra) -> np.ndarray:
    """(N, npix) bool: within LINE_HALF_WIDTH A (rest frame) of an EMISSION_LINES line, in galaxies whose
    H-alpha EW exceeds LINE_MIN_EW A."""
    rest = s.wave[None] / (1 + s.labels["Z"][:, None])
    near = np.zeros(s.flux.shape, bool)
    for line in EMISSION_LINES:
        near |= np.abs(rest - line) < LINE_HALF_WIDTH
    return near & (s.labels["HA_EW"] > LINE_MIN_EW)[:, None]


# -- methods ------------------------------------------------------------------------------------------------


def _ridge_subset(train: Spectra, seed: int) -> Spectra:
    rng = np.random.default_rng(seed)
    return train[np.sort(rng.choice(len(train), min(RIDGE_MAX_TRAIN, len(train)), replace=False))]


def run_specae(ds: Dataset, method: str, args, overrides: dict | None = None) -> dict[str, Output]:
    """Train a specae model (method in SPECAE, or a --variant of one, whose `overrides` set ModelConfig and
    TrainConfig fields) and denoise the test set; with --ivar-factors also the test spectra with their ivar
    multiplied by each factor (mis-stated noise), before and after recalibrating the error model on those
    spectra alone (their ivar as given, no truth)."""
    from dataclasses import fields

    from specae.calibration import fit_calibration
    from specae.models.config import ModelConfig
    from specae.train import TrainConfig, fit

    base, overrides = method, dict(overrides or {})
    if method not in SPECAE:
        base, overrides = args.variants[method]
    kind, decoder = SPECAE[base]
    model_keys = {f.name for f in fields(ModelConfig)}
    model_cfg = ModelConfig(npix=ds.train.npix, kind=kind, latent_dim=args.latent_dim, decoder=decoder,
                            redshift=ds.redshift)
    train_cfg = TrainConfig(epochs=args.epochs, max_minutes=args.minutes, seed=args.seed, device=args.device,
                            progress=False)
    model_cfg = replace(model_cfg, **{k: v for k, v in overrides.items() if k in model_keys})
    train_cfg = replace(train_cfg, **{k: v for k, v in overrides.items() if k not in model_keys})
    if ds.files:     # a tenth of the files' row blocks validate
        model, hist = fit([str(p) for p in ds.files], None, model_cfg, replace(train_cfg, val_fraction=0.1))
    else:
        model, hist = fit(*ds.train.split((0.9, 0.1), seed=args.seed), model_cfg, train_cfg)
    t0 = time.perf_counter()
    fit_calibration(model, hist["validation"])     # fit only trains; the error model is fitted on validation rows
    calibration_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    d = denoise(model, ds.test, covariance=True)
    seconds = time.perf_counter() - t0
    # the amortised encoder's means: the model's latents as such, and no Laplace refinement (a Jacobian
    # through the decoder per spectrum, minutes for the conv decoder on a CPU) is needed for a regression
    latents = tuple(_latent_mean(encode(model, s, posterior="encoder")) for s in (_ridge_subset(ds.train, args.seed),
                                                                                 ds.test))
    info = {"epochs": len(hist["epoch"]), "best_epoch": hist["best_epoch"], "overrides": overrides,
            "train_rows": hist["n_train"], "val_rows": hist["n_val"],
            "unseen_fraction": float(np.mean(d.unseen)), "calibration": asdict(model.calibration),
            "calibration_seconds": calibration_seconds,
            "rmse_best_latent": best_latent_rmse(model, ds) if kind == "vae" else None, **real_check(model, ds)}
    out = {method: _denoised_output(d, latents, hist["minutes"], seconds, info)}
    trained = model.calibration
    for factor in args.ivar_factors:
        mis = replace(ds.test, ivar=ds.test.ivar * factor)
        t0 = time.perf_counter()
        d = denoise(model, mis, covariance=True)
        out[f"{method} ivar×{factor:g}"] = _denoised_output(d, None, None, time.perf_counter() - t0,
                                                             {"calibration": asdict(trained)})
        t0 = time.perf_counter()
        fit_calibration(model, mis)
        t1 = time.perf_counter()
        d = denoise(model, mis, covariance=True)
        info = {"calibration": asdict(model.calibration), "calibration_seconds": t1 - t0}
        out[f"{method} ivar×{factor:g} recalibrated"] = _denoised_output(d, None, None, time.perf_counter() - t1, info)
        model.calibration = trained
    return out


def _denoised_output(d, latents, minutes, seconds, info) -> Output:
    """An Output of specae's Denoised `d` (computed with covariance=True), with its error model."""
    return Output(d.flux, d.sigma, latents, None, minutes, seconds, info, predicted_coverage=d.predicted_coverage,
                  sum_variance=d.covariance.sum_variance)


def best_latent_rmse(model, ds: Dataset, snr: float = 1e4) -> float:
    """RMSE to the truth of the model's best reconstruction of each noise-free test spectrum (the truth given
    as data at S/N `snr` per pixel, the decoder posterior run to convergence). The fit weights each pixel by
    1/sigma_model^2, so where the decoder's scatter is nearly flat (the emulator's stars) this is the floor of
    what the decoder can represent, against which the denoised RMSE measures the cost of inferring the
    latents from noisy data; where the scatter singles out lines (galaxies) it is no RMSE floor.
    The model spectrum at the posterior's mode is scored, not the denoised one, which the error model pulls
    onto data this precise (the truth itself)."""
    from specae.calibration import model_input, model_terms

    ev = np.broadcast_to(ds.evaluable, ds.truth.shape)
    level = np.median(np.abs(ds.truth), axis=1, keepdims=True)
    ivar = np.where(ev, (snr / np.where(level > 0, level, 1.0)) ** 2, 0.0).astype(np.float32)
    data, scale, _ = model_input(model, Spectra(ds.test.wave, ds.truth.astype(np.float32), ivar, ~ev, ds.test.labels))
    dev, rows, parts = next(model.parameters()).device, rows_per_batch(model), []
    for i in range(0, len(data), rows):
        b = data[i:i + rows].to(dev)
        m = model_terms(model, b, model.calibration, "decoder").m
        parts.append(torch.where(model.unseen(b.z, len(b)), np.nan, m).cpu().numpy())
    flux = np.concatenate(parts) * scale[:, None]
    return rmse(flux, ds.truth, ev & np.isfinite(flux))


def _latent_mean(encoded) -> np.ndarray:
    """(N, K) latent means from specae.denoise.encode's result (a (mean, std) tuple or an object with .mean)."""
    return encoded[0] if isinstance(encoded, tuple) else encoded.mean


def run_pca(ds: Dataset, args) -> Output:
    t0 = time.perf_counter()
    pca = WeightedPCA(args.latent_dim, seed=args.seed).fit(ds.train)
    minutes = (time.perf_counter() - t0) / 60
    t0 = time.perf_counter()
    flux, sigma = pca.denoise(ds.test)
    seconds = time.perf_counter() - t0
    latents = (pca.encode(_ridge_subset(ds.train, args.seed))[0], pca.encode(ds.test)[0])
    return Output(flux, sigma, latents, None, minutes, seconds, real_check(pca, ds))


def run_pca_rest(ds: Dataset, args) -> Output:
    """Weighted PCA fitted in the rest frame with the known redshifts (on a grid at half the observed log
    step, as specae's rest-frame decoder), its denoised test spectra shifted back onto the observed grid."""
    if ds.redshift is None:
        raise SystemExit("pca-rest needs a set with redshifts (--set galaxy)")
    z_train, z_test = ds.train.redshifts(ds.redshift), ds.test.redshifts(ds.redshift)
    step = float(np.median(np.diff(np.log10(ds.test.wave)))) / 2
    lo = ds.test.wave[0] / (1 + max(z_train.max(), z_test.max()))
    hi = ds.test.wave[-1] / (1 + min(z_train.min(), z_test.min()))
    rest = loglam_grid(lo, hi * 10 ** step, step)
    t0 = time.perf_counter()
    pca = WeightedPCA(args.latent_dim, n_iter=PCA_REST_ITER, seed=args.seed).fit(ds.train.to_rest_frame(z_train, rest))
    minutes = (time.perf_counter() - t0) / 60
    t0 = time.perf_counter()
    flux, sigma = pca.denoise(ds.test.to_rest_frame(z_test, rest))
    ivar = np.where(np.isfinite(sigma) & (sigma > 0), 1 / np.maximum(sigma.astype(np.float64), 1e-30) ** 2, 0.0)
    # "rest frame" of z' with 1 + z' = 1 / (1 + z) is the observed frame
    back = Spectra(rest, flux, ivar).to_rest_frame(1 / (1 + z_test) - 1, ds.test.wave)
    sigma_obs = np.where(back.ivar > 0, 1 / np.sqrt(np.where(back.ivar > 0, back.ivar, 1.0)), np.inf)
    return Output(back.flux, sigma_obs, None, None, minutes, time.perf_counter() - t0)


def run_sg(ds: Dataset, args) -> Output:
    t0 = time.perf_counter()
    sg = SavitzkyGolay(seed=args.seed).fit(ds.train)
    minutes = (time.perf_counter() - t0) / 60
    t0 = time.perf_counter()
    flux, sigma = sg.denoise(ds.test)
    return Output(flux, sigma, None, None, minutes, time.perf_counter() - t0,
                  {"window": sg.window_, **real_check(sg, ds)})


def run_spender(ds: Dataset, args) -> Output:
    fit_set, val = ds.train.split((0.9, 0.1), seed=args.seed)
    peer = SpenderPeer(args.latent_dim, ds.redshift, minutes=args.spender_minutes or args.minutes,
                       epochs=min(args.epochs, 200), device=args.device, seed=args.seed).fit(fit_set, val)
    t0 = time.perf_counter()
    flux = peer.denoise(ds.test)
    seconds = time.perf_counter() - t0
    latents = (peer.encode(_ridge_subset(ds.train, args.seed)), peer.encode(ds.test))
    info = {k: peer.history_[k] for k in ("epochs", "planned_epochs", "batch_size")}
    return Output(flux, None, latents, None, peer.history_["minutes"], seconds, info)


def run_oracle(ds: Dataset) -> Output:
    """The emulator fitted to each noisy test spectrum; sigma from the label covariance through the Jacobian."""
    t0 = time.perf_counter()
    labels, cov, flux = ds.emulator.fit(ds.test)
    seconds = time.perf_counter() - t0
    sigma = np.empty_like(flux)
    for a in range(0, len(labels), 256):
        jac = ds.emulator.jacobian(labels[a:a + 256])[1].astype(np.float64)
        sigma[a:a + 256] = np.sqrt(np.einsum("npk,nkl,npl->np", jac, cov[a:a + 256], jac))
    return Output(flux, sigma, None, labels, None, seconds)


# -- figures --------------------------------------------------------------------------------------------------


def ridge_r2(z_train, y_train, z_test, y_test, alpha: float = RIDGE_ALPHA) -> float:
    """R^2 on the test set of a ridge regression y ~ 1 + z fitted on the training set, with the latents
    standardised by the training mean and std (PCA coefficients and latents have different scales).
    z (N, K), y (N,)."""
    mu, sd = z_train.mean(0), z_train.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    coef, intercept = ridge_fit((z_train - mu) / sd, y_train.astype(np.float64), alpha)
    return r2((z_test - mu) / sd @ coef + intercept, y_test)


def _label(ds: Dataset, spectra: Spectra, name: str) -> np.ndarray:
    transform = R2_LABELS[ds.name][name]
    value = spectra.labels[name].astype(np.float64)
    return transform(value) if transform else value


def score(ds: Dataset, out: Output, seed: int) -> dict:
    """Figures of one method on the test set (None where they do not apply)."""
    test, truth, flux = ds.test, ds.truth, out.flux
    ev = np.broadcast_to(ds.evaluable, truth.shape)
    valid, masked = ev & ~test.mask, ev & test.mask
    lines = None if ds.lines is None else ds.lines & ev
    thin = None if ds.thin is None else ds.thin & ev
    noisy = out.is_input
    where = {"all": valid if noisy else ev, "masked": None if noisy else masked,
             "lines": None if lines is None else (lines & valid if noisy else lines),
             "thin": None if thin is None else (thin & valid if noisy else thin)}
    f = {f"rmse_{k}": (rmse(flux, truth, w) if w is not None and w.any() else None) for k, w in where.items()}
    f["chi2_dof"] = None if noisy else float(np.mean((test.ivar * (flux - test.flux) ** 2)[valid]))
    where.update({f"snr_{b}": where["all"] & member[:, None] for b, member in zip(SNR_BINS, ds.snr_bins[1])})
    # sigma figures where the method gives an estimate (specae: sigma inf at wavelengths it never saw)
    seen = None if out.sigma is None else ev & np.isfinite(out.sigma)
    predicted = None if out.sigma is None else {n: out.predicted_coverage(n) for n in (1, 2)}
    for k, w in where.items():
        w = None if seen is None or w is None else w & seen
        ok = w is not None and w.any()
        for n in (1, 2):
            f[f"coverage_{n}sigma_{k}"] = coverage(flux, out.sigma, truth, n, w) if ok else None
            f[f"predicted_{n}sigma_{k}"] = float(np.mean(predicted[n][w])) if ok else None
        f[f"error_over_sigma_{k}"] = error_over_sigma(flux, out.sigma, truth, w) if ok else None
    for n in SUM_LENGTHS:
        f[f"sum_coverage_{n}"] = None if seen is None else sum_coverage(flux, truth, out.sum_variance, seen, n,
                                                                        SUM_WINDOWS, seed=seed)
    names = list(R2_LABELS[ds.name])
    if out.labels is not None:                           # the oracle's fitted labels themselves
        r2s = {n: r2(out.labels[:, LABEL_NAMES.index(n)], _label(ds, test, n)) for n in names}
    elif out.latents is not None:
        sub = _ridge_subset(ds.train, seed)
        r2s = {n: ridge_r2(out.latents[0], _label(ds, sub, n), out.latents[1], _label(ds, test, n)) for n in names}
    else:
        r2s = {n: None for n in names}
    f["r2"] = {**r2s, "mean": None if None in r2s.values() else float(np.mean(list(r2s.values())))}
    f.update(train_minutes=out.train_minutes, denoise_seconds=out.denoise_seconds, **out.info)
    return f


def row(ds: Dataset, method: str, f: dict | None, oracle_rmse: float | None, reason: str | None = None) -> dict:
    """One Markdown table row; every row has the same keys."""
    f = f or {}
    g = lambda k: f.get(k)                                                     # noqa: E731
    cells = {"method": method if reason is None else f"{method}: not installed ({reason})",
             "RMSE": g("rmse_all"),
             "RMSE/oracle": None if not (oracle_rmse and g("rmse_all")) else g("rmse_all") / oracle_rmse,
             "RMSE best latent": g("rmse_best_latent"),
             "RMSE masked": g("rmse_masked"), "RMSE lines": g("rmse_lines"), "chi2/dof": g("chi2_dof"),
             "±1σ": g("coverage_1sigma_all"), "±2σ": g("coverage_2sigma_all"), "err/σ": g("error_over_sigma_all"),
             "real ±1σ": g("real_within_1sigma"), "real ±2σ": g("real_within_2sigma"),
             "real err/noise": g("real_err_over_noise")}
    for part, given in (("lines", ds.lines), ("thin", ds.thin), ("real", ds.real)):
        if given is None:
            cells = {k: v for k, v in cells.items() if part not in k}
    if ds.emulator is None:
        cells.pop("RMSE/oracle")
    cells.update({f"R² {n}": (f.get("r2") or {}).get(n) for n in (*R2_LABELS[ds.name], "mean")})
    cells.update({"train min": g("train_minutes"), "denoise s": g("denoise_seconds")})
    return cells


def error_model_rows(ds: Dataset, method: str, f: dict) -> list[dict]:
    """Rows of the error-model table for one method with a sigma (none otherwise): per pixel group and S/N
    tercile the coverage measured against the truth beside the one its predictive distribution claims, err/σ;
    then the coverage of sums of adjacent pixels."""
    edges = ds.snr_bins[0]
    groups = {"all": "all", "masked": "masked", "lines": "emission lines", "thin": "thin coverage",
              **{f"snr_{b}": f"S/N {lo:.3g}–{hi:.3g}" for b, lo, hi in zip(SNR_BINS, edges, edges[1:])}}
    rows = [{"method": method, "pixels": label, "±1σ": f[f"coverage_1sigma_{k}"],
             "predicted ±1σ": f[f"predicted_1sigma_{k}"], "±2σ": f[f"coverage_2sigma_{k}"],
             "predicted ±2σ": f[f"predicted_2sigma_{k}"], "err/σ": f[f"error_over_sigma_{k}"]}
            for k, label in groups.items() if f.get(f"coverage_1sigma_{k}") is not None]
    empty = dict.fromkeys(("predicted ±1σ", "±2σ", "predicted ±2σ", "err/σ"))
    rows += [{"method": method, "pixels": f"sums of {n}", "±1σ": f[f"sum_coverage_{n}"], **empty}
             for n in SUM_LENGTHS if f.get(f"sum_coverage_{n}") is not None]
    return rows


def evaluate(ds: Dataset, args, cache: dict | None = None) -> tuple[dict, list[dict], dict[str, Output]]:
    """Run every requested method on `ds`: (figures per method, table rows, outputs). `cache` keeps the
    training-independent results (noisy input, oracle) across the points of a sweep."""
    cache = {} if cache is None else cache
    if "noisy" not in cache:
        cache["noisy"] = Output(ds.test.flux, is_input=True)
        if ds.emulator is not None:
            cache["oracle"] = run_oracle(ds)
    outputs = {"noisy": cache["noisy"], **({"oracle": cache["oracle"]} if "oracle" in cache else {})}
    unavailable = {}
    for method in args.methods:
        torch.manual_seed(args.seed)
        t0 = time.perf_counter()
        if method in SPECAE or method in args.variants:
            new = run_specae(ds, method, args)
        elif method == "pca":
            new = {method: run_pca(ds, args)}
        elif method == "pca-rest":
            new = {method: run_pca_rest(ds, args)}
        elif method == "sg":
            new = {method: run_sg(ds, args)}
        elif method == "spender":
            reason = spender_unavailable()
            if reason:
                unavailable[method], new = reason, {}
            else:
                new = {method: run_spender(ds, args)}
        for out in new.values():                     # everything the method cost: training, calibration, scoring
            out.info["wall_seconds"] = time.perf_counter() - t0
        outputs.update(new)
    figures = {name: score(ds, out, args.seed) for name, out in outputs.items()}
    oracle = figures.get("oracle", {}).get("rmse_all")
    rows = [row(ds, name, f, oracle) for name, f in figures.items()]
    rows += [row(ds, name, None, None, reason) for name, reason in unavailable.items()]
    return {"methods": figures, "unavailable": unavailable}, rows, outputs


# -- plots ---------------------------------------------------------------------------------------------------


def plot_rmse(figures: dict):
    def draw(fig):
        ax = fig.subplots()
        names = [n for n, f in figures["methods"].items() if f["rmse_all"] is not None]
        ax.bar(names, [figures["methods"][n]["rmse_all"] for n in names], color="C0")
        ax.set_yscale("log")
        ax.set_ylabel("RMSE to truth (flux units)")
        ax.tick_params(axis="x", rotation=30)
        ax.set_title("held-out spectra: all evaluable pixels (noisy: valid pixels)")
    return draw


def plot_example(ds: Dataset, outputs: dict[str, Output], width: int = 200):
    """One test spectrum (the median-S/N one): `width` pixels around its middle masked pixel (if it has one)."""
    i = int(np.argsort(ds.test.labels["SNR"])[len(ds.test) // 2])
    masked = np.flatnonzero(ds.test.mask[i] & ds.evaluable)
    centre = int(masked[len(masked) // 2]) if masked.size else ds.test.npix // 2
    a = max(0, min(centre - width // 2, ds.test.npix - width))
    sl = slice(a, a + width)

    def draw(fig):
        ax = fig.subplots()
        w = ds.test.wave[sl]
        valid = ~ds.test.mask[i, sl]
        shown = np.where(ds.evaluable[sl], 1.0, np.nan)         # gaps where no spectrum has data
        ax.plot(w[valid], ds.test.flux[i, sl][valid], ".", ms=2, color="0.6", label="noisy (valid pixels)")
        ax.plot(w, ds.truth[i, sl] * shown, color="k", lw=1.2, label="truth")
        for k, (name, out) in enumerate(o for o in outputs.items() if o[0] != "noisy"):
            ax.plot(w, out.flux[i, sl] * shown, lw=0.9, color=f"C{k}", label=name)
            if out.sigma is not None and name == "vae-mlp":
                ax.fill_between(w, (out.flux - out.sigma)[i, sl] * shown, (out.flux + out.sigma)[i, sl] * shown,
                                color=f"C{k}", alpha=0.2, lw=0, label=f"{name} ±1σ")
        ax.set_xlabel("wavelength [Å]")
        ax.set_ylabel("flux")
        ax.legend(fontsize=7, ncol=2)
        ax.set_title(f"test spectrum {i}, S/N {ds.test.labels['SNR'][i]:.0f}")
    return draw


def plot_sweep(param: str, values: list, per_value: list[dict], reference: str):
    from matplotlib.ticker import FormatStrFormatter

    def draw(fig):
        ax = fig.subplots()
        for k, name in enumerate(per_value[0]["methods"]):
            if name in ("noisy", "oracle") or per_value[0]["methods"][name]["rmse_all"] is None:
                continue
            ratio = [f["methods"][name]["rmse_all"] / f["methods"][reference]["rmse_all"] for f in per_value]
            ax.plot(values, ratio, "o" if param == "seed" else "o-", color=f"C{k}", label=name)
        ax.axhline(1, color="k", lw=0.8)
        if param == "n-train":
            ax.set_xscale("log")
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        if hi / lo < 10:                                  # within a decade: label the minor ticks as plain numbers
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.set_xlabel({"n-train": "training spectra", "latent": "latent size K", "seed": "training seed"}[param])
        ax.set_ylabel(f"RMSE / RMSE of the {reference}")
        ax.legend(fontsize=8)
    return draw


# -- command line --------------------------------------------------------------------------------------------


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.splitlines()[0])
    p.add_argument("--set", choices=("payne", "galaxy"), default="payne")
    p.add_argument("--n-train", type=int, default=4000, help="training spectra (10%% of them validate)")
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--latent-dim", type=int, default=6, help="K: latents of every model, components of PCA")
    p.add_argument("--pixels", default=None, help='a window of the grid: "START:STOP" or "N" central pixels')
    p.add_argument("--minutes", type=float, default=20.0,
                   help="training budget per specae model; 0: none, the epochs alone set the schedule (repeatable "
                        "whatever the machine's load)")
    p.add_argument("--spender-minutes", type=float, default=None, help="spender's budget (default --minutes)")
    p.add_argument("--epochs", type=int, default=500, help="epoch cap per model (spender: at most 200)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--noise", choices=tuple(NOISE), default="default",
                   help="noise of the training and test spectra: the set's own (the emulator's mock, add_noise), or "
                        "add_survey_noise (S/N 3-100, clusters of inflated sigma, dead runs, garbage under masks)")
    p.add_argument("--ivar-factors", default="", metavar="F1,F2",
                   help="also score specae on the test spectra with their ivar multiplied by each F (mis-stated noise; "
                        "training unchanged), before and after recalibrating on those spectra alone "
                        "(specae.calibration.fit_calibration)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=METHOD:KEY=VALUE,...",
                   help="a specae method with ModelConfig/TrainConfig fields changed, e.g. "
                        "plain-nll=vae-mlp:beta_nll=0 (repeatable; added to --methods)")
    p.add_argument("--sweep", default=None,
                   help='"n-train=1000,10000,100000", "latent=4,6,8,12" or "seed=0,1,2" (the same data, trained '
                        'from other random starts: the spread of every figure)')
    p.add_argument("--stream", default=None, metavar="DIR",
                   help=f"training sets above {IN_MEMORY_MAX} spectra go to HDF5 files in DIR (reused by later "
                        f"runs) and specae streams them, as `specae train` does")
    add_run_options(p, argv, QUICK, "quality-<set>[-sweep-...][-quick]")
    args = p.parse_args(argv)
    args.minutes = args.minutes or None
    try:
        args.ivar_factors = [float(v) for v in args.ivar_factors.split(",") if v.strip()]
    except ValueError:
        p.error("--ivar-factors takes positive numbers, e.g. 0.8,1.25")
    if not all(f > 0 for f in args.ivar_factors):
        p.error("--ivar-factors takes positive numbers, e.g. 0.8,1.25")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.variants = {}
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        base, _, settings = rest.partition(":")
        if base not in SPECAE or not name:
            p.error(f"--variant {spec!r}: expected NAME=METHOD:KEY=VALUE,... with METHOD one of {', '.join(SPECAE)}")
        args.variants[name] = (base, {k: _value(v) for k, _, v in (kv.partition("=") for kv in settings.split(",") if kv)})
        args.methods.append(name)
    unknown = set(args.methods) - set(METHODS) - set(args.variants)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    if args.sweep:
        param, _, values = args.sweep.partition("=")
        if param not in SWEEPS or not values:
            p.error('--sweep takes "n-train=N1,N2,...", "latent=K1,K2,..." or "seed=S1,S2,..."')
        args.sweep = (param, [int(float(v)) for v in values.split(",")])
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the paths written ({filename: Path})."""
    started = time.perf_counter()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    device = run_device(args)
    command = " ".join(["python -m benchmarks.quality", *argv])
    suffix = "".join([f"-{args.noise}" if args.noise != "default" else "",
                      f"-sweep-{args.sweep[0]}" if args.sweep else "", "-quick" if args.quick else ""])
    name = args.name or f"quality-{args.set}{suffix}"
    n_max = max(args.sweep[1]) if args.sweep and args.sweep[0] == "n-train" else args.n_train
    ds = make_dataset(args.set, n_max, args.n_test, args.pixels, args.seed, args.stream, args.noise)
    base = {"set": args.set, "options": vars(args), "npix": ds.test.npix, "n_test": len(ds.test),
            "wave_range": [float(ds.test.wave[0]), float(ds.test.wave[-1])], "snr_bins": ds.snr_bins[0]}
    notes = [
        "RMSE: to the noise-free truth over every pixel the data can constrain (masked pixels of single spectra "
        "included; the emulator's always-masked APOGEE pixels excluded); the noisy input over its valid pixels.",
        "RMSE best latent (VAE): the model's own best reconstruction of each noise-free test spectrum (the truth "
        "as data at S/N 1e4, the decoder posterior run to convergence, pixels weighted by 1/sigma_model²): what "
        "the decoder can represent where its scatter is nearly flat (stars); on galaxies the weighting "
        "discounts the lines, so it is no RMSE floor there.",
        "chi2/dof: mean of ivar (denoised - noisy)^2 over the test spectra's valid pixels (1 = as close to the "
        "data as the truth is; below 1 = fitting the noise).",
        "±kσ: fraction of true values inside denoised ± k sigma (calibrated: 68.3 %, 95.4 %); – for methods "
        "without sigma.",
        "err/σ: RMS of (denoised - truth) / sigma (1 when sigma is right in variance; with heavy-tailed errors ±1σ "
        "can read 68 % while this is far from 1).",
        "Error model table: ±kσ and err/σ per pixel group and per S/N tercile of the test spectra, beside the "
        "'predicted ±kσ', the mean probability of the truth lying inside ±kσ under the method's own predictive "
        "distribution (specae: Denoised.predicted_coverage, 68.3/95.4 % where it is Gaussian, otherwise what its "
        "heavy tails make of ±kσ; baselines: Gaussian); sigma figures are over pixels with a finite sigma. Sums of n: "
        f"{SUM_WINDOWS} random windows of n adjacent pixels with a finite sigma per test spectrum, the fraction whose "
        "true sum lies inside the denoised sum ± 1σ, σ² from the pixel covariance (specae: "
        "PixelCovariance.sum_variance; baselines: pixels taken as independent); calibrated: 68.3 %.",
        "R²: ridge regression from training latents to the label, scored on the test set (oracle: its fitted "
        "labels)" + "".join(f"; {k} as {v.__name__}" for k, v in R2_LABELS[args.set].items() if v) + ".",
    ]
    if args.set == "galaxy":
        notes.append("Lines: pixels within 5 Å (rest) of [OII] 3727/3730, Hβ, [OIII] 4960/5008, Hα, [NII] "
                     "6550/6585, [SII] 6718/6733 in galaxies with EW(Hα) > 20 Å. specae and spender decode "
                     "in the rest frame (known z); PCA and Savitzky-Golay work in the observed frame. Thin: pixels "
                     f"whose rest wavelength under {THIN_COVERAGE:.0%} of the training spectra cover (the rest-frame "
                     "ends).")
    if ds.real is not None:
        notes.append(f"Real: {len(ds.real)} real survey spectra ({', '.join(REAL_SPECTRA[args.set])} in the shared "
                     "data), unlike any training spectrum, on the set's grid; each valid pixel hidden once (a tenth at "
                     "a time), predicted from the rest and compared with its measurement: ±kσ is the fraction "
                     "inside the prediction ± k sqrt(sigma² + noise²), err/noise the RMS of (measured - "
                     "predicted) / noise (1: as good as the truth would be).")
    if args.noise == "survey":
        notes.append("Noise: add_survey_noise for training and test spectra (S/N 3-100, 2-5 % of pixels in clusters "
                     "with 2-6x sigma recorded in ivar, dead pixels and runs, garbage flux under every mask).")
    if args.ivar_factors:
        notes.append("Mis-stated noise: '<method> ivar×F', specae on the test spectra with their ivar multiplied by F "
                     "(training and the trained calibration unchanged); '... recalibrated': after "
                     "specae.calibration.fit_calibration on those test spectra alone (no truth).")
    if ds.files:
        notes.append(f"Training sets above {IN_MEMORY_MAX} spectra are streamed to specae from HDF5 files; "
                     f"the other methods fit their first {IN_MEMORY_MAX} spectra, held in memory.")

    if not args.sweep:
        figures, rows, outputs = evaluate(ds, args)
        plots = {"rmse": plot_rmse(figures), "example": plot_example(ds, outputs)}
        wall = {"wall_minutes": (time.perf_counter() - started) / 60}
        errors = [r for m, f in figures["methods"].items() for r in error_model_rows(ds, m, f)]
        return write_results(name, {**base, "n_train": ds.n_train, **figures, **wall}, rows, command, plots,
                             args.results_dir, device, notes, {"Error model": errors})

    param, values = args.sweep
    per_value, rows, errors, cache = [], [], [], {}
    for v in values:
        point_args = replace_ns(args, **{SWEEPS[param]: v}) if SWEEPS[param] else args
        point = ds.with_train(v) if param == "n-train" else ds
        figures, point_rows, _ = evaluate(point, point_args, cache)
        per_value.append({param: v, "n_train": point.n_train, **figures})
        rows += [{param: v, **r} for r in point_rows]
        errors += [{param: v, **r} for m, f in figures["methods"].items() for r in error_model_rows(ds, m, f)]
    spread = {}
    if param == "seed":     # every figure's mean and standard deviation over the trainings
        spread = {stat: {m: _over_points(per_value, m, fn) for m in per_value[0]["methods"]}
                  for stat, fn in (("mean", np.mean), ("sd", lambda a: np.std(a, ddof=1)))}
        oracle = spread["mean"].get("oracle", {}).get("rmse_all")
        for stat, per_method in spread.items():
            rows += [{param: stat, **row(ds, m, f, oracle if stat == "mean" else None)} for m, f in per_method.items()]
            errors += [{param: stat, **r} for m, f in per_method.items() for r in error_model_rows(ds, m, f)]
    reference = "oracle" if ds.emulator is not None else "noisy"
    wall = {"wall_minutes": (time.perf_counter() - started) / 60}
    return write_results(name, {**base, "sweep": param, "points": per_value, **spread, **wall}, rows, command,
                         {"sweep": plot_sweep(param, values, per_value, reference)}, args.results_dir, device,
                         notes, {"Error model": errors})


def _over_points(per_value: list[dict], method: str, fn) -> dict:
    """`fn` of each numeric figure of `method` over the points of a sweep (R² label by label)."""
    figs = [p["methods"][method] for p in per_value]

    def over(values):
        ok = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return float(fn(ok)) if len(ok) == len(values) and len(ok) > 1 else None
    out = {k: over([f.get(k) for f in figs]) for k in figs[0] if k != "r2"}
    out["r2"] = {n: over([f["r2"][n] for f in figs]) for n in figs[0]["r2"]}
    return {k: v for k, v in out.items() if v is not None or k == "r2"}


def _value(text: str):
    """A --variant value: a number, a boolean, None, or else the string itself."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def replace_ns(ns: argparse.Namespace, **changes) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(ns), **changes})


if __name__ == "__main__":
    written = main()
    print("\n".join(str(p) for p in written.values()))
