"""SA-BMA: exact reductions to SAM and bSAM, the KL-ball constraint, and the step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flatjax.vi import lowrank_gaussian as lrg
from flatjax.vi import sabma
from flatjax.vi.lowrank_gaussian import LowRankGaussian

perturbation = jax.jit(sabma.perturbation, static_argnames=("train", "fisher", "cg_maxiter"))


def quadratic_loss(w, batch):
    a, b = batch
    return 0.5 * jnp.sum(a * (w["x"] - b) ** 2) + jnp.sum(jnp.sin(w["y"]))


def random_q(key, p=6, k=3, scale=0.3):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    mean = {"x": jax.random.normal(k1, (p,)), "y": jax.random.normal(k2, (2,))}
    log_scale = jax.tree.map(lambda m: -1.0 + 0.1 * m, mean)
    dev = {
        "x": scale * jax.random.normal(k3, (p, k)),
        "y": scale * jax.random.normal(k4, (2, k)),
    }
    return LowRankGaussian(mean, log_scale, dev)


def vdot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_isotropic_mean_only_is_sam_direction_and_step():
    s, rho, lr = 0.3, 0.02, 0.1
    q = lrg.isotropic({"x": jnp.arange(4.0), "y": jnp.zeros(2)}, s)
    batch = (jnp.array([1.0, 2.0, 3.0, 4.0]), jnp.ones(4))
    g = jax.tree.map(lambda x: x + 0.5, q)
    delta, _ = perturbation(q, g, rho, train=("mean",))
    gm = g.mean
    norm = jnp.sqrt(vdot(gm, gm))
    jax.tree.map(
        lambda d, x: np.testing.assert_allclose(d, np.sqrt(2 * rho * s) * x / norm, rtol=1e-5),
        delta.mean,
        gm,
    )
    # one full step == SAM at the sampled weights with radius sqrt(2 rho s)
    key = jax.random.key(0)
    kernel = jax.jit(sabma.build_kernel(quadratic_loss, rho, optax.identity(), train="mean"))
    state, info = kernel(key, sabma.SABMAState(q, ()), batch, lr)
    w = lrg.sample(jax.random.split(key)[0], q)  # the kernel's noise key
    grad = jax.grad(quadratic_loss)(w, batch)
    gnorm = jnp.sqrt(vdot(grad, grad))
    w_adv = jax.tree.map(lambda a, b: a + np.sqrt(2 * rho * s) * b / gnorm, w, grad)
    sam_grad = jax.grad(quadratic_loss)(w_adv, batch)
    expected = jax.tree.map(lambda m, gg: m - lr * gg, q.mean, sam_grad)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), state.q.mean, expected)
    jax.tree.map(np.testing.assert_array_equal, state.q.log_scale, q.log_scale)
    assert float(info.perturbed_loss) >= float(info.loss) - 1e-6


def test_diagonal_covariance_gives_bsam_direction():
    n, rho = 50, 0.01
    s = {"x": jnp.array([0.5, 1.0, 2.0, 4.0]), "y": jnp.array([1.0, 3.0])}
    # Sigma = diag(sigma^2) / 2 = diag(1 / (N s)), C = 0
    log_scale = jax.tree.map(lambda v: 0.5 * jnp.log(2.0 / (n * v)), s)
    q = LowRankGaussian(
        jax.tree.map(jnp.zeros_like, s),
        log_scale,
        jax.tree.map(lambda v: jnp.zeros((*v.shape, 2)), s),
    )
    g = LowRankGaussian(
        {"x": jnp.array([1.0, -2.0, 0.5, 3.0]), "y": jnp.array([0.2, -1.0])},
        jax.tree.map(jnp.ones_like, s),
        jax.tree.map(jnp.ones_like, q.deviations),
    )
    delta, _ = perturbation(q, g, rho, train=("mean",))
    bsam = jax.tree.map(jnp.divide, g.mean, s)
    ratio = jnp.concatenate(
        [
            jnp.ravel(d / b)
            for d, b in zip(jax.tree.leaves(delta.mean), jax.tree.leaves(bsam), strict=True)
        ]
    )
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)  # parallel to g / s
    assert float(ratio[0]) > 0
    # and on the KL ball: Delta^T Sigma^{-1} Delta / 2 = rho
    quad = vdot(delta.mean, lrg.precision_matvec(q, delta.mean))
    np.testing.assert_allclose(0.5 * quad, rho, rtol=1e-5)


def test_exact_fisher_perturbation_lies_on_the_kl_ball():
    with jax.enable_x64(True):
        q = jax.tree.map(lambda x: x.astype(jnp.float64), random_q(jax.random.key(1)))
        # the gradient of a function of (mu, Sigma) lies in the range of the Fisher (the
        # C-rotations that leave Sigma unchanged are its null space)
        b = jax.random.normal(jax.random.key(9), (8, 8))

        def f(qq):
            mean, cov = lrg.to_dense(qq)
            return jnp.sum(jnp.sin(mean)) + jnp.sum((b + b.T) * cov)

        g = jax.grad(f)(q)
        damping = 1e-10
        delta, _ = perturbation(q, g, 1e-3, damping=damping, cg_maxiter=200, relative_damping=0.0)
        fd = lrg.fisher_vp(q, delta)
        quad = vdot(delta, fd) + damping * (
            vdot(delta.log_scale, delta.log_scale) + vdot(delta.deviations, delta.deviations)
        )
        np.testing.assert_allclose(0.5 * quad, 1e-3, rtol=1e-4)
        # the quadratic approximation of the KL becomes exact as rho -> 0
        errors = []
        for rho in (1e-2, 1e-4, 1e-6):
            d, _ = perturbation(q, g, rho, damping=damping, cg_maxiter=200, relative_damping=0.0)
            moved = jax.tree.map(jnp.add, q, d)
            errors.append(abs(float(lrg.kl(moved, q)) / rho - 1))
        assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-2


@pytest.mark.parametrize("train", [("mean",), sabma.BLOCKS])
def test_a_vanishing_or_broken_direction_gives_no_perturbation(train):
    """Zero or non-finite ``F^{-1} g`` (e.g. a float32 solve that broke down): Delta = 0."""
    q = random_q(jax.random.key(21))
    zero = jax.tree.map(jnp.zeros_like, q)
    broken = zero._replace(mean={**zero.mean, "x": zero.mean["x"].at[0].set(jnp.nan)})
    for g in (zero, broken):
        delta, norm = perturbation(q, g, 0.1, train=train)
        assert float(norm) == 0.0
        assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(delta))


def test_diagonal_fisher_option_and_partial_blocks():
    q = random_q(jax.random.key(2))
    g = jax.tree.map(jnp.ones_like, q)
    delta, _ = perturbation(q, g, 0.01, train=("mean", "log_scale"), fisher="diagonal")
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(delta.deviations))
    assert float(jnp.abs(delta.log_scale["x"]).max()) > 0
    with pytest.raises(ValueError, match="fisher='exact'"):
        sabma.as_top_level_api(quadratic_loss, 0.01, train=("mean", "log_scale"))


def test_rho_zero_is_reparameterised_gradient_descent():
    q = random_q(jax.random.key(3))
    batch = (jnp.ones(6), jnp.zeros(6))
    kernel = jax.jit(sabma.build_kernel(quadratic_loss, 0.0, optax.identity()))
    key = jax.random.key(4)
    state, info = kernel(key, sabma.SABMAState(q, ()), batch, 0.05)
    objective = lambda qq: quadratic_loss(lrg.sample(jax.random.split(key)[0], qq), batch)
    grad = jax.grad(objective)(q)
    expected = jax.tree.map(lambda p, gg: p - 0.05 * gg, q, grad)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), state.q, expected)
    np.testing.assert_allclose(info.loss, info.perturbed_loss, rtol=1e-6)


def manual_step(q, key, batch, rho, lr, natural, train):
    """One SA-BMA step written out: one noise draw, two gradients in the trained blocks."""
    noise = lrg.sample_noise(jax.random.split(key)[0], q)

    def objective(trained):
        return quadratic_loss(lrg.reparameterize(q._replace(**trained), noise), batch)

    trained = {b: getattr(q, b) for b in train}
    g = jax.grad(objective)(trained)
    direction = natural(q, g)
    if train == ("mean",):  # d^T F d = g^T Sigma g
        metric = vdot(g, direction)
    else:  # the KL ball measured with the exact Fisher, whatever the CG accuracy
        metric = vdot(direction, lrg.fisher_vp(q, LowRankGaussian(**direction))._asdict())
    scale = jnp.sqrt(2 * rho) / jnp.sqrt(metric)
    g_adv = jax.grad(objective)(jax.tree.map(lambda t, d: t + scale * d, trained, direction))
    return q._replace(**jax.tree.map(lambda t, gg: t - lr * gg, trained, g_adv))


@pytest.mark.parametrize("train", [("mean",), sabma.BLOCKS])
def test_step_matches_the_written_out_step(train):
    """Low-rank q, momentum-free: the kernel's step equals the written-out step."""
    q = random_q(jax.random.key(11))
    batch = (jnp.linspace(0.5, 2.0, 6), jnp.ones(6))
    rho, lr, key = 0.05, 0.1, jax.random.key(12)
    if train == ("mean",):
        natural = lambda q, g: {"mean": lrg.cov_matvec(q, g["mean"])}
    else:  # the exact Fisher solve of the covariance block, as natural_gradient does it
        natural = lambda q, g: sabma.natural_gradient(q, q._replace(**g), damping=1e-4)._asdict()
    kernel = jax.jit(sabma.build_kernel(quadratic_loss, rho, optax.identity(), train=train))
    state, _ = kernel(key, sabma.SABMAState(q, ()), batch, lr)
    expected = manual_step(q, key, batch, rho, lr, natural, train)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), state.q, expected
    )
    if train == ("mean",):  # the fixed blocks are passed through untouched
        jax.tree.map(np.testing.assert_array_equal, state.q.deviations, q.deviations)


