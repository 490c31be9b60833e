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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from flatjax._util import check_positive_int

__all__ = [
    "MLP",
    "CNN",
    "ResNet18",
    "BasicBlock",
    "FilterResponseNorm",
    "NORMS",
    "MODELS",
    "make_model",
]

#: Normalisation layers :class:`ResNet18` accepts.
NORMS = ("batch", "group", "frn")


class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs.

    Parameters
    ----------
    features
        Widths of the hidden layers (named ``Dense_0``, ``Dense_1``, ...).
    num_classes
        Number of logits of the ``head`` layer.
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

    def __post_init__(self) -> None:
        _check_widths("features", self.features)
        check_positive_int("num_classes", self.num_classes)
        if self.example_ndim is not None:
            check_positive_int("example_ndim", self.example_ndim)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        x = jnp.asarray(x)
        if self.example_ndim is not None:
            x = _flatten_trailing(x, self.example_ndim, "MLP")
        elif x.ndim > 1:
            x = x.reshape(x.shape[0], -1)
        for width in self.features:
            x = nn.relu(nn.Dense(width)(x))
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

    def __post_init__(self) -> None:
        check_positive_int("num_classes", self.num_classes)
        _check_widths("features", self.features)
        check_positive_int("dense", self.dense)
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
            x = nn.relu(nn.Conv(width, (3, 3), padding="SAME")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
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

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv = lambda k, s, name: nn.Conv(
            self.features, (k, k), strides=(s, s), padding="SAME", use_bias=False, name=name
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

    def __post_init__(self) -> None:
        check_positive_int("num_classes", self.num_classes)
        if self.norm not in NORMS:
            raise ValueError(f"`norm` must be one of {NORMS}, got {self.norm!r}")
        check_positive_int("width", self.width)
        _check_widths("stage_sizes", self.stage_sizes)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(self.width, (3, 3), padding="SAME", use_bias=False, name="conv_init")(x)
        x = self.activation(_norm_layer(self.norm, train, self.width, "norm_init")(x))
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = BasicBlock(
                    features=self.width * 2**i,
                    strides=2 if i > 0 and j == 0 else 1,
                    norm=self.norm,
                    activation=self.activation,
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
