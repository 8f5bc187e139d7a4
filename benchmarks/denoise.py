"""Denoising benchmark: VAE vs weighted PCA vs the noisy input, on spectra with a known truth.

    python benchmarks/denoise.py payne  --n-train 4000 --minutes 20     # APOGEE emulator, ../shared/data/payne
    python benchmarks/denoise.py galaxy --n-train 4000 --minutes 20 --redshift Z
    python benchmarks/denoise.py galaxy --n-train 4000 --minutes 20     # observed-frame model, for comparison

Writes benchmarks/results/denoise-<set>-<tag>.json with the figures, the command and the machine.
Metrics use every pixel the data can constrain (the APOGEE emulator's always-masked pixels are
excluded: no spectrum has data there), masked pixels of individual spectra included.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from specae.baselines import WeightedPCA
from specae.data.payne import PayneEmulator, default_payne_dir
from specae.data.synthetic import add_noise, galaxy_spectra
from specae.denoise import denoise
from specae.metrics import coverage, rmse
from specae.models.config import ModelConfig
from specae.train import TrainConfig, fit

RESULTS = Path(__file__).resolve().parent / "results"


def make_set(name: str, n: int, seed: int):
    """(noisy, clean, evaluable pixels (npix,)) for the named benchmark set."""
    if name == "payne":
        d = default_payne_dir()
        if d is None:
            sys.exit("the Payne emulator files (../shared/data/payne) are absent; cannot run this benchmark")
        emu = PayneEmulator(d)
        noisy, clean = emu.mock(n, seed=seed)
        return noisy, clean, ~emu.bad_pixels
    clean = galaxy_spectra(n, seed=seed)
    noisy = add_noise(clean, seed=seed + 1)
    return noisy, clean, np.ones(clean.npix, bool)


def emission_line_pixels(s) -> np.ndarray:
    """(N, npix) pixels within 5 A of Hbeta, [OIII] 5008 or Halpha in galaxies with EW(Halpha) > 20 A."""
    near = np.zeros(s.flux.shape, bool)
    for rest in (4862.7, 5008.2, 6564.6):
        near |= np.abs(s.wave[None] - rest * (1 + s.labels["Z"][:, None])) < 5
    return near & (s.labels["HA_EW"] > 20)[:, None]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("set", choices=("payne", "galaxy"))
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--latent-dim", type=int, default=6)
    p.add_argument("--decoder", choices=("mlp", "conv"), default="mlp")
    p.add_argument("--model", choices=("vae", "ae"), default="vae")
    p.add_argument("--redshift", default=None, help="label with z: rest-frame decoder")
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--epochs", type=int, default=500)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default=None, help="name of the results file (default from the options)")
    args = p.parse_args(argv)

    noisy, clean, ev = make_set(args.set, args.n_train + args.n_test, args.seed)
    train, test = noisy[: args.n_train], noisy[args.n_train:]
    truth = clean.flux[args.n_train:]
    fit_set, val = train.split((0.9, 0.1), seed=args.seed)
    all_px = np.broadcast_to(ev, truth.shape)
    valid, masked = all_px & ~test.mask, all_px & test.mask

    t0 = time.perf_counter()
    pca = WeightedPCA(args.latent_dim, seed=args.seed).fit(train)
    pca_flux, pca_sigma = pca.denoise(test)
    t_pca = time.perf_counter() - t0

    model, hist = fit(fit_set, val, ModelConfig(npix=train.npix, kind=args.model, latent_dim=args.latent_dim,
                                                decoder=args.decoder, redshift=args.redshift),
                      TrainConfig(epochs=args.epochs, max_minutes=args.minutes, seed=args.seed, device=args.device))
    t1 = time.perf_counter()
    d = denoise(model, test, n_samples=args.samples)
    t_denoise = time.perf_counter() - t1
    dc = denoise(model, test, n_samples=args.samples, combine=True)
    lines = emission_line_pixels(test) if args.set == "galaxy" else np.zeros_like(valid)

    r_noisy, r_pca, r_vae = rmse(test.flux, truth, valid), rmse(pca_flux, truth, all_px), rmse(d.flux, truth, all_px)
    out = {
        "set": args.set, "options": vars(args), "command": " ".join(["python", "benchmarks/denoise.py"] + (argv or sys.argv[1:])),
        "machine": {"device": torch.cuda.get_device_name() if model.decoder.mean.is_cuda else platform.processor() or platform.machine(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__},
        "n_train": len(fit_set), "n_val": len(val), "n_test": len(test), "npix": train.npix,
        "rmse": {"noisy_valid_pixels": r_noisy, "pca": r_pca, "vae": r_vae,
                 "vae_masked_pixels": rmse(d.flux, truth, masked), "pca_masked_pixels": rmse(pca_flux, truth, masked)},
        "ratio_vae_to_pca": r_vae / r_pca, "ratio_vae_to_noisy": r_vae / r_noisy,
        "combined_with_data": {"rmse": rmse(dc.flux, truth, all_px), "ratio_to_noisy": rmse(dc.flux, truth, all_px) / r_noisy,
                               "coverage_1sigma": coverage(dc.flux, dc.sigma, truth, 1, all_px)},
        "strong_emission_line_pixels": None if not lines.any() else {
            "n": int((lines & valid).sum()), "rmse_noisy": rmse(test.flux, truth, lines & valid),
            "rmse_vae": rmse(d.flux, truth, lines & valid), "rmse_vae_combined": rmse(dc.flux, truth, lines & valid),
            "rmse_pca": rmse(pca_flux, truth, lines & valid)},
        "coverage_vae": {"1sigma": coverage(d.flux, d.sigma, truth, 1, all_px),
                         "2sigma": coverage(d.flux, d.sigma, truth, 2, all_px),
                         "1sigma_masked": coverage(d.flux, d.sigma, truth, 1, masked)},
        "coverage_pca": {"1sigma": coverage(pca_flux, pca_sigma, truth, 1, all_px),
                         "2sigma": coverage(pca_flux, pca_sigma, truth, 2, all_px)},
        "training": {"minutes": hist["minutes"], "epochs": len(hist["epoch"]), "best_epoch": hist["best_epoch"],
                     "best_val_chi2_dof": hist["best_val_chi2_dof"], "stopped": hist["stopped"]},
        "seconds": {"pca_fit_denoise": t_pca, "vae_denoise": t_denoise},
    }
    RESULTS.mkdir(exist_ok=True)
    tag = args.tag or f"{args.model}-{args.decoder}-k{args.latent_dim}" + (f"-rest{args.redshift}" if args.redshift else "")
    path = RESULTS / f"denoise-{args.set}-{tag}.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("rmse", "ratio_vae_to_pca", "ratio_vae_to_noisy", "coverage_vae",
                                           "combined_with_data", "strong_emission_line_pixels", "training")}, indent=1))
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
