"""``run_experiment`` with the SAM and SWAG baselines, and several OOD sets at once."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flatjax.data import Dataset, load_digits, make_ood
from flatjax.experiment import (
    METHODS,
    ExperimentConfig,
    build_method,
    exploration_fraction,
    prepare_run,
    run_experiment,
    swag_bma,
    swag_schedule,
)

TINY = dict(chains=2, epochs=4, hidden=(16,), batch_size=128, lr=0.5)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    d = load_digits()
    # a smaller test split keeps the BMA cheap
    return Dataset(d.x_train, d.y_train, d.x_test[:120], d.y_test[:120], d.num_classes, d.name)


def _finite(summary: dict) -> bool:
    return all(math.isfinite(v) for v in summary.values() if isinstance(v, float))


def test_sam_and_swag_are_listed_methods():
    assert {"sam", "swag"} <= set(METHODS)


def test_sam_runs_with_twice_the_gradients_and_rho_zero_is_sgd(digits):
    sam = run_experiment(ExperimentConfig(method="sam", rho=0.05, **TINY), digits, progress=False)
    sgd = run_experiment(ExperimentConfig(method="sgd", **TINY), digits, progress=False)
    assert _finite(sam["sets"]["theta"]) and 0.0 <= sam["sets"]["theta"]["accuracy"] <= 1.0
    # two gradients per step: the ascent one and the one at the perturbed point
    assert sam["gradient_evaluations_per_chain"] == 2 * sgd["gradient_evaluations_per_chain"]
    assert sam["num_samples_per_chain"] == 1
    # with rho = 0 the SAM kernel is the SGD baseline (same momentum, decay, minibatches)
    flat = run_experiment(ExperimentConfig(method="sam", rho=0.0, **TINY), digits, progress=False)
    np.testing.assert_allclose(flat["sets"]["theta"]["nll"], sgd["sets"]["theta"]["nll"], rtol=1e-5)
    assert sam["sets"]["theta"]["nll"] != sgd["sets"]["theta"]["nll"]


def test_swag_bma_averages_distinct_draws_and_scores_every_ood_set(digits):
    ood = {
        "gaussian": make_ood(digits, "gaussian", n=60),
        "uniform": make_ood(digits, "uniform", n=40),
    }
    config = ExperimentConfig(method="swag", swag_rank=2, swag_samples=6, **TINY)
    report = run_experiment(config, digits, ood, progress=False)
    theta = report["sets"]["theta"]
    assert _finite(theta) and 0.0 <= theta["accuracy"] <= 1.0
    assert report["num_samples_per_chain"] == 6
    assert report["swag"]["iterates_per_chain"] == 2  # epochs 2 and 3 of 4
    assert report["swag"]["draw_distance"] > 0  # the draws are distinct points
    assert report["gradient_evaluations_per_chain"] == 4 * (1437 // 128)
    assert set(theta["ood"]) == {"gaussian", "uniform"}
    for scores in theta["ood"].values():
        assert set(scores) == {"auroc_entropy", "aupr_entropy", "auroc_max_prob", "aupr_max_prob"}
        assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert "ood_auroc_entropy" not in theta  # a mapping gives nested scores only


def test_swag_bma_of_a_spread_posterior_differs_from_each_draw():
    # iterates of a 1-parameter "model" that predicts softmax([w, 0]); 3 iterates, 1 chain
    iterates = jnp.array([[-1.0], [0.5], [2.0]])[:, None, :]
    predict = lambda w, x: jax.nn.softmax(jnp.stack([w[0] * x, jnp.zeros_like(x)], -1))
    x = jnp.ones(3)
    key = jax.random.key(0)
    one, d1 = swag_bma(iterates, predict, x, rank=2, num_samples=1, rng_key=key)
    many, dm = swag_bma(iterates, predict, x, rank=2, num_samples=50, rng_key=key)
    assert int(one.count[0]) == 1 and int(many.count[0]) == 50
    assert float(d1) == 0.0 and float(dm) > 0.1
    # the 50-draw average is a distribution, and not the prediction of any one draw
    p_many = many.sum_probs[0] / 50
    np.testing.assert_allclose(p_many.sum(-1), 1.0, rtol=1e-5)
    assert abs(float(p_many[0, 0] - one.sum_probs[0, 0, 0])) > 1e-3


def test_swag_schedule_is_constant_while_collecting():
    schedule = swag_schedule(2.0, swa_start=100, ratio=0.1)
    assert float(schedule(0)) == pytest.approx(2.0) and float(schedule(50)) == pytest.approx(2.0)
    assert float(schedule(70)) == pytest.approx(2.0 * (1 - 0.9 * 0.5))
    for k in (90, 100, 150, 400):
        assert float(schedule(k)) == pytest.approx(0.2, rel=1e-5)


@pytest.mark.parametrize(
    "fields, pattern",
    [
        (dict(method="sam", rho=-0.1), "rho"),
        (dict(method="sam", rho=float("nan")), "rho"),
        (dict(method="sam", rho=float("inf")), "rho"),
        (dict(method="sam", rho="0.1"), "rho"),
        (dict(method="swag", swag_rank=1), "swag_rank"),
        (dict(method="swag", swag_rank=2.5), "swag_rank"),
        (dict(method="swag", swag_rank=True), "swag_rank"),
        (dict(method="swag", epochs=8, swag_rank=5), "swag_rank.*4 iterates"),
        (dict(method="swag", epochs=2, swag_rank=2), "epochs"),
        (dict(method="swag", swag_samples=0), "swag_samples"),
        (dict(method="swag", swag_lr_ratio=0.0), "swag_lr_ratio"),
        (dict(method="swag", swag_lr_ratio=1.5), "swag_lr_ratio"),
        (dict(model="vgg"), "model"),
    ],
)
def test_bad_sam_and_swag_settings_name_the_field(fields, pattern):
    with pytest.raises(ValueError, match=pattern):
        ExperimentConfig(**fields).validate()


def test_bad_settings_are_caught_before_training(digits):
    with pytest.raises(ValueError, match="rho"):
        run_experiment(ExperimentConfig(method="sam", rho=-1.0, **TINY), digits, progress=False)
    with pytest.raises(ValueError, match="swag_rank"):
        run_experiment(ExperimentConfig(method="swag", swag_rank=3, **TINY), digits, progress=False)


def test_swag_bma_rejects_bad_arguments():
    iterates = jnp.zeros((3, 1, 2))
    predict = lambda w, x: jax.nn.softmax(x * w)
    with pytest.raises(ValueError, match="rank"):
        swag_bma(iterates, predict, jnp.ones((2, 2)), rank=1, num_samples=2, rng_key=None)
    with pytest.raises(ValueError, match="num_samples"):
        swag_bma(iterates, predict, jnp.ones((2, 2)), rank=2, num_samples=0, rng_key=None)
    with pytest.raises(ValueError, match="iterates"):
        swag_bma(iterates[:1], predict, jnp.ones((2, 2)), rank=2, num_samples=2, rng_key=None)


def test_ood_set_of_the_wrong_shape_is_named(digits):
    with pytest.raises(ValueError, match="ood_x\\['bad'\\]"):
        run_experiment(
            ExperimentConfig(method="sgd", **TINY),
            digits,
            {"bad": np.zeros((5, 3, 3, 1), np.float32)},
            progress=False,
        )


def test_schedule_override_puts_every_method_on_the_same_cycles(digits):
    """``schedule="cyclical"`` gives SGLD/SGD csgld's step sizes and collection epochs."""
    from flatjax.experiment import build_method

    n, steps = 1000, 10
    grad_fn = lambda p, b: p
    configs = {
        m: ExperimentConfig(method=m, schedule="cyclical", epochs=8, collect_last=1)
        for m in ("sgld", "sgd", "emcmc")
    }
    configs["csgld"] = ExperimentConfig(method="csgld", epochs=8, collect_last=1, exploration=0.0)
    built = {m: build_method(c, grad_fn, n, steps) for m, c in configs.items()}
    ks = jnp.arange(80)
    reference = jax.vmap(built["csgld"][1])(ks)
    for m in ("sgld", "sgd", "emcmc"):
        np.testing.assert_allclose(jax.vmap(built[m][1])(ks), reference)
        assert [e for e in range(8) if built[m][3](e)] == [1, 3, 5, 7]
    constant = build_method(ExperimentConfig(method="emcmc", schedule="constant"), grad_fn, n, 10)
    assert constant[1] == 0.5 / n and [e for e in range(40) if constant[3](e)] == list(
        range(20, 40)
    )


