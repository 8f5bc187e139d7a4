"""The one training loop: every objective (VAE/AE, GAN) trains through `train`.

An `Objective` says what one optimisation step and one evaluation step are; the loop owns everything
else: device and precision (`Runtime`), DistributedDataParallel, the learning-rate schedule, the time
budget, early stopping, skipping non-finite steps, checkpoints and resume, and reporting through
callbacks. On a GPU the loop never waits for the device inside a step: losses are accumulated on the
device and read, together with the divergence check and the clock, every `sync_every` steps.

Checkpoints in `out_dir`: the objective's own export of the best model (e.g. config.json + weights.pt),
`train_state.pt` (STATE) with the *last* state (weights, optimizers, schedulers, counters; loaded with
weights_only=True) and `history.json`. `resume=True` continues from the last state; because each
epoch's random numbers are seeded from (seed, epoch, rank), a run killed and resumed retraces the
uninterrupted one. The state is several times the model's size: a caller that is done with the run
removes it (`remove_state`).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import pickle
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from specae.checkpoints import write_checkpoint
from specae.engine.runtime import Runtime
from specae.errors import SpecaeError
from specae.plumbing import mix_seed

STATE = "train_state.pt"   # the last state of a run, for resume

@dataclass
class EngineConfig:
    """What every training run shares; objectives extend it with their own settings."""
    epochs: int = 200
    max_minutes: float | None = None   # wall-clock budget; the best model so far is kept
    patience: int | None = 15          # epochs without improvement of the monitored metric before stopping
    clip: float | None = 5.0           # gradient-norm clip per optimizer step
    warmup_steps: int | None = None    # linear warm-up; default min(200, 2 epochs)
    min_lr: float = 0.05               # the cosine schedule ends at this fraction of the base rate
    seed: int = 0
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    precision: str = "fp32"            # fp32 | bf16 (autocast, same in training and evaluation)
    distributed: bool = False          # join the torchrun group (DDP)
    sync_every: int | None = None      # steps between host synchronisations (default 1 on CPU, 50 on GPU)
    max_bad_steps: int = 10            # consecutive non-finite losses before giving up
    ema: float | None = None           # decay of an exponential moving average of the weights, which is
                                       # then what is evaluated, kept and exported (None: the weights)
    eval_start: bool = True            # keep the untrained start if no epoch beats it (it may already be good)
    progress: bool = True


class Objective(ABC):
    """What the engine trains. Subclasses set `monitor` (a key of `summarise`'s result to minimise, or
    None to keep the last state) and `schedule` ("cosine" or "constant"), and implement the methods."""

    monitor: str | None = None
    schedule: str = "cosine"

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """The trained modules by name; the engine moves them to the device and checkpoints them."""

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One optimizer per name; called after the modules are on the device."""

    @abstractmethod
    def train_step(self, batch: dict, ctx: "StepContext") -> dict[str, torch.Tensor]:
        """One optimisation step on `batch`; returns 0-d device tensors to average over the epoch.
        Forward passes use `ctx.trained(name)` (the DDP wrapper when distributed) under `ctx.autocast()`;
        updates go through `ctx.optimizer_step(name, loss)`."""

    def eval_step(self, batch: dict, ctx: "StepContext") -> dict[str, torch.Tensor]:
        """Sums over `batch` (0-d device tensors), added over batches and ranks, then `summarise`d."""
        return {}

    def summarise(self, sums: dict[str, float]) -> dict[str, float]:
        return {}

    def export(self, directory: Path, history: dict) -> None:
        """Write the current (best) model to `directory` in the objective's own format."""


