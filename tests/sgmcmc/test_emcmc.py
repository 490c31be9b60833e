"""Unit tests of the Entropy-MCMC kernels (statistical tests live in tests/statistical)."""

import blackjax
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flatjax
from flatjax.sgmcmc import diffusions, emcmc, emcmc_sghmc


def quadratic_grad_estimator(precision=2.0):
    """grad log p for p = N(0, 1/precision), ignoring the minibatch."""
    return lambda position, minibatch: jax.tree.map(lambda x: -precision * x, position)


def dict_position(dtype=jnp.float32):
    return {"w": jnp.ones((3, 2), dtype), "b": {"c": jnp.full((4,), 0.5, dtype)}}


def test_init_puts_guide_at_position():
    state = flatjax.emcmc(quadratic_grad_estimator(), eta=0.1).init(dict_position())
    assert isinstance(state, flatjax.EMCMCState)
    chex.assert_trees_all_equal(state.position, state.guide)


def test_one_step_matches_the_joint_update_equations():
    """Deterministic part (T=0) of one step, written out by hand."""
    precision, eta, lam, h = 2.0, 0.3, 0.7, 0.01
    sampler = flatjax.emcmc(quadratic_grad_estimator(precision), eta=eta, guide_prior_precision=lam)
    state = emcmc.EMCMCState(jnp.array([1.0, -2.0]), jnp.array([0.5, 0.5]))
    new = sampler.step(jax.random.key(0), state, None, h, temperature=0.0)
    x, a = state
    np.testing.assert_allclose(new.position, x + h * (-precision * x - (x - a) / eta), rtol=1e-6)
    np.testing.assert_allclose(new.guide, a + h * ((x - a) / eta - lam * a), rtol=1e-6)


def test_noise_scale_and_independence_of_blocks():
    """With zero drift (theta == guide, flat target) the step adds N(0, 2hT) to each block."""
    sampler = flatjax.emcmc(lambda p, b: jax.tree.map(jnp.zeros_like, p), eta=1.0)
    state = sampler.init(jnp.zeros(200_000))
    h, temp = 0.01, 3.0
    new = sampler.step(jax.random.key(1), state, None, h, temp)
    sd = np.sqrt(2 * h * temp)
    # the variance estimate of 2e5 normals has relative sd sqrt(2/2e5) = 0.32 %
    assert abs(np.var(new.position) / sd**2 - 1) < 5 * np.sqrt(2 / 2e5)
    assert abs(np.var(new.guide) / sd**2 - 1) < 5 * np.sqrt(2 / 2e5)
    assert abs(np.corrcoef(new.position, new.guide)[0, 1]) < 5 / np.sqrt(2e5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_pytree_positions_keep_structure_and_dtype(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        sampler = flatjax.emcmc(quadratic_grad_estimator(), eta=0.1)
        state = sampler.init(dict_position(dtype))
        new = jax.jit(sampler.step)(jax.random.key(0), state, None, 1e-3, 1.0)
        chex.assert_trees_all_equal_shapes_and_dtypes(new, state)
        sghmc = flatjax.emcmc_sghmc(quadratic_grad_estimator(), eta=0.1)
        hstate = sghmc.init(dict_position(dtype))
        hnew = jax.jit(sghmc.step)(jax.random.key(0), hstate, None, 1e-2, 1.0)
        chex.assert_trees_all_equal_shapes_and_dtypes(hnew, hstate)


def test_flax_params_as_position():
    import flax.linen as nn

    model = nn.Dense(3)
    params = model.init(jax.random.key(0), jnp.ones((1, 4)))

    def grad_fn(p, batch):
        x, y = batch
        return jax.grad(lambda q: -jnp.sum((model.apply(q, x) - y) ** 2))(p)

    sampler = flatjax.emcmc(grad_fn, eta=0.1)
    state = sampler.init(params)
    batch = (jnp.ones((5, 4)), jnp.zeros((5, 3)))
    new = jax.jit(sampler.step)(jax.random.key(0), state, batch, 1e-3)
    chex.assert_trees_all_equal_structs(new.position, params)


@pytest.mark.parametrize("flavour", ["sgld", "sghmc"])
def test_jit_vmap_over_chains_and_single_trace(flavour):
    grad_fn = quadratic_grad_estimator()
    make = flatjax.emcmc if flavour == "sgld" else flatjax.emcmc_sghmc
    sampler = make(grad_fn, eta=0.1)
    num_chains = 8
    chex.clear_trace_counter()
    states = jax.vmap(sampler.init)(jnp.ones((num_chains, 5)))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(keys, states, step_size):
        return jax.vmap(sampler.step, in_axes=(0, 0, None, None))(keys, states, None, step_size)

    for i in range(3):
        keys = jax.random.split(jax.random.key(i), num_chains)
        states = step(keys, states, 1e-2 * (i + 1))
    chex.assert_shape(states.position, (num_chains, 5))
    # chains get distinct noise
    assert len(np.unique(np.asarray(states.position[:, 0]))) == num_chains


def test_vmapped_chain_equals_single_chain():
    sampler = flatjax.emcmc(quadratic_grad_estimator(), eta=0.1)
    keys = jax.random.split(jax.random.key(3), 4)
    states = jax.vmap(sampler.init)(jnp.arange(12.0).reshape(4, 3))
    batched = jax.vmap(sampler.step, in_axes=(0, 0, None, None))(keys, states, None, 1e-2)
    single = sampler.step(keys[2], jax.tree.map(lambda x: x[2], states), None, 1e-2)
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[2], batched), single, rtol=1e-6)


