"""`specae directions / regress / predict / score / plot`: the latent-space commands.

directions and regress read their labelled files block by block and keep only the latents; predict and
score stream (each input file is read and written block by block; several files and an output
directory make a batch job that skips outputs already complete). Every output is written atomically.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from specae.cli import (at_least_two, config_option, config_values, directory, fraction, non_negative, non_negative_int,
                        positive, positive_int, seed)
from specae.cli.model import DATA_HELP, OUTPUT_HELP, add_runtime_options, load_for_inference, run_files
from specae.errors import SpecaeError

POSTERIOR_HELP = "latent posterior: laplace (default), decoder (optimised with the decoder alone) or encoder"


def _names(text: str | None) -> list[str] | None:
    """--labels a,b -> ["a", "b"] (None: all numeric labels)."""
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise SpecaeError(f"--labels {text!r} names no label")
    return names


def _floats(text: str) -> np.ndarray:
    try:
        return np.array([float(t) for t in text.split(",")])
    except ValueError:
        raise SpecaeError(f"{text!r} is not a comma-separated list of numbers") from None


def _directions(args) -> None:
    from specae.latent import directions, encode_files, save_directions
    from specae.regress import model_fingerprint

    model = load_for_inference(args)
    lat, labels, _ = encode_files(model, args.data, args.posterior, args.batch_size, _names(args.labels))
    if not labels:
        raise SpecaeError(f"{args.data[0]}: no numeric labels to find directions for")
    dirs = directions(lat, labels, orthogonal=args.orthogonal, alpha=args.alpha, folds=args.folds, seed=args.seed)
    save_directions(args.output, dirs, latent_dim=model.cfg.latent_dim, posterior=lat.kind,
                    orthogonal=args.orthogonal, n_spectra=len(lat.mean), model_fingerprint=model_fingerprint(model))
    print(f"directions of {len(dirs)} labels from {len(lat.mean)} spectra into {args.output}: "
          + ", ".join(f"{k} R^2 {d.r2_cv:.3f}" for k, d in dirs.items()))


def _regress(args) -> None:
    from specae.latent import encode_files
    from specae.regress import LabelRegressor, RegressorConfig

    model = load_for_inference(args)
    names = _names(args.labels)
    lat, labels, _ = encode_files(model, args.data, args.posterior, args.batch_size, names)
    if not labels:
        raise SpecaeError(f"{args.data[0]}: no numeric labels to regress")
    calibration = None
    if args.calibration:
        cal_lat, cal_labels, _ = encode_files(model, args.calibration, args.posterior, args.batch_size, list(labels))
        calibration = (cal_lat, np.stack(list(cal_labels.values()), 1))
    cfg = RegressorConfig(**config_values(args, RegressorConfig, "device", "posterior"), max_minutes=args.max_minutes,
                          progress=not args.quiet)
    reg = LabelRegressor(cfg).fit_latents(lat, np.stack(list(labels.values()), 1), list(labels), calibration, model)
    reg.save(args.output)
    m = reg.metrics_
    print(f"{cfg.kind} map of {len(labels)} labels fitted on {m['n_train']} spectra, calibrated on "
          f"{m['n_calibration']}: " + ", ".join(f"{k} R^2 {m[k]['r2']:.3f}, {100 * m[k]['coverage_1sigma']:.0f} % "
                                              f"within 1 sigma" for k in labels) + f"; saved in {args.output}")


def _predict(args) -> None:
    from specae.denoise import encode
    from specae.regress import LabelRegressor

    model = load_for_inference(args)
    reg = LabelRegressor.load(args.regressor)
    reg.check_model(model, str(args.regressor))

    def fn(part):
        pred = reg.predict_latents(encode(model, part, reg.cfg.posterior, args.batch_size))
        return {**{f"predicted/{n}": pred.mean[:, j] for j, n in enumerate(pred.names)},
                **{f"predicted_sigma/{n}": pred.sigma[:, j] for j, n in enumerate(pred.names)}}

    run_files(args, model, fn, f"specae predict ({reg.cfg.kind} map, {reg.cfg.posterior} posterior)",
              verb="predicted labels of")


def _score(args) -> None:
    from specae.latent import LatentDensity, encode_files, outlier_scores

    model = load_for_inference(args)
    density, where = LatentDensity(), "the prior N(0, I)"
    if args.reference:
        ref, _, _ = encode_files(model, args.reference, args.posterior, args.batch_size, names=[],
                                 max_rows=args.reference_rows)
        density, where = LatentDensity(args.reference_rows).fit(ref), f"{len(ref.mean)} reference spectra"

    def fn(part):
        return outlier_scores(model, part, density, args.posterior, args.batch_size)

    run_files(args, model, fn, f"specae score ({args.posterior} posterior)", verb="scored",
              attrs={"latent_density": where})


# -- plot ------------------------------------------------------------------------------------------------


def _plot_latent(args) -> None:
    from specae.latent import encode_files
    from specae.plots import plot_latent_space

    model = load_for_inference(args)
    lat, labels, _ = encode_files(model, args.data, args.posterior, args.batch_size, [args.color], args.max_rows)
    if args.directions:
        dirs = _directions_of(model, args.directions)
        chosen = _names(args.axes) or sorted(dirs, key=lambda k: -dirs[k].r2_cv)[:2]
        missing = [k for k in chosen if k not in dirs]
        if missing or len(chosen) < 2:
            raise SpecaeError(f"{args.directions}: needs two directions for the axes, has {sorted(dirs)}")
        points = np.stack([dirs[k].predict(lat) for k in chosen], 1)
        names = [f"{k} (fitted along its direction)" for k in chosen]
    else:
        points, names = lat.mean, [f"$z_{i}$" for i in range(lat.mean.shape[1])]
    plot_latent_space(args.output, points, labels[args.color], names, args.color)
    print(f"latent space of {len(points)} spectra coloured by {args.color} in {args.output}")


def _directions_of(model, path) -> dict:
    """The directions in `path`, refused unless fitted on `model`'s latents (as `predict` refuses a regressor)."""
    from specae.latent import load_directions
    from specae.regress import check_fitted_on

    dirs, info = load_directions(path)
    check_fitted_on(model, info.get("latent_dim"), info.get("model_fingerprint"), str(path),
                    "refit them with this model (specae directions)")
    return dirs


