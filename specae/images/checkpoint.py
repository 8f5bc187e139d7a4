"""GAN checkpoints: a directory GAN/ holding

    generator/      config.json (the network and the flux stretch, plain JSON) + weights.pt (tensors only)
    discriminator/  the same, so D works alone as a real/generated scorer
    features/       the in-house feature extractor for the metrics (written by evaluation)
    gan.json        training settings and the data trained on; history.json, train_state.pt (the engine's)

Every weights.pt is read with torch.load(weights_only=True), so a checkpoint can never run code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from specae import checkpoints
from specae.checkpoints import cpu_tensors, load_tensors, reading, require_files
from specae.errors import SpecaeError
from specae.images.models import NetConfig, build_discriminator, build_generator
from specae.images.transforms import AsinhStretch

BUILDERS = {"generator": build_generator, "discriminator": build_discriminator}


def write_checkpoint(directory, config: dict, module: nn.Module) -> None:
    """`directory`/config.json (plain JSON) and weights.pt (the module's tensors, on the CPU), each atomically."""
    checkpoints.write_checkpoint(directory, {"weights.pt": cpu_tensors(module), "config.json": config})


def read_checkpoint(directory, kind: str, build) -> tuple[nn.Module, dict]:
    """(module in eval mode on the CPU, config) from a directory written by `write_checkpoint` whose config
    has "kind" == `kind`; `build(config)` makes the empty module. SpecaeError for anything else."""
    d = Path(directory)
    require_files(d, ("config.json", "weights.pt"), f"{kind} checkpoint")
    with reading(d, f"{kind} checkpoint"):
        config = json.loads((d / "config.json").read_text())
        if not isinstance(config, dict) or config.get("kind") != kind:
            raise ValueError(f"config.json does not describe a {kind}")
        module = build(config)
        module.load_state_dict(load_tensors(d / "weights.pt"))
    return module.eval(), config


def save_net(module: nn.Module, role: str, net: NetConfig, stretch: AsinhStretch, directory) -> None:
    """Write a generator or discriminator (`role`) with its network config and flux stretch."""
    write_checkpoint(directory, {"kind": role, "net": net.to_dict(), "stretch": stretch.to_dict()}, module)


def load_net(directory, role: str) -> tuple[nn.Module, NetConfig, AsinhStretch]:
    """(network, NetConfig, AsinhStretch) from GAN/generator or GAN/discriminator."""
    module, config = read_checkpoint(directory, role, lambda c: BUILDERS[role](NetConfig.from_dict(c["net"])))
    return module, module.cfg, AsinhStretch.from_dict(config["stretch"])


@dataclass
class GAN:
    """A trained GAN: networks in eval mode (on the CPU), the stretch to the images' units, gan.json."""
    generator: nn.Module
    discriminator: nn.Module
    net: NetConfig
    stretch: AsinhStretch
    info: dict
    directory: Path


def load_gan(directory) -> GAN:
    """The GAN in `directory` (written by `fit_gan` / `specae gan train`)."""
    d = Path(directory)
    if not (d / "gan.json").is_file():
        raise SpecaeError(f"{d}: not a specae GAN (missing gan.json)")
    try:
        info = json.loads((d / "gan.json").read_text())
    except (OSError, ValueError) as e:
        raise SpecaeError(f"{d / 'gan.json'}: damaged ({str(e).splitlines()[0]})") from None
    g, net, stretch = load_net(d / "generator", "generator")
    disc, _, _ = load_net(d / "discriminator", "discriminator")
    return GAN(g, disc, net, stretch, info, d)
