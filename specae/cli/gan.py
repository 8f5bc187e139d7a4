"""`specae gan train / sample / evaluate / score / latent`: GANs for astronomical images."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from specae.cli import decay, directory, non_negative, positive, positive_int, seed
from specae.errors import SpecaeError

HELD_OUT = 0.2   # fraction of the images (of the columns of tiles) kept out of training, for evaluation


def _output(path) -> Path:
    """An output path whose folder exists (checked before any work, so a bad -o leaves nothing behind)."""
    p = Path(path)
    if not p.parent.is_dir():
        raise SpecaeError(f"{p}: output directory {p.parent} does not exist")
    return p


def _save_npy(path: Path, array: np.ndarray) -> None:
    from specae.data.hdf5 import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _train(args) -> None:
    from specae.images.data import load_split
    from specae.images.objective import GANConfig
    from specae.images.train import fit_gan
    from specae.plumbing import config_from_dict

    out = Path(args.output)
    _output(out)
    if args.resume:
        if not (out / "gan.json").is_file():
            raise SpecaeError(f"--resume: no earlier GAN run to continue in {out}")
        try:
            info = json.loads((out / "gan.json").read_text())
            rec, cfg = info["data"], config_from_dict(GANConfig, info["config"])
            split = (rec["tile"], rec["size"], rec["held_out"], rec["seed"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SpecaeError(f"{out / 'gan.json'}: damaged, cannot resume ({e})") from None
        cfg = replace(cfg, epochs=args.epochs, max_minutes=args.max_minutes, device=args.device,
                      progress=not args.quiet)
        train, held, data = load_split(args.images, *split)
        if data["sha256"] != rec["sha256"]:
            raise SpecaeError(f"{args.images}: not the images the run in {out} was trained on")
    else:
        train, held, data = load_split(args.images, args.tile, args.size, HELD_OUT, args.seed)
        cfg = GANConfig(size=train.size, dense=args.dense, width=args.width, latent=args.latent,
                        batch_size=args.batch_size, epochs=args.epochs, max_minutes=args.max_minutes,
                        loss=args.loss, spectral_norm=args.spectral_norm, noise=args.noise, r1=args.r1,
                        ema=args.ema or None,
                        diffaug=tuple(p for p in args.diffaug.split(",") if p), seed=args.seed,
                        device=args.device, precision=args.precision, progress=not args.quiet,
                        **{k: v for k in ("softening", "select") if (v := getattr(args, k)) is not None})
    _, history = fit_gan(train, held, cfg, out_dir=out, resume=args.resume, data=data)
    best = history["best_epoch"]
    print(f"trained a {'dense' if cfg.dense else 'DCGAN'} {cfg.size}x{cfg.size} GAN on {len(train)} images "
          f"({len(held)} held out) for {len(history['epoch'])} epochs, stopped by {history['stopped']}; kept "
          f"epoch {best + 1} (morphology distance to the training images: mean {history['val_morphology'][best]:.3f}, "
          f"worst {history['val_morphology_max'][best]:.3f}; "
          f"D on held-out real / generated {history['val_p_real'][best]:.3f} / {history['val_p_fake'][best]:.3f}); "
          f"GAN in {out}")


def _sample(args) -> None:
    from specae.images.checkpoint import load_gan
    from specae.images.figures import write_grid
    from specae.images.sampling import sample

    out, png = _output(args.output), _output(args.png) if args.png else None
    gan = load_gan(args.gan)
    images = sample(gan, args.n, seed=args.seed)
    _save_npy(out, images)
    if png:
        write_grid(png, images, stretch=gan.stretch)
    print(f"wrote {args.n} samples {images.shape[1:]} to {out}" + (f" and a grid to {png}" if png else ""))


def _evaluate_inputs(gan, path):
    """(held-out images, training images or None, what was evaluated) for `specae gan evaluate`: the
    training file itself gives its held-out part; any other file is held out whole."""
    import warnings

    from specae.images.data import bin_to, read_images, reload_split

    record = gan.info.get("data") or {}
    try:
        train, held = reload_split(record)
    except SpecaeError as e:
        warnings.warn(f"no memorisation check: {e}", stacklevel=2)
        train = held = None
    if held is not None and Path(path).resolve() == Path(record["path"]):
        return held, train, f"the held-out part of {path}"
    images = bin_to(read_images(path, default_tile=record.get("tile") or gan.net.size), gan.net.size)
    return images, train, str(path)


def _evaluate(args) -> None:
    from specae.data.hdf5 import atomic_path
    from specae.images.checkpoint import load_gan
    from specae.images.evaluate import evaluate_gan

    out = _output(args.output)
    gan = load_gan(args.gan)
    held, train, what = _evaluate_inputs(gan, args.images)
    report = {"gan": str(args.gan), "images": what, **evaluate_gan(gan, held, train, seed=args.seed)}
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    print(summary_table(report))


def summary_table(report: dict) -> str:
    """The headline figures of an evaluation, GAN beside real-vs-real, as plain text."""
    lines = [f"{'metric':<26}{'GAN':>10}{'real-vs-real':>14}"]
    rows = [(f"W1/std {k}", v) for k, v in report["morphology"].items()]
    rows += [("KID", report["kid"]), ("precision", report["precision"]), ("recall", report["recall"])]
    lines += [f"{name:<26}{v['gan']:>10.4f}{v['real']:>14.4f}" for name, v in rows]
    if "memorisation" in report:
        lines.append(f"{'nearest-training ratio':<26}{report['memorisation']['ratio']:>10.3f}")
    lines.append(f"{'mode collapse':<26}{'yes' if report['mode_collapse'] else 'no':>10}")
    return "\n".join(lines)


def _score(args) -> None:
    from specae.images.checkpoint import load_net
    from specae.images.data import bin_to, read_images
    from specae.images.sampling import score

    out = _output(args.output)
    d = Path(args.gan)
    disc, net, stretch = load_net(d / "discriminator" if (d / "discriminator").is_dir() else d, "discriminator")
    images = bin_to(read_images(args.images, args.tile, default_tile=net.size), net.size)
    logits = score(disc, stretch, images.pixels)
    result = 1 / (1 + np.exp(-logits.astype(np.float64))) if args.probability else logits
    _save_npy(out, result.astype(np.float32))
    print(f"scored {len(logits)} images: mean D {'probability' if args.probability else 'logit'} "
          f"{result.mean():.4f}; written to {out}")


def _latent(args) -> None:
    from specae.images.checkpoint import load_gan
    from specae.images.figures import write_latent_figures

    out = Path(args.output)
    _output(out)
    report = write_latent_figures(load_gan(args.gan), out, n=args.n, seed=args.seed)
    print(f"latent figures in {out}: " + "; ".join(f"{k} direction R^2 {report[k]['r2']:.2f}"
                                                      for k in ("r50", "ellipticity")))


def register(sub) -> None:
    g = sub.add_parser("gan", help="GANs for astronomical images: train, sample, evaluate, score, latent")
    gsub = g.add_subparsers(dest="gan_command", required=True, metavar="GAN_COMMAND")

    t = gsub.add_parser("train", help="train a DCGAN (or dense GAN) on images",
                        description="IMAGES: .npy/.npz stack, FITS cube, folder of FITS cutouts, or one large "
                                    f"PNG/FITS image cut into tiles (--tile). {HELD_OUT:.0%} of the images (of "
                                    "a large image: its right-most columns of tiles) are held out.")
    t.add_argument("images", metavar="IMAGES")
    t.add_argument("-o", "--output", type=directory, required=True, metavar="GAN", help="GAN directory (created)")
    t.add_argument("--size", type=int, choices=(32, 64), default=None,
                   help="image side (default: the images'; larger images are binned down)")
    t.add_argument("--dense", action="store_true", help="the fully connected baseline instead of the DCGAN")
    t.add_argument("--epochs", type=positive_int, default=100, metavar="N")
    t.add_argument("--max-minutes", type=positive, default=None, metavar="M", help="wall-clock budget")
    t.add_argument("--tile", type=positive_int, default=None, metavar="T", help="cut one large image into TxT tiles")
    t.add_argument("--width", type=positive_int, default=64, metavar="W", help="DCGAN base channels (ngf = ndf)")
    t.add_argument("--latent", type=positive_int, default=100, metavar="K")
    t.add_argument("--batch-size", type=positive_int, default=64, metavar="B")
    t.add_argument("--loss", choices=("bce", "hinge"), default="bce")
    t.add_argument("--spectral-norm", action="store_true", help="spectral norm in the discriminator")
    t.add_argument("--noise", action="store_true", help="per-pixel noise inputs in the generator (StyleGAN's)")
    t.add_argument("--r1", type=non_negative, default=0.0, metavar="GAMMA", help="R1 penalty weight (0: off)")
    t.add_argument("--ema", type=decay, default=None, metavar="DECAY",
                   help="sample from an exponential moving average of the weights, e.g. 0.999 (default: off)")
    t.add_argument("--diffaug", default="", metavar="POLICY", help="DiffAugment, e.g. translation,cutout")
    t.add_argument("--softening", type=positive, default=None, metavar="S",
                   help="linear range of the asinh flux stretch in units of the sky noise (default 10)")
    t.add_argument("--select", choices=("morphology_max", "morphology"), default=None,
                   help="keep the epoch whose worst (default) or mean morphology distance to training images is least")
    t.add_argument("--seed", type=seed, default=0, metavar="S")
    t.add_argument("--device", default="auto", metavar="DEV", help="auto, cpu, cuda or cuda:N")
    t.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    t.add_argument("--resume", action="store_true", help="continue the run saved in GAN")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    s = gsub.add_parser("sample", help="generate images in the training images' units")
    s.add_argument("gan", metavar="GAN")
    s.add_argument("-n", type=positive_int, default=64, metavar="N")
    s.add_argument("-o", "--output", required=True, metavar="OUT.npy", help="float32 (N, C, H, W)")
    s.add_argument("--png", default=None, metavar="GRID.png", help="also draw the samples as a grid")
    s.add_argument("--seed", type=seed, default=0, metavar="S")
    s.set_defaults(func=_sample)

    e = gsub.add_parser("evaluate", help="morphology distances, KID, precision/recall, memorisation vs real images")
    e.add_argument("gan", metavar="GAN")
    e.add_argument("images", metavar="IMAGES", help="held-out images (the training file: its held-out part)")
    e.add_argument("-o", "--output", required=True, metavar="METRICS.json")
    e.add_argument("--seed", type=seed, default=0, metavar="S")
    e.set_defaults(func=_evaluate)

    c = gsub.add_parser("score", help="the discriminator's score per image (> 0: looks real)")
    c.add_argument("gan", metavar="GAN", help="a GAN directory or its discriminator/ folder")
    c.add_argument("images", metavar="IMAGES")
    c.add_argument("-o", "--output", required=True, metavar="SCORES.npy", help="float32 (N,)")
    c.add_argument("--probability", action="store_true", help="sigmoid of the logit instead of the logit")
    c.add_argument("--tile", type=positive_int, default=None, metavar="T", help="tile size for one large image")
    c.set_defaults(func=_score)

    lt = gsub.add_parser("latent", help="latent directions for size and ellipticity, interpolation, arithmetic (PNGs)")
    lt.add_argument("gan", metavar="GAN")
    lt.add_argument("-o", "--output", type=directory, required=True, metavar="DIR")
    lt.add_argument("-n", type=positive_int, default=2000, metavar="N", help="samples to measure")
    lt.add_argument("--seed", type=seed, default=0, metavar="S")
    lt.set_defaults(func=_latent)
