"""Command-line interface: `specae COMMAND ...`, mirroring the Python API.

User errors (SpecaeError) print one line and exit with code 2; outputs are written atomically.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from specae.errors import SpecaeError


def _convert(args) -> None:
    from specae.data.hdf5 import write_h5
    from specae.data.readers import read_many
    from specae.data.resample import parse_grid

    wave = None
    if args.grid and args.grid_from:
        raise SpecaeError("give either --grid or --grid-from, not both")
    if args.grid:
        wave = parse_grid(args.grid)
    elif args.grid_from:
        from specae.data.hdf5 import H5Spectra
        with H5Spectra(args.grid_from) as h5:
            wave = h5.wave
    spectra = read_many(args.files, wave=wave)
    write_h5(spectra, args.output)
    n_empty = int((~spectra.has_data).sum())
    print(f"wrote {len(spectra)} spectra x {spectra.npix} pixels to {args.output}"
          + (f" ({n_empty} without any valid pixel)" if n_empty else ""))


def _train(args) -> None:
    from specae.data.hdf5 import read_h5
    from specae.models.config import ModelConfig
    from specae.train import TrainConfig, fit

    spectra = read_h5(args.data)
    model_cfg = ModelConfig(npix=spectra.npix, kind=args.model, latent_dim=args.latent_dim,
                            decoder=args.decoder, redshift=args.redshift)
    train_cfg = TrainConfig(epochs=args.epochs, max_minutes=args.max_minutes, batch_size=args.batch_size,
                            seed=args.seed, device=args.device, progress=not args.quiet)
    _, history = fit(spectra, model_cfg=model_cfg, cfg=train_cfg, out_dir=args.output, resume=args.resume)
    print(f"trained {args.model} on {history['n_train']} spectra ({history['n_val']} for validation): "
          f"best val chi2/dof {history['best_val_chi2_dof']:.4f} at epoch {history['best_epoch'] + 1}, "
          f"stopped by {history['stopped']}; model in {args.output}")


def _denoise(args) -> None:
    from specae.data.hdf5 import read_h5, write_h5
    from specae.denoise import denoise
    from specae.models.checkpoint import load_model

    model = load_model(args.model)
    spectra = read_h5(args.data)
    out = denoise(model, spectra, n_samples=args.samples, posterior=args.posterior, combine=args.combine)
    result = type(spectra)(spectra.wave, out.flux, 1 / out.sigma ** 2, None, spectra.labels, spectra.ids,
                           None, {**spectra.meta, "source": f"specae denoise of {args.data}"})
    write_h5(result, args.output, extra={"flux_sigma": out.sigma.astype("float32")})
    print(f"denoised {len(spectra)} spectra into {args.output}")


def _encode(args) -> None:
    from specae.data.hdf5 import read_h5
    from specae.denoise import encode
    from specae.models.checkpoint import load_model
    from specae.results import write_latents

    model = load_model(args.model)
    spectra = read_h5(args.data)
    z_mean, z_std = encode(model, spectra)
    write_latents(args.output, z_mean, z_std, spectra.ids, spectra.labels)
    print(f"encoded {len(spectra)} spectra to {z_mean.shape[1]} latents in {args.output}")


def _demo(args) -> None:
    from specae.demo import run_demo

    print(run_demo(args.output, minutes=args.max_minutes, seed=args.seed))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="specae", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("convert", help="read SDSS/DESI/APOGEE FITS files into one specae HDF5 file")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.add_argument("-o", "--output", required=True, metavar="OUT.h5")
    c.add_argument("--grid", metavar="loglam:START:STOP:STEP",
                   help="common output grid (START/STOP in Angstrom, STEP in dex); default: from the inputs")
    c.add_argument("--grid-from", metavar="FILE.h5", help="use the wavelength grid of an existing specae file")
    c.set_defaults(func=_convert)

    t = sub.add_parser("train", help="train a VAE or AE on a specae HDF5 file")
    t.add_argument("data", metavar="DATA.h5")
    t.add_argument("-o", "--output", required=True, metavar="MODEL", help="model directory (created)")
    t.add_argument("--model", choices=("vae", "ae"), default="vae")
    t.add_argument("--latent-dim", type=_positive_int, default=6, metavar="K")
    t.add_argument("--decoder", choices=("mlp", "conv"), default="mlp")
    t.add_argument("--epochs", type=_positive_int, default=200, metavar="N")
    t.add_argument("--max-minutes", type=float, default=None, metavar="M", help="wall-clock budget")
    t.add_argument("--batch-size", type=_positive_int, default=64, metavar="B")
    t.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    t.add_argument("--seed", type=int, default=0, metavar="S")
    t.add_argument("--resume", action="store_true", help="continue the run saved in MODEL")
    t.add_argument("--redshift", metavar="LABEL", default=None,
                   help="decode in the rest frame, shifting by this label's redshift")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    d = sub.add_parser("denoise", help="denoise spectra, with per-pixel uncertainties")
    d.add_argument("model", metavar="MODEL")
    d.add_argument("data", metavar="DATA.h5")
    d.add_argument("-o", "--output", required=True, metavar="OUT.h5")
    d.add_argument("--samples", type=_positive_int, default=64, metavar="S", help="latent posterior samples")
    d.add_argument("--posterior", choices=("laplace", "encoder"), default="laplace",
                   help="laplace: refine the latents on the exact posterior (default); encoder: sample q(z|x)")
    d.add_argument("--combine", action="store_true",
                   help="update the model's prediction with each pixel's own measurement (precision-weighted)")
    d.set_defaults(func=_denoise)

    e = sub.add_parser("encode", help="write latent posterior means and standard deviations")
    e.add_argument("model", metavar="MODEL")
    e.add_argument("data", metavar="DATA.h5")
    e.add_argument("-o", "--output", required=True, metavar="OUT.h5")
    e.set_defaults(func=_encode)

    m = sub.add_parser("demo", help="generate the bundled synthetic set, train a small VAE, denoise, plot")
    m.add_argument("-o", "--output", default="specae-demo", metavar="DIR")
    m.add_argument("--max-minutes", type=float, default=1.0, metavar="M")
    m.add_argument("--seed", type=int, default=0, metavar="S")
    m.set_defaults(func=_demo)
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"specae: warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _one_line_warning
    try:
        args.func(args)
    except SpecaeError as e:
        print(f"specae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("specae: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
