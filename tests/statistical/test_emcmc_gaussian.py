r"""Entropy-MCMC on a Gaussian target is a linear recursion: its exact law is known.

With ``U = theta^T A theta / 2`` and a gradient that ignores the minibatch, one
step of either flavour is ``x' = M x + eps`` (see
:func:`flatjax.testing.emcmc_transition`), so the stationary covariance of the
*discretised* chain solves ``Sigma = M Sigma M^T + Q`` exactly. The tests compare
the empirical joint covariance of ``(theta, theta_a)`` (and the momenta for the
SGHMC flavour): every block and the cross-covariance, together with the means,
within Monte Carlo standard error at a Bonferroni-corrected z (family error
1e-3 per test). The continuous-time answer ``T A^{-1}``, ``T (A^{-1} + eta I)``,
cross ``T A^{-1}`` is checked as the step-size limit of the discrete one, and
against the sampler at a small step with the computed discretisation bias as
the only allowance.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import flatjax
from flatjax.testing import (
    assert_mean_within_mcse,
    emcmc_joint_drift,
    emcmc_stationary_covariance,
    emcmc_transition,
    mcse_check,
    moment_statistics,
    run_chains,
)

FAMILY_ERROR = 1e-3


class Case(NamedTuple):
    """One sampler configuration on a rotated anisotropic Gaussian."""

    dim: int
    step_size: float
    eta: float
    temperature: float
    guide_prior_precision: float = 0.0
    alpha: float | None = None  # None: SGLD flavour
    guide_step_ratio: float = 1.0
    noise: str = "gaussian"

    @property
    def id(self) -> str:
        flavour = "sgld" if self.alpha is None else f"sghmc_a{self.alpha}"
        ratio = "" if self.guide_step_ratio == 1.0 else f"-r{self.guide_step_ratio}"
        noise = "" if self.noise == "gaussian" else f"-{self.noise}"
        return (
            f"{flavour}-d{self.dim}-h{self.step_size}-eta{self.eta}-T{self.temperature}"
            f"-lam{self.guide_prior_precision}{ratio}{noise}"
        )

    @property
    def law(self) -> dict:
        """The keyword arguments of the exact-law helpers."""
        return {
            "alpha": self.alpha,
            "guide_prior_precision": self.guide_prior_precision,
            "guide_step_ratio": self.guide_step_ratio,
        }


def rotated_precision(dim: int, seed: int = 0) -> np.ndarray:
    """``A = R diag(lambda) R^T`` with eigenvalues spread over ``[1, 10]``, ``R`` random."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
    q = q * np.sign(np.diag(r))
    return (q * np.geomspace(1.0, 10.0, dim)) @ q.T


def schedule(case: Case, precision: np.ndarray) -> tuple[int, int]:
    """Burn-in and thinning from the spectral radius ``rho`` of the exact recursion.

    The covariance forgets the start like ``rho^(2n)``: burn in until that is
    1e-5; thin by the e-folding time ``-1 / log(rho)``.
    """
    transition, _ = emcmc_transition(
        precision, case.eta, case.temperature, case.step_size, **case.law
    )
    log_rho = math.log(float(np.max(np.abs(np.linalg.eigvals(transition)))))
    return math.ceil(math.log(1e-5) / (2 * log_rho)), math.ceil(-1.0 / log_rho)


def sample_joint(
    case: Case, precision: np.ndarray, num_chains: int, num_samples: int, seed: int
) -> np.ndarray:
    """Draws of the full state of ``case``'s sampler, shape ``(chains, samples, 2d or 4d)``.

    Chains start at ``theta ~ N(0, I)``, guide at theta, zero momentum.
    """
    a = jnp.asarray(precision, dtype=jnp.float32)
    grad_estimator = lambda position, minibatch: -a @ position
    if case.alpha is None:
        sampler = flatjax.emcmc(
            grad_estimator,
            eta=case.eta,
            guide_prior_precision=case.guide_prior_precision,
            guide_step_ratio=case.guide_step_ratio,
            noise=case.noise,
        )
        observe = lambda s: jnp.concatenate([s.position, s.guide])
    else:
        sampler = flatjax.emcmc_sghmc(
            grad_estimator,
            eta=case.eta,
            alpha=case.alpha,
            guide_prior_precision=case.guide_prior_precision,
            guide_step_ratio=case.guide_step_ratio,
            noise=case.noise,
        )
        observe = lambda s: jnp.concatenate(
            [s.position, s.guide, s.momentum.position, s.momentum.guide]
        )
    key_init, key_run = jax.random.split(jax.random.key(seed))
    states = jax.vmap(sampler.init)(jax.random.normal(key_init, (num_chains, case.dim)))
    num_burnin, thin = schedule(case, precision)
    step = lambda key, state: sampler.step(key, state, None, case.step_size, case.temperature)
    draws = run_chains(
        step,
        states,
        key_run,
        num_burnin=num_burnin,
        num_samples=num_samples,
        thin=thin,
        observe=observe,
    )
    return np.asarray(draws, dtype=np.float64)


