"""GAN benchmark: a DCGAN (or the dense baseline) trained on synthetic galaxies for a fixed time, evaluated
on independently drawn held-out galaxies, every figure beside its real-vs-real reference.

    python -m benchmarks.gan dcgan --noise --cpu-minutes 5   # 32x32 DCGAN, width 32, one CPU thread
    python -m benchmarks.gan dense --noise --cpu-minutes 5   # the fully connected baseline

--cpu-minutes budgets the training by the process's CPU time, so a machine shared with other jobs gives
the same training as an idle one: an epoch is timed first (time.process_time), then the run trains for
as many epochs as the budget holds. --minutes budgets by wall-clock time instead (e.g. on a GPU).

Writes results/gan-<model>.json, .md and gan-<model>-samples.png (machine, torch, commit, command, date).
Targets (the GAN issue): every normalised morphology distance <= 0.3, nearest-training-image distance
ratio >= 0.4, precision and recall > 0.5; the dense GAN measurably worse than the DCGAN.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from benchmarks.report import write_results
from specae.engine import Callback
from specae.images.evaluate import evaluate_gan
from specae.images.figures import grid_array
from specae.images.latent import measured, property_direction, render, size_shape_analogy, traverse
from specae.images.objective import SELECT, GANConfig
from specae.images.sampling import latents, sample
from specae.images.synthetic import galaxies
from specae.images.train import fit_gan

TARGETS = {"morphology_max": 0.3, "memorisation_ratio": 0.4, "precision": 0.5, "recall": 0.5}


class _EpochClock(Callback):
    """This process's CPU time at the end of every epoch."""

    def __init__(self):
        self.marks = []

    def on_epoch_end(self, record):
        self.marks.append(time.process_time())


