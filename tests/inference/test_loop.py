"""The run loop: equality with a hand-written loop, collection, BMA, divergence, errors."""

from typing import NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flatjax
from flatjax.inference import bma, loop, optimizer
from flatjax.nn import glue

N, D, C = 96, 5, 3


@pytest.fixture(scope="module")
def problem():
    kx, kw, ky = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (N, D))
    logits = x @ jax.random.normal(kw, (D, C))
    y = jax.random.categorical(ky, logits)
    apply_fn = lambda p, xb: xb @ p["w"] + p["b"]
    ll = glue.categorical_loglikelihood(apply_fn)
    grad_fn = glue.grad_estimator(glue.gaussian_logprior(1.0), ll, N)
    params = {"w": jnp.zeros((D, C)), "b": jnp.zeros(C)}
    predict = lambda p, xb: jax.nn.softmax(apply_fn(p, xb))
    return x, y, grad_fn, params, predict


def stack_chains(params, num_chains):
    return jax.tree.map(lambda a: jnp.stack([a + 0.01 * i for i in range(num_chains)]), params)


def test_loop_equals_hand_written_python_loop(problem):
    x, y, grad_fn, params, _ = problem
    sgld = blackjax.sgld(grad_fn)
    num_chains, num_epochs, batch_size = 2, 3, 32
    schedule = lambda step: 1e-3 / (1.0 + 0.1 * step)
    key = jax.random.key(42)
    init = stack_chains(params, num_chains)
    result = loop.run(
        sgld,
        init,
        (x, y),
        key,
        num_epochs=num_epochs,
        batch_size=batch_size,
        step_size=schedule,
        temperature=0.5,
        collect=loop.every(1),
        progress=False,
    )
    num_batches = N // batch_size
    step = jax.jit(sgld.step)
    for c in range(num_chains):
        position = jax.tree.map(lambda a: a[c], init)
        for epoch in range(num_epochs):
            chain_key = jax.random.split(jax.random.fold_in(key, epoch), num_chains)[c]
            perm_key, steps_key = jax.random.split(chain_key)
            perm = jax.random.permutation(perm_key, N)
            keys = jax.random.split(steps_key, num_batches)
            for i in range(num_batches):
                idx = perm[i * batch_size : (i + 1) * batch_size]
                g = epoch * num_batches + i
                position = step(keys[i], position, (x[idx], y[idx]), schedule(g), 0.5)
            sample = jax.tree.map(lambda a: a[epoch, c], result.samples["theta"])
            jax.tree.map(
                lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
                sample,
                position,
            )
    assert result.collected_epochs == [0, 1, 2]


def test_emcmc_collects_theta_and_guide_and_streams_the_bma(problem):
    x, y, grad_fn, params, predict = problem
    sampler = flatjax.emcmc(grad_fn, eta=0.05)
    states = jax.vmap(sampler.init)(stack_chains(params, 3))
    trace_fn = lambda p: {
        "nll": -jnp.mean(
            glue.categorical_loglikelihood(lambda q, xb: xb @ q["w"] + q["b"])(p, (x, y))
        )
    }
    result = loop.run(
        sampler,
        states,
        (x, y),
        jax.random.key(1),
        num_epochs=4,
        batch_size=16,
        step_size=1e-3,
        collect=loop.every(2),
        predict_fn=predict,
        eval_x=x[:10],
        trace_fn=trace_fn,
        progress=False,
    )
    assert set(result.samples) == {"theta", "guide"}
    assert result.samples["guide"]["w"].shape == (2, 3, D, C)
    assert result.trace["nll"].shape == (4, 3)
    assert result.trace["nll"][-1].mean() < result.trace["nll"][0].mean()
    for name in ("theta", "guide"):
        probs = jax.vmap(jax.vmap(lambda p: predict(p, x[:10])))(result.samples[name])
        np.testing.assert_allclose(
            bma.predictive(result.bma[name]), probs.mean((0, 1)), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            bma.predictive(result.bma[name], per_chain=True), probs.mean(0), rtol=1e-5, atol=1e-6
        )


def test_bma_only_mode_keeps_no_samples(problem):
    x, y, grad_fn, params, predict = problem
    result = loop.run(
        blackjax.sgld(grad_fn),
        stack_chains(params, 2),
        (x, y),
        jax.random.key(2),
        num_epochs=2,
        batch_size=32,
        step_size=1e-3,
        collect=loop.every(1),
        keep_samples=False,
        predict_fn=predict,
        eval_x=x,
        progress=False,
    )
    assert result.samples is None
    assert int(result.bma["theta"].count.sum()) == 4