def exact_covariance(case: Case, precision: np.ndarray, discrete: bool = True) -> np.ndarray:
    return emcmc_stationary_covariance(
        precision,
        case.eta,
        case.temperature,
        step_size=case.step_size if discrete else None,
        **case.law,
    )


SGLD_CASES = [
    Case(2, 0.05, 0.5, 1.0),
    Case(2, 0.02, 0.2, 0.5),
    Case(2, 0.03, 1.0, 2.0, guide_prior_precision=1.0),
    Case(10, 0.04, 0.5, 1.0),
    # the guide's own step (a block preconditioner): the same joint law, another recursion
    Case(2, 0.05, 0.5, 1.0, guide_step_ratio=4.0),
    Case(2, 0.02, 0.5, 1.0, guide_step_ratio=10.0),
    Case(2, 0.03, 1.0, 2.0, guide_prior_precision=1.0, guide_step_ratio=0.5),
    # random signs in place of Gaussian increments: the same first two moments, so the
    # same linear recursion's stationary covariance (the simplified weak Euler scheme)
    Case(2, 0.05, 0.5, 1.0, noise="rademacher"),
    Case(10, 0.04, 0.5, 1.0, guide_step_ratio=4.0, noise="rademacher"),
]
# The SGHMC recursion (the old momentum moves x, the gradient at the old x drives v)
# is stable only for step_size * lambda_max(-J) < alpha; these cases respect that.
SGHMC_CASES = [
    Case(2, 0.05, 0.5, 1.0, alpha=0.5),
    Case(2, 0.05, 0.3, 0.5, guide_prior_precision=0.5, alpha=0.3),
    Case(10, 0.05, 0.5, 1.0, alpha=0.5),
    Case(2, 0.02, 0.5, 1.0, alpha=0.5, guide_step_ratio=4.0),
    Case(2, 0.05, 0.5, 1.0, alpha=0.5, noise="rademacher"),
]
SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "case",
    SGLD_CASES + SGHMC_CASES[:2] + [pytest.param(SGHMC_CASES[2], marks=SLOW)] + SGHMC_CASES[3:],
    ids=lambda c: c.id,
)
def test_joint_covariance_matches_exact_discrete_law(case: Case, record: dict) -> None:
    """Means and every entry of the joint covariance agree with the exact recursion.

    For the 10-D SGHMC case the momenta are left out (the full 40-D state would
    be 860 statistics) and only the ``(theta, theta_a)`` block is checked. The
    check has power: the continuous-time covariance of the positions, which
    differs from the discrete one by the discretisation bias only, must fail it.
    """
    precision = rotated_precision(case.dim, seed=case.dim)
    num_chains, num_samples = (500, 40) if case.dim > 2 else (1000, 50)
    draws = sample_joint(case, precision, num_chains, num_samples, seed=17)
    cov = exact_covariance(case, precision)
    if case.dim > 2:
        block = 2 * case.dim
        draws, cov = draws[..., :block], cov[:block, :block]
    stats, truth, labels = moment_statistics(draws, np.zeros(len(cov)), cov)
    check = assert_mean_within_mcse(
        stats, truth, family_error=FAMILY_ERROR, labels=labels, name=case.id
    )
    continuous = exact_covariance(case, precision, discrete=False)
    positions = draws[..., : len(continuous)]
    check_continuous = mcse_check(
        *moment_statistics(positions, np.zeros(len(continuous)), continuous)[:2]
    )
    record[case.id] = {
        "num_statistics": len(truth),
        "max_abs_z": check.max_abs_z,
        "z_crit": check.z_crit,
        "min_ess": float(check.ess.min()),
        "max_abs_z_against_continuous_time": check_continuous.max_abs_z,
    }
    assert not check_continuous.passed, check_continuous.report()


