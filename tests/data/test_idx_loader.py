"""IDX reading: round trips through small files written here, raw and gzip, and bad files."""

import numpy as np
import pytest

from flatjax.data import idx as idx_module
from flatjax.data import load_idx, load_mnist_like, read_idx


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip_every_type(tmp_path, write_idx, dtype, compress):
    array = np.arange(24).reshape(2, 3, 4) - (0 if dtype == "u1" else 5)
    path = write_idx(tmp_path / "a-idx3", array, dtype, compress)
    result = read_idx(path)
    assert result.shape == (2, 3, 4)
    assert result.dtype == np.dtype(dtype)  # native byte order
    np.testing.assert_array_equal(result, array)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "bad IDX magic number 0x01000801"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "unknown type code 0x07"),
        (b"\x00\x00\x08\x00", "zero dimensions"),
        (b"\x00\x00", "too short"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02", "truncated IDX header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02", r"truncated: header declares shape \(3,\)"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "trailing bytes"),
        (b"\x1f\x8b\x08\x00garbage", "corrupt gzip"),
    ],
)
def test_read_idx_malformed_files_name_the_file(tmp_path, content, match):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as error:
        read_idx(path)
    assert str(path) in str(error.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-idx1-ubyte"):
        read_idx(tmp_path / "nothing-idx1-ubyte")


def test_load_idx_scales_and_checks_counts(tmp_path, write_idx):
    images = np.array([[[0, 255], [51, 102]]] * 3, np.uint8)
    path_x = write_idx(tmp_path / "x-idx3-ubyte", images)
    path_y = write_idx(tmp_path / "y-idx1-ubyte", [1, 2, 3])
    x, y = load_idx(path_x, path_y)
    assert x.shape == (3, 2, 2, 1) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_allclose(x[0, :, :, 0], [[0, 1], [0.2, 0.4]])

    short = write_idx(tmp_path / "short-idx1-ubyte", [1, 2])
    with pytest.raises(ValueError, match="short-idx1-ubyte holds 2 labels but .* 3 images"):
        load_idx(path_x, short)
    with pytest.raises(
        ValueError, match=r"y-idx1-ubyte: expected uint8 images of shape \(N, H, W\)"
    ):
        load_idx(path_y, path_y)
    floats = write_idx(tmp_path / "f-idx1", [1.0, 2.0, 3.0], "f4")
    with pytest.raises(ValueError, match="f-idx1: expected integer labels"):
        load_idx(path_x, floats)


def test_load_mnist_like_reads_the_four_files(mnist_like_dir):
    data = load_mnist_like(mnist_like_dir, kind="mnist")
    assert data.x_train.shape == (6, 28, 28, 1) and data.x_test.shape == (4, 28, 28, 1)
    assert data.y_test.tolist() == [0, 1, 2, 3]
    assert (data.num_classes, data.name) == (10, "mnist")
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0


def test_load_mnist_like_default_directory_is_debian_fashion(mnist_like_dir, monkeypatch):
    assert idx_module.FASHION_MNIST_DIR.as_posix() == "/usr/share/datasets/fashion-mnist"
    monkeypatch.setitem(idx_module.MNIST_LIKE_KINDS, "fashion", mnist_like_dir)
    assert load_mnist_like().name == "fashion-mnist"
    monkeypatch.setitem(idx_module.MNIST_LIKE_KINDS, "fashion", mnist_like_dir / "absent")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_mnist_like()


def test_load_mnist_like_errors(mnist_like_dir):
    tmp_path = mnist_like_dir
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink(missing_ok=True)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte\[\.gz\] does not exist"):
        load_mnist_like(tmp_path, kind="kmnist")
    with pytest.raises(ValueError, match="`directory` is required"):
        load_mnist_like(kind="mnist")
    with pytest.raises(ValueError, match="`kind`"):
        load_mnist_like(tmp_path, kind="cifar")