def test_optimizer_kernel_trains_and_matches_optax(problem):
    x, y, grad_fn, params, _ = problem
    sgd = optimizer.as_top_level_api(grad_fn, optax.trace(decay=0.9))
    state = sgd.init(params)
    opt = optax.sgd(learning_rate=1e-3, momentum=0.9)
    opt_state = opt.init(params)
    p = params
    for _ in range(3):
        state = sgd.step(jax.random.key(0), state, (x, y), 1e-3)
        loss_grad = jax.tree.map(jnp.negative, grad_fn(p, (x, y)))
        updates, opt_state = opt.update(loss_grad, opt_state)
        p = optax.apply_updates(p, updates)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), state.position, p)


def test_divergence_names_epoch_and_chain_and_keeps_samples(problem):
    x, y, grad_fn, params, _ = problem
    sgld = blackjax.sgld(grad_fn)
    # chain 1 starts at NaN, chain 0 is fine; collect after epoch 0 happens before detection
    init = jax.tree.map(lambda a: jnp.stack([a, a * jnp.nan]), params)
    with pytest.raises(loop.DivergenceError, match=r"chain\(s\) \[1\] during epoch 0") as info:
        loop.run(
            sgld,
            init,
            (x, y),
            jax.random.key(0),
            num_epochs=2,
            batch_size=32,
            step_size=1e-3,
            collect=loop.every(1),
            progress=False,
        )
    assert info.value.result.diverged == (0, [1])
    grows = lambda step: jnp.where(step < 6, 1e-4, 1e20)  # explodes in epoch 2
    init = stack_chains(params, 2)
    result = loop.run(
        sgld,
        init,
        (x, y),
        jax.random.key(0),
        num_epochs=4,
        batch_size=32,
        step_size=grows,
        collect=loop.every(1),
        on_divergence="stop",
        progress=False,
    )
    assert result.diverged[0] == 2
    assert result.collected_epochs == [0, 1]
    assert np.isfinite(result.samples["theta"]["w"]).all()


def test_divergence_at_a_schedule_restart_is_named(problem):
    """A step that jumps back up (a cyclical restart) inside the diverging epoch is named;
    a schedule that was already large is not blamed on a restart."""
    x, y, grad_fn, params, _ = problem
    sgld = blackjax.sgld(grad_fn)
    spe = x.shape[0] // 32
    restart = lambda step: jnp.where(step < spe + 1, 1e-4, 1e20)  # jumps in epoch 1
    args = dict(num_epochs=3, batch_size=32, collect=loop.every(1), progress=False)
    init = stack_chains(params, 2)
    with pytest.raises(loop.DivergenceError, match="during epoch 1") as info:
        loop.run(sgld, init, (x, y), jax.random.key(0), step_size=restart, **args)
    assert f"jumped from 0.0001 to 1e+20 at global step {spe + 1}" in str(info.value)
    with pytest.raises(loop.DivergenceError) as info:
        loop.run(sgld, init, (x, y), jax.random.key(0), step_size=1e20, **args)
    assert "jumped" not in str(info.value)


