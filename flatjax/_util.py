"""Small pytree helpers shared by the kernels (not public API)."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from numbers import Real

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.types import ArrayLikeTree, ArrayTree, PRNGKey
from jax.flatten_util import ravel_pytree

__all__ = [
    "NOISE_KINDS",
    "check_noise",
    "langevin_noise",
    "normal_like",
    "raveled_normal_like",
    "standard_normal",
    "rademacher_like",
    "check_positive",
    "check_nonnegative",
    "check_in_range",
    "flax_module_kind",
    "check_not_flax_module",
    "check_function",
    "check_array_tree",
]

#: the noise a Langevin-type kernel can inject (see :func:`langevin_noise`)
NOISE_KINDS = ("gaussian", "rademacher")


_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_THREEFRY_PARITY = np.uint32(0x1BD11BDA)


def _threefry_key_data(rng_key: PRNGKey) -> jax.Array | None:
    """The key's two words if it is a threefry2x32 key (typed or raw), else ``None``."""
    if jnp.issubdtype(jnp.result_type(rng_key), jax.dtypes.prng_key):
        if str(jax.random.key_impl(rng_key)) != "threefry2x32" or jnp.shape(rng_key) != ():
            return None
        return jax.random.key_data(rng_key)
    if jax.config.jax_default_prng_impl != "threefry2x32" or jnp.shape(rng_key) != (2,):
        return None
    return jnp.asarray(rng_key, jnp.uint32)


def _threefry_bits_unrolled(key_data: jax.Array, n: int) -> jax.Array:
    """``jax.random.bits(key, (n,), uint32)`` as element-wise jnp (20 rounds unrolled).

    The same hash and counters as JAX's threefry2x32 under
    ``jax_threefry_partitionable`` (counters ``(0, i)``, the two output words XORed), so
    the result is bit for bit JAX's. JAX lowers threefry on CPU as a *rolled* loop that
    XLA cannot fuse; written out, hash and transform become one loop-free fusion, about
    2x faster alone and 3-4x under ``vmap`` (``benchmarks/results/noise_paths.md``).
    The counter count is padded to a multiple of 64 (XLA:CPU runs odd lengths ~9x
    slower) and the extra numbers are sliced off.
    """
    padded = -(-n // 64) * 64
    k0, k1 = key_data[0], key_data[1]
    ks = (k0, k1, k0 ^ k1 ^ _THREEFRY_PARITY)
    x0 = jnp.zeros((padded,), jnp.uint32) + ks[0]
    x1 = jax.lax.iota(jnp.uint32, padded) + ks[1]
    for i in range(5):
        for r in _THREEFRY_ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return (x0 ^ x1)[:n]


def _bits_to_normal(bits: jax.Array) -> jax.Array:
    """``jax.random.normal``'s float32 transform: 23 bits -> u in (-1, 1) -> sqrt(2) erfinv(u)."""
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0), dtype=np.float32)
    one = np.array(1.0, np.float32).view(np.uint32)
    floats = jax.lax.bitcast_convert_type((bits >> np.uint32(9)) | one, jnp.float32) - 1
    u = jax.lax.max(lo, floats * (np.float32(1.0) - lo) + lo)
    return np.float32(np.sqrt(2)) * jax.lax.erf_inv(u)


