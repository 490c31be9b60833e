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


@pytest.mark.slow
def test_sabma_cost_smoke_times_the_mlp_and_the_resnet_transfer_step(tmp_path):
    subprocess.run(
        [sys.executable, "benchmarks/sabma_cost.py", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        check=True,
        timeout=600,
        capture_output=True,
    )
    result = json.loads((tmp_path / "sabma_cost_quick.json").read_text())
    ratios = {(r["model"], r["variant"], r["versus"]): r for r in result["per_step"]["ratios"]}
    assert ("resnet4", "sabma_transfer", "sgd_transfer") in ratios
    transfer = ratios[("resnet4", "sabma_transfer", "sgd")]
    assert transfer["target"] == 2.2 and transfer["median"] > 0
    targeted = {t["what"].split(" / ")[0] for t in result["targets"] if " / sgd" in t["what"]}
    assert {"sabma_mean", "sabma_exact5", "sabma_transfer"} <= targeted
    text = (tmp_path / "sabma_cost_quick.md").read_text()
    assert "**Per model.**" in text and "resnet4 (ResNet-18 (FRN" in text


@pytest.mark.slow
def test_compile_reuse_smoke_reruns_the_main_job_without_compiling(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "benchmarks.compile_reuse", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        check=True,
        timeout=600,
        capture_output=True,
    )
    result = json.loads((tmp_path / "compile_reuse_quick.json").read_text())
    assert result["first"]["compiles"] > 0
    assert [c["compiles"] for c in result["calls"]["reused"]] == [0, 0]
    assert all(c["compiles"] > 0 for c in result["calls"]["recompiled"])
    assert result["same_accuracy_every_call"]
    assert (tmp_path / "compile_reuse_quick.md").exists()
