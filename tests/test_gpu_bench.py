"""``benchmarks/gpu.py --quick`` runs on CPU and writes its JSON and markdown."""

import json

import pytest

from benchmarks import gpu


@pytest.mark.slow  # 30 s; CI runs the slow tests after the default suite
def test_gpu_benchmark_quick_runs_on_cpu(tmp_path, capsys):
    result = gpu.main(["--quick", "--out", str(tmp_path)])
    capsys.readouterr()
    saved = json.loads((tmp_path / "gpu_quick.json").read_text())
    text = (tmp_path / "gpu_quick.md").read_text()
    assert saved["quick"] and saved["machine"]["device"] in text
    ms = saved["per_step"]["ms_per_step"]
    for noise in gpu.NOISES:
        for case in ("draw", "floor", "emcmc"):
            assert ms[f"mlp/{case}/{noise}"]["median"] > 0
    assert {"resnet18/grad", "resnet18/emcmc/gaussian", "mlp/sgld"} <= set(ms)
    labels = {(r["ratio"], r["model"]) for r in saved["per_step"]["ratios"]}
    assert ("emcmc / floor (rademacher)", "mlp") in labels
    assert ("emcmc / floor (gaussian)", "resnet18") in labels
    chains = [r["chains"] for r in saved["chains"]["rows"]]
    assert chains == list(gpu.QUICK.chains["mlp_small"])
    assert all(r["chain_steps_per_s"] > 0 for r in saved["chains"]["rows"])
    assert result["targets"] and all(t["holds"] in (True, False) for t in result["targets"])
