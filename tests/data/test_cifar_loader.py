"""CIFAR pickles: small batches written here, the original (Python 2, numpy.core) layout,
bad files and the restricted unpickler."""

import os
import pickle

import numpy as np
import pytest

from flatjax.data import load_cifar


def batch(n, label_key="labels", num_classes=10, seed=0, as_bytes=True):
    rng = np.random.default_rng(seed)
    content = {
        "data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
        label_key: list(rng.integers(0, num_classes, n)),
    }
    return {k.encode(): v for k, v in content.items()} if as_bytes else content


def dump(path, content, protocol=2):
    path.write_bytes(pickle.dumps(content, protocol=protocol))


def write_cifar10(directory, n=3, meta_names=10):
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        dump(directory / f"data_batch_{i}", batch(n, seed=i))
    dump(directory / "test_batch", batch(n + 1, seed=9))
    dump(directory / "batches.meta", {b"label_names": [b"c%d" % i for i in range(meta_names)]})


def test_cifar10_layout_and_pixel_order(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    data = load_cifar(tmp_path)  # the parent folder works too
    assert data.x_train.shape == (15, 32, 32, 3) and data.x_test.shape == (4, 32, 32, 3)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    assert (data.num_classes, data.name) == (10, "cifar10")
    first = batch(3, seed=1)[b"data"][0]
    # channel-major planes: data[c * 1024 + row * 32 + col] -> image[row, col, c]
    for channel, row, col in [(0, 0, 0), (1, 5, 7), (2, 31, 30)]:
        expected = first[channel * 1024 + row * 32 + col] / 255
        assert data.x_train[0, row, col, channel] == pytest.approx(expected)
    assert data.y_train[:3].tolist() == [int(v) for v in batch(3, seed=1)[b"labels"]]


def test_cifar100_fine_labels_str_keys(tmp_path):
    for name, n in (("train", 5), ("test", 2)):
        content = batch(n, "fine_labels", 100, as_bytes=False)
        content["coarse_labels"] = [0] * n
        dump(tmp_path / name, content, protocol=5)
    data = load_cifar(tmp_path, num_classes=100)
    assert data.x_train.shape == (5, 32, 32, 3) and data.name == "cifar100"


def test_reads_original_python2_numpy_core_pickles(tmp_path):
    write_cifar10(tmp_path)
    raw = (tmp_path / "test_batch").read_bytes()
    assert b"numpy._core.multiarray" in raw
    # the original files reference numpy.core (numpy 1); read without a deprecation warning
    (tmp_path / "test_batch").write_bytes(
        raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    )
    assert load_cifar(tmp_path).x_test.shape == (4, 32, 32, 3)


def test_missing_and_malformed_files_name_the_file(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3 does not exist"):
        load_cifar(tmp_path)

    dump(tmp_path / "data_batch_3", {b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(ValueError, match="data_batch_3: missing the 'labels' entry"):
        load_cifar(tmp_path)

    dump(tmp_path / "data_batch_3", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(
        ValueError, match=r"data_batch_3: 'data' must be uint8 of shape \(N, 3072\)"
    ):
        load_cifar(tmp_path)

    dump(tmp_path / "data_batch_3", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]})
    with pytest.raises(ValueError, match="data_batch_3: 1 entries in 'labels' for 2 images"):
        load_cifar(tmp_path)

    dump(tmp_path / "data_batch_3", {b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]})
    with pytest.raises(ValueError, match=r"data_batch_3: 'labels' must be in \[0, 10\)"):
        load_cifar(tmp_path)

    (tmp_path / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_3: not a readable CIFAR pickle"):
        load_cifar(tmp_path)

    dump(tmp_path / "data_batch_3", [1, 2])
    with pytest.raises(ValueError, match="data_batch_3: expected a pickled dict"):
        load_cifar(tmp_path)


def test_meta_class_count_and_arguments(tmp_path):
    write_cifar10(tmp_path, meta_names=100)
    with pytest.raises(ValueError, match="batches.meta: 'label_names' lists 100 classes"):
        load_cifar(tmp_path)
    with pytest.raises(ValueError, match="`num_classes` must be 10 or 100"):
        load_cifar(tmp_path, num_classes=20)
    with pytest.raises(FileNotFoundError, match="CIFAR-10 directory"):
        load_cifar(tmp_path / "absent")


class RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


def test_refuses_pickles_that_run_code(tmp_path):
    write_cifar10(tmp_path)
    dump(tmp_path / "test_batch", {b"data": RunsCode(), b"labels": []})
    with pytest.raises(ValueError, match="refusing to load global .*getcwd"):
        load_cifar(tmp_path)