def _plot_traversal(args) -> None:
    from specae.denoise import encode
    from specae.latent import traverse
    from specae.plots import plot_traversal

    model = load_for_inference(args)
    dirs = _directions_of(model, args.directions)
    if args.label not in dirs:
        raise SpecaeError(f"{args.directions}: no direction for {args.label!r} (has {', '.join(sorted(dirs))})")
    d = dirs[args.label]
    z0, frame = np.zeros(model.cfg.latent_dim), ""
    if args.data:
        one = _read_rows(args.data, [args.row], model.wave)
        z0, frame = encode(model, one, args.posterior).mean[0], one.meta["frame"]
    amounts = _floats(args.amounts) if args.amounts else np.linspace(-2, 2, 7) * d.spread
    _, flux = traverse(model, z0, d.step, amounts)
    plot_traversal(args.output, model.wave, flux, d.predict(z0[None])[0] + amounts, args.label, frame=frame)
    print(f"{len(amounts)} decoded spectra along the {args.label} direction in {args.output}")


def _read_rows(path, rows: list[int], wave: np.ndarray):
    """Rows `rows` of a spectrum file as one Spectra, without reading the rest of an HDF5 file (a FITS file is
    read onto the model's grid `wave`, specae.inputs)."""
    from specae.data.hdf5 import H5Spectra
    from specae.data.spectra import Spectra
    from specae.inputs import SpectrumInput, is_fits, read_fits_set

    src = SpectrumInput(str(path), spectra=read_fits_set([Path(path)], wave)) if is_fits(path) \
        else SpectrumInput(str(path), path=Path(path))
    n = len(src)
    bad = [r for r in rows if not 0 <= r < n]
    if bad:
        raise SpecaeError(f"{path}: has {n} spectra, no row {bad[0]}")
    if src.spectra is not None:
        return src.spectra.select(rows)
    with H5Spectra(path) as h5:
        return Spectra.concatenate([h5.read(slice(r, r + 1)) for r in rows])


def _plot_denoised(args) -> None:
    from specae.data.tensors import on_grid
    from specae.denoise import denoise
    from specae.plots import plot_denoised

    model = load_for_inference(args)
    rows = [int(r) for r in _floats(args.rows)]
    spectra = on_grid(_read_rows(args.data, rows, model.wave), model.wave)
    truth = None
    if args.truth:
        truth = _read_rows(args.truth, rows, model.wave).flux
        if truth.shape != spectra.flux.shape:
            raise SpecaeError(f"{args.truth}: its spectra are not on the model's grid ({truth.shape[1]} pixels, "
                              f"the model has {spectra.npix})")
    d = denoise(model, spectra, posterior=args.posterior)
    plot_denoised(args.output, d.wave, spectra.to_original_units(spectra.flux), d.flux, d.sigma, truth, spectra.mask,
                  list(spectra.ids), flux_unit=spectra.meta["flux_unit"], frame=spectra.meta["frame"])
    print(f"{len(rows)} denoised spectra in {args.output}")


