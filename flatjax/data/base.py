"""The ``Dataset`` container shared by every loader."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Dataset", "images_to_float"]


class Dataset(NamedTuple):
    """A classification data set held as numpy arrays.

    Attributes
    ----------
    x_train, x_test
        ``float32`` images scaled to ``[0, 1]``, shape ``(N, H, W, C)``.
    y_train, y_test
        ``int32`` class labels in ``[0, num_classes)``, shape ``(N,)``.
    num_classes
        Number of classes.
    name
        A short identifier, e.g. ``"digits"`` or ``"fashion-mnist"``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str


def images_to_float(images: np.ndarray, max_value: float = 255.0) -> np.ndarray:
    """Scale integer images to ``float32`` in ``[0, 1]`` with a trailing channel axis.

    Parameters
    ----------
    images
        ``(N, H, W)`` or ``(N, H, W, C)`` array with values in ``[0, max_value]``.
    max_value
        The value that maps to 1.

    Examples
    --------
    >>> x = images_to_float(np.full((2, 3, 3), 255, np.uint8))
    >>> x.shape, x.dtype, float(x.max())
    ((2, 3, 3, 1), dtype('float32'), 1.0)
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"`images` must be (N, H, W) or (N, H, W, C), got shape {images.shape}")
    return (images.astype(np.float32) / np.float32(max_value)).clip(0.0, 1.0)
