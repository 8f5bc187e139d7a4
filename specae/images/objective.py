"""The GAN objective for the training engine: alternating discriminator and generator steps.

Each step: D learns real vs generated on logits (binary cross-entropy, or the hinge loss), with an
optional R1 penalty on real images every `r1_every` steps (lazy regularisation, Karras et al. 2020);
then G learns on the non-saturating loss -log D(G(z)) (or -D(G(z)) for hinge). Real images are
flipped/rotated at random; with `diffaug` both real and generated images pass the same differentiable
augmentation before D (Zhao et al. 2020), which keeps D from memorising a small set. With `ema` the
engine keeps an exponential moving average of the weights, and the averaged G is what is chosen,
exported and sampled.

GAN quality is not monotone in training time: the last state can be a poor one. After every epoch
samples of the generator as it would be exported (one per held-out image) are compared with a fixed set
of *training* images by the normalised Wasserstein distances of their morphology statistics, the mean
("val_morphology") and the worst ("val_morphology_max"), and the engine keeps the epoch with the best of
`select` (by default the worst statistic: on 5 CPU minutes of synthetic galaxies it took the kept
epoch's worst held-out distance from 0.61 to 0.46); the held-out images themselves never enter the
choice, so they stay fit for evaluation.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import update_bn

from specae.data.hdf5 import atomic_path
from specae.engine import EngineConfig, Objective
from specae.errors import SpecaeError
from specae.images.checkpoint import save_net
from specae.images.metrics import morphology, morphology_distances
from specae.images.models import NetConfig, build_discriminator, build_generator
from specae.images.transforms import DIFFAUG, AsinhStretch, diff_augment, flip_rot

LOSSES = ("bce", "hinge")
SELECT = ("morphology", "morphology_max")


@dataclass
class GANConfig(EngineConfig):
    """Training settings of a GAN; the defaults are PyTorch's DCGAN example (Adam 2e-4, beta1 0.5)."""
    epochs: int = 100
    patience: int | None = None        # no early stopping (GAN quality is not monotone); the best epoch is kept
    eval_start: bool = False           # an untrained generator never competes for the best epoch
    clip: float | None = None          # no gradient clipping, as in the reference
    size: int = 32                     # image side [pixels]
    latent: int = 100
    width: int = 64                    # DCGAN ngf = ndf
    dense: bool = False                # the fully connected baseline
    batch_size: int = 64
    lr: float = 2e-4
    betas: tuple = (0.5, 0.999)
    loss: str = "bce"                  # "bce" (non-saturating G loss) or "hinge"
    spectral_norm: bool = False        # spectral norm in D (and no batch norm there)
    noise: bool = False                # per-pixel noise inputs in G (StyleGAN's)
    r1: float = 0.0                    # R1 penalty weight gamma (0 = off)
    r1_every: int = 16                 # lazy R1: every k-th step, weighted by k
    augment: bool = True               # random flips / 90-degree rotations of the real images
    diffaug: tuple = ()                # DiffAugment policy, names from DIFFAUG, e.g. ("translation", "cutout")
    val_rows: int = 256                # held-out images D scores after every epoch (and samples drawn)
    reference_rows: int = 512          # training images the samples' morphology is compared with
    softening: float = 10.0            # the flux stretch's linear range in sky-noise units (AsinhStretch.fit):
                                       # 5 CPU minutes of synthetic galaxies, worst morphology distance 0.46 at 1,
                                       # 0.23 at 10 (the noise compressed, the cores no longer logarithmic)
    select: str = "morphology_max"     # what picks the epoch kept: the worst normalised morphology distance
                                       # ("morphology_max", what a generator must bound) or the mean ("morphology")

    def check(self) -> "GANConfig":
        if self.loss not in LOSSES:
            raise SpecaeError(f"unknown GAN loss {self.loss!r} (use {' or '.join(LOSSES)})")
        unknown = [p for p in self.diffaug if p not in DIFFAUG]
        if unknown:
            raise SpecaeError(f"unknown DiffAugment policy {unknown} (use {', '.join(DIFFAUG)})")
        if self.select not in SELECT:
            raise SpecaeError(f"unknown epoch selection {self.select!r} (use {' or '.join(SELECT)})")
        if self.ema is not None and not 0 < self.ema < 1:
            raise SpecaeError(f"EMA decay {self.ema} must be in (0, 1)")
        return self

    def net(self, channels: int) -> NetConfig:
        try:
            return NetConfig(self.size, channels, self.latent, self.width, self.dense, self.spectral_norm, self.noise)
        except ValueError as e:
            raise SpecaeError(str(e)) from None


