"""Small pytree helpers shared by the kernels (not public API)."""

from __future__ import annotations

import math
from numbers import Real

import jax
import jax.numpy as jnp
from blackjax.types import ArrayLikeTree, ArrayTree, PRNGKey

__all__ = [
    "NOISE_KINDS",
    "check_noise",
    "langevin_noise",
    "normal_like",
    "rademacher_like",
    "check_positive",
    "check_nonnegative",
    "check_in_range",
]

#: the noise a Langevin-type kernel can inject (see :func:`langevin_noise`)
NOISE_KINDS = ("gaussian", "rademacher")


def normal_like(rng_key: PRNGKey, tree: ArrayLikeTree, group_below: int = 1 << 14) -> ArrayTree:
    """Standard normal noise shaped like ``tree``, in each leaf's dtype.

    Leaves with at least ``group_below`` entries are drawn one by one, with their own
    keys, so no concatenate or split of large arrays is needed (``blackjax.util.
    generate_gaussian_noise`` ravels the whole pytree, measured 1.27x slower on an
    MLP step). Smaller leaves (biases, normalisation scales, tiny models) are drawn
    together, one draw per dtype: on CPU each threefry draw is a loop of its own, so
    many small draws cost more than one (``benchmarks/results/step_overhead.md``).
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
        noise[i] = jax.random.normal(key, shapes[i], dtype=dtypes[i])
    for key, (dtype, members) in zip(keys[len(big) :], groups.items(), strict=True):
        sizes = [math.prod(shapes[i]) for i in members]
        flat = jax.random.normal(key, (sum(sizes),), dtype=dtype)
        offset = 0
        for i, size in zip(members, sizes, strict=True):
            noise[i] = flat[offset : offset + size].reshape(shapes[i])
            offset += size
    return jax.tree.unflatten(treedef, noise)


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


def check_positive_int(name: str, value) -> int:
    """Return ``value`` as an int, or raise unless it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int | jnp.integer):
        raise TypeError(f"`{name}` must be an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"`{name}` must be >= 1, got {value!r}")
    return int(value)


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

    The message names the argument and the leaf's path.
    """
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
