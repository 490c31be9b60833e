"""Run loop (epochs in ``lax.scan``, vmapped chains), streaming BMA, optax baselines."""

from flatjax.inference import (
    bma,
    checkpoint,
    compile_cache,
    diagnostics,
    loop,
    optimizer,
    sharding,
)
from flatjax.inference.loop import DivergenceError, RunResult, every, last_epochs_of_cycles, run

__all__ = [
    "DivergenceError",
    "RunResult",
    "bma",
    "checkpoint",
    "compile_cache",
    "diagnostics",
    "every",
    "last_epochs_of_cycles",
    "loop",
    "optimizer",
    "run",
    "sharding",
]
