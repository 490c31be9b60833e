"""Flax models as log-densities: log-likelihoods, Gaussian priors and gradient estimators.

A model is any ``apply_fn(params, x) -> outputs``. :func:`linen_apply` and
:func:`nnx_apply` build one from a Flax Linen module or an NNX module. The
log-likelihoods here are *batched*: ``loglikelihood_fn(params, (x, y))`` returns one
value per example, so models with BatchNorm (which need the whole minibatch) work.
:func:`per_example` turns one into the per-example form that
``blackjax.sgmcmc.gradients.grad_estimator`` vmaps over, and :func:`grad_estimator`
is the batched equivalent of BlackJAX's estimator:
``grad [log p(theta) + N * mean_i log p(y_i | x_i, theta)]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from blackjax.types import ArrayLikeTree, ArrayTree

from flatjax._util import check_nonnegative, check_positive

__all__ = [
    "linen_apply",
    "nnx_apply",
    "categorical_loglikelihood",
    "gaussian_loglikelihood",
    "gaussian_logprior",
    "weight_decay_to_prior_precision",
    "per_example",
    "logdensity_estimator",
    "grad_estimator",
]


def linen_apply(
    module: Any,
    variables: dict | None = None,
    *,
    train: bool | None = None,
    train_kwarg: str = "train",
) -> Callable:
    """``apply_fn(params, x)`` for a Flax Linen module.

    Parameters
    ----------
    module
        A ``flax.linen.Module``.
    variables
        Non-parameter collections (e.g. ``{"batch_stats": ...}``), held fixed.
    train
        If not ``None``, passed as ``module.apply(..., train=train)``. In training
        mode BatchNorm normalises with the minibatch's statistics; their running
        averages are not updated (use :mod:`flatjax.nn.batchnorm` to recompute them
        for a sample).
    train_kwarg
        Name of the module's training flag.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> module = nn.Dense(2)
    >>> params = module.init(jax.random.key(0), jnp.ones((1, 3)))["params"]
    >>> linen_apply(module)(params, jnp.ones((4, 3))).shape
    (4, 2)
    """
    extra = dict(variables or {})
    kwargs = {} if train is None else {train_kwarg: train}
    mutable = list(extra) if train else False

    def apply_fn(params: ArrayLikeTree, x: jax.Array) -> jax.Array:
        out = module.apply({"params": params, **extra}, x, mutable=mutable, **kwargs)
        return out[0] if mutable else out

    return apply_fn


def nnx_apply(model: Any) -> tuple[Callable, ArrayTree]:
    """``(apply_fn, params)`` for a Flax NNX module, by ``nnx.split`` / ``nnx.merge``.

    Only ``nnx.Param`` variables are the position; other state (e.g. BatchNorm
    statistics) is held fixed at its current value.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> apply_fn, params = nnx_apply(model)
    >>> apply_fn(params, jnp.ones((4, 3))).shape
    (4, 2)
    """
    from flax import nnx

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def apply_fn(params: ArrayLikeTree, x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params, rest)(x)

    return apply_fn, params


def categorical_loglikelihood(apply_fn: Callable) -> Callable:
    """Per-example log-likelihood of integer labels under ``softmax(apply_fn(params, x))``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> ll = categorical_loglikelihood(lambda p, x: x @ p)
    >>> ll(jnp.zeros((2, 4)), (jnp.ones((3, 2)), jnp.array([0, 1, 3]))).round(4)
    Array([-1.3863, -1.3863, -1.3863], dtype=float32)
    """

    def loglikelihood_fn(params: ArrayLikeTree, batch: tuple) -> jax.Array:
        x, y = batch
        logits = apply_fn(params, x)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return jnp.take_along_axis(logp, y[..., None].astype(jnp.int32), axis=-1)[..., 0]

    return loglikelihood_fn


def gaussian_loglikelihood(apply_fn: Callable, noise_scale: float | None = 1.0) -> Callable:
    """Per-example Gaussian log-likelihood for regression.

    With a fixed ``noise_scale`` the position is the model's params. With
    ``noise_scale=None`` the noise is learned: the position is
    ``{"params": model_params, "log_noise": scalar}``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> ll = gaussian_loglikelihood(lambda p, x: x * p, noise_scale=1.0)
    >>> float(ll(jnp.asarray(1.0), (jnp.zeros(1), jnp.zeros(1)))[0])  # -log(2 pi) / 2
    -0.9189...
    """
    if noise_scale is not None:
        noise_scale = check_positive("noise_scale", noise_scale)

    def loglikelihood_fn(position: ArrayLikeTree, batch: tuple) -> jax.Array:
        x, y = batch
        if noise_scale is None:
            params, log_sigma = position["params"], position["log_noise"]
        else:
            params, log_sigma = position, jnp.log(noise_scale)
        resid = (y - apply_fn(params, x)) / jnp.exp(log_sigma)
        per_dim = -0.5 * resid**2 - log_sigma - 0.5 * math.log(2 * math.pi)
        return per_dim.reshape(per_dim.shape[0], -1).sum(axis=-1)

    return loglikelihood_fn


def gaussian_logprior(prior_precision: float) -> Callable:
    """Isotropic Gaussian prior ``N(0, 1 / prior_precision)`` over every leaf.

    With the log-posterior ``log p(theta) + N mean_i log p(y_i|x_i, theta)``, a prior of
    precision ``lambda`` is exactly weight decay ``wd = lambda / N`` on the mean loss
    (see :func:`weight_decay_to_prior_precision`).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> float(gaussian_logprior(1.0)(jnp.zeros(2)))  # -log(2 pi)
    -1.8378...
    """
    prior_precision = check_nonnegative("prior_precision", prior_precision)

    def logprior_fn(position: ArrayLikeTree) -> jax.Array:
        leaves = jax.tree.leaves(position)
        sq = sum(jnp.sum(x.astype(jnp.float32) ** 2) for x in leaves)
        if prior_precision == 0.0:
            return jnp.zeros(()) * sq
        size = sum(x.size for x in leaves)
        return -0.5 * prior_precision * sq + 0.5 * size * math.log(prior_precision / (2 * math.pi))

    return logprior_fn


def weight_decay_to_prior_precision(weight_decay: float, data_size: int) -> float:
    """Prior precision equivalent to ``weight_decay`` on the mean loss: ``N * wd``."""
    return check_nonnegative("weight_decay", weight_decay) * data_size


def per_example(loglikelihood_fn: Callable) -> Callable:
    """Per-example form, ``fn(params, (x_i, y_i))``, as BlackJAX's estimator expects.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> ll = per_example(categorical_loglikelihood(lambda p, x: x @ p))
    >>> ll(jnp.zeros((2, 4)), (jnp.ones(2), jnp.array(1))).shape
    ()
    """

    def single(params: ArrayLikeTree, example: tuple) -> jax.Array:
        batch = jax.tree.map(lambda a: jnp.asarray(a)[None], example)
        return loglikelihood_fn(params, batch)[0]

    return single


def logdensity_estimator(
    logprior_fn: Callable, loglikelihood_fn: Callable, data_size: int
) -> Callable:
    """Unbiased minibatch estimate ``log p(theta) + N * mean_i log p(y_i | x_i, theta)``."""
    if isinstance(data_size, bool) or not isinstance(data_size, int) or data_size < 1:
        raise ValueError(f"`data_size` must be a positive integer, got {data_size!r}")

    def estimate(position: ArrayLikeTree, minibatch: tuple) -> jax.Array:
        return logprior_fn(position) + data_size * jnp.mean(loglikelihood_fn(position, minibatch))

    return estimate


def grad_estimator(logprior_fn: Callable, loglikelihood_fn: Callable, data_size: int) -> Callable:
    """Batched equivalent of ``blackjax.sgmcmc.gradients.grad_estimator``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> ll = categorical_loglikelihood(lambda p, x: x @ p)
    >>> g = grad_estimator(gaussian_logprior(1.0), ll, data_size=100)
    >>> g(jnp.zeros((2, 4)), (jnp.ones((3, 2)), jnp.array([0, 1, 3]))).shape
    (2, 4)
    """
    return jax.grad(logdensity_estimator(logprior_fn, loglikelihood_fn, data_size))
