"""Readers for the IDX format of MNIST, Fashion-MNIST and KMNIST, raw or gzip-compressed.

An IDX file is a 4-byte magic number -- two zero bytes, a type code and the number of
dimensions -- followed by one big-endian ``uint32`` per dimension and the data in C order.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from os import PathLike
from pathlib import Path

import numpy as np

from flatjax.data.base import Dataset, images_to_float

__all__ = ["FASHION_MNIST_DIR", "MNIST_LIKE_KINDS", "read_idx", "load_idx", "load_mnist_like"]

#: Where Debian's ``dataset-fashion-mnist`` package puts the four ``*-idx*-ubyte.gz`` files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Data sets in the MNIST file layout, and their default directory (``None``: pass one).
MNIST_LIKE_KINDS: dict[str, Path | None] = {
    "fashion": FASHION_MNIST_DIR,
    "mnist": None,
    "kmnist": None,
}

_TYPE_CODES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {path} does not exist")
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(f"{path}: corrupt gzip data ({error})") from error
    return raw


def read_idx(path: str | PathLike) -> np.ndarray:
    """Read one IDX file (raw, or gzip-compressed: detected from its content).

    Parameters
    ----------
    path
        The file, e.g. ``train-images-idx3-ubyte.gz``.

    Returns
    -------
    The array with the shape and type the header declares, in native byte order.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the magic number is wrong, or the data are shorter or longer than the header's
        dimensions say (the message names the file).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny-idx1-ubyte"
    >>> _ = path.write_bytes(bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 8, 9]))
    >>> read_idx(path).tolist()
    [7, 8, 9]
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an IDX magic number")
    magic = raw[:4].hex()
    if raw[:2] != b"\0\0":
        raise ValueError(f"{path}: bad IDX magic number 0x{magic} (must start with two zero bytes)")
    code, ndim = raw[2], raw[3]
    if code not in _TYPE_CODES:
        raise ValueError(f"{path}: bad IDX magic number 0x{magic} (unknown type code 0x{code:02x})")
    if ndim == 0:
        raise ValueError(f"{path}: bad IDX magic number 0x{magic} (zero dimensions)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} of {header} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _TYPE_CODES[code]
    expected, found = math.prod(shape) * dtype.itemsize, len(raw) - header
    if found != expected:
        problem = "truncated" if found < expected else "trailing bytes"
        raise ValueError(
            f"{path}: {problem}: header declares shape {shape} of {dtype.name}"
            f" ({expected} bytes of data) but the file holds {found}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_idx(
    path_images: str | PathLike, path_labels: str | PathLike
) -> tuple[np.ndarray, np.ndarray]:
    """Read an IDX image file and its label file.

    Parameters
    ----------
    path_images
        ``uint8`` images of shape ``(N, H, W)`` (e.g. ``train-images-idx3-ubyte.gz``).
    path_labels
        Integer labels of shape ``(N,)`` (e.g. ``train-labels-idx1-ubyte.gz``).

    Returns
    -------
    ``(images, labels)``: ``float32`` images in ``[0, 1]`` of shape ``(N, H, W, 1)`` and
    ``int32`` labels.
    """
    images, labels = read_idx(path_images), read_idx(path_labels)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{path_images}: expected uint8 images of shape (N, H, W), got {images.dtype.name}"
            f" of shape {images.shape}"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path_labels}: expected integer labels of shape (N,), got {labels.dtype.name}"
            f" of shape {labels.shape}"
        )
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{path_labels} holds {labels.shape[0]} labels but {path_images} holds"
            f" {images.shape[0]} images"
        )
    return images_to_float(images), labels.astype(np.int32)


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{directory / stem}[.gz] does not exist")


def load_mnist_like(directory: str | PathLike | None = None, kind: str = "fashion") -> Dataset:
    """Load MNIST, Fashion-MNIST or KMNIST from the four standard IDX files in ``directory``.

    Reads ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
    and ``t10k-labels-idx1-ubyte``, each raw or with a ``.gz`` suffix.

    Parameters
    ----------
    directory
        The folder holding the files. By default :data:`FASHION_MNIST_DIR`
        (``/usr/share/datasets/fashion-mnist``, filled by ``apt-get install
        dataset-fashion-mnist``) for ``kind="fashion"``; required for the other kinds.
    kind
        ``"fashion"``, ``"mnist"`` or ``"kmnist"``: sets the name and the default folder.

    Returns
    -------
    A :class:`Dataset` of 28x28x1 images in ``[0, 1]`` (60,000 train / 10,000 test for the
    real sets) named ``f"{kind}-mnist"`` (``"mnist"`` for ``kind="mnist"``).
    """
    if kind not in MNIST_LIKE_KINDS:
        raise ValueError(f"`kind` must be one of {sorted(MNIST_LIKE_KINDS)}, got {kind!r}")
    if directory is None:
        directory = MNIST_LIKE_KINDS[kind]
        if directory is None:
            raise ValueError(f"`directory` is required for kind={kind!r} (no default location)")
    directory = Path(directory)
    if not directory.is_dir():
        hint = (
            " (install it with `apt-get install dataset-fashion-mnist`)"
            if kind == "fashion"
            else ""
        )
        raise FileNotFoundError(f"{kind} IDX directory {directory} does not exist{hint}")
    splits = []
    for prefix in ("train", "t10k"):
        images = _find(directory, f"{prefix}-images-idx3-ubyte")
        labels = _find(directory, f"{prefix}-labels-idx1-ubyte")
        x, y = load_idx(images, labels)
        if y.size and (y.min() < 0 or y.max() > 9):
            raise ValueError(f"{labels}: labels must be in [0, 10), got [{y.min()}, {y.max()}]")
        splits += [x, y]
    return Dataset(*splits, 10, "mnist" if kind == "mnist" else f"{kind}-mnist")
