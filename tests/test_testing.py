"""The statistical test harness itself: MCSE checks, exact Gaussian laws, mixture target."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from flatjax.testing import (
    IsotropicGaussianMixture,
    assert_mean_within_mcse,
    bonferroni_z,
    discrete_lyapunov,
    mcse_check,
    moment_statistics,
    run_chains,
)


def ar1_draws(num_chains: int, num_samples: int, num_entries: int, phi: float, seed: int):
    """Stationary AR(1) chains ``x' = phi x + sqrt(1 - phi^2) z`` (mean 0, variance 1)."""
    rng = np.random.default_rng(seed)
    x = np.empty((num_chains, num_samples, num_entries))
    x[:, 0] = rng.normal(size=(num_chains, num_entries))
    noise = np.sqrt(1 - phi**2) * rng.normal(size=x.shape)
    for t in range(1, num_samples):
        x[:, t] = phi * x[:, t - 1] + noise[:, t]
    return x


@pytest.mark.parametrize(("num_tests", "family_error"), [(1, 0.05), (14, 1e-3), (820, 1e-3)])
def test_bonferroni_z_matches_scipy(num_tests: int, family_error: float) -> None:
    expected = scipy.stats.norm.ppf(1 - family_error / (2 * num_tests))
    np.testing.assert_allclose(bonferroni_z(num_tests, family_error), expected, rtol=1e-12)


def test_bonferroni_z_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_tests"):
        bonferroni_z(0)
    with pytest.raises(ValueError, match="family_error"):
        bonferroni_z(3, 1.5)


def test_mcse_is_calibrated_on_autocorrelated_chains() -> None:
    """z-scores of 400 independent AR(1) means are about standard normal.

    With ``phi = 0.8`` the naive ``sd / sqrt(n)`` would be 3x too small (half of
    the |z| above 1.96); with the ESS the count above 1.96 is Binomial(400, 0.05)
    up to ESS-estimation error, mean 20, sd 4.4.
    """
    draws = ar1_draws(4, 500, 400, phi=0.8, seed=0)
    check = mcse_check(draws, 0.0)
    exceed = int(np.sum(np.abs(check.z) > 1.96))
    assert 5 <= exceed <= 40, exceed
    naive = check.mcse * np.sqrt(check.ess / (4 * 500))
    assert np.mean(np.abs(check.estimate) / naive > 1.96) > 0.3


def test_failure_names_the_worst_entries_and_bias_is_allowed() -> None:
    draws = np.random.default_rng(1).normal(size=(4, 1000, 3))
    truth = np.array([0.0, 0.0, 0.5])
    with pytest.raises(AssertionError, match=r"(?s)my-check.*\bc\b: estimate="):
        assert_mean_within_mcse(draws, truth, labels=("a", "b", "c"), name="my-check")
    check = assert_mean_within_mcse(draws, truth, bias=[0.0, 0.0, 0.6])
    assert check.passed and check.max_abs_z > 10


def test_mcse_check_handles_constant_statistics() -> None:
    draws = np.ones((2, 10, 2))
    assert mcse_check(draws, [1.0, 1.0]).passed
    assert not mcse_check(draws, [1.0, 2.0]).passed


def test_moment_statistics_centres_at_the_exact_mean() -> None:
    x = np.random.default_rng(2).normal(size=(2, 5, 3)) + 4.0
    stats, truth, labels = moment_statistics(x, np.full(3, 4.0), np.eye(3))
    assert stats.shape == (2, 5, 9) and len(labels) == len(truth) == 9
    np.testing.assert_allclose(stats[..., 3], (x[..., 0] - 4.0) ** 2)
    with pytest.raises(ValueError, match="dimension"):
        moment_statistics(x, np.zeros(2), np.eye(3))


@pytest.mark.parametrize("dim", [1, 3, 12, 40])
def test_discrete_lyapunov_matches_scipy(dim: int) -> None:
    rng = np.random.default_rng(dim)
    m = rng.normal(size=(dim, dim))
    m *= 0.97 / np.max(np.abs(np.linalg.eigvals(m)))  # non-normal, slow
    b = rng.normal(size=(dim, dim))
    q = b @ b.T
    np.testing.assert_allclose(
        discrete_lyapunov(m, q), scipy.linalg.solve_discrete_lyapunov(m, q), rtol=1e-8, atol=1e-10
    )


