"""The ``SamplingAlgorithm`` wrapper shared by the SG-MCMC kernels of this package."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from blackjax.base import SamplingAlgorithm
from blackjax.types import ArrayLikeTree, PRNGKey


def sgmcmc_algorithm(
    init: Callable[[ArrayLikeTree], Any], kernel: Callable, grad_estimator: Callable
) -> SamplingAlgorithm:
    """``SamplingAlgorithm(init_fn, step_fn)`` in the calling convention of ``blackjax.sgld``.

    ``init_fn(position, rng_key=None)`` ignores the key; ``step_fn(rng_key, state,
    minibatch, step_size, temperature=1.0)`` calls ``kernel(rng_key, state,
    grad_estimator, minibatch, step_size, temperature)``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> algo = sgmcmc_algorithm(
    ...     lambda x: x, lambda k, s, g, b, h, t: s - h * g(s, b), lambda s, b: s - b
    ... )
    >>> float(algo.step(None, algo.init(jnp.array(2.0)), 0.0, 0.5))
    1.0
    """

    def init_fn(position: ArrayLikeTree, rng_key: PRNGKey | None = None) -> Any:
        """Initial state of one chain at ``position`` (a pytree of float arrays).

        ``rng_key`` is accepted for BlackJAX's interface and ignored. Vmap this over
        a leading chain axis of ``position`` to start several chains.
        """
        del rng_key
        return init(position)

    def step_fn(
        rng_key: PRNGKey,
        state: Any,
        minibatch: ArrayLikeTree,
        step_size: float,
        temperature: float = 1.0,
    ) -> Any:
        """One transition: the new state (the same pytree structure as ``state``).

        ``rng_key`` a JAX key; ``minibatch`` whatever ``grad_estimator(position,
        minibatch)`` takes (e.g. an ``(x, y)`` tuple of arrays with a leading batch
        axis); ``step_size`` the Langevin step (a scalar, may be traced);
        ``temperature`` the posterior temperature (>= 0). Pure: jit and vmap it.
        """
        return kernel(rng_key, state, grad_estimator, minibatch, step_size, temperature)

    return SamplingAlgorithm(init_fn, step_fn)  # type: ignore[arg-type]
