"""Recompute BatchNorm statistics for a parameter sample.

A sample drawn by SG-MCMC (or the Entropy-MCMC guide, which never runs a forward
pass) has no running statistics of its own. The reference code recomputes them with
one pass over the training data; :func:`recompute_batch_stats` does the same for a
Flax Linen module: the exact average over minibatches of each BatchNorm layer's batch
mean and variance, whatever the layers' ``momentum``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from blackjax.types import ArrayLikeTree, ArrayTree

__all__ = ["average_batch_stats", "recompute_batch_stats"]


def recompute_batch_stats(
    module: Any,
    params: ArrayLikeTree,
    batch_stats: ArrayLikeTree,
    x: jax.Array,
    batch_size: int = 256,
    train_kwarg: str = "train",
) -> ArrayTree:
    """Average per-minibatch BatchNorm statistics of ``params`` over the inputs ``x``.

    Flax updates a running statistic as ``m * old + (1 - m) * batch``. One forward
    pass from ``old = 0`` and one from ``old = 1`` give ``m`` and the batch statistic
    for every layer at once, so no layer's momentum needs to be known.

    Parameters
    ----------
    module
        A Flax Linen module with BatchNorm layers and a ``train`` flag.
    params
        The parameter sample.
    batch_stats
        Any ``batch_stats`` collection of the right structure (values are ignored).
    x
        Inputs (e.g. the training set); the trailing partial batch is dropped.
    batch_size
        Minibatch size of the forward passes.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x, train=False):
    ...         return nn.BatchNorm(use_running_average=not train)(x)
    >>> variables = Net().init(jax.random.key(0), jnp.ones((2, 3)))
    >>> x = 2.0 + jax.random.normal(jax.random.key(1), (512, 3))
    >>> stats = recompute_batch_stats(Net(), variables["params"],
    ...                               variables["batch_stats"], x, batch_size=128)
    >>> bool(jnp.allclose(stats["BatchNorm_0"]["mean"], x.mean(0), atol=1e-5))
    True
    """
    if x.shape[0] // batch_size < 1:
        raise ValueError(f"`x` has {x.shape[0]} rows, fewer than `batch_size`={batch_size}")

    def stats_from(old, xs):
        _, updates = module.apply(
            {"params": params, "batch_stats": old},
            xs,
            mutable=["batch_stats"],
            **{train_kwarg: True},
        )
        return updates["batch_stats"]

    return average_batch_stats(stats_from, batch_stats, x, batch_size)


def average_batch_stats(
    stats_from: Callable[[Any, jax.Array], Any], like: Any, x: jax.Array, batch_size: int
) -> Any:
    """Minibatch statistics averaged over ``x``, whatever the layers' momentum.

    ``stats_from(old, xs)`` runs one training-mode forward pass on the minibatch ``xs``
    starting from running statistics ``old`` and returns the updated ones. A running
    statistic is ``m * old + (1 - m) * batch``: the passes from ``old = 0`` and
    ``old = 1`` give ``m`` and the batch statistic of every layer. Shared by
    :func:`recompute_batch_stats` (Linen) and the NNX models of
    :func:`flatjax.transfer_pretrained.finetune_pretrained`. ``like`` fixes the structure; the
    trailing partial batch of ``x`` is dropped.
    """
    num_batches = x.shape[0] // batch_size
    xb = x[: num_batches * batch_size].reshape(num_batches, batch_size, *x.shape[1:])
    zeros = jax.tree.map(jnp.zeros_like, like)
    ones = jax.tree.map(jnp.ones_like, like)

    def one_batch(total, xs):
        from_zero = stats_from(zeros, xs)
        momentum = jax.tree.map(jnp.subtract, stats_from(ones, xs), from_zero)
        batch = jax.tree.map(lambda z, m: z / (1.0 - m), from_zero, momentum)
        return jax.tree.map(jnp.add, total, batch), None

    total, _ = jax.lax.scan(one_batch, zeros, xb)
    return jax.tree.map(lambda t: t / num_batches, total)
