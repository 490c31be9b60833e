"""Fixtures shared by the statistical tests.

Every statistical test records the numbers it measured (max |z|, estimates and
exact values) in the module-scoped ``record`` dict. They are printed with
``pytest -s`` and, when the environment variable ``FLATJAX_RECORD_DIR`` is set,
written to ``$FLATJAX_RECORD_DIR/<name>.json`` (``<name>`` is the module's
``RECORD_NAME`` or its file name), merged with what is already there. This is how
``benchmarks/mixture_exactness.py`` writes ``benchmarks/results/``.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterator

import pytest

RECORD_DIR_ENV = "FLATJAX_RECORD_DIR"


@pytest.fixture(scope="module")
def record(request: pytest.FixtureRequest) -> Iterator[dict]:
    """A dict ``test name -> numbers``; printed, and saved as JSON when asked."""
    numbers: dict = {}
    yield numbers
    for name, value in numbers.items():
        print(f"\n[record] {name}: {json.dumps(value, sort_keys=True)}")
    out = os.environ.get(RECORD_DIR_ENV)
    if out and numbers:
        default = pathlib.Path(request.module.__file__).stem
        path = pathlib.Path(out) / f"{getattr(request.module, 'RECORD_NAME', default)}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = json.loads(path.read_text()) if path.exists() else {}
        merged.update(numbers)
        path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