def epochs_in(cpu_minutes: float, train, held, cfg: GANConfig) -> int:
    """Epochs that fit `cpu_minutes` of this process's CPU time, from the second epoch of a throw-away run
    (the first one also pays for start-up)."""
    clock = _EpochClock()
    fit_gan(train, held, replace(cfg, epochs=2, max_minutes=None), callbacks=(clock,))
    return max(1, int(60 * cpu_minutes / (clock.marks[1] - clock.marks[0])))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", choices=("dcgan", "dense"))
    p.add_argument("--cpu-minutes", type=float, default=None, help="training budget in CPU time of this process")
    p.add_argument("--minutes", type=float, default=None, help="training budget in wall-clock time")
    p.add_argument("--n-train", type=int, default=6000)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--width", type=int, default=None, help="default: 32 (DCGAN), 64 (dense)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=100000, help="cap on epochs (the time budget usually ends first)")
    p.add_argument("--ema", type=float, default=None)
    p.add_argument("--loss", choices=("bce", "hinge"), default="bce")
    p.add_argument("--spectral-norm", action="store_true")
    p.add_argument("--noise", action="store_true", help="per-pixel noise inputs in the generator")
    p.add_argument("--diffaug", default="", help="e.g. translation,cutout")
    p.add_argument("--softening", type=float, default=GANConfig.softening,
                   help="linear range of the flux stretch in sky-noise units")
    p.add_argument("--select", choices=SELECT, default=GANConfig.select,
                   help="the epoch kept: mean or worst normalised morphology distance to training images")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="results name (default gan-<model>)")
    p.add_argument("--results-dir", default=None)
    p.add_argument("--out", default=None, metavar="GAN", help="also keep the trained GAN in this directory")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    t0 = time.monotonic()
    train, test = galaxies(args.n_train, seed=1), galaxies(args.n_test, seed=2)
    t_data = time.monotonic() - t0
    cfg = GANConfig(dense=args.model == "dense", width=args.width or (64 if args.model == "dense" else 32),
                    batch_size=args.batch_size, epochs=args.epochs, max_minutes=args.minutes, ema=args.ema,
                    loss=args.loss, spectral_norm=args.spectral_norm, noise=args.noise,
                    diffaug=tuple(x for x in args.diffaug.split(",") if x), select=args.select,
                    softening=args.softening, seed=args.seed,
                    device=args.device, precision=args.precision, progress=False)
    held = galaxies(256, seed=3)            # validation: D's scores during training, apart from the test set
    cpu_budget = args.cpu_minutes if args.cpu_minutes or args.minutes else 5.0
    if cpu_budget:
        cfg = replace(cfg, epochs=epochs_in(cpu_budget, train, held, cfg))
    cpu0 = time.process_time()
    gan, history = fit_gan(train, held, cfg, out_dir=args.out)
    cpu_minutes = (time.process_time() - cpu0) / 60
    t1 = time.monotonic()
    report = evaluate_gan(gan, test, train, seed=args.seed)
    t_eval = time.monotonic() - t1

    checks = {"morphology_max": report["morphology_max"]["gan"] <= TARGETS["morphology_max"],
              "memorisation_ratio": report["memorisation"]["ratio"] >= TARGETS["memorisation_ratio"],
              "precision": report["precision"]["gan"] > TARGETS["precision"],
              "recall": report["recall"]["gan"] > TARGETS["recall"]}
    figures = {"model": args.model, "config": {k: v for k, v in vars(cfg).items()}, "n_train": len(train),
               "n_test": len(test), "epochs": len(history["epoch"]),
               "train_minutes": history["minutes"], "train_cpu_minutes": cpu_minutes, "data_seconds": t_data, "eval_seconds": t_eval,
               "evaluation": report, "targets": TARGETS, "meets": checks, "best_epoch": history["best_epoch"],
               "history": {k: history[k] for k in ("val_morphology", "val_morphology_max", "val_p_real", "val_p_fake",
                                                   "train_loss_d", "train_loss_g")}}
    rows = [{"metric": f"W1/std {k}", "GAN": v["gan"], "real vs real": v["real"]} for k, v in report["morphology"].items()]
    rows += [{"metric": name, "GAN": report[key]["gan"], "real vs real": report[key]["real"]}
             for name, key in (("mean W1/std", "morphology_mean"), ("KID", "kid"), ("precision", "precision"),
                               ("recall", "recall"))]
    rows.append({"metric": "nearest-training ratio", "GAN": report["memorisation"]["ratio"], "real vs real": 1.0})
    images = sample(gan, 64, seed=args.seed)
    z, stats = measured(gan, 2000, seed=args.seed)
    directions = {prop: property_direction(gan, prop, sample=(z, stats)) for prop in ("r50", "ellipticity")}
    analogy = size_shape_analogy(gan, z, stats)
    figures["latent"] = {**{k: {"slope": d["slope"], "r2": d["r2"]} for k, d in directions.items()},
                         "arithmetic": {"r50": analogy["r50"], "ellipticity": analogy["ellipticity"]}}
    starts, steps = latents(6, gan.net.latent, args.seed + 1).numpy(), np.linspace(-3, 3, 7)

    def draw(fig):
        ax = fig.subplots(1, 2)
        for a, (title, x) in zip(ax, (("generated", images), ("held-out real", test.pixels[:64]))):
            a.imshow(grid_array(x, 8, gan.stretch), cmap="gray", vmin=0, vmax=1)
            a.set_title(title)
            a.axis("off")

    def draw_latent(fig):
        ax = fig.subplots(1, 3, width_ratios=[7, 7, 4])
        panels = [(f"{k} direction (R$^2$ {d['r2']:.2f})", traverse(gan, d["direction"], starts, steps), 7)
                  for k, d in directions.items()]
        panels.append(("A - B + C = ?", render(gan, np.stack(list(analogy["latents"].values()))), 4))
        for a, (title, x, ncol) in zip(ax, panels):
            a.imshow(grid_array(x, ncol, gan.stretch), cmap="gray", vmin=0, vmax=1)
            a.set_title(title, fontsize=8)
            a.axis("off")

    notes = [f"epoch {history['best_epoch'] + 1} of {len(history['epoch'])} kept (closest morphology to the training "
             f"images); {len(history['epoch'])} epochs in {cpu_minutes:.1f} CPU min ({history['minutes']:.1f} min wall clock) on "
             f"{args.threads} thread(s); "
             f"{cfg.width} base channels; targets met: {', '.join(k for k, v in checks.items() if v) or 'none'}; "
             f"missed: {', '.join(k for k, v in checks.items() if not v) or 'none'}",
             "real vs real: two halves of the held-out set (the floor a perfect generator reaches with this many "
             "images); the GAN column compares half A with as many samples as half B holds",
             f"mode collapse flagged: {report['mode_collapse']}; D's AUC held-out real vs generated: "
             f"{report['discriminator']['auc']:.3f}",
             "latent panel: rows move 6 random latents from -3 to +3 along the direction that grows r50 (left) and "
             "ellipticity (middle); right: G at the mean latent (scaled to the typical radius) of large round (A), "
             "small round (B), small elongated (C) "
             "galaxies and of A - B + C"]
    written = write_results(args.name or f"gan-{args.model}", figures, rows, command="python " + " ".join(sys.argv),
                            plots={"samples": draw, "latent": draw_latent}, device=args.device, notes=notes, results_dir=args.results_dir)
    print("\n".join(str(p) for p in written.values()))
    return figures


if __name__ == "__main__":
    main()