class StepContext:
    """What a step sees: runtime, epoch and step counters, the device generator, the (wrapped) modules
    and the optimizer update with its bookkeeping of non-finite losses (kept on the device)."""

    def __init__(self, rt: Runtime, wrapped: dict, opts: dict, scheds: dict, clip: float | None, seed: int = 0):
        self.rt, self.wrapped, self.opts, self.scheds, self.clip, self.seed = rt, wrapped, opts, scheds, clip, seed
        self.epoch = self.step = 0
        self.exported = False   # a best model has been written to the output directory
        self.generator = torch.Generator(device=rt.device)
        self.bad_run = torch.zeros((), device=rt.device)
        self.bad_total = torch.zeros((), device=rt.device)

    @property
    def device(self) -> torch.device:
        return self.rt.device

    def autocast(self):
        return self.rt.autocast()

    def trained(self, name: str) -> nn.Module:
        return self.wrapped[name]

    def optimizer_step(self, name: str, loss: torch.Tensor) -> None:
        """zero_grad, backward, clip and step optimizer `name`; a step whose loss or gradient norm is not
        finite is skipped entirely (weights, moments and step count unchanged).

        With a fused optimizer (see `adamw`) the skip is decided on the device, so the host never waits;
        other optimizers are checked on the host. A run of `max_bad_steps` skipped steps stops training
        at the next synchronisation.
        """
        opt = self.opts[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.clip if self.clip else float("inf"))
        finite = torch.isfinite(loss.detach()) & torch.isfinite(norm)
        if opt.defaults.get("fused"):
            opt.grad_scale, opt.found_inf = None, (~finite).float()
            opt.step()
            del opt.grad_scale, opt.found_inf
        elif bool(finite):
            opt.step()
        self.scheds[name].step()
        bad = (~finite).float()
        self.bad_run = (self.bad_run + 1) * bad
        self.bad_total = self.bad_total + bad


def adamw(params, lr: float, **kw) -> torch.optim.AdamW:
    """AdamW, fused where this torch supports it: one kernel per step, and non-finite steps
    skipped on the device (StepContext.optimizer_step)."""
    try:
        return torch.optim.AdamW(params, lr=lr, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, **kw)


class Callback:
    """Hooks for reporting; the loop calls them on rank 0 only."""

    def on_train_start(self, info: dict) -> None: ...
    def on_epoch_end(self, record: dict) -> None: ...
    def on_train_end(self, history: dict) -> None: ...


class ProgressBar(Callback):
    """A tqdm bar over epochs with the latest train and validation figures."""

    def on_train_start(self, info):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=info["epochs"], initial=info["start_epoch"], desc="training", unit="epoch")

    def on_epoch_end(self, record):
        self.bar.update(1)
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in record.items()
                              if k.startswith(("train_", "val_")) and k not in ("train_seconds", "train_steps")})

    def on_train_end(self, history):
        self.bar.close()


class _Average:
    """Exponential moving average of the trained parameters, updated on the device after every step. The
    decay warms up as min(decay, (1 + step) / (10 + step)), so the average forgets the untrained start
    within the first steps instead of carrying it for 1 / (1 - decay) of them."""

    def __init__(self, mods: dict, decay: float):
        self.decay = decay
        self.live = [p for m in mods.values() for p in m.parameters() if p.requires_grad]
        self.avg = [p.detach().clone() for p in self.live]

    def update(self, step: int, taken: torch.Tensor) -> None:
        """Move the average towards the weights; `taken` (0-d, on the device) is 0 when the step was
        skipped (a non-finite loss), so the average then stays where it is."""
        decay = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            diff = torch._foreach_sub([p.detach() for p in self.live], self.avg)
            torch._foreach_mul_(diff, (1 - decay) * taken)
            torch._foreach_add_(self.avg, diff)

    @contextlib.contextmanager
    def swapped(self):
        """The averaged weights in the modules for the duration of the block."""
        with torch.no_grad():
            saved = [p.detach().clone() for p in self.live]
            for p, a in zip(self.live, self.avg):
                p.copy_(a)
            try:
                yield
            finally:
                for p, v in zip(self.live, saved):
                    p.copy_(v)


def _clone(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _load_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, IndexError, pickle.UnpicklingError) as e:
        raise SpecaeError(f"{path}: damaged training state, cannot resume ({str(e).splitlines()[0]}); "
                          f"delete it to train afresh") from None


