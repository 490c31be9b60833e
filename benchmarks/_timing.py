"""Shared timing harness of the speed benchmarks: interleaved rounds, paired ratios.

Every case is a no-argument callable. :func:`measure` times each case once per round,
in a fresh random order every round, so that slow drifts of a shared machine's load hit
all cases alike; :func:`paired` takes the ratio of two cases *within* each round before
summarising over rounds (:func:`summary`: median and quartiles). Both wall-clock time
and the process's CPU time (all threads) are recorded.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import blackjax
import jax
import numpy as np

import flatjax

__all__ = ["load_average", "machine_info", "measure", "paired", "summary"]


def measure(
    cases: Mapping[str, Callable[[], Any]],
    rounds: int,
    seed: int,
    label: str = "",
    verbose: bool = True,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds of each case in ``rounds`` rounds, in a random order each round.

    Returns wall-clock times (``perf_counter``) and the process's CPU times (all
    threads; less sensitive to other processes on a shared machine), each as
    ``{case: [one value per round]}``. A case's result is passed to
    ``jax.block_until_ready``, so JAX's asynchronous work is counted.
    """
    rng = random.Random(seed)
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(rounds):
        rng.shuffle(names)
        for name in names:
            start, start_cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(cases[name]())
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
        if verbose:
            total = sum(t[-1] for t in wall.values())
            prefix = f"{label} " if label else ""
            print(f"  {prefix}round {r + 1}/{rounds}: {total:.1f} s", file=sys.stderr, flush=True)
    return wall, cpu


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles and IQR of ``values``.

    Examples
    --------
    >>> summary([1.0, 2.0, 3.0, 4.0, 5.0])
    {'median': 3.0, 'q25': 2.0, 'q75': 4.0, 'iqr': 2.0}
    """
    q25, q50, q75 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return {"median": float(q50), "q25": float(q25), "q75": float(q75), "iqr": float(q75 - q25)}


def paired(
    wall: Mapping[str, Sequence[float]],
    cpu: Mapping[str, Sequence[float]],
    steps: Mapping[str, int] | None,
    num: str,
    den: str,
) -> dict:
    """Summary of the per-round ratios ``num / den`` of wall and CPU times.

    With ``steps`` (``{case: work units per call}``) the ratios are of times per unit,
    ``(wall[num] / steps[num]) / (wall[den] / steps[den])``; with ``None`` of the raw
    times. Returns :func:`summary` of the wall-clock ratios, their values (``raw``),
    and the same for the CPU-time ratios under ``cpu_time``.

    Examples
    --------
    >>> wall = {"a": [2.0, 4.0, 9.0], "b": [1.0, 2.0, 3.0]}
    >>> r = paired(wall, wall, None, "a", "b")
    >>> r["median"], r["raw"]
    (2.0, [2.0, 2.0, 3.0])
    >>> paired(wall, wall, {"a": 2, "b": 1}, "a", "b")["median"]
    1.0
    """
    scale = 1.0 if steps is None else steps[den] / steps[num]
    ratios = [scale * a / b for a, b in zip(wall[num], wall[den], strict=True)]
    ratios_cpu = [scale * a / b for a, b in zip(cpu[num], cpu[den], strict=True)]
    return {
        **summary(ratios),
        "raw": ratios,
        "cpu_time": {**summary(ratios_cpu), "raw": ratios_cpu},
    }


def scan_steps(step: Callable) -> Callable:
    """``run(state, keys, idx, step_sizes, data)``: ``len(keys)`` steps in one scan.

    ``step(rng_key, state, minibatch, step_size) -> state`` is a kernel's step; step
    ``i`` uses ``keys[i]``, ``step_sizes[i]`` and the minibatch ``data[idx[i]]``, so
    that a timed call runs many steps on device-resident data in one ``lax.scan``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> run = scan_steps(lambda key, state, batch, h: state + h * batch.sum())
    >>> data = jnp.arange(4.0)
    >>> float(run(0.0, jnp.zeros(2), jnp.array([[0, 1], [2, 3]]), jnp.ones(2), data))
    6.0
    """

    def run(state, keys, idx, step_sizes, data):
        def body(state, xs):
            key, i, h = xs
            minibatch = jax.tree.map(lambda a: a[i], data)
            return step(key, state, minibatch, h), None

        return jax.lax.scan(body, state, (keys, idx, step_sizes))[0]

    return run


def write_results(
    out: str | os.PathLike, stem: str, result: dict, markdown: Callable[[dict], str]
) -> str:
    """Write ``out/stem.json`` and ``out/stem.md`` (``markdown(result)``); return the text."""
    directory = pathlib.Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    text = markdown(result)
    (directory / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (directory / f"{stem}.md").write_text(text)
    return text


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, rounded (``None`` where unavailable)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info() -> dict:
    """Versions, CPU count, load and date, for the record."""
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jax": jax.__version__,
        "jaxlib": importlib.metadata.version("jaxlib"),
        "blackjax": blackjax.__version__,
        "flatjax": flatjax.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
    }
