"""``benchmarks/transfer_pretrained.py``: quick run, cache, resumable records, report."""

import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import transfer_head_only, transfer_q_spread  # noqa: E402
from benchmarks import transfer_pretrained as tp  # noqa: E402


def test_paired_differences_and_the_every_seed_verdict():
    by_seed = {
        "sabma": {0: {"nll": 0.5}, 1: {"nll": 0.6}},
        "sgd": {0: {"nll": 0.7}, 1: {"nll": 0.65}},
        "sam": {0: {"nll": 0.4}, 1: {"nll": 0.9}},
    }
    d = tp.paired(by_seed, "sabma", "sgd", "nll")
    assert d["all_negative"] and d["per_seed"] == pytest.approx({0: -0.2, 1: -0.05})
    assert not tp.paired(by_seed, "sabma", "sam", "nll")["all_negative"]
    assert not tp.paired(by_seed, "sabma", "swag", "nll")["all_negative"]  # no common seed


@pytest.mark.slow  # ~1 min alone, several on a loaded 2-core machine (JIT compiles)
def test_quick_run_is_cached_resumable_and_reported(tmp_path, capsys):
    results, cache = tmp_path / "results", tmp_path / "cache"
    argv = ["--quick", "--results", str(results), "--cache", str(cache)]
    tp.main(argv)
    checkpoints = sorted(p.name for p in cache.iterdir())
    assert any(n.endswith(".msgpack") for n in checkpoints), checkpoints
    records = tp.read_records(results / "transfer_pretrained_quick.jsonl")
    assert [(r["grid"], r["method"], r["seed"]) for r in records] == [
        ("cnn", "sabma", 0),
        ("cnn", "sgd", 0),
    ]
    for r in records:
        assert not r["diverged"] and 0.0 <= r["accuracy"] <= 1.0 and r["nll"] > 0
        assert r["lambda_1"] > 0 and set(r["lambda_1_blocks"]) == {"head"}
        assert {"nll_sev3", "nll_sev5", "accuracy_sev5", "ts_nll"} <= set(r)
        assert not r["pretrained"]["cached"]
    sabma, sgd = records
    assert 0.0 <= sabma["mean_accuracy"] <= 1.0 and sabma["mean_nll"] > 0  # at q's mean
    assert sabma["mean_nll"] != sabma["nll"]  # one sample at the mean is not the BMA
    assert "mean_nll" not in sgd  # no Gaussian q
    tp.main(argv)  # the second call finds the runs done (and the checkpoint cached)
    assert len(tp.read_records(results / "transfer_pretrained_quick.jsonl")) == 2
    capsys.readouterr()
    summary = json.loads((results / "transfer_pretrained_quick.json").read_text())
    grid = summary["grids"]["cnn"]
    assert set(grid["stats"]) == {"sabma", "sgd"}
    assert set(grid["target_holds"]) == {"nll", "ts_nll", "nll_sev3", "nll_sev5"}
    assert set(grid["target_holds"].values()) == {None}  # no SAM run: no verdict
    md = (results / "transfer_pretrained_quick.md").read_text()
    assert "NLL: not measured here (no seed has SA-BMA, SGD and SAM)" in md
    assert "SA-BMA − SGD" in md and "every seed" in md and "head alone" in md
    assert (results / "transfer_pretrained_quick.png").exists()
    assert "SA-BMA's estimator: antithetic draws" in md
    # --set / --kwargs reach TransferConfig / finetune_pretrained and land in the record
    other = tmp_path / "wide"
    extra = ["--set", '{"rho": 0.1}', "--kwargs", '{"moped_delta": 0.5}', "--methods", "sabma"]
    tp.main(["--quick", "--results", str(other), "--cache", str(cache), *extra])
    capsys.readouterr()
    (wide,) = tp.read_records(other / "transfer_pretrained_quick.jsonl")
    assert wide["budget"]["finetune_kwargs"] == {"moped_delta": 0.5}
    assert wide["config"]["rho"] == 0.1 and wide["nll"] != sabma["nll"]
    assert (
        "Overrides: moped_delta=0.5, rho=0.1."
        in (other / "transfer_pretrained_quick.md").read_text()
    )
    assert "Overrides" not in md


