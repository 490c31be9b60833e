r"""Entropy-MCMC, SGHMC flavour: stochastic-gradient HMC on the joint of theta and guide.

The same joint as :mod:`flatjax.sgmcmc.emcmc`, integrated with the SGHMC diffusion of
:func:`flatjax.sgmcmc.diffusions.sghmc`: the momentum-SGD form of cyclical SGHMC
(Zhang et al. 2020), where the friction ``alpha`` in ``(0, 1]`` is the per-step momentum
decay. The momentum persists across steps (unlike :func:`blackjax.sghmc`, which
resamples it at every call): one model gradient per step. With step ``eps``,

.. math::

    v' = (1 - \alpha)\,v + \epsilon\,\nabla \log p_{\text{joint}}(x)
         + \sqrt{2\alpha \epsilon T}\,\xi, \qquad x' = x + v',

for ``x = (theta, theta_a)``. On the coupling direction (curvature ``2 / eta``) the
recursion is stable iff ``eps < (2 - alpha) eta``.

With ``guide_step_ratio`` :math:`r` the guide's block takes the step :math:`r\epsilon`
(SGHMC at step :math:`\epsilon` in the coordinates :math:`\theta_a/\sqrt r`, so the
joint law is unchanged); the coupling's curvature in that metric is :math:`(1 + r)/\eta`
and the recursion is stable iff :math:`(1 + r)\,\epsilon / \eta < 2 (2 - \alpha)`.
See :mod:`flatjax.sgmcmc.emcmc` for why a ratio above 1 speeds the pair up.

The bound is checked for concrete step sizes; ``debug=True`` checks traced ones (a
schedule's value inside ``jit``) at run time, see
:func:`flatjax.sgmcmc.emcmc.debug_check_step_size`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from blackjax.base import SamplingAlgorithm
from blackjax.types import ArrayLikeTree, ArrayTree, PRNGKey

from flatjax._util import (
    check_in_range,
    check_noise,
    check_nonnegative,
    check_positive,
    concrete_or_none,
)
from flatjax.sgmcmc import diffusions
from flatjax.sgmcmc import emcmc as _emcmc
from flatjax.sgmcmc._api import StepSizeBound, sgmcmc_algorithm

__all__ = ["EMCMCSGHMCState", "init", "build_kernel", "as_top_level_api", "step_size_bound"]


class EMCMCSGHMCState(NamedTuple):
    """State of an Entropy-MCMC SGHMC chain.

    position, guide
        As in :class:`flatjax.sgmcmc.emcmc.EMCMCState`.
    momentum
        An :class:`~flatjax.sgmcmc.emcmc.EMCMCState` holding the momenta (velocities
        ``v``, in parameter units) of the position and of the guide.
    """

    position: ArrayTree
    guide: ArrayTree
    momentum: _emcmc.EMCMCState


def init(position: ArrayLikeTree) -> EMCMCSGHMCState:
    """Guide at the position, zero momenta.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> init(jnp.ones(2)).momentum.guide
    Array([0., 0.], dtype=float32)
    """
    state = _emcmc.init(position)
    momentum = jax.tree.map(jnp.zeros_like, state)
    return EMCMCSGHMCState(state.position, state.guide, momentum)


def step_size_bound(eta: float, alpha: float, guide_step_ratio: float = 1.0) -> StepSizeBound:
    """The largest stable step, ``(2 - alpha) * 2 eta / (1 + r)``, with its formula.

    Examples
    --------
    >>> step_size_bound(0.1, alpha=0.5).value
    0.15000000000000002
    """
    bound = (2 - alpha) * _emcmc.max_stable_step(eta, guide_step_ratio)
    ratio = "" if guide_step_ratio == 1.0 else " * 2 / (1 + `guide_step_ratio`)"
    return StepSizeBound(
        bound,
        f"(2 - `alpha`) * `eta`{ratio} = {bound:.6g} (eta={eta:.6g}, alpha={alpha:.6g}"
        + ("" if not ratio else f", guide_step_ratio={guide_step_ratio:.6g}")
        + ")",
    )


def check_step_size(
    step_size, eta: float, alpha: float, temperature=1.0, guide_step_ratio: float = 1.0
) -> None:
    """Raise ``ValueError`` for a concrete step size that makes the coupling diverge.

    On the coupling direction (curvature ``c = (1 + r) / eta`` in the metric of the
    block steps, ``2 / eta`` for ``r = 1``) the recursion (momentum first, then
    position) has characteristic polynomial ``z^2 - (2 - alpha - eps c) z + 1 - alpha``,
    stable (Jury) iff ``eps c < 2 (2 - alpha)`` for ``alpha`` in ``(0, 1]``.
    """
    h = concrete_or_none(step_size)
    if h is not None:
        if not h > 0:
            raise ValueError(f"`step_size` must be > 0, got {h!r}")
        bound = (2 - alpha) * _emcmc.max_stable_step(eta, guide_step_ratio)
        if not h < bound:
            ratio = "" if guide_step_ratio == 1.0 else " * 2 / (1 + guide_step_ratio)"
            raise ValueError(
                f"`step_size`={h!r} is unstable for `eta`={eta!r}, `alpha`={alpha!r}"
                + ("" if not ratio else f", `guide_step_ratio`={guide_step_ratio!r}")
                + f": SGHMC on the Entropy-MCMC coupling needs step_size < "
                f"(2 - alpha) * eta{ratio} = {bound:.6g}."
            )
    t = concrete_or_none(temperature)
    if t is not None and not t >= 0:
        raise ValueError(f"`temperature` must be >= 0, got {t!r}")


def build_kernel(
    eta: float,
    alpha: float = 0.01,
    beta: float = 0.0,
    guide_prior_precision: float = 0.0,
    guide_step_ratio: float = 1.0,
    noise: str = "gaussian",
    debug: bool = False,
) -> Callable:
    """Build the Entropy-MCMC SGHMC kernel.

    Parameters
    ----------
    eta
        Coupling variance, > 0.
    alpha
        Per-step momentum decay in ``(0, 1]`` (``1 - alpha`` is heavy-ball momentum).
    beta
        Estimate of the gradient-noise variance subtracted from the injected
        noise, >= 0 (as in blackjax; 0 by default).
    guide_prior_precision
        Precision of an optional Gaussian prior on the guide.
    guide_step_ratio
        The guide's step as a multiple of the position's, > 0 (1: the paper's sampler).
    noise
        ``"gaussian"`` or ``"rademacher"`` (see :func:`flatjax.sgmcmc.diffusions.sghmc`).
    debug
        Also check traced step sizes at run time (a host callback per step), see
        :func:`flatjax.sgmcmc.emcmc.debug_check_step_size`.
    """
    eta = check_positive("eta", eta)
    alpha = check_in_range("alpha", alpha, 0.0, 1.0)
    beta = check_nonnegative("beta", beta)
    guide_prior_precision = check_nonnegative("guide_prior_precision", guide_prior_precision)
    guide_step_ratio = check_positive("guide_step_ratio", guide_step_ratio)
    integrator = diffusions.sghmc(alpha, beta, check_noise(noise))
    bound = step_size_bound(eta, alpha, guide_step_ratio)
    debug = _emcmc._check_debug(debug)

    def kernel(
        rng_key: PRNGKey,
        state: EMCMCSGHMCState,
        grad_estimator: Callable,
        minibatch: ArrayLikeTree,
        step_size: float,
        temperature: float = 1.0,
    ) -> EMCMCSGHMCState:
        check_step_size(step_size, eta, alpha, temperature, guide_step_ratio)
        if debug:
            _emcmc.debug_check_step_size(step_size, temperature, bound)
        joint = _emcmc.EMCMCState(state.position, state.guide)
        logdensity_grad = grad_estimator(state.position, minibatch)
        grad = _emcmc.joint_gradient(logdensity_grad, joint, eta, guide_prior_precision)
        steps = _emcmc.block_steps(joint, step_size, guide_step_ratio)
        joint, momentum = integrator(rng_key, joint, state.momentum, grad, steps, temperature)
        return EMCMCSGHMCState(joint.position, joint.guide, momentum)

    return kernel


def as_top_level_api(
    grad_estimator: Callable,
    eta: float,
    alpha: float = 0.01,
    beta: float = 0.0,
    guide_prior_precision: float = 0.0,
    guide_step_ratio: float = 1.0,
    noise: str = "gaussian",
    debug: bool = False,
) -> SamplingAlgorithm:
    """Entropy-MCMC with an SGHMC update of the joint, in BlackJAX's interface.

    Parameters
    ----------
    grad_estimator
        ``grad_estimator(position, minibatch)`` -> gradient of the log-posterior.
    eta
        Coupling variance, > 0.
    alpha
        Per-step momentum decay in ``(0, 1]``.
    beta
        Gradient-noise estimate, >= 0.
    guide_prior_precision
        Precision of a Gaussian prior on the guide; ``0`` is the paper's joint.
    guide_step_ratio
        The guide's step as a multiple of the position's, > 0 (1: the paper's sampler).
    noise
        ``"gaussian"`` or ``"rademacher"`` (random signs of the same variance).
    debug
        Check traced step sizes at run time too: a step at or above
        ``(2 - alpha) * 2 eta / (1 + r)`` stops the run with an error naming it.
        A host callback per step, for debugging only.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, blackjax, flatjax
    >>> grad_fn = blackjax.sgmcmc.gradients.grad_estimator(
    ...     lambda p: -0.5 * p**2, lambda p, x: -0.5 * (x - p) ** 2, data_size=20)
    >>> sampler = flatjax.emcmc_sghmc(grad_fn, eta=0.1, alpha=0.1)
    >>> state = sampler.init(jnp.asarray(0.5))
    >>> state = jax.jit(sampler.step)(jax.random.key(0), state, jnp.zeros(5), 1e-2)
    >>> state.momentum.position.shape
    ()
    """
    kernel = build_kernel(eta, alpha, beta, guide_prior_precision, guide_step_ratio, noise, debug)
    bound = step_size_bound(float(eta), float(alpha), float(guide_step_ratio))
    return sgmcmc_algorithm(init, kernel, grad_estimator, bound)
