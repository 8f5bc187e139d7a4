"""Where and how training and inference run: device, precision and the distributed group, decided once.

Every training run, evaluation and denoising pass takes a `Runtime` instead of deciding for itself, so
the `--device` and `--precision` options mean the same everywhere. Precision is a policy: "bf16" runs
the networks under autocast (matrix products and convolutions in bfloat16, reductions and losses in
float32); wavelength grids stay in float64 outside autocast.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from specae.errors import SpecaeError

PRECISIONS = ("fp32", "bf16")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N' -> a torch.device that exists here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise SpecaeError(f"--device {name} was requested but no CUDA device is available")
        try:
            device = torch.device(name)
        except RuntimeError:
            raise SpecaeError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SpecaeError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
        return device
    raise SpecaeError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)")


# The handles of the last finished collectives. gloo's worker thread drops its own reference to a
# collective after the caller has moved on; when that drop frees the tensors it must take the GIL, and
# if the interpreter is exiting by then the thread dies inside a destructor and aborts the process
# (SIGABRT after every file is written: torchrun reports a failed run). Holding the handle makes the
# caller's thread free the tensors instead.
_finished = collections.deque(maxlen=16)


def _wait(work) -> None:
    work.wait()
    _finished.append(work)


def _leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@dataclass
class Runtime:
    device: torch.device
    precision: str = "fp32"
    rank: int = 0
    world: int = 1

    @classmethod
    def create(cls, device: str = "auto", precision: str = "fp32", distributed: bool = False) -> "Runtime":
        """The runtime for this process; with `distributed`, join the torchrun group (NCCL on GPUs, gloo
        on CPUs) and take this rank's GPU (LOCAL_RANK) when the device is CUDA."""
        if precision not in PRECISIONS:
            raise SpecaeError(f"unknown precision {precision!r} (use {' or '.join(PRECISIONS)})")
        dev = resolve_device(device)
        if not distributed:
            return cls(dev, precision)
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise SpecaeError("--distributed needs to be started by torchrun (RANK and WORLD_SIZE are not set)")
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
            atexit.register(_leave_group)
        return cls(dev, precision, dist.get_rank(), dist.get_world_size())

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        """The precision policy as a context manager (a no-op for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    # -- collectives (no-ops in a single process) ------------------------------------------------
    def all_reduce(self, t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        if self.distributed:
            _wait(dist.all_reduce(t, op=op, async_op=True))
        return t

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's value of `t` on every rank."""
        if self.distributed:
            _wait(dist.broadcast(t, src=0, async_op=True))
        return t