def load_history(path: Path) -> dict:
    try:
        history = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SpecaeError(f"{path}: damaged history, cannot resume ({str(e).splitlines()[0]})") from None
    if not isinstance(history, dict) or not isinstance(history.get("epoch", []), list):
        raise SpecaeError(f"{path}: damaged history, cannot resume (not a specae history)")
    return history


def _schedule(kind: str, cfg: EngineConfig, total: int, warm: int, clock: dict):
    if kind == "constant":
        return lambda s: 1.0

    def factor(s: int) -> float:
        # cosine decay to the end of the epochs or of the time budget, whichever comes first
        done = min(max(s / max(total, 1), clock["progress"]), 1.0)
        return min(1.0, (s + 1) / warm) * (cfg.min_lr + (1 - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * done)))
    return factor


# No buffer broadcast before each forward pass: the spectrum models' buffers never change in training,
# and a GAN's batch-norm statistics are recomputed after it. torch >= 2.13 names the option
# forward_sync_buffers (and deprecates broadcast_buffers).
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})


def train(objective: Objective, train_src, val_src, cfg: EngineConfig, out_dir=None, resume: bool = False,
          callbacks: tuple = (), runtime: Runtime | None = None, extra_history: dict | None = None) -> dict:
    """Train `objective` on batches of `train_src`, evaluating on `val_src` after every epoch.

    Sources provide `steps(world)` and `batches(epoch, rank, world)` (see specae.data.sources) and an
    optional on-device `transform`. Returns the history; the objective's modules hold the best state
    (or the last, when the objective monitors nothing).
    """
    rt = runtime or Runtime.create(cfg.device, cfg.precision, cfg.distributed)
    out = Path(out_dir) if out_dir else None
    mods = objective.modules()
    for m in mods.values():
        m.to(rt.device)
    # modules nothing trains (e.g. an EMA copy) stay unwrapped: DDP refuses a module without gradients
    wrapped = {k: (DistributedDataParallel(m, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                                           **_NO_BUFFER_SYNC)
                   if rt.distributed and any(p.requires_grad for p in m.parameters()) else m)
               for k, m in mods.items()}
    opts = objective.optimizers()
    steps_per_epoch = train_src.steps(rt.world)
    if steps_per_epoch < 1:
        raise SpecaeError(f"too few training rows ({len(train_src)}) for {rt.world} rank(s)")
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_steps or min(200, 2 * steps_per_epoch)
    clock = {"progress": 0.0}
    scheds = {k: torch.optim.lr_scheduler.LambdaLR(o, _schedule(objective.schedule, cfg, total, warm, clock))
              for k, o in opts.items()}
    ctx = StepContext(rt, wrapped, opts, scheds, cfg.clip, cfg.seed)
    sync_every = cfg.sync_every or (1 if rt.device.type == "cpu" else 50)
    monitor = objective.monitor

    history = {"epoch": [], "lr": [], "best_epoch": -1, "skipped_steps": 0, "stopped": None,
               "engine_config": asdict(cfg), "world_size": rt.world, **(extra_history or {})}
    if monitor:
        history[f"best_val_{monitor}"] = math.inf
    best = {k: _clone(m) for k, m in mods.items()}
    average = _Average(mods, cfg.ema) if cfg.ema else None
    weights = average.swapped if average else contextlib.nullcontext
    since_best, start_epoch, step = 0, 0, 0
    if resume:
        if out is None or not (out / STATE).is_file():
            raise SpecaeError(f"--resume: no earlier run to continue in {out}")
        state = _load_state(out / STATE)
        try:
            for k, m in mods.items():
                m.load_state_dict(state["modules"][k])
            for k, o in opts.items():
                o.load_state_dict(state["optimizers"][k])
                scheds[k].load_state_dict(state["schedulers"][k])
            best = {k: {n: v.to(rt.device) for n, v in state["best"][k].items()} for k in mods}
            if average:
                average.avg = [v.to(rt.device) for v in state["average"]]
            start_epoch, step, since_best = int(state["epoch"]), int(state["step"]), int(state["since_best"])
            ctx.exported = True
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise SpecaeError(f"{out / STATE}: does not match this model, cannot resume "
                              f"({str(e).splitlines()[0]})") from None
        old = load_history(out / "history.json") if (out / "history.json").is_file() else {}
        history = {**history, **{k: v for k, v in old.items() if k not in ("engine_config", "stopped", "world_size")}}
        history["epoch"] = history["epoch"][:start_epoch]
        for k, v in list(history.items()):
            if isinstance(v, list) and k != "epoch":
                history[k] = v[:start_epoch]
    cbs = list(callbacks) if rt.is_main else []
    if cfg.progress and rt.is_main:
        cbs.append(ProgressBar())
    for cb in cbs:
        cb.on_train_start({"epochs": cfg.epochs, "start_epoch": start_epoch, "steps_per_epoch": steps_per_epoch})

    start = None   # the untrained state and its score: kept at the end if no epoch beats it
    if monitor and cfg.eval_start and not resume:
        with weights():
            score = evaluate(objective, val_src, ctx)
            start = (score[monitor], {k: _clone(m) for k, m in mods.items()})
        history["start"] = {f"val_{k}": v for k, v in score.items()}
    t0 = time.monotonic()   # the budget is this invocation's
    budget = 60 * cfg.max_minutes if cfg.max_minutes is not None else None
    stop = "epochs"
    ctx.step = step
    for epoch in range(start_epoch, cfg.epochs):
        ctx.epoch = epoch
        t_epoch = time.monotonic()
        torch.manual_seed(mix_seed(cfg.seed, epoch, rt.rank))
        ctx.generator.manual_seed(mix_seed(cfg.seed, epoch, rt.rank, 1))
        for m in mods.values():
            m.train()
        sums, n_steps, out_of_time = {}, 0, False
        for batch in train_src.batches(epoch, rt.rank, rt.world):
            batch = {k: v.to(rt.device, non_blocking=True) for k, v in batch.items()}
            if train_src.transform is not None:
                batch = train_src.transform(batch)
            metrics = objective.train_step(batch, ctx)
            if average:
                average.update(ctx.step, (ctx.bad_run == 0).float())
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            n_steps += 1
            ctx.step += 1
            if ctx.step % sync_every == 0:
                out_of_time = _sync(ctx, rt, cfg, clock, t0, budget, out, mods, best)
                if out_of_time:
                    break
        if not out_of_time:   # every rank took the same steps, so every rank syncs here too
            out_of_time = _sync(ctx, rt, cfg, clock, t0, budget, out, mods, best)
        train_seconds = time.monotonic() - t_epoch   # the sync above waited for the device
        with weights():
            val = evaluate(objective, val_src, ctx)
        record = {"epoch": epoch, **{f"train_{k}": float(v) / max(n_steps, 1) for k, v in sums.items()},
                  **{f"val_{k}": v for k, v in val.items()},
                  "lr": scheds[next(iter(scheds))].get_last_lr()[0], "train_seconds": train_seconds,
                  "train_steps": n_steps}
        for k, v in record.items():
            history.setdefault(k, []).append(v)
        history["skipped_steps"] = int(rt.all_reduce(ctx.bad_total.clone()).item())
        improved = monitor is None or record[f"val_{monitor}"] < history[f"best_val_{monitor}"]
        # rank 0 decides; every rank follows (their reduced metrics agree anyway, this makes it certain)
        decision = rt.broadcast(torch.tensor([float(improved)], device=rt.device))
        improved = bool(decision.item())
        if improved:
            since_best = 0
            history["best_epoch"] = epoch
            if monitor:
                history[f"best_val_{monitor}"] = record[f"val_{monitor}"]
            with weights():
                best = {k: _clone(m) for k, m in mods.items()}
                if out and rt.is_main:
                    objective.export(out, history)
                    ctx.exported = True
        else:
            since_best += 1
        history["minutes"] = (time.monotonic() - t0) / 60
        if out and rt.is_main:
            _save_state(out, mods, opts, scheds, best, epoch + 1, ctx.step, since_best, history,
                        average.avg if average else None)
        for cb in cbs:
            cb.on_epoch_end(record)
        if out_of_time:
            stop = "time budget"
            break
        if monitor and cfg.patience is not None and since_best >= cfg.patience:
            stop = "early stopping"
            break
        if budget is not None and _elapsed_on_rank0(rt, t0) > budget:
            stop = "time budget"
            break
    history["stopped"] = stop
    history["minutes"] = (time.monotonic() - t0) / 60
    if start is not None and start[0] < history[f"best_val_{monitor}"]:
        # training made it worse (a small set, say): the start is what the data support best
        best, history["best_epoch"], history[f"best_val_{monitor}"] = start[1], -1, start[0]
        if out and rt.is_main:
            for k, m in mods.items():
                m.load_state_dict(best[k])
            objective.export(out, history)
    for k, m in mods.items():
        m.load_state_dict(best[k])
        m.eval()
    for cb in cbs:
        cb.on_train_end(history)
    return history


