"""Guide pages whose Python snippets form one program run top to bottom.

Most guide pages show fragments (``grad_fn``, ``params`` come from the reader's own code);
the pages listed here are written to run as they stand. Their ```` ```python ```` blocks
are executed in order, in one namespace, in a fresh interpreter (as a reader pasting them
would), with XLA's backend optimisation off to halve the compile time on CPU.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNABLE_PAGES = ["docs/guide/nnx.md"]
#: (page, "## heading"): sections of pages that are otherwise fragments, run on their own
RUNNABLE_SECTIONS = [
    ("docs/guide/sabma.md", "## From your own pretrained network"),
    ("docs/guide/run_loop.md", "## Driving the loop yourself"),
]

RUNNER = """
import re, sys
text = open(sys.argv[1]).read()
if len(sys.argv) > 2:  # one section: from its heading to the next heading of its level
    start = text.index(sys.argv[2] + "\\n")
    level = sys.argv[2].split(" ")[0] + " "
    rest = text[start + len(sys.argv[2]) :]
    ends = [m.start() for m in re.finditer("^" + level, rest, flags=re.M)]
    text = rest[: ends[0]] if ends else rest
namespace = {"__name__": "__main__"}
for i, block in enumerate(re.findall(r"^```python\\n(.*?)^```", text, flags=re.S | re.M)):
    exec(compile(block, f"{sys.argv[1]}, python block {i + 1}", "exec"), namespace)
    print(f"block {i + 1} ok", flush=True)
"""


def python_blocks(page: str, heading: str | None = None) -> list[str]:
    text = (ROOT / page).read_text()
    if heading is not None:
        rest = text[text.index(heading + "\n") + len(heading) :]
        level = heading.split(" ")[0] + " "
        end = re.search("^" + level, rest, flags=re.M)
        text = rest[: end.start()] if end else rest
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.mark.parametrize(
    ("page", "heading"),
    [(p, None) for p in RUNNABLE_PAGES] + RUNNABLE_SECTIONS,
)
def test_page_snippets_run(page: str, heading: str | None) -> None:
    num_blocks = len(python_blocks(page, heading))
    assert num_blocks > 0, f"{page} {heading or ''} has no python blocks"
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(ROOT / page), *([heading] if heading else [])],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-4000:]}"
    assert f"block {num_blocks} ok" in proc.stdout, proc.stdout
