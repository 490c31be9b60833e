r"""Entropy-MCMC (Li & Zhang, ICLR 2024): SGLD on the joint of theta and its guide.

The joint density at temperature :math:`T` is

.. math::

    p(\theta, \theta_a) \propto \exp\Big(-\frac{1}{T}\Big[U(\theta)
        + \frac{\|\theta - \theta_a\|^2}{2\eta}
        + \frac{\lambda_a}{2}\|\theta_a\|^2\Big]\Big),

with :math:`U(\theta) = -\log p(\theta) - \sum_{i=1}^{N} \log p(y_i \mid x_i, \theta)`
(the full-data log-posterior, summed over the :math:`N` examples) and an optional Gaussian prior of
precision :math:`\lambda_a` (``guide_prior_precision``) on the guide. With
:math:`\lambda_a = 0` (the paper's joint) the :math:`\theta`-marginal is the exact
tempered posterior and the guide's marginal is that posterior convolved with
:math:`\mathcal{N}(0, \eta T I)`: every basin keeps its mass but sharp peaks are
smeared away, and the coupling pulls :math:`\theta` toward flat basins.

One step is the Euler-Maruyama update of the overdamped Langevin diffusion on the
pytree ``{position, guide}``, both blocks from the *old* values:

.. math::

    \theta'   &= \theta + h\,[\nabla \log \hat p(\theta) - (\theta - \theta_a)/\eta]
                 + \sqrt{2hT}\,\xi \\
    \theta_a' &= \theta_a + h\,[(\theta - \theta_a)/\eta - \lambda_a \theta_a]
                 + \sqrt{2hT}\,\xi_a

It costs one model gradient per step, the same as :func:`blackjax.sgld`. The
coupling has stiffness :math:`2/\eta`, so the step is stable only for
:math:`h < \eta` (checked whenever the step size is a concrete number).

**The guide's step** (``guide_step_ratio`` :math:`r`, default 1). The guide may
take the step :math:`h_a = r h` with noise :math:`\sqrt{2 r h T}\,\xi_a`: a
constant block preconditioner :math:`P = \mathrm{diag}(I, rI)` of the joint
Langevin diffusion, which leaves the joint law (and so both marginals) exactly
invariant in continuous time. Why it matters at a finite budget: in a direction
where the coupling is stiff compared with the model (:math:`\eta\lambda \ll 1`,
:math:`\lambda` a curvature of :math:`U`) the pair :math:`(\theta, \theta_a)`
moves as one particle whose mobility is the harmonic sum of the blocks',
:math:`h h_a / (h + h_a) = \frac{r}{1+r} h`. With :math:`r = 1` Entropy-MCMC
drifts at *half* SGLD's speed in every flat direction; :math:`r = 10` restores
:math:`0.91 h`. The Euler step of the coupling's stiff mode (curvature
:math:`(1 + r)/\eta` in the preconditioned metric) is stable while
:math:`(1 + r) h / \eta < 2`, i.e. :math:`h < 2\eta/(1 + r)` (checked for
concrete steps; :math:`h < \eta` for :math:`r = 1`).

**Traced step sizes.** A step size computed inside ``jit`` (a schedule's value, every
step inside :func:`flatjax.inference.run`) cannot be checked when the step is traced.
``debug=True`` on :func:`as_top_level_api` / :func:`build_kernel` adds a runtime
check (:func:`debug_check_step_size`, a ``jax.debug.callback`` at every step: slower,
for debugging) that stops the run at the first unstable step; without it the run
loop's :class:`~flatjax.inference.loop.DivergenceError` names the schedule's step
above the bound as the likely cause.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.base import SamplingAlgorithm
from blackjax.types import ArrayLikeTree, ArrayTree, PRNGKey

from flatjax._util import (
    check_floating_tree,
    check_function,
    check_matching_tree,
    check_noise,
    check_nonnegative,
    check_positive,
    concrete_or_none,
    langevin_noise,
)
from flatjax.sgmcmc import diffusions
from flatjax.sgmcmc._api import StepSizeBound, sgmcmc_algorithm

__all__ = [
    "EMCMCState",
    "ReferenceHyperparameters",
    "init",
    "build_kernel",
    "as_top_level_api",
    "joint_logdensity",
    "joint_gradient",
    "max_stable_step",
    "step_size_bound",
    "debug_check_step_size",
    "sample_guide",
    "from_reference_hyperparameters",
]


class EMCMCState(NamedTuple):
    """State of an Entropy-MCMC chain.

    position
        The sample :math:`\\theta`; its marginal is the (tempered) posterior.
    guide
        The guide :math:`\\theta_a`; its marginal is the posterior smoothed by
        :math:`\\mathcal{N}(0, \\eta T I)` (local entropy).
    """

    position: ArrayTree
    guide: ArrayTree


def init(position: ArrayLikeTree) -> EMCMCState:
    """Start a chain with the guide at the position (as the reference code does).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> state = init({"w": jnp.ones(2)})
    >>> state.guide["w"]
    Array([1., 1.], dtype=float32)
    """
    check_floating_tree("position", position)
    position = jax.tree.map(jnp.asarray, position)
    return EMCMCState(position, jax.tree.map(jnp.copy, position))


def coupling_pull(state: EMCMCState, eta: float) -> ArrayTree:
    """The pull of the guide on the position, ``(theta_a - theta) / eta``."""
    return jax.tree.map(lambda x, a: (a - x) / eta, state.position, state.guide)


def joint_gradient(
    logdensity_grad: ArrayLikeTree,
    state: EMCMCState,
    eta: float,
    guide_prior_precision: float = 0.0,
) -> EMCMCState:
    """Gradient of the joint log-density (untempered) from the model's gradient.

    ``logdensity_grad`` is the (estimated) gradient of ``log p(theta | D)`` at
    ``state.position``; the coupling adds ``-(theta - theta_a) / eta`` to it and
    gives the guide ``(theta - theta_a) / eta - guide_prior_precision * theta_a``.
    """
    check_matching_tree(
        "grad_estimator(position, minibatch)", logdensity_grad, "position", state.position
    )
    pull = coupling_pull(state, eta)
    grad_position = jax.tree.map(jnp.add, logdensity_grad, pull)
    if guide_prior_precision:
        grad_guide = jax.tree.map(lambda d, a: -d - guide_prior_precision * a, pull, state.guide)
    else:
        grad_guide = jax.tree.map(jnp.negative, pull)
    return EMCMCState(grad_position, grad_guide)


def max_stable_step(eta: float, guide_step_ratio: float = 1.0) -> float:
    """The largest step size for which the coupling's Euler step is stable, ``2 eta / (1 + r)``.

    Examples
    --------
    >>> max_stable_step(4e-4), max_stable_step(1.0, guide_step_ratio=3.0)
    (0.0004, 0.5)
    """
    return 2.0 * eta / (1.0 + guide_step_ratio)


def step_size_bound(eta: float, guide_step_ratio: float = 1.0) -> StepSizeBound:
    """:func:`max_stable_step` with its formula, for messages.

    Examples
    --------
    >>> step_size_bound(0.1)
    StepSizeBound(value=0.1, formula='`eta` = 0.1')
    """
    bound = max_stable_step(eta, guide_step_ratio)
    if guide_step_ratio == 1.0:
        return StepSizeBound(bound, f"`eta` = {eta:.6g}")
    return StepSizeBound(
        bound,
        f"2 * `eta` / (1 + `guide_step_ratio`) = {bound:.6g} "
        f"(eta={eta:.6g}, guide_step_ratio={guide_step_ratio:.6g})",
    )


def _raise_if_unstable(bound: StepSizeBound, step_size, temperature) -> None:
    h, t = np.asarray(step_size), np.asarray(temperature)
    if not (np.all(np.isfinite(h)) and np.all(h > 0)):
        raise ValueError(f"`step_size` must be finite and > 0, got {h.tolist()!r} (debug check)")
    if np.any(h >= bound.value):
        raise ValueError(
            f"`step_size`={float(np.max(h)):.6g} >= {bound.formula}: the Entropy-MCMC "
            f"coupling diverges for a step at or above this bound whatever the model "
            f"(debug check of a traced step size). Lower the step size (or the "
            f"schedule's peak) or raise eta."
        )
    if not (np.all(np.isfinite(t)) and np.all(t >= 0)):
        raise ValueError(f"`temperature` must be finite and >= 0, got {t.tolist()!r} (debug check)")


def debug_check_step_size(step_size, temperature, bound: StepSizeBound) -> None:
    """Check a (possibly traced) step size at run time: the ``debug=True`` option.

    Adds a ``jax.debug.callback`` that raises ``ValueError`` on the host when
    ``step_size >= bound.value`` (or is not finite and > 0, or the temperature is
    negative). Inside ``jit`` the error reaches the caller as a
    ``jax.errors.JaxRuntimeError`` (a ``RuntimeError``) whose message contains the
    ``ValueError``'s. A host round trip per step: for debugging, not for speed.

    Examples
    --------
    >>> import jax
    >>> f = jax.jit(lambda h: debug_check_step_size(h, 1.0, step_size_bound(0.1)))
    >>> f(0.01)
    >>> try:
    ...     f(0.25)
    ... except RuntimeError as err:
    ...     print("`step_size`=0.25 >= `eta` = 0.1" in str(err))
    True
    """
    jax.debug.callback(functools.partial(_raise_if_unstable, bound), step_size, temperature)


def check_step_size(step_size, eta: float, temperature=1.0, guide_step_ratio: float = 1.0) -> None:
    """Raise ``ValueError`` for a concrete step size or temperature that cannot work.

    The coupling term has Hessian eigenvalues ``0`` and ``(1 + r) / eta`` in the
    metric of the block steps ``(h, r h)``, so the Euler step diverges for
    ``step_size >= 2 eta / (1 + r)`` (``>= eta`` for ``r = 1``) whatever the model.
    Traced values
    (inside ``jit``, including every step size inside :func:`flatjax.inference.run`,
    even a constant one) cannot be checked here: check the schedule's largest value
    before running (``python -m flatjax`` does). The run loop raises
    :class:`~flatjax.inference.loop.DivergenceError` naming the epoch and chains.
    """
    h = concrete_or_none(step_size)
    if h is not None:
        if not h > 0:
            raise ValueError(f"`step_size` must be > 0, got {h!r}")
        bound = max_stable_step(eta, guide_step_ratio)
        if h >= bound and guide_step_ratio == 1.0:
            raise ValueError(
                f"`step_size`={h!r} >= `eta`={eta!r}: the Entropy-MCMC coupling has "
                f"stiffness 2/eta, so the Langevin step diverges unless "
                f"step_size < eta. Lower the step size or raise eta."
            )
        if h >= bound:
            raise ValueError(
                f"`step_size`={h!r} >= 2 * `eta` / (1 + `guide_step_ratio`) = {bound:.6g} "
                f"(eta={eta!r}, guide_step_ratio={guide_step_ratio!r}): the coupling's "
                f"stiff mode diverges. Lower the step size or the ratio, or raise eta."
            )
    t = concrete_or_none(temperature)
    if t is not None and not t >= 0:
        raise ValueError(f"`temperature` must be >= 0, got {t!r}")


def block_steps(state: EMCMCState, step_size, guide_step_ratio: float):
    """Per-block steps ``EMCMCState(h, r h)`` (just ``h`` when ``r = 1``)."""
    if guide_step_ratio == 1.0:
        return step_size
    position = jax.tree.map(lambda _: step_size, state.position)
    return EMCMCState(position, jax.tree.map(lambda _: guide_step_ratio * step_size, state.guide))


def build_kernel(
    eta: float,
    guide_prior_precision: float = 0.0,
    guide_step_ratio: float = 1.0,
    noise: str = "gaussian",
    debug: bool = False,
) -> Callable:
    """Build the Entropy-MCMC (SGLD flavour) transition kernel.

    Parameters
    ----------
    eta
        Variance of the coupling between ``theta`` and its guide; the guide sees
        the posterior smoothed at scale ``sqrt(eta * T)``.
    guide_prior_precision
        Precision of an optional ``N(0, 1/lambda)`` prior on the guide (the
        reference code's weight decay on the guide is ``N * weight_decay``).
    guide_step_ratio
        The guide's step as a multiple ``r`` of the position's (> 0; 1 is the
        paper's sampler). See the module docstring.
    noise
        ``"gaussian"`` (exact Euler-Maruyama) or ``"rademacher"`` (random signs of
        the same variance, several times cheaper to draw: the simplified weak Euler
        scheme, see :func:`flatjax.sgmcmc.diffusions.overdamped_langevin`).
    debug
        Also check traced step sizes at run time (:func:`debug_check_step_size`):
        a step at or above :func:`max_stable_step` raises instead of diverging
        silently. Costs a host callback per step.

    Returns
    -------
    ``kernel(rng_key, state, grad_estimator, minibatch, step_size, temperature=1.0)``
    returning the new :class:`EMCMCState`.
    """
    eta = check_positive("eta", eta)
    guide_prior_precision = check_nonnegative("guide_prior_precision", guide_prior_precision)
    guide_step_ratio = check_positive("guide_step_ratio", guide_step_ratio)
    integrator = diffusions.overdamped_langevin(check_noise(noise))
    bound = step_size_bound(eta, guide_step_ratio)
    debug = _check_debug(debug)

    def kernel(
        rng_key: PRNGKey,
        state: EMCMCState,
        grad_estimator: Callable,
        minibatch: ArrayLikeTree,
        step_size: float,
        temperature: float = 1.0,
    ) -> EMCMCState:
        check_step_size(step_size, eta, temperature, guide_step_ratio)
        if debug:
            debug_check_step_size(step_size, temperature, bound)
        logdensity_grad = grad_estimator(state.position, minibatch)
        grad = joint_gradient(logdensity_grad, state, eta, guide_prior_precision)
        steps = block_steps(state, step_size, guide_step_ratio)
        return integrator(rng_key, state, grad, steps, temperature)

    return kernel


def _check_debug(debug: bool) -> bool:
    if not isinstance(debug, bool):
        raise TypeError(f"`debug` must be True or False, got {debug!r}")
    return debug


def as_top_level_api(
    grad_estimator: Callable,
    eta: float,
    guide_prior_precision: float = 0.0,
    guide_step_ratio: float = 1.0,
    noise: str = "gaussian",
    debug: bool = False,
) -> SamplingAlgorithm:
    """Entropy-MCMC with an SGLD update of the joint, in BlackJAX's interface.

    It is a drop-in beside ``blackjax.sgld(grad_estimator)``: the same
    ``step(rng_key, state, minibatch, step_size, temperature)`` call, one model
    gradient per step, and a state that carries the guide next to the position.

    Parameters
    ----------
    grad_estimator
        ``grad_estimator(position, minibatch)`` -> estimate of the gradient of the
        log-posterior, e.g. ``blackjax.sgmcmc.gradients.grad_estimator``.
    eta
        Coupling variance, in the scale of the summed log-posterior that
        ``grad_estimator`` differentiates: the joint is
        ``exp(-[U(theta) + |theta - theta_a|^2 / (2 eta)] / T)`` with
        ``U = -log p(theta) - sum_{i=1}^N log p(y_i | x_i, theta)``. On the mean loss
        ``U / N`` the coupling reads ``|theta - theta_a|^2 / (2 eta N)``, which is the
        term the reference code adds to its mean loss, so the paper's ``4e-4`` (CIFAR)
        is used unchanged (see :func:`from_reference_hyperparameters`). Must be > 0.
    guide_prior_precision
        Precision of a Gaussian prior on the guide; ``0`` is the paper's joint.
    guide_step_ratio
        The guide's step as a multiple ``r`` of the position's step (> 0). The joint
        law is the same for every ``r``; ``r = 1`` (the paper's sampler) moves the
        pair at half SGLD's speed wherever the coupling is stiff, ``r`` moves it at
        ``r / (1 + r)`` of it. Stable for ``step_size < 2 eta / (1 + r)``.
    noise
        ``"gaussian"`` or ``"rademacher"`` (same first two moments, cheaper; the
        simplified weak Euler scheme).
    debug
        Check the step size at run time too, where it is traced (inside ``jit``, a
        schedule's value): a step ``>= 2 eta / (1 + r)`` stops the run with an error
        naming it instead of diverging silently to NaN. A host callback per step,
        so for debugging only; see :func:`debug_check_step_size`.

    Returns
    -------
    A ``blackjax.base.SamplingAlgorithm`` with ``init(position)`` and ``step``;
    ``step.step_size_bound`` is the :class:`~flatjax.sgmcmc._api.StepSizeBound`
    (the run loop names it when a chain diverges above it).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, blackjax, flatjax
    >>> data = jnp.linspace(-1.0, 1.0, 20)
    >>> grad_fn = blackjax.sgmcmc.gradients.grad_estimator(
    ...     lambda p: -0.5 * p**2, lambda p, x: -0.5 * (x - p) ** 2, data_size=20)
    >>> emcmc = flatjax.emcmc(grad_fn, eta=0.1)
    >>> state = emcmc.init(jnp.asarray(0.5))
    >>> step = jax.jit(emcmc.step)
    >>> state = step(jax.random.key(0), state, data[:5], 1e-3)
    >>> state.position.shape, state.guide.shape
    ((), ())
    """
    kernel = build_kernel(eta, guide_prior_precision, guide_step_ratio, noise, debug)
    bound = step_size_bound(check_positive("eta", eta), guide_step_ratio)
    return sgmcmc_algorithm(init, kernel, grad_estimator, bound)


def _describe(x) -> str:
    """The user's view of ``x``'s type: arrays (also traced ones) by shape and dtype."""
    if isinstance(x, jax.Array | np.ndarray):
        return f"an array of shape {jnp.shape(x)} and dtype {jnp.result_type(x)}"
    if isinstance(x, dict):
        return f"a dict with keys {sorted(map(str, x))}"
    return f"{type(x).__name__} {x!r:.80}"


def _split_joint(x) -> tuple[ArrayTree, ArrayTree]:
    if isinstance(x, EMCMCState):
        return x.position, x.guide
    try:
        return x["position"], x["guide"]
    except (KeyError, TypeError, IndexError):
        pass
    raise TypeError(
        "the joint position must be a dict {'position': theta, 'guide': theta_a} "
        f"or an EMCMCState, got {_describe(x)}. Start the kernel at "
        "{'position': theta, 'guide': theta} (e.g. "
        "`dict(flatjax.sgmcmc.emcmc.init(theta)._asdict())`)"
    )


def _sq_norm_diff(a: ArrayTree, b: ArrayTree) -> jax.Array:
    leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.sum((x - y) ** 2), a, b))
    return sum(leaves[1:], leaves[0])


def joint_logdensity(
    logdensity_fn: Callable,
    eta: float,
    temperature: float = 1.0,
    guide_prior_precision: float = 0.0,
) -> Callable:
    """The exact Entropy-MCMC joint log-density, for any full-batch BlackJAX kernel.

    ``joint({"position": theta, "guide": theta_a})`` is
    ``(logdensity_fn(theta) - |theta - theta_a|^2 / (2 eta)
    - guide_prior_precision |theta_a|^2 / 2) / temperature``; its
    ``theta``-marginal is ``p(theta)^(1/T)`` (for ``guide_prior_precision=0``).

    Examples
    --------
    Run NUTS on the joint of a 1-D standard normal:

    >>> import jax, jax.numpy as jnp, blackjax
    >>> joint = joint_logdensity(lambda x: -0.5 * jnp.sum(x**2), eta=0.5)
    >>> nuts = blackjax.nuts(joint, step_size=0.5, inverse_mass_matrix=jnp.ones(2))
    >>> state = nuts.init({"position": jnp.zeros(1), "guide": jnp.zeros(1)})
    >>> state, info = jax.jit(nuts.step)(jax.random.key(0), state)
    >>> sorted(state.position)
    ['guide', 'position']
    """
    check_function(
        "logdensity_fn",
        logdensity_fn,
        "logdensity_fn(position) -> scalar log-density",
        "then build it from `apply_fn`, e.g. `lambda p: flatjax.nn.glue.logdensity_estimator("
        "logprior_fn, flatjax.nn.glue.categorical_loglikelihood(apply_fn), n)(p, (x, y))`",
    )
    eta = check_positive("eta", eta)
    temperature = check_positive("temperature", temperature)
    guide_prior_precision = check_nonnegative("guide_prior_precision", guide_prior_precision)

    def joint(x) -> jax.Array:
        position, guide = _split_joint(x)
        value = logdensity_fn(position) - _sq_norm_diff(position, guide) / (2 * eta)
        if guide_prior_precision:
            zeros = jax.tree.map(jnp.zeros_like, guide)
            value = value - 0.5 * guide_prior_precision * _sq_norm_diff(guide, zeros)
        return value / temperature

    return joint


def sample_guide(
    rng_key: PRNGKey,
    position: ArrayLikeTree,
    eta: float,
    temperature: float = 1.0,
    guide_prior_precision: float = 0.0,
    noise: str = "gaussian",
) -> ArrayTree:
    """Exact Gibbs draw of the guide given the position.

    ``theta_a | theta ~ N(theta / (1 + eta lambda), eta T / (1 + eta lambda) I)``
    (``lambda = guide_prior_precision``; ``N(theta, eta T I)`` for the paper's
    joint). Alternate it with any BlackJAX kernel on ``theta | theta_a`` (whose
    log-density is ``logdensity_fn(theta) - |theta - theta_a|^2 / (2 eta)``) for a
    Gibbs sampler of the joint. ``noise="rademacher"`` draws random signs of the
    same variance instead (cheaper, the same mean and covariance, not the exact law).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> guide = sample_guide(jax.random.key(1), {"w": jnp.zeros(3)}, eta=0.1)
    >>> guide["w"].shape
    (3,)
    """
    eta = check_positive("eta", eta)
    temperature = check_nonnegative("temperature", temperature)
    guide_prior_precision = check_nonnegative("guide_prior_precision", guide_prior_precision)
    shrink = 1.0 / (1.0 + eta * guide_prior_precision)
    scale = (eta * temperature * shrink) ** 0.5
    xi = langevin_noise(rng_key, position, check_noise(noise))
    return jax.tree.map(lambda x, n: shrink * x + scale * n, position, xi)


class ReferenceHyperparameters(NamedTuple):
    """Entropy-MCMC hyper-parameters in flatjax's (log-posterior) scale."""

    step_size: float
    temperature: float
    eta: float
    prior_precision: float
    guide_prior_precision: float


def from_reference_hyperparameters(
    lr: float,
    data_size: int,
    temperature: float = 1e-4,
    eta: float = 4e-4,
    weight_decay: float = 5e-4,
) -> ReferenceHyperparameters:
    """Convert the reference (PyTorch) code's knobs to this library's.

    The reference code runs plain SGD with learning rate ``lr`` and weight decay
    ``wd`` on ``CE_mean + |theta - theta_a|^2 / (2 eta N)`` plus a noise term, over
    ``theta`` and ``theta_a`` together. One of its steps is exactly SGLD at
    temperature ``tau`` with step size ``lr / N`` on
    ``U = N CE_mean + |theta - theta_a|^2 / (2 eta) + N wd / 2 (|theta|^2 + |theta_a|^2)``:
    the learning rate is ``N`` times the Langevin step and weight decay is a
    Gaussian prior of precision ``N wd`` on ``theta`` and on the guide.

    Examples
    --------
    >>> hp = from_reference_hyperparameters(lr=0.5, data_size=50_000)
    >>> hp.step_size, hp.prior_precision, hp.guide_prior_precision
    (1e-05, 25.0, 25.0)
    """
    lr = check_positive("lr", lr)
    if isinstance(data_size, bool) or not isinstance(data_size, int) or data_size < 1:
        raise ValueError(f"`data_size` must be a positive integer, got {data_size!r}")
    temperature = check_nonnegative("temperature", temperature)
    eta = check_positive("eta", eta)
    weight_decay = check_nonnegative("weight_decay", weight_decay)
    return ReferenceHyperparameters(
        step_size=lr / data_size,
        temperature=temperature,
        eta=eta,
        prior_precision=data_size * weight_decay,
        guide_prior_precision=data_size * weight_decay,
    )
