"""Parameter masks by path predicate (e.g. normalisation layers + classifier head)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import jax
from blackjax.types import ArrayLikeTree

__all__ = ["path_mask", "norm_and_head_mask", "leaf_paths", "count_selected"]

NORM_PATTERN = r"(?i)(batchnorm|layernorm|groupnorm|rmsnorm|norm|bn\d*)"


def leaf_paths(tree: ArrayLikeTree) -> list[str]:
    """Slash-joined key paths of every leaf, e.g. ``'Dense_0/kernel'``."""
    return [_path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _path_str(path) -> str:
    parts = []
    for k in path:
        name = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
        parts.append(str(name))
    return "/".join(parts)


def path_mask(tree: ArrayLikeTree, predicate: Callable[[str], bool]) -> ArrayLikeTree:
    """A pytree of bools shaped like ``tree``: ``predicate(path)`` for each leaf.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> params = {"Dense_0": {"kernel": jnp.ones(2)}, "BatchNorm_0": {"scale": jnp.ones(2)}}
    >>> path_mask(params, lambda path: "BatchNorm" in path)
    {'BatchNorm_0': {'scale': True}, 'Dense_0': {'kernel': False}}
    """
    return jax.tree_util.tree_map_with_path(lambda p, _: bool(predicate(_path_str(p))), tree)


def norm_and_head_mask(
    params: ArrayLikeTree,
    head: str | Sequence[str] | None = None,
    norm_pattern: str = NORM_PATTERN,
) -> ArrayLikeTree:
    """Select normalisation-layer parameters and the classifier head (SA-BMA's scheme).

    Parameters
    ----------
    params
        A parameter pytree (e.g. Flax ``variables["params"]``).
    head
        Name(s) of the head's top-level module; by default the last top-level key
        in the pytree's (sorted) order whose name starts with ``Dense`` or ``head``.
    norm_pattern
        Regular expression matched against each path component.

    Raises
    ------
    ValueError
        If the mask selects no parameter.
    """
    if head is None:
        tops = [k for k in params if str(k).startswith(("Dense", "head"))]
        if not tops:
            raise ValueError(f"`head` not given and no Dense*/head* module in {sorted(params)}")
        head = sorted(tops, key=_natural_key)[-1]
    heads = (head,) if isinstance(head, str) else tuple(head)
    norm = re.compile(norm_pattern)

    def select(path: str) -> bool:
        parts = path.split("/")
        return parts[0] in heads or any(norm.fullmatch(p) or norm.match(p) for p in parts[:-1])

    mask = path_mask(params, select)
    if count_selected(mask) == 0:
        raise ValueError(
            f"the mask selects no parameter (head={heads}, norm_pattern={norm_pattern})"
        )
    return mask


def count_selected(mask: ArrayLikeTree) -> int:
    """Number of leaves a mask selects."""
    return sum(bool(m) for m in jax.tree.leaves(mask))


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(name))]