def test_draw_is_made_once_and_equals_drawing_inside_the_loss():
    """``draw=g`` with ``loss(w, b, g(k))`` is the same step as ``loss_takes_key=True``."""
    q = random_q(jax.random.key(13))
    batch = (jnp.ones(6), jnp.zeros(6))
    shift = lambda k: jax.random.normal(k, (6,))
    loss3 = lambda w, b, s: quadratic_loss({"x": w["x"] + s, "y": w["y"]}, b)
    calls = []

    def counted_shift(k):
        calls.append(1)  # counts traces: one call per traced step
        return shift(k)

    with_draw = sabma.build_kernel(loss3, 0.05, optax.identity(), draw=counted_shift)
    with_key = sabma.build_kernel(
        lambda w, b, k: loss3(w, b, shift(k)), 0.05, optax.identity(), loss_takes_key=True
    )
    key, state = jax.random.key(14), sabma.SABMAState(q, ())
    a, info_a = jax.jit(with_draw)(key, state, batch, 0.1)
    b, info_b = jax.jit(with_key)(key, state, batch, 0.1)
    assert len(calls) == 1
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), a.q, b.q)
    np.testing.assert_allclose(info_a.perturbed_loss, info_b.perturbed_loss, rtol=1e-6)
    with pytest.raises(ValueError, match="draw"):
        sabma.build_kernel(loss3, 0.05, optax.identity(), draw=shift, loss_takes_key=True)
    with pytest.raises(TypeError, match="draw"):
        sabma.as_top_level_api(loss3, 0.05, draw="backbone")


