"""Optax optimisers as kernels of the run loop, so baselines run exactly like samplers.

The step size passed by the loop is the *log-posterior-scale* step, the same number
the samplers take: with ``U = -log p(theta) - N mean_i log p(y_i|x_i, theta)``, plain
SGD with learning rate ``lr`` on the mean loss is ``step_size = lr / N``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax
from blackjax.base import SamplingAlgorithm
from blackjax.types import ArrayLikeTree, ArrayTree, PRNGKey

__all__ = ["OptimizerState", "as_top_level_api"]


class OptimizerState(NamedTuple):
    """Parameters and the optax state of the direction transform."""

    position: ArrayTree
    opt_state: Any


def as_top_level_api(
    grad_estimator: Callable, direction: optax.GradientTransformation | None = None
) -> SamplingAlgorithm:
    """Gradient ascent on the log-posterior with an optax direction transform.

    The update is ``position - step_size * direction(-grad)``; ``direction`` is an optax
    transformation *without* a learning rate, e.g. ``optax.trace(decay=0.9)`` for
    heavy-ball momentum (the default is plain SGD). ``temperature`` is ignored.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, optax
    >>> sgd = as_top_level_api(lambda p, b: -p, optax.trace(decay=0.9))
    >>> state = sgd.init(jnp.ones(2))
    >>> state = sgd.step(jax.random.key(0), state, None, 0.1)
    >>> state.position
    Array([0.9, 0.9], dtype=float32)
    """
    direction = direction if direction is not None else optax.identity()

    def init_fn(position: ArrayLikeTree, rng_key: PRNGKey | None = None) -> OptimizerState:
        del rng_key
        return OptimizerState(position, direction.init(position))

    def step_fn(
        rng_key: PRNGKey,
        state: OptimizerState,
        minibatch: ArrayLikeTree,
        step_size: float,
        temperature: float = 1.0,
    ) -> OptimizerState:
        del rng_key, temperature
        grad = grad_estimator(state.position, minibatch)
        loss_grad = jax.tree.map(lambda g: -g, grad)
        updates, opt_state = direction.update(loss_grad, state.opt_state, state.position)
        position = jax.tree.map(lambda p, u: p - step_size * u, state.position, updates)
        return OptimizerState(position, opt_state)

    return SamplingAlgorithm(init_fn, step_fn)  # type: ignore[arg-type]
