r"""A rule for choosing Entropy-MCMC's coupling variance :math:`\eta` from curvature.

Given :math:`\theta`, the exact conditional of the guide is
:math:`\theta_a \mid \theta \sim \mathcal{N}(\theta, \eta T I)` (:func:`flatjax.sgmcmc.emcmc.
sample_guide`): the guide sits at a random offset :math:`\varepsilon` of variance
:math:`\eta T` per coordinate. To second order, and exactly for a quadratic loss, the
offset's mean is zero so the gradient term averages out and

.. math::

    \mathbb{E}\,L(\theta + \varepsilon) - L(\theta) = \tfrac12\,\eta T\,\operatorname{tr} H,

with :math:`L = \mathrm{CE}_\text{mean}` the *per-example mean* training loss and
:math:`H` its Hessian. (In the log-posterior scale of the kernels,
:math:`U = N\,L + \text{prior}`, the same offset raises :math:`U` by
:math:`\tfrac12\eta T\operatorname{tr} H_U` with :math:`H_U = N H + \lambda_p I`; the
prior's share changes no prediction, so the rule leaves it out.) Asking the guide's
expected excess mean loss to equal a target :math:`\delta` gives

.. math::

    \eta_\text{curv} = \frac{2\,\delta}{T\,\operatorname{tr} H},

independent of the data size :math:`N`. It fixes the product :math:`\eta T`, the guide's
offset variance. The temperature is not the rule's to pick: :math:`T` sets the posterior
itself (1 is Bayes, below 1 a cold posterior), so :func:`propose_eta` keeps the one given.

**Why a loss target, and why 0.05 nats.** Near a fit the Hessian of the cross-entropy
is close to its Gauss-Newton (Fisher) part, so :math:`\tfrac12\varepsilon^\top H
\varepsilon` is about the mean KL divergence between :math:`\theta`'s and the guide's
predictive distributions. :math:`\delta = 0.05` nats is the KL of moving a 90 %
confident prediction to 78 %: the guide still predicts like :math:`\theta` (the same
classes, slightly softer), yet it is measurably smoothed. Much larger targets put the
guide where the training loss is visibly worse and its pull :math:`(\theta_a - \theta)/
\eta` is weak, so :math:`\theta` and the guide part ways; much smaller ones tie the guide
to :math:`\theta` in every direction and the sampler is SGLD with extra cost.

**What the spectrum says.** Along a Hessian eigenvector of curvature :math:`\lambda_U`
(log-posterior scale) the posterior's width is :math:`T/\lambda_U` and the guide's offset
is :math:`\eta T`: their ratio :math:`\eta\lambda_U` (:attr:`EtaProposal.smoothing_ratio`
for the top eigenvalue) says whether the guide smooths that direction
(:math:`\eta\lambda_U \gg 1`: the guide does not resolve the basin along it) or is tied
to :math:`\theta` there (:math:`\eta\lambda_U \ll 1`). The trace weighs all directions, so
a few sharp ones cannot set :math:`\eta` alone.

**Budget cap (optional).** The guide's offset from :math:`\theta` relaxes toward its law
at the rate :math:`r h_k/\eta` per step (the guide's update is
:math:`\theta_a' = \theta_a + r h\,(\theta - \theta_a)/\eta + \sqrt{2rhT}\,\xi_a`), i.e.
with relaxation time :math:`\eta/r` in units of integration time :math:`t = \sum_k h_k`.
A run of integration time :math:`t` (``integration_time``: :math:`K h` for :math:`K`
constant steps, about :math:`K h/2` for the cyclical cosine schedule) only lets the guide
reach its smoothing scale if :math:`\eta \le \eta_\text{budget} = r\,t/3` (three
relaxation times); a larger :math:`\eta` leaves the guide near where it started, however
flat the target.

**Stability floor.** The coupling's Euler step is stable only for :math:`h < 2\eta/(1 +
r)` (:func:`flatjax.sgmcmc.emcmc.max_stable_step`). The rule keeps the largest step at a
fraction :math:`f` (``max_step_fraction``, default ½) of that bound, i.e.
:math:`\eta \ge \eta_\text{stab} = (1 + r)\,h / (2f)` (:math:`(1+r)h` by default).

The proposal is :math:`\max(\min(\eta_\text{curv}, \eta_\text{budget}),
\eta_\text{stab})`, naming the constraint that set it (``active``). When the floor wins,
the guide wanders more than the target and the ``reason`` says which smaller step size or
temperature would restore it; when the budget wins, the guide wanders less (a longer run,
or a larger ``guide_step_ratio``, lifts the cap).

**Where to evaluate.** The Hessian at initialisation is not the Hessian of the basins
the sampler will visit (the trace of a network's loss usually grows as it fits); take
``params`` from a short pilot run (a few epochs of SGD), and close ``loss_fn`` over the
training set or a random subset of a few thousand examples (the trace of the mean loss
is an average over examples, so a subset estimates it without bias).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from blackjax.types import ArrayLikeTree, PRNGKey
from jax.flatten_util import ravel_pytree

from flatjax import flatness
from flatjax._util import (
    check_floating_tree,
    check_nonnegative,
    check_positive,
    check_positive_int,
)
from flatjax.sgmcmc.emcmc import max_stable_step, sample_guide

__all__ = ["EtaProposal", "propose_eta", "eta_for_loss_increase"]


class EtaProposal(NamedTuple):
    """The outcome of :func:`propose_eta`; every number is a Python float.

    eta
        The proposed coupling variance,
        ``max(min(eta_curvature, eta_budget), eta_stability)``.
    active
        Which constraint set it: ``"curvature"``, ``"budget"`` or ``"stability"``.
    eta_curvature
        ``2 delta / (T tr H)``: the guide's expected excess mean loss is ``delta``.
    eta_stability
        ``(1 + r) h / (2 f)``: the smallest ``eta`` with the step at the fraction
        ``f`` of the stability bound ``2 eta / (1 + r)``.
    eta_budget
        ``r t / 3``: the largest ``eta`` whose guide relaxes within the run's
        integration time ``t`` (``inf`` when no ``integration_time`` was given).
    trace
        Hutchinson's estimate of ``tr H``, ``H`` the Hessian of the mean loss.
    trace_stderr
        Its Monte Carlo standard error from the probes' spread (``nan`` for one probe).
    lambda_1
        The top eigenvalue of ``H`` (Lanczos; a lower bound that converges from below).
    smoothing_ratio
        ``eta * (N lambda_1 + prior_precision)``: the guide's offset variance over the
        posterior's width along the sharpest direction (>> 1 smoothed, << 1 tied).
    expected_loss_increase
        ``eta T tr H / 2`` at the proposed ``eta`` (the target when the curvature
        rule is active, more when the stability floor is, less when the budget is).
    measured_loss_increase
        The excess mean loss measured at exact guide draws (antithetic pairs), which
        checks the second-order approximation; ``nan`` with no draws.
    measured_loss_stderr
        Its standard error (``nan`` for fewer than two draws).
    eta_measured
        ``eta * delta / measured_loss_increase``: the ``eta`` that would hit the
        target by the measured increase, if that grows in proportion to ``eta`` (as
        it does for a quadratic); ``nan`` with no draws. Use it where the loss is far
        from quadratic on the guide's scale (the two disagree by more than the
        error bars).
    reason
        A few sentences saying what was chosen and why.
    """

    eta: float
    active: str
    eta_curvature: float
    eta_stability: float
    eta_budget: float
    trace: float
    trace_stderr: float
    lambda_1: float
    smoothing_ratio: float
    expected_loss_increase: float
    measured_loss_increase: float
    measured_loss_stderr: float
    eta_measured: float
    reason: str


def eta_for_loss_increase(trace: float, temperature: float, target_loss_increase: float) -> float:
    """The curvature rule, ``eta = 2 delta / (T tr H)``.

    ``tr H`` is the Hessian trace of the per-example mean loss; the guide
    ``theta_a ~ N(theta, eta T I)`` then raises that loss by ``delta`` on average
    (exactly for a quadratic, to second order otherwise).

    Examples
    --------
    >>> eta_for_loss_increase(trace=10.0, temperature=0.01, target_loss_increase=0.05)
    1.0
    """
    trace = check_positive("trace", trace)
    temperature = check_positive("temperature", temperature)
    target_loss_increase = check_positive("target_loss_increase", target_loss_increase)
    return 2.0 * target_loss_increase / (temperature * trace)


def _check_data_size(data_size) -> int:
    if isinstance(data_size, bool) or not isinstance(data_size, int) or data_size < 1:
        raise ValueError(f"`data_size` must be a positive integer, got {data_size!r}")
    return data_size


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
    return value


def _guide_loss_increases(loss_fn: Callable, params, keys, eta: float, temperature: float):
    """``(L(theta + e) + L(theta - e)) / 2 - L(theta)`` for exact guide offsets ``e``."""
    base = loss_fn(params)

    def one(key):
        guide = sample_guide(key, params, eta, temperature)
        mirror = jax.tree.map(lambda g, x: 2 * x - g, guide, params)
        return 0.5 * (loss_fn(guide) + loss_fn(mirror)) - base

    return jax.lax.map(one, keys)


def _mean_and_stderr(values) -> tuple[float, float]:
    values = [float(v) for v in values]
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def propose_eta(
    loss_fn: Callable,
    params: ArrayLikeTree,
    *,
    data_size: int,
    temperature: float,
    step_size: float,
    rng_key: PRNGKey,
    guide_step_ratio: float = 1.0,
    target_loss_increase: float = 0.05,
    prior_precision: float = 0.0,
    integration_time: float | None = None,
    max_step_fraction: float = 0.5,
    num_probes: int = 32,
    num_lanczos_iterations: int = 20,
    num_guide_draws: int = 16,
) -> EtaProposal:
    r"""Propose Entropy-MCMC's ``eta`` from the loss curvature at ``params``.

    ``eta = max(min(2 delta / (T tr H), r t / 3), (1 + r) h / (2 f))``: the guide's
    expected excess mean training loss is ``delta``, unless the run's integration
    time ``t`` is too short for such a loose guide to relax (then ``r t / 3``) or the
    step size ``h`` needs a larger ``eta`` to stay at the fraction ``f`` of the
    stability bound. See the module docstring for the reasoning. Not jittable (it
    returns Python floats and a message); the Hessian-vector products inside are
    compiled.

    Parameters
    ----------
    loss_fn
        ``loss_fn(params) -> scalar``: the per-example *mean* training loss (e.g. the
        mean cross-entropy over the training set or a random subset of it), without
        the prior. The kernels' ``U`` is ``N * loss_fn + prior``.
    params
        Where to measure the curvature: ideally a point after a short pilot run.
    data_size
        ``N``, the number of training examples (only for the smoothing ratio).
    temperature
        The sampling temperature ``T`` (> 0), kept as given.
    step_size
        The largest Langevin step ``h`` of the schedule (``lr / N`` in the reference
        code's knobs), > 0.
    rng_key
        Key for the probes, the Lanczos start vector and the guide draws.
    guide_step_ratio
        The kernels' ``r`` (> 0); the stability bound is ``2 eta / (1 + r)``.
    target_loss_increase
        ``delta`` (> 0), in nats of the mean loss.
    prior_precision
        ``lambda_p`` (>= 0) of the Gaussian prior on ``theta`` (``N * weight_decay``);
        only enters the smoothing ratio.
    integration_time
        ``t``, the sum of the step sizes over the whole run (> 0; ``K h`` for ``K``
        constant steps, about ``K h / 2`` for a cyclical cosine schedule), or ``None``
        for no budget cap.
    max_step_fraction
        ``f`` in (0, 1): the step may use at most this fraction of the stability bound.
    num_probes
        Rademacher probes for Hutchinson's trace (>= 1; >= 2 for an error bar).
    num_lanczos_iterations
        Lanczos iterations for ``lambda_1`` (>= 1; capped at the number of parameters).
    num_guide_draws
        Exact guide draws (each used with its mirror image) to measure the excess loss
        at the proposed ``eta`` (>= 0; 0 skips the check).

    Returns
    -------
    An :class:`EtaProposal`.

    Raises
    ------
    ValueError
        For a bad argument (named), a non-scalar or non-finite loss, or a Hessian
        trace estimate <= 0 (``params`` is not near a minimum: run a pilot first).

    Examples
    --------
    A quadratic with Hessian ``diag(1, 2, 3, 4)`` (Rademacher probes give its trace
    10 exactly): ``eta = 2 * 0.05 / (0.01 * 10)``.

    >>> import jax, jax.numpy as jnp
    >>> loss = lambda p: 0.5 * jnp.sum(jnp.arange(1.0, 5.0) * p**2)
    >>> proposal = propose_eta(loss, jnp.zeros(4), data_size=100, temperature=0.01,
    ...                        step_size=1e-3, rng_key=jax.random.key(0))
    >>> round(proposal.eta, 6), proposal.active, proposal.trace
    (1.0, 'curvature', 10.0)
    >>> round(proposal.smoothing_ratio)  # eta * N * lambda_1
    400

    For a Flax model, ``loss_fn`` is the negative mean of
    :func:`flatjax.nn.glue.categorical_loglikelihood` over (a subset of) the training
    set, e.g. ``lambda p: -jnp.mean(loglik(p, (x, y)))``.
    """
    if not callable(loss_fn):
        raise ValueError(f"`loss_fn` must be callable, got {type(loss_fn).__name__}")
    check_floating_tree("params", params)
    data_size = _check_data_size(data_size)
    temperature = check_positive("temperature", temperature)
    step_size = check_positive("step_size", step_size)
    guide_step_ratio = check_positive("guide_step_ratio", guide_step_ratio)
    target_loss_increase = check_positive("target_loss_increase", target_loss_increase)
    prior_precision = check_nonnegative("prior_precision", prior_precision)
    if integration_time is not None:
        integration_time = check_positive("integration_time", integration_time)
    fraction = check_positive("max_step_fraction", max_step_fraction)
    if fraction >= 1:
        raise ValueError(f"`max_step_fraction` must be in (0, 1), got {max_step_fraction!r}")
    num_probes = check_positive_int("num_probes", num_probes)
    num_lanczos_iterations = check_positive_int("num_lanczos_iterations", num_lanczos_iterations)
    num_guide_draws = _check_count("num_guide_draws", num_guide_draws, 0)

    params = jax.tree.map(jnp.asarray, params)
    loss0 = jnp.asarray(loss_fn(params))
    if loss0.shape != ():
        raise ValueError(f"`loss_fn` must return a scalar, got shape {loss0.shape}")
    if not bool(jnp.isfinite(loss0)):
        raise ValueError(f"`loss_fn` is not finite at `params` ({float(loss0)!r})")

    key_trace, key_lanczos, key_guide = jax.random.split(rng_key, 3)
    size = ravel_pytree(params)[0].shape[0]
    forms = jax.jit(lambda p, k: flatness.hutchinson_samples(loss_fn, p, k, num_probes))(
        params, key_trace
    )
    trace, trace_stderr = _mean_and_stderr(forms)
    if not (math.isfinite(trace) and trace > 0):
        raise ValueError(
            f"the Hessian trace of `loss_fn` at `params` is estimated at {trace:.4g} "
            f"(+- {trace_stderr:.2g}): the curvature rule needs tr H > 0. `params` is not "
            f"near a minimum; take them from a short pilot run (a few epochs of SGD)"
        )
    m = min(num_lanczos_iterations, size)
    top = jax.jit(
        lambda p, k: flatness.top_eigenvalues(loss_fn, p, 1, num_iterations=m, rng_key=k)
    )(params, key_lanczos)
    lambda_1 = float(top[0])

    eta_curvature = eta_for_loss_increase(trace, temperature, target_loss_increase)
    eta_stability = (1.0 + guide_step_ratio) * step_size / (2.0 * fraction)
    eta_budget = math.inf if integration_time is None else guide_step_ratio * integration_time / 3
    eta, active = min((eta_curvature, "curvature"), (eta_budget, "budget"))
    if eta_stability > eta:
        eta, active = eta_stability, "stability"
    expected = 0.5 * eta * temperature * trace
    smoothing_ratio = eta * (data_size * lambda_1 + prior_precision)

    if num_guide_draws:
        increases = jax.jit(lambda p, k: _guide_loss_increases(loss_fn, p, k, eta, temperature))(
            params, jax.random.split(key_guide, num_guide_draws)
        )
        measured, measured_stderr = _mean_and_stderr(increases)
    else:
        measured, measured_stderr = math.nan, math.nan
    eta_measured = eta * target_loss_increase / measured if measured > 0 else math.nan

    reason = _reason(
        eta=eta,
        active=active,
        eta_curvature=eta_curvature,
        eta_stability=eta_stability,
        eta_budget=eta_budget,
        trace=trace,
        trace_stderr=trace_stderr,
        temperature=temperature,
        step_size=step_size,
        guide_step_ratio=guide_step_ratio,
        target=target_loss_increase,
        expected=expected,
        measured=measured,
        measured_stderr=measured_stderr,
        eta_measured=eta_measured,
        smoothing_ratio=smoothing_ratio,
        fraction=fraction,
    )
    return EtaProposal(
        eta=eta,
        active=active,
        eta_curvature=eta_curvature,
        eta_stability=eta_stability,
        eta_budget=eta_budget,
        trace=trace,
        trace_stderr=trace_stderr,
        lambda_1=lambda_1,
        smoothing_ratio=smoothing_ratio,
        expected_loss_increase=expected,
        measured_loss_increase=measured,
        measured_loss_stderr=measured_stderr,
        eta_measured=eta_measured,
        reason=reason,
    )


def _reason(
    *,
    eta,
    active,
    eta_curvature,
    eta_stability,
    eta_budget,
    trace,
    trace_stderr,
    temperature,
    step_size,
    guide_step_ratio,
    target,
    expected,
    measured,
    measured_stderr,
    eta_measured,
    smoothing_ratio,
    fraction,
) -> str:
    r = guide_step_ratio
    used = step_size / max_stable_step(eta, r)
    parts = []
    if active == "curvature":
        parts.append(
            f"eta={eta:.3g} from the curvature rule 2 delta / (T tr H) with delta={target:g} "
            f"nats, T={temperature:g}, tr H={trace:.4g} (+- {trace_stderr:.2g}): the guide "
            f"~ N(theta, eta T I) raises the mean loss by {expected:.3g} nats on average; "
            f"the step {step_size:.3g} uses {100 * used:.3g} % of the stability bound "
            f"2 eta / (1 + r)."
        )
    elif active == "budget":
        parts.append(
            f"eta={eta:.3g} from the budget cap r t / 3: the guide relaxes in eta / r = "
            f"{eta / r:.3g} of integration time, a third of the run's; the curvature rule alone "
            f"gives {eta_curvature:.3g} (tr H={trace:.4g} +- {trace_stderr:.2g}). At this eta "
            f"the guide raises the mean loss by {expected:.3g} nats, not {target:g}: a "
            f"longer run or a larger guide_step_ratio lifts the cap."
        )
    else:
        h_max = 2.0 * fraction * eta_curvature / (1.0 + r)
        t_target = 2.0 * target / (eta * trace)
        parts.append(
            f"eta={eta:.3g} from the stability floor (1 + r) h / (2 f) with h={step_size:.3g}, "
            f"r={r:g}, f={fraction:g}; the curvature rule alone gives {eta_curvature:.3g} "
            f"(tr H={trace:.4g} +- {trace_stderr:.2g}). At this eta the guide raises the "
            f"mean loss by {expected:.3g} nats, not {target:g}: to reach the target, lower "
            f"the step size to {h_max:.3g} or the temperature to {t_target:.3g}."
        )
    if math.isfinite(measured):
        parts.append(
            f"Measured at exact guide draws: {measured:.3g} (+- {measured_stderr:.2g}) nats."
        )
        off = abs(measured - expected)
        if off > 0.25 * expected and not off <= 3 * measured_stderr:
            parts.append(
                f"The loss is not quadratic on the guide's scale: eta_measured="
                f"{eta_measured:.3g} would give {target:g} nats by the measured increase."
            )
    if smoothing_ratio >= 1:
        parts.append(
            f"eta lambda_1(U)={smoothing_ratio:.3g} >= 1: the sharpest directions are "
            f"smoothed by the guide (curvatures above 1/eta), flat ones stay tied."
        )
    else:
        parts.append(
            f"eta lambda_1(U)={smoothing_ratio:.3g} < 1: the guide is tied to theta in "
            f"every direction (little flat-basin bias)."
        )
    return " ".join(parts)
