"""Shapes, parameter counts, BatchNorm state and validation of flatjax.nn.models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util
from jax import lax

from flatjax.nn import CNN, MLP, ResNet18, make_model
from flatjax.nn.masks import leaf_paths, norm_and_head_mask
from flatjax.nn.models import MODELS, NORMS, canonical_conv, max_pool


def num_params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def init_shapes(model, x):
    """Variable shapes without running (or compiling) the initialisers."""
    return jax.eval_shape(model.init, jax.random.key(0), x)


def fake_variables(model, x):
    """Random variables shaped like ``model.init``'s, drawn with numpy.

    Compiling a ResNet-18's initialisers takes ~10 s of CPU; these tests only
    need variables of the right structure (BatchNorm statistics at their
    initial values: mean 0, variance 1).
    """
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = path[-1].key
        if name in ("mean", "var"):
            return jnp.full(leaf.shape, float(name == "var"), leaf.dtype)
        return jnp.asarray(rng.normal(scale=0.1, size=leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, init_shapes(model, x))


def test_mlp_param_count_and_shapes():
    model = MLP(features=(512, 512), num_classes=10)
    variables = model.init(jax.random.key(0), jnp.ones((2, 28, 28)))
    # 784*512 + 512 + 512*512 + 512 + 512*10 + 10
    assert num_params(variables) == 669_706
    assert set(variables["params"]) == {"Dense_0", "Dense_1", "head"}
    assert model.apply(variables, jnp.ones((3, 784))).shape == (3, 10)
    assert model.apply(variables, jnp.ones(784)).shape == (10,)


def test_mlp_example_ndim_accepts_any_batch_axes():
    model = MLP(features=(8,), num_classes=3, example_ndim=2)
    variables = model.init(jax.random.key(0), jnp.ones((4, 4)))
    x = jax.random.normal(jax.random.key(1), (2, 5, 4, 4))
    out = model.apply(variables, x)
    assert out.shape == (2, 5, 3)
    # per-example (vmapped) calls agree with the batched call
    per_example = jax.vmap(jax.vmap(lambda xi: model.apply(variables, xi)))(x)
    np.testing.assert_allclose(per_example, out, rtol=1e-5, atol=1e-6)


def test_mlp_without_hidden_layers_is_logistic_regression():
    variables = MLP(features=(), num_classes=10).init(jax.random.key(0), jnp.ones((1, 64)))
    assert num_params(variables) == 64 * 10 + 10


@pytest.mark.parametrize("size", [28, 8])
def test_cnn_shapes(size):
    model = CNN(num_classes=10)
    variables = model.init(jax.random.key(0), jnp.ones((1, size, size, 1)))
    x = jax.random.normal(jax.random.key(1), (3, size, size, 1))
    logits = model.apply(variables, x)
    assert logits.shape == (3, 10)
    # a single image (as in blackjax's per-example vmapped log-likelihood)
    np.testing.assert_allclose(model.apply(variables, x[0]), logits[0], rtol=1e-5, atol=1e-5)
    pooled = -(-size // 4)
    assert variables["params"]["Dense_0"]["kernel"].shape == (pooled * pooled * 64, 128)


def test_cnn_rejects_images_without_channel_axis():
    with pytest.raises(ValueError, match="channels-last"):
        CNN().init(jax.random.key(0), jnp.ones((28, 28)))


def test_resnet18_param_count_matches_pytorch_cifar_resnet18():
    shapes = init_shapes(ResNet18(num_classes=10), jnp.ones((1, 32, 32, 3)))
    assert num_params(shapes["params"]) == 11_173_962
    # running mean and variance of every BatchNorm (20 of them, 4800 channels)
    assert num_params(shapes["batch_stats"]) == 2 * 4800
    names = ["/".join(k) for k in traverse_util.flatten_dict(shapes["params"])]
    assert sum("norm" in n and n.endswith("scale") for n in names) == 20
    assert any(n.startswith("head/") for n in names)


@pytest.mark.parametrize("norm", NORMS)
def test_resnet18_names_fit_the_norm_and_head_mask(norm):
    params = init_shapes(ResNet18(norm=norm), jnp.ones((1, 32, 32, 3)))["params"]
    mask = norm_and_head_mask(params)
    selected = [p for p, m in zip(leaf_paths(params), jax.tree.leaves(mask), strict=True) if m]
    per_norm = {"batch": 2, "group": 2, "frn": 3}[norm]  # scale, bias (, tau)
    assert len(selected) == 20 * per_norm + 2
    assert all("norm" in p or p.startswith("head/") for p in selected)


def test_resnet18_train_updates_batch_stats():
    model = ResNet18(num_classes=10)
    x = jax.random.normal(jax.random.key(1), (1, 32, 32, 3))
    variables = fake_variables(model, x)
    train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    logits, updates = train(variables, x)
    assert logits.shape == (1, 10)
    before = variables["batch_stats"]["norm_init"]["mean"]
    after = updates["batch_stats"]["norm_init"]["mean"]
    np.testing.assert_array_equal(before, 0.0)
    assert jnp.all(jnp.isfinite(after)) and not jnp.allclose(after, before)
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(
        variables["batch_stats"]
    )


@pytest.mark.parametrize("norm", ["group", "frn"])
def test_resnet_stateless_norms(norm):
    model = ResNet18(num_classes=5, norm=norm, width=8, stage_sizes=(1, 1))
    x = jnp.ones((2, 8, 8, 3))
    variables = fake_variables(model, x)
    assert set(variables) == {"params"}
    logits = jax.jit(lambda v, x: model.apply(v, x, train=True))(variables, x)
    assert logits.shape == (2, 5)


def test_resnet_rejects_unknown_norm():
    with pytest.raises(ValueError, match="`norm` must be one of"):
        ResNet18(norm="layer")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_make_model_builds_each_model(name):
    model = make_model(name.upper(), num_classes=7)
    assert isinstance(model, MODELS[name])
    assert model.num_classes == 7


def test_make_model_passes_keyword_arguments():
    model = make_model("resnet18", 100, norm="frn", width=16)
    assert (model.norm, model.width, model.num_classes) == ("frn", 16, 100)


def test_make_model_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown model 'vgg'.*'mlp', 'cnn', 'resnet18'"):
        make_model("vgg", 10)


@pytest.mark.parametrize("bad", [0, -1])
def test_num_classes_must_be_positive(bad):
    with pytest.raises(ValueError, match="num_classes"):
        make_model("mlp", bad)


def test_num_classes_must_be_an_integer():
    with pytest.raises(TypeError, match="num_classes"):
        MLP(num_classes=2.5)


@pytest.mark.parametrize(
    "x_shape, k_shape, strides, padding",
    [
        ((2, 7, 7, 3), (3, 3, 3, 4), (1, 1), "SAME"),
        ((2, 9, 9, 3), (3, 3, 3, 5), (2, 2), "SAME"),  # last row unreached by the windows
        ((2, 8, 8, 3), (1, 1, 3, 4), (2, 2), "SAME"),  # ResNet projection shortcut
        ((2, 9, 8, 3), (3, 2, 3, 4), (1, 2), ((1, 2), (0, 1))),
        ((2, 10, 3), (4, 3, 2), (3,), "SAME"),  # one spatial axis
        ((2, 9, 9, 5), (3, 3, 5, 3), (1, 1), ((2, -1), (0, 0))),  # negative padding
        # few input channels: the kernel gradient from stacked input windows
        ((4, 12, 12, 1), (3, 3, 1, 8), (1, 1), "SAME"),
        ((2, 9, 9, 2), (3, 3, 2, 3), (2, 1), ((2, -1), (0, 1))),
    ],
)
def test_canonical_conv_matches_lax_values_and_gradients(x_shape, k_shape, strides, padding):
    nd = len(x_shape) - 2
    dn = lax.ConvDimensionNumbers(
        (0, nd + 1, *range(1, nd + 1)), (nd + 1, nd, *range(nd)), (0, nd + 1, *range(1, nd + 1))
    )
    x = jax.random.normal(jax.random.key(0), x_shape)
    k = jax.random.normal(jax.random.key(1), k_shape)

    ct = jax.random.normal(
        jax.random.key(2),
        lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=dn).shape,
    )

    @jax.jit
    def value_and_vjp(x, k, ct):
        out = {}
        for name, fn in [("lax", lax.conv_general_dilated), ("canonical", canonical_conv)]:
            y, vjp = jax.vjp(lambda x, k: fn(x, k, strides, padding, dimension_numbers=dn), x, k)
            out[name] = (y, *vjp(ct))
        return out

    out = value_and_vjp(x, k, ct)
    for got, want in zip(out["canonical"], out["lax"], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_canonical_conv_passes_other_layouts_to_lax():
    x, k = jnp.ones((1, 3, 6, 6)), jnp.ones((4, 3, 3, 3))  # NCHW, OIHW
    out = canonical_conv(x, k, (1, 1), "SAME")
    np.testing.assert_array_equal(out, lax.conv_general_dilated(x, k, (1, 1), "SAME"))
    # and forward-mode autodiff still works there
    jax.jvp(lambda k: canonical_conv(x, k, (1, 1), "SAME"), (k,), (k,))


def test_conv_choice_changes_no_number():
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    y = jnp.arange(4) % 10
    fast, plain = CNN(features=(4, 8), dense=8), CNN(features=(4, 8), dense=8, conv="xla")
    params = fake_variables(plain, x)["params"]

    @jax.jit
    def grads(params):
        def grad(model):
            loss = lambda p: -jnp.mean(jax.nn.log_softmax(model.apply({"params": p}, x))[:, 0] * y)
            return jax.grad(loss)(params)

        return grad(fast), grad(plain)

    canonical, plain_grads = grads(params)
    leaves = zip(jax.tree.leaves(canonical), jax.tree.leaves(plain_grads), strict=True)
    for got, want in leaves:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_xla_conv_supports_forward_over_reverse_hessian_vector_products():
    model = CNN(features=(2,), dense=4, conv="xla")
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 1))
    params = fake_variables(model, x)["params"]
    loss = lambda p: jnp.sum(model.apply({"params": p}, x) ** 2)
    hvp = jax.jit(lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1])(params, params)
    assert jax.tree.structure(hvp) == jax.tree.structure(params)
    if jax.default_backend() == "cpu":  # "auto" is the custom-VJP convolution here
        fast = CNN(features=(2,), dense=4)
        with pytest.raises(TypeError, match="custom_vjp"):
            jax.jvp(lambda p: fast.apply({"params": p}, x), (params,), (params,))


def test_models_reject_unknown_conv():
    with pytest.raises(ValueError, match="`conv` must be one of"):
        CNN(conv="fft")
    with pytest.raises(ValueError, match="`conv` must be one of"):
        ResNet18(conv="fft")


@pytest.mark.parametrize(
    "shape, window",
    [
        ((4, 28, 28, 3), 2),
        ((3, 7, 7, 2), 2),
        ((5, 5, 2), 2),
        ((2, 9, 9, 1), 3),
        ((2, 3, 8, 7, 2), 2),
    ],
)
def test_max_pool_matches_flax_values_and_gradients(shape, window):
    """Ties (ReLU zeros, repeated values) send the gradient to the first maximum, as flax's."""
    key = jax.random.key(0)
    x = jax.random.normal(key, shape)
    x = jax.nn.relu(jnp.where(jax.random.bernoulli(jax.random.key(1), 0.5, shape), 0.3, x))

    def flax_pool(x):
        return nn.max_pool(x, (window, window), strides=(window, window), padding="SAME")

    want, want_vjp = jax.vjp(flax_pool, x)
    got, got_vjp = jax.vjp(lambda x: max_pool(x, window), x)
    ct = jax.random.normal(jax.random.key(2), want.shape)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_vjp(ct)[0], want_vjp(ct)[0])
    tangent = jax.jvp(lambda x: max_pool(x, window), (x,), (jnp.ones_like(x),))[1]
    assert tangent.shape == want.shape  # forward mode works (no custom rule)


def test_max_pool_propagates_nan():
    x = jnp.array([[[1.0], [jnp.nan]], [[0.0], [2.0]]])
    assert bool(jnp.isnan(max_pool(x)).all())
