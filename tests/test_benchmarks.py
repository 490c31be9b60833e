"""The claim benchmarks must keep running: a smoke run of the cheapest one."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_benchmark_entry_point_runs_a_claim(tmp_path):
    env = {**os.environ, "FLATJAX_BENCH_SMOKE": "1", "FLATJAX_BENCH_RESULTS": str(tmp_path)}
    subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--only", "eta_sweep"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=300,
        capture_output=True,
    )
    result = json.loads((tmp_path / "eta_sweep_quick.json").read_text())
    assert [e["eta"] for e in result["sweep"]] == [1e-3, 1e-1]
    for entry in result["sweep"]:
        assert 0.0 <= entry["stats"]["theta"]["accuracy"]["mean"] <= 1.0
    assert (tmp_path / "eta_sweep_quick.md").exists()
    assert (tmp_path / "eta_sweep_quick.png").exists()


@pytest.mark.slow
def test_classification_smoke_scores_both_ood_sets(tmp_path):
    env = {**os.environ, "FLATJAX_BENCH_SMOKE": "1", "FLATJAX_BENCH_RESULTS": str(tmp_path)}
    subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--only", "classification"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=300,
        capture_output=True,
    )
    result = json.loads((tmp_path / "classification_quick.json").read_text())
    methods = result["models"]["mlp"]["methods"]
    assert {"emcmc (pooled)", "sam", "swag"} <= set(methods)
    for entry in methods.values():
        assert 0.0 <= entry["stats"]["ood_noise_auroc"]["mean"] <= 1.0
    grads = {k: v["stats"]["gradient_evaluations_per_chain"]["mean"] for k, v in methods.items()}
    assert grads["sam"] == grads["swag"] == grads["emcmc (theta)"]
    assert (tmp_path / "classification_quick.md").exists()
