"""``benchmarks/emcmc_value.py``: variant names, resumable records and the report."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.emcmc_value import variant  # noqa: E402


def test_variant_names_map_to_config_overrides():
    assert variant("csgld") == {"method": "csgld", "schedule": "cyclical"}
    assert variant("emcmc-const-r10-gwd0-eta0.004") == {
        "method": "emcmc",
        "schedule": "constant",
        "guide_step_ratio": 10.0,
        "guide_weight_decay": 0.0,
        "eta": 0.004,
    }
    assert variant("emcmc-r10-gwd0")["eta"] == 4e-4
    assert variant("emcmc-r4-etaauto")["eta"] == "auto"
    assert variant("emcmc") == {
        "method": "emcmc",
        "schedule": "cyclical",
        "guide_step_ratio": 1.0,
        "guide_weight_decay": None,
        "eta": 4e-4,
    }
    assert variant("emcmc-default") == {"method": "emcmc"}
    assert variant("emcmc-default-const") == {"method": "emcmc", "schedule": "constant"}
    assert variant("emcmc-default-exp0.5") == {"method": "emcmc", "exploration": 0.5}
    assert variant("sgld-cyc-wu0.5")["cycle_warmup"] == 0.5
    assert variant("emcmc-r1-gwd-eta0.0004")["guide_weight_decay"] is None
    assert variant("sgd-ref")["momentum"] == 0.0
    with pytest.raises(ValueError, match="suffix"):
        variant("emcmc-fast")
    with pytest.raises(ValueError, match="unknown variant"):
        variant("adam")


@pytest.mark.slow
def test_runs_are_recorded_once_and_reported(tmp_path):
    env = {**os.environ, "FLATJAX_BENCH_RESULTS": str(tmp_path)}
    argv = [sys.executable, "-m", "benchmarks.emcmc_value", "--data", "digits", "--epochs", "4"]
    argv += ["--chains", "1", "--seeds", "0", "--hidden", "16", "--no-shift", "--tag", "t"]
    argv += ["--variants", "sgld,emcmc-const-r4-gwd0-etaauto"]
    for _ in range(2):  # the second call finds both runs done and adds nothing
        subprocess.run(argv, cwd=ROOT, env=env, check=True, timeout=300, capture_output=True)
    records = [json.loads(x) for x in (tmp_path / "emcmc_value_t.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in records] == ["sgld", "emcmc-const-r4-gwd0-etaauto"]
    assert set(records[1]["sets"]) == {"theta", "guide", "pooled"}
    assert records[1]["eta"] > 0 and records[1]["config"]["guide_step_ratio"] == 4.0
    subprocess.run(
        [*argv[:3], "--tag", "t", "--report", "--against", "sgld"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=300,
        capture_output=True,
    )
    md = (tmp_path / "emcmc_value_t.md").read_text()
    assert "emcmc-const-r4-gwd0-etaauto (guide)" in md and "minus `sgld`" in md
    assert (tmp_path / "emcmc_value_t.png").exists()


def test_report_includes_only_runs_of_the_same_protocol(tmp_path, monkeypatch):
    import benchmarks.emcmc_value as ev

    def record(variant, epochs, seed, lr=0.5):
        config = {k: 1 for k in ev.SAME_CONFIG} | {"lr": lr}
        return {
            "variant": variant,
            "epochs": epochs,
            "seed": seed,
            "data": "fashion",
            "num_train": 60000,
            "config": config,
        }

    def write(tag, records):
        path = tmp_path / f"emcmc_value_{tag}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))

    write("main", [record("sgld", 12, 0), record("csgld", 12, 0)])
    # a longer budget (kept), a duplicate (dropped), another lr (skipped)
    write("long", [record("sgld", 100, 0), record("sgld", 12, 0), record("sgld", 100, 1, lr=0.1)])
    monkeypatch.setattr(ev, "RESULTS", tmp_path)
    records, notes = ev.load_records("main", ["long"])
    assert [(r["variant"], r["epochs"]) for r in records] == [
        ("sgld", 12),
        ("csgld", 12),
        ("sgld", 100),
    ]
    assert notes == [
        "1 runs from `emcmc_value_long.jsonl` included (1 under another protocol skipped)"
    ]


@pytest.mark.slow
def test_restart_divergence_quick(tmp_path):
    env = {**os.environ, "FLATJAX_BENCH_RESULTS": str(tmp_path)}
    argv = [sys.executable, "-m", "benchmarks.restart_divergence", "--quick"]
    argv += ["--variants", "csgld,emcmc-default"]
    subprocess.run(argv, cwd=ROOT, env=env, check=True, timeout=300, capture_output=True)
    result = json.loads((tmp_path / "restart_divergence_quick.json").read_text())
    runs = result["records"]
    assert [r["variant"] for r in runs] == ["csgld", "emcmc-default"]
    for r in runs:  # lambda_1 traced per epoch and chain, through the first restart
        assert len(r["lambda_1_trace"]) == r["restart_epoch"] + 1
        assert all(v > 0 for v in r["lr_lambda_1"])
    assert runs[0]["coupling_lr_curvature"] == 0.0 < runs[1]["coupling_lr_curvature"]
    assert "lr λ1" in (tmp_path / "restart_divergence_quick.md").read_text()
