r"""Tools for checking samplers against exact answers.

Monte Carlo checks here are stated in units of the Monte Carlo standard error
(MCSE): an estimate :math:`\hat\mu` of :math:`\mathbb{E}f` from correlated MCMC
draws passes when :math:`|\hat\mu - \mu| < z\,\mathrm{sd}(f)/\sqrt{\mathrm{ESS}}`,
with the effective sample size from :func:`blackjax.diagnostics.effective_sample_size`
and :math:`z` Bonferroni-corrected over the number of statistics checked at once,
so that a correct sampler fails a whole check with probability at most
``family_error``. Nothing is tuned until it passes: the only knob is that error rate.

Exact answers to check against:

* :func:`discrete_lyapunov` solves :math:`\Sigma = M \Sigma M^\top + Q`, the
  stationary covariance of a linear recursion :math:`x' = Mx + \varepsilon`,
  :math:`\varepsilon \sim \mathcal{N}(0, Q)` (numpy only, no scipy at run time).
* :func:`emcmc_stationary_covariance` uses it for the exact stationary law of the
  discretised Entropy-MCMC chains (both flavours) on a Gaussian target, and gives
  the continuous-time law when no step size is given.
* :class:`IsotropicGaussianMixture` is a multi-modal target whose disc, half-space
  and component probabilities are known exactly, as is its smoothing by
  :math:`\mathcal{N}(0, \eta T I)` (the Entropy-MCMC guide's marginal at ``T = 1``).

:func:`run_chains` runs any one-chain ``step(rng_key, state)`` on many chains
(``vmap``) inside one jitted ``lax.scan``, with burn-in and thinning.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.diagnostics import effective_sample_size
from blackjax.types import ArrayLikeTree, ArrayTree, PRNGKey

__all__ = [
    "MCSECheck",
    "bonferroni_z",
    "mcse_check",
    "assert_mean_within_mcse",
    "moment_statistics",
    "discrete_lyapunov",
    "emcmc_joint_drift",
    "emcmc_transition",
    "emcmc_stationary_covariance",
    "IsotropicGaussianMixture",
    "run_chains",
]


# --------------------------------------------------------------------------- MCSE


class MCSECheck(NamedTuple):
    """Outcome of :func:`mcse_check`, one entry per statistic (flattened).

    estimate, truth
        Monte Carlo mean and exact value of each statistic.
    mcse
        Monte Carlo standard error ``sd / sqrt(ess)``.
    ess
        Effective sample size of each statistic.
    z
        ``(estimate - truth) / mcse``.
    bias
        Known deterministic offset allowed on top of ``z_crit * mcse`` (e.g. a
        computed discretisation bias); zeros when none.
    z_crit
        Bonferroni critical value used for every entry.
    passed
        Whether every ``|estimate - truth| <= z_crit * mcse + |bias|``.
    labels
        Names of the entries, for messages.
    """

    estimate: np.ndarray
    truth: np.ndarray
    mcse: np.ndarray
    ess: np.ndarray
    z: np.ndarray
    bias: np.ndarray
    z_crit: float
    passed: bool
    labels: tuple[str, ...]

    @property
    def max_abs_z(self) -> float:
        """Largest ``|z|`` over the entries."""
        return float(np.max(np.abs(self.z)))

    def excess(self) -> np.ndarray:
        """``(|estimate - truth| - |bias|) / mcse``: fails where ``> z_crit``."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return (np.abs(self.estimate - self.truth) - np.abs(self.bias)) / self.mcse

    def report(self, worst: int = 5) -> str:
        """A few lines naming the ``worst`` entries (largest excess over the bias)."""
        excess = np.nan_to_num(self.excess(), nan=np.inf)
        order = np.argsort(-excess)[:worst]
        lines = [
            f"{len(self.z)} statistics, Bonferroni z_crit={self.z_crit:.3f}, "
            f"max |z|={self.max_abs_z:.3f}, min ESS={float(np.min(self.ess)):.0f}"
        ]
        for i in order:
            lines.append(
                f"  {self.labels[i]}: estimate={self.estimate[i]:.6g} truth={self.truth[i]:.6g} "
                f"mcse={self.mcse[i]:.3g} bias={self.bias[i]:.3g} z={self.z[i]:+.3f} "
                f"ess={self.ess[i]:.0f}"
            )
        return "\n".join(lines)