@pytest.mark.parametrize(
    "case",
    [Case(2, 0.01, 0.5, 1.0), pytest.param(Case(2, 0.002, 0.5, 1.0, alpha=0.5), marks=SLOW)],
    ids=lambda c: c.id,
)
def test_small_step_is_near_continuous_time(case: Case, record: dict) -> None:
    """At a small step the empirical covariance is the continuous-time one.

    The allowance is ``z * MCSE + |Sigma_h - Sigma_0|``, the computed
    discretisation bias, and nothing else.
    """
    precision = rotated_precision(case.dim, seed=case.dim)
    continuous = exact_covariance(case, precision, discrete=False)
    n = len(continuous)
    draws = sample_joint(case, precision, num_chains=1000, num_samples=50, seed=23)[..., :n]
    discrete = exact_covariance(case, precision)[:n, :n]
    zeros = np.zeros(n)
    stats, truth, labels = moment_statistics(draws, zeros, continuous)
    _, truth_discrete, _ = moment_statistics(draws[:, :2], zeros, discrete)
    bias = truth_discrete - truth
    check = assert_mean_within_mcse(
        stats, truth, family_error=FAMILY_ERROR, bias=bias, labels=labels, name=case.id
    )
    record[f"small_step-{case.id}"] = {
        "max_abs_z": check.max_abs_z,
        "z_crit": check.z_crit,
        "max_abs_bias_over_mcse": float(np.max(np.abs(bias) / check.mcse)),
    }


@pytest.mark.parametrize("guide_step_ratio", [1.0, 6.0])
@pytest.mark.parametrize("guide_prior_precision", [0.0, 0.7])
@pytest.mark.parametrize("alpha", [None, 0.8, 0.3])
def test_discrete_law_tends_to_continuous_law(
    alpha: float | None, guide_prior_precision: float, guide_step_ratio: float
) -> None:
    """Deterministic: ``Sigma_h -> Sigma_0`` at rate ``O(h)``, and ``Sigma_0`` is as stated.

    For the SGHMC flavour the momentum's variance tends to ``2 h T / (2 - alpha)``
    (the stationary variance of ``v' = (1 - alpha) v + sqrt(2 alpha h T) xi``)
    and its covariance with the positions vanishes.
    """
    eta, temperature, dim = 0.4, 1.5, 3
    n = 2 * dim
    precision = rotated_precision(dim, seed=3)
    drift = emcmc_joint_drift(precision, eta, guide_prior_precision)
    continuous = emcmc_stationary_covariance(
        precision, eta, temperature, guide_prior_precision=guide_prior_precision
    )
    # Continuous Lyapunov equation of the overdamped joint: J S + S J^T + 2T I = 0.
    np.testing.assert_allclose(
        drift @ continuous + continuous @ drift.T, -2 * temperature * np.eye(n), atol=1e-12
    )
    if guide_prior_precision == 0.0:
        inv = np.linalg.inv(precision)
        np.testing.assert_allclose(continuous[:dim, :dim], temperature * inv, atol=1e-12)
        np.testing.assert_allclose(continuous[:dim, dim:], temperature * inv, atol=1e-12)
        np.testing.assert_allclose(
            continuous[dim:, dim:], temperature * (inv + eta * np.eye(dim)), atol=1e-12
        )
    errors = []
    for h in (1e-3, 1e-4, 1e-5):
        discrete = emcmc_stationary_covariance(
            precision,
            eta,
            temperature,
            step_size=h,
            alpha=alpha,
            guide_prior_precision=guide_prior_precision,
            guide_step_ratio=guide_step_ratio,
        )
        errors.append(np.max(np.abs(discrete[:n, :n] - continuous)))
        if alpha is not None:
            momentum = discrete[n:, n:] / (h * temperature)
            steps = np.diag(np.repeat([1.0, guide_step_ratio], dim))
            np.testing.assert_allclose(momentum, 2 / (2 - alpha) * steps, atol=50 * h * 6)
            assert np.max(np.abs(discrete[:n, n:])) < 50 * h * np.max(np.abs(continuous))
    ratios = np.asarray(errors[:-1]) / np.asarray(errors[1:])
    np.testing.assert_allclose(ratios, 10.0, rtol=0.05)  # first order in h
    assert errors[-1] < 1e-3 * np.max(np.abs(continuous))


