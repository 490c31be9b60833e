"""Tests of Entropy-SGD and Entropy-SGLD."""

from __future__ import annotations

import math

import blackjax
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flatjax
from flatjax.sgmcmc import entropy_sgd


def quadratic_grad(curvature, center=None):
    """grad log p for log p(x) = -sum(curvature * (x - center)^2) / 2, leaf by leaf."""

    def grad_estimator(position, minibatch):
        del minibatch
        if center is None:
            return jax.tree.map(lambda c, x: -c * x, curvature, position)
        return jax.tree.map(lambda c, m, x: -c * (x - m), curvature, center, position)

    return grad_estimator


def linear_map(a, gamma, inner_step_size, num_inner_steps, ema, inner_temperature, step_size, T):
    """One outer step on log p = -a x^2 / 2 in 1-D, exactly: x' = m x + N(0, q)."""
    b = 1.0 - inner_step_size * (a + gamma)
    p, u = 1.0, 1.0  # x'_l = p x + c . xi,  mu_l = u x + d . xi
    c = np.zeros(0)
    d = np.zeros(0)
    for _ in range(num_inner_steps):
        p = b * p + inner_step_size * gamma
        c = np.append(b * c, math.sqrt(2 * inner_step_size * inner_temperature))
        u = (1 - ema) * u + ema * p
        d = (1 - ema) * np.append(d, 0.0) + ema * c
    m = 1.0 + step_size * gamma * (u - 1.0)
    q = (step_size * gamma) ** 2 * np.sum(d**2) + 2 * step_size * T
    return m, q


def test_init_and_state_shapes_over_dict_pytree():
    position = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2, dtype=jnp.bfloat16)}
    curvature = {"w": 2.0, "b": 1.0}
    sampler = flatjax.sgmcmc.entropy_sgd.as_entropy_sgld_api(
        quadratic_grad(curvature), gamma=1.0, inner_step_size=0.05, num_inner_steps=3
    )
    state = sampler.init(position)
    assert isinstance(state, entropy_sgd.EntropySGDState)
    chex.assert_trees_all_equal(state.position, position)
    chex.assert_trees_all_equal(state.mu, position)
    minibatch = {"x": jnp.zeros((3, 4, 5)), "y": jnp.zeros((3, 4))}
    new = jax.jit(sampler.step)(jax.random.key(0), state, minibatch, 0.1)
    chex.assert_trees_all_equal_shapes_and_dtypes(new.position, position)
    chex.assert_trees_all_equal_shapes_and_dtypes(new.mu, position)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new))


def test_init_rejects_integer_positions():
    with pytest.raises(TypeError, match="floating"):
        entropy_sgd.init({"w": jnp.arange(3)})


def test_jit_vmap_over_chains_traces_once():
    grad_fn = quadratic_grad({"w": 1.0})
    sampler = entropy_sgd.as_top_level_api(grad_fn, gamma=2.0, inner_step_size=0.1)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(keys, states, minibatch, step_size):
        return jax.vmap(sampler.step, in_axes=(0, 0, None, None))(
            keys, states, minibatch, step_size
        )

    num_chains = 5
    states = jax.vmap(sampler.init)({"w": jnp.linspace(-1.0, 1.0, num_chains * 3).reshape(5, 3)})
    minibatch = jnp.zeros((20, 8))
    for i, h in enumerate((0.1, 0.2, 0.3)):
        keys = jax.random.split(jax.random.key(i), num_chains)
        states = step(keys, states, minibatch, h)
    assert states.position["w"].shape == (num_chains, 3)
    # the chains are different (independent keys, different starts)
    assert len(np.unique(np.asarray(states.position["w"][:, 0]))) == num_chains
    chex.clear_trace_counter()