def _elapsed_on_rank0(rt: Runtime, t0: float) -> float:
    return float(rt.broadcast(torch.tensor([time.monotonic() - t0], device=rt.device, dtype=torch.float64)).item())


def _sync(ctx: StepContext, rt: Runtime, cfg: EngineConfig, clock: dict, t0: float, budget, out, mods, best) -> bool:
    """The host synchronisation every few steps: divergence check, clock and time budget (rank 0's clock
    for every rank). Returns True when the time budget is spent."""
    flags = torch.stack([ctx.bad_run.float(), torch.tensor(time.monotonic() - t0, device=rt.device)
                         if rt.is_main else torch.zeros((), device=rt.device)]).double()
    flags = rt.all_reduce(flags, op=torch.distributed.ReduceOp.MAX).tolist()
    if flags[0] >= cfg.max_bad_steps:
        for k, m in mods.items():
            m.load_state_dict(best[k])
        raise SpecaeError(f"training diverged: {int(flags[0])} steps in a row had a non-finite loss"
                          + (f"; the best checkpoint so far is kept in {out}" if ctx.exported else ""))
    if budget:
        clock["progress"] = min(flags[1] / budget, 1.0)
        return flags[1] > budget
    return False


@torch.no_grad()
def evaluate(objective: Objective, src, ctx: StepContext) -> dict:
    """The objective's validation metrics: eval_step sums over this rank's batches, summed over ranks."""
    if src is None:
        return {}
    rt = ctx.rt
    for m in objective.modules().values():
        m.eval()
    ctx.generator.manual_seed(mix_seed(ctx.seed, 1 << 30))   # the same random numbers at every evaluation
    sums = {}
    for batch in src.batches(0, rt.rank, rt.world):
        batch = {k: v.to(rt.device, non_blocking=True) for k, v in batch.items()}
        if src.transform is not None:
            batch = src.transform(batch)
        with rt.autocast():
            out = objective.eval_step(batch, ctx)
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + v.detach().double()
    if not sums:
        return {}
    keys = sorted(sums)
    flat = rt.all_reduce(torch.stack([torch.as_tensor(sums[k], device=rt.device).double() for k in keys]))
    return objective.summarise(dict(zip(keys, flat.tolist())))


def _save_state(out: Path, mods, opts, scheds, best, epoch, step, since_best, history, average=None) -> None:
    state = {"epoch": epoch, "step": step, "since_best": since_best,
             "modules": {k: {n: v.detach().cpu() for n, v in m.state_dict().items()} for k, m in mods.items()},
             "best": {k: {n: v.detach().cpu() for n, v in s.items()} for k, s in best.items()},
             "optimizers": {k: o.state_dict() for k, o in opts.items()},
             "schedulers": {k: s.state_dict() for k, s in scheds.items()}}
    if average is not None:
        state["average"] = [v.detach().cpu() for v in average]
    write_checkpoint(out, {STATE: state, "history.json": history})


def remove_state(out_dir) -> None:
    """Delete the run's last state from `out_dir` once the run is done: --resume is then no longer possible."""
    (Path(out_dir) / STATE).unlink(missing_ok=True)