def test_exact_recursion_matches_scipy() -> None:
    """The numpy Lyapunov solution used above agrees with scipy's on these recursions."""
    precision = rotated_precision(10, seed=10)
    for case in (SGLD_CASES[3], SGHMC_CASES[2], SGLD_CASES[-3], SGHMC_CASES[3]):
        transition, noise = emcmc_transition(
            precision[: case.dim, : case.dim],
            case.eta,
            case.temperature,
            case.step_size,
            **case.law,
        )
        np.testing.assert_allclose(
            exact_covariance(case, precision[: case.dim, : case.dim]),
            scipy.linalg.solve_discrete_lyapunov(transition, noise),
            rtol=1e-9,
            atol=1e-12,
        )


@pytest.mark.parametrize("guide_step_ratio", [1.0, 3.0, 10.0])
def test_pair_mobility_in_stiffly_coupled_directions(guide_step_ratio: float) -> None:
    """Deterministic: where ``eta lambda << 1`` the pair relaxes at ``r / (1 + r)`` of SGLD's rate.

    On ``U = lambda theta^2 / 2`` the slowest eigenvalue of the exact recursion
    (:func:`flatjax.testing.emcmc_transition`) is ``1 - h lambda_eff``; SGLD's is
    ``1 - h lambda``. The ratio ``lambda_eff / lambda`` is the pair's mobility
    ``r / (1 + r)`` (1/2 for the paper's sampler) up to ``O(eta lambda)``.
    """
    lam, eta, h = 1e-2, 1.0, 1e-3
    transition, _ = emcmc_transition([[lam]], eta, 1.0, h, guide_step_ratio=guide_step_ratio)
    slowest = float(np.max(np.abs(np.linalg.eigvals(transition))))
    mobility = (1.0 - slowest) / (h * lam)
    r = guide_step_ratio
    np.testing.assert_allclose(mobility, r / (1 + r), rtol=2 * eta * lam)


@pytest.mark.parametrize("alpha", [None, 0.5])
@pytest.mark.parametrize("guide_step_ratio", [1.0, 4.0])
def test_stability_bound_is_sharp(alpha: float | None, guide_step_ratio: float) -> None:
    """The step bound the kernels check is where the exact recursion turns unstable.

    On a target with vanishing curvature the coupling's stiff mode sets the bound:
    ``h < 2 eta / (1 + r)`` (SGLD), ``(2 - alpha)`` times that (SGHMC). Just below
    it the spectral radius is < 1, just above it is > 1, and the kernel refuses
    a concrete step above it with a ``ValueError``.
    """
    eta = 0.5
    bound = flatjax.sgmcmc.emcmc.max_stable_step(eta, guide_step_ratio)
    bound *= 1.0 if alpha is None else 2 - alpha
    law = {"alpha": alpha, "guide_step_ratio": guide_step_ratio}
    radius = [
        float(np.max(np.abs(np.linalg.eigvals(emcmc_transition([[1e-9]], eta, 1.0, h, **law)[0]))))
        for h in (0.99 * bound, 1.01 * bound)
    ]
    assert radius[0] < 1.0 < radius[1], radius
    grad_estimator = lambda position, minibatch: -position
    if alpha is None:
        sampler = flatjax.emcmc(grad_estimator, eta=eta, guide_step_ratio=guide_step_ratio)
    else:
        sampler = flatjax.emcmc_sghmc(
            grad_estimator, eta=eta, alpha=alpha, guide_step_ratio=guide_step_ratio
        )
    state = sampler.init(jnp.zeros(2))
    sampler.step(jax.random.key(0), state, None, 0.99 * bound)
    with pytest.raises(ValueError, match="step_size"):
        sampler.step(jax.random.key(0), state, None, 1.01 * bound)
