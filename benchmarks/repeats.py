"""Real-repeat validation, no truth: specae on APOGEE visits of stars it never saw, against their raw other visits.

    python -m benchmarks.repeats --threads 1            # 3 folds, full grid: ~4 min on one CPU core
    python -m benchmarks.repeats --quick --threads 1    # a 1000-pixel window, K = 3, 3 epochs: ~20 s

Data: the apVisit files in ../shared/data/apogee_visits (19 M dwarfs, 18 of them with 2-16 visits), observed
frame, on one log-lambda grid. Folds: the stars are dealt to --folds folds; for each fold a VAE trains on the
visits of the other stars (a random star-disjoint quarter of them validates: early stopping and the error
model's calibration), and `specae.repeats.repeats` compares each held-out visit, denoised, with the raw other
visits of its star (shifted by the velocity label VRAD), beside a weighted PCA with the same K fitted on the
visits of the other stars. The pairs of all folds are pooled. Writes benchmarks/results/repeats-apogee.json
and .md through benchmarks/report.py.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, fields

import numpy as np

from benchmarks.quality import _window, shared_data_dir
from benchmarks.report import add_fold_options, add_run_options, start, write_results
from specae.baselines import WeightedPCA
from specae.calibration import fit_calibration
from specae.data.readers import read_many
from specae.data.resample import loglam_grid
from specae.models.config import ModelConfig
from specae.repeats import STATS, RepeatCheck, repeats
from specae.train import TrainConfig, fit

GROUP, VELOCITY = "OBJID", "VRAD"
# apStar's grid, 6e-6 dex (4.1 km/s) a pixel, over the range every visit covers (15141.7-15143.6 to
# 16953.6-16955.4 A): the survey's own grid for combining visits. The native apVisit pixels are 5e-6 dex
# (blue chip) to 2.7e-6 dex (red): 6e-6 keeps the resolution (R 22500 is ~3 pixels per FWHM), bins most
# pixels from two or more native ones so neighbours share little noise, and leaves ~8200 pixels to train on.
GRID = (15144.0, 16953.0, 6e-6)
# The observed frame, not the rest frame by VRAD: 7 of the 19 stars have visits at VRAD 540-615 km/s, which a
# cross-correlation with the other stars' spectra puts within ~40 km/s of those (an alias of the RV fit). Three
# stars have every visit there, consistently, so `repeats` (which uses only the velocity differences within a
# star) still aligns their pairs; but a rest frame by VRAD would put them 550 km/s off the other stars, and a
# model would train on misaligned spectra. In the observed frame the stars differ by their true velocities (tens
# of km/s), as any survey's apVisits do.
VAL_SHARE = 0.25    # of each fold's training visits, whole stars, validate
RAW_SANE = 2.0      # a star whose raw pair floor is above this has visits that differ beyond noise (a failed velocity)
QUICK = {"pixels": "1000", "epochs": 3, "latent_dim": 3}
COLUMNS = {"noise_left": "noise left specae", "noise_left_baseline": "noise left PCA",
           "noise_left_raw": "raw pair", "spread": "spread"}
PAIR_FIELDS = [f.name for f in fields(RepeatCheck) if f.name not in ("objects", "n_obs", "ids")]


def read_visits(pixels: str | None):
    """The visits (Spectra) on GRID, or the window `pixels` of it (see quality.py's --pixels)."""
    root = shared_data_dir()
    paths = sorted((root / "apogee_visits").glob("apVisit-*.fits*")) if root else []
    if not paths:
        raise SystemExit("the APOGEE visits (../shared/data/apogee_visits or $SPECAE_SHARED_DATA) are absent")
    wave = loglam_grid(*GRID)
    return read_many(paths, wave=wave[_window(wave.size, pixels)])


def deal_folds(counts: np.ndarray, n_folds: int, rng) -> np.ndarray:
    """(M,) fold of each star: most visits first, each to the fold with the fewest visits so far (one star
    has 16 of the 86), stars with as many visits in random order."""
    fold, load = np.empty(counts.size, int), np.zeros(n_folds)
    for m in np.lexsort((rng.random(counts.size), -counts)):
        fold[m] = np.argmin(load)
        load[fold[m]] += counts[m]
    return fold


def validation_stars(stars: np.ndarray, counts: np.ndarray, rng) -> np.ndarray:
    """(M,) bool: stars, in random order, taken while their visits stay within VAL_SHARE of all."""
    chosen, n = np.zeros(stars.size, bool), 0
    for m in rng.permutation(stars.size):
        if n + counts[m] <= VAL_SHARE * counts.sum():
            chosen[m], n = True, n + counts[m]
    return chosen


def run_fold(visits, held: np.ndarray, args, rng) -> tuple[RepeatCheck, dict]:
    """Train on the visits outside `held` (bool rows), check the held ones: (their RepeatCheck, fold info)."""
    others = visits.select(np.flatnonzero(~held))
    stars, index, counts = np.unique(others.labels[GROUP], return_inverse=True, return_counts=True)
    chosen = validation_stars(stars, counts, rng)
    val = chosen[index]
    model, hist = fit(others.select(np.flatnonzero(~val)), others.select(np.flatnonzero(val)),
                      ModelConfig(npix=visits.npix, latent_dim=args.latent_dim),
                      TrainConfig(epochs=args.epochs, seed=args.seed, device=args.device, progress=False))
    t0 = time.perf_counter()
    fit_calibration(model, hist.pop("validation"))
    calibration_minutes = (time.perf_counter() - t0) / 60
    pca = WeightedPCA(args.latent_dim, seed=args.seed).fit(others)
    check = repeats(model, visits.select(np.flatnonzero(held)), GROUP, velocity=VELOCITY, baseline=pca)
    info = {"held_out": sorted(set(visits.labels[GROUP][held])), "train_visits": hist["n_train"],
            "val_visits": hist["n_val"], "val_stars": stars[chosen].tolist(),
            "epochs": len(hist["epoch"]), "best_epoch": hist["best_epoch"], "train_minutes": hist["minutes"],
            "calibration_minutes": calibration_minutes, "calibration": asdict(model.calibration)}
    return check, info


def pool(checks: list[RepeatCheck]) -> RepeatCheck:
    """One RepeatCheck of several (each fold's): objects, rows and pairs concatenated, indices offset."""
    objects = np.cumsum([0] + [len(c.objects) for c in checks[:-1]])
    rows = np.cumsum([0] + [len(c.ids) for c in checks[:-1]])
    offset = {"pair_object": objects, "pair_denoised": rows, "pair_other": rows}
    return RepeatCheck(*(np.concatenate([getattr(c, f.name) + offset[f.name][k] if f.name in offset
                                         else getattr(c, f.name) for k, c in enumerate(checks)])
                         for f in fields(RepeatCheck)))


def only(check: RepeatCheck, keep: np.ndarray) -> RepeatCheck:
    """The objects `keep` ((M,) bool) of `check`, and their pairs."""
    pairs = keep[check.pair_object]
    parts = {k: getattr(check, k)[pairs] for k in PAIR_FIELDS}
    parts["pair_object"] = (np.cumsum(keep) - 1)[parts["pair_object"]]
    return RepeatCheck(check.objects[keep], check.n_obs[keep], check.ids, **parts)


def row(name, fold, visits, pairs, span, stats: dict, flagged=None) -> dict:
    """One table row; every row has the same keys."""
    return {"star": name, "fold": fold, "visits": visits, "pairs": pairs, "VRAD span km/s": span,
            **{label: stats[k] for k, label in COLUMNS.items()},
            "spread/raw": stats["spread"] / stats["noise_left_raw"],
            "specae/PCA": stats["noise_left"] / stats["noise_left_baseline"],
            "in ±1": stats["within1"], "in ±2": stats["within2"], "flagged": flagged}


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.repeats", description=__doc__.splitlines()[0])
    add_fold_options(p, "stars", 200, "epoch cap per fold, early stopping on the validation stars ends it (no time "
                     "budget: runs repeat exactly)")
    add_run_options(p, argv, QUICK, "repeats-apogee[-quick]")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the paths written ({filename: Path})."""
    started, argv, args = start(argv, parse)
    visits = read_visits(args.pixels)
    rng = np.random.default_rng(args.seed)
    stars, index, counts = np.unique(visits.labels[GROUP], return_inverse=True, return_counts=True)
    fold_of = deal_folds(counts, args.folds, rng)
    checks, folds = zip(*(run_fold(visits, fold_of[index] == k, args, rng) for k in range(args.folds)))
    check = pool(list(checks))

    vrad = {s: visits.labels[VELOCITY][visits.labels[GROUP] == s] for s in check.objects}
    per = check.per_object
    scored = np.bincount(check.pair_object[np.isfinite(check.spread)], minlength=len(check.objects))
    fold_star = dict(zip(stars, fold_of))
    sane = per["noise_left_raw"] < RAW_SANE
    rows = [row(s, fold_star[s], n, p, np.ptp(vrad[s]), {k: per[k][m] for k in STATS}, not sane[m])
            for m, (s, n, p) in enumerate(zip(check.objects, check.n_obs, scored))]
    overall = {"all": check.overall, "sane": only(check, sane).overall}
    for key, label, keep in (("all", "all", np.ones_like(sane)), ("sane", f"raw < {RAW_SANE:g}", sane)):
        rows.append(row(f"{label} ({keep.sum()} stars)", None, check.n_obs[keep].sum(), scored[keep].sum(), None,
                        overall[key]))
    for key, o in overall.items():
        o["spread_over_raw"] = o["spread"] / o["noise_left_raw"]
        o["specae_over_pca"] = o["noise_left"] / o["noise_left_baseline"]
        o["spread_within_10pc_of_raw"] = abs(o["spread_over_raw"] - 1) <= 0.1
    figures = {"options": vars(args), "npix": visits.npix, "wave_range": [visits.wave[0], visits.wave[-1]],
               "log10_step": GRID[2], "n_visits": len(visits), "folds": list(folds),
               "flagged": check.objects[~sane].tolist(), "overall": overall,
               "wall_minutes": (time.perf_counter() - started) / 60}
    notes = [
        f"Data: {len(visits)} apVisit spectra of {len(stars)} stars ({len(check.objects)} with 2+ visits) on "
        f"{visits.npix} pixels, {visits.wave[0]:.0f}-{visits.wave[-1]:.0f} Å at {GRID[2]:g} dex (apStar's step), "
        "observed frame; pairs aligned by the header's VRAD.",
        f"Folds: {args.folds}, by star; each trains a VAE (K = {args.latent_dim}, {args.epochs} epochs at most) on "
        f"the other stars' visits, a random star-disjoint quarter of them validating (early stopping, error-model "
        f"calibration), and fits a weighted PCA (K = {args.latent_dim}) on all the other stars' visits; no model "
        "sees the star it checks. Pairs of all folds pooled. Per fold (training/validation visits, epochs run, "
        "best epoch; -1: the weighted-PCA start was never bettered on the validation stars): "
        + "; ".join(f"{f['train_visits']}/{f['val_visits']}, {f['epochs']}, {f['best_epoch']}" for f in folds) + ".",
        "Per ordered pair (i denoised, j raw) of a star's visits, after a cubic multiplicative match "
        "(specae.repeats): noise left = 1.4826 MAD((x_j - p d_i) / s_j), 1 at best; raw pair = the same with the "
        "raw x_i and both visits' sigma, the floor no denoiser gets under (1 when visits differ by their stated "
        "noise alone); spread = 1.4826 MAD of u = (x_j - p d_i) / sqrt(p² sd_i² + s_j²), 1 when specae's sigma and "
        "the visits' are right (in ±1/±2: pixels with |u| < 1/2, then 68.3/95.4 %); the visits' stated noise "
        "being itself too small by the raw pair's floor, the spread is compared with that floor. Per star and "
        "overall: medians over the pairs; the fractions pool the pixels.",
        f"Flagged: stars whose raw pair floor is at least {RAW_SANE:g} (flagged: "
        f"{', '.join(figures['flagged']) or 'none'}): visits that differ beyond their noise, e.g. a failed "
        "velocity fit in the header (VRAD span of hundreds of km/s). They are kept in 'all'; "
        f"'raw < {RAW_SANE:g}' leaves them out.",
        f"Overall, all stars / raw < {RAW_SANE:g}: spread/raw {overall['all']['spread_over_raw']:.3f} / "
        f"{overall['sane']['spread_over_raw']:.3f} (the criterion, within 10 %: "
        + " / ".join("met" if o["spread_within_10pc_of_raw"] else "missed" for o in overall.values())
        + f"); noise left specae/PCA {overall['all']['specae_over_pca']:.3f} / "
        f"{overall['sane']['specae_over_pca']:.3f}.",
    ]
    name = args.name or "repeats-apogee" + ("-quick" if args.quick else "")
    command = " ".join(["python -m benchmarks.repeats", *argv])
    return write_results(name, figures, rows, command, None, args.results_dir, args.device, notes)


if __name__ == "__main__":
    written = main()
    print("\n".join(str(p) for p in written.values()))
