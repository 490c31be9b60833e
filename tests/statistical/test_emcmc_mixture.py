r"""Flat-basin bias, stated exactly, and Entropy-MCMC checked against it.

Target: the 2-D isotropic mixture ``0.3 N(c_sharp, 0.1^2 I) + 0.7 N(c_flat, 0.6^2 I)``
at ``T = 1`` with ``eta = 0.5``. The sharp mode has the higher peak
(``0.3 / (2 pi 0.01) = 4.8`` against ``0.7 / (2 pi 0.36) = 0.31``) but the smaller
mass. The guide's exact marginal is the same mixture with every variance grown
by ``eta T``: component masses are unchanged, but the sharp peak is smeared far
more than the flat one, so near its centre the guide has *less* probability than
near the flat centre, while the target has more.

The statistics (indicators of discs of radius ``r = 0.3`` around each centre and
of the half-plane ``x < 0``, and the mean responsibility of the sharp component,
whose exact expectation is its weight) are checked against these exact values,
for ``theta`` under the target and ``theta_a`` under the guide, within MCSE at a
Bonferroni z (family error 1e-3 per check).

Discretisation bias is computed, never tuned, and is the only allowance:

* within a basin: each component is Gaussian, so the exact discrete stationary
  variances of the chain on that component alone
  (:func:`flatjax.testing.emcmc_stationary_covariance`) give the law's shape;
* basin masses (SGLD flavour): Euler-Maruyama's invariant density is, to first
  order, ``pi_h = pi (1 + h (|grad U|^2 / (4T) - Lap U / 2))`` (derived from the
  one-step expansion; it is exact for Gaussians), which multiplies the mass of a
  Gaussian basin of curvature ``1/s^2`` in ``d`` dimensions by
  ``1 - h d / (4 s^2)``: the sharp basin (``s = 0.1``) loses mass, ``exp(-50 h)``.
  For the SGHMC flavour there is no such formula here; its basin-mass bias is
  *measured* at two step sizes in the slow test and removed by Richardson
  extrapolation. It is several times larger than SGLD's at the same effective
  step (the sharp basin holds about 0.24 instead of 0.30 at ``eps / alpha = 1e-3``).

* The fast tests start every chain from the exact joint (a mixture draw for
  ``theta``, ``theta_a = theta + sqrt(eta T) xi``, momenta at their stationary
  variance) and check that the kernels keep it, over 6 time units. Within-basin
  shapes (notably the guide's disc probabilities) relax in well under one time
  unit and are tested sharply; basin masses relax in about 10 time units, so they
  are weak evidence here.
* The slow tests start every chain at the flat centre and run 60 time units of
  burn-in then 40 of sampling, so the basin masses (0.3 / 0.7) must be *reached*:
  SGLD at one step size with the computed allowance, plus a second step size
  whose measured shift must match the computed one; SGHMC at two step sizes,
  Richardson-extrapolated.

``benchmarks/mixture_exactness.py`` runs this module with recording on and writes
``benchmarks/results/emcmc_mixture_exactness.json``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flatjax
from flatjax.testing import (
    IsotropicGaussianMixture,
    MCSECheck,
    assert_mean_within_mcse,
    bonferroni_z,
    emcmc_stationary_covariance,
    mcse_check,
    run_chains,
)

RECORD_NAME = "emcmc_mixture_exactness"
FAMILY_ERROR = 1e-3
WEIGHTS = (0.3, 0.7)  # sharp, flat
SCALES = (0.1, 0.6)
ETA = 0.5
TEMPERATURE = 1.0
RADIUS = 0.3
NUM_CHAINS = 1000


def mixture(half_separation: float) -> IsotropicGaussianMixture:
    """Sharp component at ``(-half, 0)``, flat one at ``(+half, 0)``."""
    return IsotropicGaussianMixture(
        WEIGHTS, [[-half_separation, 0.0], [half_separation, 0.0]], SCALES
    )


# Close enough to mix at T = 1 in a test's budget; the exact claims hold here too.
TARGET = mixture(1.0)
GUIDE = TARGET.convolve(ETA * TEMPERATURE)
LABELS = tuple(
    f"{who}:{stat}"
    for who in ("theta", "guide")
    for stat in ("disc_sharp", "disc_flat", "half_plane_x<0", "responsibility_sharp")
)


def exact_statistics(
    target: IsotropicGaussianMixture, guide: IsotropicGaussianMixture
) -> np.ndarray:
    """Expectations of the statistics of :func:`statistics` (order of ``LABELS``)."""
    out = []
    for law in (target, guide):
        out += [
            law.disc_probability(law.centres[0], RADIUS),
            law.disc_probability(law.centres[1], RADIUS),
            law.half_space_probability(0, 0.0),
            law.weights[0],
        ]
    return np.asarray(out)


def statistics(position: jax.Array, guide: jax.Array) -> jax.Array:
    """Indicator and responsibility statistics of one chain's ``(theta, theta_a)``."""
    out = []
    for x, law in ((position, TARGET), (guide, GUIDE)):
        centres = jnp.asarray(law.centres, dtype=x.dtype)
        inside = jnp.sum((x - centres) ** 2, axis=-1) < RADIUS**2
        out += [inside[0], inside[1], x[0] < 0, law.responsibilities(x)[0]]
    return jnp.stack([jnp.asarray(v, dtype=jnp.float32) for v in out])


