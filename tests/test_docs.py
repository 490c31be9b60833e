"""The documentation site builds with ``mkdocs build --strict`` (needs the ``docs`` extra).

Strict mode turns every warning into an error: a cross-reference to a flatjax object that
does not exist, a docstring parameter that is not in the signature, a missing page or an
included benchmark file that is gone all fail the build.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("mkdocs", reason="install the docs extra: pip install -e '.[docs]'")
pytest.importorskip("mkdocstrings_handlers.python", reason="install the docs extra")


@pytest.mark.slow
def test_docs_build_strict(tmp_path: Path) -> None:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert (tmp_path / "api" / "sgmcmc" / "emcmc" / "index.html").exists()
