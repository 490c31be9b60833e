"""MkDocs hooks: publish the benchmark figures next to the results page.

The figures live in ``benchmarks/results/`` (written by the benchmark scripts); they are
added to the site as ``assets/<name>.png`` at build time instead of being copied into
``docs/``, so the page always shows the figure of the last benchmark run.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def on_files(files: Files, config) -> Files:
    """Add every ``benchmarks/results/*.png`` as ``assets/<name>.png``."""
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"assets/{png.name}", abs_src_path=str(png)))
    return files
