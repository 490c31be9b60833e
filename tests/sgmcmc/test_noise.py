"""Rademacher noise (random signs from packed bits) and the ``noise=`` option of the kernels."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flatjax
from flatjax._util import rademacher_like
from flatjax.sgmcmc import emcmc, sghmc, sgld


def test_signs_are_fair_independent_and_shaped_like_the_tree():
    """+-1 only; P(+1) = 1/2 and lag-1 / bit-position correlations 0, within 4 binomial SEs."""
    tree = {"a": jnp.zeros((257, 129)), "b": jnp.zeros(5, jnp.bfloat16), "c": jnp.zeros(())}
    signs = rademacher_like(jax.random.key(0), tree)
    assert jax.tree.map(jnp.shape, signs) == jax.tree.map(jnp.shape, tree)
    assert signs["b"].dtype == jnp.bfloat16
    x = np.asarray(signs["a"], dtype=np.float64).ravel()
    assert set(np.unique(x)) == {-1.0, 1.0}
    se = 1.0 / math.sqrt(len(x))
    assert abs(x.mean()) < 4 * se
    assert abs(np.mean(x[1:] * x[:-1])) < 4 * se  # neighbours: adjacent bits of a word
    assert abs(np.mean(x[32:] * x[:-32])) < 4 * se  # the same bit of adjacent words
    again = rademacher_like(jax.random.key(0), tree)
    other = rademacher_like(jax.random.key(1), tree)
    np.testing.assert_array_equal(again["a"], signs["a"])
    assert np.mean(np.asarray(other["a"]) == np.asarray(signs["a"])) < 0.6


def test_noise_option_of_every_langevin_kernel():
    """At T > 0 the rademacher kernels move every coordinate by exactly +-sqrt(2 h T)."""
    grad = lambda p, b: jnp.zeros_like(p)
    h, t = 0.02, 0.5
    scale = math.sqrt(2 * h * t)
    x = sgld.as_top_level_api(grad, noise="rademacher").step(
        jax.random.key(0), jnp.zeros(64), None, h, t
    )
    np.testing.assert_allclose(np.abs(x), scale, rtol=1e-6)
    s = flatjax.emcmc(grad, eta=1.0, noise="rademacher", guide_step_ratio=4.0)
    state = s.step(jax.random.key(0), s.init(jnp.zeros(64)), None, h, t)
    np.testing.assert_allclose(np.abs(state.position), scale, rtol=1e-6)
    np.testing.assert_allclose(np.abs(state.guide), 2 * scale, rtol=1e-6)  # step r h
    m = sghmc.as_top_level_api(grad, alpha=0.5, noise="rademacher")
    state = m.step(jax.random.key(0), m.init(jnp.zeros(64)), None, h, t)
    np.testing.assert_allclose(np.abs(state.momentum), math.sqrt(2 * 0.5 * h * t), rtol=1e-6)
    guide = emcmc.sample_guide(jax.random.key(0), jnp.zeros(64), eta=0.3, noise="rademacher")
    np.testing.assert_allclose(np.abs(guide), math.sqrt(0.3), rtol=1e-6)


@pytest.mark.parametrize(
    "build",
    [
        lambda: flatjax.emcmc(lambda p, b: p, eta=1.0, noise="uniform"),
        lambda: flatjax.emcmc_sghmc(lambda p, b: p, eta=1.0, noise="normal"),
        lambda: sgld.as_top_level_api(lambda p, b: p, noise=None),
        lambda: sghmc.as_top_level_api(lambda p, b: p, noise="signs"),
        lambda: emcmc.sample_guide(jax.random.key(0), jnp.zeros(2), 1.0, noise="x"),
    ],
)
def test_unknown_noise_is_refused_at_construction(build):
    with pytest.raises(ValueError, match="`noise`"):
        build()


def test_flatjax_sgld_with_gaussian_noise_has_blackjax_sgld_moments():
    """One step from 0 with zero gradient: the same N(0, 2 h T) per coordinate (4 SEs)."""
    h, t, n = 0.1, 1.0, 20000
    x = sgld.as_top_level_api(lambda p, b: jnp.zeros_like(p)).step(
        jax.random.key(3), jnp.zeros(n), None, h, t
    )
    var = float(jnp.var(x))
    assert abs(var - 2 * h * t) < 4 * 2 * h * t * math.sqrt(2 / n)


@pytest.mark.parametrize("shape", [(7,), (3, 100)])
@pytest.mark.parametrize("raw_key", [False, True])
def test_standard_normal_is_jax_random_normal_bit_for_bit(shape, raw_key):
    """The unrolled threefry path (CPU) draws exactly jax.random.normal's numbers."""
    from flatjax._util import standard_normal

    key = jax.random.PRNGKey(3) if raw_key else jax.random.key(3)
    np.testing.assert_array_equal(
        jax.jit(lambda k: standard_normal(k, shape))(key), jax.random.normal(key, shape)
    )
    keys = jax.random.split(jax.random.key(4), 3)
    np.testing.assert_array_equal(
        jax.vmap(lambda k: standard_normal(k, shape))(keys),
        jax.vmap(lambda k: jax.random.normal(k, shape))(keys),
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_standard_normal_other_dtypes_and_keys_fall_back_to_jax(dtype):
    from flatjax._util import standard_normal

    for key in (jax.random.key(5), jax.random.key(5, impl="rbg")):
        np.testing.assert_array_equal(
            standard_normal(key, (10,), dtype), jax.random.normal(key, (10,), dtype)
        )


def test_flatjax_sgld_gaussian_is_blackjax_sgld_bit_for_bit():
    """The run loop's SGLD/cSGLD use flatjax.sgmcmc.sgld: the same chain as blackjax.sgld
    (noise drawn over the raveled position through the faster exact normal path)."""
    import blackjax

    def grad_fn(p, batch):
        return jax.tree.map(lambda a: -a * batch, p)

    position = {"w": jnp.linspace(-1.0, 1.0, 300).reshape(3, 100), "b": jnp.arange(5.0)}
    ours, theirs = sgld.as_top_level_api(grad_fn), blackjax.sgld(grad_fn)

    def chain(alg, key, x):
        def body(x, k):
            return alg.step(k, x, 0.5, 1e-2, 0.3), None

        return jax.lax.scan(body, x, jax.random.split(key, 20))[0]

    keys = jax.random.split(jax.random.key(7), 4)
    stacked = jax.tree.map(lambda a: jnp.stack([a, 2 * a, -a, a + 1]), position)
    single = [jax.jit(lambda k, x, a=a: chain(a, k, x))(keys[0], position) for a in (ours, theirs)]
    batched = [
        jax.jit(jax.vmap(lambda k, x, a=a: chain(a, k, x)))(keys, stacked) for a in (ours, theirs)
    ]
    for a, b in (single, batched):
        for name in position:
            np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]))