def bonferroni_z(num_tests: int, family_error: float = 1e-3) -> float:
    """Two-sided normal critical value for ``num_tests`` simultaneous checks.

    ``z = Phi^{-1}(1 - family_error / (2 num_tests))``, so that the probability
    that any of ``num_tests`` standard normal scores exceeds ``z`` in absolute
    value is at most ``family_error``.

    Examples
    --------
    >>> round(bonferroni_z(1, 0.05), 3)
    1.96
    >>> round(bonferroni_z(10, 1e-3), 3)
    3.891
    """
    if num_tests < 1:
        raise ValueError(f"`num_tests` must be >= 1, got {num_tests!r}")
    if not 0 < family_error < 1:
        raise ValueError(f"`family_error` must be in (0, 1), got {family_error!r}")
    return NormalDist().inv_cdf(1.0 - family_error / (2 * num_tests))


_jit_ess = jax.jit(effective_sample_size, static_argnums=(1, 2))


def _ess(draws: np.ndarray, chunk: int = 64) -> np.ndarray:
    """ESS of each column of ``draws`` (chains, samples, m), in fixed-size column chunks.

    Columns are padded to a multiple of ``chunk`` so that one compiled ESS serves
    every chunk of a given ``(chains, samples)`` shape.
    """
    m = draws.shape[-1]
    width = chunk
    padded = np.concatenate(
        [draws, np.repeat(draws[..., :1], -m % width, axis=-1)], axis=-1
    ).astype(np.float32)
    out = [
        np.asarray(_jit_ess(jnp.asarray(padded[..., i : i + width]), 0, 1)).reshape(-1)
        for i in range(0, padded.shape[-1], width)
    ]
    return np.concatenate(out)[:m].astype(np.float64)


def mcse_check(
    draws: ArrayLikeTree,
    truth: ArrayLikeTree,
    *,
    family_error: float = 1e-3,
    bias: ArrayLikeTree = 0.0,
    labels: Sequence[str] | None = None,
) -> MCSECheck:
    """Compare Monte Carlo means of statistics with their exact values, in MCSE units.

    Parameters
    ----------
    draws
        Draws of the statistics, shape ``(num_chains, num_samples, *shape)``; each
        entry of ``shape`` is one statistic (e.g. ``x_i * x_j`` for a covariance
        entry with known mean zero). At least 2 samples per chain.
    truth
        Exact expectations, broadcastable to ``shape``.
    family_error
        Probability that a correct sampler fails the check as a whole; the
        critical value is :func:`bonferroni_z` over all entries.
    bias
        Known deterministic offset allowed per entry (broadcastable to ``shape``),
        e.g. a computed discretisation bias; entry ``i`` passes when
        ``|estimate - truth| <= z_crit * mcse + |bias|``.
    labels
        Optional names of the (flattened) entries, used in messages.

    Returns
    -------
    An :class:`MCSECheck`; it does not raise (see :func:`assert_mean_within_mcse`).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(4, 1000, 2))
    >>> check = mcse_check(x, [0.0, 0.0])
    >>> check.passed, check.z.shape
    (True, (2,))
    """
    draws = np.asarray(draws, dtype=np.float64)
    if draws.ndim < 2 or draws.shape[1] < 2:
        raise ValueError(
            f"`draws` must have shape (num_chains, num_samples >= 2, ...), got {draws.shape}"
        )
    shape = draws.shape[2:]
    flat = draws.reshape(draws.shape[0], draws.shape[1], -1)
    m = flat.shape[-1]
    truth = np.broadcast_to(np.asarray(truth, dtype=np.float64), shape).reshape(m)
    bias = np.broadcast_to(np.asarray(bias, dtype=np.float64), shape).reshape(m)
    if labels is None:
        labels = tuple(str(idx) for idx in np.ndindex(*shape)) if shape else ("0",)
    labels = tuple(labels)
    if len(labels) != m:
        raise ValueError(f"got {len(labels)} labels for {m} statistics")

    estimate = flat.mean(axis=(0, 1))
    sd = flat.reshape(-1, m).std(axis=0, ddof=1)
    ess = _ess(flat)
    with np.errstate(divide="ignore", invalid="ignore"):
        mcse = np.where(sd > 0, sd / np.sqrt(ess), 0.0)
        error = estimate - truth
        z = np.where(mcse > 0, error / mcse, np.where(error == 0, 0.0, np.inf))
    z_crit = bonferroni_z(m, family_error)
    passed = bool(np.all(np.abs(error) <= z_crit * mcse + np.abs(bias)))
    return MCSECheck(estimate, truth, mcse, ess, z, bias, z_crit, passed, labels)


