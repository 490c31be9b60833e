"""Flax Linen models used in the Entropy-MCMC and SA-BMA experiments.

All models share one calling convention, ``model.apply(variables, x, train=False)``,
and return logits. ``train`` only matters for batch normalisation (batch
statistics and an update of the ``batch_stats`` collection when ``True``, running
averages when ``False``); the MLP and CNN accept and ignore it, so glue code can
treat every model alike.

Naming, relied on by parameter masks: every normalisation layer's name contains
``"norm"`` and the classifier layer is called ``"head"`` in every model.

The MLP and the CNN also accept a single *unbatched* example (any number of
leading batch axes, including none), so they work with the per-example
log-likelihoods that :func:`blackjax.sgmcmc.gradients.grad_estimator` vmaps.

Convolutions inside ``lax.scan`` on CPU: XLA:CPU rewrites a convolution into the
layout its fast (Eigen/YNNPACK) kernels need only for convolutions in the
*entry* computation, not inside loop bodies (jax-ml/jax#12868). The gradients
of a convolution are convolutions in other layouts, so a CNN's gradient inside
the ``lax.scan`` of a sampling loop runs 10-40x slower than outside it. The
convolutional models here therefore default to ``conv="auto"``: on the CPU
backend that is :func:`canonical_conv`, whose backward pass is written as
channels-last convolutions plus explicit transposes (the same numbers, fast in
loops too), elsewhere plain ``lax.conv_general_dilated``. The one limit of
:func:`canonical_conv` is that of ``jax.custom_vjp``: no forward-mode autodiff
(``jax.jvp``, ``jax.jacfwd``, forward-over-reverse Hessian-vector products).
Compute those reverse-over-reverse, or build the model with ``conv="xla"`` (the
parameters are the same for every choice).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from flatjax._util import check_positive_int

__all__ = [
    "MLP",
    "CNN",
    "ResNet18",
    "BasicBlock",
    "FilterResponseNorm",
    "canonical_conv",
    "max_pool",
    "auto_conv",
    "CONVS",
    "NORMS",
    "MODELS",
    "make_model",
]

#: Normalisation layers :class:`ResNet18` accepts.
NORMS = ("batch", "group", "frn")


def _channels_last(ndim: int) -> lax.ConvDimensionNumbers:
    """Dimension numbers of a channels-last convolution (``NHWC``, ``HWIO``, ``NHWC``)."""
    spatial = tuple(range(1, ndim + 1))
    return lax.ConvDimensionNumbers(
        (0, ndim + 1, *spatial), (ndim + 1, ndim, *range(ndim)), (0, ndim + 1, *spatial)
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x: jax.Array, kernel: jax.Array, strides: tuple, pads: tuple, precision) -> jax.Array:
    dn = _channels_last(x.ndim - 2)
    return lax.conv_general_dilated(
        x, kernel, strides, pads, dimension_numbers=dn, precision=precision
    )


def _conv_fwd(x, kernel, strides, pads, precision):
    return _conv(x, kernel, strides, pads, precision), (x, kernel)


def _conv_bwd(strides, pads, precision, residuals, dy):
    x, kernel = residuals
    nd = x.ndim - 2
    dn = _channels_last(nd)
    window = kernel.shape[:nd]
    ones = (1,) * nd
    # Input gradient: dilate dy by the strides, pad it, and correlate with the
    # spatially flipped kernel whose in/out channels are swapped.
    config = [(0, 0, 0)]
    for n, k, s, (lo, hi), m in zip(
        x.shape[1:-1], window, strides, pads, dy.shape[1:-1], strict=True
    ):
        unused = n + lo + hi - (s * (m - 1) + k)  # rows the strided windows never reach
        config.append((k - 1 - lo, k - 1 - hi + unused, s - 1))
    config.append((0, 0, 0))
    flipped = jnp.flip(kernel, tuple(range(nd))).swapaxes(-1, -2)
    if all(s == 1 for s in strides) and all(lo >= 0 and hi >= 0 for lo, hi, _ in config):
        # no dilation: let the convolution pad (faster than a separate pad, see below)
        dy_dilated, dx_pads = dy, [(lo, hi) for lo, hi, _ in config[1:-1]]
    else:
        dy_dilated, dx_pads = lax.pad(dy, jnp.zeros((), dy.dtype), config), "VALID"
    dx = lax.conv_general_dilated(
        dy_dilated, flipped, ones, dx_pads, dimension_numbers=dn, precision=precision
    )
    if x.shape[-1] <= _FEW_CHANNELS:
        return dx.astype(x.dtype), _kernel_grad_patches(x, dy, window, strides, pads, precision)
    # Kernel gradient: a channels-last convolution of the input, with batch and
    # channel axes swapped, by dy used as a (stride-dilated) window. The padding is
    # the convolution's own: padding the input first (``jnp.pad``) made this
    # convolution 1.4x slower on XLA:CPU (the CNN's second layer, batch 128).
    dk = lax.conv_general_dilated(
        x.swapaxes(0, -1),
        jnp.moveaxis(dy, 0, nd),
        ones,
        pads,
        rhs_dilation=strides,
        dimension_numbers=dn,
        precision=precision,
    )
    dk = jnp.moveaxis(dk[(slice(None), *(slice(0, k) for k in window))], 0, nd)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)

#: Inputs with at most this many channels (an image's first layer) get their kernel
#: gradient from :func:`_kernel_grad_patches`.
_FEW_CHANNELS = 4


def _kernel_grad_patches(x, dy, window, strides, pads, precision):
    """The kernel gradient as one contraction of the input's shifted windows with ``dy``.

    ``dk[t, c, o] = sum_{b, pos} x_pad[b, pos * stride + t, c] dy[b, pos, o]``: the
    ``prod(window)`` strided slices of the padded input, stacked, contracted with
    ``dy`` over batch and positions. For few input channels (a first layer) this is
    a thin matrix product, 2.7x faster on XLA:CPU than the convolution above (the
    CNN's first layer: 1 channel, batch 128, 28 x 28).
    """
    nd = x.ndim - 2
    zero = jnp.zeros((), x.dtype)
    padded = lax.pad(x, zero, [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)])
    out_shape = dy.shape[1:-1]
    taps = []
    for offset in itertools.product(*(range(k) for k in window)):
        index = tuple(
            slice(o, o + s * (m - 1) + 1, s)
            for o, s, m in zip(offset, strides, out_shape, strict=True)
        )
        taps.append(padded[(slice(None), *index)])
    patches = jnp.stack(taps)  # (taps, batch, *out_shape, in)
    spatial = tuple(range(2, nd + 2))
    dk = lax.dot_general(
        patches,
        dy,
        (((1, *spatial), (0, *range(1, nd + 1))), ((), ())),
        precision=precision,
    )  # (taps, in, out)
    return dk.reshape(*window, x.shape[-1], dy.shape[-1])


def canonical_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
) -> jax.Array:
    """``lax.conv_general_dilated`` whose gradients are channels-last convolutions.

    A drop-in for ``flax.linen.Conv(conv_general_dilated=...)``. For undilated,
    ungrouped channels-last convolutions (``NHWC`` input, ``HWIO`` kernel, any
    number of spatial axes) the forward pass is the same convolution, and the
    backward pass computes the input and kernel gradients as channels-last
    convolutions plus explicit transposes, which XLA:CPU runs with its fast
    kernels even inside ``lax.scan``/``while`` bodies (where it otherwise falls
    back to a naive loop, see the module docstring). Every other configuration
    is passed to ``lax.conv_general_dilated`` unchanged.

    Forward-mode autodiff (``jax.jvp``) is not available through it
    (``jax.custom_vjp``); reverse mode of any order is.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> dn = ("NHWC", "HWIO", "NHWC")
    >>> x, k = jnp.ones((2, 5, 5, 3)), jnp.ones((3, 3, 3, 4))
    >>> def loss(conv, k):
    ...     return jnp.sum(conv(x, k, (2, 2), "SAME", dimension_numbers=dn) ** 2)
    >>> g = jax.grad(loss, argnums=1)(canonical_conv, k)
    >>> bool(jnp.allclose(g, jax.grad(loss, argnums=1)(jax.lax.conv_general_dilated, k)))
    True
    """
    nd = lhs.ndim - 2
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    undilated = all(d is None or all(v == 1 for v in d) for d in (lhs_dilation, rhs_dilation))
    if not (
        nd >= 1
        and dn == _channels_last(nd)
        and undilated
        and feature_group_count == 1
        and batch_group_count == 1
        and preferred_element_type is None
    ):
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:-1], rhs.shape[:nd], strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _conv(lhs, rhs, strides, pads, precision)


def auto_conv(*args, **kwargs) -> jax.Array:
    """:func:`canonical_conv` on the CPU backend, ``lax.conv_general_dilated`` elsewhere."""
    conv = canonical_conv if jax.default_backend() == "cpu" else lax.conv_general_dilated
    return conv(*args, **kwargs)


#: Convolution implementations the convolutional models accept (``conv=``).
CONVS: dict[str, Callable] = {
    "auto": auto_conv,
    "canonical": canonical_conv,
    "xla": lax.conv_general_dilated,
}


def max_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """Max-pool of channels-last images over non-overlapping ``window x window`` tiles.

    The same values and gradients as ``flax.linen.max_pool(x, (window, window),
    strides=(window, window), padding="SAME")`` (ties send the whole gradient to the
    first maximum of a tile in row-major order, as XLA's ``select_and_scatter`` does),
    for ``x`` of shape ``(..., H, W, C)`` with any number of leading axes (none for
    one image).

    Why not ``nn.max_pool``: its gradient is a ``select_and_scatter`` that XLA:CPU
    runs as a slow generic loop (on the CNN's first pool, batch 128, 60 ms against
    4 ms here, more than both of its convolutions' gradients). Here a tile is a
    reshape, its maximum is found by comparing the ``window**2`` strided slices,
    and the output is the sum of those slices masked to the first maximum: the
    forward and backward passes are elementwise fusions, and the gradient (the
    mask times the output's gradient) needs no custom rule, so forward-mode
    autodiff works too.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = jnp.arange(16.0).reshape(4, 4, 1)
    >>> max_pool(x)[..., 0]
    Array([[ 5.,  7.],
           [13., 15.]], dtype=float32)
    """
    window = check_positive_int("window", window)
    *lead, height, width, channels = x.shape
    pads = lax.padtype_to_pads((height, width), (window, window), (window, window), "SAME")
    if any(p for pair in pads for p in pair):
        fill = -jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
        x = jnp.pad(x, ((0, 0),) * len(lead) + (*pads, (0, 0)), constant_values=fill)
    rows, cols = x.shape[-3] // window, x.shape[-2] // window
    tiles = x.reshape(*lead, rows, window, cols, window, channels)
    parts = [tiles[..., :, i, :, j, :] for i in range(window) for j in range(window)]
    top = lax.stop_gradient(functools.reduce(jnp.maximum, parts))
    out, found = None, None
    for part in parts:
        hit = part == top
        first = hit if found is None else hit & ~found
        found = hit if found is None else found | hit
        term = jnp.where(first, part, jnp.zeros((), x.dtype))
        out = term if out is None else out + term
    return jnp.where(found, out, top)  # a tile with a NaN has no hit: NaN out, as lax.max


def _check_conv(conv: str) -> None:
    if conv not in CONVS:
        raise ValueError(f"`conv` must be one of {tuple(CONVS)}, got {conv!r}")


class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs.

    Parameters
    ----------
    features
        Widths of the hidden layers (named ``Dense_0``, ``Dense_1``, ...).
    num_classes
        Number of logits of the ``head`` layer.
    norm
        ``"layer"`` puts a LayerNorm (``norm0``, ``norm1``, ...) after each hidden
        Dense layer (the normalisation layers of the transfer scheme); ``None``:
        none.
    example_ndim
        Rank of one example, whose axes are flattened. With the default ``None``
        a 1-D ``x`` is one flat example and an ``N``-D ``x`` is a batch along its
        first axis (so ``(N, 28, 28)`` becomes ``(N, 784)``). Set it (e.g. to 2
        for ``28 x 28`` images) to accept any number of leading batch axes,
        including none.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> model = MLP(features=(16,), num_classes=3)
    >>> variables = model.init(jax.random.key(0), jnp.ones((2, 4, 4)))
    >>> model.apply(variables, jnp.ones((5, 4, 4))).shape
    (5, 3)
    >>> model.apply(variables, jnp.ones(16)).shape  # one flat example
    (3,)
    """

    features: Sequence[int] = (512, 512)
    num_classes: int = 10
    example_ndim: int | None = None
    norm: str | None = None

    def __post_init__(self) -> None:
        _check_widths("features", self.features)
        check_positive_int("num_classes", self.num_classes)
        if self.example_ndim is not None:
            check_positive_int("example_ndim", self.example_ndim)
        if self.norm not in (None, "layer"):
            raise ValueError(f"`norm` must be None or 'layer', got {self.norm!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        x = jnp.asarray(x)
        if self.example_ndim is not None:
            x = _flatten_trailing(x, self.example_ndim, "MLP")
        elif x.ndim > 1:
            x = x.reshape(x.shape[0], -1)
        for i, width in enumerate(self.features):
            x = nn.Dense(width)(x)
            if self.norm == "layer":
                x = nn.LayerNorm(name=f"norm{i}")(x)
            x = nn.relu(x)
        return nn.Dense(self.num_classes, name="head")(x)


class CNN(nn.Module):
    """Small convolutional network: ``[conv 3x3 -> ReLU -> max-pool 2x2] x 2 -> dense -> head``.

    Sized for ``28 x 28`` (MNIST, Fashion-MNIST) and ``8 x 8`` (scikit-learn
    digits) images; any spatial size works (``SAME`` padding, the pools round up).

    Parameters
    ----------
    num_classes
        Number of logits of the ``head`` layer.
    features
        Channels of the convolutions (32 and 64 by default).
    dense
        Width of the hidden dense layer.
    conv
        ``"auto"`` (:func:`canonical_conv` on CPU, where it makes gradients
        inside ``lax.scan`` 10-40x faster but rules out forward-mode autodiff;
        ``lax.conv_general_dilated`` elsewhere), ``"canonical"`` or ``"xla"``
        (always ``lax.conv_general_dilated``). See the module docstring.

    Notes
    -----
    Inputs are channels-last images ``(..., H, W, C)`` with any number of leading
    batch axes (none for a single image): add the channel axis to grey-scale
    images, e.g. ``x[..., None]``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> model = CNN(num_classes=10, features=(4, 8), dense=16)
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 8, 8, 1)))
    >>> model.apply(variables, jnp.ones((2, 8, 8, 1))).shape
    (2, 10)
    >>> model.apply(variables, jnp.ones((8, 8, 1))).shape  # one image
    (10,)
    """

    num_classes: int = 10
    features: Sequence[int] = (32, 64)
    dense: int = 128
    conv: str = "auto"

    def __post_init__(self) -> None:
        check_positive_int("num_classes", self.num_classes)
        _check_widths("features", self.features)
        check_positive_int("dense", self.dense)
        _check_conv(self.conv)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        x = jnp.asarray(x)
        if x.ndim < 3:
            raise ValueError(
                f"CNN expects channels-last images (..., H, W, C), got shape {x.shape}; "
                "add a channel axis to grey-scale images, e.g. x[..., None]"
            )
        for width in self.features:
            x = nn.Conv(width, (3, 3), padding="SAME", conv_general_dilated=CONVS[self.conv])(x)
            x = nn.relu(x)
            x = max_pool(x, 2)
        x = _flatten_trailing(x, 3, "CNN")
        x = nn.relu(nn.Dense(self.dense)(x))
        return nn.Dense(self.num_classes, name="head")(x)


class FilterResponseNorm(nn.Module):
    """Filter response normalisation with a thresholded linear unit (Singh & Krishnan, 2020).

    ``y = max(scale * x / sqrt(mean_{H,W}(x^2) + epsilon) + bias, tau)``, per
    example and channel: no batch dependence, so no state and no train/eval gap.
    This is the normaliser of the ResNet-FRN models of Izmailov et al. (2021).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> layer = FilterResponseNorm()
    >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 4, 4, 3)))
    >>> sorted(variables["params"])
    ['bias', 'scale', 'tau']
    """

    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), x.dtype)
        bias = self.param("bias", nn.initializers.zeros, (channels,), x.dtype)
        tau = self.param("tau", nn.initializers.zeros, (channels,), x.dtype)
        nu2 = jnp.mean(jnp.square(x), axis=(-3, -2), keepdims=True)
        x = x * jax.lax.rsqrt(nu2 + self.epsilon)
        return jnp.maximum(scale * x + bias, tau)


def _norm_layer(norm: str, train: bool, channels: int, name: str) -> nn.Module:
    """The normalisation layer ``norm`` (one of :data:`NORMS`) for ``channels`` channels."""
    if norm == "batch":
        # PyTorch's defaults (the papers' reference code); its momentum 0.1 is 0.9 here.
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
    if norm == "group":
        return nn.GroupNorm(num_groups=math.gcd(32, channels), epsilon=1e-5, name=name)
    return FilterResponseNorm(name=name)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions and a (projected) shortcut.

    ``act(norm2(conv2(act(norm1(conv1(x))))) + shortcut(x))``; the shortcut is a
    1x1 strided convolution and a normalisation (``conv_proj``, ``norm_proj``)
    when the shape changes, the identity otherwise.
    """

    features: int
    strides: int = 1
    norm: str = "batch"
    activation: Callable[[jax.Array], jax.Array] = nn.relu
    conv: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv = lambda k, s, name: nn.Conv(
            self.features,
            (k, k),
            strides=(s, s),
            padding="SAME",
            use_bias=False,
            conv_general_dilated=CONVS[self.conv],
            name=name,
        )
        y = conv(3, self.strides, "conv1")(x)
        y = self.activation(_norm_layer(self.norm, train, self.features, "norm1")(y))
        y = conv(3, 1, "conv2")(y)
        y = _norm_layer(self.norm, train, self.features, "norm2")(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = conv(1, self.strides, "conv_proj")(x)
            x = _norm_layer(self.norm, train, self.features, "norm_proj")(x)
        return self.activation(x + y)


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: 3x3 stem (no max-pool), 4 stages of 2 basic blocks.

    The architecture of the PyTorch CIFAR ResNet-18 used by Entropy-MCMC and
    SA-BMA (11,173,962 parameters for 10 classes with ``width=64``): a 3x3
    stride-1 stem, stages of ``width * (1, 2, 4, 8)`` channels with strides
    ``(1, 2, 2, 2)``, global average pooling and a dense ``head``. Convolutions
    have no bias (the normalisation that follows has one).

    Parameters
    ----------
    num_classes
        Number of logits of the ``head`` layer.
    norm
        ``"batch"`` (BatchNorm, PyTorch defaults; running averages in the
        ``batch_stats`` collection), ``"group"`` (GroupNorm, 32 groups) or
        ``"frn"`` (:class:`FilterResponseNorm`, stateless). Izmailov et al. (2021)
        pair FRN with ``activation=nn.swish``.
    width
        Channels of the stem and first stage (64 for ResNet-18; smaller for tests).
    stage_sizes
        Number of blocks per stage (``(2, 2, 2, 2)`` for ResNet-18).
    activation
        Non-linearity after each normalisation (ReLU by default).
    conv
        ``"auto"``, ``"canonical"`` or ``"xla"``, as for :class:`CNN`.

    Notes
    -----
    Call with ``train=True`` and ``mutable=["batch_stats"]`` to normalise with
    the minibatch's statistics and update the running averages; ``train=False``
    (the default) uses the running averages and needs no mutable collection.
    Layer names: ``conv_init``/``norm_init`` (stem), ``stage{i}_block{j}``
    (:class:`BasicBlock`) and ``head``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> model = ResNet18(num_classes=10, width=4, stage_sizes=(1, 1))
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 8, 8, 3)))
    >>> sorted(variables)
    ['batch_stats', 'params']
    >>> logits, updates = model.apply(
    ...     variables, jnp.ones((2, 8, 8, 3)), train=True, mutable=["batch_stats"])
    >>> logits.shape
    (2, 10)
    """

    num_classes: int = 10
    norm: str = "batch"
    width: int = 64
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    activation: Callable[[jax.Array], jax.Array] = nn.relu
    conv: str = "auto"

    def __post_init__(self) -> None:
        check_positive_int("num_classes", self.num_classes)
        if self.norm not in NORMS:
            raise ValueError(f"`norm` must be one of {NORMS}, got {self.norm!r}")
        check_positive_int("width", self.width)
        _check_widths("stage_sizes", self.stage_sizes)
        _check_conv(self.conv)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(
            self.width,
            (3, 3),
            padding="SAME",
            use_bias=False,
            conv_general_dilated=CONVS[self.conv],
            name="conv_init",
        )(x)
        x = self.activation(_norm_layer(self.norm, train, self.width, "norm_init")(x))
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = BasicBlock(
                    features=self.width * 2**i,
                    strides=2 if i > 0 and j == 0 else 1,
                    norm=self.norm,
                    activation=self.activation,
                    conv=self.conv,
                    name=f"stage{i + 1}_block{j + 1}",
                )(x, train)
        x = jnp.mean(x, axis=(-3, -2))
        return nn.Dense(self.num_classes, name="head")(x)


#: Names :func:`make_model` accepts, with the model class each builds.
MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN, "resnet18": ResNet18}


def make_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build a model by name: ``"mlp"``, ``"cnn"`` or ``"resnet18"``.

    Parameters
    ----------
    name
        Model name (case-insensitive), a key of :data:`MODELS`.
    num_classes
        Number of logits.
    **kwargs
        Further attributes of the model class (e.g. ``features=(256,)`` for the
        MLP, ``norm="frn"`` for the ResNet).

    Examples
    --------
    >>> model = make_model("resnet18", num_classes=100, norm="frn")
    >>> type(model).__name__, model.num_classes, model.norm
    ('ResNet18', 100, 'frn')
    >>> make_model("vgg16", 10)
    Traceback (most recent call last):
    ...
    ValueError: unknown model 'vgg16'; choose one of 'mlp', 'cnn', 'resnet18'
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in MODELS:
        choices = ", ".join(repr(k) for k in MODELS)
        raise ValueError(f"unknown model {name!r}; choose one of {choices}")
    return MODELS[key](num_classes=num_classes, **kwargs)


def _check_widths(name: str, values: Sequence[int]) -> None:
    """Raise unless ``values`` is a sequence of positive integers."""
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"`{name}` must be a sequence of positive integers, got {values!r}")
    for v in values:
        check_positive_int(name, v)


def _flatten_trailing(x: jax.Array, ndim: int, model: str) -> jax.Array:
    """Flatten the last ``ndim`` axes of ``x``, keeping any leading batch axes."""
    if x.ndim < ndim:
        raise ValueError(f"{model} expects inputs with at least {ndim} axes, got shape {x.shape}")
    return x.reshape(*x.shape[: x.ndim - ndim], -1)
