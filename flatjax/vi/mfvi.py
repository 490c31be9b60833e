r"""MOPED mean-field variational inference (Krishnan et al., AAAI 2020).

The variational family is :math:`q = \mathcal{N}(\mu, \operatorname{diag}(\sigma^2))`,
:math:`\sigma = \exp(\ell)`, over any parameter pytree. MOPED starts it at
pretrained (e.g. SGD/MAP) weights :math:`w`:

.. math::

    \mu_0 = w, \qquad \sigma_0 = \delta\,|w|,

with :math:`\delta = 0.1` by default (the paper's experiments; bayesian-torch's
``moped_delta`` defaults to 0.5) and :math:`\sigma_0` floored at ``min_scale``
(``1e-5``) so that zero weights (often the biases) keep a finite :math:`\ell`.

It minimises the negative ELBO by stochastic gradients with the
reparameterisation trick :math:`\theta = \mu + \sigma \odot z`,
:math:`z \sim \mathcal{N}(0, I)`:

.. math::

    U(\mu, \ell) = -\frac{N}{|\mathcal{B}|} \sum_{i \in \mathcal{B}}
        \frac1S \sum_{s=1}^S \log p(y_i \mid x_i, \mu + \sigma \odot z_s)
        + T\,\mathrm{KL}\big(q \,\|\, \mathcal{N}(m_0, \operatorname{diag}(s_0^2))\big),

an unbiased estimate of the negative ELBO (for :math:`T = 1`) whose KL term is
exact (closed form). The prior is a diagonal Gaussian :class:`GaussianPrior`:
:func:`moped_prior` is MOPED's empirical-Bayes prior
:math:`\mathcal{N}(w, (\delta |w|)^2)` centred at the pretrained weights (what the
paper proposes); ``GaussianPrior(0.0, s)`` is the usual isotropic prior (what the
exactness test uses). Choose it explicitly: the prior is an argument.

The kernel (:func:`as_top_level_api`) follows :mod:`flatjax.inference.optimizer`:
``step(rng_key, state, minibatch, step_size, temperature)`` applies
``(mu, l) -= step_size * direction(grad U)`` with an optax ``direction`` without
learning rate, so it runs in :func:`flatjax.inference.run` like the SGD baseline.
With the default plain-SGD direction ``step_size = lr / N`` is a learning rate
``lr`` on the per-example objective; with ``direction=optax.scale_by_adam()``
(Adam ignores the objective's scale) ``step_size`` is Adam's learning rate.
The loop's ``temperature`` weights the KL (``T < 1``: a cold posterior).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from blackjax.base import SamplingAlgorithm
from blackjax.types import ArrayLikeTree, ArrayTree, PRNGKey

from flatjax._util import (
    check_floating_tree,
    check_matching_tree,
    check_positive,
    check_positive_int,
    concrete_or_none,
    normal_like,
)

__all__ = [
    "MFVIState",
    "MFVIInfo",
    "GaussianPrior",
    "moped_prior",
    "init",
    "kl_divergence",
    "negative_elbo",
    "build_kernel",
    "as_top_level_api",
    "sample",
]


class MFVIState(NamedTuple):
    """State of mean-field VI.

    position
        The variational mean :math:`\\mu` (named like the other kernels' states, so
        the run loop's traces and default collection see the mean).
    log_scale
        :math:`\\ell = \\log \\sigma`, shaped like ``position``.
    opt_state
        State of the optax direction over the pair ``(position, log_scale)``.
    """

    position: ArrayTree
    log_scale: ArrayTree
    opt_state: Any


class MFVIInfo(NamedTuple):
    """The step's negative-ELBO estimate ``loss = nll + temperature * kl``."""

    loss: jax.Array
    nll: jax.Array
    kl: jax.Array


class GaussianPrior(NamedTuple):
    """A diagonal Gaussian prior ``N(mean, diag(std^2))``.

    Each field is a pytree shaped like the parameters or a scalar used for every
    parameter (e.g. ``GaussianPrior(0.0, 1.0)``).
    """

    mean: Any
    std: Any


def _moped_scale(w: ArrayLikeTree, delta: float, min_scale: float) -> ArrayTree:
    return jax.tree.map(lambda x: jnp.maximum(delta * jnp.abs(x), min_scale), w)


def moped_prior(
    pretrained: ArrayLikeTree, delta: float = 0.1, min_scale: float = 1e-5
) -> GaussianPrior:
    """MOPED's empirical-Bayes prior ``N(w, diag((delta |w|)^2))`` at pretrained ``w``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> moped_prior(jnp.array([2.0, 0.0])).std
    Array([2.e-01, 1.e-05], dtype=float32)
    """
    delta = check_positive("delta", delta)
    min_scale = check_positive("min_scale", min_scale)
    check_floating_tree("pretrained", pretrained)
    w = jax.tree.map(jnp.asarray, pretrained)
    return GaussianPrior(w, _moped_scale(w, delta, min_scale))


def init(
    position: ArrayLikeTree,
    direction: optax.GradientTransformation | None = None,
    delta: float = 0.1,
    min_scale: float = 1e-5,
    log_scale: ArrayLikeTree | None = None,
) -> MFVIState:
    """MOPED initialisation: ``mu = position``, ``sigma = max(delta |position|, min_scale)``.

    ``log_scale`` overrides the MOPED scale.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> state = init(jnp.array([1.0, -3.0]))
    >>> jnp.exp(state.log_scale).round(6)
    Array([0.1, 0.3], dtype=float32)
    """
    check_floating_tree("position", position)
    position = jax.tree.map(jnp.asarray, position)
    if log_scale is None:
        delta = check_positive("delta", delta)
        min_scale = check_positive("min_scale", min_scale)
        log_scale = jax.tree.map(jnp.log, _moped_scale(position, delta, min_scale))
    else:
        check_matching_tree("log_scale", log_scale, "position", position)
        log_scale = jax.tree.map(lambda s, p: jnp.asarray(s, p.dtype), log_scale, position)
    direction = direction if direction is not None else optax.identity()
    return MFVIState(position, log_scale, direction.init((position, log_scale)))


def _broadcast(name: str, value: Any, like: ArrayTree) -> ArrayTree:
    """A prior field as a pytree like the parameters (scalars are broadcast)."""
    leaves = jax.tree.leaves(value)
    if len(leaves) == 1 and jnp.ndim(leaves[0]) == 0:
        return jax.tree.map(lambda _: leaves[0], like)
    if jax.tree.structure(value) == jax.tree.structure(like):
        check_matching_tree(name, value, "position", like)
        return value
    raise ValueError(
        f"`{name}` must be a scalar or a pytree with the parameters' structure "
        f"{jax.tree.structure(like)}, got {jax.tree.structure(value)}"
    )


def _draw(rng_key: PRNGKey, mean: ArrayTree, log_scale: ArrayTree) -> ArrayTree:
    """The reparameterised draw ``mean + exp(log_scale) * z``, ``z ~ N(0, I)``."""
    z = normal_like(rng_key, mean)
    return jax.tree.map(lambda m, ell, e: m + jnp.exp(ell) * e, mean, log_scale, z)


def _sum(tree: ArrayTree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return sum(leaves[1:], leaves[0])


def kl_divergence(mean: ArrayTree, log_scale: ArrayTree, prior: GaussianPrior) -> jax.Array:
    """``KL(N(mean, diag(exp(2 log_scale))) || prior)``, in closed form.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> kl_divergence(jnp.zeros(3), jnp.zeros(3), GaussianPrior(0.0, 1.0))
    Array(0., dtype=float32)
    """
    prior_mean = _broadcast("prior.mean", prior.mean, mean)
    prior_std = _broadcast("prior.std", prior.std, mean)

    def leaf(m, ell, m0, s0):
        ratio = jnp.exp(2 * ell) / s0**2
        return 0.5 * jnp.sum(ratio + (m - m0) ** 2 / s0**2 - 1.0 - jnp.log(ratio))

    return _sum(jax.tree.map(leaf, mean, log_scale, prior_mean, prior_std))


def negative_elbo(
    rng_key: PRNGKey,
    mean: ArrayTree,
    log_scale: ArrayTree,
    minibatch: ArrayLikeTree,
    loglikelihood_fn: Callable,
    data_size: int,
    prior: GaussianPrior,
    num_samples: int = 1,
    temperature: float = 1.0,
) -> tuple[jax.Array, MFVIInfo]:
    """Reparameterised minibatch estimate of the negative ELBO, and its parts.

    ``loglikelihood_fn(params, minibatch)`` returns one log-likelihood per example
    (the batched convention of :mod:`flatjax.nn.glue`); the estimate is
    ``-N * mean over examples and num_samples draws + temperature * KL``.
    Differentiable in ``mean`` and ``log_scale``.
    """

    def nll(key):
        theta = _draw(key, mean, log_scale)
        return -data_size * jnp.mean(loglikelihood_fn(theta, minibatch))

    keys = jax.random.split(rng_key, num_samples)
    expected_nll = jnp.mean(jax.vmap(nll)(keys))
    kl = kl_divergence(mean, log_scale, prior)
    loss = expected_nll + temperature * kl
    return loss, MFVIInfo(loss, expected_nll, kl)


def _check_prior(prior: GaussianPrior) -> None:
    if not isinstance(prior, GaussianPrior):
        raise TypeError(f"`prior` must be a GaussianPrior, got {type(prior).__name__}")
    for leaf in jax.tree.leaves(prior.std):
        lo = concrete_or_none(jnp.min(jnp.asarray(leaf)))
        if lo is not None and not lo > 0:
            raise ValueError(f"`prior.std` must be > 0 everywhere, got a minimum of {lo!r}")


def build_kernel(
    loglikelihood_fn: Callable,
    data_size: int,
    prior: GaussianPrior,
    direction: optax.GradientTransformation | None = None,
    num_samples: int = 1,
) -> Callable:
    """Build the MFVI step ``kernel(rng_key, state, minibatch, step_size, temperature=1.0)``.

    It returns ``(new_state, MFVIInfo)`` with the negative-ELBO estimate at the old
    state; start from ``init(position, direction)`` with the same ``direction``. See
    :func:`as_top_level_api` for the parameters.
    """
    data_size = check_positive_int("data_size", data_size)
    num_samples = check_positive_int("num_samples", num_samples)
    _check_prior(prior)
    direction = direction if direction is not None else optax.identity()
    value_and_grad = jax.value_and_grad(negative_elbo, argnums=(1, 2), has_aux=True)

    def kernel(
        rng_key: PRNGKey,
        state: MFVIState,
        minibatch: ArrayLikeTree,
        step_size: float,
        temperature: float = 1.0,
    ) -> tuple[MFVIState, MFVIInfo]:
        (_, info), grads = value_and_grad(
            rng_key,
            state.position,
            state.log_scale,
            minibatch,
            loglikelihood_fn,
            data_size,
            prior,
            num_samples,
            temperature,
        )
        params = (state.position, state.log_scale)
        updates, opt_state = direction.update(grads, state.opt_state, params)
        mean, log_scale = jax.tree.map(lambda p, u: p - step_size * u, params, updates)
        return MFVIState(mean, log_scale, opt_state), info

    return kernel


def as_top_level_api(
    loglikelihood_fn: Callable,
    data_size: int,
    prior: GaussianPrior,
    direction: optax.GradientTransformation | None = None,
    num_samples: int = 1,
    delta: float = 0.1,
) -> SamplingAlgorithm:
    """MOPED mean-field VI as a kernel of the run loop.

    Parameters
    ----------
    loglikelihood_fn
        ``loglikelihood_fn(params, minibatch)`` -> per-example log-likelihoods.
    data_size
        ``N``, the number of training examples.
    prior
        The diagonal Gaussian prior of the KL term: :func:`moped_prior` (MOPED's
        empirical-Bayes prior at the pretrained weights) or e.g.
        ``GaussianPrior(0.0, 1.0)``.
    direction
        optax transform without learning rate (default plain SGD; e.g.
        ``optax.scale_by_adam()``) over ``(mean, log_scale)``.
    num_samples
        Reparameterised draws per step.
    delta
        MOPED's initial ``sigma = delta |w|`` used by ``init``.

    Returns
    -------
    ``SamplingAlgorithm(init, step)``: ``init(pretrained)`` is :func:`init`;
    ``step(rng_key, state, minibatch, step_size, temperature=1.0)`` returns the new
    :class:`MFVIState` (the run loop's kernel shape; :func:`build_kernel` also
    returns the :class:`MFVIInfo`).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> x = jnp.linspace(-1.0, 1.0, 8)
    >>> loglik = lambda w, batch: -0.5 * (batch[1] - w * batch[0]) ** 2
    >>> vi = as_top_level_api(loglik, data_size=8, prior=GaussianPrior(0.0, 1.0))
    >>> state = vi.init(jnp.asarray(0.5))
    >>> state = jax.jit(vi.step)(jax.random.key(0), state, (x, 2 * x), 1e-2)
    >>> state.position.shape, state.log_scale.shape
    ((), ())
    """
    kernel = build_kernel(loglikelihood_fn, data_size, prior, direction, num_samples)
    delta = check_positive("delta", delta)

    def init_fn(position: ArrayLikeTree, rng_key: PRNGKey | None = None) -> MFVIState:
        del rng_key
        return init(position, direction, delta)

    def step_fn(
        rng_key: PRNGKey,
        state: MFVIState,
        minibatch: ArrayLikeTree,
        step_size: float,
        temperature: float = 1.0,
    ) -> MFVIState:
        return kernel(rng_key, state, minibatch, step_size, temperature)[0]

    return SamplingAlgorithm(init_fn, step_fn)  # type: ignore[arg-type]


def sample(rng_key: PRNGKey, state: MFVIState, num_samples: int | None = None) -> ArrayTree:
    """Draws ``mu + sigma z`` from ``q``; ``num_samples`` stacks them on a new leading axis.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> state = init({"w": jnp.ones(3)})
    >>> sample(jax.random.key(0), state, num_samples=5)["w"].shape
    (5, 3)
    """

    if num_samples is None:
        return _draw(rng_key, state.position, state.log_scale)
    num_samples = check_positive_int("num_samples", num_samples)
    keys = jax.random.split(rng_key, num_samples)
    return jax.vmap(_draw, in_axes=(0, None, None))(keys, state.position, state.log_scale)
