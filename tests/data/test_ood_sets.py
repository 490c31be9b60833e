"""Out-of-distribution sets: noise and other real sets, shaped like the dataset."""

import numpy as np
import pytest

from flatjax.data import Dataset, load_digits, make_ood, match_image_shape


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
def test_noise_sets(digits, kind):
    ood = make_ood(digits, kind, n=500, seed=1)
    assert ood.shape == (500, 8, 8, 1) and ood.dtype == np.float32
    assert ood.min() >= 0.0 and ood.max() <= 1.0
    np.testing.assert_array_equal(ood, make_ood(digits, kind, n=500, seed=1))
    assert len(make_ood(digits, kind)) == len(digits.x_test)


def test_gaussian_noise_matches_pixel_statistics(digits):
    ood = make_ood(digits, "gaussian", n=2000)
    # clipping at 0 raises the mean a little; it stays near the data's
    assert abs(ood.mean() - digits.x_train.mean()) < 0.15


def test_real_set_resized_to_the_dataset_shape(digits):
    rng = np.random.default_rng(0)
    fashion_like = Dataset(
        rng.random((4, 28, 28, 1), dtype=np.float32),
        np.zeros(4, np.int32),
        rng.random((2, 28, 28, 1), dtype=np.float32),
        np.zeros(2, np.int32),
        10,
        "fashion-mnist",
    )
    ood = make_ood(fashion_like, "digits", n=30, seed=0)
    assert ood.shape == (30, 28, 28, 1) and ood.min() >= 0.0 and ood.max() <= 1.0
    assert len({im.tobytes() for im in ood}) == 30  # drawn without replacement
    with pytest.raises(ValueError, match="exceeds the 1797 images"):
        make_ood(fashion_like, "digits", n=5000)


def test_match_image_shape_channels():
    grey = np.full((2, 4, 4, 1), 0.5, np.float32)
    assert match_image_shape(grey, (4, 4, 3)).shape == (2, 4, 4, 3)
    colour = np.stack([np.zeros((2, 4, 4)), np.ones((2, 4, 4)), np.ones((2, 4, 4))], -1)
    np.testing.assert_allclose(match_image_shape(colour, (4, 4, 1)), 2 / 3, rtol=1e-6)
    with pytest.raises(ValueError, match="cannot map 3 channels to 2"):
        match_image_shape(colour, (4, 4, 2))


def test_invalid_requests(digits):
    with pytest.raises(ValueError, match="`kind` must be one of"):
        make_ood(digits, "svhn")
    with pytest.raises(ValueError, match="is the in-distribution data set"):
        make_ood(digits, "digits")
    with pytest.raises(ValueError, match="`n`"):
        make_ood(digits, "uniform", n=0)


def test_fashion_from_a_directory(digits, mnist_like_dir):
    ood = make_ood(digits, "fashion", n=7, seed=0, data_dir=mnist_like_dir)
    assert ood.shape == (7, 8, 8, 1) and ood.dtype == np.float32
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_ood(digits, "fashion", data_dir=mnist_like_dir / "absent")
