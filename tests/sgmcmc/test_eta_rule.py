"""The eta rule: closed form on quadratics, the guide's excess loss, stability floor, inputs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flatjax.sgmcmc import emcmc
from flatjax.sgmcmc.eta_rule import EtaProposal, eta_for_loss_increase, propose_eta
from flatjax.testing import assert_mean_within_mcse, discrete_lyapunov, emcmc_transition

DIAG = jnp.linspace(0.5, 4.0, 12)  # Hessian of the diagonal quadratic
THETA = {"w": jnp.linspace(-1.0, 1.0, 8), "b": jnp.linspace(0.3, 0.9, 4)}  # nonzero gradient
N, T, DELTA = 500, 0.01, 0.05


def diagonal_loss(params):
    """0.5 (x - 0.2)^T diag(DIAG) (x - 0.2): Rademacher probes give tr H exactly."""
    x = jnp.concatenate([params["w"], params["b"]]) - 0.2
    return 0.5 * jnp.sum(DIAG * x**2)


def rotated_quadratic(size=16, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(size, size)))
    a = (q * np.linspace(0.2, 3.0, size)) @ q.T
    a = jnp.asarray(a, jnp.float32)
    return (lambda x: 0.5 * x @ a @ x), a


@pytest.fixture(scope="module")
def diagonal_proposal():
    return propose_eta(
        diagonal_loss,
        THETA,
        data_size=N,
        temperature=T,
        step_size=1e-4,
        prior_precision=2.0,
        rng_key=jax.random.key(0),
        num_probes=4,
        num_guide_draws=200,
    )


def test_closed_form_on_a_diagonal_quadratic(diagonal_proposal):
    p = diagonal_proposal
    assert isinstance(p, EtaProposal) and p.active == "curvature"
    trace = float(DIAG.sum())
    np.testing.assert_allclose(p.trace, trace, rtol=1e-6)
    assert p.trace_stderr == 0.0  # every probe gives tr H for a diagonal Hessian
    np.testing.assert_allclose(p.eta, 2 * DELTA / (T * trace), rtol=1e-6)
    np.testing.assert_allclose(p.lambda_1, float(DIAG.max()), rtol=1e-4)
    # log-posterior scale: U = N L + prior, so lambda_1(U) = N lambda_1 + prior precision
    np.testing.assert_allclose(p.smoothing_ratio, p.eta * (N * 4.0 + 2.0), rtol=1e-4)
    np.testing.assert_allclose(p.expected_loss_increase, DELTA, rtol=1e-6)
    assert p.eta_stability < p.eta and "curvature rule" in p.reason


def test_exact_guide_draws_raise_the_mean_loss_by_the_target(diagonal_proposal):
    """theta_a ~ N(theta, eta T I) from sample_guide: E L(theta_a) - L(theta) = delta."""
    eta = diagonal_proposal.eta
    keys = jax.random.split(jax.random.key(1), 4000)
    guides = jax.vmap(lambda k: emcmc.sample_guide(k, THETA, eta, T))(keys)
    excess = jax.vmap(diagonal_loss)(guides) - diagonal_loss(THETA)
    assert_mean_within_mcse(np.asarray(excess)[None], DELTA, name="excess mean loss")
    # the same draws in the kernels' scale, U = N L + lam |theta|^2 / 2: the increase
    # is eta T tr(H_U) / 2 with H_U = N H + lam I
    lam, size = 2.0, 12

    def potential(p):
        return N * diagonal_loss(p) + 0.5 * lam * sum(jnp.sum(x**2) for x in jax.tree.leaves(p))

    excess_u = jax.vmap(potential)(guides) - potential(THETA)
    truth_u = 0.5 * eta * T * (N * float(DIAG.sum()) + lam * size)
    assert_mean_within_mcse(np.asarray(excess_u)[None], truth_u, name="excess U")
    # the function's own antithetic measurement agrees
    p = diagonal_proposal
    assert abs(p.measured_loss_increase - DELTA) <= 4 * p.measured_loss_stderr
    np.testing.assert_allclose(p.eta_measured, p.eta * DELTA / p.measured_loss_increase)


def test_hutchinson_error_bar_on_a_rotated_quadratic():
    loss, a = rotated_quadratic()
    p = propose_eta(
        loss,
        jnp.ones(16),
        data_size=N,
        temperature=T,
        step_size=1e-4,
        rng_key=jax.random.key(2),
        num_probes=64,
        num_guide_draws=0,
    )
    trace = float(jnp.trace(a))
    assert p.trace_stderr > 0
    assert abs(p.trace - trace) <= 4 * p.trace_stderr
    np.testing.assert_allclose(p.eta, 2 * DELTA / (T * p.trace), rtol=1e-6)
    np.testing.assert_allclose(p.lambda_1, float(jnp.linalg.eigvalsh(a)[-1]), rtol=1e-3)
    assert math.isnan(p.measured_loss_increase) and math.isnan(p.eta_measured)


@pytest.mark.parametrize("ratio", [1.0, 3.0])
def test_stability_floor(ratio):
    h = 0.5  # far above the curvature rule's eta
    p = propose_eta(
        diagonal_loss,
        THETA,
        data_size=N,
        temperature=T,
        step_size=h,
        guide_step_ratio=ratio,
        rng_key=jax.random.key(3),
        num_probes=2,
        num_guide_draws=0,
    )
    assert p.active == "stability" and p.eta > p.eta_curvature
    np.testing.assert_allclose(p.eta, (1 + ratio) * h)  # half the stability bound
    np.testing.assert_allclose(h, 0.5 * emcmc.max_stable_step(p.eta, ratio))
    emcmc.check_step_size(h, p.eta, T, ratio)  # the kernels accept the step
    np.testing.assert_allclose(p.expected_loss_increase, 0.5 * p.eta * T * p.trace)
    assert "stability floor" in p.reason and "lower the step size" in p.reason


@pytest.mark.parametrize("ratio", [1.0, 4.0])
def test_budget_cap(ratio):
    h, steps = 1e-4, 300
    p = propose_eta(
        diagonal_loss,
        THETA,
        data_size=N,
        temperature=T,
        step_size=h,
        guide_step_ratio=ratio,
        integration_time=steps * h,
        rng_key=jax.random.key(4),
        num_probes=2,
        num_guide_draws=0,
    )
    assert p.active == "budget" and p.eta < p.eta_curvature
    np.testing.assert_allclose(p.eta, ratio * steps * h / 3)
    assert p.expected_loss_increase < DELTA and "budget cap" in p.reason
    # the reasoning, exactly: in a smoothed direction (eta lambda >> 1) a guide started at
    # theta reaches its stationary spread within the run at eta_budget, not at 10 x that
    for eta, low, high in [(p.eta, 0.95, 1.0), (10 * p.eta, 0.0, 0.5)]:
        m, q = emcmc_transition([[100.0 / eta]], eta, T, h, guide_step_ratio=ratio)
        cov = np.zeros((2, 2))
        for _ in range(steps):
            cov = m @ cov @ m.T + q
        offset = np.array([1.0, -1.0])  # theta - theta_a
        reached = offset @ cov @ offset / (offset @ discrete_lyapunov(m, q) @ offset)
        assert low <= reached <= high, (eta, reached)


def test_eta_for_loss_increase_algebra():
    eta = eta_for_loss_increase(trace=37.0, temperature=1e-3, target_loss_increase=0.05)
    assert math.isclose(0.5 * eta * 1e-3 * 37.0, 0.05)


GOOD = dict(data_size=N, temperature=T, step_size=1e-4, rng_key=jax.random.key(0))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("data_size", 0),
        ("data_size", 1.5),
        ("temperature", 0.0),
        ("step_size", -1e-3),
        ("guide_step_ratio", 0.0),
        ("target_loss_increase", 0.0),
        ("prior_precision", -1.0),
        ("integration_time", 0.0),
        ("max_step_fraction", 1.0),
        ("max_step_fraction", 0.0),
        ("num_probes", 0),
        ("num_lanczos_iterations", 0),
        ("num_guide_draws", -1),
    ],
)
def test_bad_arguments_are_named(name, value):
    with pytest.raises(ValueError, match=f"`{name}`"):
        propose_eta(diagonal_loss, THETA, **{**GOOD, name: value})


def test_bad_losses_are_named():
    with pytest.raises(ValueError, match="`loss_fn`"):
        propose_eta(lambda p: p["w"] ** 2, THETA, **GOOD)
    with pytest.raises(ValueError, match="`loss_fn`"):
        propose_eta(lambda p: jnp.log(-jnp.sum(p["w"] ** 2)), THETA, **GOOD)
    with pytest.raises(ValueError, match="trace"):
        propose_eta(lambda p: -diagonal_loss(p), THETA, **GOOD, num_guide_draws=0)
    with pytest.raises(ValueError, match="`trace`"):
        eta_for_loss_increase(trace=-1.0, temperature=1.0, target_loss_increase=0.05)
