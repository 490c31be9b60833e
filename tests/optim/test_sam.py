"""Tests of SAM, FSAM and bSAM (optax transforms and run-loop kernels)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flatjax._util import normal_like
from flatjax.inference import loop
from flatjax.inference import optimizer as sgd_baseline
from flatjax.optim import sam as sam_lib

N = 40  # data size of the small logistic-regression problem


def logistic_problem():
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (N, 3))
    y = (x @ jnp.array([1.0, -2.0, 0.5]) + 0.3 * jax.random.normal(kw, (N,)) > 0).astype(
        jnp.float32
    )
    params = {"w": jnp.array([0.1, 0.2, -0.3]), "b": jnp.array(0.05)}
    prior_precision = 0.5

    def mean_loss(p, batch):  # mean minibatch NLL + prior / N
        bx, by = batch
        logits = bx @ p["w"] + p["b"]
        nll = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, by))
        sq = jnp.sum(p["w"] ** 2) + p["b"] ** 2
        return nll + 0.5 * prior_precision * sq / N

    def grad_estimator(p, batch):  # gradient of the log-posterior: -N * grad(mean_loss)
        return jax.tree.map(lambda g: -N * g, jax.grad(mean_loss)(p, batch))

    batches = [(x[i : i + 10], y[i : i + 10]) for i in range(0, N, 10)]
    return params, mean_loss, grad_estimator, batches


def run_kernel(kernel, params, batches, step_size):
    key = jax.random.key(3)
    state = kernel.init(params)
    step = jax.jit(kernel.step)
    for i, batch in enumerate(batches):
        state = step(jax.random.fold_in(key, i), state, batch, step_size)
    return state


def run_optax(opt, params, mean_loss, batches, calls_per_step):
    state = opt.init(params)
    update = jax.jit(opt.update)
    grad_fn = jax.jit(jax.grad(mean_loss))
    for batch in batches:
        for _ in range(calls_per_step):
            grads = grad_fn(params, batch)
            updates, state = update(grads, state, params)
            params = optax.apply_updates(params, updates)
    return params


# ------------------------------------------------------------------ agreement with optax


def test_sam_kernel_and_wrapper_agree_with_optax_contrib_sam():
    params, mean_loss, grad_estimator, batches = logistic_problem()
    batches = batches * 2  # 8 steps
    lr, rho = 0.3, 0.05
    base = direction = optax.trace(decay=0.9)  # heavy-ball SAM
    reference = optax.contrib.sam(
        optax.chain(base, optax.scale(-lr)),
        optax.chain(optax.contrib.normalize(), optax.sgd(rho)),
        sync_period=2,
    )
    expected = run_optax(reference, params, mean_loss, batches, calls_per_step=2)
    wrapped = run_optax(
        sam_lib.sam(optax.chain(base, optax.scale(-lr)), rho), params, mean_loss, batches, 2
    )
    kernel = sam_lib.as_top_level_api(grad_estimator, rho, "sam", direction)
    state = run_kernel(kernel, params, batches, step_size=lr / N)
    chex.assert_trees_all_close(wrapped, expected, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(state.position, expected, rtol=2e-5, atol=1e-6)
    assert not jnp.allclose(expected["w"], params["w"])


def test_fsam_kernel_agrees_with_the_optax_form_in_the_mean_loss_scale():
    """The kernel's Fisher is built from -grad / N: the same FSAM as optax on the mean loss."""
    params, mean_loss, grad_estimator, batches = logistic_problem()
    lr, rho, eta = 0.3, 0.05, 20.0
    opt = sam_lib.fsam(optax.chain(optax.trace(0.9), optax.scale(-lr)), rho, eta)
    expected = run_optax(opt, params, mean_loss, batches, calls_per_step=2)
    kernel = sam_lib.as_top_level_api(
        grad_estimator, rho, "fsam", optax.trace(0.9), data_size=N, eta=eta
    )
    state = run_kernel(kernel, params, batches, step_size=lr / N)
    chex.assert_trees_all_close(state.position, expected, rtol=2e-5, atol=1e-6)
    # eta matters here: the first perturbation is not SAM's
    g = jax.grad(mean_loss)(params, batches[0])
    fsam_eps, _ = sam_lib.fisher_perturbation(rho, eta).update(g, optax.EmptyState())
    sam_eps, _ = sam_lib.sam_perturbation(rho).update(g, optax.EmptyState())
    assert not np.allclose(fsam_eps["w"], sam_eps["w"], rtol=1e-2)


