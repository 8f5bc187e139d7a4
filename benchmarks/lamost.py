"""LAMOST, real spectra without truth: specae's held-out pixels against weighted PCA's, and catalogue labels.

    python -m benchmarks.lamost --threads 2            # 3 folds, the whole grid: ~40 min on 2 CPU cores
    python -m benchmarks.lamost --quick --threads 2    # a 1000-pixel window, 3 epochs: ~2 min

Data: the 276 LAMOST low-resolution files in ../shared/data/lamost (176 DR1 stars, 100 DR7 stars and galaxies)
read with `specae.data.readers.read_many` onto one log-lambda grid (the files' own step, their union), with the
DR1 catalogue's teff, logg and feh for the 131 stars it lists. Folds: the spectra are dealt at random to --folds
folds; for each fold a VAE with the default settings trains on the other folds (a random tenth of them
validating: early stopping and the error model's calibration), and a weighted PCA with the same K is fitted on
the same spectra. Then, on the fold's spectra, never seen by either:
- held-out pixels (`specae.denoise.heldout`, each valid pixel hidden once and predicted from the rest): the
  fraction within +-1/+-2 sigma, chi2/dof, and the noise-normalised prediction error sqrt(mean((x - f)^2 ivar))
  of specae and of the PCA (1 is the noise floor: a perfect prediction of the true spectrum);
- labels: a label regressor (`specae.regress.LabelRegressor`, MLP, sigma calibrated on a held-out fifth of the
  training folds' labelled stars) predicts the fold's labelled stars; coverage of +-1 sigma against the
  catalogue per label, pooled over the folds.
Writes benchmarks/results/lamost.json and .md through benchmarks/report.py.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.quality import _window, shared_data_dir
from benchmarks.report import add_fold_options, add_run_options, start, write_results
from specae.baselines import WeightedPCA
from specae.data.readers import read_many
from specae.denoise import heldout
from specae.models.config import ModelConfig
from specae.pipeline import fit_calibrated
from specae.regress import LabelRegressor, RegressorConfig
from specae.train import TrainConfig

LABELS = ("teff", "logg", "feh")
QUICK = {"pixels": "1000", "epochs": 3}


def read_lamost(pixels: str | None):
    """The LAMOST spectra with the catalogue's labels, on the files' union grid (or a window of it)."""
    root = shared_data_dir()
    paths = sorted((root / "lamost").glob("spec-*.fits*")) if root else []
    if not paths:
        raise SystemExit("the LAMOST files (../shared/data/lamost or $SPECAE_SHARED_DATA) are absent")
    spectra = read_many(paths, catalogue=root / "lamost" / "lamost_dr1_catalogue.csv", labels=list(LABELS))
    window = _window(spectra.npix, pixels)
    return spectra if window == slice(None) else read_many(paths, wave=spectra.wave[window],
                                                           catalogue=root / "lamost" / "lamost_dr1_catalogue.csv",
                                                           labels=list(LABELS))


def noise_normalised_error(h, spectra) -> float:
    """sqrt(mean((x - f)^2 ivar)) over the scored held-out pixels: 1 when f is the true spectrum."""
    ok = np.isfinite(h.flux) & (spectra.ivar > 0)
    return float(np.sqrt(np.mean((spectra.flux[ok] - h.flux[ok]) ** 2 * spectra.ivar[ok])))


def run_fold(spectra, held: np.ndarray, args) -> dict:
    """Train on the spectra outside `held` (bool rows), check the held ones."""
    others, test = spectra.select(np.flatnonzero(~held)), spectra.select(np.flatnonzero(held))
    train, val = others.split((0.9, 0.1), seed=args.seed)
    cfg = TrainConfig(seed=args.seed, device=args.device, progress=False,
                      **({"epochs": args.epochs} if args.epochs else {}))
    model, hist = fit_calibrated(train, val, ModelConfig(npix=spectra.npix, latent_dim=args.latent_dim), cfg)
    pca = WeightedPCA(args.latent_dim, seed=args.seed).fit(others)
    h_vae, h_pca = heldout(model, test, seed=args.seed), heldout(pca, test, seed=args.seed)
    labelled = np.isfinite(others.labels[LABELS[0]])
    reg = LabelRegressor(RegressorConfig(seed=args.seed, device=args.device, progress=False))
    reg.fit(model, others.select(np.flatnonzero(labelled)), LABELS)
    pred = reg.predict(model, test)
    return {"vae": h_vae.pooled() | {"error": noise_normalised_error(h_vae, test)},
            "pca": h_pca.pooled() | {"error": noise_normalised_error(h_pca, test)},
            "train": len(train), "val": len(val), "test": len(test), "epochs": len(hist["epoch"]),
            "train_minutes": hist["minutes"], "calibration_pixels": model.calibration.n_pixels,
            "labels": {n: (test.labels[n], test.labels.get(f"{n}_err"), *pred[n]) for n in LABELS}}


def label_row(name: str, parts: list) -> dict:
    """Coverage of +-1/+-2 sigma against the catalogue, and the scatter. The regressor's sigma is calibrated
    against catalogue values of held-out stars, so it already holds the catalogue's own error: not added again."""
    truth, err, mean, sigma = (np.concatenate([p[k] if p[k] is not None else np.full(len(p[0]), np.nan)
                                               for p in parts]) for k in range(4))
    ok = np.isfinite(truth) & np.isfinite(mean)
    pull = (mean[ok] - truth[ok]) / sigma[ok]
    return {"label": name, "stars": int(ok.sum()), "no estimate": int((np.isfinite(truth) & ~np.isfinite(mean)).sum()),
            "rms error": float(np.sqrt(np.mean((mean[ok] - truth[ok]) ** 2))),
            "median sigma": float(np.median(sigma[ok])), "median catalogue error": float(np.nanmedian(err[ok])),
            "in ±1σ": float(np.mean(np.abs(pull) < 1)), "in ±2σ": float(np.mean(np.abs(pull) < 2))}


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.lamost", description=__doc__.splitlines()[0])
    add_fold_options(p, "spectra", None, "epoch cap per fold (default: the training default)")
    add_run_options(p, argv, QUICK, "lamost[-quick]")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the paths written ({filename: Path})."""
    started, argv, args = start(argv, parse)
    spectra = read_lamost(args.pixels)
    fold_of = np.random.default_rng(args.seed).permutation(len(spectra)) % args.folds
    folds = [run_fold(spectra, fold_of == k, args) for k in range(args.folds)]
    rows = []
    for method in ("vae", "pca"):
        n = np.array([f[method]["pixels"] for f in folds], float)
        row = {"method": "specae VAE" if method == "vae" else f"weighted PCA ({args.latent_dim})"}
        for key, label in (("within_1sigma", "in ±1σ"), ("within_2sigma", "in ±2σ"), ("chi2_dof", "chi²/dof"),
                           ("error", "error / noise")):
            row[label] = float(np.sum([f[method][key] for f in folds] * n) / n.sum())
        rows.append(row | {"held-out pixels": int(n.sum())})
    labels = [label_row(n, [f["labels"][n] for f in folds]) for n in LABELS]
    figures = {"options": vars(args), "npix": spectra.npix, "wave_range": [spectra.wave[0], spectra.wave[-1]],
               "n_spectra": len(spectra), "labelled": int(np.isfinite(spectra.labels[LABELS[0]]).sum()),
               "heldout": rows, "labels": labels,
               "folds": [{k: v for k, v in f.items() if k != "labels"} for f in folds],
               "wall_minutes": (time.perf_counter() - started) / 60}
    notes = [
        f"Data: {len(spectra)} LAMOST spectra on {spectra.npix} pixels, {spectra.wave[0]:.0f}-{spectra.wave[-1]:.0f} Å; "
        f"{figures['labelled']} with DR1 catalogue labels. {args.folds} folds of spectra; per fold (train/validation/"
        "test spectra, epochs, training minutes, calibration pixels): "
        + "; ".join(f"{f['train']}/{f['val']}/{f['test']}, {f['epochs']}, {f['train_minutes']:.1f}, "
                    f"{f['calibration_pixels']}" for f in folds) + ".",
        "Held-out pixels of the test folds (each valid pixel hidden once, predicted from the rest): in ±1σ/±2σ of "
        "sqrt(sigma² + noise²) (68.3/95.4 % when sigma is right), chi²/dof (1), and error / noise = "
        "sqrt(mean((x - f)² ivar)), 1 for a perfect prediction of the true spectrum; weighted PCA's sigma is its "
        "own (Bailey 2012 style).",
        "Labels: a LabelRegressor (MLP) on the training folds' labelled stars, predicting the test folds' stars; "
        "in ±1σ/±2σ: |prediction - catalogue| within its sigma, which was calibrated against held-out catalogue "
        "values and so already includes the catalogue's error (68.3/95.4 % when right).",
    ]
    name = args.name or "lamost" + ("-quick" if args.quick else "")
    command = " ".join(["python -m benchmarks.lamost", *argv])
    return write_results(name, figures, rows, command, None, args.results_dir, args.device, notes,
                         tables={"Catalogue labels of the test folds' stars": labels})


if __name__ == "__main__":
    main()
