"""The ``SamplingAlgorithm`` wrapper shared by the SG-MCMC kernels of this package."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from blackjax.base import SamplingAlgorithm
from blackjax.types import ArrayLikeTree, PRNGKey

from flatjax._util import GRAD_ESTIMATOR_HINT, check_array_tree, check_function


class StepSizeBound(NamedTuple):
    """The largest stable step size of a kernel, and how it follows from its options.

    ``value``: steps ``>= value`` diverge whatever the model; ``formula``: e.g.
    ``"eta = 0.1"``, for messages. Set as ``step.step_size_bound`` on the step
    function of kernels that have one (Entropy-MCMC), so that the run loop can name
    the cause when a chain diverges.
    """

    value: float
    formula: str


def sgmcmc_algorithm(
    init: Callable[[ArrayLikeTree], Any],
    kernel: Callable,
    grad_estimator: Callable,
    step_size_bound: StepSizeBound | None = None,
) -> SamplingAlgorithm:
    """``SamplingAlgorithm(init_fn, step_fn)`` in the calling convention of ``blackjax.sgld``.

    ``init_fn(position, rng_key=None)`` ignores the key; ``step_fn(rng_key, state,
    minibatch, step_size, temperature=1.0)`` calls ``kernel(rng_key, state,
    grad_estimator, minibatch, step_size, temperature)``.

    ``grad_estimator`` must be a function (a Flax module is rejected with a message
    saying how to convert it), and so is a module or a non-array pytree given to
    ``init_fn`` as the position: both ``TypeError`` naming the argument.
    ``step_size_bound``, when given, is set as ``step_fn.step_size_bound``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> algo = sgmcmc_algorithm(
    ...     lambda x: x, lambda k, s, g, b, h, t: s - h * g(s, b), lambda s, b: s - b
    ... )
    >>> float(algo.step(None, algo.init(jnp.array(2.0)), 0.0, 0.5))
    1.0
    """
    check_function(
        "grad_estimator",
        grad_estimator,
        "grad_estimator(position, minibatch) -> gradient pytree",
        GRAD_ESTIMATOR_HINT,
    )

    def init_fn(position: ArrayLikeTree, rng_key: PRNGKey | None = None) -> Any:
        """Initial state of one chain at ``position`` (a pytree of float arrays).

        ``rng_key`` is accepted for BlackJAX's interface and ignored. Vmap this over
        a leading chain axis of ``position`` to start several chains.
        """
        del rng_key
        check_array_tree("position", position)
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

    if step_size_bound is not None:
        step_fn.step_size_bound = step_size_bound  # type: ignore[attr-defined]
    return SamplingAlgorithm(init_fn, step_fn)  # type: ignore[arg-type]