def test_rho_zero_is_the_sgd_baseline():
    variant, direction = "fsam", optax.trace(decay=0.9)
    params, _, grad_estimator, batches = logistic_problem()
    kernel = sam_lib.as_top_level_api(grad_estimator, 0.0, variant, direction, data_size=N)
    baseline = sgd_baseline.as_top_level_api(grad_estimator, direction)
    got = run_kernel(kernel, params, batches, step_size=0.01)
    expected = run_kernel(baseline, params, batches, step_size=0.01)
    chex.assert_trees_all_close(got.position, expected.position, rtol=1e-6, atol=1e-7)


def test_fsam_with_eta_zero_is_sam():
    g = {"a": jnp.array([3.0, -1.0]), "b": jnp.array(2.0)}
    fsam_eps, _ = sam_lib.fisher_perturbation(0.2, eta=0.0).update(g, optax.EmptyState())
    sam_eps, _ = sam_lib.sam_perturbation(0.2).update(g, optax.EmptyState())
    chex.assert_trees_all_close(fsam_eps, sam_eps)


# ------------------------------------------------------ exact directions on a quadratic

A = jnp.array([[3.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 1.0]])
W0 = jnp.array([0.7, -1.2, 2.0])


def quadratic_grad_estimator(data_size):
    """log-posterior -N/2 w^T A w, whose mean-loss gradient is A w."""
    return lambda p, batch: -data_size * (A @ p)


def recovered_perturbation(kernel_state, step_size, data_size):
    """eps from w' = w - step_size * N * A (w + eps) (identity direction)."""
    g_eps = (W0 - kernel_state.position) / (step_size * data_size)
    return jnp.linalg.solve(A, g_eps) - W0


def test_sam_perturbation_on_a_quadratic_is_rho_g_over_norm():
    rho, h = 0.3, 0.01
    kernel = sam_lib.as_top_level_api(quadratic_grad_estimator(1), rho, "sam")
    state = kernel.step(jax.random.key(0), kernel.init(W0), None, h)
    g = A @ W0
    np.testing.assert_allclose(
        recovered_perturbation(state, h, 1), rho * g / jnp.linalg.norm(g), rtol=1e-4, atol=1e-5
    )


def test_fsam_perturbation_on_a_quadratic_is_the_fisher_natural_direction():
    rho, eta, h, n = 0.3, 0.5, 1e-3, 10
    kernel = sam_lib.as_top_level_api(
        quadratic_grad_estimator(n), rho, "fsam", data_size=n, eta=eta
    )
    state = kernel.step(jax.random.key(0), kernel.init(W0), None, h)
    g = np.asarray(A @ W0, np.float64)  # mean-loss gradient
    f_inv_g = g / (1 + eta * g**2)
    expected = rho * f_inv_g / np.sqrt(g @ f_inv_g)
    eps = recovered_perturbation(state, h, n)
    np.testing.assert_allclose(eps, expected, rtol=1e-3, atol=1e-5)
    f = 1 + eta * g**2
    np.testing.assert_allclose(np.sum(f * expected**2), rho**2, rtol=1e-6)  # on the ellipsoid


def bsam_reference_step(w, s, m, e, rho, n, beta1, beta2, delta, gamma):
    """Algorithm 1 of Möllenhoff & Khan, written out for the quadratic mean loss A w."""
    theta = w + e / np.sqrt(n * s)
    g = A @ theta
    eps = rho * g / s
    g_eps = A @ (w + eps)
    m = beta1 * m + (1 - beta1) * (g_eps + delta * w)
    s = beta2 * s + (1 - beta2) * (np.sqrt(s) * np.abs(g) + delta + gamma)
    return m / s, m, s, eps