def assert_mean_within_mcse(
    draws: ArrayLikeTree,
    truth: ArrayLikeTree,
    *,
    family_error: float = 1e-3,
    bias: ArrayLikeTree = 0.0,
    labels: Sequence[str] | None = None,
    name: str = "",
) -> MCSECheck:
    """:func:`mcse_check`, raising ``AssertionError`` with the worst entries on failure.

    Returns the :class:`MCSECheck` on success so callers can record ``max_abs_z``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(1.0, 2.0, size=(8, 500))
    >>> assert_mean_within_mcse(x, 1.0).passed
    True
    >>> assert_mean_within_mcse(x, 2.0)
    Traceback (most recent call last):
    ...
    AssertionError: ...
    """
    check = mcse_check(draws, truth, family_error=family_error, bias=bias, labels=labels)
    if not check.passed:
        prefix = f"{name}: " if name else ""
        raise AssertionError(
            f"{prefix}Monte Carlo estimates off by more than MCSE allows\n" + check.report()
        )
    return check


def moment_statistics(
    draws: ArrayLikeTree, mean: ArrayLikeTree, covariance: ArrayLikeTree
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """First and second moments as statistics with exact expectations.

    For vector draws ``x`` (shape ``(chains, samples, d)``) and the exact mean
    ``mu`` and covariance ``S``, returns the statistics ``x_i`` (expectation
    ``mu_i``) and ``(x_i - mu_i)(x_j - mu_j)`` for ``i <= j`` (expectation
    ``S_ij``): centring at the *exact* mean makes each covariance entry a plain
    mean, so :func:`mcse_check` applies directly.

    Returns
    -------
    ``(statistics, truths, labels)`` with ``statistics`` of shape
    ``(chains, samples, d + d (d + 1) / 2)``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(2, 100, 2))
    >>> stats, truth, labels = moment_statistics(x, np.zeros(2), np.eye(2))
    >>> stats.shape, labels[2:]
    ((2, 100, 5), ('cov[0,0]', 'cov[0,1]', 'cov[1,1]'))
    """
    x = np.asarray(draws, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    covariance = np.asarray(covariance, dtype=np.float64)
    d = x.shape[-1]
    if mean.shape != (d,) or covariance.shape != (d, d):
        raise ValueError(
            f"draws have dimension {d} but mean has shape {mean.shape} and covariance "
            f"{covariance.shape}"
        )
    i, j = np.triu_indices(d)
    centred = x - mean
    stats = np.concatenate([x, centred[..., i] * centred[..., j]], axis=-1)
    truth = np.concatenate([mean, covariance[i, j]])
    labels = tuple(f"mean[{k}]" for k in range(d)) + tuple(
        f"cov[{a},{b}]" for a, b in zip(i, j, strict=True)
    )
    return stats, truth, labels


# ------------------------------------------------------------ exact Gaussian laws


def discrete_lyapunov(
    transition: np.ndarray, noise_covariance: np.ndarray, *, max_iter: int = 200
) -> np.ndarray:
    """Stationary covariance of ``x' = M x + eps``, ``eps ~ N(0, Q)``.

    Solves ``Sigma = M Sigma M^T + Q`` by Smith's doubling iteration
    (``S <- S + A S A^T``, ``A <- A^2``), which sums the series
    ``sum_k M^k Q (M^T)^k`` in ``log2`` of the number of terms, with numpy only.

    Parameters
    ----------
    transition
        ``M``, square; must have spectral radius < 1 (else no stationary law).
    noise_covariance
        ``Q``, symmetric positive semi-definite, same shape as ``M``.
    max_iter
        Maximum number of doublings (``2**max_iter`` terms).

    Returns
    -------
    ``Sigma`` (symmetric), in float64.

    Raises
    ------
    ValueError
        If ``M`` has spectral radius >= 1 (the recursion is unstable).

    Examples
    --------
    >>> import numpy as np
    >>> float(discrete_lyapunov(np.array([[0.5]]), np.array([[0.75]]))[0, 0])
    1.0
    """
    m = np.asarray(transition, dtype=np.float64)
    q = np.asarray(noise_covariance, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or q.shape != m.shape:
        raise ValueError(f"need square M and Q of the same shape, got {m.shape} and {q.shape}")
    radius = float(np.max(np.abs(np.linalg.eigvals(m)))) if m.size else 0.0
    if not radius < 1.0:
        raise ValueError(
            f"the recursion has spectral radius {radius:.6g} >= 1: it has no stationary law"
        )
    sigma, power = q.copy(), m.copy()
    for _ in range(max_iter):
        increment = power @ sigma @ power.T
        sigma = sigma + increment
        power = power @ power
        if np.max(np.abs(increment)) <= 1e-17 * np.max(np.abs(sigma)):
            break
    else:  # pragma: no cover - needs radius within ~2**-max_iter of 1
        raise RuntimeError("discrete_lyapunov did not converge")
    return 0.5 * (sigma + sigma.T)


def emcmc_joint_drift(
    precision: np.ndarray, eta: float, guide_prior_precision: float = 0.0
) -> np.ndarray:
    """Drift matrix ``J`` of the Entropy-MCMC joint for ``U(theta) = theta^T A theta / 2``.

    The gradient of the (untempered) joint log-density at ``x = (theta, theta_a)``
    is ``J x`` with ``J = [[-A - I/eta, I/eta], [I/eta, -(1/eta + lambda) I]]``.

    Examples
    --------
    >>> emcmc_joint_drift([[2.0]], eta=0.5)
    array([[-4.,  2.],
           [ 2., -2.]])
    """
    a = np.atleast_2d(np.asarray(precision, dtype=np.float64))
    eye = np.eye(a.shape[0])
    return np.block(
        [[-a - eye / eta, eye / eta], [eye / eta, -(1.0 / eta + guide_prior_precision) * eye]]
    )


def emcmc_transition(
    precision: np.ndarray,
    eta: float,
    temperature: float,
    step_size: float,
    *,
    alpha: float | None = None,
    guide_prior_precision: float = 0.0,
    guide_step_ratio: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The linear recursion ``x' = M x + e``, ``e ~ N(0, Q)``, of one Entropy-MCMC step.

    On ``U(theta) = theta^T A theta / 2``, with ``J`` from :func:`emcmc_joint_drift`
    and step size ``eps``:

    * SGLD flavour (``alpha=None``), state ``x = (theta, theta_a)``:
      ``M = I + eps J``, ``Q = 2 eps T I``;
    * SGHMC flavour (momentum-SGD form of :func:`flatjax.sgmcmc.diffusions.sghmc`),
      state ``(x, v) = (theta, theta_a, v_theta, v_a)``:
      ``v' = (1 - alpha) v + eps J x + sqrt(2 alpha eps T) xi``, ``x' = x + v'``. The
      momentum uses the gradient at the *old* position and the position moves with
      the *new* momentum, so ``M = [[I + eps J, (1 - alpha) I], [eps J, (1 - alpha) I]]``
      and the noise enters both blocks: ``Q = 2 alpha eps T [[I, I], [I, I]]``.

    With ``guide_step_ratio`` ``r`` the guide's step is ``r eps``: ``eps J`` becomes
    ``eps P J`` and the noise covariance ``Q`` is scaled by ``P`` (both blocks of
    the SGHMC form), where ``P = diag(I, r I)`` on ``(theta, theta_a)``.

    Returns
    -------
    ``(M, Q)`` in float64.

    Examples
    --------
    >>> m, q = emcmc_transition([[2.0]], eta=0.5, temperature=1.0, step_size=0.1)
    >>> m
    array([[0.6, 0.2],
           [0.2, 0.8]])
    """
    drift = emcmc_joint_drift(precision, eta, guide_prior_precision)
    n = drift.shape[0]
    eye = np.eye(n)
    steps = float(step_size) * np.diag(np.repeat([1.0, float(guide_step_ratio)], n // 2))
    if alpha is None:
        return eye + steps @ drift, 2.0 * temperature * steps
    transition = np.block(
        [[eye + steps @ drift, (1.0 - alpha) * eye], [steps @ drift, (1.0 - alpha) * eye]]
    )
    noise = 2.0 * alpha * temperature * np.block([[steps, steps], [steps, steps]])
    return transition, noise


def emcmc_stationary_covariance(
    precision: np.ndarray,
    eta: float,
    temperature: float = 1.0,
    *,
    step_size: float | None = None,
    alpha: float | None = None,
    guide_prior_precision: float = 0.0,
    guide_step_ratio: float = 1.0,
) -> np.ndarray:
    """Exact stationary covariance of Entropy-MCMC on ``U = theta^T A theta / 2``.

    With a ``step_size``: the stationary covariance of the discretised chain
    (:func:`discrete_lyapunov` of :func:`emcmc_transition`), over
    ``(theta, theta_a)`` (dimension ``2d``) for the SGLD flavour (``alpha=None``)
    and over ``(theta, theta_a, v_theta, v_a)`` (``4d``) for the SGHMC flavour.
    The mean is zero.

    With ``step_size=None``: the continuous-time (small step) limit of the
    positions for either flavour and every ``guide_step_ratio`` (a constant
    preconditioner does not change the law), ``T (-J)^{-1}`` (``2d``); for ``lambda = 0``
    its blocks are ``T A^{-1}``, ``T (A^{-1} + eta I)`` and, off the diagonal,
    ``T A^{-1}``. (The SGHMC momentum then tends to ``N(0, 2 eps T / (2 - alpha) I)``,
    independent of the positions.)

    Examples
    --------
    >>> import numpy as np
    >>> emcmc_stationary_covariance(np.eye(1), eta=0.5)
    array([[1. , 1. ],
           [1. , 1.5]])
    """
    if step_size is None:
        drift = emcmc_joint_drift(precision, eta, guide_prior_precision)
        cov = temperature * np.linalg.inv(-drift)
        return 0.5 * (cov + cov.T)
    transition, noise = emcmc_transition(
        precision,
        eta,
        temperature,
        step_size,
        alpha=alpha,
        guide_prior_precision=guide_prior_precision,
        guide_step_ratio=guide_step_ratio,
    )
    return discrete_lyapunov(transition, noise)


# ----------------------------------------------------------------- mixture target


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


@dataclasses.dataclass(frozen=True)
class IsotropicGaussianMixture:
    """``sum_k w_k N(c_k, s_k^2 I)`` with exact probabilities of simple sets.

    Parameters
    ----------
    weights
        Component weights ``w_k`` (normalised on construction).
    centres
        Component means ``c_k``, shape ``(K, d)``.
    scales
        Component standard deviations ``s_k``, shape ``(K,)``.

    Examples
    --------
    A sharp, tall, light mode beside a flat, heavy one, and the Entropy-MCMC
    guide's marginal at ``T = 1``, ``eta = 0.5`` (each variance grows by
    ``eta T``): the guide puts more mass near the flat centre than near the sharp
    one, while the target does the opposite.

    >>> mix = IsotropicGaussianMixture([0.3, 0.7], [[-2.0, 0.0], [2.0, 0.0]], [0.1, 0.6])
    >>> guide = mix.convolve(0.5)
    >>> [round(mix.disc_probability(c, 0.3), 4) for c in mix.centres]
    [0.2967, 0.0823]
    >>> [round(guide.disc_probability(c, 0.3), 4) for c in mix.centres]
    [0.0253, 0.0357]
    """

    weights: tuple[float, ...]
    centres: tuple[tuple[float, ...], ...]
    scales: tuple[float, ...]

    def __init__(self, weights, centres, scales) -> None:
        w = np.asarray(weights, dtype=np.float64)
        c = np.atleast_2d(np.asarray(centres, dtype=np.float64))
        s = np.asarray(scales, dtype=np.float64)
        if w.ndim != 1 or c.shape[0] != w.shape[0] or s.shape != w.shape:
            raise ValueError(
                f"need K weights, K centres and K scales, got shapes {w.shape}, {c.shape}, "
                f"{s.shape}"
            )
        if np.any(w <= 0) or np.any(s <= 0):
            raise ValueError("weights and scales must be > 0")
        object.__setattr__(self, "weights", tuple(float(v) for v in w / w.sum()))
        object.__setattr__(self, "centres", tuple(tuple(float(v) for v in row) for row in c))
        object.__setattr__(self, "scales", tuple(float(v) for v in s))

    @property
    def dim(self) -> int:
        """Dimension ``d`` of the space."""
        return len(self.centres[0])

    def convolve(self, variance: float) -> IsotropicGaussianMixture:
        """The law of ``x + sqrt(variance) z``: every ``s_k^2`` grows by ``variance``."""
        scales = [math.sqrt(s * s + variance) for s in self.scales]
        return IsotropicGaussianMixture(self.weights, self.centres, scales)

    def _component_terms(self, x: jax.Array) -> jax.Array:
        """``log w_k + log N(x; c_k, s_k^2 I)``, shape ``(..., K)``."""
        c = jnp.asarray(self.centres, dtype=x.dtype)
        s2 = jnp.asarray(self.scales, dtype=x.dtype) ** 2
        sq = jnp.sum((x[..., None, :] - c) ** 2, axis=-1)
        log_norm = 0.5 * self.dim * jnp.log(2 * jnp.pi * s2)
        return jnp.log(jnp.asarray(self.weights, dtype=x.dtype)) - log_norm - sq / (2 * s2)

    def logdensity(self, x: ArrayLikeTree) -> jax.Array:
        """Log-density at ``x`` (shape ``(..., d)``), differentiable with JAX."""
        x = jnp.asarray(x)
        return jax.nn.logsumexp(self._component_terms(x), axis=-1)

    def responsibilities(self, x: ArrayLikeTree) -> jax.Array:
        """Posterior component probabilities at ``x``; under the mixture each has mean ``w_k``."""
        x = jnp.asarray(x)
        return jax.nn.softmax(self._component_terms(x), axis=-1)

    def sample(self, rng_key: PRNGKey, num_samples: int, dtype=jnp.float32) -> jax.Array:
        """Exact draws, shape ``(num_samples, d)``."""
        key_k, key_z = jax.random.split(rng_key)
        k = jax.random.choice(key_k, len(self.weights), (num_samples,), p=jnp.asarray(self.weights))
        z = jax.random.normal(key_z, (num_samples, self.dim), dtype=dtype)
        c = jnp.asarray(self.centres, dtype=dtype)[k]
        return c + jnp.asarray(self.scales, dtype=dtype)[k, None] * z

    def half_space_probability(self, axis: int = 0, threshold: float = 0.0) -> float:
        """``P(x[axis] < threshold)``, exactly (normal CDFs)."""
        return sum(
            w * _normal_cdf((threshold - c[axis]) / s)
            for w, c, s in zip(self.weights, self.centres, self.scales, strict=True)
        )

    def disc_probability(
        self,
        centre: Sequence[float],
        radius: float,
        *,
        num_radial: int = 64,
        num_angular: int = 256,
    ) -> float:
        """``P(|x - centre| < radius)`` for ``d = 2``, by quadrature (error ~ 1e-12).

        The component centred at ``centre`` has the closed form
        ``1 - exp(-r^2 / (2 s^2))``; the others are integrated in polar
        coordinates (Gauss-Legendre in the radius, the trapezoid rule in the
        angle, which converges geometrically for the periodic integrand).
        """
        if self.dim != 2:
            raise ValueError(
                f"disc probabilities need a 2-D mixture (polar quadrature), got dim={self.dim}"
            )
        centre = np.asarray(centre, dtype=np.float64)
        nodes, weights = np.polynomial.legendre.leggauss(num_radial)
        rho = 0.5 * radius * (nodes + 1.0)
        w_rho = 0.5 * radius * weights
        phi = 2.0 * np.pi * np.arange(num_angular) / num_angular
        points = centre + rho[:, None, None] * np.stack([np.cos(phi), np.sin(phi)], -1)
        total = 0.0
        for w, c, s in zip(self.weights, self.centres, self.scales, strict=True):
            offset = centre - np.asarray(c)
            if not np.any(offset):
                total += w * -math.expm1(-(radius**2) / (2 * s * s))
                continue
            sq = np.sum((points - np.asarray(c)) ** 2, axis=-1)
            density = np.exp(-sq / (2 * s * s)) / (2 * np.pi * s * s)
            ring = density.mean(axis=1) * 2.0 * np.pi * rho
            total += w * float(np.sum(w_rho * ring))
        return total


# ---------------------------------------------------------------------- chain loop


def run_chains(
    step: Callable[[PRNGKey, ArrayTree], ArrayTree],
    initial_states: ArrayTree,
    rng_key: PRNGKey,
    *,
    num_burnin: int,
    num_samples: int,
    thin: int = 1,
    observe: Callable[[ArrayTree], ArrayTree] = lambda state: state,
) -> ArrayTree:
    """Run ``step`` on a batch of chains and collect ``observe(state)``.

    Parameters
    ----------
    step
        ``step(rng_key, state) -> state`` for *one* chain (it is ``vmap``-ed).
    initial_states
        States of all chains, each leaf with a leading chain axis.
    rng_key
        Key; every chain and step gets its own split.
    num_burnin
        Steps discarded first (rounded up to a multiple of ``thin``).
    num_samples
        Number of observations kept per chain.
    thin
        Steps between kept observations.
    observe
        Map from one chain's state to what is kept (e.g. its position).

    Returns
    -------
    ``observe`` outputs stacked with shape ``(num_chains, num_samples, ...)``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> step = lambda key, x: 0.5 * x + jax.random.normal(key, x.shape)
    >>> draws = run_chains(step, jnp.zeros((3, 2)), jax.random.key(0),
    ...                    num_burnin=10, num_samples=5, thin=2)
    >>> draws.shape
    (3, 5, 2)
    """
    num_chains = jax.tree.leaves(initial_states)[0].shape[0]
    batched_step = jax.vmap(step)
    # Burn-in is run as whole thinning blocks whose observations are dropped, so
    # that the step is traced and compiled once (one scan), not twice.
    num_burnin_blocks = -(-num_burnin // thin)

    def block(states, key):
        def body(carry, k):
            return batched_step(jax.random.split(k, num_chains), carry), None

        states, _ = jax.lax.scan(body, states, jax.random.split(key, thin))
        return states, jax.vmap(observe)(states)

    @jax.jit
    def run(states, key):
        keys = jax.random.split(key, num_burnin_blocks + num_samples)
        _, observed = jax.lax.scan(block, states, keys)
        return jax.tree.map(lambda x: jnp.swapaxes(x[num_burnin_blocks:], 0, 1), observed)

    return run(initial_states, rng_key)