class Flavour(NamedTuple):
    """A kernel and the step size it is checked at."""

    name: str
    step_size: float
    alpha: float | None = None  # None: SGLD flavour
    guide_step_ratio: float = 1.0
    noise: str = "gaussian"

    @property
    def time_per_step(self) -> float:
        """Langevin time one step advances: ``eps`` (SGLD), ``eps / alpha`` (SGHMC).

        In the momentum-SGD form the momentum accumulates ``1 / alpha`` gradient
        steps, so the positions move like SGLD with step ``eps / alpha``.
        """
        return self.step_size if self.alpha is None else self.step_size / self.alpha

    def sampler(self):
        grad = jax.grad(TARGET.logdensity)
        grad_estimator = lambda position, minibatch: grad(position)
        options = {"guide_step_ratio": self.guide_step_ratio, "noise": self.noise}
        if self.alpha is None:
            return flatjax.emcmc(grad_estimator, eta=ETA, **options)
        return flatjax.emcmc_sghmc(grad_estimator, eta=ETA, alpha=self.alpha, **options)


def discretisation_bias(flavour: Flavour) -> np.ndarray:
    """Computed bias of each statistic at ``flavour``'s step size (see the module notes).

    Component ``k`` alone is ``N(c_k, s_k^2 I)``; on it the chain is linear and its
    stationary variances of ``theta`` and ``theta_a`` are exact (Lyapunov). For
    the SGLD flavour the component weights are also multiplied by the first-order
    basin-mass factor ``exp(-h d / (4 s_k^2))``. The responsibility of the sharp
    component is treated as that basin's indicator: its bias is the change of
    the sharp weight.
    """
    theta_scales, guide_scales = [], []
    for scale in SCALES:
        cov = emcmc_stationary_covariance(
            [[1.0 / scale**2]],
            ETA,
            TEMPERATURE,
            step_size=flavour.step_size,
            alpha=flavour.alpha,
            guide_step_ratio=flavour.guide_step_ratio,
        )
        theta_scales.append(math.sqrt(cov[0, 0]))
        guide_scales.append(math.sqrt(cov[1, 1]))
    weights = np.asarray(WEIGHTS)
    if flavour.alpha is None:
        dim = TARGET.dim
        weights = weights * np.exp(-flavour.step_size * dim / (4 * np.square(SCALES)))
        weights = weights / weights.sum()
    theta_law = IsotropicGaussianMixture(weights, TARGET.centres, theta_scales)
    guide_law = IsotropicGaussianMixture(weights, TARGET.centres, guide_scales)
    return exact_statistics(theta_law, guide_law) - exact_statistics(TARGET, GUIDE)


