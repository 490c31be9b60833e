"""Flax models as log-densities: log-likelihoods, Gaussian priors and gradient estimators.

A model is any ``apply_fn(params, x) -> outputs``. :func:`linen_apply` and
:func:`nnx_apply` build one from a Flax Linen module or an NNX module. The
log-likelihoods here are *batched*: ``loglikelihood_fn(params, (x, y))`` returns one
value per example, so models with BatchNorm (which need the whole minibatch) work.
:func:`per_example` turns one into the per-example form that
``blackjax.sgmcmc.gradients.grad_estimator`` vmaps over, and :func:`grad_estimator`
is the batched equivalent of BlackJAX's estimator:
``grad [log p(theta) + N * mean_i log p(y_i | x_i, theta)]``.

Bad inputs fail with the argument named: a Linen module given to :func:`nnx_apply`
(or an NNX one to :func:`linen_apply`) is a ``TypeError`` at once; a minibatch that
is not an ``(x, y)`` pair, ``x`` and ``y`` with different numbers of rows, an ``x``
the model cannot take, or outputs that do not match ``y`` are ``TypeError`` /
``ValueError`` when the log-likelihood is traced (shapes are static under ``jit``,
so none of these checks costs anything per step).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.types import ArrayLikeTree, ArrayTree

from flatjax._util import check_function, check_nonnegative, check_positive, flax_module_kind

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
    kind = flax_module_kind(module)
    if kind == "nnx":
        raise TypeError(
            f"`module` is a Flax NNX module ({type(module).__name__}); `linen_apply` takes a "
            f"`flax.linen.Module`. For NNX use `apply_fn, params = "
            f"flatjax.nn.glue.nnx_apply(model)`."
        )
    if kind is None and not callable(getattr(module, "apply", None)):
        raise TypeError(
            f"`module` must be a `flax.linen.Module`, got {type(module).__name__}; "
            f"for an NNX module use `flatjax.nn.glue.nnx_apply`, for a plain function "
            f"`apply_fn(params, x)` use it directly."
        )
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

    kind = flax_module_kind(model)
    if kind != "nnx" or not isinstance(model, nnx.Module):
        if kind == "linen":
            raise TypeError(
                f"`model` is a Flax Linen module ({type(model).__name__}); `nnx_apply` takes "
                f"an `nnx.Module`. For Linen use `apply_fn = flatjax.nn.glue.linen_apply(module)` "
                f"with `params = module.init(rng_key, x)['params']`."
            )
        raise TypeError(
            f"`model` must be a Flax NNX module (`nnx.Module`), got {type(model).__name__}; "
            f"for a Linen module use `flatjax.nn.glue.linen_apply`."
        )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def apply_fn(params: ArrayLikeTree, x: jax.Array) -> jax.Array:
        # copy=True: the merged module must not write into the caller's variables
        # (BatchNorm statistics in training mode), which fails under jit/grad
        return nnx.merge(graphdef, params, rest, copy=True)(x)

    return apply_fn, params


_APPLY_SIGNATURE = "apply_fn(params, x) -> outputs"
_APPLY_HINT = "then pass `apply_fn`"


def _split_batch(batch: Any) -> tuple[Any, Any]:
    """``(x, y)`` of a minibatch, or ``TypeError`` naming what it is instead."""
    if isinstance(batch, tuple | list) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, tuple | list):
        what = f"a {type(batch).__name__} of {len(batch)} items"
    elif isinstance(batch, jax.Array | np.ndarray):
        what = f"a single array of shape {jnp.shape(batch)}"
    else:
        what = f"a {type(batch).__name__}"
    raise TypeError(
        f"the minibatch (`batch`) must be an `(x, y)` pair of arrays with the same leading "
        f"(batch) size, got {what}. Pass `data=(x, y)` to the run loop, or "
        f"`(x[idx], y[idx])` to `step`."
    )


def _shapes(tree: Any) -> Any:
    """``x``'s shape, or the pytree of its leaves' shapes."""
    return jax.tree.map(jnp.shape, tree)


def _check_rows(x: Any, y: Any) -> None:
    """``ValueError`` unless every leaf of ``x`` and ``y`` has the same leading size."""
    rows = {
        name: {jnp.shape(leaf)[0] for leaf in jax.tree.leaves(t) if jnp.ndim(leaf) >= 1}
        for name, t in (("x", x), ("y", y))
    }
    if len(rows["x"] | rows["y"]) > 1:
        raise ValueError(
            f"the minibatch's `x` and `y` must have the same number of rows (leading "
            f"size), got x of shape {_shapes(x)} and y of shape {_shapes(y)}"
        )


def _model_errors() -> tuple[type[BaseException], ...]:
    flax_errors = sys.modules.get("flax.errors")
    extra = (flax_errors.FlaxError,) if flax_errors is not None else ()
    return (TypeError, ValueError, *extra)


def _apply(apply_fn: Callable, params: ArrayLikeTree, x: Any, y: Any) -> jax.Array:
    """``apply_fn(params, x)``; a shape error inside the model names ``x``'s shape.

    Runs at trace time under ``jit``: the model's own shape errors (``dot_general``,
    broadcasting, Flax's parameter-shape checks) become a ``ValueError`` that says
    which input the model could not take, with the original error chained.
    """
    try:
        return apply_fn(params, x)
    except (jax.errors.JAXTypeError, jax.errors.JAXIndexError):
        raise
    except _model_errors() as err:
        raise ValueError(
            f"the model (`apply_fn(params, x)`) could not take the minibatch's `x` of "
            f"shape {_shapes(x)} (y has shape {_shapes(y)}): does x have the input shape "
            f"the model was built for? The model raised {type(err).__name__}: {err}"
        ) from err


def categorical_loglikelihood(apply_fn: Callable) -> Callable:
    """Per-example log-likelihood of integer labels under ``softmax(apply_fn(params, x))``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> ll = categorical_loglikelihood(lambda p, x: x @ p)
    >>> ll(jnp.zeros((2, 4)), (jnp.ones((3, 2)), jnp.array([0, 1, 3]))).round(4)
    Array([-1.3863, -1.3863, -1.3863], dtype=float32)
    """
    check_function("apply_fn", apply_fn, _APPLY_SIGNATURE, _APPLY_HINT)

    def loglikelihood_fn(params: ArrayLikeTree, batch: tuple) -> jax.Array:
        x, y = _split_batch(batch)
        _check_rows(x, y)
        logits = _apply(apply_fn, params, x, y)
        if jnp.shape(y) != jnp.shape(logits)[:-1]:
            raise ValueError(
                f"the labels `y` of shape {jnp.shape(y)} do not match the model's logits "
                f"of shape {jnp.shape(logits)}: y must be integer class labels of shape "
                f"{jnp.shape(logits)[:-1]} (one per row; not one-hot)"
            )
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
    check_function("apply_fn", apply_fn, _APPLY_SIGNATURE, _APPLY_HINT)
    if noise_scale is not None:
        noise_scale = check_positive("noise_scale", noise_scale)

    def loglikelihood_fn(position: ArrayLikeTree, batch: tuple) -> jax.Array:
        x, y = _split_batch(batch)
        _check_rows(x, y)
        if noise_scale is None:
            try:
                params, log_sigma = position["params"], position["log_noise"]
            except (KeyError, TypeError, IndexError):
                raise TypeError(
                    "with `noise_scale=None` the position must be a dict "
                    "{'params': model_params, 'log_noise': scalar}, got "
                    + (
                        f"a dict with keys {sorted(map(str, position))}"
                        if isinstance(position, dict)
                        else f"a {type(position).__name__}"
                    )
                ) from None
        else:
            params, log_sigma = position, jnp.log(noise_scale)
        out = _apply(apply_fn, params, x, y)
        try:
            shape = jnp.broadcast_shapes(jnp.shape(y), jnp.shape(out))
        except ValueError:
            shape = None
        if shape not in (jnp.shape(y), jnp.shape(out)):
            raise ValueError(
                f"the targets `y` of shape {jnp.shape(y)} do not match the model's outputs "
                f"of shape {jnp.shape(out)} (they would broadcast to "
                f"{shape or 'nothing'}): give y the outputs' shape"
            )
        resid = (y - out) / jnp.exp(log_sigma)
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
    check_function("logprior_fn", logprior_fn, "logprior_fn(params) -> scalar")
    check_function(
        "loglikelihood_fn",
        loglikelihood_fn,
        "loglikelihood_fn(params, (x, y)) -> per-example values",
        "then pass `flatjax.nn.glue.categorical_loglikelihood(apply_fn)` (or "
        "`gaussian_loglikelihood`)",
    )
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