def test_plain_sgd_and_guide_options_reach_the_kernels():
    """momentum=0 is plain SGD; guide_step_ratio and guide_weight_decay reach Entropy-MCMC."""
    from flatjax.experiment import build_method

    grad_fn = lambda p, b: -p  # log-density -p^2/2
    sgd = build_method(ExperimentConfig(method="sgd", momentum=0.0), grad_fn, 100, 1)[0]
    state = sgd.init(jnp.ones(2))
    state = sgd.step(jax.random.key(0), state, None, 0.1)
    np.testing.assert_allclose(state.position, 0.9 * jnp.ones(2), rtol=1e-6)
    config = ExperimentConfig(
        method="emcmc", eta=1.0, guide_step_ratio=3.0, guide_weight_decay=0.0, temperature=0.0
    )
    kernel = build_method(config, grad_fn, 100, 1)[0]
    state = kernel.init(jnp.ones(1))
    state = state._replace(guide=jnp.zeros(1))
    new = kernel.step(jax.random.key(0), state, None, 0.1, 0.0)
    # theta: 1 + 0.1 (-1 - 1); guide: 0 + 3 * 0.1 * (1 - 0) with no weight decay
    np.testing.assert_allclose(new.position, [0.8], rtol=1e-6)
    np.testing.assert_allclose(new.guide, [0.3], rtol=1e-6)


