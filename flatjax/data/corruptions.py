"""MNIST-C / CIFAR-C style image corruptions with severities 1 to 5, in plain numpy.

``corrupt(images, name, severity, seed)`` takes ``(N, H, W, C)`` float images in ``[0, 1]``
and returns corrupted images of the same shape and dtype, clipped to ``[0, 1]``.
Random parts (noise, the sign of a rotation or shear, the direction of a shift) are drawn
per image from ``seed``, so a call is reproducible.

=================  ====================================  ==============================
name               what                                  parameter at severity 1 .. 5
=================  ====================================  ==============================
gaussian_noise     ``x + N(0, s^2)``                     s = .08 .12 .18 .26 .38
shot_noise         ``Poisson(c x) / c``                  c = 60 25 12 5 3
impulse_noise      salt-and-pepper on a fraction a       a = .03 .06 .09 .17 .27
speckle_noise      ``x + x N(0, s^2)``                   s = .15 .2 .35 .45 .6
gaussian_blur      Gaussian filter, std s pixels [#]_    s = .5 .75 1 1.25 1.5
contrast           ``m + c (x - m)``, m the image mean   c = .4 .3 .2 .1 .05
brightness         ``x + b``                             b = .1 .2 .3 .4 .5
rotate             rotation by +-d degrees               d = 10 20 30 45 60
shear              horizontal shear by +-s               s = .1 .2 .3 .4 .5
translate          shift by f of the side, random angle  f = .05 .1 .15 .2 .25
scale              zoom out by a factor z                z = .9 .8 .7 .6 .5
=================  ====================================  ==============================

.. [#] For images up to 28 pixels wide; scaled with the side beyond (CIFAR: x 32/28).

The noise levels follow Hendrycks & Dietterich's ImageNet-C; the geometric ones follow
MNIST-C's affine corruptions (Mu & Gilmer 2019), given five levels. Geometric transforms
resample bilinearly about the image centre and fill with 0 (black) outside the image.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["CORRUPTIONS", "corrupt"]

Corruption = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


# ----------------------------------------------------------------------------- pixel-wise


def _gaussian_noise(x: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0.0, std, x.shape)


def _shot_noise(x: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    return rng.poisson(x * photons) / photons


def _impulse_noise(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    hit = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    return np.where(hit, salt.astype(x.dtype), x)


def _speckle_noise(x: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    return x + x * rng.normal(0.0, std, x.shape)


def _contrast(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return mean + factor * (x - mean)


def _brightness(x: np.ndarray, shift: float, rng: np.random.Generator) -> np.ndarray:
    return x + shift


# ----------------------------------------------------------------------------- blur


def _gaussian_blur(x: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    std *= max(1.0, x.shape[2] / 28)
    radius = max(1, int(np.ceil(3 * std)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / std) ** 2)
    kernel /= kernel.sum()
    for axis in (1, 2):  # separable: rows, then columns; edge values extend the image
        padding = [(0, 0)] * 4
        padding[axis] = (radius, radius)
        padded = np.pad(x, padding, mode="edge")
        size = x.shape[axis]
        x = sum(
            weight * np.take(padded, np.arange(k, k + size), axis=axis)
            for k, weight in enumerate(kernel)
        )
    return x


# ----------------------------------------------------------------------------- geometric


def _warp(x: np.ndarray, inverse: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Resample every image at ``inverse @ (p - centre) + centre - shift`` (bilinear, 0 fill).

    ``inverse`` is ``(N, 2, 2)`` and ``shift`` ``(N, 2)``, both in (row, column) pixels.
    """
    n, height, width, channels = x.shape
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    grid = np.stack([rows, cols]).reshape(2, -1) - centre[:, None]  # (2, H*W)
    source = inverse @ grid + (centre - shift)[:, :, None]  # (N, 2, H*W)
    base = np.floor(source).astype(np.int64)
    frac = source - base
    flat = x.reshape(n, height * width, channels)
    out = np.zeros_like(flat)
    for d_row in (0, 1):
        for d_col in (0, 1):
            r, c = base[:, 0] + d_row, base[:, 1] + d_col
            weight = (frac[:, 0] if d_row else 1 - frac[:, 0]) * (
                frac[:, 1] if d_col else 1 - frac[:, 1]
            )
            inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            index = np.clip(r, 0, height - 1) * width + np.clip(c, 0, width - 1)
            values = np.take_along_axis(flat, index[:, :, None], axis=1)
            out += (weight * inside)[:, :, None] * values
    return out.reshape(x.shape)