@pytest.mark.slow
def test_head_only_diagnostic_quick_run_scores_every_run(tmp_path, capsys):
    out, cache = tmp_path / "results", tmp_path / "cache"
    transfer_head_only.main(["--quick", "--out", str(out), "--cache", str(cache)])
    capsys.readouterr()
    rows = json.loads((out / "transfer_head_only_quick.json").read_text())["rows"]
    epochs = tp.budget(True)["finetune"]["epochs"]
    budgets = [epochs, 2 * epochs, 3 * epochs]
    expected = transfer_head_only.runs(epochs, budgets, False)
    assert [r["run"] for r in rows] == [r[0] for r in expected]
    assert [r["epochs"] for r in rows[:9]] == [e for e in budgets for _ in range(3)]
    assert rows[-4]["finetune_kwargs"] == {"moped_delta": 1.0}  # a kept head's q widened
    for r in rows:
        assert r["nll"] > 0 and r["train_nll"] > 0 and 0.0 < r["confidence"] <= 1.0
        if r["method"] != "sabma":  # one sample: the BMA is the point
            assert r["nll"] == pytest.approx(r["point_nll"], rel=1e-5)
        if r["method"] == "sam":
            assert r["adversarial_step"] == r["overrides"].get("rho", 0.05)
        if r["method"] == "sabma":
            assert r["adversarial_step"] > 0
    md = (out / "transfer_head_only_quick.md").read_text()
    assert "## cnn" in md and f"sam {epochs} ep" in md


def test_adversarial_length_is_sams_radius_for_an_isotropic_q():
    """With Sigma = s I the KL ball's step on the mean is SAM's along g, of length
    sqrt(2 rho s) whatever the gradient (the SA-BMA -> SAM reduction)."""
    import jax.numpy as jnp

    from flatjax.vi.lowrank_gaussian import isotropic

    mean = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array([0.3])}
    q = isotropic(mean, variance=0.04)

    def loss(w):
        return jnp.sum(w["w"] ** 4) + jnp.sum(jnp.sin(w["b"]))

    got = transfer_head_only.adversarial_length(q, loss, rho=0.5)
    assert got == pytest.approx((2 * 0.5 * 0.04) ** 0.5, rel=1e-5)
    # a diagonal Sigma = diag(sigma^2 / 2): sqrt(2 rho) |Sigma g| / sqrt(g' Sigma g)
    scales = {"w": jnp.array([0.1, 0.1, 1.0]), "b": jnp.array([0.1])}
    diag = q._replace(log_scale={k: jnp.log(v) for k, v in scales.items()})
    g = jnp.array([4.0, -32.0, 0.5, jnp.cos(0.3)])  # d loss at the mean: 4 w^3, cos b
    var = 0.5 * jnp.array([0.01, 0.01, 1.0, 0.01])
    want = jnp.sqrt(2 * 0.5) * jnp.linalg.norm(var * g) / jnp.sqrt(jnp.sum(var * g * g))
    assert transfer_head_only.adversarial_length(diag, loss, rho=0.5) == pytest.approx(
        float(want), rel=1e-5
    )


@pytest.mark.slow
def test_q_spread_diagnostic_quick_run_measures_q_and_its_cost(tmp_path, capsys):
    out, cache = tmp_path / "results", tmp_path / "cache"
    transfer_q_spread.main(["--quick", "--out", str(out), "--cache", str(cache)])
    capsys.readouterr()
    (row,) = json.loads((out / "transfer_q_spread_quick.json").read_text())["rows"]
    assert (row["grid"], row["seed"]) == ("cnn", 0) and row["sgd_nll"] > 0
    (q,) = [v for k, v in row.items() if k.startswith("alpha")]  # kept head: one alpha
    assert q["nll"] > 0 and q["mean_nll"] > 0 and q["logit_sd"] > 0
    assert 0 < q["sigma_ratio_min"] <= q["sigma_ratio_max"] and q["mean_step_bound"] > 0
    assert "| cnn | 0 |" in (out / "transfer_q_spread_quick.md").read_text()


@pytest.mark.slow
def test_rho_sweep_quick_run_measures_nll_flatness_and_the_step(tmp_path, monkeypatch, capsys):
    from benchmarks import _common, transfer_rho_sweep

    monkeypatch.setattr(_common, "RESULTS", tmp_path)
    result = transfer_rho_sweep.main(quick=True)
    capsys.readouterr()
    runs = result["runs"]
    assert set(runs) == {"sgd"} | {f"sabma rho={r:g}" for r in transfer_rho_sweep.RHOS}
    for name, rs in runs.items():
        for r in rs:
            assert r["nll"] > 0 and r["lambda_1"] > 0 and r["lambda_1/head"] > 0
            assert ("step" in r) == name.startswith("sabma")
    assert all(r["step"] == 0.0 for r in runs["sabma rho=0"])  # no ball, no step
    assert all(r["step"] > 0 and r["step_relative"] > 0 for r in runs["sabma rho=1"])
    md = (tmp_path / "transfer_rho_sweep_quick.md").read_text()
    assert "step / |μ|" in md and "| sgd |" in md
