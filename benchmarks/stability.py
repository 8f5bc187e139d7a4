"""Stability of the error model's fit: one trained model, calibrated on different samples of the same validation
spectra, each calibration scored against the truth on the same held-out spectra.

    python -m benchmarks.stability --threads 1            # the demo's model and sets: ~6 min on one CPU core
    python -m benchmarks.stability --quick --threads 1    # 3 epochs, samples of 30: ~1 min

The demo's setting (specae.demo): a VAE trained for a fixed number of epochs on fresh draws of the bundled stellar
generator, its validation spectra dealt into --samples disjoint samples of --rows spectra, and all of them together.
Each sample calibrates the model (specae.calibration.fit_calibration: no truth); the bundled held-out spectra are
denoised with each calibration and scored against their truth. A fit that depends on which spectra it saw shows as
a spread of the constants and of the coverage between rows. Writes
benchmarks/results/stability-demo.json and .md through benchmarks/report.py.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.report import add_run_options, start, write_results
from specae.calibration import FITTED, fit_calibration
from specae.data.synthetic import default_dataset
from specae.demo import DEMO_EPOCHS, load_bundled
from specae.denoise import denoise
from specae.metrics import coverage, error_over_sigma, rmse
from specae.models.config import ModelConfig
from specae.train import TrainConfig, fit

QUICK = {"epochs": 3, "rows": 30}


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.stability", description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help="training epochs (fixed: no early stopping)")
    p.add_argument("--n-train", type=int, default=2000, help="training draws; 15 %% of them validate and calibrate")
    p.add_argument("--latent-dim", type=int, default=6)
    p.add_argument("--samples", type=int, default=3, help="disjoint samples of the validation spectra")
    p.add_argument("--rows", type=int, default=100, help="spectra per sample (the demo calibrates on 100)")
    p.add_argument("--test-rows", type=int, default=None, help="the first N of the bundled test spectra (default all)")
    add_run_options(p, argv, QUICK, "stability-demo[-quick]")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the paths written ({filename: Path})."""
    started, argv, args = start(argv, parse)
    with tempfile.TemporaryDirectory() as tmp:     # the bundled set is generated there only if data/ lacks it
        test, truth = load_bundled("stellar", Path(tmp))
    test, truth = test.select(slice(0, args.test_rows)), truth.select(slice(0, args.test_rows))
    train_all, _ = default_dataset("stellar", n=args.n_train, seed=args.seed + 1)
    train, val = train_all.split((0.85, 0.15), seed=args.seed)
    model, hist = fit(train, val, ModelConfig(npix=test.npix, latent_dim=args.latent_dim),
                      TrainConfig(epochs=args.epochs, patience=None, seed=args.seed, device=args.device, progress=False))
    val = hist.pop("validation")
    n = min(args.rows, len(val) // args.samples)
    samples = {f"sample {k + 1} ({n} spectra)": val.select(slice(k * n, (k + 1) * n)) for k in range(args.samples)}
    samples[f"all ({len(val)} spectra)"] = val
    t, valid = truth.flux, ~test.mask
    rows, fits = [], {}
    for name, spectra in samples.items():
        t0 = time.perf_counter()
        cal = fit_calibration(model, spectra, seed=args.seed)
        seconds = time.perf_counter() - t0
        d = denoise(model, test)
        figures = {"heldout_nll": cal.heldout_nll, "within_1sigma": coverage(d.flux, d.sigma, t),
                   "within_2sigma": coverage(d.flux, d.sigma, t, 2), "err_over_sigma": error_over_sigma(d.flux, d.sigma, t),
                   "rmse": rmse(d.flux, t, valid), "calibration_seconds": seconds}
        fits[name] = {**figures, "calibration": asdict(cal)}
        rows.append({"calibrated on": name, "held-out nll/pixel": cal.heldout_nll,
                     **{c: getattr(cal, c) for c, _, _ in FITTED if c != "coverage_power"},
                     "±1σ": figures["within_1sigma"], "±2σ": figures["within_2sigma"],
                     "err/σ": figures["err_over_sigma"], "RMSE": figures["rmse"], "s": seconds})
    within1 = [f["within_1sigma"] for f in fits.values()]
    nll = [f["heldout_nll"] for f in fits.values()]
    figures = {"options": vars(args), "train_rows": hist["n_train"], "val_rows": hist["n_val"],
               "epochs": len(hist["epoch"]), "fits": fits, "within_1sigma_range": [min(within1), max(within1)],
               "wall_minutes": (time.perf_counter() - started) / 60}
    notes = [
        f"Model: VAE K = {args.latent_dim}, {len(hist['epoch'])} epochs on {hist['n_train']} draws of the bundled "
        f"stellar generator (seed {args.seed + 1}); {hist['n_val']} validation draws dealt into the samples. Test: "
        f"the {len(test)} bundled held-out spectra ({test.npix} pixels), every valid pixel against its truth "
        "(±kσ: the fraction of true values inside the denoised flux ± k sigma, 68.3 / 95.4 % if right).",
        "Each row refits the error model on its spectra alone (the constants: specae.calibration.Calibration; "
        "held-out nll: the mean negative log-likelihood per held-out pixel of the spectra it was fitted on, which "
        "chose the constants). Coverage across rows: "
        f"{100 * min(within1):.1f}-{100 * max(within1):.1f} % inside ±1σ, held-out nll {min(nll):.5f} to "
        f"{max(nll):.5f}.",
    ]
    name = args.name or "stability-demo" + ("-quick" if args.quick else "")
    command = " ".join(["python -m benchmarks.stability", *argv])
    return write_results(name, figures, rows, command, None, args.results_dir, args.device, notes)


if __name__ == "__main__":
    written = main()
    print("\n".join(str(p) for p in written.values()))