def _plot_calibration(args) -> None:
    import h5py

    from specae.data.hdf5 import H5Spectra
    from specae.plots import plot_calibration

    try:
        with h5py.File(args.prediction, "r") as f:
            ids = f["ids"][()].astype(str) if "ids" in f else None
            if "predicted_sigma" in f:
                pred = {k: (f["predicted"][k][()], f["predicted_sigma"][k][()]) for k in f["predicted_sigma"]}
            elif "labels_sigma" in f:   # written before format 2, when predictions sat where given labels do
                warnings.warn(f"{args.prediction}: written by an older specae, its labels/ and labels_sigma/ are read "
                              "as the predictions (now predicted/ and predicted_sigma/)", stacklevel=2)
                pred = {k: (f["labels"][k][()], f["labels_sigma"][k][()]) for k in f["labels_sigma"]}
            elif "flux_sigma" in f:
                pred = {"flux": (f["flux"][()], f["flux_sigma"][()])}
                inpainted = f["input_mask"][()] if "input_mask" in f else None
            else:
                raise SpecaeError("holds neither predicted_sigma/ (specae predict) nor flux_sigma (specae denoise)")
    except (OSError, KeyError, ValueError) as e:
        raise SpecaeError(f"{args.prediction}: not a readable prediction file ({str(e).splitlines()[0]})") from None
    except SpecaeError as e:
        raise SpecaeError(f"{args.prediction}: {e}") from None
    with H5Spectra(args.truth) as h5:
        truth = h5.read()
    if ids is not None and (len(ids) != len(truth) or np.any(ids != truth.ids)):
        raise SpecaeError(f"{args.truth}: its spectra are not those of {args.prediction} (ids differ)")
    groups = {}
    if "flux" in pred:
        mean, sigma = pred["flux"]
        if mean.shape != truth.flux.shape:
            raise SpecaeError(f"{args.truth}: flux shape {truth.flux.shape} differs from {mean.shape}")
        z = (mean - truth.flux) / sigma
        groups = {"all pixels": z} if inpainted is None else {"measured pixels": z[~inpainted],
                                                              "masked pixels (inpainted)": z[inpainted]}
    else:
        for k, (mean, sigma) in pred.items():
            if k not in truth.labels:
                raise SpecaeError(f"{args.truth}: no label {k!r} to compare with")
            groups[k] = (mean - truth.labels[k].astype(float)) / sigma
    plot_calibration(args.output, groups)
    print(f"calibration of {', '.join(groups)} in {args.output}")


def _plot_training(args) -> None:
    from specae.engine.loop import load_history
    from specae.plots import plot_training

    path = Path(args.directory) / "history.json"
    if not path.is_file():
        raise SpecaeError(f"{args.directory}: no history.json (a model or an MLP regressor directory has one)")
    history = load_history(path)
    if not history.get("epoch"):
        raise SpecaeError(f"{path}: no epochs recorded")
    plot_training(args.output, history)
    print(f"training curves of {len(history['epoch'])} epochs in {args.output}")


# -- registration ----------------------------------------------------------------------------------------


def _model_options(p, data_help: str, posterior: bool = True) -> None:
    p.add_argument("model", metavar="MODEL")
    p.add_argument("data", nargs="+", metavar="DATA", help=data_help + " (HDF5 or survey FITS files)")
    if posterior:
        p.add_argument("--posterior", choices=("laplace", "decoder", "encoder"), default="laplace", help=POSTERIOR_HELP)
    p.add_argument("--batch-size", type=positive_int, default=None, metavar="B", help="spectra per batch")
    add_runtime_options(p)


