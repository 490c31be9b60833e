"""Reader for the CIFAR-10 / CIFAR-100 "python version" pickled batches.

CIFAR-10 (``cifar-10-batches-py``): ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and
``batches.meta``; each batch is a dict with ``data`` (``(N, 3072)`` uint8, channel-major
32x32 planes) and ``labels``. CIFAR-100 (``cifar-100-python``): ``train``, ``test`` and
``meta``, with ``fine_labels`` (100 classes) and ``coarse_labels``. The original files were
written by Python 2, so their dict keys are ``bytes``; both ``bytes`` and ``str`` keys work.

Unpickling can run arbitrary code, so the files are read with a restricted unpickler that
only rebuilds numpy arrays, lists, dicts and strings.
"""

from __future__ import annotations

import importlib
import pickle
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from flatjax.data.base import Dataset, images_to_float

__all__ = ["load_cifar"]

_LAYOUT = {
    # num_classes: (folder name, train files, test file, meta file, label key, names key)
    10: (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
    ),
    100: ("cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names"),
}

# globals a pickled numpy array may reference (pickle protocols 2-5)
_NUMPY_CORE_GLOBALS = {
    ("multiarray", "_reconstruct"),
    ("multiarray", "scalar"),
    ("numeric", "_frombuffer"),
}
_OTHER_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        package, _, short = module.rpartition(".")
        if package in ("numpy.core", "numpy._core") and (short, name) in _NUMPY_CORE_GLOBALS:
            # numpy 1 writes numpy.core, numpy 2 numpy._core: use whichever is installed,
            # without touching the deprecated alias
            for installed in ("numpy._core", "numpy.core"):
                try:
                    return getattr(importlib.import_module(f"{installed}.{short}"), name)
                except ImportError:
                    continue
        if (module, name) in _OTHER_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _unpickle(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR file {path} does not exist")
    try:
        with path.open("rb") as file:
            content = _ArrayUnpickler(file, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: not a readable CIFAR pickle ({error})") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(content).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in content.items()}


def _field(content: dict[str, Any], key: str, path: Path) -> Any:
    if key not in content:
        raise ValueError(f"{path}: missing the {key!r} entry (found {sorted(content)})")
    return content[key]


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    content = _unpickle(path)
    data = np.asarray(_field(content, "data", path))
    labels = np.asarray(_field(content, label_key, path))
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise ValueError(
            f"{path}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],):
        raise ValueError(
            f"{path}: {labels.size} entries in {label_key!r} for {data.shape[0]} images"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{path}: {label_key!r} must be in [0, {num_classes}), got"
            f" [{labels.min()}, {labels.max()}]"
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images_to_float(images), labels.astype(np.int32)


def load_cifar(directory: str | PathLike, num_classes: int = 10) -> Dataset:
    """Load CIFAR-10 or CIFAR-100 (fine labels) from the python-version pickles.

    Parameters
    ----------
    directory
        The extracted folder (``cifar-10-batches-py`` / ``cifar-100-python``) or its parent.
    num_classes
        10 for CIFAR-10, 100 for CIFAR-100.

    Returns
    -------
    A :class:`Dataset` of ``(N, 32, 32, 3)`` ``float32`` images in ``[0, 1]`` (50,000 train /
    10,000 test for the real sets), named ``"cifar10"`` or ``"cifar100"``.

    Raises
    ------
    FileNotFoundError
        If a batch file is missing.
    ValueError
        If a file is not a CIFAR pickle, lacks an entry, or has inconsistent shapes or labels;
        also if the ``meta`` file is present and lists a different number of classes.
    """
    if num_classes not in _LAYOUT:
        raise ValueError(f"`num_classes` must be 10 or 100, got {num_classes!r}")
    folder, train_files, test_file, meta_file, label_key, names_key = _LAYOUT[num_classes]
    directory = Path(directory)
    if (directory / folder).is_dir():
        directory = directory / folder
    if not directory.is_dir():
        raise FileNotFoundError(f"CIFAR-{num_classes} directory {directory} does not exist")
    meta = directory / meta_file
    if meta.is_file():
        names = _field(_unpickle(meta), names_key, meta)
        if len(names) != num_classes:
            raise ValueError(f"{meta}: {names_key!r} lists {len(names)} classes, not {num_classes}")
    train = [_read_batch(directory / name, label_key, num_classes) for name in train_files]
    x_test, y_test = _read_batch(directory / test_file, label_key, num_classes)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return Dataset(x_train, y_train, x_test, y_test, num_classes, f"cifar{num_classes}")
