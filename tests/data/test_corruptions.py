"""Corruptions keep shape, dtype and range, grow with severity, and validate arguments."""

import numpy as np
import pytest

from flatjax.data import CORRUPTIONS, corrupt, load_digits
from flatjax.data.corruptions import _warp


@pytest.fixture(scope="module")
def images():
    return load_digits().x_test[:120]


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_shape_dtype_range_and_monotone_severity(images, name):
    distances = []
    for severity in range(1, 6):
        shifted = corrupt(images, name, severity, seed=0)
        assert shifted.shape == images.shape and shifted.dtype == np.float32
        assert shifted.min() >= 0.0 and shifted.max() <= 1.0
        distances.append(np.sqrt(((shifted - images) ** 2).sum(axis=(1, 2, 3))).mean())
    assert distances[0] > 0
    assert np.all(np.diff(distances) > 0), distances


def test_colour_images_and_reproducibility():
    x = np.random.default_rng(0).random((3, 32, 32, 3)).astype(np.float32)
    for name in CORRUPTIONS:
        y = corrupt(x, name, 3, seed=7)
        assert y.shape == x.shape and y.dtype == x.dtype
        np.testing.assert_array_equal(y, corrupt(x, name, 3, seed=7))
    assert not np.array_equal(corrupt(x, "shot_noise", 3, 1), corrupt(x, "shot_noise", 3, 2))


def test_warp_matches_exact_pixel_moves():
    x = np.random.default_rng(1).random((2, 6, 6, 1))
    quarter_turn = np.broadcast_to(np.array([[0.0, 1.0], [-1.0, 0.0]]), (2, 2, 2))
    turned = _warp(x, quarter_turn, np.zeros((2, 2)))
    np.testing.assert_allclose(turned, np.rot90(x, k=1, axes=(1, 2)), atol=1e-12)
    shifted = _warp(x, np.broadcast_to(np.eye(2), (2, 2, 2)), np.array([[2.0, -1.0]] * 2))
    expected = np.zeros_like(x)
    expected[:, 2:, :-1] = x[:, :-2, 1:]  # down two rows, left one column, zeros come in
    np.testing.assert_allclose(shifted, expected, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "fog", "severity": 1}, "`name` must be one of"),
        ({"name": "rotate", "severity": 0}, "`severity` must be an integer from 1 to 5"),
        ({"name": "rotate", "severity": 6}, "`severity`"),
        ({"name": "rotate", "severity": 2.0}, "`severity`"),
    ],
)
def test_invalid_arguments(images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        corrupt(images, **kwargs)


def test_invalid_images():
    with pytest.raises(ValueError, match=r"`images` must be \(N, H, W, C\)"):
        corrupt(np.zeros((8, 8)), "contrast", 1)
    with pytest.raises(ValueError, match="`images` must be floats"):
        corrupt(np.zeros((1, 8, 8, 1), np.uint8), "contrast", 1)