def register(sub) -> None:
    d = sub.add_parser("directions", help="per label, the latent direction, the step per unit and the CV R^2")
    _model_options(d, "labelled spectra (files or glob patterns)")
    d.add_argument("-o", "--output", required=True, metavar="DIRS.json")
    d.add_argument("--labels", metavar="A,B", help="labels to use (default: every numeric label)")
    d.add_argument("--orthogonal", action="store_true",
                   help="each step also holds the other labels' fits fixed")
    d.add_argument("--alpha", type=non_negative, default=1.0, metavar="A",
                   help="ridge penalty (latents have unit scale)")
    d.add_argument("--folds", type=at_least_two, default=5, metavar="F", help="cross-validation folds")
    d.add_argument("--seed", type=seed, default=0, metavar="S")
    d.set_defaults(func=_directions)

    r = sub.add_parser("regress", help="fit a map latent -> labels with calibrated sigmas")
    _model_options(r, "labelled spectra (NaN = missing, skipped for that label)")
    r.add_argument("-o", "--output", type=directory, required=True, metavar="REG", help="regressor directory (created)")
    r.add_argument("--labels", metavar="A,B", help="labels to fit (default: every numeric label)")
    reg = "specae.regress.RegressorConfig"
    config_option(r, reg, "kind", choices=("mlp", "ridge"), help="mlp: mean and variance per label; ridge: linear")
    r.add_argument("--calibration", nargs="+", metavar="CAL.h5",
                   help="labelled spectra the VAE did not train on, to calibrate sigma (default: --holdout of DATA)")
    config_option(r, reg, "holdout", type=fraction, metavar="F",
                  help="fraction of DATA held out to calibrate sigma when no --calibration is given")
    config_option(r, reg, "epochs", type=positive_int, metavar="N")
    r.add_argument("--max-minutes", type=positive, default=None, metavar="M")
    config_option(r, reg, "seed", type=seed, metavar="S")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_regress)

    p = sub.add_parser("predict", help="labels and their sigmas for spectra (predicted/, predicted_sigma/; the "
                                       "input's own labels are copied to labels/)")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("regressor", metavar="REG")
    p.add_argument("data", nargs="+", metavar="DATA", help="spectra (no labels needed)" + DATA_HELP)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help=OUTPUT_HELP)
    p.add_argument("--batch-size", type=positive_int, default=None, metavar="B", help="spectra per batch")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_runtime_options(p)
    p.set_defaults(func=_predict, batch=True)

    s = sub.add_parser("score", help="outlier scores: log evidence, chi2/dof, latent density")
    _model_options(s, "spectra to score (files or glob patterns)")
    s.add_argument("-o", "--output", required=True, metavar="OUT", help=OUTPUT_HELP)
    s.add_argument("--reference", nargs="+", metavar="REF.h5",
                   help="spectra whose latents define the density (e.g. the training set; default: the prior)")
    s.add_argument("--reference-rows", type=positive_int, default=5000, metavar="N",
                   help="reference rows read (the first N)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_score, batch=True)

    plot = sub.add_parser("plot", help="figures: latent, traversal, denoised, calibration, training")
    kinds = plot.add_subparsers(dest="kind", required=True, metavar="KIND")
    k = kinds.add_parser("latent", help="the encoded set in latent pairs or two label directions, coloured by a label")
    _model_options(k, "spectra to encode")
    k.add_argument("-o", "--output", required=True, metavar="FIG.png")
    k.add_argument("--color", required=True, metavar="LABEL")
    k.add_argument("--directions", metavar="DIRS.json", help="axes: fitted labels along these directions")
    k.add_argument("--axes", metavar="A,B", help="the two directions (default: the two best R^2)")
    k.add_argument("--max-rows", type=positive_int, default=5000, metavar="N")
    k.set_defaults(func=_plot_latent)

    t = kinds.add_parser("traversal", help="decoded spectra along a label direction, the label value per row")
    t.add_argument("model", metavar="MODEL")
    t.add_argument("directions", metavar="DIRS.json")
    t.add_argument("--label", required=True, metavar="LABEL")
    t.add_argument("-o", "--output", required=True, metavar="FIG.png")
    t.add_argument("--amounts", metavar="X,Y,...", help="steps in label units (default: -2..2 label spreads)")
    t.add_argument("--data", metavar="DATA", help="start from a spectrum of this file, HDF5 or FITS (default: z = 0)")
    t.add_argument("--row", type=non_negative_int, default=0, metavar="I", help="its row (default 0)")
    t.add_argument("--posterior", choices=("laplace", "decoder", "encoder"), default="laplace", help=POSTERIOR_HELP)
    add_runtime_options(t)
    t.set_defaults(func=_plot_traversal)

    n = kinds.add_parser("denoised", help="denoised spectra with their +-1 sigma band over the noisy input")
    n.add_argument("model", metavar="MODEL")
    n.add_argument("data", metavar="DATA", help="spectra, HDF5 or FITS")
    n.add_argument("-o", "--output", required=True, metavar="FIG.png")
    n.add_argument("--rows", default="0,1,2", metavar="I,J,...", help="rows to show (default 0,1,2)")
    n.add_argument("--truth", metavar="TRUTH.h5", help="noise-free spectra to overplot")
    n.add_argument("--posterior", choices=("laplace", "decoder"), default="laplace", help=POSTERIOR_HELP)
    add_runtime_options(n)
    n.set_defaults(func=_plot_denoised)

    c = kinds.add_parser("calibration", help="histogram of (prediction - truth) / sigma against N(0, 1)")
    c.add_argument("prediction", metavar="PRED.h5", help="output of specae predict (labels) or denoise (spectra)")
    c.add_argument("truth", metavar="TRUTH.h5", help="the true labels (labels/) or noise-free spectra, same rows")
    c.add_argument("-o", "--output", required=True, metavar="FIG.png")
    c.set_defaults(func=_plot_calibration)

    g = kinds.add_parser("training", help="training curves of a model or an MLP regressor")
    g.add_argument("directory", metavar="DIR")
    g.add_argument("-o", "--output", required=True, metavar="FIG.png")
    g.set_defaults(func=_plot_training)
