"""``python -m flatjax pretrain`` and ``transfer --pretrained``: the user's-own-network flow."""

import json
import re

import pytest

from flatjax import cli
from flatjax.transfer import load_params

HIDDEN = ["--hidden", "8"]
FEW = ["--shots", "3", "--val-shots", "2", "--epochs", "2", "--num-bma", "2", "--rank", "2"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny MLP pretrained on digits 0-4 by the CLI."""
    path = tmp_path_factory.mktemp("pretrained") / "mlp.msgpack"
    argv = ["pretrain", "--data", "digits:0-4", "--model", "mlp", *HIDDEN]
    argv += ["--epochs", "3", "--average-last", "2", "--save", str(path), "--no-progress"]
    assert cli.main(argv) == 0
    params = load_params(path)["params"]
    assert params["head"]["kernel"].shape == (8, 5) and "norm0" in params
    return path


@pytest.mark.slow  # 29 s; CI runs the slow tests after the default suite
def test_pretrain_then_transfer_pretrained_end_to_end(checkpoint, tmp_path, capsys):
    argv = ["transfer", "--pretrained", str(checkpoint), "--model", "mlp", *HIDDEN]
    argv += ["--target", "digits:5-9", "--method", "sgd,sabma", "--reinit-head", *FEW]
    assert cli.main([*argv, "--no-progress", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "lambda1" in out and "sabma" in out
    reports = json.loads((tmp_path / "results.json").read_text())["reports"]
    assert [r["config"]["method"] for r in reports] == ["sgd", "sabma"]
    for r in reports:
        assert r["pretrained"] == str(checkpoint) and r["num_train"] == 15
        assert 0.0 <= r["test"]["accuracy"] <= 1.0
        # norm layers and head trained: lambda_1 of each block
        assert {"head", "norm0"} <= set(r["lambda_1_blocks"])
    assert reports[1]["num_bma_samples"] == 2


def _fails(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert not re.search(r"`\w+`", err), err  # flags, not field names
    return err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "cnn"], "is not a --model cnn network"),
        (["--hidden", "16"], "is not a --model mlp --hidden 16 network"),
        (["--head", "classifier"], "--head 'classifier' is not a top-level name"),
        (["--source", "digits:0-4"], "--source is not used with --pretrained"),
    ],
)
def test_transfer_pretrained_bad_inputs(extra, message, checkpoint, tmp_path, capsys):
    argv = ["transfer", "--pretrained", str(checkpoint), *HIDDEN, "--target", "digits:5-9"]
    err = _fails([*argv, *extra, "--out", str(tmp_path)], capsys)
    assert message in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["transfer", "--pretrained", "/nonexistent/w.msgpack"], "--pretrained"),
        (["transfer", "--model", "cnn"], "--model needs --pretrained"),
        (["transfer", "--trainable", "all"], "need --pretrained"),
        (["pretrain", "--save", "x.msgpack", "--average-last", "1"], "--average-last=1"),
        (["pretrain", "--save", "x.msgpack", "--epochs", "3"], "--average-last=10"),
    ],
)
def test_bad_flags_without_a_checkpoint(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra = ["--out", str(tmp_path / "out")] if argv[0] == "transfer" else []
    assert message in _fails([*argv, *extra], capsys)


def test_pretrain_never_replaces_a_checkpoint(checkpoint, capsys):
    err = _fails(["pretrain", "--save", str(checkpoint)], capsys)
    assert "already exists" in err


def test_missing_checkpoint_names_the_flag(tmp_path, capsys):
    missing = tmp_path / "nope.msgpack"
    err = _fails(["transfer", "--pretrained", str(missing), "--out", str(tmp_path)], capsys)
    assert f"--pretrained {missing} does not exist" in err
