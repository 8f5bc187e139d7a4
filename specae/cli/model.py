"""`specae train / denoise / encode / demo`: the VAE/AE commands."""

from __future__ import annotations

from specae.cli import positive_int


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


def register(sub) -> None:
    t = sub.add_parser("train", help="train a VAE or AE on a specae HDF5 file")
    t.add_argument("data", metavar="DATA.h5")
    t.add_argument("-o", "--output", required=True, metavar="MODEL", help="model directory (created)")
    t.add_argument("--model", choices=("vae", "ae"), default="vae")
    t.add_argument("--latent-dim", type=positive_int, default=6, metavar="K")
    t.add_argument("--decoder", choices=("mlp", "conv"), default="mlp")
    t.add_argument("--epochs", type=positive_int, default=200, metavar="N")
    t.add_argument("--max-minutes", type=float, default=None, metavar="M", help="wall-clock budget")
    t.add_argument("--batch-size", type=positive_int, default=64, metavar="B")
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
    d.add_argument("--samples", type=positive_int, default=64, metavar="S", help="latent posterior samples")
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
