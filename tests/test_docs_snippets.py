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

RUNNER = """
import re, sys
text = open(sys.argv[1]).read()
namespace = {"__name__": "__main__"}
for i, block in enumerate(re.findall(r"^```python\\n(.*?)^```", text, flags=re.S | re.M)):
    exec(compile(block, f"{sys.argv[1]}, python block {i + 1}", "exec"), namespace)
    print(f"block {i + 1} ok", flush=True)
"""


def python_blocks(page: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (ROOT / page).read_text(), flags=re.S | re.M)


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_page_snippets_run(page: str) -> None:
    num_blocks = len(python_blocks(page))
    assert num_blocks > 0, f"{page} has no python blocks"
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(ROOT / page)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-4000:]}"
    assert f"block {num_blocks} ok" in proc.stdout, proc.stdout
