"""The few-shot transfer pipeline (pretrain -> SWAG -> fine-tune -> BMA -> TS -> metrics)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flatjax import cli
from flatjax.data import load_digits, split_classes
from flatjax.nn import masks
from flatjax.nn.models import MLP
from flatjax.transfer import (
    TRANSFER_METHODS,
    SplitParams,
    TransferConfig,
    initial_posterior,
    pretrain,
    run_transfer,
)
from flatjax.vi import lowrank_gaussian as lrg
from flatjax.vi import swag

TINY = dict(
    hidden=(16,),
    source_epochs=3,
    swag_epochs=2,
    swag_rank=2,
    epochs=3,
    shots=3,
    val_shots=2,
    num_bma=3,
    num_eigenvalues=2,
)


@pytest.fixture(scope="module")
def digits():
    ds = load_digits()
    return split_classes(ds, [0, 1, 2]), split_classes(ds, [3, 4, 5])


FAST = {"sabma", "sgd"}


@pytest.mark.parametrize(
    "method",
    [m if m in FAST else pytest.param(m, marks=pytest.mark.slow) for m in TRANSFER_METHODS],
)
def test_every_method_runs_the_pipeline(method, digits):
    source, target = digits
    report = run_transfer(TransferConfig(method=method, **TINY), source, target)
    assert report["num_train"] == 9 and report["num_val"] == 6
    # point estimates: 1; samplers: one per epoch of the second half (3 - 3 // 2); else num_bma
    expected = {"sgd": 1, "sam": 1, "fsam": 1, "bsam": 1, "sgld": 2, "emcmc": 2}.get(method, 3)
    assert report["num_bma_samples"] == expected
    for key in ("accuracy", "nll", "ece"):
        assert np.isfinite(report["test"][key])
        assert np.isfinite(report["test_temperature_scaled"][key])
    assert report["lambda_1_mean"] > 0
    assert report["lambda_1_over_lambda_k"] >= 1.0
    landscape = np.asarray(report["random_direction_loss"]["loss"])
    assert landscape.shape == (5, 21) and np.all(np.isfinite(landscape))
    np.testing.assert_allclose(landscape[:, 10], landscape[0, 10], rtol=1e-6)  # radius 0


def test_variational_part_is_norm_layers_and_a_fresh_head(digits):
    source, _ = digits
    config = TransferConfig(**TINY)
    mean, state = pretrain(config, source)
    q_source = swag.to_lowrank_gaussian(state)
    target_params = MLP(features=(16,), num_classes=3, norm="layer").init(
        jax.random.key(0), jnp.ones((1, 8, 8, 1))
    )["params"]
    split = SplitParams(target_params, masks.norm_and_head_mask(target_params, head="head"))
    trainable, frozen = split.split(target_params)
    assert set(trainable) == {"head/bias", "head/kernel", "norm0/bias", "norm0/scale"}
    assert set(frozen) == {"Dense_0/bias", "Dense_0/kernel"}
    head = {p: x for p, x in trainable.items() if p.startswith("head/")}
    q = initial_posterior(config, split, q_source, head, jax.random.key(1))
    np.testing.assert_array_equal(q.mean["head/kernel"], 0.0)
    # the head's diagonal covariance is alpha = head_variance (up to the tiny deviations)
    _, cov = lrg.to_dense(
        lrg.LowRankGaussian(
            {"k": q.mean["head/kernel"]},
            {"k": q.log_scale["head/kernel"]},
            {"k": q.deviations["head/kernel"]},
        )
    )
    np.testing.assert_allclose(np.diag(cov), config.head_variance, rtol=0.05)
    # the norm layers start at the source SWAG mean
    np.testing.assert_array_equal(q.mean["norm0/scale"], mean["norm0"]["scale"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"swag_rank": 1}, "swag_rank"),
        ({"rho": -1.0}, "rho"),
        ({"head_variance": 0.0}, "head_variance"),
        ({"method": "adam"}, "method"),
        ({"backbone": "none"}, "backbone"),
        ({"swag_epochs": 50}, "swag_epochs"),
        ({"min_variance": 0.0}, "min_variance"),
        ({"fisher": "kfac"}, "fisher"),
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"antithetic": 1}, "antithetic"),
        ({"bma_draws": "sobol"}, "bma_draws"),
        ({"bma_draws": "antithetic", "num_bma": 3}, "num_bma.*even.*3"),
        ({"swag_epochs": 4, "swag_rank": 5}, "swag_epochs`=4 .*`swag_rank`=5"),
    ],
)
def test_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransferConfig(**kwargs).validate()


def test_split_rejects_an_empty_mask():
    params = {"a": jnp.ones(2)}
    with pytest.raises(ValueError, match="selects no parameter"):
        SplitParams(params, {"a": False})


def test_transfer_command_line(tmp_path, capsys):
    argv = [
        "transfer",
        "--method",
        "sgd",
        "--source",
        "digits:0-2",
        "--target",
        "digits:3-5",
        "--shots",
        "3",
        "--val-shots",
        "2",
        "--epochs",
        "2",
        "--source-epochs",
        "2",
        "--swag-epochs",
        "2",
        "--rank",
        "2",
        "--num-bma",
        "2",
        "--hidden",
        "8",
        "--lr-schedule",
        "cosine",
        "--no-antithetic",
        "--bma-draws",
        "antithetic",
        "--out",
        str(tmp_path),
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "lambda1" in out and "sgd" in out
    report = json.loads((tmp_path / "results.json").read_text())["reports"][0]
    assert report["config"]["shots"] == 3
    assert report["config"]["lr_schedule"] == "cosine"
    assert report["config"]["antithetic"] is False
    assert report["config"]["bma_draws"] == "antithetic"
    with pytest.raises(SystemExit):
        cli.main(["transfer", "--source", "digits:x-y"])
    assert "classes" in capsys.readouterr().err


def test_extra_test_sets_are_scored_with_the_same_bma_and_temperature(digits):
    source, target = digits
    config = TransferConfig(method="sgd", **TINY)
    half = len(target.y_test) // 2
    report = run_transfer(
        config,
        source,
        target,
        extra_test={
            "clean": (target.x_test, target.y_test),
            "half": (target.x_test[:half], target.y_test[:half]),
        },
    )
    clean = report["extra_test"]["clean"]
    for key in ("accuracy", "nll", "ece"):
        np.testing.assert_allclose(clean["raw"][key], report["test"][key], rtol=1e-5)
        np.testing.assert_allclose(
            clean["temperature_scaled"][key], report["test_temperature_scaled"][key], rtol=1e-5
        )
    assert set(report["extra_test"]) == {"clean", "half"}
    assert 0.0 <= report["extra_test"]["half"]["raw"]["accuracy"] <= 1.0
    with pytest.raises(ValueError, match=r"extra_test\['bad'\]"):
        run_transfer(config, source, target, extra_test={"bad": (target.x_test, target.y_test[:3])})


def test_emcmc_coupling_must_exceed_the_few_shot_step(digits):
    source, target = digits  # 3 target classes x 3 shots: n = 9
    config = TransferConfig(method="emcmc", lr=0.09, eta=0.01, **TINY)
    with pytest.raises(ValueError, match=r"`eta`=0.01 must exceed the step lr/n = 0.09/9"):
        run_transfer(config, source, target)


def test_sabma_with_the_diagonal_fisher_and_the_backbone_mean(digits):
    source, target = digits
    config = TransferConfig(method="sabma", fisher="diagonal", backbone="mean", **TINY)
    report = run_transfer(config, source, target)
    assert report["config"]["fisher"] == "diagonal"
    assert report["num_bma_samples"] == 3
    assert np.isfinite(report["test"]["nll"]) and report["lambda_1_mean"] > 0


@pytest.mark.parametrize("method", ["sgd", "sabma"])
def test_cosine_schedule_reaches_the_fine_tuning_loop(method, digits, monkeypatch):
    from flatjax import transfer

    seen = []
    original = transfer.loop.run

    def spy(*args, **kwargs):
        seen.append(kwargs["step_size"])
        return original(*args, **kwargs)

    monkeypatch.setattr(transfer.loop, "run", spy)
    source, target = digits  # 3 target classes x 3 shots: n = 9, batch 9, 1 step per epoch
    config = TransferConfig(method=method, lr=0.03, lr_schedule="cosine", **TINY)
    report = run_transfer(config, source, target)
    assert np.isfinite(report["test"]["nll"])
    step = seen[-1]  # the fine-tuning run (the source runs come first)
    scale = 1.0 if method == "sabma" else 1.0 / 9
    num_steps = TINY["epochs"]
    np.testing.assert_allclose(float(step(0)), 0.03 * scale, rtol=1e-6)
    np.testing.assert_allclose(
        float(step(1)), 0.03 * scale * 0.5 * (1 + np.cos(np.pi / num_steps)), rtol=1e-5
    )
    assert float(step(num_steps)) == 0.0
