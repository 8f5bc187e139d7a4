"""`specae train / denoise / heldout / encode / demo`: the VAE/AE commands.

denoise, heldout and encode stream: each input file is read and written block by block; given several files
(or a glob) and an output directory they run as a batch job that skips outputs already complete. Survey FITS
files are one more input, read together onto the model's grid (specae.inputs); an output named .fits or .ecsv
is a table (specae.results).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from specae.cli import (config_option, config_values, decay, directory, non_negative, non_negative_int, positive,
                        positive_int, seed)

DATA_HELP = ("; specae HDF5 files (one output each), or survey FITS files (SDSS, DESI, APOGEE...), read together "
             "onto the model's grid as one set with one output")
OUTPUT_HELP = ("output file: .fits or .ecsv a table astropy opens (one row per spectrum, built in memory), else "
               "specae HDF5; or a directory for several HDF5 inputs (outputs already there are skipped)")


def add_runtime_options(p) -> None:
    """--device and --precision, the same on every command that runs a network."""
    p.add_argument("--device", default="auto", metavar="DEV", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: autocast on the networks (GPUs); fp32 (default)")


def load_for_inference(args):
    """The model of `args.model` on the requested device."""
    from specae.engine.runtime import resolve_device
    from specae.model_dir import load_model

    return load_model(args.model).to(resolve_device(args.device))


def _train(args) -> None:
    import torch.distributed as dist

    from specae.data.spectra import Spectra
    from specae.model_dir import refuse_existing
    from specae.models.config import ModelConfig
    from specae.pipeline import fit_calibrated
    from specae.train import TrainConfig, resumed_config, training_data

    refuse_existing(args.output, args.resume, args.overwrite)   # before any work
    # settings not given are ModelConfig's and TrainConfig's defaults, or when resuming the run's own; a time budget
    # is this invocation's (none given: none, on --resume too)
    given_model = config_values(args, ModelConfig, "redshift")
    given = config_values(args, TrainConfig, "device", "precision", "distributed") | {"max_minutes": args.max_minutes,
                                                                                        "progress": not args.quiet}
    if given.get("ema") == 0:
        given["ema"] = None   # --ema 0: the weights themselves
    train_cfg = resumed_config(args.output, given_model, given) if args.resume else TrainConfig(**given)
    train, val, files = training_data(args.data, args.val, args.stream)
    model, history = fit_calibrated(train, val, ModelConfig(**given_model), train_cfg, out_dir=args.output,
                                    resume=args.resume, files=files, keep_state=args.keep_state,
                                    overwrite=args.overwrite)
    if dist.is_initialized() and dist.get_rank() != 0:
        return   # rank 0 calibrated and prints
    cal = model.calibration
    print(f"trained {model.cfg.kind} on {history['n_train']} spectra ({history['n_val']} for validation"
          + ("" if isinstance(train, Spectra) else f", streamed from {len(files)} file(s)") + f"): best val chi2/dof "
          f"{history['best_val_chi2_dof']:.4f} at epoch {history['best_epoch'] + 1}, stopped by {history['stopped']}; "
          f"error model calibrated on {cal.n_pixels} validation pixels; model in {args.output}"
          + (" (training state kept for --resume)" if args.keep_state else ""))


def _calibrate(args) -> None:
    from dataclasses import asdict

    from specae.calibration import FITTED
    from specae.engine.loop import load_history
    from specae.inputs import read_all
    from specae.model_dir import refuse_existing, save_model, staged
    from specae.pipeline import calibrate_and_check

    refuse_existing(args.output, overwrite=args.overwrite)   # before the work, not after it
    model = load_for_inference(args)
    run = Path(args.model) / "history.json"
    history = load_history(run) if run.is_file() else {}   # the training run's, for the card
    spectra = read_all(args.data, model.wave)
    calibrate_and_check(model, spectra, history, args.posterior, seed=args.seed,
                        seconds=None if args.max_minutes is None else 60 * args.max_minutes)
    cal = model.calibration
    with staged(args.output, args.overwrite) as work:
        save_model(model, work, history)
    fitted = asdict(cal)
    print(f"calibrated on {cal.n_pixels} held-out pixels of {cal.n_spectra} spectra (mean -log L {cal.heldout_nll:.4f}); "
          + ", ".join(f"{name} {fitted[name]:.4g}" for name, _, _ in FITTED) + f"; model in {args.output}")


def _info(args) -> None:
    from specae.checkpoints import require_files
    from specae.engine.loop import load_history
    from specae.models.card import CARD, model_card
    from specae.model_dir import load_model

    d = Path(args.model)
    require_files(d, ("config.json", "weights.pt"), "model")
    if (d / CARD).is_file():
        print((d / CARD).read_text(), end="")
    else:   # a model saved before cards were written, or not calibrated yet
        history = load_history(d / "history.json") if (d / "history.json").is_file() else {}
        print(model_card(load_model(d), history), end="")


def output_attrs(args, model, source: str) -> dict:
    """What every output records of its making: the command, the model directory, its calibration's version
    and specae's (the input's flux unit and frame are added by specae.results)."""
    from specae import __version__

    cal = model.calibration
    return {"source": source, "model": str(args.model), "specae_version": __version__,
            "calibration_version": -1 if cal is None else int(cal.version)}


def run_files(args, model, fn, source: str, wave=None, verb="processed", detail="", attrs=None) -> None:
    """Apply `fn` to every input (HDF5 files streamed, FITS files read onto the model's grid: specae.inputs),
    write each result (specae.results), print one summary line."""
    from specae.errors import one_count_warning
    from specae.results import map_files

    attrs = output_attrs(args, model, source) | (attrs or {})
    with one_count_warning():   # one warning per kind for all blocks and files
        s = map_files(args.data, args.output, fn, grid=model.wave, progress=not getattr(args, "quiet", False),
                      wave=wave, attrs=attrs)
    if len(s["outputs"]) == 1:
        where = str(s["outputs"][0])
    else:
        where = f"{args.output} ({s['files']} files written, {s['skipped']} already complete)"
    print(f"{verb} {s['spectra']} spectra{detail} into {where} ({s['rate']:.0f} spectra/s)")


def _denoise(args) -> None:
    from specae.data.tensors import on_grid
    from specae.denoise import denoise, output_arrays

    model = load_for_inference(args)

    def fn(part):
        part = on_grid(part, model.wave)
        out = output_arrays(denoise(model, part, batch_size=args.batch_size, posterior=args.posterior,
                                    covariance=args.pixel_covariance, precision=args.precision))
        # the measured ivar beside the denoised flux, in the units it is written in (the input's, times `scale`);
        # beyond float32 it carries no usable weight: 0, as for a masked pixel
        with np.errstate(over="ignore"):
            ivar = part.ivar.astype(np.float64) * (out["scale"] / part.scale)[:, None] ** 2
        return out | {"input_ivar": np.where(ivar <= np.finfo(np.float32).max, ivar, 0).astype(np.float32)}

    run_files(args, model, fn, f"specae denoise ({args.posterior} posterior)", wave=model.wave, verb="denoised")


def _heldout(args) -> None:
    from specae.denoise import heldout, pool

    model = load_for_inference(args)
    parts = []

    def fn(part):
        h = heldout(model, part, passes=args.passes, seed=args.seed, batch_size=args.batch_size,
                    posterior=args.posterior, precision=args.precision)
        parts.append(h.pooled())
        return {"heldout_pull": h.z.astype(np.float32), "heldout_chi2_dof": h.chi2_dof(),
                "heldout_within_1sigma": h.within(1), "heldout_within_2sigma": h.within(2), "n_heldout": h.n}

    run_files(args, model, fn, f"specae heldout ({args.posterior} posterior, {args.passes} passes)", wave=model.wave,
              verb="checked")
    p = pool(parts)
    print(f"{p['pixels']} held-out pixels: {100 * p['within_1sigma']:.1f} % inside +-1 sigma (68.3 % if calibrated), "
          f"{100 * p['within_2sigma']:.1f} % inside +-2 sigma (95.4 %), chi2/dof {p['chi2_dof']:.3f}")


def _encode(args) -> None:
    from specae.denoise import encode

    model = load_for_inference(args)

    def fn(part):
        lat = encode(model, part, posterior=args.posterior, batch_size=args.batch_size)
        out = {"latent_mean": lat.mean.astype(np.float32), "latent_std": lat.std.astype(np.float32),
               "latent_cov": lat.cov.astype(np.float32)}
        return out if lat.log_amplitude is None else out | {"log_amplitude": lat.log_amplitude.astype(np.float32)}

    run_files(args, model, fn, f"specae encode ({args.posterior} posterior)", verb="encoded",
              detail=f" to {model.cfg.latent_dim} latents")


def _demo(args) -> None:
    from specae.demo import run_demo

    epochs = {} if args.epochs is None else {"epochs": args.epochs}   # default: run_demo's
    print(run_demo(args.output, seed=args.seed, max_minutes=args.max_minutes, **epochs))


def _inputs(p, help_text: str, kinds=("laplace", "decoder")) -> None:
    p.add_argument("model", metavar="MODEL")
    p.add_argument("data", nargs="+", metavar="DATA", help=help_text + DATA_HELP)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help=OUTPUT_HELP)
    p.add_argument("--batch-size", type=positive_int, default=None, metavar="B",
                   help="spectra per batch (default: what fits in memory)")
    p.add_argument("--posterior", choices=kinds, default="laplace",
                   help="laplace: refine the latents on the exact posterior (default); decoder: optimise them to "
                        "convergence with the decoder alone (spectra unlike the training set)"
                        + ("; encoder: q(z|x)" if "encoder" in kinds else ""))
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_runtime_options(p)
    p.set_defaults(batch=True)   # one output per input file: see specae.cli.refuse_overwrites


def register(sub) -> None:
    t = sub.add_parser("train", help="train a VAE or AE on specae HDF5 files (streamed when large)")
    t.add_argument("data", nargs="+", metavar="DATA.h5", help="training files (or glob patterns)")
    t.add_argument("-o", "--output", type=directory, required=True, metavar="MODEL",
                   help="model directory (created; one that holds a model is refused without --resume or --overwrite)")
    t.add_argument("--val", nargs="+", metavar="VAL.h5", default=None,
                   help="validation files (default: a random tenth of the training spectra)")
    # settings left unset (None) take ModelConfig's/TrainConfig's defaults, or on --resume the run's own
    model_cfg, train_cfg = "specae.models.config.ModelConfig", "specae.train.TrainConfig"
    config_option(t, model_cfg, "kind", "--model", choices=("vae", "ae"))
    config_option(t, model_cfg, "latent_dim", type=positive_int, metavar="K")
    config_option(t, model_cfg, "decoder", choices=("mlp", "conv"))
    config_option(t, train_cfg, "epochs", type=positive_int, metavar="N")
    t.add_argument("--max-minutes", type=positive, default=None, metavar="M", help="wall-clock budget")
    config_option(t, train_cfg, "batch_size", type=positive_int, metavar="B", help="global batch (all ranks)")
    config_option(t, train_cfg, "lr", type=positive, metavar="LR", help="learning rate")
    config_option(t, train_cfg, "ema", type=decay, metavar="DECAY",
                  help="decay of the moving average of the weights that is validated and kept (0: the weights "
                       "themselves)")
    config_option(t, train_cfg, "beta_nll", type=non_negative, metavar="BETA",
                  help="weight each pixel's likelihood by (1 + sigma_model^2 ivar)^BETA, so the model cannot explain "
                       "a hard feature away by widening its scatter (0: the plain likelihood)")
    config_option(t, train_cfg, "seed", type=seed, metavar="S")
    again = t.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run saved in MODEL (trained with --keep-state, or interrupted), on the "
                            "same data and with the same settings")
    again.add_argument("--overwrite", action="store_true",
                       help="replace the model already in MODEL, once the new one is written whole (without it, "
                            "an existing model directory is refused)")
    t.add_argument("--keep-state", action="store_true",
                   help="keep the training state (train_state.pt, about 5x the model) so that --resume can continue "
                        "the run later (default: removed when training ends)")
    t.add_argument("--redshift", metavar="LABEL", default=None,
                   help="decode in the rest frame, shifting by this label's redshift")
    t.add_argument("--stream", action="store_true",
                   help="stream the training files by row blocks even when they would fit in memory")
    config_option(t, train_cfg, "num_workers", "--workers", type=non_negative_int, metavar="W",
                  help="DataLoader workers when streaming")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel training under torchrun (NCCL on GPUs, gloo on CPUs)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    add_runtime_options(t)
    t.set_defaults(func=_train)

    d = sub.add_parser("denoise", help="denoise spectra, with per-pixel uncertainties")
    _inputs(d, "spectra to denoise (files or glob patterns)")
    d.add_argument("--pixel-covariance", action="store_true",
                   help="also write the pixel covariance in compact form: flux_cov_factor (N, npix, K+1), the latent "
                        "part; flux_cov_diag, the white part; flux_cov_band, flux_cov_pivots, flux_cov_off, the part "
                        "correlated along wavelength (specae.denoise.PixelCovariance.sum_variance reads them)")
    d.set_defaults(func=_denoise)

    c = sub.add_parser("calibrate", help="refit a trained model's error model on other spectra (another survey's), "
                                         "without truth and without retraining")
    c.add_argument("model", metavar="MODEL")
    c.add_argument("data", nargs="+", metavar="DATA", help="spectra the model did not train on (files or globs)")
    c.add_argument("-o", "--output", type=directory, required=True, metavar="NEW_MODEL",
                   help="model directory to write")
    c.add_argument("--overwrite", action="store_true",
                   help="replace the model already in NEW_MODEL, once the recalibrated one is written whole "
                        "(without it, an existing model directory is refused; MODEL itself, an input, always is)")
    c.add_argument("--posterior", choices=("laplace", "decoder"), default="laplace",
                   help="the latent posterior the model will denoise with (default laplace)")
    c.add_argument("--seed", type=seed, default=0, metavar="S", help="which spectra, where there are more than needed")
    c.add_argument("--max-minutes", type=positive, default=None, metavar="M",
                   help="fit within about M minutes: as many pixels as the time allows, timed on this machine, and the "
                        "fit stopped at its best point so far when the time is up (the card says how many pixels; "
                        "default: no cap, up to 1e6 pixels)")
    add_runtime_options(c)
    c.set_defaults(func=_calibrate)

    i = sub.add_parser("info", help="print a model's card: what it was trained on and how well it does")
    i.add_argument("model", metavar="MODEL")
    i.set_defaults(func=_info)

    h = sub.add_parser("heldout", help="check sigma without truth: hide each valid pixel once, predict it from "
                                       "the rest, score it against its measurement")
    _inputs(h, "spectra to check (files or glob patterns)")
    h.add_argument("--passes", type=positive_int, default=10, metavar="P",
                   help="a random 1/P of the valid pixels is hidden at a time (default 10)")
    h.add_argument("--seed", type=seed, default=0, metavar="S")
    h.set_defaults(func=_heldout)

    e = sub.add_parser("encode", help="write latent posteriors: latent_mean, latent_std, latent_cov (and "
                                      "log_amplitude)")
    _inputs(e, "spectra to encode (files or glob patterns)", ("laplace", "decoder", "encoder"))
    e.set_defaults(func=_encode)

    m = sub.add_parser("demo", help="generate the bundled synthetic set, train a small VAE, denoise, plot")
    m.add_argument("-o", "--output", type=directory, default="specae-demo", metavar="DIR")
    m.add_argument("--epochs", type=positive_int, default=None, metavar="E",
                   help="epochs to train (default: about a minute on 2 idle CPU cores); a count, so a seed gives the "
                        "same figures on any machine")
    m.add_argument("--max-minutes", type=positive, default=None, metavar="M",
                   help="cap training and calibration at M minutes (default: no cap; with one, the figures depend on the "
                        "machine's speed)")
    m.add_argument("--seed", type=seed, default=0, metavar="S")
    m.set_defaults(func=_demo)