class GANObjective(Objective):
    """Modules G and D, both trained with Adam at a constant rate. With `reference` training
    images (N, C, H, W) in their units, the epoch whose samples match their morphology best (cfg.select)
    is kept (and exported); without, the last."""

    schedule = "constant"

    def __init__(self, cfg: GANConfig, net: NetConfig, stretch: AsinhStretch, data: dict | None = None,
                 reference: np.ndarray | None = None):
        self.cfg, self.net, self.stretch, self.data = cfg.check(), net, stretch, data or {}
        self.reference = morphology(reference) if reference is not None and len(reference) > 1 else None
        self.monitor = cfg.select if self.reference is not None else None
        with torch.random.fork_rng(devices=[]):   # initial weights from the seed, global state untouched
            torch.manual_seed(cfg.seed)
            self.G, self.D = build_generator(net), build_discriminator(net)

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.cfg
        return {"D": torch.optim.Adam(self.D.parameters(), c.lr, betas=tuple(c.betas)),
                "G": torch.optim.Adam(self.G.parameters(), c.lr, betas=tuple(c.betas))}

    def _d(self, ctx, x: torch.Tensor) -> torch.Tensor:
        return ctx.trained("D")(diff_augment(x, self.cfg.diffaug, ctx.generator)).float()   # (B,) logits

    def train_step(self, batch: dict, ctx) -> dict[str, torch.Tensor]:
        c = self.cfg
        real = batch["image"]                                            # (B, C, H, W) stretched
        if c.augment:
            real = flip_rot(real, ctx.generator)
        n_fake = max(real.shape[0], 2)                                   # batch norm needs two samples
        z = torch.randn(n_fake, c.latent, generator=ctx.generator, device=ctx.device)   # (B, latent)
        lazy_r1 = c.r1 > 0 and ctx.step % c.r1_every == 0
        if lazy_r1:
            real.requires_grad_(True)
        with ctx.autocast():
            fake = ctx.trained("G")(z, ctx.generator)                    # (B, C, H, W)
            d_real, d_fake = self._d(ctx, real), self._d(ctx, fake.detach())
        if c.loss == "hinge":
            loss_d = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        else:
            loss_d = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        metrics = {"loss_d": loss_d.detach()}
        if lazy_r1:
            grad, = torch.autograd.grad(d_real.sum(), real, create_graph=True)
            penalty = grad.float().square().sum(dim=(1, 2, 3)).mean()
            loss_d = loss_d + 0.5 * c.r1 * c.r1_every * penalty
        ctx.optimizer_step("D", loss_d)

        with ctx.autocast():
            d_gen = self._d(ctx, fake)
        loss_g = -d_gen.mean() if c.loss == "hinge" else F.softplus(-d_gen).mean()
        ctx.optimizer_step("G", loss_g)
        return {**metrics, "loss_g": loss_g.detach(), "d_real": torch.sigmoid(d_real.detach()).mean(),
                "d_fake": torch.sigmoid(d_fake.detach()).mean()}

    def eval_step(self, batch: dict, ctx) -> dict[str, torch.Tensor]:
        p_real = torch.sigmoid(ctx.trained("D")(batch["image"]).float())
        return {"p_real": p_real.sum(), "n": torch.tensor(float(batch["image"].shape[0]), device=ctx.device)}

    @torch.no_grad()
    def summarise(self, sums: dict[str, float]) -> dict[str, float]:
        """D's mean probability that the held-out real images, and as many samples of the generator as it
        would be exported, are real; with reference images, the normalised Wasserstein distances of the
        samples' morphology from theirs, the mean and the worst. The samples are drawn here, from the seed,
        on every rank alike (the same numbers at every evaluation), so all ranks agree."""
        n = int(sums["n"])
        device = next(self.G.parameters()).device
        rng = torch.Generator(device=device).manual_seed(self.cfg.seed)
        sampler = recalibrated(self.G, self.net.latent, self.cfg.seed)
        fake = torch.cat([sampler(torch.randn(len(rows), self.cfg.latent, generator=rng, device=device), rng)
                          for rows in torch.arange(n).split(self.cfg.batch_size)])     # (n, C, H, W) stretched
        out = {"p_real": sums["p_real"] / max(n, 1), "p_fake": float(torch.sigmoid(self.D(fake).float()).mean())}
        if self.reference is not None:
            distances = list(morphology_distances(self.reference, morphology(self.stretch.inverse(
                fake.float().cpu().numpy()))).values())
            out["morphology"], out["morphology_max"] = float(np.mean(distances)), float(np.max(distances))
        return out

    def export(self, directory: Path, history: dict) -> None:
        """GAN/generator and GAN/discriminator (each config.json + weights.pt, usable alone) and gan.json."""
        d = Path(directory)
        save_net(recalibrated(self.G, self.net.latent, self.cfg.seed), "generator", self.net, self.stretch,
                 d / "generator")
        save_net(self.D, "discriminator", self.net, self.stretch, d / "discriminator")
        with atomic_path(d / "gan.json") as tmp:
            tmp.write_text(json.dumps(self.info(history), indent=1))

    def info(self, history: dict) -> dict:
        """gan.json: the training settings, the data trained on, the epoch (from 0) of the state kept."""
        return {"format": "specae-gan", "config": asdict(self.cfg), "data": self.data,
                "epoch": history.get("best_epoch", -1)}


def recalibrated(gen: nn.Module, latent: int, seed: int, n: int = 256) -> nn.Module:
    """A copy of generator `gen` in eval mode whose batch-norm statistics are the exact averages over `n`
    samples of its current weights (the running averages lag behind the weights, and never match averaged
    weights): torch.optim.swa_utils.update_bn on latents, and noise inputs, drawn from `seed`."""
    g = copy.deepcopy(gen)
    device = next(g.parameters()).device
    rng = torch.Generator(device=device).manual_seed(seed)
    batches = [torch.randn(128, latent, generator=rng, device=device) for _ in range(max(1, n // 128))]
    # update_bn calls g(z) alone, so noise inputs draw from the global generator: seeded here, restored after
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        update_bn(batches, g)
    return g.eval()
