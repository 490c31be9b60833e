"""Synthetic step-time problems shared by the speed benchmarks (``step_overhead``, ``gpu``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from flatjax.nn.glue import (
    categorical_loglikelihood,
    gaussian_logprior,
    grad_estimator,
    linen_apply,
)

__all__ = ["Problem", "make_problem", "step_inputs"]


class Problem(NamedTuple):
    """A model, its initial parameters, a synthetic training set and its minibatch size."""

    name: str
    params: Any
    grad_fn: Callable
    data: tuple[jax.Array, jax.Array]
    batch_size: int
    description: str = ""


def make_problem(
    name: str,
    model: Any,
    input_shape: Sequence[int],
    batch_size: int,
    num_data: int,
    data_size: int,
    description: str = "",
) -> Problem:
    """Gaussian inputs, uniform labels, N(0, 1) prior, likelihood scaled to ``data_size``."""
    kx, ky, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (num_data, *input_shape))
    y = jax.random.randint(ky, (num_data,), 0, 10)
    params = jax.jit(model.init)(kp, x[:1])["params"]
    loglik = categorical_loglikelihood(linen_apply(model))
    grad_fn = grad_estimator(gaussian_logprior(1.0), loglik, data_size)
    return Problem(name, params, grad_fn, (x, y), batch_size, description)


def step_inputs(
    problem: Problem, num_steps: int, num_chains: int | None, seed: int, step_size: float
):
    """Keys, minibatch indices and step sizes for ``num_steps`` (per chain if given)."""
    lead = () if num_chains is None else (num_chains,)
    kk, ki = jax.random.split(jax.random.key(seed))
    keys = jax.random.split(kk, (*lead, num_steps))
    num_data = problem.data[1].shape[0]
    idx = jax.random.randint(ki, (*lead, num_steps, problem.batch_size), 0, num_data)
    return keys, idx, jnp.full((num_steps,), step_size)
