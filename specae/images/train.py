"""`fit_gan`: images in their own units -> a trained GAN, through the engine's one training loop.

    train, held = split_images(read_images("cutouts.npz"), 0.2)
    gan, history = fit_gan(train, held, GANConfig(width=32, max_minutes=5), out_dir="GAN")

The flux stretch is fitted on the training images (or read back from GAN/ when resuming), the images
are stretched once into tensors, and the engine runs the GAN objective on them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from specae.data.sources import TensorSource
from specae.engine import train as engine_train
from specae.errors import SpecaeError
from specae.images.checkpoint import GAN, load_net
from specae.images.data import Images
from specae.images.objective import GANConfig, GANObjective, recalibrated
from specae.images.transforms import AsinhStretch


def fit_gan(train: Images, val: Images | None = None, cfg: GANConfig | None = None, out_dir=None,
            resume: bool = False, callbacks: tuple = (), data: dict | None = None) -> tuple[GAN, dict]:
    """Train a GAN on `train` (N, C, size, size). With `val`, after each epoch D scores up to cfg.val_rows
    of its images and as many samples are compared with cfg.reference_rows training images: the epoch
    whose samples' morphology matches best is kept (see specae.images.objective); without, the last.

    Writes GAN/ (see specae.images.checkpoint) when `out_dir` is given; `resume` continues the run saved
    there. `data` (plain JSON) records where the images came from, for evaluation. Returns the GAN (the
    sampling generator with exact batch-norm statistics) and the engine's history."""
    cfg = (cfg or GANConfig()).check()
    if train.size != cfg.size:
        raise SpecaeError(f"{train.meta.get('source', 'images')}: images of {train.size} pixels; the GAN makes "
                          f"{cfg.size}x{cfg.size} images (bin or tile them to that size)")
    earlier = Path(out_dir) / "generator" if out_dir else None
    if resume and earlier and (earlier / "config.json").is_file():
        stretch = load_net(earlier, "generator")[2]     # the stretch the run started with
    else:
        stretch = AsinhStretch.fit(train.pixels, cfg.softening)
    net = cfg.net(train.pixels.shape[1])
    has_val = val is not None and len(val) > 0
    rows = np.random.default_rng(cfg.seed).permutation(len(train))[:cfg.reference_rows]
    objective = GANObjective(cfg, net, stretch, data, reference=train.pixels[rows] if has_val else None)
    batch = min(cfg.batch_size, len(train))
    src = TensorSource({"image": torch.from_numpy(stretch.forward(train.pixels))}, batch, seed=cfg.seed)
    val_src = None
    if has_val:
        held = torch.from_numpy(stretch.forward(val.pixels[:cfg.val_rows]))
        val_src = TensorSource({"image": held}, batch, shuffle=False)
    history = engine_train(objective, src, val_src, cfg, out_dir=out_dir, resume=resume, callbacks=callbacks,
                           extra_history={"n_train": len(train), "n_val": 0 if val is None else len(val)})
    gen = recalibrated(objective.G, net.latent, cfg.seed)
    return GAN(gen, objective.D.eval(), net, stretch, objective.info(history),
               Path(out_dir) if out_dir else None), history