def exact_initial_states(flavour: Flavour, seed: int):
    """``NUM_CHAINS`` exact draws of the joint (and of the momenta)."""
    key_theta, key_guide, key_momentum = jax.random.split(jax.random.key(seed), 3)
    theta = TARGET.sample(key_theta, NUM_CHAINS)
    guide = theta + math.sqrt(ETA * TEMPERATURE) * jax.random.normal(key_guide, theta.shape)
    if flavour.alpha is None:
        return flatjax.EMCMCState(theta, guide)
    # Stationary momentum of v' = (1 - alpha) v + sqrt(2 alpha eps T) xi (guide: r eps).
    scale = math.sqrt(2 * flavour.step_size * TEMPERATURE / (2 - flavour.alpha))
    momentum = scale * jax.random.normal(key_momentum, (2, *theta.shape))
    momentum = momentum.at[1].multiply(math.sqrt(flavour.guide_step_ratio))
    return flatjax.EMCMCSGHMCState(theta, guide, flatjax.EMCMCState(momentum[0], momentum[1]))


def sample_statistics(flavour: Flavour, states, burnin_time: float, sample_time: float):
    """Draws of the statistics, shape ``(NUM_CHAINS, 50, 8)``; times in Langevin units."""
    sampler = flavour.sampler()
    num_samples = 50
    draws = run_chains(
        lambda key, state: sampler.step(key, state, None, flavour.step_size, TEMPERATURE),
        states,
        jax.random.key(1),
        num_burnin=round(burnin_time / flavour.time_per_step),
        num_samples=num_samples,
        thin=round(sample_time / flavour.time_per_step / num_samples),
        observe=lambda state: statistics(state.position, state.guide),
    )
    return np.asarray(draws, dtype=np.float64)


def flat_centre_states(flavour: Flavour):
    """Every chain (theta and guide) at the flat centre, zero momentum."""
    start = jnp.broadcast_to(jnp.asarray(TARGET.centres[1], dtype=jnp.float32), (NUM_CHAINS, 2))
    return jax.vmap(flavour.sampler().init)(start)


def describe(flavour: Flavour, check: MCSECheck, bias: np.ndarray, **extra) -> dict:
    """The numbers of one run, for the record."""
    return {
        "step_size": flavour.step_size,
        "alpha": flavour.alpha,
        "num_chains": NUM_CHAINS,
        "max_abs_z": check.max_abs_z,
        "z_crit": check.z_crit,
        "max_abs_computed_bias_over_mcse": float(np.max(np.abs(bias) / check.mcse)),
        **extra,
        "statistics": {
            label: {
                "exact": float(t),
                "estimate": float(e),
                "mcse": float(m),
                "z": float(z),
                "computed_bias": float(b),
            }
            for label, t, e, m, z, b in zip(
                LABELS, check.truth, check.estimate, check.mcse, check.z, bias, strict=True
            )
        },
    }


SGLD = Flavour("sgld", step_size=1e-3)
SGHMC = Flavour("sghmc", step_size=2.5e-4, alpha=0.5)
# the guide at four times the position's step: the same joint law, exactly
SGLD_R4 = Flavour("sgld-r4", step_size=1e-3, guide_step_ratio=4.0)
SGHMC_R4 = Flavour("sghmc-r4", step_size=2.5e-4, alpha=0.5, guide_step_ratio=4.0)
# random signs as the noise, at a smaller step: within a basin of curvature c the
# stationary law is a sum of about 2 / (h c) signs, whose excess kurtosis is about
# -h c / 2 (Gaussian noise: 0), a non-Gaussian error of order h beside the computed
# covariance bias (which is the same for both noises)
SGLD_SIGNS = Flavour("sgld-rademacher", step_size=2.5e-4, noise="rademacher")