def _random_signs(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice([-1.0, 1.0], size=n)


def _rotate(x: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    angle = np.deg2rad(degrees) * _random_signs(len(x), rng)
    cos, sin = np.cos(angle), np.sin(angle)
    inverse = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], 1)
    return _warp(x, inverse, np.zeros((len(x), 2)))


def _shear(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    # column' = column + s * row, so column = column' - s * row'
    s = factor * _random_signs(len(x), rng)
    inverse = np.zeros((len(x), 2, 2))
    inverse[:, 0, 0] = inverse[:, 1, 1] = 1.0
    inverse[:, 1, 0] = -s
    return _warp(x, inverse, np.zeros((len(x), 2)))


def _translate(x: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0.0, 2 * np.pi, len(x))
    shift = fraction * np.array(x.shape[1:3]) * np.stack([np.sin(angle), np.cos(angle)], -1)
    return _warp(x, np.broadcast_to(np.eye(2), (len(x), 2, 2)), shift)


def _scale(x: np.ndarray, zoom: float, rng: np.random.Generator) -> np.ndarray:
    inverse = np.broadcast_to(np.eye(2) / zoom, (len(x), 2, 2))
    return _warp(x, inverse, np.zeros((len(x), 2)))


# name -> (function, its parameter at severities 1..5)
_CORRUPTIONS: dict[str, tuple[Corruption, tuple[float, ...]]] = {
    "gaussian_noise": (_gaussian_noise, (0.08, 0.12, 0.18, 0.26, 0.38)),
    "shot_noise": (_shot_noise, (60, 25, 12, 5, 3)),
    "impulse_noise": (_impulse_noise, (0.03, 0.06, 0.09, 0.17, 0.27)),
    "speckle_noise": (_speckle_noise, (0.15, 0.2, 0.35, 0.45, 0.6)),
    "gaussian_blur": (_gaussian_blur, (0.5, 0.75, 1.0, 1.25, 1.5)),
    "contrast": (_contrast, (0.4, 0.3, 0.2, 0.1, 0.05)),
    "brightness": (_brightness, (0.1, 0.2, 0.3, 0.4, 0.5)),
    "rotate": (_rotate, (10, 20, 30, 45, 60)),
    "shear": (_shear, (0.1, 0.2, 0.3, 0.4, 0.5)),
    "translate": (_translate, (0.05, 0.1, 0.15, 0.2, 0.25)),
    "scale": (_scale, (0.9, 0.8, 0.7, 0.6, 0.5)),
}

#: Names accepted by :func:`corrupt`.
CORRUPTIONS: tuple[str, ...] = tuple(_CORRUPTIONS)


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Apply corruption ``name`` at ``severity`` (1 = mild .. 5 = strong) to a batch.

    Parameters
    ----------
    images
        Float images in ``[0, 1]`` of shape ``(N, H, W, C)``.
    name
        One of :data:`CORRUPTIONS` (see the module's table).
    severity
        Integer from 1 to 5.
    seed
        Seed of the random parts.

    Returns
    -------
    The corrupted images: same shape and dtype, clipped to ``[0, 1]``.

    Examples
    --------
    >>> x = np.full((2, 8, 8, 1), 0.5, np.float32)
    >>> y = corrupt(x, "contrast", severity=5)
    >>> y.shape, y.dtype, float(np.abs(y - x).max())
    ((2, 8, 8, 1), dtype('float32'), 0.0)
    >>> round(float(corrupt(x, "brightness", severity=3).mean()), 4)
    0.8
    """
    if name not in _CORRUPTIONS:
        raise ValueError(f"`name` must be one of {CORRUPTIONS}, got {name!r}")
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer):
        raise ValueError(f"`severity` must be an integer from 1 to 5, got {severity!r}")
    if not 1 <= severity <= 5:
        raise ValueError(f"`severity` must be an integer from 1 to 5, got {severity!r}")
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"`images` must be (N, H, W, C), got shape {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"`images` must be floats in [0, 1], got dtype {images.dtype}")
    rng = np.random.default_rng(seed)
    function, levels = _CORRUPTIONS[name]
    corrupted = function(images.astype(np.float64), levels[severity - 1], rng)
    return np.clip(corrupted, 0.0, 1.0).astype(images.dtype)
