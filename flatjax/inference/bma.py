"""Streaming Bayesian model average: the predictive summed as samples arrive.

Memory is one ``(num_chains, num_eval, num_classes)`` array whatever the number of
samples, so long runs can average thousands of samples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from blackjax.types import ArrayLikeTree

__all__ = ["BMAState", "init", "update", "predictive", "batched_predict"]


class BMAState(NamedTuple):
    """Sum of per-sample predictive probabilities and the number of samples, per chain."""

    sum_probs: jax.Array  # (num_chains, num_eval, num_classes)
    count: jax.Array  # (num_chains,)


def init(num_chains: int, num_eval: int, num_classes: int) -> BMAState:
    """An empty accumulator.

    Examples
    --------
    >>> bma = init(2, 5, 3)
    >>> bma = update(bma, jnp.full((2, 5, 3), 1 / 3))
    >>> predictive(bma).shape
    (5, 3)
    """
    return BMAState(
        jnp.zeros((num_chains, num_eval, num_classes), jnp.float32),
        jnp.zeros((num_chains,), jnp.int32),
    )


def update(bma: BMAState, probs: jax.Array) -> BMAState:
    """Add one sample's predictive ``probs`` (``(num_chains, num_eval, num_classes)``)."""
    return BMAState(bma.sum_probs + probs.astype(jnp.float32), bma.count + 1)


def predictive(bma: BMAState, per_chain: bool = False) -> jax.Array:
    """The BMA predictive, pooled over chains (or one per chain)."""
    if per_chain:
        return bma.sum_probs / jnp.maximum(bma.count, 1)[:, None, None]
    return bma.sum_probs.sum(0) / jnp.maximum(bma.count.sum(), 1)


def batched_predict(
    predict_fn: Callable, params: ArrayLikeTree, x: jax.Array, chunk_size: int = 1024
) -> jax.Array:
    """``predict_fn(params, x)`` over ``x`` in chunks (bounded memory, one compiled chunk)."""
    n = x.shape[0]
    num_chunks = -(-n // chunk_size)
    pad = num_chunks * chunk_size - n
    xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    xs = xp.reshape(num_chunks, chunk_size, *x.shape[1:])
    out = jax.lax.map(lambda xc: predict_fn(params, xc), xs)
    return out.reshape(num_chunks * chunk_size, *out.shape[2:])[:n]