def test_training_jit_vmap_over_runs_reduces_the_loss():
    x = jax.random.normal(jax.random.key(5), (64, 3))
    y = (x @ jnp.array([1.0, -1.0, 0.5]) > 0).astype(jnp.int32)

    def loss(w, batch):
        xb, yb = batch
        logits = xb @ w["w"] + w["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    algo = sabma.as_top_level_api(loss, rho=0.01, direction=optax.trace(0.9), damping=1e-3)
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    dev_keys = jax.random.split(jax.random.key(6), 4)

    def init(key):
        q = lrg.isotropic(params, 1e-3, num_columns=3)
        dev = jax.tree.map(lambda d: 1e-2 * jax.random.normal(key, d.shape), q.deviations)
        return algo.init(q._replace(deviations=dev))

    states = jax.vmap(init)(dev_keys)

    @jax.jit
    def train(states, key):
        def body(states, k):
            keys = jax.random.split(k, 4)
            return jax.vmap(algo.step, in_axes=(0, 0, None, None))(keys, states, (x, y), 0.5), None

        return jax.lax.scan(body, states, jax.random.split(key, 60))[0]

    states = train(states, jax.random.key(7))
    final = jax.vmap(lambda s: loss(s.q.mean, (x, y)))(states)
    assert final.shape == (4,)
    assert float(final.max()) < 0.5 * float(loss(params, (x, y)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rho": -0.1}, "rho"),
        ({"rho": 0.1, "fisher": "kfac"}, "fisher"),
        ({"rho": 0.1, "train": ("mean", "bias")}, "train"),
        ({"rho": 0.1, "train": ()}, "train"),
        ({"rho": 0.1, "damping": -1.0}, "damping"),
        ({"rho": 0.1, "relative_damping": -1.0}, "relative_damping"),
        ({"rho": 0.1, "kl_weight": -1.0}, "kl_weight"),
        ({"rho": 0.1, "prior_variance": 0.0}, "prior_variance"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sabma.as_top_level_api(quadratic_loss, **kwargs)


def test_antithetic_must_be_a_bool():
    with pytest.raises(TypeError, match="antithetic"):
        sabma.as_top_level_api(quadratic_loss, 0.1, antithetic=1)


def pure_quadratic(w, batch):
    a, b = batch
    return 0.5 * jnp.sum(a * (w["x"] - b) ** 2) + 0.5 * jnp.sum(w["y"] ** 2)


@pytest.mark.parametrize("train", [("mean",), sabma.BLOCKS])
def test_antithetic_mean_gradient_is_exact_on_a_quadratic(train):
    """On a quadratic the mirrored pair's mean gradient is grad L(mu): any key, same mean step."""
    q = random_q(jax.random.key(21))
    batch = (jnp.linspace(0.5, 2.0, 6), jnp.ones(6))
    kernel = jax.jit(
        sabma.build_kernel(pure_quadratic, 0.0, optax.identity(), train=train, antithetic=True)
    )
    exact = jax.grad(pure_quadratic)(q.mean, batch)
    for key in range(3):
        state, _ = kernel(jax.random.key(key), sabma.SABMAState(q, ()), batch, 0.1)
        expected = jax.tree.map(lambda m, g: m - 0.1 * g, q.mean, exact)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
            state.q.mean,
            expected,
        )
    # a single draw's mean step does depend on the key
    plain = jax.jit(sabma.build_kernel(pure_quadratic, 0.0, optax.identity(), train=train))
    one, _ = plain(jax.random.key(0), sabma.SABMAState(q, ()), batch, 0.1)
    assert not np.allclose(one.q.mean["x"], expected["x"], atol=1e-4)


def test_antithetic_step_averages_the_mirrored_draws():
    """The antithetic step is the written-out step on the mean of the two mirrored losses."""
    q = random_q(jax.random.key(23))
    batch = (jnp.ones(6), jnp.zeros(6))
    key, lr = jax.random.key(24), 0.1
    kernel = jax.jit(sabma.build_kernel(quadratic_loss, 0.0, optax.identity(), antithetic=True))
    state, _ = kernel(key, sabma.SABMAState(q, ()), batch, lr)
    noise = lrg.sample_noise(jax.random.split(key)[0], q)
    mirrored = jax.tree.map(jnp.negative, noise)

    def objective(qq):
        return 0.5 * (
            quadratic_loss(lrg.reparameterize(qq, noise), batch)
            + quadratic_loss(lrg.reparameterize(qq, mirrored), batch)
        )

    grad = jax.grad(objective)(q)
    expected = jax.tree.map(lambda p, g: p - lr * g, q, grad)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), state.q, expected)


def test_init_checks_q():
    algo = sabma.as_top_level_api(quadratic_loss, 0.1)
    with pytest.raises(TypeError, match="LowRankGaussian"):
        algo.init({"x": jnp.ones(2)})
    one_column = LowRankGaussian(jnp.zeros(2), jnp.zeros(2), jnp.zeros((2, 1)))
    with pytest.raises(ValueError, match="K|column|rank"):
        algo.init(one_column)