def test_discrete_lyapunov_rejects_unstable_recursions() -> None:
    with pytest.raises(ValueError, match="spectral radius"):
        discrete_lyapunov(np.array([[1.0, 0.1], [0.0, 0.5]]), np.eye(2))
    with pytest.raises(ValueError, match="same shape"):
        discrete_lyapunov(np.eye(2), np.eye(3))


MIXTURE = IsotropicGaussianMixture([0.3, 0.7], [[-1.0, 0.0], [1.0, 0.5]], [0.1, 0.6])


@pytest.mark.parametrize("centre", [(-1.0, 0.0), (1.0, 0.5), (0.0, 0.2)])
@pytest.mark.parametrize("radius", [0.05, 0.3, 1.5])
def test_disc_probability_matches_noncentral_chi2(centre, radius: float) -> None:
    expected = sum(
        w
        * scipy.stats.ncx2.cdf(
            radius**2 / s**2, df=2, nc=np.sum((np.subtract(centre, c)) ** 2) / s**2
        )
        for w, c, s in zip(MIXTURE.weights, MIXTURE.centres, MIXTURE.scales, strict=True)
    )
    np.testing.assert_allclose(MIXTURE.disc_probability(centre, radius), expected, rtol=1e-9)


def test_mixture_densities_and_probabilities_match_scipy() -> None:
    x = np.array([[-1.0, 0.1], [0.3, -0.2], [2.0, 1.0]])
    expected = sum(
        w * scipy.stats.multivariate_normal(c, s**2 * np.eye(2)).pdf(x)
        for w, c, s in zip(MIXTURE.weights, MIXTURE.centres, MIXTURE.scales, strict=True)
    )
    with jax.enable_x64(True):
        got = np.exp(np.asarray(MIXTURE.logdensity(jnp.asarray(x))))
        resp = np.asarray(MIXTURE.responsibilities(jnp.asarray(x)))
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    np.testing.assert_allclose(resp.sum(-1), 1.0)
    half = sum(
        w * scipy.stats.norm.cdf(0.25, c[1], s)
        for w, c, s in zip(MIXTURE.weights, MIXTURE.centres, MIXTURE.scales, strict=True)
    )
    np.testing.assert_allclose(MIXTURE.half_space_probability(1, 0.25), half, rtol=1e-12)
    wider = MIXTURE.convolve(0.5)
    np.testing.assert_allclose(np.square(wider.scales), np.square(MIXTURE.scales) + 0.5)
    assert wider.weights == MIXTURE.weights and wider.centres == MIXTURE.centres
    with pytest.raises(ValueError, match="K weights"):
        IsotropicGaussianMixture([0.5, 0.5], [[0.0, 0.0]], [1.0, 1.0])


def test_mixture_samples_have_the_exact_moments() -> None:
    draws = np.asarray(MIXTURE.sample(jax.random.key(0), 40_000), dtype=np.float64)
    w, c, s = (np.asarray(v) for v in (MIXTURE.weights, MIXTURE.centres, MIXTURE.scales))
    mean = w @ c
    cov = sum(
        wk * (sk**2 * np.eye(2) + np.outer(ck - mean, ck - mean))
        for wk, ck, sk in zip(w, c, s, strict=True)
    )
    stats, truth, labels = moment_statistics(draws.reshape(4, 10_000, 2), mean, cov)
    assert_mean_within_mcse(stats, truth, labels=labels)


def test_run_chains_shapes_and_determinism() -> None:
    step = lambda key, x: 0.5 * x + jax.random.normal(key, x.shape)
    kwargs = dict(num_burnin=5, num_samples=4, thin=3)
    a = run_chains(step, jnp.zeros((3, 2)), jax.random.key(0), **kwargs)
    b = run_chains(step, jnp.zeros((3, 2)), jax.random.key(0), **kwargs)
    assert a.shape == (3, 4, 2)
    np.testing.assert_array_equal(a, b)
    counter = run_chains(
        lambda key, n: n + 1, jnp.zeros(2, dtype=jnp.int32), jax.random.key(0), **kwargs
    )
    # burn-in is rounded up to whole thinning blocks: 6 steps, then every 3rd.
    np.testing.assert_array_equal(counter[0], [9, 12, 15, 18])
