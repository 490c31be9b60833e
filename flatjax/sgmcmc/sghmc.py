"""SGHMC with persistent momentum, one gradient per step (the cSGHMC form).

:func:`blackjax.sghmc` resamples the momentum at every call and runs
``num_integration_steps`` leapfrog-like steps on one minibatch. Cyclical SGHMC
(Zhang et al. 2020) and the Entropy-MCMC SGHMC flavour instead keep the momentum
across steps and take a fresh minibatch at every gradient, with ``alpha`` the per-step
momentum decay. This kernel is that form: :func:`flatjax.sgmcmc.diffusions.sghmc`,
which is blackjax's SGHMC diffusion reparameterised (see there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from blackjax.base import SamplingAlgorithm
from blackjax.types import ArrayLikeTree, ArrayTree, PRNGKey

from flatjax._util import check_in_range, check_matching_tree, check_noise, check_nonnegative
from flatjax.sgmcmc import diffusions
from flatjax.sgmcmc._api import sgmcmc_algorithm

__all__ = ["SGHMCState", "init", "build_kernel", "as_top_level_api"]


class SGHMCState(NamedTuple):
    """Position and momentum."""

    position: ArrayTree
    momentum: ArrayTree


def init(position: ArrayLikeTree) -> SGHMCState:
    """Zero momentum.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> init(jnp.ones(2)).momentum
    Array([0., 0.], dtype=float32)
    """
    return SGHMCState(position, jax.tree.map(jnp.zeros_like, position))


def build_kernel(alpha: float = 0.01, beta: float = 0.0, noise: str = "gaussian") -> Callable:
    """Build the kernel: momentum decay ``alpha`` in ``(0, 1]``, noise estimate ``beta >= 0``.

    ``noise``: ``"gaussian"`` or ``"rademacher"`` (random signs of the same variance).
    """
    alpha = check_in_range("alpha", alpha, 0.0, 1.0)
    beta = check_nonnegative("beta", beta)
    integrator = diffusions.sghmc(alpha, beta, check_noise(noise))

    def kernel(
        rng_key: PRNGKey,
        state: SGHMCState,
        grad_estimator: Callable,
        minibatch: ArrayLikeTree,
        step_size: float,
        temperature: float = 1.0,
    ) -> SGHMCState:
        grad = grad_estimator(state.position, minibatch)
        check_matching_tree("grad_estimator(position, minibatch)", grad, "position", state.position)
        return SGHMCState(
            *integrator(rng_key, state.position, state.momentum, grad, step_size, temperature)
        )

    return kernel


def as_top_level_api(
    grad_estimator: Callable, alpha: float = 0.01, beta: float = 0.0, noise: str = "gaussian"
) -> SamplingAlgorithm:
    """SGHMC with persistent momentum in BlackJAX's interface.

    ``noise="rademacher"`` injects random signs instead of Gaussian increments (see
    :func:`flatjax.sgmcmc.diffusions.sghmc`).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> sghmc = as_top_level_api(lambda p, b: -p, alpha=0.1)
    >>> state = sghmc.step(jax.random.key(0), sghmc.init(jnp.ones(3)), None, 0.1)
    >>> state.position.shape
    (3,)
    """
    kernel = build_kernel(alpha, beta, noise)

    return sgmcmc_algorithm(init, kernel, grad_estimator)
