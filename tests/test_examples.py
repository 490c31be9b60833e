"""Every script in ``examples/`` runs in quick mode and prints its table.

Each example runs in a fresh interpreter (as a user would run it) with
``FLATJAX_EXAMPLES_QUICK=1``. The subprocesses compile with XLA's backend optimisation
off (``--xla_backend_optimization_level=0``): on CPU that halves the compile time,
which is most of a quick run, and changes no result the tests look at.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FLOAT = r"[-+]?\d+\.\d+(?:e[-+]?\d+)?"


def run_example(name: str) -> str:
    """Run ``examples/<name>`` in quick mode; return its stdout, fail with its output."""
    env = dict(os.environ, FLATJAX_EXAMPLES_QUICK="1")
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=EXAMPLES.parent,
    )
    assert proc.returncode == 0, (
        f"{name} exited with {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n"
        f"{proc.stderr[-4000:]}"
    )
    return proc.stdout


def row(stdout: str, label: str, num_values: int) -> list[float]:
    """The numbers of the table row that starts with ``label``."""
    pattern = rf"^{re.escape(label)}\s+" + r"\s+".join([f"({FLOAT})"] * num_values) + r"\s*$"
    match = re.search(pattern, stdout, flags=re.MULTILINE)
    assert match, f"no row {label!r} with {num_values} numbers in:\n{stdout}"
    return [float(v) for v in match.groups()]


TESTED = {
    "quickstart.py",
    "flax_bnn_emcmc_vs_sgld.py",
    "nuts_on_the_joint.py",
    "multi_device_chains.py",
    "nnx_emcmc.py",
    "transfer_sabma.py",
}


def test_every_example_has_a_test() -> None:
    untested = {p.name for p in EXAMPLES.glob("*.py")} - TESTED
    assert not untested, f"add a test to tests/test_examples.py for {sorted(untested)}"


def test_quickstart() -> None:
    out = run_example("quickstart.py")
    assert re.search(r"samples\s+ACC\s+NLL\s+ECE\s+Brier", out), out
    for name in ("theta", "guide"):
        acc, nll, ece, brier = row(out, name, 4)
        assert 0.1 < acc <= 1.0 and nll > 0 and 0 <= ece <= 1 and 0 <= brier <= 2


def test_flax_bnn_emcmc_vs_sgld() -> None:
    out = run_example("flax_bnn_emcmc_vs_sgld.py")
    assert re.search(r"method\s+ACC\s+NLL\s+ECE-15w\s+ECE-10m", out), out
    for name in ("SGLD (blackjax) theta", "Entropy-MCMC theta", "Entropy-MCMC guide"):
        acc, nll, ece_width, ece_mass = row(out, name, 4)
        assert 0.1 < acc <= 1.0 and nll > 0 and 0 <= ece_width <= 1 and 0 <= ece_mass <= 1


def test_nuts_on_the_joint() -> None:
    out = run_example("nuts_on_the_joint.py")
    assert "P(|x - mode| < 0.5)" in out, out
    exact = {}
    for variable in ("theta", "guide"):
        for mode in ("sharp", "flat"):
            estimate, two_mcse, exact[variable, mode] = row(out, f"{variable:<9} {mode}", 3)
            assert 0 <= estimate <= 1 and two_mcse >= 0
    # the exact column (quadrature in the example) against closed forms for the disc
    # around a component's own centre, plus the other component's small share
    assert exact["theta", "sharp"] == pytest.approx(0.3018, abs=2e-4)
    assert exact["guide", "sharp"] < exact["guide", "flat"] < exact["theta", "flat"]


def test_multi_device_chains() -> None:
    out = run_example("multi_device_chains.py")
    assert re.search(r"^4 devices: ", out, flags=re.MULTILINE), out
    assert "P('chains',)" in out, out
    for layout in ("1 device", "4 x 1 (chains x data)"):
        match = re.search(rf"^{re.escape(layout)}\s.*?({FLOAT})\s+({FLOAT})\s*$", out, re.M)
        assert match, out
        diff, acc = (float(v) for v in match.groups())
        assert diff < 1e-3 and 0.1 < acc <= 1.0


def test_transfer_sabma() -> None:
    out = run_example("transfer_sabma.py")
    assert re.search(r"method\s+ACC\s+NLL\s+ECE\s+NLL-TS\s+ECE-TS\s+lambda1", out), out
    for method in ("sabma", "sgd", "swag"):
        acc, nll, ece, nll_ts, ece_ts, lam = row(out, method, 6)
        assert 0.0 < acc <= 1.0 and nll > 0 and nll_ts > 0 and 0 <= ece <= 1 and lam > 0


def test_nnx_emcmc() -> None:
    out = run_example("nnx_emcmc.py")
    assert re.search(r"samples\s+ACC\s+NLL\s+ECE", out), out
    for name in ("theta", "guide"):
        acc, nll, ece = row(out, name, 3)
        assert 0.5 < acc <= 1.0 and nll > 0 and 0 <= ece <= 1
