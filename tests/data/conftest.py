"""Helpers that write small files in the real data formats."""

import gzip
import struct

import numpy as np
import pytest

IDX_TYPE_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def write_idx_file(path, array, dtype="u1", compress=False):
    """Write ``array`` as an IDX file of element type ``dtype`` (big-endian), maybe gzipped."""
    array = np.asarray(array)
    header = bytes([0, 0, IDX_TYPE_CODES[dtype], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    content = header + array.astype(">" + dtype).tobytes()
    path.write_bytes(gzip.compress(content) if compress else content)
    return path


@pytest.fixture
def write_idx():
    """:func:`write_idx_file`, for the tests."""
    return write_idx_file


@pytest.fixture
def mnist_like_dir(tmp_path):
    """A folder with the four MNIST-layout files: 6 train and 4 test 28x28 images; the
    training files gzipped, the test files raw."""
    rng = np.random.default_rng(0)
    for prefix, n, compress in (("train", 6, True), ("t10k", 4, False)):
        images = rng.integers(0, 256, (n, 28, 28))
        suffix = ".gz" if compress else ""
        write_idx_file(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", images, compress=compress)
        labels_path = tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}"
        write_idx_file(labels_path, np.arange(n), compress=compress)
    return tmp_path