@pytest.mark.parametrize(
    "fields, pattern",
    [
        ({"guide_step_ratio": 0.0}, "guide_step_ratio"),
        ({"guide_weight_decay": -1.0}, "guide_weight_decay"),
        ({"schedule": "linear"}, "schedule"),
        ({"method": "swag", "schedule": "cyclical"}, "schedule"),
        ({"momentum": 1.0}, "momentum"),
    ],
)
def test_bad_schedule_and_guide_settings_name_the_field(fields, pattern):
    with pytest.raises(ValueError, match=pattern):
        ExperimentConfig(**fields).validate()


def test_guide_step_ratio_tightens_the_stability_check():
    ok = ExperimentConfig(method="emcmc", eta=1e-3, lr=0.5, guide_step_ratio=1.0)
    ok.validate(1000)  # step 5e-4 < 2 eta / 2
    with pytest.raises(ValueError, match="guide_step_ratio"):
        ok.__class__(method="emcmc", eta=1e-3, lr=0.5, guide_step_ratio=4.0).validate(1000)


def test_shift_sets_are_scored_with_the_test_labels(digits):
    """A shifted copy equal to the test set scores exactly as the clean test set."""
    report = run_experiment(
        ExperimentConfig(method="sgld", **TINY),
        digits,
        shift_x={"same": digits.x_test, "noisy": digits.x_test + 0.5},
        progress=False,
    )
    theta = report["sets"]["theta"]
    assert theta["shift"]["same"]["accuracy"] == pytest.approx(theta["accuracy"], abs=1e-6)
    assert theta["shift"]["same"]["nll"] == pytest.approx(theta["nll"], rel=1e-5)
    assert theta["shift"]["noisy"]["nll"] != pytest.approx(theta["nll"], rel=1e-3)
    with pytest.raises(ValueError, match="shift_x"):
        run_experiment(
            ExperimentConfig(method="sgld", **TINY),
            digits,
            shift_x={"short": digits.x_test[:5]},
            progress=False,
        )


def test_default_eta_is_the_papers_raised_to_the_stability_floor():
    from flatjax.experiment import build_method, default_eta

    assert default_eta(ExperimentConfig(method="emcmc"), 60000) == 4e-4
    assert default_eta(ExperimentConfig(method="emcmc", guide_step_ratio=10.0), 1000) == 11 * 5e-4
    assert default_eta(ExperimentConfig(method="entropy-sgd"), 10) == 4e-4
    ExperimentConfig(method="emcmc").validate(1437)  # r = 10 on digits: eta is raised
    # build_method resolves None the same way; a concrete step at the floor is stable
    kernel = build_method(ExperimentConfig(method="emcmc"), lambda p, b: -p, 1000, 1)[0]
    state = kernel.init(jnp.ones(2))
    kernel.step(jax.random.key(0), state, None, 0.5 / 1000)
    with pytest.raises(ValueError, match="auto"):
        build_method(ExperimentConfig(method="emcmc", eta="auto"), lambda p, b: -p, 1000, 1)


