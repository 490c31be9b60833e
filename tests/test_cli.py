"""End-to-end tests of ``python -m flatjax`` on a tiny budget."""

import json
import subprocess
import sys

import pytest

from flatjax import cli

TINY = [
    "--epochs",
    "2",
    "--cycles",
    "1",
    "--collect-last",
    "1",
    "--chains",
    "2",
    "--hidden",
    "16",
    "--batch-size",
    "128",
    "--no-progress",
]


def test_run_writes_table_json_and_figures(tmp_path, capsys):
    assert cli.main(["run", "--method", "emcmc", *TINY, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ACC" in out and "OOD-AUROC" in out
    for name in ("theta", "guide", "pooled"):
        assert f"emcmc   {name}" in out
    results = json.loads((tmp_path / "results.json").read_text())
    report = results["reports"][0]
    assert set(report["sets"]) == {"theta", "guide", "pooled"}
    assert 0.0 <= report["sets"]["theta"]["accuracy"] <= 1.0
    assert len(report["trace"]["nll"]) == 2
    assert (tmp_path / "reliability.png").stat().st_size > 1000
    assert (tmp_path / "training_curves.png").stat().st_size > 1000


def test_compare_runs_every_method_on_the_same_data(tmp_path, capsys):
    methods = "sgd,sgld,csghmc,entropy-sgd"
    args = ["compare", "--methods", methods, *TINY, "--inner-steps", "2", "--no-figures"]
    assert cli.main([*args, "--ood", "uniform", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["config"]["method"] for r in results["reports"]] == methods.split(",")
    budgets = {r["gradient_evaluations_per_chain"] for r in results["reports"]}
    assert budgets == {2 * (1437 // 128)} or len(budgets) == 2  # entropy-sgd drops a remainder
    assert "entropy-sgd" in capsys.readouterr().out


def test_compare_sam_and_swag(tmp_path):
    tiny = list(TINY)
    tiny[tiny.index("--epochs") + 1] = "4"  # SWAG collects epochs 2 and 3
    args = ["compare", "--methods", "sam,swag", *tiny, "--swag-rank", "2", "--swag-samples", "3"]
    assert cli.main([*args, "--rho", "0.1", "--no-figures", "--out", str(tmp_path)]) == 0
    sam, swag = json.loads((tmp_path / "results.json").read_text())["reports"]
    assert sam["config"]["rho"] == 0.1
    assert sam["gradient_evaluations_per_chain"] == 2 * swag["gradient_evaluations_per_chain"]
    assert swag["num_samples_per_chain"] == 3 and swag["swag"]["rank"] == 2
    assert 0.0 <= swag["sets"]["theta"]["ood_auroc_entropy"] <= 1.0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--method", "nope"], "invalid choice"),
        (["run", "--lr", "-1"], "--lr"),
        (["run", "--eta", "nan"], "--eta"),
        (["run", "--chains", "0"], "--chains"),
        (["run", "--hidden", "a,b"], "--hidden"),
        (["run", "--epochs", "2", "--cycles", "4"], "epochs"),
        (["run", "--lr", "5", "--eta", "4e-4"], "eta"),
        (["run", "--batch-size", "100000"], "batch_size"),
        (["run", "--data", "fashion", "--data-dir", "/nonexistent"], "nonexistent"),
        (["compare", "--methods", "emcmc,bogus"], "bogus"),
        (["run", "--resume"], "checkpoint-dir"),
        (["run", "--method", "sam", "--rho", "-1"], "--rho"),
        (["run", "--method", "swag", "--epochs", "8", "--swag-rank", "5"], "swag_rank"),
        (["run", "--method", "swag", "--swag-samples", "0"], "--swag-samples"),
        (["run", "--model", "vgg"], "--model"),
        (["run", "--eta", "-1"], "--eta"),
        (["run", "--schedule", "linear"], "--schedule"),
        (["run", "--noise", "uniform"], "--noise"),
        (["run", "--guide-step-ratio", "0"], "--guide-step-ratio"),
        (["run", "--lr", "0.5", "--eta", "4e-4", "--guide-step-ratio", "10"], "guide_step_ratio"),
    ],
)
def test_bad_flags_give_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_help_is_complete():
    out = subprocess.run(
        [sys.executable, "-m", "flatjax", "run", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for flag in (
        "--method",
        "--data",
        "--model",
        "--chains",
        "--eta",
        "--temperature",
        "--lr",
        "--cycles",
        "--ood",
        "--out",
        "--seed",
    ):
        assert flag in out.stdout


def test_checkpoint_and_resume_from_the_command_line(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    args = ["run", "--method", "sgld", *TINY, "--no-figures", "--checkpoint-dir", str(ckpt)]
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert (ckpt / "sgld").is_dir()
    # resuming a finished run reproduces its results exactly
    assert cli.main([*args, "--resume", "--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "results.json").read_text())["reports"][0]
    b = json.loads((tmp_path / "b" / "results.json").read_text())["reports"][0]
    assert a["sets"] == b["sets"] and a["trace"] == b["trace"]
    # a fresh run into the same directory is refused; so is --resume with another seed
    with pytest.raises(SystemExit):
        cli.main([*args, "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit):
        cli.main([*args, "--resume", "--seed", "7", "--out", str(tmp_path / "d")])
    assert "rng_key" in capsys.readouterr().err


def test_eta_auto_and_the_new_flags_reach_the_config():
    from flatjax.cli import _config, build_parser

    args = build_parser().parse_args(
        ["run", "--eta", "auto", "--guide-step-ratio", "10", "--schedule", "constant"]
        + ["--guide-weight-decay", "0", "--noise", "rademacher", "--momentum", "0"]
    )
    config = _config(args, "emcmc")
    assert config.eta == "auto" and config.guide_step_ratio == 10.0
    assert config.schedule == "constant" and config.guide_weight_decay == 0.0
    assert config.noise == "rademacher" and config.momentum == 0.0
