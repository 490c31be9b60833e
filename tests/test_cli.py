"""End-to-end tests of ``python -m flatjax`` on a tiny budget."""

import argparse
import json
import re
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
    assert "R-hat" in out and "ESS" in out
    # two epochs, one sample per chain: no R-hat, and the table says why
    assert "note: emcmc: R-hat and ESS need >= 4 draws per chain (got 1)" in out
    results = json.loads((tmp_path / "results.json").read_text())
    report = results["reports"][0]
    assert set(report["sets"]) == {"theta", "guide", "pooled"}
    assert report["sets"]["pooled"]["chains"]["num_chains"] == 4
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


def test_compare_reports_the_other_methods_when_one_diverges(tmp_path, capsys, monkeypatch):
    from flatjax import experiment
    from flatjax.inference.loop import DivergenceError

    real = experiment.run_experiment

    def diverging_sgld(config, *args, **kwargs):
        if config.method == "sgld":
            raise DivergenceError("non-finite state (NaN/inf) in chain(s) [1] during epoch 1", None)
        return real(config, *args, **kwargs)

    monkeypatch.setattr(experiment, "run_experiment", diverging_sgld)
    args = ["compare", "--methods", "sgld,sgd", *TINY, "--no-figures", "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    assert info.value.code == 3
    captured = capsys.readouterr()
    assert "sgld diverged: non-finite state" in captured.err
    assert "sgd" in captured.out  # the table of the methods that finished
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["config"]["method"] for r in results["reports"]] == ["sgd"]
    assert results["diverged"] == [
        "sgld diverged: non-finite state (NaN/inf) in chain(s) [1] during epoch 1"
    ]


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
        (["run", "--epochs", "2", "--cycles", "4"], "--epochs=2 must be >= --cycles=4"),
        (["run", "--lr", "5", "--eta", "4e-4"], "--lr=5"),
        (["run", "--batch-size", "100000"], "--batch-size=100000"),
        (["run", "--data", "fashion", "--data-dir", "/nonexistent"], "nonexistent"),
        (["run", "--data", "mnist"], "--data mnist needs --data-dir"),
        (["run", "--ood", "mnist"], "--ood mnist needs --data-dir"),
        (["transfer", "--target", "cifar10"], "--target cifar10 needs --data-dir"),
        (["compare", "--methods", "emcmc,bogus"], "bogus"),
        (["compare", "--method", "emcmc,bogus"], "bogus"),
        (["run", "--methods", "emcmc,sgld"], "compare --methods emcmc,sgld"),
        (["transfer", "--methods", "sabma,nope"], "'nope'"),
        (["run", "--resume"], "checkpoint-dir"),
        (["run", "--method", "sam", "--rho", "-1"], "--rho"),
        (["run", "--method", "swag", "--epochs", "8", "--swag-rank", "5"], "--swag-rank=5"),
        (["run", "--method", "swag", "--swag-samples", "0"], "--swag-samples"),
        (["run", "--model", "vgg"], "--model"),
        (["run", "--eta", "-1"], "--eta"),
        (["run", "--schedule", "linear"], "--schedule"),
        (["run", "--noise", "uniform"], "--noise"),
        (["run", "--guide-step-ratio", "0"], "--guide-step-ratio"),
        (["run", "--cycle-warmup", "-1"], "--cycle-warmup"),
        (["run", "--epochs", "4", "--cycles", "2", "--cycle-warmup", "3"], "--cycle-warmup"),
        (["run", "--lr", "0.5", "--eta", "4e-4", "--guide-step-ratio", "10"], "guide_step_ratio"),
    ],
)
def test_bad_flags_give_one_line_errors(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--out", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not re.search(r"`(epochs|cycles|lr|batch_size|swag_rank|directory)`", err)


@pytest.mark.parametrize("command", ["run", "compare", "transfer"])
def test_help_shows_every_options_default(command):
    """Every option with a default says it in ``--help`` (with the value where fixed)."""
    parser = cli.build_parser()
    sub = parser.parse_args([command]).subparser
    text = sub.format_help()
    blocks = re.split(r"\n(?=  -)", text)  # one block per option
    checked = 0
    for action in sub._actions:
        if not action.option_strings or action.dest == "help":
            continue
        if isinstance(action, argparse._StoreTrueAction):
            continue  # a switch: off unless given
        block = next(b for b in blocks if b.lstrip().startswith(action.option_strings[0]))
        flat = " ".join(block.split())
        assert "default" in flat, f"{command} {action.option_strings[0]}: no default in {flat!r}"
        if isinstance(action.default, int | float) and not isinstance(action.default, bool):
            assert cli._show_default(action.default) in flat.replace("- ", "-"), flat
        checked += 1
    assert checked >= (12 if command == "transfer" else 30)


def test_method_and_methods_are_the_same_flag_on_every_command():
    parser = cli.build_parser()
    assert parser.parse_args(["run", "--methods", "sgld"]).method == "sgld"
    assert parser.parse_args(["compare", "--method", "sgld,sgd"]).methods == "sgld,sgd"
    assert parser.parse_args(["transfer", "--methods", "sgd"]).method == "sgd"


def test_each_run_gets_its_own_folder_and_never_overwrites(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--method", "sgld", *TINY, "--no-figures"]
    assert cli.main(argv) == 0
    (folder,) = (tmp_path / "results").iterdir()
    assert re.fullmatch(r"run-sgld-\d{8}-\d{6}", folder.name)
    out = capsys.readouterr().out
    assert f"results go to results/{folder.name}" in out
    assert f"wrote results/{folder.name}/results.json" in out
    before = (folder / "results.json").read_text()
    with pytest.raises(SystemExit) as info:  # refused before anything runs
        cli.main([*argv, "--out", str(folder)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--overwrite" in err and "results.json" in err
    assert (folder / "results.json").read_text() == before
    args = cli.build_parser().parse_args([*argv, "--out", str(folder), "--overwrite"])
    assert cli._output_dir(args, ["sgld"]) == (folder, False)
    # a chosen folder taken meanwhile (same second) is not shared
    again = cli._write_results(folder, True, {"x": 1})
    assert again.name == folder.name + "-2" and (again / "results.json").exists()
    assert (folder / "results.json").read_text() == before


def test_chain_warnings_and_notes():
    def report(method, rhat, note=None):
        chains = {
            "max_rhat": rhat,
            "median_ess": None if rhat is None else 12.0,
            "threshold": 1.1,
            "num_rhat_above": int(rhat is not None and rhat > 1.1),
            "num_quantities": 322,
            "groups": {"predictive": {"max_rhat": rhat}},
            "note": note,
        }
        return {"config": {"method": method}, "seconds": 1.0, "sets": {"theta": {"chains": chains}}}

    reports = [report("sgld", 1.02), report("emcmc", 1.31), report("sgd", None, "too few")]
    lines = cli.chain_messages(reports)
    assert lines == [
        "warning: emcmc/theta: split R-hat 1.31 > 1.1 in 1 of 322 monitored quantities "
        "(worst: predictive 1.31): the chains disagree; see flatjax.inference.diagnostics",
        "note: sgd: too few",
    ]
    table = cli.format_table(reports)
    assert "1.310" in table and "1.020" in table and "12" in table


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
        + ["--cycle-warmup", "0.5"]
    )
    config = _config(args, "emcmc")
    assert config.eta == "auto" and config.guide_step_ratio == 10.0
    assert config.schedule == "constant" and config.guide_weight_decay == 0.0
    assert config.noise == "rademacher" and config.momentum == 0.0
    assert config.cycle_warmup == 0.5