def standard_normal(rng_key: PRNGKey, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """``jax.random.normal(rng_key, shape, dtype)``, bit for bit, by the fastest exact path.

    On CPU, for a threefry2x32 key, float32 and JAX's default partitionable threefry,
    the bits come from :func:`_threefry_bits_unrolled` (the identical numbers, 2x
    faster); everywhere else (GPU/TPU, where JAX already unrolls threefry, other key
    implementations or dtypes) it is ``jax.random.normal`` itself.
    """
    size = math.prod(shape)
    data = _threefry_key_data(rng_key)
    if (
        data is None
        or jnp.dtype(dtype) != jnp.float32
        or not jax.config.jax_threefry_partitionable
        or jax.default_backend() != "cpu"
        or size == 0
        or size >= 2**32
    ):
        return jax.random.normal(rng_key, shape, dtype=dtype)
    return _bits_to_normal(_threefry_bits_unrolled(data, size)).reshape(shape)


def normal_like(rng_key: PRNGKey, tree: ArrayLikeTree, group_below: int = 1 << 14) -> ArrayTree:
    """Standard normal noise shaped like ``tree``, in each leaf's dtype.

    Leaves with at least ``group_below`` entries are drawn one by one, with their own
    keys, so no concatenate or split of large arrays is needed (``blackjax.util.
    generate_gaussian_noise`` ravels the whole pytree, measured 1.27x slower on an
    MLP step). Smaller leaves (biases, normalisation scales, tiny models) are drawn
    together, one draw per dtype: on CPU each threefry draw is a loop of its own, so
    many small draws cost more than one (``benchmarks/results/step_overhead.md``).
    Each draw is :func:`standard_normal`: exactly ``jax.random.normal``'s numbers, on
    CPU from an unrolled threefry (2x faster; ``benchmarks/results/noise_paths.md``).
    """
    leaves, treedef = jax.tree.flatten(tree)
    shapes = [jnp.shape(x) for x in leaves]
    dtypes = [jnp.result_type(x) for x in leaves]
    big = [i for i, x in enumerate(leaves) if jnp.size(x) >= group_below]
    groups: dict = {}
    for i, x in enumerate(leaves):
        if jnp.size(x) < group_below:
            groups.setdefault(dtypes[i], []).append(i)
    keys = jax.random.split(rng_key, len(big) + len(groups))
    noise: list = [None] * len(leaves)
    for key, i in zip(keys[: len(big)], big, strict=True):
        noise[i] = standard_normal(key, shapes[i], dtype=dtypes[i])
    for key, (dtype, members) in zip(keys[len(big) :], groups.items(), strict=True):
        sizes = [math.prod(shapes[i]) for i in members]
        flat = standard_normal(key, (sum(sizes),), dtype=dtype)
        offset = 0
        for i, size in zip(members, sizes, strict=True):
            noise[i] = flat[offset : offset + size].reshape(shapes[i])
            offset += size
    return jax.tree.unflatten(treedef, noise)


def raveled_normal_like(rng_key: PRNGKey, tree: ArrayLikeTree) -> ArrayTree:
    """``blackjax.util.generate_gaussian_noise(rng_key, tree)``, bit for bit, 2x faster on CPU.

    One draw over the raveled pytree, as blackjax draws it, through
    :func:`standard_normal` (the same numbers as ``jax.random.normal``): a kernel that
    uses it runs blackjax's chain number for number (``flatjax.sgmcmc.sgld``).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from blackjax.util import generate_gaussian_noise
    >>> tree = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    >>> key = jax.random.key(0)
    >>> ours, theirs = raveled_normal_like(key, tree), generate_gaussian_noise(key, tree)
    >>> all(bool(jnp.array_equal(ours[k], theirs[k])) for k in tree)
    True
    """
    flat, unravel = ravel_pytree(tree)
    return unravel(standard_normal(rng_key, flat.shape, flat.dtype))


def rademacher_like(rng_key: PRNGKey, tree: ArrayLikeTree) -> ArrayTree:
    """Independent random signs (+1 or -1, each with probability 1/2) shaped like ``tree``.

    32 signs are unpacked from every random 32-bit word (one ``jax.random.bits`` call
    per leaf), so a draw costs an eighth to a quarter of a Gaussian one on CPU. Mean 0,
    variance 1, like a standard normal: used as Langevin noise it is the simplified
    weak Euler scheme (weak order 1, the same discrete-time stationary covariance on a
    Gaussian target as Gaussian noise).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> x = rademacher_like(jax.random.key(0), {"w": jnp.zeros((3, 5))})["w"]
    >>> x.shape, sorted(set(x.ravel().tolist())) in ([-1.0, 1.0], [1.0], [-1.0])
    ((3, 5), True)
    """
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(rng_key, max(len(leaves), 1))
    out = []
    shifts = jnp.arange(32, dtype=jnp.uint32)
    for key, leaf in zip(keys, leaves, strict=False):
        shape, dtype = jnp.shape(leaf), jnp.result_type(leaf)
        size = math.prod(shape)
        words = jax.random.bits(key, (-(-size // 32),), jnp.uint32)
        bits = (words[:, None] >> shifts) & jnp.uint32(1)
        signs = bits.reshape(-1)[:size].astype(dtype) * 2 - 1
        out.append(signs.reshape(shape))
    return jax.tree.unflatten(treedef, out)


def check_noise(noise: str) -> str:
    """Return ``noise`` or raise ``ValueError`` unless it is one of :data:`NOISE_KINDS`."""
    if noise not in NOISE_KINDS:
        raise ValueError(f"`noise` must be one of {NOISE_KINDS}, got {noise!r}")
    return noise


def langevin_noise(rng_key: PRNGKey, tree: ArrayLikeTree, kind: str = "gaussian") -> ArrayTree:
    """Unit-variance noise shaped like ``tree``: ``"gaussian"`` or ``"rademacher"`` signs."""
    if kind == "rademacher":
        return rademacher_like(rng_key, tree)
    return normal_like(rng_key, tree)


def _as_float(name: str, value) -> float:
    if isinstance(value, bool | str | bytes) or value is None:
        raise TypeError(
            f"`{name}` must be a real number, got {value!r} of type {type(value).__name__}"
        )
    if not isinstance(value, Real):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"`{name}` must be a real number, got {value!r} of type {type(value).__name__}"
            ) from None
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value!r}")
    return value


def check_positive(name: str, value) -> float:
    """Return ``value`` as a float, or raise naming ``name`` if not finite and > 0."""
    v = _as_float(name, value)
    if v <= 0:
        raise ValueError(f"`{name}` must be > 0, got {value!r}")
    return v


def check_nonnegative(name: str, value) -> float:
    """Return ``value`` as a float, or raise naming ``name`` if not finite and >= 0."""
    v = _as_float(name, value)
    if v < 0:
        raise ValueError(f"`{name}` must be >= 0, got {value!r}")
    return v


def check_in_range(name: str, value, low: float, high: float) -> float:
    """Return ``value`` as a float, or raise unless ``low < value <= high``."""
    v = _as_float(name, value)
    if not (low < v <= high):
        raise ValueError(f"`{name}` must be in ({low}, {high}], got {value!r}")
    return v


def check_int_in_range(name: str, value, low: int, high: float = math.inf) -> int:
    """Return ``value`` as an int, or raise unless it is an integer in ``[low, high)``."""
    if isinstance(value, bool) or not isinstance(value, int | jnp.integer):
        raise TypeError(f"`{name}` must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"`{name}` must be >= {low}, got {value!r}")
    if value >= high:
        raise ValueError(f"`{name}` must be < {high}, got {value!r}")
    return int(value)


def check_positive_int(name: str, value) -> int:
    """Return ``value`` as an int, or raise unless it is an integer >= 1."""
    return check_int_in_range(name, value, 1)


def concrete_or_none(value):
    """The Python float of ``value`` when it is concrete, ``None`` when traced."""
    try:
        return float(value)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None


def check_matching_tree(name: str, tree: ArrayLikeTree, ref_name: str, ref: ArrayLikeTree) -> None:
    """Raise ``ValueError`` unless ``tree`` has ``ref``'s structure and leaf shapes.

    Runs at trace time, so a kernel given a gradient estimator that returns the wrong
    pytree fails with a message naming both, not deep inside ``jax.tree.map``.
    """
    if jax.tree.structure(tree) != jax.tree.structure(ref):
        raise ValueError(
            f"`{name}` has pytree structure {jax.tree.structure(tree)}, but `{ref_name}` has "
            f"{jax.tree.structure(ref)}"
        )
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(ref), strict=True
    ):
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(
                f"`{name}` leaf {jax.tree_util.keystr(path)} has shape {jnp.shape(a)}, but "
                f"`{ref_name}` has {jnp.shape(b)}"
            )


def check_floating_tree(name: str, tree: ArrayLikeTree) -> None:
    """Raise ``ValueError`` for an empty pytree, ``TypeError`` for a non-float leaf.

    The message names the argument and the leaf's path. A Flax module or a leaf that
    is not an array (a string, an object) is a ``TypeError`` too, see
    :func:`check_array_tree`.
    """
    check_array_tree(name, tree)
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    if not leaves:
        raise ValueError(f"`{name}` is an empty pytree: there is nothing to work on")
    for path, leaf in leaves:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"`{name}` leaf {jax.tree_util.keystr(path) or '<root>'} has dtype {dtype}; "
                f"it must be floating point (e.g. float32)"
            )


#: how to turn a Flax model into what flatjax takes, by the module's kind
_NNX_HINT = (
    "`apply_fn, params = flatjax.nn.glue.nnx_apply(model)` (which calls "
    "`nnx.split(model, nnx.Param, ...)`)"
)
_LINEN_HINT = (
    "`apply_fn = flatjax.nn.glue.linen_apply(module)` and "
    "`params = module.init(rng_key, x)['params']`"
)
#: how to build a gradient estimator from ``apply_fn`` (for :func:`check_function`)
GRAD_ESTIMATOR_HINT = (
    "then build the estimator from `apply_fn` with "
    "`flatjax.nn.glue.grad_estimator(flatjax.nn.glue.gaussian_logprior(prior_precision), "
    "flatjax.nn.glue.categorical_loglikelihood(apply_fn), data_size)` and start the chain "
    "at `params`"
)


def flax_module_kind(obj: object) -> str | None:
    """``"nnx"`` or ``"linen"`` when ``obj`` is a Flax module (or NNX object), else ``None``.

    Flax is not imported here: an object can only be a Flax module if Flax already is.

    Examples
    --------
    >>> from flax import nnx
    >>> flax_module_kind(nnx.Linear(2, 3, rngs=nnx.Rngs(0))), flax_module_kind(lambda x: x)
    ('nnx', None)
    """
    nnx = sys.modules.get("flax.nnx")
    if nnx is not None:
        base = getattr(nnx, "Pytree", None) or getattr(nnx, "Object", None) or nnx.Module
        if isinstance(obj, base):
            return "nnx"
    linen = sys.modules.get("flax.linen")
    if linen is not None and isinstance(obj, linen.Module):
        return "linen"
    return None


def check_not_flax_module(name: str, obj: object, expected: str, then: str = "") -> None:
    """Raise ``TypeError`` naming ``name`` when ``obj`` is a Flax module.

    ``expected`` says what the argument should be (e.g. ``"a pytree of float
    arrays"``); the message adds how to convert the module, then ``then`` (what to
    do with the converted parts).

    Examples
    --------
    >>> from flax import nnx
    >>> check_not_flax_module("position", nnx.Linear(2, 3, rngs=nnx.Rngs(0)), "params")
    Traceback (most recent call last):
    ...
    TypeError: `position` is a Flax NNX module (Linear), not params. Convert the model first: ...
    """
    kind = flax_module_kind(obj)
    if kind is None:
        return
    hint = _NNX_HINT if kind == "nnx" else _LINEN_HINT
    what = "NNX module" if kind == "nnx" else "Linen module"
    raise TypeError(
        f"`{name}` is a Flax {what} ({type(obj).__name__}), not {expected}. "
        f"Convert the model first: {hint}" + (f"; {then}" if then else "") + "."
    )


def check_function(name: str, fn: object, signature: str, build: str = "") -> Callable:
    """Return ``fn``, or raise ``TypeError`` if it is a Flax module or not callable.

    ``signature`` is what ``fn`` should be, e.g. ``"grad_estimator(position,
    minibatch) -> gradient pytree"``. A Flax module is callable, but as a model
    (``model(x)``), not as this function: the message says how to convert it and
    ``build`` how to make the function from the converted ``apply_fn``.
    """
    check_not_flax_module(name, fn, f"a function `{signature}`", build)
    if not callable(fn):
        raise TypeError(
            f"`{name}` must be a function {signature}, got {fn!r} of type {type(fn).__name__}"
        )
    return fn


def _is_array_leaf(leaf: object) -> bool:
    return isinstance(leaf, jax.Array | np.ndarray | np.generic | Real)


def check_array_tree(name: str, tree: ArrayLikeTree) -> None:
    """Raise ``TypeError`` for a Flax module or a leaf that is not an array or number.

    Examples
    --------
    >>> check_array_tree("position", {"w": "abc"})
    Traceback (most recent call last):
    ...
    TypeError: `position` leaf ['w'] is a str ('abc'); every leaf must be an array ...
    """
    check_not_flax_module(
        name, tree, "a pytree of arrays", "then pass `params` (a pytree of arrays) instead"
    )
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not _is_array_leaf(leaf):
            check_not_flax_module(
                f"{name}{jax.tree_util.keystr(path)}",
                leaf,
                "an array",
                "then pass `params` (a pytree of arrays) instead",
            )
            raise TypeError(
                f"`{name}` leaf {jax.tree_util.keystr(path) or '<root>'} is a "
                f"{type(leaf).__name__} ({leaf!r:.60}); every leaf must be an array or a "
                f"number (a pytree of float arrays, e.g. a model's params)"
            )