def test_eta_auto_is_proposed_by_the_rule_and_recorded(digits):
    config = ExperimentConfig(
        method="emcmc", eta="auto", guide_step_ratio=4.0, collect_last=1, **TINY
    )
    config = dataclasses.replace(config, cycle_warmup=0.0)  # the largest step is lr / N
    report = run_experiment(config, digits, progress=False)
    proposal = report["eta_proposal"]
    assert report["config"]["eta"] == proposal["eta"] > 0
    step = TINY["lr"] / len(digits.x_train)
    assert proposal["eta"] >= (1 + 4.0) * step * 0.999  # the rule's stability floor
    assert proposal["active"] in ("curvature", "budget", "stability")
    assert _finite(report["sets"]["theta"])


@pytest.mark.parametrize(
    "fields, pattern",
    [
        ({"method": "entropy-sgd", "eta": "auto"}, "entropy-sgd"),
        ({"method": "emcmc", "eta": "auto", "temperature": 0.0}, "temperature"),
        ({"method": "emcmc", "eta": "fast"}, "eta"),
        ({"method": "emcmc", "eta": -1.0}, "eta"),
    ],
)
def test_eta_none_needs_entropy_mcmc_and_a_temperature(fields, pattern):
    with pytest.raises(ValueError, match=pattern):
        ExperimentConfig(**fields).validate()


def test_chain_diagnostics_per_sample_set_and_the_progress_bar(digits, capsys):
    config = ExperimentConfig(method="emcmc", cycles=2, collect_last=2, **{**TINY, "epochs": 8})
    report = run_experiment(config, digits, progress=True)
    err = capsys.readouterr().err
    assert "emcmc" in err and "8/8" in err  # one bar over setup, epochs and evaluation
    assert report["chain_diagnostics"]["collected_epochs"] == [2, 3, 6, 7]
    assert len(report["chain_diagnostics"]["probe_test_rows"]) == 32
    assert set(report["trace"]) == {"nll", "accuracy"}
    for name, chains in (("theta", 2), ("guide", 2), ("pooled", 4)):
        d = report["sets"][name]["chains"]
        assert (d["num_chains"], d["num_draws"], d["note"]) == (chains, 4, None)
        assert d["groups"]["predictive"]["num_quantities"] == 32 * digits.num_classes
        assert set(d["groups"]) == {"nll", "accuracy", "predictive"}
        assert d["max_rhat"] >= 0.9 and d["median_ess"] > 0
    # pooling theta's and the guide's chains can only add disagreement
    assert report["sets"]["pooled"]["chains"]["groups"]["nll"]["max_rhat"] >= 0.9


def test_chain_diagnostics_say_why_when_a_run_has_too_few_draws(digits):
    report = run_experiment(ExperimentConfig(method="sgd", **TINY), digits, progress=False)
    d = report["sets"]["theta"]["chains"]
    assert d["max_rhat"] is None and d["num_draws"] == 1
    assert "draws per chain" in d["note"]


def test_prepare_run_is_what_run_experiment_runs(digits):
    """A custom loop.run over prepare_run's objects retraces run_experiment's chains."""
    from flatjax.inference import loop

    config = ExperimentConfig(method="emcmc", **{**TINY, "cycles": 2, "collect_last": 1})
    report = run_experiment(config, digits, progress=False)
    run = prepare_run(config, digits)
    assert run.config.eta == report["config"]["eta"] and run.steps_per_epoch == 1437 // 128
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)

    def nll(p):  # run_experiment's trace: mean NLL on the first 512 training rows
        probs = jax.nn.softmax(run.apply_fn(p, x[:512]))
        return -jnp.mean(jnp.log(jnp.take_along_axis(probs, y[:512, None], 1) + 1e-12))

    result = loop.run(
        run.kernel,
        run.state,
        (x, y),
        run.run_key,
        num_epochs=config.epochs,
        batch_size=config.batch_size,
        step_size=run.step_size,
        temperature=run.temperature,
        collect=run.collect,
        trace_fn=lambda p: {"nll": nll(p)},
        progress=False,
    )
    np.testing.assert_allclose(
        np.asarray(result.trace["nll"]), np.asarray(report["trace"]["nll"]), rtol=1e-5
    )


