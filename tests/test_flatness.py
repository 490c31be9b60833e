"""Flatness measures on quadratics with known spectra (float64) and a small MLP."""

from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from flatjax import flatness

SHAPES = {"a": (5, 6), "b": (10,)}
P = 40
TOP = np.array([10.0, 8.0, 6.5, 5.0, 4.0])


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def random_params(seed):
    rng = np.random.default_rng(seed)
    return {name: jnp.asarray(rng.normal(size=shape)) for name, shape in SHAPES.items()}


def spectrum_matrix(eigenvalues, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(P, P)))
    return q @ np.diag(eigenvalues) @ q.T


def quadratic(matrix):
    matrix = jnp.asarray(matrix)

    def loss(params):
        x = ravel_pytree(params)[0]
        return 0.5 * x @ matrix @ x

    return loss


@pytest.fixture(scope="module")
def known():
    """A = Q diag(lambda) Q^T with a known top 5 over a bulk in [-1, 3]."""
    bulk = np.random.default_rng(1).uniform(-1.0, 3.0, size=P - len(TOP))
    return spectrum_matrix(np.concatenate([TOP, bulk]))


def test_top_eigenvalues_of_a_quadratic(known):
    num_iterations = 30
    loss = quadratic(known)
    top = jax.jit(
        lambda p, key: flatness.top_eigenvalues(
            loss, p, k=5, num_iterations=num_iterations, rng_key=key
        )
    )(random_params(0), jax.random.key(3))
    assert top.dtype == jnp.float64
    np.testing.assert_allclose(top, TOP, rtol=1e-4)
    np.testing.assert_allclose(flatness.eigenvalue_ratio(top), TOP[0] / TOP[4], rtol=1e-4)


def test_lanczos_restarts_on_a_low_rank_hessian():
    """rank 3: after 3 steps the residual is round-off; the other Ritz values must be 0."""
    loss = quadratic(spectrum_matrix(np.concatenate([[7.0, 3.0, 2.0], np.zeros(P - 3)])))
    top = jax.jit(lambda p: flatness.top_eigenvalues(loss, p, k=5, num_iterations=12))(
        random_params(0)
    )
    np.testing.assert_allclose(top, [7.0, 3.0, 2.0, 0.0, 0.0], atol=1e-10)
    # a linear loss: every residual is exactly zero, and every step restarts
    linear = lambda p: sum(jnp.sum(x) for x in jax.tree.leaves(p))
    top = jax.jit(lambda p: flatness.top_eigenvalues(linear, p, k=2, num_iterations=3))(
        random_params(0)
    )
    np.testing.assert_array_equal(top, [0.0, 0.0])


def test_hutchinson_trace_within_exact_mcse(known):
    loss = quadratic(known)
    n = 2000
    est = jax.jit(lambda p, key: flatness.hutchinson_trace(loss, p, key, num_samples=n))(
        random_params(0), jax.random.key(5)
    )
    off_diagonal = known - np.diag(np.diag(known))
    sd = np.sqrt(2 * np.sum(off_diagonal**2) / n)  # exact sd of the Rademacher estimator
    z_crit = NormalDist().inv_cdf(1 - 1e-3 / 2)
    assert abs(est - np.trace(known)) < z_crit * sd, (float(est), np.trace(known), sd)


def test_interpolation_of_a_quadratic_is_the_exact_parabola(known):
    a, b = random_params(1), random_params(2)
    xa, xb = ravel_pytree(a)[0], ravel_pytree(b)[0]
    ts, losses = flatness.interpolate_loss(
        quadratic(known), a, b, num_points=9, t_min=-0.5, t_max=1.5
    )
    np.testing.assert_allclose(ts, np.linspace(-0.5, 1.5, 9))
    d = xb - xa
    want = 0.5 * xa @ known @ xa + ts * (xa @ known @ d) + 0.5 * ts**2 * (d @ known @ d)
    np.testing.assert_allclose(losses, want, rtol=1e-12)


def mlp_loss(params):
    x = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
    y = jnp.array([0, 1, 1, 0])
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    logits = h @ params["w2"] + params["b2"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))


def mlp_params(seed):
    rng = np.random.default_rng(seed)
    shapes = {"w1": (3, 4), "b1": (4,), "w2": (4, 2), "b2": (2,)}
    return {n: jnp.asarray(rng.normal(size=s)) for n, s in shapes.items()}


def test_hvp_matches_dense_hessian_of_an_mlp():
    params = mlp_params(0)
    flat, unravel = ravel_pytree(params)
    hessian = jax.jit(jax.hessian(lambda f: mlp_loss(unravel(f))))(flat)
    v = unravel(jnp.asarray(np.random.default_rng(1).normal(size=flat.shape)))
    hv = jax.jit(lambda p, v: flatness.hessian_vector_product(mlp_loss, p, v))(params, v)
    np.testing.assert_allclose(ravel_pytree(hv)[0], hessian @ ravel_pytree(v)[0], rtol=1e-10)