@pytest.mark.parametrize("half_separation", [1.0, 2.0])
def test_exact_flat_basin_bias(half_separation: float, record: dict) -> None:
    """The exact numbers: the guide prefers the flat centre, the target the sharp one."""
    target = mixture(half_separation)
    guide = target.convolve(ETA * TEMPERATURE)
    values = dict(zip(LABELS, exact_statistics(target, guide).tolist(), strict=True))
    assert values["theta:disc_sharp"] > 3 * values["theta:disc_flat"]
    assert values["guide:disc_sharp"] < values["guide:disc_flat"]
    # Component (basin) masses are those of the target; the half-plane masses
    # differ only by what the widened components spill over x = 0.
    assert guide.weights == target.weights
    spill = sum(
        w * (0.5 * math.erfc(half_separation / math.sqrt(2 * (s * s + ETA * TEMPERATURE))))
        for w, s in zip(WEIGHTS, SCALES, strict=True)
    )
    assert abs(values["theta:half_plane_x<0"] - values["guide:half_plane_x<0"]) < spill
    peaks = [w / (2 * math.pi * s * s) for w, s in zip(target.weights, target.scales, strict=True)]
    guide_peaks = [
        w / (2 * math.pi * s * s) for w, s in zip(guide.weights, guide.scales, strict=True)
    ]
    assert peaks[0] > peaks[1] and guide_peaks[0] < guide_peaks[1]
    record[f"exact-half_separation{half_separation}"] = {
        **values,
        "peak_density_target": peaks,
        "peak_density_guide": guide_peaks,
    }


def test_guide_marginal_is_the_smoothed_mixture() -> None:
    """Deterministic: ``int p(theta) N(theta_a; theta, eta T I) dtheta`` is ``convolve(eta T)``.

    Brute-force quadrature on a fine grid (spacing 0.01, a tenth of the sharp
    scale), independent of the component-wise formula.
    """
    grid = np.arange(-4.0, 4.0, 0.01)
    xx, yy = np.meshgrid(grid, grid, indexing="ij")
    points = np.stack([xx, yy], axis=-1)
    log_density = TARGET.logdensity(jnp.asarray(points, dtype=jnp.float32))
    density = np.exp(np.asarray(log_density, dtype=np.float64))
    variance = ETA * TEMPERATURE
    for theta_a in ([-1.0, 0.0], [1.0, 0.0], [0.0, 0.5], [-1.4, -0.3]):
        sq = np.sum((points - np.asarray(theta_a)) ** 2, axis=-1)
        kernel = np.exp(-sq / (2 * variance)) / (2 * math.pi * variance)
        integral = float(np.sum(density * kernel)) * 0.01**2
        expected = math.exp(float(GUIDE.logdensity(jnp.asarray(theta_a))))
        np.testing.assert_allclose(integral, expected, rtol=1e-4)


@pytest.mark.parametrize(
    "flavour",
    [SGLD, SGHMC, SGLD_R4, SGLD_SIGNS, pytest.param(SGHMC_R4, marks=pytest.mark.slow)],
    ids=lambda f: f.name,
)
def test_kernels_keep_the_exact_joint(flavour: Flavour, record: dict) -> None:
    """From exact draws of the joint, 1 time unit of burn-in and 5 of sampling.

    A time unit is ``1 / time_per_step`` steps: 1000 (SGLD), 2000 (SGHMC).
    """
    draws = sample_statistics(flavour, exact_initial_states(flavour, seed=2), 1.0, 5.0)
    bias = discretisation_bias(flavour)
    name = f"stationary-{flavour.name}"
    check = assert_mean_within_mcse(
        draws,
        exact_statistics(TARGET, GUIDE),
        family_error=FAMILY_ERROR,
        bias=bias,
        labels=LABELS,
        name=name,
    )
    record[name] = describe(flavour, check, bias, burnin_time=1.0, sample_time=5.0)