def test_one_step_matches_python_loop():
    """Entropy-SGD, noiseless inner chain, one minibatch per inner step."""
    num_inner, gamma, h_in, ema, h = 5, 3.0, 0.05, 0.25, 0.2
    a = np.array([1.0, 4.0])
    rng = np.random.default_rng(0)
    batches = rng.normal(size=(num_inner, 7, 2)).astype(np.float32)
    x0 = np.array([1.5, -2.0])

    def grad_estimator(position, minibatch):  # log p = -sum a (x - mean(batch))^2 / 2
        return -jnp.asarray(a, jnp.float32) * (position - jnp.mean(minibatch, axis=0))

    sampler = entropy_sgd.as_top_level_api(
        grad_estimator, gamma, h_in, num_inner_steps=num_inner, ema=ema, inner_temperature=0.0
    )
    state = jax.jit(sampler.step)(
        jax.random.key(0), sampler.init(jnp.asarray(x0, jnp.float32)), jnp.asarray(batches), h
    )

    x_prime, mu = x0.copy(), x0.copy()
    for batch in batches.astype(np.float64):
        grad = -a * (x_prime - batch.mean(axis=0)) - gamma * (x_prime - x0)
        x_prime = x_prime + h_in * grad
        mu = (1 - ema) * mu + ema * x_prime
    expected = x0 + h * gamma * (mu - x0)
    np.testing.assert_allclose(state.mu, mu, rtol=1e-5)
    np.testing.assert_allclose(state.position, expected, rtol=1e-5)


def test_shared_minibatch_equals_repeated_minibatch():
    def grad_estimator(position, minibatch):
        return jnp.mean(minibatch) - position

    kwargs = dict(gamma=1.0, inner_step_size=0.1, num_inner_steps=4)
    stacked = entropy_sgd.as_entropy_sgld_api(grad_estimator, **kwargs)
    shared = entropy_sgd.as_entropy_sgld_api(grad_estimator, shared_minibatch=True, **kwargs)

    @jax.jit
    def both(key, state, batch):
        return stacked.step(key, state, jnp.tile(batch, (4, 1)), 0.5), shared.step(
            key, state, batch, 0.5
        )

    out_stacked, out_shared = both(jax.random.key(3), stacked.init(jnp.zeros(2)), jnp.arange(6.0))
    chex.assert_trees_all_close(out_stacked, out_shared)


def test_entropy_sgld_api_is_langevin_outer_and_reduces_to_entropy_sgd_at_zero_temperature():
    grad_fn = quadratic_grad({"w": 1.0})
    kwargs = dict(gamma=1.0, inner_step_size=0.1, num_inner_steps=3, shared_minibatch=True)
    esgld = entropy_sgd.as_entropy_sgld_api(grad_fn, **kwargs).step
    esgld_flag = entropy_sgd.as_top_level_api(grad_fn, langevin_outer=True, **kwargs).step
    esgd = entropy_sgd.as_top_level_api(grad_fn, **kwargs).step

    @jax.jit
    def run(key, state):
        return [
            (
                esgld(key, state, None, 0.5, t),
                esgld_flag(key, state, None, 0.5, t),
                esgd(key, state, None, 0.5, t),
            )
            for t in (0.7, 0.0, 1.0)
        ]

    (a, b, _), (c, _, d), (e, _, f) = run(jax.random.key(1), entropy_sgd.init({"w": jnp.ones(3)}))
    chex.assert_trees_all_equal(a, b)
    chex.assert_trees_all_close(c, d)  # temperature 0: no outer noise
    # at temperature > 0 the outer noise is the only difference: same inner keys
    chex.assert_trees_all_equal(e.mu, f.mu)
    assert float(jnp.max(jnp.abs(e.position["w"] - f.position["w"]))) > 0.0


