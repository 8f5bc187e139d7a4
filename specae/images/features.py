"""The in-house feature extractor for KID and precision/recall: a small CNN trained here, no downloads.

It learns to predict, from a stretched image, what is known about it: the labels it carries (the
synthetic galaxies' true flux, size, shape, ...; a position angle as cos 2PA, sin 2PA) and the
morphology statistics measured on it. Its penultimate layer (64 numbers) is the feature vector, so
features distinguish images the way those physical quantities do.

    ext = train_extractor(train_images, stretch, seed=0)       # FeatureExtractor, about 20 s on one core
    f = ext.features(stretched)                                 # (N, 64)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from specae.data.sources import TensorSource
from specae.engine import EngineConfig, Objective
from specae.engine import train as engine_train
from specae.images.checkpoint import read_checkpoint, write_checkpoint
from specae.images.data import TILE_LABELS, Images
from specae.images.metrics import morphology
from specae.images.synthetic import ANGLE_LABELS
from specae.images.transforms import AsinhStretch

FEATURES = 64


class FeatureNet(nn.Module):
    def __init__(self, channels: int, n_targets: int):
        super().__init__()
        chans = [channels, 32, 32, 64, 64]
        layers = []
        for i, (a, b) in enumerate(zip(chans[:-1], chans[1:])):
            layers += [nn.Conv2d(a, b, 3, 1 if i == 0 else 2, 1), nn.ReLU(True)]   # side / 8 after the last
        self.conv = nn.Sequential(*layers)
        self.embed = nn.Linear(chans[-1], FEATURES)
        self.head = nn.Linear(FEATURES, n_targets)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.embed(self.conv(x).mean(dim=(2, 3))))    # (B, C, H, W) -> (B, FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))                          # (B, n_targets) standardised targets


def targets(images: Images) -> dict[str, np.ndarray]:
    """What the extractor learns to predict (N,) each: labels (not tile positions; angles as cos/sin of
    twice the angle, since a galaxy turned by 180 degrees is the same) and measured morphology."""
    out = {}
    for k, v in images.labels.items():
        if k in TILE_LABELS:
            continue
        if k in ANGLE_LABELS:
            out[f"cos2{k}"], out[f"sin2{k}"] = np.cos(np.deg2rad(2 * v)), np.sin(np.deg2rad(2 * v))
        else:
            out[k] = np.asarray(v, np.float64)
    return {**out, **{f"measured_{k}": v for k, v in morphology(images.pixels).items()}}


class FeatureExtractor:
    """A trained FeatureNet and the names of what it predicts."""

    def __init__(self, net: FeatureNet, names: list[str]):
        self.net, self.names = net.eval(), names

    @torch.no_grad()
    def features(self, stretched: np.ndarray, batch: int = 512) -> np.ndarray:
        """Features (N, 64) float64 of stretched images (N, C, H, W)."""
        x = torch.from_numpy(np.ascontiguousarray(stretched, dtype=np.float32))
        return np.concatenate([self.net.features(x[a:a + batch]).numpy() for a in range(0, len(x), batch)]).astype(np.float64)

    def save(self, directory) -> None:
        cfg = {"kind": "features", "channels": self.net.conv[0].in_channels, "targets": self.names}
        write_checkpoint(directory, cfg, self.net)

    @classmethod
    def load(cls, directory) -> "FeatureExtractor":
        net, cfg = read_checkpoint(directory, "features", lambda c: FeatureNet(int(c["channels"]), len(c["targets"])))
        return cls(net, list(cfg["targets"]))


class FeatureObjective(Objective):
    """The extractor's regression for the engine: Huber loss on the standardised targets, Adam at a constant
    rate 1e-3, no validation (the network is a fixed embedding for metrics, not a predictor to select), so
    the last state is kept."""

    schedule = "constant"

    def __init__(self, net: FeatureNet):
        self.net = net

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"net": torch.optim.Adam(self.net.parameters(), 1e-3)}

    def train_step(self, batch: dict, ctx) -> dict[str, torch.Tensor]:
        with ctx.autocast():
            pred = ctx.trained("net")(batch["x"]).float()                  # (B, T)
        loss = F.smooth_l1_loss(pred, batch["y"])
        ctx.optimizer_step("net", loss)
        return {"loss": loss.detach()}


def train_extractor(images: Images, stretch: AsinhStretch, epochs: int = 15, batch: int = 128, seed: int = 0) -> FeatureExtractor:
    """Fit a FeatureNet on `images` (in their units; stretched with `stretch` as the GAN sees them) to
    predict their standardised `targets`, through the engine on the CPU (where `features` runs)."""
    cols = targets(images)
    y = np.stack(list(cols.values()), axis=1)                       # (N, T)
    y = (y - y.mean(axis=0)) / np.maximum(y.std(axis=0), 1e-12)
    x = torch.from_numpy(stretch.forward(images.pixels))            # (N, C, H, W)
    with torch.random.fork_rng(devices=[]):                         # initial weights from the seed, global state untouched
        torch.manual_seed(seed)
        net = FeatureNet(x.shape[1], y.shape[1])
    src = TensorSource({"x": x, "y": torch.from_numpy(y.astype(np.float32))}, min(batch, len(x)), seed=seed)
    cfg = EngineConfig(epochs=epochs, patience=None, clip=None, seed=seed, device="cpu", progress=False)
    engine_train(FeatureObjective(net), src, None, cfg)
    return FeatureExtractor(net, list(cols))
