"""The training engine: one loop for every objective, the device/precision policy and DDP."""

from specae.engine.loop import Callback, EngineConfig, Objective, ProgressBar, StepContext, adamw, evaluate, train
from specae.engine.runtime import Runtime, resolve_device

__all__ = ["Callback", "EngineConfig", "Objective", "ProgressBar", "Runtime", "StepContext", "adamw", "evaluate",
           "resolve_device", "train"]
