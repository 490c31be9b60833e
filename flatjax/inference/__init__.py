"""Run loop (epochs in ``lax.scan``, vmapped chains), streaming BMA, optax baselines."""

from flatjax.inference import bma, loop, optimizer
from flatjax.inference.loop import DivergenceError, RunResult, every, last_epochs_of_cycles, run

__all__ = [
    "DivergenceError",
    "RunResult",
    "bma",
    "every",
    "last_epochs_of_cycles",
    "loop",
    "optimizer",
    "run",
]