def test_sghmc_flavour_update_equations():
    precision, eta, alpha, h = 2.0, 0.5, 0.2, 0.05
    sampler = flatjax.emcmc_sghmc(quadratic_grad_estimator(precision), eta=eta, alpha=alpha)
    state = emcmc_sghmc.EMCMCSGHMCState(
        jnp.array([1.0]), jnp.array([0.2]), emcmc.EMCMCState(jnp.array([0.3]), jnp.array([-0.4]))
    )
    new = sampler.step(jax.random.key(0), state, None, h, temperature=0.0)
    x, a, (vx, va) = state
    gx = -precision * x - (x - a) / eta
    ga = (x - a) / eta
    np.testing.assert_allclose(new.momentum.position, (1 - alpha) * vx + h * gx, rtol=1e-6)
    np.testing.assert_allclose(new.momentum.guide, (1 - alpha) * va + h * ga, rtol=1e-6)
    # the position moves with the new momentum
    np.testing.assert_allclose(new.position, x + new.momentum.position, rtol=1e-6)
    np.testing.assert_allclose(new.guide, a + new.momentum.guide, rtol=1e-6)


def test_overdamped_langevin_matches_blackjax_without_noise():
    position = {"a": jnp.arange(3.0), "b": jnp.ones((2, 2))}
    grad = jax.tree.map(lambda x: -0.5 * x + 1.0, position)
    key = jax.random.key(0)
    ours = diffusions.overdamped_langevin()(key, position, grad, 0.1, 0.0)
    theirs = blackjax.sgmcmc.diffusions.overdamped_langevin()(key, position, grad, 0.1, 0.0)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-6)


def test_sghmc_without_noise_is_optax_momentum_sgd():
    """eps, alpha == optax.sgd(learning_rate=eps, momentum=1 - alpha) on -log p at T = 0."""
    eps, alpha, temp = 0.04, 0.3, 2.0
    position = {"a": jnp.arange(3.0), "b": jnp.ones((2, 2))}
    loss_grad = lambda p: jax.tree.map(lambda x: 0.5 * x**3 - 1.0, p)
    step = diffusions.sghmc(alpha)
    opt = optax.sgd(learning_rate=eps, momentum=1 - alpha)
    x, v = position, jax.tree.map(jnp.zeros_like, position)
    y, opt_state = position, opt.init(position)
    for _ in range(5):
        x, v = step(jax.random.key(0), x, v, jax.tree.map(jnp.negative, loss_grad(x)), eps, 0.0)
        updates, opt_state = opt.update(loss_grad(y), opt_state)
        y = optax.apply_updates(y, updates)
    chex.assert_trees_all_close(x, y, rtol=1e-5)
    # noise: one step from v = 0 on a flat target has variance 2 alpha eps T
    zeros = jnp.zeros(200_000)
    _, v = step(jax.random.key(0), zeros, zeros, zeros, eps, temp)
    assert abs(float(jnp.var(v)) / (2 * alpha * eps * temp) - 1) < 5 * np.sqrt(2 / 2e5)