def test_bsam_step_is_algorithm_1_on_a_quadratic():
    rho, n, beta1, beta2, delta, gamma = 0.05, 20, 0.8, 0.9, 0.01, 0.1
    t = sam_lib.scale_by_bsam(rho, n, beta1=beta1, beta2=beta2, weight_decay=delta, damping=gamma)
    state = t.init(W0)
    state = state._replace(s=jnp.array([0.5, 2.0, 1.5]), momentum=jnp.array([0.1, -0.2, 0.3]))
    key = jax.random.key(7)
    direction, new = t.update(None, state, W0, grad_fn=lambda p, i: A @ p, rng_key=key)
    e = normal_like(key, W0)
    exp_dir, exp_m, exp_s, _ = bsam_reference_step(
        W0, state.s, state.momentum, e, rho, n, beta1, beta2, delta, gamma
    )
    np.testing.assert_allclose(direction, exp_dir, rtol=1e-5)
    np.testing.assert_allclose(new.momentum, exp_m, rtol=1e-5)
    np.testing.assert_allclose(new.s, exp_s, rtol=1e-6)
    assert jax.random.key_data(new.rng_key).tolist() == jax.random.key_data(state.rng_key).tolist()


def test_bsam_perturbation_is_rho_g_over_s():
    """Black-box: with beta1 = 0 the direction reveals g_eps = A (w + eps), hence eps."""
    rho, n = 0.2, 50
    t = sam_lib.scale_by_bsam(rho, n, beta1=0.0, beta2=0.0, damping=0.0)
    s0 = jnp.array([0.5, 2.0, 1.5])
    state = t.init(W0)._replace(s=s0)
    key = jax.random.key(1)
    direction, new = t.update(None, state, W0, grad_fn=lambda p, i: A @ p, rng_key=key)
    eps = jnp.linalg.solve(A, direction * new.s) - W0
    g = A @ (W0 + normal_like(key, W0) / jnp.sqrt(n * s0))
    np.testing.assert_allclose(eps, rho * g / s0, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new.s, jnp.sqrt(s0) * jnp.abs(g), rtol=1e-5)  # beta2 = 0


def test_bsam_kernel_removes_the_prior_and_uses_the_step_key():
    rho, n, lam, h = 0.05, 20, 2.0, 1e-3
    kernel = sam_lib.as_top_level_api(
        lambda p, b: -(n * (A @ p) + lam * p), rho, "bsam", data_size=n, prior_precision=lam
    )
    key = jax.random.key(4)
    state = kernel.step(key, kernel.init(W0), None, h)
    t = sam_lib.scale_by_bsam(rho, n, weight_decay=lam / n)
    direction, opt_state = t.update(None, t.init(W0), W0, grad_fn=lambda p, i: A @ p, rng_key=key)
    np.testing.assert_allclose(state.position, W0 - h * n * direction, rtol=1e-6)
    chex.assert_trees_all_close(state.opt_state.s, opt_state.s)
    var = sam_lib.bsam_variance(state.opt_state, n)
    np.testing.assert_allclose(var, 1 / (n * np.asarray(opt_state.s)), rtol=1e-6)


def test_bsam_optimizer_draws_fresh_noise_from_its_state_key():
    opt = sam_lib.bsam(0.1, rho=0.01, data_size=5, seed=3)
    state = opt.init(W0)
    grad_fn = lambda p, i: A @ p
    u1, state1 = opt.update(None, state, W0, grad_fn=grad_fn)
    u2, _ = opt.update(None, state, W0, grad_fn=grad_fn)
    chex.assert_trees_all_close(u1, u2)  # same state, same draw
    assert int(state1[0].count) == 1
    key0, key1 = (jax.random.key_data(st[0].rng_key).tolist() for st in (state, state1))
    assert key0 != key1
    # same bSAM state but the next key: a different noisy point, a different update
    u3, _ = opt.update(
        None, (state[0]._replace(rng_key=state1[0].rng_key),) + state[1:], W0, grad_fn=grad_fn
    )
    assert not np.allclose(u3, u1)


def test_zero_gradient_gives_zero_perturbation_not_nan():
    zeros = {"a": jnp.zeros(3)}
    for p in (sam_lib.sam_perturbation(0.1), sam_lib.fisher_perturbation(0.1, 1.0)):
        eps, _ = p.update(zeros, p.init(zeros))
        np.testing.assert_array_equal(eps["a"], 0.0)


# ------------------------------------------------------------------- jit, vmap, loop


