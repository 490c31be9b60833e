"""SGLD with a choice of noise: ``blackjax.sgld``'s update, Gaussian or Rademacher increments.

``blackjax.sgld`` draws Gaussian noise. This kernel is the same Euler-Maruyama update
(:func:`flatjax.sgmcmc.diffusions.overdamped_langevin`),

.. math::

    \\theta' = \\theta + h \\nabla \\log \\hat p(\\theta) + \\sqrt{2 h T}\\,\\xi,

with ``xi`` either standard normal (``noise="gaussian"``: ``blackjax.sgld``'s
numbers, bit for bit — one draw over the raveled position, as blackjax draws it —
through flatjax's 2x faster exact normal path) or random signs
(``noise="rademacher"``, the simplified weak Euler scheme: weak order 1 and the same
discrete-time stationary covariance on Gaussian targets, several times cheaper to draw
on CPU). The state is the bare position, as in ``blackjax.sgld``, so the two are
interchangeable in any loop.
"""

from __future__ import annotations

from collections.abc import Callable

from blackjax.base import SamplingAlgorithm
from blackjax.types import ArrayLikeTree, ArrayTree, PRNGKey

from flatjax._util import (
    check_floating_tree,
    check_matching_tree,
    check_noise,
    raveled_normal_like,
)
from flatjax.sgmcmc import diffusions
from flatjax.sgmcmc._api import sgmcmc_algorithm

__all__ = ["init", "build_kernel", "as_top_level_api"]


def init(position: ArrayLikeTree) -> ArrayTree:
    """The state is the position itself (as in ``blackjax.sgld``)."""
    check_floating_tree("position", position)
    return position


def build_kernel(noise: str = "gaussian") -> Callable:
    """``kernel(rng_key, position, grad_estimator, minibatch, step_size, temperature=1.0)``."""
    draw = raveled_normal_like if check_noise(noise) == "gaussian" else None
    integrator = diffusions.overdamped_langevin(noise, draw)

    def kernel(
        rng_key: PRNGKey,
        position: ArrayLikeTree,
        grad_estimator: Callable,
        minibatch: ArrayLikeTree,
        step_size: float,
        temperature: float = 1.0,
    ) -> ArrayTree:
        grad = grad_estimator(position, minibatch)
        check_matching_tree("grad_estimator(position, minibatch)", grad, "position", position)
        return integrator(rng_key, position, grad, step_size, temperature)

    return kernel


def as_top_level_api(grad_estimator: Callable, noise: str = "gaussian") -> SamplingAlgorithm:
    """SGLD in BlackJAX's interface, with Gaussian or Rademacher noise.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> sgld = as_top_level_api(lambda p, b: -p, noise="rademacher")
    >>> x = sgld.step(jax.random.key(0), sgld.init(jnp.zeros(4)), None, 0.5, 1.0)
    >>> bool(jnp.all(jnp.abs(x) == 1.0))
    True
    """
    return sgmcmc_algorithm(init, build_kernel(noise), grad_estimator)