def test_entropy_sgd_converges_to_the_minimum():
    """Deterministic fixed point: noiseless Entropy-SGD on a quadratic reaches its mode."""
    curvature = {"a": jnp.array([0.5, 2.0, 8.0]), "b": jnp.array(1.0)}
    center = {"a": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array(-0.5)}
    sampler = entropy_sgd.as_top_level_api(
        quadratic_grad(curvature, center),
        gamma=2.0,
        inner_step_size=0.05,
        inner_temperature=0.0,
        shared_minibatch=True,
    )
    state = sampler.init(jax.tree.map(jnp.zeros_like, center))

    def body(state, key):
        return sampler.step(key, state, None, 0.5), None

    keys = jax.random.split(jax.random.key(0), 200)
    state, _ = jax.jit(lambda s: jax.lax.scan(body, s, keys))(state)
    chex.assert_trees_all_close(state.position, center, atol=1e-4)
    chex.assert_trees_all_close(state.mu, center, atol=1e-4)


def test_inner_chain_law_after_L_steps():
    """With ema = 1, mu is the inner chain's last sample: an exact Gaussian given x."""
    a, gamma, h_in, num_inner, t_in, x0 = 3.0, 2.0, 0.02, 60, 0.5, 1.5
    sampler = entropy_sgd.as_top_level_api(
        quadratic_grad(a),
        gamma=gamma,
        inner_step_size=h_in,
        num_inner_steps=num_inner,
        ema=1.0,
        inner_temperature=t_in,
        shared_minibatch=True,
    )
    num_chains = 20_000
    state = sampler.init(jnp.full((num_chains,), x0))
    mu = jax.jit(sampler.step)(jax.random.key(7), state, None, 0.1).mu
    b = 1 - h_in * (a + gamma)
    mean = x0 * (b**num_inner + gamma / (a + gamma) * (1 - b**num_inner))
    var = 2 * h_in * t_in * (1 - b ** (2 * num_inner)) / (1 - b**2)
    # the stationary inner law is N(gamma x / (a + gamma), T_in / (a + gamma)) up to O(h)
    assert abs(var - t_in / (a + gamma)) < 0.06 * var
    mu = np.asarray(mu, np.float64)
    assert abs(mu.mean() - mean) < 4 * math.sqrt(var / num_chains)
    assert abs(mu.var() - var) < 4 * var * math.sqrt(2 / num_chains)


@pytest.mark.parametrize("inner_temperature", [None, 0.2])
def test_entropy_sgld_exact_law_on_a_quadratic(inner_temperature):
    """The outer chain is linear-Gaussian: x_{k+1} = m x_k + N(0, q), so from x_0,
    x_k ~ N(m^k x_0, q (1 - m^(2k)) / (1 - m^2)) exactly (m, q from the inner recursion).

    With the inner chain at the outer temperature T, the stationary variance tends to
    T (1/a + 1/gamma) (the posterior smoothed by N(0, T / gamma): the Entropy-MCMC guide
    marginal) as L -> inf and the steps -> 0. The discrete chain's exact law is tested
    within Monte Carlo error.
    """
    a = np.array([1.0, 4.0])
    gamma, h_in, num_inner, ema, h, T = 2.0, 0.05, 20, 0.25, 0.1, 0.5
    t_in = T if inner_temperature is None else inner_temperature
    sampler = entropy_sgd.as_entropy_sgld_api(
        quadratic_grad({"w": jnp.asarray(a, jnp.float32)}),
        gamma=gamma,
        inner_step_size=h_in,
        num_inner_steps=num_inner,
        ema=ema,
        inner_temperature=inner_temperature,
        shared_minibatch=True,
    )
    num_chains, num_steps, x0 = 5_000, 30, 2.0
    state = jax.vmap(sampler.init)({"w": jnp.full((num_chains, 2), x0)})
    step = jax.vmap(sampler.step, in_axes=(0, 0, None, None, None))

    def body(state, key):
        return step(jax.random.split(key, num_chains), state, None, h, T), None

    keys = jax.random.split(jax.random.key(42), num_steps)
    state, _ = jax.jit(lambda s: jax.lax.scan(body, s, keys))(state)
    x = np.asarray(state.position["w"], np.float64)

    for i, ai in enumerate(a):
        m, q = linear_map(ai, gamma, h_in, num_inner, ema, t_in, h, T)
        mean = m**num_steps * x0
        var = q * (1 - m ** (2 * num_steps)) / (1 - m**2)
        assert abs(x[:, i].mean() - mean) < 4 * math.sqrt(var / num_chains), (i, mean)
        assert abs(x[:, i].var() - var) < 4 * var * math.sqrt(2 / num_chains), (i, var)
        if inner_temperature is None:
            # the stationary law is near T (1/a + 1/gamma), with an O(h, 1/L) bias
            smoothed = T * (1 / ai + 1 / gamma)
            assert abs(q / (1 - m**2) - smoothed) < 0.2 * smoothed