def test_joint_logdensity_value_and_gibbs_draw():
    logdensity = lambda x: -0.5 * jnp.sum(x**2)
    joint = emcmc.joint_logdensity(logdensity, eta=0.5, temperature=2.0)
    theta, guide = jnp.array([1.0, 2.0]), jnp.array([0.0, 1.0])
    expected = (-0.5 * 5.0 - 2.0 / (2 * 0.5)) / 2.0
    np.testing.assert_allclose(joint({"position": theta, "guide": guide}), expected, rtol=1e-6)
    np.testing.assert_allclose(joint(emcmc.EMCMCState(theta, guide)), expected, rtol=1e-6)
    with_prior = emcmc.joint_logdensity(logdensity, 0.5, 2.0, guide_prior_precision=3.0)
    np.testing.assert_allclose(
        with_prior({"position": theta, "guide": guide}), expected - 3.0 * 1.0 / 2 / 2.0, rtol=1e-6
    )
    with pytest.raises(TypeError, match="joint position"):
        joint(theta)
    draws = emcmc.sample_guide(
        jax.random.key(0), jnp.full((100_000,), 2.0), eta=0.5, temperature=2.0
    )
    assert abs(float(draws.mean()) - 2.0) < 5 * 1.0 / np.sqrt(1e5)
    assert abs(float(draws.var()) - 1.0) < 5 * np.sqrt(2 / 1e5)


def test_reference_hyperparameters_mapping():
    hp = emcmc.from_reference_hyperparameters(lr=0.5, data_size=50_000, weight_decay=5e-4)
    assert hp.step_size == pytest.approx(1e-5)
    assert hp.prior_precision == pytest.approx(25.0)
    assert hp.guide_prior_precision == pytest.approx(25.0)
    assert hp.eta == 4e-4 and hp.temperature == 1e-4
    with pytest.raises(ValueError, match="data_size"):
        emcmc.from_reference_hyperparameters(lr=0.5, data_size=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eta": 0.0}, "eta"),
        ({"eta": -1.0}, "eta"),
        ({"eta": float("nan")}, "eta"),
        ({"eta": float("inf")}, "eta"),
        ({"eta": 0.1, "guide_prior_precision": -1.0}, "guide_prior_precision"),
    ],
)
def test_emcmc_rejects_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        flatjax.emcmc(quadratic_grad_estimator(), **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eta": 0.0}, "eta"),
        ({"eta": 0.1, "alpha": 0.0}, "alpha"),
        ({"eta": 0.1, "alpha": 1.5}, "alpha"),
        ({"eta": 0.1, "alpha": float("nan")}, "alpha"),
        ({"eta": 0.1, "beta": -0.1}, "beta"),
    ],
)
def test_emcmc_sghmc_rejects_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        flatjax.emcmc_sghmc(quadratic_grad_estimator(), **kwargs)


def test_type_errors_name_the_argument():
    with pytest.raises(TypeError, match="eta"):
        flatjax.emcmc(quadratic_grad_estimator(), eta="big")
    with pytest.raises(TypeError, match="dtype int32"):
        flatjax.emcmc(quadratic_grad_estimator(), eta=0.1).init({"w": jnp.arange(3)})
    with pytest.raises(ValueError, match="empty"):
        flatjax.emcmc(quadratic_grad_estimator(), eta=0.1).init({})


def test_unstable_step_size_is_reported():
    sampler = flatjax.emcmc(quadratic_grad_estimator(), eta=0.1)
    state = sampler.init(jnp.ones(2))
    with pytest.raises(ValueError, match="step_size.*eta"):
        sampler.step(jax.random.key(0), state, None, 0.1)
    with pytest.raises(ValueError, match="temperature"):
        sampler.step(jax.random.key(0), state, None, 0.01, -1.0)
    sghmc = flatjax.emcmc_sghmc(quadratic_grad_estimator(), eta=0.01, alpha=0.5)
    with pytest.raises(ValueError, match="unstable"):
        sghmc.step(jax.random.key(0), sghmc.init(jnp.ones(2)), None, 0.2)


def test_stability_bound_is_sharp():
    """Just below step_size = eta the coupling contracts; the check sits exactly at the edge."""
    eta = 0.1
    sampler = flatjax.emcmc(lambda p, b: jnp.zeros_like(p), eta=eta)
    state = emcmc.EMCMCState(jnp.array([1.0]), jnp.array([-1.0]))
    for _ in range(200):
        state = sampler.step(jax.random.key(0), state, None, 0.99 * eta, 0.0)
    # the difference d = theta - guide obeys d' = (1 - 2 h / eta) d exactly
    np.testing.assert_allclose(state.position - state.guide, 2 * (1 - 2 * 0.99) ** 200, rtol=1e-4)
    # the unchecked update at 1.01 * eta (traced step size) diverges
    step = jax.jit(sampler.step)
    state = emcmc.EMCMCState(jnp.array([1.0]), jnp.array([-1.0]))
    for _ in range(200):
        state = step(jax.random.key(0), state, None, 1.01 * eta, 0.0)
    assert abs(float(state.position[0] - state.guide[0])) > 10
