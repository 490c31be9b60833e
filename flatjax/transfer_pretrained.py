"""Few-shot Bayesian transfer from the user's own pretrained network.

:func:`finetune_pretrained` runs SA-BMA or any of its baselines
(:data:`flatjax.transfer.TRANSFER_METHODS`) on a pretrained Flax model (Linen or
NNX) or any ``apply_fn(params, x) -> logits``, through the same code path as the
pipeline of :func:`flatjax.transfer.run_transfer` (same data and seed: the same
numbers). :func:`load_params` reads pretrained weights from an orbax checkpoint or a
``flax.serialization`` msgpack file into the structure of a model's parameters.

What is trained and from where:

* **Trainable block** (``trainable``): the normalisation layers and the head
  (SA-BMA's scheme, the default), the head alone, everything, or a boolean mask.
  A network without normalisation layers under ``"norm_and_head"`` trains its head
  alone (a warning says so).
* **Head**: re-initialised with mean 0 and variance ``head_variance`` (alpha) when
  ``num_classes`` differs from the pretrained head's width (its leaves' last axis
  becomes ``num_classes``), kept otherwise (``reinit_head`` forces either).
* **Without a source posterior** (a downloaded model): the frozen part stays at the
  pretrained weights; the trainable block's initial posterior (SA-BMA's starting
  ``q``) is MOPED-style, scaled to the weights: mean ``w``, diagonal variance
  ``(delta |w|)^2`` (``moped_delta = 0.1``, floored at ``config.min_variance``),
  and ``K = config.swag_rank`` small random deviation columns (``0.1`` of each
  entry's standard deviation). The prior every method regularises with is the
  pipeline's: weight decay ``config.weight_decay`` (an isotropic Gaussian at 0;
  SA-BMA's KL term uses it too); MFVI uses MOPED's own prior at the initial mean
  on pretrained leaves and ``N(0, FRESH_PRIOR_STD^2)`` (sd 1) on a re-initialised
  head (a prior at the zero head with MOPED's floored scale would pin it there).
* **With a source posterior** (a ``LowRankGaussian`` or a ``SWAGState`` over
  ``params``): the trainable block starts at its marginal and the frozen part is
  drawn from it at every SA-BMA step and for every BMA sample
  (``config.backbone="sample"``), as in the pipeline.
* **BatchNorm**: pass the Linen module with its variables (``params`` =
  ``{"params": ..., "batch_stats": ...}``) or the NNX module. Training normalises
  with minibatch statistics; every BMA sample's running statistics are recomputed
  on the target training inputs before it predicts
  (:func:`flatjax.nn.batchnorm.recompute_batch_stats`). A plain ``apply_fn`` is
  used as given.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flatjax import transfer as pipeline
from flatjax._util import flax_module_kind
from flatjax.nn import glue, masks
from flatjax.nn.batchnorm import average_batch_stats, recompute_batch_stats
from flatjax.transfer import SplitParams, TransferConfig, TransferResult
from flatjax.vi import lowrank_gaussian as lrg
from flatjax.vi import swag

__all__ = ["finetune_pretrained", "load_params", "save_params", "TRAINABLE"]

#: The named ``trainable`` options of :func:`finetune_pretrained`.
TRAINABLE = ("norm_and_head", "head", "all")


@dataclasses.dataclass(frozen=True)
class _Model:
    """A model as the fine-tuning needs it (see :func:`_as_model`)."""

    train_apply: Callable  # (params, x) -> logits; BatchNorm on minibatch statistics
    params: Any
    eval_fn: Callable | None = None  # (params, stats, x) -> logits with running statistics
    stats_fn: Callable | None = None  # (params, x) -> recomputed statistics


def _as_model(apply_fn: Any, params: Any, train_kwarg: str) -> _Model:
    kind = flax_module_kind(apply_fn)
    if kind == "nnx":
        return _nnx_model(apply_fn, params)
    if kind == "linen" or (
        kind is None and hasattr(apply_fn, "init") and hasattr(apply_fn, "apply")
    ):
        return _linen_model(apply_fn, params, train_kwarg)
    if not callable(apply_fn):
        raise TypeError(
            f"`apply_fn` must be `apply_fn(params, x) -> logits`, a Flax Linen module or an "
            f"NNX module, got {type(apply_fn).__name__}"
        )
    if params is None:
        raise ValueError("`params` is None: give the pretrained parameter pytree")
    return _Model(apply_fn, params)


def _linen_model(module: Any, params: Any, train_kwarg: str) -> _Model:
    if params is None:
        raise ValueError("`params` is None: give the Linen module's pretrained variables")
    # a variables dict ({"params": ..., "batch_stats": ...}) or the params collection
    is_variables = isinstance(params, Mapping) and "params" in params
    variables = dict(_unfreeze(params)) if is_variables else {"params": params}
    p = variables.pop("params")
    if "batch_stats" not in variables:
        apply = glue.linen_apply(module, variables or None)
        return _Model(apply, p)
    others = {k: v for k, v in variables.items() if k != "batch_stats"}
    template = variables["batch_stats"]

    def train_apply(params, x):
        out, _ = module.apply(
            {"params": params, **variables}, x, mutable=["batch_stats"], **{train_kwarg: True}
        )
        return out

    def eval_fn(params, stats, x):
        return module.apply(
            {"params": params, **others, "batch_stats": stats}, x, **{train_kwarg: False}
        )

    def stats_fn(params, x):
        return recompute_batch_stats(
            module, params, template, x, batch_size=_stats_batch(x), train_kwarg=train_kwarg
        )

    return _Model(train_apply, p, eval_fn, stats_fn)


def _stats_batch(x: jax.Array) -> int:
    n = x.shape[0]
    return n if n <= 1024 else 256


def _nnx_model(model: Any, params: Any) -> _Model:
    from flax import nnx

    graphdef, own, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    p = own if params is None else params
    if jax.tree.structure(p) != jax.tree.structure(own):
        raise ValueError(
            "`params` does not have the structure of the NNX module's parameters "
            "(`nnx.split(model, nnx.Param, ...)`); pass `params=None` to use the module's own"
        )
    if not jax.tree.leaves(stats):
        apply, _ = glue.nnx_apply(model)
        return _Model(apply, p)

    def merged(params, batch_stats, train):
        # fresh Variable objects in the current trace (BatchNorm mutates its statistics)
        copy = lambda tree: jax.tree.map(lambda v: v, tree)  # noqa: E731
        m = nnx.merge(graphdef, copy(params), copy(batch_stats), copy(rest))
        for _, sub in nnx.iter_modules(m):
            if isinstance(sub, nnx.BatchNorm):
                sub.use_running_average = not train
        return m

    def train_apply(params, x):
        return merged(params, stats, True)(x)

    def eval_fn(params, batch_stats, x):
        return merged(params, batch_stats, False)(x)

    def stats_fn(params, x):
        def stats_from(old, xs):
            m = merged(params, old, True)
            m(xs)
            return nnx.state(m, nnx.BatchStat)

        return average_batch_stats(stats_from, stats, x, _stats_batch(x))

    return _Model(train_apply, p, eval_fn, stats_fn)


def _top_names(params: Any) -> list[str]:
    try:
        return [str(k) for k in params.keys()]
    except AttributeError:
        return []


def _check_heads(head: str | Sequence[str], params: Any) -> tuple[str, ...]:
    heads = (head,) if isinstance(head, str) else tuple(head)
    if not heads or not all(isinstance(h, str) for h in heads):
        raise ValueError(f"`head` must be a name or a sequence of names, got {head!r}")
    names = _top_names(params)
    missing = [h for h in heads if h not in names]
    if missing:
        raise ValueError(
            f"`head`={head!r}: {missing} not a top-level name in `params`; its top-level "
            f"names are {sorted(names)}"
        )
    return heads


def _head_width(params: Any, heads: tuple[str, ...]) -> int:
    """The pretrained head's output width: the last axis of the last head module's leaves."""
    leaves = [x for x in jax.tree.leaves(params[heads[-1]]) if jnp.ndim(x) >= 1]
    if not leaves:
        raise ValueError(f"the head {heads[-1]!r} has no array leaf with an output axis")
    widths = [jnp.shape(x)[-1] for x in leaves]
    return max(set(widths), key=widths.count)


def _reshape_head(params: Any, heads: tuple[str, ...], old: int, new: int) -> tuple[Any, list]:
    """Zero leaves of the head modules whose last axis is ``old``, reshaped to ``new``."""
    changed = []

    def swap(path, leaf):
        name = masks._path_str(path)
        if name.split("/")[0] in heads and jnp.ndim(leaf) >= 1 and jnp.shape(leaf)[-1] == old:
            changed.append(name)
            return jnp.zeros((*jnp.shape(leaf)[:-1], new), jnp.asarray(leaf).dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(swap, params), changed


def _trainable_mask(trainable: Any, params: Any, heads: tuple[str, ...]) -> Any:
    head_mask = masks.path_mask(params, lambda p: p.split("/")[0] in heads)
    if isinstance(trainable, str):
        if trainable == "all":
            return jax.tree.map(lambda _: True, params)
        if trainable == "head":
            return head_mask
        if trainable == "norm_and_head":
            mask = masks.norm_and_head_mask(params, head=heads)
            if masks.count_selected(mask) == masks.count_selected(head_mask):
                warnings.warn(
                    f"trainable='norm_and_head': `params` has no normalisation layer "
                    f"(pattern {masks.NORM_PATTERN}); training the head alone ({list(heads)})",
                    UserWarning,
                    stacklevel=3,
                )
            return mask
        raise ValueError(
            f"`trainable` must be one of {TRAINABLE} or a boolean mask pytree, got {trainable!r}"
        )
    if jax.tree.structure(trainable) != jax.tree.structure(params):
        want, got = set(masks.leaf_paths(params)), set(masks.leaf_paths(trainable))
        raise ValueError(
            f"the `trainable` mask must have the structure of `params`: missing "
            f"{sorted(want - got)[:8]}, unexpected {sorted(got - want)[:8]}"
        )
    bad = [
        p
        for p, m in zip(masks.leaf_paths(params), jax.tree.leaves(trainable), strict=True)
        if not (
            isinstance(m, bool | np.bool_) or (jnp.ndim(m) == 0 and jnp.asarray(m).dtype == bool)
        )
    ]
    if bad:
        raise ValueError(
            f"the `trainable` mask must hold one bool per leaf; not bools at {bad[:8]}"
        )
    if masks.count_selected(trainable) == 0:
        raise ValueError("the `trainable` mask selects no parameter (every leaf is False)")
    return jax.tree.map(bool, trainable)


def _moped_posterior(
    trainable: dict, fresh: set, config: TransferConfig, delta: float, key: jax.Array
) -> lrg.LowRankGaussian:
    """MOPED-style q over the trainable leaves; re-initialised head leaves at ``N(0, alpha)``."""
    k, head_variance, min_variance = config.swag_rank, config.head_variance, config.min_variance

    @jax.jit  # one compiled program instead of a dozen eager ops per leaf
    def build(trainable: dict, key: jax.Array) -> lrg.LowRankGaussian:
        mean, log_scale, deviations = {}, {}, {}
        keys = iter(jax.random.split(key, max(len(trainable), 1)))
        for path, leaf in trainable.items():
            leaf = jnp.asarray(leaf)
            if path in fresh:
                mean[path] = jnp.zeros_like(leaf)
                var = jnp.full_like(leaf, head_variance)
            else:
                mean[path] = leaf
                var = jnp.maximum((delta * jnp.abs(leaf)) ** 2, min_variance)
            # Sigma's diagonal part is sigma^2 / 2 = var
            log_scale[path] = 0.5 * jnp.log(2.0 * var)
            deviations[path] = (
                0.1
                * jnp.sqrt(var)[..., None]
                * jax.random.normal(next(keys), (*leaf.shape, k), leaf.dtype)
            )
        return lrg.LowRankGaussian(mean, log_scale, deviations)

    return build(dict(trainable), key)


def _source_q(
    source_posterior: Any, params: Any, fresh_shapes: dict, min_variance: float
) -> lrg.LowRankGaussian:
    if isinstance(source_posterior, swag.SWAGState):
        q = swag.to_lowrank_gaussian(source_posterior, min_variance=min_variance)
    elif isinstance(source_posterior, lrg.LowRankGaussian):
        q = source_posterior
    else:
        raise TypeError(
            f"`source_posterior` must be None, a LowRankGaussian or a SWAGState over `params`, "
            f"got {type(source_posterior).__name__}"
        )
    k = lrg.rank(q, "source_posterior")
    want = dict(zip(masks.leaf_paths(params), map(jnp.shape, jax.tree.leaves(params)), strict=True))
    got_paths = masks.leaf_paths(q.mean)
    got = dict(zip(got_paths, map(jnp.shape, jax.tree.leaves(q.mean)), strict=True))
    diff = [
        f"{p}: {got.get(p)} vs {want.get(p)}"
        for p in sorted(set(want) | set(got))
        if p not in fresh_shapes and got.get(p) != want.get(p)
    ]
    if diff or jax.tree.structure(q.mean) != jax.tree.structure(params):
        raise ValueError(
            "`source_posterior` does not match `params` (posterior vs params shapes): "
            + "; ".join(diff[:8] or ["different tree structure"])
        )

    def fresh(tree, extra=()):
        return jax.tree_util.tree_map_with_path(
            lambda path, a: (
                jnp.zeros((*fresh_shapes[n], *extra), a.dtype)
                if (n := masks._path_str(path)) in fresh_shapes
                else a
            ),
            tree,
        )

    return lrg.LowRankGaussian(fresh(q.mean), fresh(q.log_scale), fresh(q.deviations, (k,)))


def finetune_pretrained(
    apply_fn: Any,
    params: Any,
    train: tuple[Any, Any],
    method: str = "sabma",
    num_classes: int | None = None,
    head: str | Sequence[str] = "head",
    trainable: str | Any = "norm_and_head",
    source_posterior: Any = None,
    seed: int = 0,
    *,
    validation: tuple[Any, Any] | None = None,
    config: TransferConfig | None = None,
    reinit_head: bool | None = None,
    moped_delta: float = 0.1,
    train_kwarg: str = "train",
    progress: bool | None = None,
    **hyperparameters: Any,
) -> TransferResult:
    """Few-shot fine-tuning of a pretrained network with SA-BMA or a baseline.

    Parameters
    ----------
    apply_fn
        ``apply_fn(params, x) -> logits``; or a Flax Linen module (``params`` its
        ``params`` collection, or its variables with ``batch_stats``); or an NNX
        module (``params=None`` takes its own ``nnx.Param`` state, as does
        :func:`flatjax.nn.glue.nnx_apply`). Pass the module itself for BatchNorm
        statistics to be recomputed on the target data.
    params
        The pretrained parameter pytree (e.g. from :func:`load_params`).
    train
        The few-shot target set ``(x_train, y_train)`` (integer labels).
    method
        A :data:`flatjax.transfer.TRANSFER_METHODS` entry.
    num_classes
        Target classes; the head is re-initialised (mean 0, variance
        ``head_variance``) when this differs from its pretrained width. ``None``:
        keep the pretrained head's width.
    head
        Top-level name(s) of the classifier head in ``params``.
    trainable
        ``"norm_and_head"`` (SA-BMA's scheme), ``"head"``, ``"all"``, or a boolean
        mask pytree shaped like ``params``.
    source_posterior
        ``None`` (frozen part at the pretrained weights, MOPED-style initial ``q``),
        or a ``LowRankGaussian`` / ``SWAGState`` over ``params`` to start ``q`` from
        and draw the frozen part from.
    seed
        Seeds every random draw (the pipeline's offsets: the same seed and data
        give :func:`flatjax.transfer.run_transfer`'s numbers).
    validation
        Held-out ``(x_val, y_val)`` to fit the temperature on (optional).
    config
        Hyper-parameters (:class:`flatjax.transfer.TransferConfig`; its source
        fields are unused); ``method``, ``seed`` and ``hyperparameters`` override it.
    reinit_head
        Force (``True``) or forbid (``False``) the head's re-initialisation.
    moped_delta
        ``delta`` of the MOPED-style initial variance ``(delta |w|)^2``.
    train_kwarg
        Name of a Linen module's training flag (BatchNorm models).
    progress
        A progress bar over the epochs on stderr (``None``: when stderr is a
        terminal, outside CI).
    **hyperparameters
        Any :class:`~flatjax.transfer.TransferConfig` field, e.g. ``epochs=50``.

    Returns
    -------
    :class:`flatjax.transfer.TransferResult`: ``predict(x)`` (BMA probabilities,
    temperature-scaled when fitted), ``evaluate(x, y)``, ``flatness()``, the
    ``samples``, ``q`` and ``temperature``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> class Net(nn.Module):
    ...     classes: int
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         x = nn.LayerNorm(name="norm")(nn.relu(nn.Dense(8)(x)))
    ...         return nn.Dense(self.classes, name="head")(x)
    >>> x = jax.random.normal(jax.random.key(0), (12, 4))
    >>> y = jnp.arange(12) % 3
    >>> pretrained = Net(5).init(jax.random.key(1), x)["params"]  # a 5-class head
    >>> result = finetune_pretrained(Net(3), pretrained, (x, y), method="sabma",
    ...                              num_classes=3, epochs=2, batch_size=6, num_bma=4)
    >>> result.predict(x).shape
    (12, 3)
    >>> sorted(result.samples)  # the norm layer and the fresh head, 4 BMA samples each
    ['head/bias', 'head/kernel', 'norm/bias', 'norm/scale']
    """
    if config is not None and not isinstance(config, TransferConfig):
        raise TypeError(f"`config` must be a TransferConfig, got {type(config).__name__}")
    fields = {f.name for f in dataclasses.fields(TransferConfig)}
    unknown = sorted(set(hyperparameters) - fields)
    if unknown:
        raise TypeError(
            f"finetune_pretrained() got unknown keyword argument(s) {unknown}; "
            f"hyper-parameters are TransferConfig fields: {sorted(fields)}"
        )
    config = dataclasses.replace(
        config or TransferConfig(), method=method, seed=seed, **hyperparameters
    ).validate()
    if not (math.isfinite(moped_delta) and moped_delta > 0):
        raise ValueError(f"`moped_delta` must be a finite number > 0, got {moped_delta!r}")
    x, y = _check_data("train", train)
    model = _as_model(apply_fn, params, train_kwarg)
    params = model.params
    heads = _check_heads(head, params)
    width = _head_width(params, heads)
    if num_classes is None:
        num_classes = width
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an integer >= 2, got {num_classes!r}")
    if int(jnp.max(y)) >= num_classes or int(jnp.min(y)) < 0:
        raise ValueError(
            f"`train` labels must lie in [0, num_classes={num_classes}), got "
            f"[{int(jnp.min(y))}, {int(jnp.max(y))}]"
        )
    reinit = (num_classes != width) if reinit_head is None else bool(reinit_head)
    if not reinit and num_classes != width:
        raise ValueError(
            f"`reinit_head`=False but `num_classes`={num_classes} differs from the pretrained "
            f"head's width {width}"
        )
    fresh: list = []
    if reinit:
        params, fresh = _reshape_head(params, heads, width, num_classes)
    _check_logits(model.train_apply, params, x, num_classes, reinit)
    mask = _trainable_mask(trainable, params, heads)
    selected = dict(zip(masks.leaf_paths(params), jax.tree.leaves(mask), strict=True))
    frozen_fresh = [p for p in fresh if not selected[p]]
    if frozen_fresh:
        raise ValueError(
            f"the head is re-initialised for num_classes={num_classes} but `trainable` "
            f"freezes {frozen_fresh}: a fresh head must be trained"
        )
    split = SplitParams(params, mask)
    pipeline.check_eta(config, int(x.shape[0]))
    init_key, run_key = pipeline._finetune_keys(config.seed)
    if source_posterior is None:
        w, frozen = split.split(params)
        q0 = _moped_posterior(w, set(fresh), config, moped_delta, init_key)
        backbone_q = None
    else:
        shapes = dict(
            zip(masks.leaf_paths(params), map(jnp.shape, jax.tree.leaves(params)), strict=True)
        )
        source_q = _source_q(
            source_posterior, params, {p: shapes[p] for p in fresh}, config.min_variance
        )
        config = dataclasses.replace(config, swag_rank=lrg.rank(source_q))
        head_leaves = {p: v for p, v in split.split(params)[0].items() if p in fresh}
        q0 = pipeline.initial_posterior(config, split, source_q, head_leaves, init_key)
        _, frozen = split.split(source_q.mean)
        backbone_q = lrg.LowRankGaussian(*(split.split(part)[1] for part in source_q))
    fit = pipeline.finetune_posterior(
        config,
        (x, y),
        model.train_apply,
        split,
        q0,
        frozen,
        backbone_q,
        run_key,
        fresh=fresh,
        progress=progress,
    )
    stats_fn = None if model.stats_fn is None else (lambda p: model.stats_fn(p, x))
    result = pipeline.transfer_result(
        config, fit, split, model.train_apply, (x, y), frozen, model.eval_fn, stats_fn, heads
    )
    if validation is not None:
        result = result.with_temperature(*_check_data("validation", validation))
    return result


def _check_data(name: str, pair: Any) -> tuple[jax.Array, jax.Array]:
    if not (isinstance(pair, tuple | list) and len(pair) == 2):
        raise ValueError(f"`{name}` must be an (x, y) pair, got a {type(pair).__name__}")
    x, y = jnp.asarray(pair[0]), jnp.asarray(pair[1])
    if y.ndim != 1 or x.shape[:1] != y.shape or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(
            f"`{name}` must be (x, y) with integer labels y of shape (N,) and x of shape "
            f"(N, ...), got x {x.shape} and y {y.shape} ({y.dtype})"
        )
    return x, y


def _check_logits(
    apply: Callable, params: Any, x: jax.Array, num_classes: int, reinit: bool
) -> None:
    try:
        shape = jax.eval_shape(apply, params, x[:2]).shape
    except Exception as err:  # the model's own error, re-raised with what was asked of it
        hint = (
            f" The head was re-initialised for num_classes={num_classes}: `apply_fn` must be "
            f"the model built with {num_classes} outputs (a Linen module checks parameter shapes)."
            if reinit
            else ""
        )
        raise ValueError(
            f"`apply_fn` could not run `params` on x of shape {tuple(x.shape[1:])} per example."
            f"{hint} The model raised {type(err).__name__}: {err}"
        ) from err
    if shape[-1] != num_classes:
        raise ValueError(
            f"`apply_fn` gives {shape[-1]} logits per example, expected num_classes={num_classes}"
        )


# ---------------------------------------------------------------- loading weights


def _flat(tree: Any) -> dict[str, Any]:
    return dict(zip(masks.leaf_paths(tree), jax.tree.leaves(tree), strict=True))


def _is_nnx_state(tree: Any) -> bool:
    return type(tree).__module__.startswith("flax.nnx") and hasattr(tree, "flat_state")


def _pure(tree: Any) -> Any:
    if _is_nnx_state(tree):
        from flax import nnx

        return nnx.to_pure_dict(tree)
    return tree


def save_params(path: str | Path, params: Any) -> Path:
    """Write ``params`` as a msgpack file (``*.msgpack``) or an orbax checkpoint (else).

    Examples
    --------
    >>> import tempfile, os, jax.numpy as jnp
    >>> path = os.path.join(tempfile.mkdtemp(), "w.msgpack")
    >>> _ = save_params(path, {"head": {"bias": jnp.zeros(2)}})
    >>> load_params(path)["head"]["bias"]
    Array([0., 0.], dtype=float32)
    """
    from flax import serialization

    path = Path(path).absolute()
    pure = jax.tree.map(np.asarray, _pure(params))
    if path.suffix == ".msgpack":
        path.write_bytes(serialization.msgpack_serialize(pure))
    else:
        import orbax.checkpoint as ocp

        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(path, pure)
        checkpointer.wait_until_finished()
    return path


def load_params(
    path: str | Path, like: Any = None, *, head: str | Sequence[str] | None = None
) -> Any:
    """Pretrained weights from an orbax checkpoint (a folder) or a msgpack file.

    Parameters
    ----------
    path
        An orbax checkpoint folder, or a file written by
        ``flax.serialization.to_bytes`` / ``msgpack_serialize`` (or :func:`save_params`).
    like
        A template with the model's structure (e.g. ``model.init(key, x)["params"]``
        or an NNX module's ``nnx.State``): the result has its structure and dtypes.
        A checkpoint of a whole variables dict or train state is read from its
        ``"params"`` entry when ``like`` has none. ``None``: the raw nested dict.
    head
        Top-level name(s) (of ``like`` or of its ``"params"``) whose leaves may have
        other shapes than ``like``'s (a
        head trained for another number of classes, re-initialised by
        :func:`finetune_pretrained`); they keep the checkpoint's shapes.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the checkpoint's keys or shapes do not match ``like``, naming the
        missing, unexpected and mis-shaped entries.

    Examples
    --------
    >>> import tempfile, os, jax, jax.numpy as jnp, flax.linen as nn
    >>> params = nn.Dense(3).init(jax.random.key(0), jnp.ones((1, 2)))["params"]
    >>> path = save_params(os.path.join(tempfile.mkdtemp(), "ckpt"), params)  # orbax
    >>> restored = load_params(path, like=params)
    >>> bool(jnp.all(restored["kernel"] == params["kernel"]))
    True
    """
    from flax import serialization

    path = Path(path).absolute()
    if path.is_dir():
        import orbax.checkpoint as ocp

        raw = ocp.StandardCheckpointer().restore(path)
    elif path.is_file():
        try:
            raw = serialization.msgpack_restore(path.read_bytes())
        except Exception as err:
            raise ValueError(
                f"`path`={str(path)!r} is neither an orbax checkpoint folder nor a msgpack "
                f"file ({type(err).__name__}: {err})"
            ) from err
    else:
        raise FileNotFoundError(f"`path`={str(path)!r} does not exist")
    raw = _unfreeze(raw)
    if like is None:
        return jax.tree.map(jnp.asarray, raw)
    template = _unfreeze(_pure(like))
    if (
        isinstance(raw, dict)
        and "params" in raw
        and not (isinstance(template, dict) and "params" in template)
    ):
        raw = raw["params"]
    heads = () if head is None else ((head,) if isinstance(head, str) else tuple(head))
    want, got = _flat(template), _flat(raw)
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    shapes = [
        f"{p}: {tuple(np.shape(got[p]))} in the checkpoint vs {tuple(np.shape(want[p]))}"
        for p in sorted(set(want) & set(got))
        if not _under_head(p, heads) and np.shape(got[p]) != np.shape(want[p])
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing from the checkpoint: {missing[:10]}")
        if unexpected:
            parts.append(f"not in the model: {unexpected[:10]}")
        if shapes:
            parts.append("shapes differ: " + "; ".join(shapes[:10]))
        raise ValueError(
            f"the checkpoint at {str(path)!r} does not match the model's parameters "
            f"(`like`): " + ". ".join(parts)
        )
    dtypes = {p: jnp.asarray(v).dtype for p, v in want.items()}

    def cast(p_path, leaf):
        name = masks._path_str(p_path)
        return jnp.asarray(leaf, dtypes[name])

    values = jax.tree_util.tree_map_with_path(cast, raw)
    flat_values = _flat(values)
    leaves = [flat_values[p] for p in masks.leaf_paths(template)]
    restored = jax.tree.unflatten(jax.tree.structure(template), leaves)
    if _is_nnx_state(like):
        from flax import nnx

        out = jax.tree.map(lambda a: a, like)
        nnx.replace_by_pure_dict(out, restored)
        return out
    return restored


def _under_head(path: str, heads: tuple[str, ...]) -> bool:
    """Whether ``path`` is in a head module, at the top level or under ``params/``."""
    parts = path.split("/")
    return parts[0] in heads or (len(parts) > 1 and parts[0] == "params" and parts[1] in heads)


def _unfreeze(tree: Any) -> Any:
    if hasattr(tree, "unfreeze"):
        tree = tree.unfreeze()
    if isinstance(tree, dict):
        return {k: _unfreeze(v) for k, v in tree.items()}
    return tree