def test_minibatch_leading_axis_is_validated():
    sampler = entropy_sgd.as_top_level_api(
        quadratic_grad(1.0), gamma=1.0, inner_step_size=0.1, num_inner_steps=4
    )
    state = sampler.init(jnp.zeros(2))
    with pytest.raises(ValueError, match=r"leading axis of length num_inner_steps=4"):
        sampler.step(jax.random.key(0), state, {"x": jnp.zeros((3, 5))}, 0.1)
    with pytest.raises(ValueError, match=r"\['x'\]"):
        jax.jit(sampler.step)(jax.random.key(0), state, {"x": jnp.zeros(()), "y": None}, 0.1)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"gamma": 0.0}, ValueError, "gamma"),
        ({"gamma": -1.0}, ValueError, "gamma"),
        ({"gamma": float("inf")}, ValueError, "gamma"),
        ({"gamma": "big"}, TypeError, "gamma"),
        ({"inner_step_size": 0.0}, ValueError, "inner_step_size"),
        ({"inner_step_size": float("nan")}, ValueError, "inner_step_size"),
        ({"inner_step_size": 2.0}, ValueError, "inner_step_size"),  # h' gamma >= 2
        ({"num_inner_steps": 0}, ValueError, "num_inner_steps"),
        ({"num_inner_steps": 2.0}, TypeError, "num_inner_steps"),
        ({"ema": 0.0}, ValueError, "ema"),
        ({"ema": 1.5}, ValueError, "ema"),
        ({"inner_temperature": -1.0}, ValueError, "inner_temperature"),
        ({"langevin_outer": 1}, TypeError, "langevin_outer"),
        ({"shared_minibatch": "yes"}, TypeError, "shared_minibatch"),
    ],
)
def test_hyperparameter_validation(kwargs, exc, match):
    args = {"gamma": 1.0, "inner_step_size": 0.1} | kwargs
    with pytest.raises(exc, match=match):
        entropy_sgd.build_kernel(**args)


def test_step_size_and_temperature_validation():
    sampler = entropy_sgd.as_top_level_api(
        quadratic_grad(1.0), gamma=1.0, inner_step_size=0.1, shared_minibatch=True
    )
    state = sampler.init(jnp.zeros(2))
    with pytest.raises(ValueError, match="step_size"):
        sampler.step(jax.random.key(0), state, None, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        sampler.step(jax.random.key(0), state, None, 0.1, -1.0)


def test_grad_estimator_from_blackjax_with_minibatches():
    data = jax.random.normal(jax.random.key(0), (40, 2)) + 1.0
    grad_fn = blackjax.sgmcmc.gradients.grad_estimator(
        lambda p: -0.5 * jnp.sum(p**2),
        lambda p, x: -0.5 * jnp.sum((x - p) ** 2),
        data_size=40,
    )
    sampler = entropy_sgd.as_top_level_api(grad_fn, gamma=10.0, inner_step_size=0.01)
    state = sampler.init(jnp.zeros(2))
    state = jax.jit(sampler.step)(jax.random.key(1), state, data.reshape(20, 2, 2), 0.05)
    assert state.position.shape == (2,) and bool(jnp.all(jnp.isfinite(state.position)))