@pytest.mark.slow
def test_sgld_reaches_the_exact_joint(record: dict) -> None:
    """SGLD flavour from the flat centre: exact values within MCSE + computed bias.

    A second run at twice the step size checks the bias model: the measured
    shift between the two runs must match the computed one within MCSE.
    """
    truth = exact_statistics(TARGET, GUIDE)
    coarse = SGLD._replace(step_size=2 * SGLD.step_size)
    checks, biases = [], []
    for flavour in (SGLD, coarse):
        draws = sample_statistics(flavour, flat_centre_states(flavour), 60.0, 40.0)
        biases.append(discretisation_bias(flavour))
        checks.append(mcse_check(draws, truth, family_error=FAMILY_ERROR, bias=biases[0]))
    fine_check, coarse_check = checks
    name = "mixing-sgld"
    assert fine_check.passed, f"{name}\n" + fine_check.report()
    shift = coarse_check.estimate - fine_check.estimate
    shift_mcse = np.hypot(coarse_check.mcse, fine_check.mcse)
    computed_shift = biases[1] - biases[0]
    z_shift = (shift - computed_shift) / shift_mcse
    assert np.all(np.abs(z_shift) < fine_check.z_crit), z_shift
    record[name] = describe(SGLD, fine_check, biases[0], burnin_time=60.0, sample_time=40.0)
    record[f"{name}-step{coarse.step_size}"] = describe(
        coarse,
        coarse_check,
        biases[1],
        burnin_time=60.0,
        sample_time=40.0,
        measured_minus_computed_shift_z=z_shift.tolist(),
    )


@pytest.mark.slow
def test_sghmc_reaches_the_exact_joint(record: dict) -> None:
    """SGHMC flavour from the flat centre, at ``eps`` and ``eps / 2``, Richardson-extrapolated.

    ``2 e(eps / 2) - e(eps)`` removes the first-order bias (including the
    basin-mass bias, for which there is no formula here); it must match the
    exact values within its MCSE ``sqrt(4 mcse_2^2 + mcse_1^2)`` plus the
    extrapolated within-basin bias.
    """
    truth = exact_statistics(TARGET, GUIDE)
    coarse = SGHMC._replace(step_size=2 * SGHMC.step_size)
    checks, biases = [], []
    for flavour in (coarse, SGHMC):
        draws = sample_statistics(flavour, flat_centre_states(flavour), 60.0, 40.0)
        biases.append(discretisation_bias(flavour))
        checks.append(mcse_check(draws, truth, family_error=FAMILY_ERROR, bias=biases[-1]))
    coarse_check, fine_check = checks
    extrapolated = 2 * fine_check.estimate - coarse_check.estimate
    mcse = np.hypot(2 * fine_check.mcse, coarse_check.mcse)
    bias = 2 * biases[1] - biases[0]
    z = (extrapolated - truth) / mcse
    z_crit = bonferroni_z(len(truth), FAMILY_ERROR)
    ok = np.abs(extrapolated - truth) <= z_crit * mcse + np.abs(bias)
    record["mixing-sghmc"] = {
        "max_abs_z_extrapolated": float(np.max(np.abs(z))),
        "z_crit": z_crit,
        "runs": [
            describe(f, c, b, burnin_time=60.0, sample_time=40.0)
            for f, c, b in zip((coarse, SGHMC), checks, biases, strict=True)
        ],
        "extrapolated": {
            label: {"exact": float(t), "estimate": float(e), "mcse": float(m), "z": float(zz)}
            for label, t, e, m, zz in zip(LABELS, truth, extrapolated, mcse, z, strict=True)
        },
    }
    assert np.all(ok), dict(zip(LABELS, z.round(2).tolist(), strict=True))