def test_mean_top_eigenvalue_over_stacked_samples(known):
    """f = x^T A x / 2 + sum c x^4 / 4 has Hessian A + diag(3 c x^2), different per sample."""
    c = np.linspace(0.1, 1.0, P)
    base = quadratic(known)
    loss = lambda p: base(p) + 0.25 * jnp.sum(c * ravel_pytree(p)[0] ** 4)
    samples = jax.tree.map(lambda *xs: jnp.stack(xs), *[random_params(s) for s in range(4)])
    want = np.stack(
        [
            np.linalg.eigvalsh(known + np.diag(3 * c * ravel_pytree(random_params(s))[0] ** 2))[
                ::-1
            ][:5]
            for s in range(4)
        ]
    )

    @jax.jit
    def measures(samples):
        eigs = flatness.batched_top_eigenvalues(loss, samples, k=5, num_iterations=P, batch_size=2)
        return eigs, flatness.mean_top_eigenvalue(loss, samples, num_iterations=P)

    got, mean = measures(samples)
    np.testing.assert_allclose(got, want, rtol=1e-8)
    np.testing.assert_allclose(mean, want[:, 0].mean(), rtol=1e-8)
    np.testing.assert_allclose(flatness.eigenvalue_ratio(got), want[:, 0] / want[:, 4], rtol=1e-8)


def test_random_directions_are_filter_normalised():
    params = {"kernel": random_params(0)["a"], "bias": random_params(0)["b"]}
    direction = flatness.random_direction
    d = direction(jax.random.key(0), params)
    np.testing.assert_allclose(
        np.linalg.norm(d["kernel"], axis=0), np.linalg.norm(params["kernel"], axis=0)
    )
    assert np.all(d["bias"] == 0)
    d = direction(jax.random.key(0), params, "filter", 0)
    np.testing.assert_allclose(
        np.linalg.norm(d["kernel"], axis=1), np.linalg.norm(params["kernel"], axis=1)
    )
    d = direction(jax.random.key(0), params, "layer")
    for name in params:
        np.testing.assert_allclose(np.linalg.norm(d[name]), np.linalg.norm(params[name]))


def test_random_direction_loss_is_a_parabola_for_a_quadratic(known):
    params = random_params(3)
    loss = quadratic(known)
    radii = jnp.linspace(-1.0, 1.0, 5)
    losses = flatness.random_direction_loss(
        loss, params, jax.random.key(0), radii, normalize="layer", num_directions=3
    )
    assert losses.shape == (3, 5)
    np.testing.assert_allclose(losses[:, 2], loss(params), rtol=1e-12)  # r = 0
    second = np.diff(losses, n=2, axis=1)  # constant second differences
    np.testing.assert_allclose(second, second[:, :1] * np.ones((1, 3)), rtol=1e-8)


def test_validation():
    loss = quadratic(np.eye(P))
    params = random_params(0)
    with pytest.raises(ValueError, match="`k`"):
        flatness.top_eigenvalues(loss, params, k=0)
    with pytest.raises(ValueError, match="P=40"):
        flatness.top_eigenvalues(loss, params, k=41)
    with pytest.raises(ValueError, match="num_iterations"):
        flatness.top_eigenvalues(loss, params, k=5, num_iterations=4)
    with pytest.raises(ValueError, match="num_iterations"):
        flatness.top_eigenvalues(loss, params, k=5, num_iterations=41)
    with pytest.raises(ValueError, match="normalize"):
        flatness.random_direction(jax.random.key(0), params, normalize="unit")
    with pytest.raises(ValueError, match="leading"):
        flatness.mean_top_eigenvalue(loss, {"a": jnp.zeros((2, 5, 6)), "b": jnp.zeros((3, 10))})
    with pytest.raises(ValueError, match="params_b"):
        flatness.interpolate_loss(loss, params, {"a": params["a"]})
    with pytest.raises(ValueError, match="exceeds"):
        flatness.eigenvalue_ratio(jnp.ones(3), k=4)


def test_hvp_falls_back_to_reverse_mode_for_custom_vjp_models():
    from flatjax.nn.models import CNN

    model = CNN(num_classes=3)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    params = model.init(jax.random.key(1), x)["params"]
    loss = lambda p: jnp.sum(model.apply({"params": p}, x) ** 2)
    v = jax.tree.map(jnp.ones_like, params)
    hvp = flatness.hessian_vector_product(loss, params, v)
    xla = CNN(num_classes=3, conv="xla")
    loss_xla = lambda p: jnp.sum(xla.apply({"params": p}, x) ** 2)
    expected = jax.jvp(jax.grad(loss_xla), (params,), (v,))[1]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-4), hvp, expected)


def test_eigenvalues_and_trace_work_through_custom_vjp():
    """Lanczos and Hutchinson use the HVP with the reverse-mode fallback."""

    @jax.custom_vjp
    def square(x):
        return x**2

    square.defvjp(lambda x: (x**2, x), lambda x, g: (2 * x * g,))
    scales = jnp.arange(1.0, 7.0)
    loss = lambda p: jnp.sum(scales * square(p["w"]))  # Hessian diag(2 * scales)
    params = {"w": jnp.ones(6)}
    top = flatness.top_eigenvalues(loss, params, k=2)
    np.testing.assert_allclose(top, [12.0, 10.0], rtol=1e-4)
    trace = flatness.hutchinson_trace(loss, params, jax.random.key(0), num_samples=4)
    np.testing.assert_allclose(trace, 42.0, rtol=1e-5)  # exact for a diagonal Hessian
