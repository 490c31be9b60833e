"""Tests of SWAG moment collection and sampling."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flatjax.testing import bonferroni_z
from flatjax.vi import lowrank_gaussian, swag


def iterates(num=7, seed=0):
    """A stack of known iterates as a pytree with two leaves (P = 6)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(num, 2, 2)).astype(np.float32) + 1.0
    b = rng.normal(size=(num, 2)).astype(np.float32) * 0.5
    return {"w": w, "b": b}


def flat(tree, lead=0):
    """Concatenate the leaves of ``tree`` (keeping ``lead`` leading axes)."""
    leaves = jax.tree.leaves(tree)
    return np.concatenate([np.asarray(x).reshape(x.shape[:lead] + (-1,)) for x in leaves], axis=-1)


def flat_deviations(state):
    """D as a (P, K) matrix, rows in the same order as :func:`flat`."""
    leaves = jax.tree.leaves(state.deviations)
    return np.concatenate([np.asarray(d).reshape(-1, d.shape[-1]) for d in leaves], axis=0)


def expected_deviation(thetas, i):
    """theta_i - mean(theta_1..theta_i) (0-based i), flattened."""
    x = flat(thetas, lead=1).astype(np.float64)
    return x[i] - x[: i + 1].mean(axis=0)


def test_moments_match_numpy_and_the_buffer_holds_the_last_k_deviations():
    thetas, k = iterates(7), 3
    state = swag.init(jax.tree.map(lambda x: x[0], thetas), max_rank=k)
    for i in range(7):
        state = swag.update(state, jax.tree.map(lambda x, i=i: x[i], thetas))
    x = flat(thetas, lead=1).astype(np.float64)
    np.testing.assert_allclose(flat(state.mean), x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flat(state.sq_mean), (x**2).mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flat(swag.diagonal_variance(state)), x.var(0), rtol=1e-4, atol=1e-6)
    assert int(state.num_collected) == 7
    # ring buffer: iterate i (0-based) sits in column i % K; after 7: columns [6, 4, 5]
    d = flat_deviations(state)
    for column, i in enumerate([6, 4, 5]):
        np.testing.assert_allclose(d[:, column], expected_deviation(thetas, i), atol=1e-5)


def test_buffer_is_zero_padded_until_full():
    thetas = iterates(2)
    state = swag.collect_swag(thetas, max_rank=4)
    d = flat_deviations(state)
    np.testing.assert_allclose(d[:, 1], expected_deviation(thetas, 1), atol=1e-6)
    np.testing.assert_array_equal(d[:, 0], 0.0)  # the first deviation is always 0
    np.testing.assert_array_equal(d[:, 2:], 0.0)


def test_collect_swag_is_a_scan_of_update_and_vmaps_over_chains():
    thetas = iterates(5)
    state = swag.init(jax.tree.map(lambda x: x[0], thetas), max_rank=3)
    for i in range(5):
        state = swag.update(state, jax.tree.map(lambda x, i=i: x[i], thetas))
    scanned = jax.jit(swag.collect_swag, static_argnums=1)(thetas, 3)
    chex.assert_trees_all_close(scanned, state, rtol=1e-6, atol=1e-7)
    # run-loop samples are (num_samples, num_chains, ...): one SWAG per chain
    two_chains = jax.tree.map(lambda x: jnp.stack([x, 2 * x], axis=1), thetas)
    per_chain = jax.vmap(lambda s: swag.collect_swag(s, 3), in_axes=1)(two_chains)
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[0], per_chain), state, rtol=1e-6)
    np.testing.assert_allclose(per_chain.mean["w"][1], 2 * state.mean["w"], rtol=1e-6)


def exact_swag_covariance(state):
    k = flat_deviations(state).shape[1]
    d = flat_deviations(state).astype(np.float64)
    var = flat(state.sq_mean).astype(np.float64) - flat(state.mean).astype(np.float64) ** 2
    return 0.5 * np.diag(var) + d @ d.T / (2 * (k - 1))


def test_to_lowrank_gaussian_has_the_swag_covariance():
    state = swag.collect_swag(iterates(6), max_rank=3)
    q = swag.to_lowrank_gaussian(state)
    assert isinstance(q, lowrank_gaussian.LowRankGaussian)
    mean, cov = lowrank_gaussian.to_dense(q)
    np.testing.assert_allclose(mean, flat(state.mean), rtol=1e-6)
    np.testing.assert_allclose(cov, exact_swag_covariance(state), rtol=1e-4, atol=1e-6)


def test_sample_mean_and_covariance_within_mcse():
    """Independent draws: every mean and covariance entry within Bonferroni z MCSE."""
    state = swag.collect_swag(iterates(6), max_rank=3)
    num = 20_000
    keys = jax.random.split(jax.random.key(42), num)
    draws = jax.jit(jax.vmap(lambda k: swag.sample(k, state)))(keys)
    x = flat(draws, lead=1).astype(np.float64)
    mu = flat(state.mean).astype(np.float64)
    cov = exact_swag_covariance(state)
    p = mu.size
    iu = np.triu_indices(p)
    z_crit = bonferroni_z(p + len(iu[0]), family_error=1e-3)
    z_mean = (x.mean(0) - mu) / np.sqrt(np.diag(cov) / num)
    centred = x - mu  # the exact mean is known, so the products are i.i.d.
    emp = (centred.T @ centred / num)[iu]
    sd = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2)[iu] / num)
    z_cov = (emp - cov[iu]) / sd
    assert np.abs(z_mean).max() < z_crit, (z_mean, z_crit)
    assert np.abs(z_cov).max() < z_crit, (z_cov, z_crit)


def test_scale_multiplies_the_covariance():
    state = swag.collect_swag(iterates(4), max_rank=3)
    key = jax.random.key(0)
    full, half = swag.sample(key, state), swag.sample(key, state, scale=0.5)
    chex.assert_trees_all_close(
        jax.tree.map(lambda h, m: h - m, half, state.mean),
        jax.tree.map(lambda f, m: np.sqrt(0.5) * (f - m), full, state.mean),
        rtol=1e-5,
        atol=1e-6,
    )


def test_validation_errors_name_the_argument_or_leaf():
    params = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}
    with pytest.raises(ValueError, match="max_rank"):
        swag.init(params, max_rank=1)
    with pytest.raises(TypeError, match="max_rank"):
        swag.init(params, max_rank=2.5)
    with pytest.raises(TypeError, match=r"\['b'\]"):
        swag.init({"w": jnp.zeros(2), "b": jnp.zeros(2, jnp.int32)}, max_rank=2)
    state = swag.init(params, max_rank=2)
    with pytest.raises(ValueError, match=r"\['w'\]"):
        swag.update(state, {"w": jnp.zeros(3), "b": jnp.zeros(2)})
    with pytest.raises(ValueError, match="structure"):
        swag.update(state, {"w": jnp.zeros((2, 2))})
    with pytest.raises(ValueError, match="no collected iterates"):
        swag.sample(jax.random.key(0), state)
    state = swag.update(state, params)
    with pytest.raises(ValueError, match="scale"):
        swag.sample(jax.random.key(0), state, scale=-1.0)
    with pytest.raises(ValueError, match="samples"):
        swag.collect_swag({"w": np.zeros((3, 2)), "b": np.zeros((2, 2))}, max_rank=2)
