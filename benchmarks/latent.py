"""Latent-space benchmark: physical labels from a VAE's latents, their calibration, the amortisation gap and
the emulator's own limit, on held-out spectra of the Payne APOGEE emulator.

    python -m benchmarks.latent --threads 1                 # 3000 training spectra, 8 min of VAE training
    python -m benchmarks.latent --quick --threads 1         # tiny sizes, ~2 min
    python -m benchmarks.latent --model /tmp/vae            # reuse (or keep) the trained VAE

Data: the emulator (../shared/data/payne), 7214 px, labels uniform in its valid range, S/N 5-80 (log-uniform),
APOGEE's bad pixels and 0-3 masked chunks per spectrum; a 6-latent VAE trained for a CPU budget on the
training spectra, whose labels (TEFF, LOGG, FE_H) fit the label maps.
Rows: the label maps of specae.regress on the VAE's Laplace latents (MLP and ridge; fitted on the training
labels, sigma calibrated on separate labelled spectra the VAE never saw), the same MLP on 12
weighted-PCA coefficients, ridge on 12 weighted-PCA coefficients (the bar), and the emulator fitted to each
noisy spectrum (PayneEmulator.fit: the limit); then the latent posteriors (encoder q(z|x), Laplace, decoder-only)
by chi2/dof and RMSE to the truth of their decoded means (the amortisation gap). Writes
benchmarks/results/latent-payne.json/.md/.png through benchmarks/report.py.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from benchmarks.report import add_run_options, write_results
from specae.baselines import WeightedPCA
from specae.data.payne import LABEL_NAMES, PayneEmulator, default_payne_dir
from specae.denoise import Latents, encode, model_input
from specae.latent import decode, directions
from specae.regress import LabelRegressor, RegressorConfig, r2, ridge_fit

LABELS = ("TEFF", "LOGG", "FE_H")
UNITS = {"TEFF": "K", "LOGG": "dex", "FE_H": "dex"}
SNR_BINS = (5, 10, 20, 40, 80)
PCA_K = 12
QUICK = {"n_train": 400, "n_calib": 150, "n_test": 100, "pixels": 1000, "minutes": 0.5}


def label_figures(mean: np.ndarray, sigma: np.ndarray | None, test) -> dict:
    """Per label: R^2, median |error|, +-1 sigma coverage overall and per S/N bin; mean, sigma (N, 3)."""
    snr, out = test.labels["SNR"], {}
    for j, name in enumerate(LABELS):
        truth = test.labels[name]
        err = mean[:, j] - truth
        f = {"r2": r2(mean[:, j], truth), "mae_median": float(np.median(np.abs(err)))}
        if sigma is not None:
            inside = np.abs(err) <= sigma[:, j]
            f["coverage_1sigma"] = float(inside.mean())
            f["coverage_1sigma_snr"] = {f"{a}-{b}": float(inside[(snr >= a) & (snr < b)].mean())
                                        for a, b in zip(SNR_BINS[:-1], SNR_BINS[1:])}
            f["sigma_median"] = float(np.median(sigma[:, j]))
        out[name] = f
    return out


def label_row(method: str, f: dict) -> dict:
    row = {"method": method}
    row.update({f"R² {n}": f[n]["r2"] for n in LABELS})
    row.update({f"MAE {n} [{UNITS[n]}]": f[n]["mae_median"] for n in LABELS})
    row.update({f"±1σ {n}": f[n].get("coverage_1sigma") for n in LABELS})
    return row


def fit_predict(kind: str, train: tuple, calib: tuple, test_lat: Latents, seed: int) -> tuple[dict, LabelRegressor]:
    """A label map fitted on train = (Latents, Spectra), calibrated on calib = (Latents, Spectra); its prediction
    for test_lat."""
    def labelled(lat, spectra):
        return lat, np.stack([spectra.labels[n] for n in LABELS], 1)

    reg = LabelRegressor(RegressorConfig(kind=kind, seed=seed, progress=False))
    reg.fit_latents(*labelled(*train), LABELS, labelled(*calib))
    pred = reg.predict_latents(test_lat)
    return {"mean": pred.mean, "sigma": pred.sigma}, reg


def pca_latents(pca: WeightedPCA, spectra, scale: np.ndarray) -> Latents:
    """PCA coefficients and their covariance as Latents, divided by the training coefficients' spread so
    that every component has unit scale, as latents do."""
    c, cov = pca.encode(spectra)
    return Latents(c / scale, cov / np.outer(scale, scale), "pca")


def flux_figures(flux: np.ndarray, test, clean, evaluable: np.ndarray) -> dict:
    """chi2/dof of model spectra `flux` (N, npix) against the noisy test spectra (their valid pixels and ivar),
    and their RMSE to the truth over the `evaluable` pixels (npix,); data units."""
    valid = ~test.mask
    ev = np.broadcast_to(evaluable, flux.shape)
    return {"chi2_dof": float(np.sum(test.ivar[valid] * (flux - test.flux)[valid] ** 2) / valid.sum()),
            "rmse_truth": float(np.sqrt(np.mean((flux - clean.flux)[ev] ** 2)))}


def posterior_figures(model, test, clean, evaluable, kind: str) -> dict:
    """The test spectra's latent posterior of `kind`, the seconds it took, and `flux_figures` of its decoded
    mean."""
    t0 = time.perf_counter()
    lat = encode(model, test, kind)
    seconds = time.perf_counter() - t0
    _, scale, _ = model_input(model, test)
    return {**flux_figures(decode(model, lat) * scale[:, None], test, clean, evaluable), "seconds": seconds,
            "latents": lat}


def run(args) -> dict:
    directory = default_payne_dir()
    if directory is None:
        raise SystemExit("the Payne emulator files (../shared/data/payne or $SPECAE_PAYNE_DIR) are absent")
    emu = PayneEmulator(directory)
    if args.pixels:
        emu = emu.subset(slice((emu.npix - args.pixels) // 2, (emu.npix + args.pixels) // 2))
    train, _ = emu.mock(args.n_train, seed=[args.seed, 0])
    test, clean = emu.mock(args.n_test, seed=[args.seed, 1])
    calib, _ = emu.mock(args.n_calib, seed=[args.seed, 2])
    evaluable = ~emu.bad_pixels
    figures = {"n_train": len(train), "n_calib": len(calib), "n_test": len(test), "npix": emu.npix,
               "latent_dim": args.latent_dim, "options": vars(args), "seconds": {}}
    clock = time.perf_counter()

    def lap(what):
        nonlocal clock
        figures["seconds"][what] = time.perf_counter() - clock
        clock = time.perf_counter()

    model, history, trained = train_or_load(args, train)
    figures["vae"] = {"epochs": len(history.get("epoch", [])), "minutes": history.get("minutes"),
                      "best_val_chi2_dof": history.get("best_val_chi2_dof"), "stopped": history.get("stopped"),
                      "trained_in_this_run": trained}
    lap("vae_training")
    train_lat, calib_lat = encode(model, train), encode(model, calib)
    lap("encode_train_calib")

    # the amortisation gap: encoder vs Laplace vs decoder-only posterior on the test spectra
    gap = {kind: posterior_figures(model, test, clean, evaluable, kind) for kind in ("encoder", "laplace", "decoder")}
    lap("posteriors_test")

    methods = {}
    for kind in ("mlp", "ridge"):
        pred, reg = fit_predict(kind, (train_lat, train), (calib_lat, calib), gap["laplace"]["latents"], args.seed)
        methods[f"VAE latents + {kind}"] = label_figures(pred["mean"], pred["sigma"], test)
        if kind == "mlp":
            mlp, mlp_pred = reg, pred
            # the same map fed the other posteriors of the test spectra
            for other in ("encoder", "decoder"):
                p = reg.predict_latents(gap[other]["latents"])
                methods[f"VAE latents ({other} posterior) + mlp"] = label_figures(p.mean, p.sigma, test)
    lap("label_maps")

    pca = WeightedPCA(PCA_K, seed=args.seed).fit(train)
    c_train, _ = pca.encode(train)
    spread = c_train.std(0)
    pca_train, pca_calib, pca_test = (pca_latents(pca, s, spread) for s in (train, calib, test))
    ridge_mean = np.column_stack([b + pca_test.mean @ c for c, b in
                                  (ridge_fit(pca_train.mean, train.labels[n]) for n in LABELS)])
    methods[f"ridge on {PCA_K} weighted-PCA coefficients (the bar)"] = label_figures(ridge_mean, None, test)
    pred, _ = fit_predict("mlp", (pca_train, train), (pca_calib, calib), pca_test, args.seed)
    methods[f"{PCA_K} weighted-PCA coefficients + mlp"] = label_figures(pred["mean"], pred["sigma"], test)
    lap("pca")

    fitted, label_cov, model_flux = emu.fit(test)
    idx = [LABEL_NAMES.index(n) for n in LABELS]
    sig = np.sqrt(np.diagonal(label_cov, axis1=1, axis2=2))[:, idx]
    methods["emulator fitted to each spectrum (the limit)"] = label_figures(fitted[:, idx], sig, test)
    gap["emulator fit"] = flux_figures(model_flux, test, clean, evaluable)
    lap("emulator_fit")

    dirs = directions(train_lat, train.labels, names=LABELS)
    figures["directions_r2_cv"] = {n: d.r2_cv for n, d in dirs.items()}
    figures["labels"] = methods
    figures["posteriors"] = {k: {m: v for m, v in g.items() if m != "latents"} for k, g in gap.items()}
    figures["mlp_calibration"] = {n: {"a_latent": float(a), "b_map": float(b)} for n, (a, b) in zip(LABELS, mlp.scale_)}
    rows = [label_row(m, f) for m, f in methods.items()]
    rows += [{"method": f"posterior: {k}", "chi2/dof": g["chi2_dof"], "RMSE to truth": g["rmse_truth"],
              "seconds": g.get("seconds")} for k, g in figures["posteriors"].items()]
    snr_note = "; ".join(f"{n} " + ", ".join(f"{k}: {100 * v:.0f} %" for k, v in
                                              methods["VAE latents + mlp"][n]["coverage_1sigma_snr"].items())
                         for n in LABELS)
    truth = np.stack([test.labels[n] for n in LABELS], 1)
    zscores = {n: (mlp_pred["mean"][:, j] - truth[:, j]) / mlp_pred["sigma"][:, j] for j, n in enumerate(LABELS)}
    return {"figures": figures, "rows": rows, "snr_note": snr_note, "zscores": zscores,
            "latents": (train_lat.mean, train.labels["TEFF"]), "device": next(model.parameters()).device.type}


def train_or_load(args, train):
    """(model, history, trained here): the VAE in args.model if it holds one, else one trained for args.minutes
    on 90 % of the training spectra (saved to args.model if given)."""
    import json
    from pathlib import Path

    from specae.model_dir import load_model
    from specae.models.config import ModelConfig
    from specae.train import TrainConfig, fit

    if args.model and (Path(args.model) / "weights.pt").is_file():
        hist = Path(args.model) / "history.json"
        return load_model(args.model), json.loads(hist.read_text()) if hist.is_file() else {}, False
    fit_set, val = train.split((0.9, 0.1), seed=args.seed)
    model, history = fit(fit_set, val, ModelConfig(npix=train.npix, latent_dim=args.latent_dim),
                         TrainConfig(max_minutes=args.minutes, epochs=500, seed=args.seed, device=args.device,
                                     progress=False), out_dir=args.model)
    return model, history, True


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.latent", description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=3000, help="labelled training spectra (VAE and label maps)")
    p.add_argument("--n-calib", type=int, default=600, help="labelled spectra, unseen by the VAE, to calibrate sigma")
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--latent-dim", type=int, default=6)
    p.add_argument("--pixels", type=int, default=None, help="N central pixels of the grid (default: all 7214)")
    p.add_argument("--minutes", type=float, default=8.0, help="VAE training budget")
    p.add_argument("--model", default=None, help="VAE directory: used if it holds a model, else written there")
    add_run_options(p, argv, QUICK, "latent-payne[-quick]")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the paths written ({filename: Path})."""
    from specae.plots import plot_calibration, plot_latent_space

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    started = time.perf_counter()
    out = run(args)
    out["figures"]["wall_minutes"] = (time.perf_counter() - started) / 60
    z, teff = out["latents"]
    vae = out["figures"]["vae"]
    notes = [
        f"VAE: {args.latent_dim} latents, {vae['epochs']} epochs in {vae['minutes']:.1f} min"
        + ("" if vae["trained_in_this_run"] else f" (trained by an earlier run of this command, kept in {args.model})")
        + f", best validation chi2/dof {vae['best_val_chi2_dof']:.3f}.",
        "R²: 1 - SS_res/SS_tot of the predicted label on the held-out test spectra; MAE: median |prediction - truth|.",
        "±1σ: fraction of true labels inside prediction ± sigma (calibrated: 68.3 %). The maps' sigma: latent "
        "posterior draws through the map plus the map's own variance, calibrated on labelled spectra the VAE "
        "never saw (--n-calib); ridge on PCA has no sigma; the emulator's is its Gauss-Newton label covariance.",
        f"±1σ of VAE latents + mlp by S/N bin: {out['snr_note']}.",
        "Posterior rows: chi2/dof of the decoded posterior mean against the noisy test spectra (valid pixels, "
        "their ivar) and its RMSE to the noise-free truth (pixels outside APOGEE's bad-pixel mask); encoder = "
        "q(z|x), laplace = Gauss-Newton from it (the default), decoder = optimised to convergence with the "
        "decoder alone; 'emulator fit' = the emulator at its fitted labels (the limit). The gap encoder -> "
        "laplace/decoder is the amortisation gap.",
        "astroNN (a CNN on real APOGEE spectra) reaches about 74 K / 0.15 dex / 0.07 dex median absolute error "
        "at S/N 20: a survey pipeline's level, for orientation only (other data).",
    ]
    plots = {"calibration": lambda fig: plot_calibration(None, out["zscores"], fig=fig),
             "latent": lambda fig: plot_latent_space(None, z[:, :3], teff, ["$z_0$", "$z_1$", "$z_2$"], "TEFF [K]",
                                                     fig=fig)}
    name = args.name or ("latent-payne-quick" if args.quick else "latent-payne")
    return write_results(name, out["figures"], out["rows"], " ".join(["python -m benchmarks.latent", *argv]),
                         plots, args.results_dir, out["device"], notes)


if __name__ == "__main__":
    for path in main().values():
        print(path)
