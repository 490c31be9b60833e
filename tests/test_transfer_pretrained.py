"""Fine-tuning a user's pretrained network (flatjax.transfer.finetune_pretrained, load_params)."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import flatjax
from flatjax import transfer
from flatjax.data import load_digits, split_classes
from flatjax.nn.glue import nnx_apply
from flatjax.transfer import TransferConfig, finetune_pretrained, load_params, save_params
from flatjax.vi import swag

FAST = dict(method="sgd", epochs=2, batch_size=6, num_bma=2)


class NormNet(nn.Module):
    classes: int = 5

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.LayerNorm(name="norm")(nn.relu(nn.Dense(8)(x)))
        return nn.Dense(self.classes, name="head")(x)


class PlainNet(nn.Module):
    classes: int = 5

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.classes, name="head")(nn.relu(nn.Dense(8)(x)))


class BNNet(nn.Module):
    classes: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        return nn.Dense(self.classes, name="head")(x)


class NNXNet(nnx.Module):
    def __init__(self, classes, rngs, norm="layer"):
        self.body = nnx.Linear(4, 8, rngs=rngs)
        self.norm = nnx.LayerNorm(8, rngs=rngs) if norm == "layer" else nnx.BatchNorm(8, rngs=rngs)
        self.head = nnx.Linear(8, classes, rngs=rngs)

    def __call__(self, x):
        return self.head(self.norm(jax.nn.relu(self.body(x))))


@pytest.fixture(scope="module")
def data():
    x = jax.random.normal(jax.random.key(0), (12, 4))
    return x, jnp.arange(12) % 3


def _init(module, x):
    return module.init(jax.random.key(1), x)["params"]


@pytest.mark.parametrize(
    "trainable, expected",
    [
        ("norm_and_head", {"head/bias", "head/kernel", "norm/bias", "norm/scale"}),
        ("head", {"head/bias", "head/kernel"}),
        (
            "all",
            {
                "Dense_0/bias",
                "Dense_0/kernel",
                "head/bias",
                "head/kernel",
                "norm/bias",
                "norm/scale",
            },
        ),
    ],
)
def test_linen_every_trainable_option(trainable, expected, data):
    x, y = data
    params = _init(NormNet(5), x)
    result = finetune_pretrained(
        NormNet(3), params, (x, y), num_classes=3, trainable=trainable, **FAST
    )
    assert set(result.samples) == expected
    probs = result.predict(x)
    assert probs.shape == (12, 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    # the frozen part stays at the pretrained weights
    if trainable != "all":
        np.testing.assert_array_equal(
            result.backbones["Dense_0/kernel"], params["Dense_0"]["kernel"]
        )


def test_a_boolean_mask_pytree(data):
    x, y = data
    params = _init(NormNet(3), x)
    mask = jax.tree_util.tree_map_with_path(lambda p, _: p[0].key in ("Dense_0", "head"), params)
    result = finetune_pretrained(NormNet(3), params, (x, y), trainable=mask, **FAST)
    assert set(result.samples) == {"Dense_0/bias", "Dense_0/kernel", "head/bias", "head/kernel"}
    # num_classes equal to the head's width: the pretrained head is kept, not zeroed
    assert result.temperature is None


@pytest.mark.parametrize("method", ["sabma", "swag"])
def test_antithetic_bma_draws_pair_up_around_q(method, data):
    x, y = data
    params = _init(NormNet(3), x)
    kwargs = {**FAST, "method": method, "num_bma": 4}
    result = finetune_pretrained(NormNet(3), params, (x, y), bma_draws="antithetic", **kwargs)
    assert result.config.bma_draws == "antithetic"
    for path, mean in result.q.mean.items():
        w = result.samples[path]
        np.testing.assert_allclose(w[2:], 2 * mean - w[:2], rtol=1e-5, atol=1e-6)
        assert not np.allclose(w[0], mean, atol=1e-6)  # a draw, not the mean itself


def test_head_kept_or_reinitialised(data):
    x, y = data
    params = _init(NormNet(3), x)
    kept = finetune_pretrained(NormNet(3), params, (x, y), num_classes=3, **{**FAST, "epochs": 1})
    fresh = finetune_pretrained(
        NormNet(3), params, (x, y), num_classes=3, reinit_head=True, **{**FAST, "epochs": 1}
    )
    w0 = np.asarray(params["head"]["kernel"])
    # one epoch of small steps: the kept head is still near its pretrained value
    assert np.abs(kept.samples["head/kernel"][0] - w0).max() < 0.5 * np.abs(w0).max()
    assert np.abs(fresh.samples["head/kernel"][0]).max() < 0.5 * np.abs(w0).max()


@pytest.mark.parametrize("trainable", ["norm_and_head", "head", "all"])
def test_no_normalisation_layers(trainable, data):
    x, y = data
    params = _init(PlainNet(5), x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = finetune_pretrained(
            PlainNet(3), params, (x, y), num_classes=3, trainable=trainable, **FAST
        )
    said = [w for w in caught if "no normalisation layer" in str(w.message)]
    if trainable == "norm_and_head":
        assert len(said) == 1 and "head alone" in str(said[0].message)
        assert set(result.samples) == {"head/bias", "head/kernel"}
    else:
        assert not said
    assert result.predict(x).shape == (12, 3)


def test_nnx_module_and_split(data):
    x, y = data
    model = NNXNet(5, nnx.Rngs(0))
    result = finetune_pretrained(model, None, (x, y), num_classes=3, **FAST)
    assert result.predict(x).shape == (12, 3)
    assert {p.split("/")[0] for p in result.samples} == {"head", "norm"}
    # an nnx.split / nnx_apply pair works the same, with the head kept
    apply_fn, params = nnx_apply(NNXNet(3, nnx.Rngs(0)))
    result = finetune_pretrained(apply_fn, params, (x, y), trainable="head", **FAST)
    assert result.predict(x[:5]).shape == (5, 3)


def test_batchnorm_statistics_are_recomputed_on_the_target(data):
    x, y = data
    x = x + 3.0
    variables = BNNet(3).init(jax.random.key(1), x[:2])  # running mean 0, var 1
    result = finetune_pretrained(BNNet(3), variables, (x, y), **FAST)
    np.testing.assert_allclose(result.stats["bn"]["mean"][0], x.mean(0), rtol=1e-4)
    np.testing.assert_allclose(result.stats["bn"]["var"][0], x.var(0), rtol=1e-4)
    assert result.predict(x).shape == (12, 3)
    # NNX BatchNorm too
    model = NNXNet(3, nnx.Rngs(0), norm="batch")
    result = finetune_pretrained(model, None, (x, y), **FAST)
    h = jax.nn.relu(model.body(x))
    np.testing.assert_allclose(
        result.stats["norm"]["mean"].get_value()[0]
        if hasattr(result.stats["norm"]["mean"], "get_value")
        else result.stats["norm"]["mean"][...][0],
        h.mean(0),
        atol=1e-4,
    )


def test_sabma_with_a_swag_source_posterior_on_nnx_params(data):
    x, y = data
    apply_fn, params = nnx_apply(NNXNet(3, nnx.Rngs(0)))
    iterates = jax.tree.map(
        lambda a: a[None] + 0.01 * jnp.arange(3.0).reshape(3, *([1] * a.ndim)), params
    )
    state = swag.collect_swag(iterates, max_rank=2)
    result = finetune_pretrained(
        apply_fn,
        params,
        (x, y),
        method="sabma",
        source_posterior=state,
        fisher="diagonal",
        epochs=2,
        batch_size=6,
        num_bma=3,
        validation=(x, y),
    )
    assert result.per_sample_backbone and result.q is not None
    assert result.temperature is not None
    b = result.backbones["body/kernel/value"]
    assert b.shape[0] == 3 and float(jnp.std(b, axis=0).max()) > 0  # drawn per sample
    metrics = result.evaluate(x, y)
    assert set(metrics) == {"raw", "temperature_scaled"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"head": "classifier"},
            r"`head`='classifier'.*top-level names are \['Dense_0', 'head', 'norm'\]",
        ),
        ({"trainable": "norms"}, "`trainable` must be one of"),
        ({"num_classes": 1}, "`num_classes` must be an integer >= 2"),
        ({"method": "adam"}, "`method`"),
        ({"num_classes": 3, "reinit_head": False}, "reinit_head"),
    ],
)
def test_bad_arguments(kwargs, match, data):
    x, y = data
    params = _init(NormNet(5), x)
    with pytest.raises(ValueError, match=match):
        finetune_pretrained(NormNet(5), params, (x, y), **{**FAST, **kwargs})


def test_bad_masks_and_models(data):
    x, y = data
    params = _init(NormNet(3), x)
    nothing = jax.tree.map(lambda _: False, params)
    with pytest.raises(ValueError, match="selects no parameter"):
        finetune_pretrained(NormNet(3), params, (x, y), trainable=nothing, **FAST)
    with pytest.raises(ValueError, match="structure of `params`.*missing.*Dense_0"):
        finetune_pretrained(NormNet(3), params, (x, y), trainable={"head": True}, **FAST)
    frozen_head = jax.tree_util.tree_map_with_path(lambda p, _: p[0].key == "norm", params)
    with pytest.raises(ValueError, match="a fresh head must be trained"):
        finetune_pretrained(
            NormNet(3), _init(NormNet(5), x), (x, y), num_classes=3, trainable=frozen_head, **FAST
        )
    # the module still built for the pretrained 5 classes: its shape check names the fix
    with pytest.raises(ValueError, match="built with 3 outputs"):
        finetune_pretrained(NormNet(5), _init(NormNet(5), x), (x, y), num_classes=3, **FAST)
    with pytest.raises(TypeError, match="unknown keyword.*'lr_max'"):
        finetune_pretrained(NormNet(3), params, (x, y), lr_max=1.0, **FAST)


@pytest.mark.parametrize("suffix", ["weights.msgpack", "ckpt"])
def test_load_params_round_trip(suffix, tmp_path, data):
    x, _ = data
    params = _init(NormNet(5), x)
    path = save_params(tmp_path / suffix, params)
    like = _init(NormNet(5), x[:1] * 0)
    restored = load_params(path, like=like)
    assert jax.tree.structure(restored) == jax.tree.structure(like)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    # a checkpoint of the whole variables dict is read from its "params" entry
    path = save_params(tmp_path / f"vars_{suffix}", {"params": params})
    assert jax.tree.structure(load_params(path, like=like)) == jax.tree.structure(like)
    # a head of another width is accepted where named, and re-initialised downstream
    target_like = _init(NormNet(3), x)
    with pytest.raises(
        ValueError, match=r"shapes differ: head/bias: \(5,\) in the checkpoint vs \(3,\)"
    ):
        load_params(path, like=target_like)
    loaded = load_params(path, like=target_like, head="head")
    assert loaded["head"]["kernel"].shape == (8, 5)
    # a variables template (as a BatchNorm model's init gives): head names under "params"
    loaded = load_params(path, like={"params": target_like}, head="head")
    assert loaded["params"]["head"]["kernel"].shape == (8, 5)


def test_load_params_mismatch_and_nnx(tmp_path, data):
    x, _ = data
    params = _init(NormNet(5), x)
    path = save_params(tmp_path / "w.msgpack", params)
    like = {**_init(PlainNet(5), x), "extra": {"w": jnp.zeros(2)}}
    with pytest.raises(
        ValueError,
        match=r"missing from the checkpoint: \['extra/w'\]. not in the model: \['norm/bias'",
    ):
        load_params(path, like=like)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_params(tmp_path / "nope.msgpack")
    (tmp_path / "junk.msgpack").write_bytes(b"\x00not msgpack")
    with pytest.raises(ValueError, match="neither an orbax checkpoint"):
        load_params(tmp_path / "junk.msgpack")
    # NNX: save the module's nnx.Param state, restore into a fresh module's state
    _, state = nnx_apply(NNXNet(3, nnx.Rngs(0)))
    path = save_params(tmp_path / "nnx_ckpt", state)
    _, fresh = nnx_apply(NNXNet(3, nnx.Rngs(7)))
    restored = load_params(path, like=fresh)
    assert type(restored) is type(fresh)
    np.testing.assert_array_equal(restored["head"]["kernel"][...], state["head"]["kernel"][...])


def test_entry_point_is_reachable_from_the_package():
    assert flatjax.transfer.finetune_pretrained is finetune_pretrained
    assert "load_params" in dir(transfer)


from test_transfer import TINY  # noqa: E402  (the pipeline tests' tiny configuration)


def test_identical_to_the_pipeline_where_both_apply():
    ds = load_digits()
    source, target = split_classes(ds, [0, 1, 2, 3]), split_classes(ds, [4, 5, 6])
    config = TransferConfig(method="sabma", fisher="diagonal", **TINY)
    report = transfer.run_transfer(config, source, target)

    # the same pretrained network and source SWAG, handed over as a user would
    _, source_swag = transfer.pretrain(config, source)
    x_tr, y_tr, x_val, y_val = transfer.few_shot_split(
        target, config.shots, config.val_shots, config.seed
    )
    model = transfer._model(config, target.num_classes)
    result = finetune_pretrained(
        model,
        source_swag.mean,  # a 4-class head: re-initialised for the 3 target classes
        (x_tr, y_tr),
        method="sabma",
        num_classes=3,
        source_posterior=source_swag,
        validation=(x_val, y_val),
        config=config,
    )
    metrics = result.evaluate(target.x_test, target.y_test)
    for key in ("accuracy", "nll", "ece", "brier"):
        assert metrics["raw"][key] == report["test"][key]
        assert metrics["temperature_scaled"][key] == report["test_temperature_scaled"][key]
    assert result.temperature == report["temperature"]
    assert result.flatness()["lambda_1_mean"] == report["lambda_1_mean"]


def test_flatness_per_block_and_at_each_samples_own_backbone(data):
    x, y = data
    params = _init(NormNet(3), x)
    iterates = jax.tree.map(
        lambda a: a[None] + 0.05 * jax.random.normal(jax.random.key(2), (3, *a.shape)), params
    )
    result = finetune_pretrained(
        NormNet(3),
        params,
        (x, y),
        source_posterior=swag.collect_swag(iterates, max_rank=2),
        **{**FAST, "method": "swag", "epochs": 4},
    )
    assert result.per_sample_backbone
    paired = result.flatness(k=1, per_block=True)
    at_mean = result.flatness(k=1, backbone="mean")
    assert paired["eigenvalues"].shape == (2, 1)
    assert paired["lambda_1_mean"] != at_mean["lambda_1_mean"]
    blocks = paired["blocks"]
    assert set(blocks) == {"head", "norm"}
    assert blocks["head"]["num_params"] == 8 * 3 + 3 and blocks["norm"]["num_params"] == 16
    # a diagonal block's top eigenvalue is at most the whole block's
    for block in blocks.values():
        assert 0 < block["lambda_1_mean"] <= paired["lambda_1_mean"] * 1.01
    with pytest.raises(ValueError, match="`backbone` must be 'paired' or 'mean'"):
        result.flatness(backbone="draw")


def test_mfvi_learns_a_fresh_head():
    """MOPED-VI on a re-initialised head: MOPED's prior centred at the zero head with a
    floored sd (0.032) pinned its mean there (BMA at chance, issue 16); fresh leaves now
    get the N(0, 1) prior, so it fits separable few-shot data like SGD does."""
    x = jax.random.normal(jax.random.key(3), (30, 4))
    y = jnp.argmax(x[:, :3], axis=1)  # 3 classes, separable in the input
    params = _init(PlainNet(classes=5), x)
    common = dict(num_classes=3, trainable="all", seed=0, epochs=60, batch_size=10, num_bma=8)

    def train_accuracy(method):
        result = finetune_pretrained(PlainNet(classes=3), params, (x, y), method=method, **common)
        probs = result.predict(x)
        return float(jnp.mean(jnp.argmax(probs, -1) == y)), float(jnp.mean(probs.max(-1)))

    sgd_acc, _ = train_accuracy("sgd")
    mfvi_acc, mfvi_confidence = train_accuracy("mfvi")
    assert sgd_acc > 0.8  # the task is learnable at this budget
    assert mfvi_acc > sgd_acc - 0.15, (mfvi_acc, sgd_acc)
    assert mfvi_confidence > 0.5  # not the near-uniform predictive of a pinned head