@pytest.mark.parametrize("variant", ["fsam", "bsam"])
def test_vmapped_step_is_the_step_of_each_chain(variant):
    params, _, grad_estimator, batches = logistic_problem()
    kernel = sam_lib.as_top_level_api(
        grad_estimator, 0.05, variant, data_size=N, prior_precision=0.5
    )
    chains = jax.tree.map(lambda x: jnp.stack([x, x + 0.1]), params)
    keys = jax.random.split(jax.random.key(1), 2)
    states = jax.vmap(kernel.init)(chains)
    new = jax.jit(jax.vmap(kernel.step, in_axes=(0, 0, None, None)))(
        keys, states, batches[0], 0.1 / N
    )
    for c in range(2):
        one = kernel.step(
            keys[c], kernel.init(jax.tree.map(lambda x: x[c], chains)), batches[0], 0.1 / N
        )
        chex.assert_trees_all_close(
            jax.tree.map(lambda x: x[c], new.position), one.position, rtol=1e-5, atol=1e-7
        )


def test_bsam_runs_in_the_run_loop():
    params, _, grad_estimator, _ = logistic_problem()
    x = jax.random.normal(jax.random.key(5), (N, 3))
    y = (x[:, 0] > 0).astype(jnp.float32)
    kernel = sam_lib.as_top_level_api(
        grad_estimator, 0.05, "bsam", data_size=N, prior_precision=0.5
    )
    chains = jax.tree.map(lambda x: jnp.stack([x, x + 0.1]), params)
    result = loop.run(
        kernel,
        jax.vmap(kernel.init)(chains),
        (x, y),
        jax.random.key(1),
        num_epochs=1,
        batch_size=10,
        step_size=0.1 / N,
        progress=False,
    )
    theta = result.samples["theta"]
    chex.assert_trees_all_equal_shapes_and_dtypes(theta, jax.tree.map(lambda x: x[None], chains))
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(theta))
    assert int(result.state.opt_state.count[0]) == N // 10


def test_pytree_structure_and_float64_are_kept():
    dtype = jnp.float64
    with jax.enable_x64(True):
        params = {"w": jnp.ones((2, 2), dtype), "b": jnp.zeros(3, dtype)}
        grad_estimator = lambda p, b: jax.tree.map(lambda x: -(x - 0.5), p)
        for variant in ("sam", "fsam", "bsam"):
            kernel = sam_lib.as_top_level_api(grad_estimator, 0.1, variant, data_size=10)
            state = kernel.init(params)
            new = jax.jit(kernel.step)(jax.random.key(0), state, None, 1e-2)
            chex.assert_trees_all_equal_shapes_and_dtypes(new.position, params)
            # the state is type-stable, as a lax.scan carry must be
            chex.assert_trees_all_equal_shapes_and_dtypes(new, state)


# ----------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rho=-0.1), "rho"),
        (dict(rho=0.1, variant="asam"), "variant"),
        (dict(rho=0.1, variant="fsam"), "data_size"),
        (dict(rho=0.1, variant="bsam"), "data_size"),
        (dict(rho=0.1, variant="fsam", data_size=0), "data_size"),
        (dict(rho=0.1, variant="fsam", data_size=10, eta=-1.0), "eta"),
        (dict(rho=0.1, variant="bsam", data_size=10, direction=optax.identity()), "direction"),
        (dict(rho=0.1, variant="bsam", data_size=10, beta1=1.0), "beta1"),
        (dict(rho=0.1, variant="bsam", data_size=10, beta2=-0.1), "beta2"),
        (dict(rho=0.1, variant="bsam", data_size=10, s_init=0.0), "s_init"),
        (dict(rho=0.1, variant="bsam", data_size=10, damping=-1.0), "damping"),
        (dict(rho=0.1, variant="bsam", data_size=10, prior_precision=-1.0), "prior_precision"),
    ],
)
def test_invalid_hyperparameters_raise_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sam_lib.as_top_level_api(lambda p, b: p, **kwargs)


def test_invalid_optax_forms_raise():
    with pytest.raises(ValueError, match="rho"):
        sam_lib.sam(optax.sgd(0.1), rho=-1.0)
    with pytest.raises(ValueError, match="eta"):
        sam_lib.fsam(optax.sgd(0.1), rho=0.1, eta=-1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        sam_lib.bsam(0.1, rho=0.1, data_size=10, weight_decay=-1.0)
    with pytest.raises(TypeError, match="data_size"):
        sam_lib.scale_by_bsam(0.1, data_size=2.5)