def test_cycle_warmup_ramps_every_restart_of_the_run():
    """`cycle_warmup` epochs of linear ramp at the start of every cycle, nothing else moved."""
    grad_fn = lambda p, b: p  # noqa: E731 (never called)
    steps = 10  # per epoch; 4 epochs, 2 cycles of 20 steps
    ramped = ExperimentConfig(method="emcmc", epochs=4, cycles=2, cycle_warmup=0.5)
    plain = dataclasses.replace(ramped, cycle_warmup=0.0)
    _, lr_ramped, _, collect_r = build_method(ramped, grad_fn, 1000, steps)
    _, lr_plain, _, collect_p = build_method(plain, grad_fn, 1000, steps)
    got = np.asarray([float(lr_ramped(k)) for k in range(40)])
    want = np.asarray([float(lr_plain(k)) for k in range(40)])
    ramp = np.minimum(1.0, (np.arange(40) % 20 + 1) / 5)  # 0.5 epoch = 5 steps
    np.testing.assert_allclose(got, want * ramp, rtol=1e-6)
    assert got[20] < 0.25 * want[20]  # the restart no longer jumps to the peak
    assert [collect_r(e) for e in range(4)] == [collect_p(e) for e in range(4)]
    for bad in (-0.1, 2.0, float("nan")):  # a cycle is 2 epochs
        with pytest.raises(ValueError, match="cycle_warmup"):
            dataclasses.replace(ramped, cycle_warmup=bad).validate()


def test_exploration_is_each_methods_own_unless_given():
    """None: cSGLD's noiseless half, none for Entropy-MCMC; a number applies to both."""
    assert exploration_fraction(ExperimentConfig(method="csgld")) == 0.5
    assert exploration_fraction(ExperimentConfig(method="emcmc")) == 0.0
    grad_fn = lambda p, b: p  # noqa: E731 (never called)
    steps = 10  # per epoch; 4 epochs, 2 cycles of 20 steps
    for explore, zero_steps in ((None, []), (0.5, [*range(10), *range(20, 30)])):
        config = ExperimentConfig(method="emcmc", epochs=4, cycles=2, exploration=explore)
        _, _, temperature, _ = build_method(config, grad_fn, 1000, steps)
        temps = np.asarray([float(temperature(k)) for k in range(40)])
        assert np.flatnonzero(temps == 0.0).tolist() == zero_steps
        np.testing.assert_allclose(temps[temps > 0], config.temperature, rtol=1e-6)
    with pytest.raises(ValueError, match="exploration"):
        ExperimentConfig(method="emcmc", exploration=1.0).validate()


def _poison_chain_1(monkeypatch):
    """Make `run_experiment`'s chain 1 start at NaN (every float leaf of its state)."""
    from flatjax.inference import loop

    real = loop.run

    def poisoned(kernel, state, *args, **kwargs):
        def nan_1(x):
            return x.at[1].set(jnp.nan) if jnp.issubdtype(x.dtype, jnp.floating) else x

        return real(kernel, jax.tree.map(nan_1, state), *args, **kwargs)

    monkeypatch.setattr(loop, "run", poisoned)


def test_on_divergence_drop_reports_the_surviving_chains(digits, monkeypatch):
    _poison_chain_1(monkeypatch)
    config = ExperimentConfig(method="sgld", collect_last=1, **TINY)
    with pytest.raises(FloatingPointError, match=r"chain\(s\) \[1\] during epoch 0"):
        run_experiment(config, digits, progress=False)
    with pytest.warns(RuntimeWarning, match="dropped"):
        report = run_experiment(config, digits, progress=False, on_divergence="drop")
    assert report["dropped_chains"] == [[0, [1]]]
    theta = report["sets"]["theta"]
    assert 0.5 < theta["accuracy"] <= 1.0 and math.isfinite(theta["nll"])
    assert theta["chains"]["num_chains"] == 1


def test_cli_on_divergence_drop_says_which_chains(tmp_path, monkeypatch, capsys):
    from flatjax import cli

    _poison_chain_1(monkeypatch)
    args = ["run", "--method", "sgld", "--epochs", "2", "--chains", "2", "--hidden", "16"]
    args += ["--batch-size", "128", "--no-progress", "--no-figures", "--out", str(tmp_path)]
    with pytest.warns(RuntimeWarning, match="dropped"):
        assert cli.main([*args, "--on-divergence", "drop"]) == 0
    out = capsys.readouterr().out
    assert "sgld: chain(s) [1] diverged in epoch 0 and were dropped" in out
    with pytest.raises(SystemExit, match="2"):
        cli.main([*args, "--on-divergence", "drop", "--checkpoint-dir", str(tmp_path / "c")])
    assert "on_divergence" in capsys.readouterr().err
