"""Shapes, parameter counts, BatchNorm state and validation of flatjax.nn.models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from flatjax.nn import CNN, MLP, ResNet18, make_model
from flatjax.nn.masks import leaf_paths, norm_and_head_mask
from flatjax.nn.models import MODELS, NORMS


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
