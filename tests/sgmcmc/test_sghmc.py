import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flatjax.sgmcmc import sghmc


def test_persistent_momentum_update():
    kernel = sghmc.as_top_level_api(lambda p, b: -2.0 * p, alpha=0.5)
    state = sghmc.SGHMCState(jnp.array([1.0]), jnp.array([0.3]))
    new = kernel.step(jax.random.key(0), state, None, 0.1, temperature=0.0)
    v_new = (1 - 0.5) * 0.3 + 0.1 * -2.0
    np.testing.assert_allclose(new.momentum, v_new, rtol=1e-6)
    np.testing.assert_allclose(new.position, 1.0 + v_new, rtol=1e-6)


def test_stationary_variance_of_a_gaussian():
    """Many independent chains on N(0, 1/k) against the exact discrete-time stationary law."""
    k, h, alpha, temp = 1.0, 0.01, 0.1, 1.0
    kernel = sghmc.as_top_level_api(lambda p, b: -k * p, alpha=alpha)
    states = jax.vmap(kernel.init)(jnp.zeros(4000))

    def body(states, key):
        keys = jax.random.split(key, 4000)
        return jax.vmap(kernel.step, in_axes=(0, 0, None, None, None))(
            keys, states, None, h, temp
        ), None

    states, _ = jax.lax.scan(body, states, jax.random.split(jax.random.key(0), 2000))
    # v' = (1 - alpha) v - h k x + e, x' = x + v': M = [[1 - h k, 1 - alpha], [-h k, 1 - alpha]]
    # and the noise e ~ N(0, 2 alpha h T) enters both: Q = 2 alpha h T [[1, 1], [1, 1]]
    m = np.array([[1.0 - h * k, 1.0 - alpha], [-h * k, 1.0 - alpha]])
    q = 2 * alpha * h * temp * np.ones((2, 2))
    sigma = np.linalg.solve(np.eye(4) - np.kron(m, m), q.ravel()).reshape(2, 2)
    # 4000 independent final states (2000 steps >> relaxation time 2 / alpha): sd of the var
    # estimate is sigma * sqrt(2 / 4000)
    var = float(jnp.mean(states.position**2))
    assert abs(var - sigma[0, 0]) < 4 * sigma[0, 0] * np.sqrt(2 / 4000)


def test_rejects_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        sghmc.as_top_level_api(lambda p, b: p, alpha=0.0)
