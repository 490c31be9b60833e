"""Splitting helpers: train/validation splits, n-shot sampling, class subsets for transfer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flatjax.data.base import Dataset

__all__ = ["train_val_split", "few_shot", "split_classes"]


def _check_xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"`y` must be 1-D, got shape {y.shape}")
    if x.shape[:1] != y.shape:
        raise ValueError(f"`x` has {x.shape[0]} examples but `y` has {y.shape[0]}")
    return x, y


def train_val_split(
    x: np.ndarray,
    y: np.ndarray,
    val_size: int | float,
    seed: int = 0,
    stratify: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic (seeded) split of ``(x, y)`` into a training and a validation part.

    Parameters
    ----------
    x, y
        Examples and their labels (same length).
    val_size
        Number (int) or fraction (float in (0, 1)) of examples in the validation part.
    seed
        Seed of the shuffle.
    stratify
        Keep the class proportions in both parts (``sklearn.model_selection.train_test_split``).

    Returns
    -------
    ``(x_train, y_train, x_val, y_val)``.

    Examples
    --------
    >>> x, y = np.arange(20.0), np.repeat([0, 1], 10)
    >>> x_tr, y_tr, x_val, y_val = train_val_split(x, y, 4)
    >>> len(x_tr), np.bincount(y_val).tolist()
    (16, [2, 2])
    """
    from sklearn.model_selection import train_test_split

    x, y = _check_xy(x, y)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=val_size, random_state=seed, stratify=y if stratify else None
    )
    return x_train, y_train, x_val, y_val


def few_shot(
    x: np.ndarray, y: np.ndarray, shots: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Exactly ``shots`` examples of every class present in ``y``, drawn without replacement.

    The result is shuffled (seeded), so it can be fed to a training loop as is.

    Raises
    ------
    ValueError
        If ``shots < 1`` or a class has fewer than ``shots`` examples.

    Examples
    --------
    >>> x, y = np.arange(30.0), np.repeat([0, 1, 2], 10)
    >>> x_s, y_s = few_shot(x, y, shots=2, seed=1)
    >>> np.bincount(y_s).tolist()
    [2, 2, 2]
    """
    x, y = _check_xy(x, y)
    if isinstance(shots, bool) or not isinstance(shots, int | np.integer) or shots < 1:
        raise ValueError(f"`shots` must be a positive integer, got {shots!r}")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        if members.size < shots:
            raise ValueError(
                f"class {label} has only {members.size} examples, fewer than shots={shots}"
            )
        chosen.append(rng.choice(members, size=shots, replace=False))
    index = rng.permutation(np.concatenate(chosen))
    return x[index], y[index]


def split_classes(dataset: Dataset, classes: Sequence[int]) -> Dataset:
    """Keep only ``classes`` (train and test) and relabel them ``0 .. len(classes) - 1``.

    The new label of ``classes[i]`` is ``i``. Used to build transfer tasks, e.g. digits
    0-4 as the source and 5-9 as the target.

    Examples
    --------
    >>> from flatjax.data import load_digits
    >>> target = split_classes(load_digits(), [5, 6, 7, 8, 9])
    >>> target.num_classes, target.name, sorted(set(target.y_test.tolist()))
    (5, 'digits[5,6,7,8,9]', [0, 1, 2, 3, 4])
    """
    classes = [int(c) for c in classes]
    if not classes:
        raise ValueError("`classes` must not be empty")
    if len(set(classes)) != len(classes):
        raise ValueError(f"`classes` has repeated entries: {classes}")
    if min(classes) < 0 or max(classes) >= dataset.num_classes:
        raise ValueError(
            f"`classes` must be in [0, {dataset.num_classes}) for {dataset.name!r}, got {classes}"
        )
    new_label = np.full(dataset.num_classes, -1, np.int32)
    new_label[classes] = np.arange(len(classes), dtype=np.int32)

    def select(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = new_label[y] >= 0
        return x[keep], new_label[y[keep]]

    name = f"{dataset.name}[{','.join(map(str, classes))}]"
    return Dataset(
        *select(dataset.x_train, dataset.y_train),
        *select(dataset.x_test, dataset.y_test),
        len(classes),
        name,
    )
