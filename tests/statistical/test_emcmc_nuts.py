r"""The Entropy-MCMC joint under exact (Metropolised) samplers has the stated marginals.

``joint_logdensity`` is sampled with ``blackjax.nuts`` and with a Gibbs sampler
(``blackjax.mala`` on ``theta | theta_a``, then the exact draw ``sample_guide``).
With ``guide_prior_precision = 0`` the ``theta``-marginal is the tempered target
and ``d = theta_a - theta ~ N(0, eta T I)`` independently of ``theta``; with a
guide prior the joint is Gaussian for a Gaussian target and known exactly. All
moments are checked within MCSE at a Bonferroni z (family error 1e-3 per test).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from flatjax.sgmcmc.emcmc import joint_logdensity, sample_guide
from flatjax.testing import (
    IsotropicGaussianMixture,
    assert_mean_within_mcse,
    moment_statistics,
    run_chains,
)

FAMILY_ERROR = 1e-3
NUM_CHAINS = 200
TARGET_MEAN = np.array([1.0, -0.5])
TARGET_COV = np.array([[1.0, 0.6], [0.6, 0.5]])
# Mildly bimodal 1-D mixture: 0.3 N(-1, 0.5^2) + 0.7 N(1.5, 1).
MIXTURE = IsotropicGaussianMixture([0.3, 0.7], [[-1.0], [1.5]], [0.5, 1.0])


class Joint(NamedTuple):
    """Exact mean and covariance of ``z = (theta, theta_a - theta)``."""

    mean: np.ndarray
    cov: np.ndarray


def gaussian_joint(
    mean: np.ndarray, cov: np.ndarray, eta: float, temperature: float, guide_prior_precision: float
) -> Joint:
    """Exact law of ``(theta, theta_a - theta)`` for a Gaussian target ``N(mean, cov)``.

    The joint log-density is ``-(x^T P x / 2 - b^T x) / T`` with
    ``P = [[A + I/eta, -I/eta], [-I/eta, (1/eta + lambda) I]]``, ``A = cov^{-1}``,
    ``b = (A mean, 0)``.
    """
    a = np.linalg.inv(cov)
    d = len(mean)
    eye = np.eye(d)
    precision = np.block(
        [[a + eye / eta, -eye / eta], [-eye / eta, (1 / eta + guide_prior_precision) * eye]]
    )
    joint_cov = temperature * np.linalg.inv(precision)
    joint_mean = np.linalg.solve(precision, np.concatenate([a @ mean, np.zeros(d)]))
    to_difference = np.block([[eye, np.zeros((d, d))], [-eye, eye]])
    return Joint(to_difference @ joint_mean, to_difference @ joint_cov @ to_difference.T)


def theta_and_difference(position: dict) -> jax.Array:
    """``(theta, theta_a - theta)`` from a joint position."""
    return jnp.concatenate([position["position"], position["guide"] - position["position"]])


def gaussian_logdensity(theta: jax.Array) -> jax.Array:
    a = jnp.asarray(np.linalg.inv(TARGET_COV), dtype=jnp.float32)
    centred = theta - jnp.asarray(TARGET_MEAN, dtype=jnp.float32)
    return -0.5 * centred @ a @ centred


def mixture_logdensity(theta: jax.Array) -> jax.Array:
    return MIXTURE.logdensity(theta)


def initial_positions(dim: int, seed: int) -> dict:
    """Over-dispersed starts ``N(0, 4 I)`` for theta and the guide."""
    key_x, key_a = jax.random.split(jax.random.key(seed))
    return {
        "position": 2.0 * jax.random.normal(key_x, (NUM_CHAINS, dim)),
        "guide": 2.0 * jax.random.normal(key_a, (NUM_CHAINS, dim)),
    }


def nuts_draws(
    joint: Callable, inverse_mass: dict, step_size: float, dim: int, seed: int
) -> np.ndarray:
    """``(theta, theta_a - theta)`` from vmapped NUTS chains on ``joint``."""
    nuts = blackjax.nuts(joint, step_size, ravel_pytree(inverse_mass)[0])
    states = jax.vmap(nuts.init)(initial_positions(dim, seed))
    draws = run_chains(
        lambda key, state: nuts.step(key, state)[0],
        states,
        jax.random.key(seed + 1),
        num_burnin=100,
        num_samples=150,
        observe=lambda state: theta_and_difference(state.position),
    )
    return np.asarray(draws, dtype=np.float64)


def check_moments(draws: np.ndarray, joint: Joint, name: str, record: dict) -> None:
    stats, truth, labels = moment_statistics(draws, joint.mean, joint.cov)
    check = assert_mean_within_mcse(
        stats, truth, family_error=FAMILY_ERROR, labels=labels, name=name
    )
    record[name] = {
        "num_statistics": len(truth),
        "max_abs_z": check.max_abs_z,
        "z_crit": check.z_crit,
        "min_ess": float(check.ess.min()),
    }


def test_difference_is_independent_gaussian_without_guide_prior() -> None:
    """Deterministic: for lambda = 0, ``theta_a - theta ~ N(0, eta T I)`` independent of theta."""
    eta, temperature = 0.3, 0.5
    joint = gaussian_joint(TARGET_MEAN, TARGET_COV, eta, temperature, 0.0)
    np.testing.assert_allclose(joint.mean, np.concatenate([TARGET_MEAN, np.zeros(2)]), atol=1e-12)
    expected = np.block(
        [
            [temperature * TARGET_COV, np.zeros((2, 2))],
            [np.zeros((2, 2)), eta * temperature * np.eye(2)],
        ]
    )
    np.testing.assert_allclose(joint.cov, expected, atol=1e-12)


@pytest.mark.parametrize(
    ("eta", "temperature", "guide_prior_precision"), [(0.3, 0.5, 0.0), (0.5, 1.0, 1.0)]
)
def test_nuts_on_joint_gaussian(
    eta: float, temperature: float, guide_prior_precision: float, record: dict
) -> None:
    """NUTS on the joint of a correlated 2-D Gaussian: exact mean and covariance of (theta, d)."""
    joint = gaussian_joint(TARGET_MEAN, TARGET_COV, eta, temperature, guide_prior_precision)
    logdensity = joint_logdensity(gaussian_logdensity, eta, temperature, guide_prior_precision)
    # Diagonal inverse mass: the exact marginal variances of theta and theta_a.
    to_joint = np.block([[np.eye(2), np.zeros((2, 2))], [np.eye(2), np.eye(2)]])
    variances = np.diag(to_joint @ joint.cov @ to_joint.T)
    inverse_mass = {"position": variances[:2], "guide": variances[2:]}
    draws = nuts_draws(logdensity, inverse_mass, step_size=0.4, dim=2, seed=3)
    check_moments(
        draws, joint, f"nuts-gaussian-eta{eta}-T{temperature}-lam{guide_prior_precision}", record
    )


def test_nuts_on_joint_mixture(record: dict) -> None:
    """NUTS on the joint of a 1-D two-component mixture: exact moments of a non-Gaussian law.

    Checks mean, variance, third central moment and ``P(theta < 0)`` of theta,
    and that ``d = theta_a - theta`` has mean 0, variance ``eta T`` and no
    correlation with theta.
    """
    eta, temperature = 0.5, 1.0
    w = np.asarray(MIXTURE.weights)
    mu = np.asarray(MIXTURE.centres)[:, 0]
    s2 = np.asarray(MIXTURE.scales) ** 2
    mean = float(w @ mu)
    variance = float(w @ (s2 + (mu - mean) ** 2))
    third = float(w @ ((mu - mean) ** 3 + 3 * (mu - mean) * s2))
    joint = Joint(np.array([mean, 0.0]), np.diag([variance, eta * temperature]))

    logdensity = joint_logdensity(mixture_logdensity, eta, temperature)
    inverse_mass = {"position": np.array([variance]), "guide": np.array([variance + eta])}
    draws = nuts_draws(logdensity, inverse_mass, step_size=0.6, dim=1, seed=5)
    stats, truth, labels = moment_statistics(draws, joint.mean, joint.cov)
    theta = draws[..., :1]
    extra = np.concatenate([(theta - mean) ** 3, (theta < 0).astype(np.float64)], axis=-1)
    stats = np.concatenate([stats, extra], axis=-1)
    truth = np.concatenate([truth, [third, MIXTURE.half_space_probability(0, 0.0)]])
    labels = labels + ("third_central_moment", "P(theta<0)")
    check = assert_mean_within_mcse(
        stats, truth, family_error=FAMILY_ERROR, labels=labels, name="nuts-mixture"
    )
    record["nuts-mixture"] = {
        "max_abs_z": check.max_abs_z,
        "z_crit": check.z_crit,
        "estimate": dict(zip(labels, check.estimate.tolist(), strict=True)),
        "exact": dict(zip(labels, truth.tolist(), strict=True)),
    }


@pytest.mark.parametrize("guide_prior_precision", [0.0, 1.5])
def test_gibbs_mala_and_exact_guide_draw(guide_prior_precision: float, record: dict) -> None:
    """Gibbs: MALA steps on ``theta | theta_a``, then ``sample_guide``; same exact moments."""
    eta, temperature, mala_step_size, mala_steps_per_sweep = 0.3, 0.5, 0.03, 3
    joint = gaussian_joint(TARGET_MEAN, TARGET_COV, eta, temperature, guide_prior_precision)
    logdensity = joint_logdensity(gaussian_logdensity, eta, temperature, guide_prior_precision)
    mala = blackjax.mala.build_kernel()

    def sweep(key: jax.Array, position: dict) -> dict:
        key_mala, key_guide = jax.random.split(key)
        guide = position["guide"]
        conditional = lambda theta: logdensity({"position": theta, "guide": guide})

        def mala_step(state, k):
            return mala(k, state, conditional, mala_step_size)[0], None

        state = blackjax.mala.init(position["position"], conditional)
        state, _ = jax.lax.scan(mala_step, state, jax.random.split(key_mala, mala_steps_per_sweep))
        theta = state.position
        guide = sample_guide(key_guide, theta, eta, temperature, guide_prior_precision)
        return {"position": theta, "guide": guide}

    draws = run_chains(
        sweep,
        initial_positions(2, seed=11),
        jax.random.key(12),
        num_burnin=200,
        num_samples=100,
        thin=4,
        observe=theta_and_difference,
    )
    check_moments(
        np.asarray(draws, dtype=np.float64), joint, f"gibbs-lam{guide_prior_precision}", record
    )


def test_sample_guide_is_the_exact_conditional(record: dict) -> None:
    """``sample_guide`` with a guide prior draws ``theta_a | theta`` exactly.

    The conditional is ``N(theta / (1 + eta lam), eta T / (1 + eta lam) I)``.
    """
    eta, temperature, lam = 0.4, 0.7, 2.0
    theta = jnp.array([1.0, -2.0, 0.5])
    keys = jax.random.split(jax.random.key(7), (4, 5000))
    draws = jax.vmap(jax.vmap(lambda k: sample_guide(k, theta, eta, temperature, lam)))(keys)
    shrink = 1.0 / (1.0 + eta * lam)
    mean = shrink * np.asarray(theta, dtype=np.float64)
    cov = eta * temperature * shrink * np.eye(3)
    check_moments(
        np.asarray(draws, dtype=np.float64), Joint(mean, cov), "sample_guide-lam2", record
    )