def test_collection_rules():
    rule = loop.last_epochs_of_cycles(200, 4, 2)
    assert [e for e in range(200) if rule(e)] == [48, 49, 98, 99, 148, 149, 198, 199]
    with pytest.raises(ValueError, match="num_last"):
        loop.last_epochs_of_cycles(8, 4, 3)
    with pytest.raises(ValueError, match="thin"):
        loop.every(0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_epochs": 0}, "num_epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 10_000}, "batch_size"),
        ({"step_size": float("nan")}, "step_size"),
        ({"temperature": -1.0}, "temperature"),
        ({"on_divergence": "ignore"}, "on_divergence"),
    ],
)
def test_bad_arguments(problem, kwargs, match):
    x, y, grad_fn, params, _ = problem
    args = dict(num_epochs=1, batch_size=8, step_size=1e-3, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        loop.run(blackjax.sgld(grad_fn), stack_chains(params, 1), (x, y), jax.random.key(0), **args)


def test_mismatched_data_rows(problem):
    x, y, grad_fn, params, _ = problem
    with pytest.raises(ValueError, match="disagree"):
        loop.run(
            blackjax.sgld(grad_fn),
            stack_chains(params, 1),
            (x, y[:-1]),
            jax.random.key(0),
            num_epochs=1,
            batch_size=8,
            step_size=1e-3,
        )


def test_several_minibatches_per_step(problem):
    x, y, grad_fn, params, _ = problem
    seen = []

    class Recorder:
        """A kernel that records the minibatch shapes it is given."""

        @staticmethod
        def step(key, state, minibatch, step_size, temperature):
            seen.append(jax.tree.map(jnp.shape, minibatch))
            return state

    result = loop.run(
        Recorder,
        stack_chains(params, 1),
        (x, y),
        jax.random.key(0),
        num_epochs=1,
        batch_size=8,
        minibatches_per_step=4,
        step_size=1e-3,
        progress=False,
    )
    assert seen[0] == ((4, 8, D), (4, 8))
    assert result.collected_epochs == [0]
    with pytest.raises(ValueError, match="minibatches_per_step"):
        loop.run(
            Recorder,
            stack_chains(params, 1),
            (x, y),
            jax.random.key(0),
            num_epochs=1,
            batch_size=8,
            minibatches_per_step=0,
            step_size=1e-3,
        )


@pytest.mark.parametrize(
    "num_chains, vectorize_chains",
    # on CPU "auto" vmaps 3 small chains and runs a single chain unbatched
    [(3, False), (3, 2), (3, "auto"), (1, "auto")],
)
def test_sequential_chains_give_the_same_samples(problem, num_chains, vectorize_chains):
    x, y, grad_fn, params, predict = problem
    sampler = flatjax.emcmc(grad_fn, eta=0.05)
    states = jax.vmap(sampler.init)(stack_chains(params, num_chains))
    args = dict(
        num_epochs=2,
        batch_size=32,
        step_size=1e-3,
        collect=loop.every(1),
        predict_fn=predict,
        eval_x=x[:5],
        progress=False,
    )
    a = loop.run(sampler, states, (x, y), jax.random.key(3), vectorize_chains=True, **args)
    b = loop.run(
        sampler, states, (x, y), jax.random.key(3), vectorize_chains=vectorize_chains, **args
    )
    jax.tree.map(
        lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6),
        (a.samples, a.bma),
        (b.samples, b.bma),
    )


class _Bomb(NamedTuple):
    """A toy kernel: an AR(1) chain that turns NaN where ``bomb`` once the step is large."""

    @staticmethod
    def init(position):
        return position

    @staticmethod
    def step(rng_key, state, minibatch, step_size, temperature=1.0):
        w = 0.9 * state["w"] + 0.1 * jax.random.normal(rng_key, state["w"].shape)
        w = jnp.where((state["bomb"] > 0) & (step_size > 0.5), jnp.nan, w)
        return {"w": w, "bomb": state["bomb"]}


def _bomb_run(bombs, **kwargs):
    data = jnp.zeros((40, 1))  # batch 10: 4 steps per epoch; the step jumps in epoch 2
    init = {"w": jnp.zeros((len(bombs), 3)), "bomb": jnp.asarray(bombs, jnp.float32)}
    return loop.run(
        _Bomb,
        init,
        data,
        jax.random.key(1),
        num_epochs=4,
        batch_size=10,
        step_size=lambda k: jnp.where(k < 8, 0.1, 1.0),
        collect=loop.every(1),
        sample_fn=lambda s: {"theta": s["w"]},
        trace_fn=lambda s: {"norm": jnp.sum(s["w"] ** 2)},
        progress=False,
        **kwargs,
    )


@pytest.mark.parametrize("vectorize_chains", [True, False, 2])
def test_drop_removes_diverged_chains_and_the_others_go_on_unchanged(vectorize_chains):
    clean = _bomb_run([0, 0, 0, 0], vectorize_chains=vectorize_chains)
    with pytest.warns(RuntimeWarning, match=r"chain\(s\) \[2\] during epoch 2: dropped"):
        result = _bomb_run([0, 0, 1, 0], vectorize_chains=vectorize_chains, on_divergence="drop")
    assert result.dropped == ((2, [2]),) and result.chain_ids == (0, 1, 3)
    assert result.diverged is None and result.collected_epochs == [0, 1, 2, 3]
    assert result.samples["theta"].shape == (4, 3, 3)
    assert result.trace["norm"].shape == (4, 3)
    # the survivors are the chains of the clean run, numbers and traces alike
    keep = [0, 1, 3]
    np.testing.assert_allclose(result.samples["theta"], clean.samples["theta"][:, keep])
    np.testing.assert_allclose(result.trace["norm"], clean.trace["norm"][:, keep])
    assert clean.chain_ids == (0, 1, 2, 3) and clean.dropped == ()


def test_drop_raises_when_every_chain_diverges_and_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(loop.DivergenceError, match=r"chain\(s\) \[0, 1\] during epoch 2"):
        _bomb_run([1, 1], on_divergence="drop")
    with pytest.raises(ValueError, match="on_divergence"):
        _bomb_run([0, 0], on_divergence="drop", checkpoint_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="on_divergence"):
        _bomb_run([0, 0], on_divergence="skip")
