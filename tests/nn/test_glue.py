"""Flax glue: log-likelihoods, priors, estimators, NNX, masks and BatchNorm statistics."""

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from flatjax.nn import batchnorm, glue, masks
from flatjax.nn.models import MLP, ResNet18


@pytest.fixture(scope="module")
def mlp_problem():
    model = MLP(features=(8,), num_classes=3)
    x = jax.random.normal(jax.random.key(0), (20, 4))
    y = jax.random.randint(jax.random.key(1), (20,), 0, 3)
    params = model.init(jax.random.key(2), x)["params"]
    return model, params, x, y


def test_categorical_loglikelihood_is_minus_softmax_cross_entropy(mlp_problem):
    model, params, x, y = mlp_problem
    ll = glue.categorical_loglikelihood(glue.linen_apply(model))(params, (x, y))
    ce = optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": params}, x), y)
    np.testing.assert_allclose(ll, -ce, rtol=1e-5)


def test_gaussian_loglikelihood_fixed_and_learned_noise():
    apply_fn = lambda p, x: x * p
    x, y = jnp.array([1.0, 2.0, 3.0]), jnp.array([0.5, 2.5, 2.0])
    fixed = glue.gaussian_loglikelihood(apply_fn, noise_scale=0.7)(jnp.asarray(1.2), (x, y))
    np.testing.assert_allclose(fixed, stats.norm.logpdf(y, 1.2 * x, 0.7), rtol=1e-5)
    learned = glue.gaussian_loglikelihood(apply_fn, noise_scale=None)
    position = {"params": jnp.asarray(1.2), "log_noise": jnp.log(0.3)}
    np.testing.assert_allclose(
        learned(position, (x, y)), stats.norm.logpdf(y, 1.2 * x, 0.3), rtol=1e-5
    )
    grad = jax.grad(lambda p: learned(p, (x, y)).sum())(position)
    assert np.isfinite(grad["log_noise"])
    with pytest.raises(ValueError, match="noise_scale"):
        glue.gaussian_loglikelihood(apply_fn, noise_scale=-1.0)


def test_logprior_is_the_normal_density_and_weight_decay(mlp_problem):
    model, params, x, y = mlp_problem
    lam = 2.5
    flat = np.concatenate([np.ravel(a) for a in jax.tree.leaves(params)])
    expected = stats.norm.logpdf(flat, 0.0, 1 / np.sqrt(lam)).sum()
    np.testing.assert_allclose(glue.gaussian_logprior(lam)(params), expected, rtol=1e-5)
    # N x (mean CE + wd/2 |theta|^2) has gradient -grad(log posterior) for lambda = N wd
    n, wd = 100, 1e-3
    ll = glue.categorical_loglikelihood(glue.linen_apply(model))
    prior = glue.gaussian_logprior(glue.weight_decay_to_prior_precision(wd, n))
    grad = glue.grad_estimator(prior, ll, n)(params, (x, y))

    def mean_loss(p):
        ce = optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y)
        return ce.mean() + 0.5 * wd * sum(jnp.sum(a**2) for a in jax.tree.leaves(p))

    expected = jax.tree.map(lambda g: -n * g, jax.grad(mean_loss)(params))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grad, expected
    )


def test_batched_estimator_equals_blackjax_per_example_estimator(mlp_problem):
    model, params, x, y = mlp_problem
    ll = glue.categorical_loglikelihood(glue.linen_apply(model))
    prior = glue.gaussian_logprior(1.0)
    ours = glue.grad_estimator(prior, ll, 500)(params, (x, y))
    theirs = blackjax.sgmcmc.gradients.grad_estimator(prior, glue.per_example(ll), 500)(
        params, (x, y)
    )
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), ours, theirs)


def test_nnx_model_as_log_density():
    from flax import nnx

    model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    apply_fn, params = glue.nnx_apply(model)
    x = jnp.ones((5, 4))
    np.testing.assert_allclose(apply_fn(params, x), model(x), rtol=1e-6)
    ll = glue.categorical_loglikelihood(apply_fn)
    grad = glue.grad_estimator(glue.gaussian_logprior(1.0), ll, 10)(params, (x, jnp.zeros(5, int)))
    assert jax.tree.structure(grad) == jax.tree.structure(params)


def test_nnx_batchnorm_in_training_mode_works_under_jit_and_grad():
    """The merged module must not write BatchNorm statistics into the caller's model."""
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(4, 3, rngs=rngs)
            self.norm = nnx.BatchNorm(3, use_running_average=False, rngs=rngs)

        def __call__(self, x):
            return self.norm(self.dense(x))

    model = Net(nnx.Rngs(0))
    apply_fn, params = glue.nnx_apply(model)
    x = jax.random.normal(jax.random.key(1), (6, 4))
    ll = glue.categorical_loglikelihood(apply_fn)
    grad = jax.jit(jax.grad(lambda p: ll(p, (x, jnp.zeros(6, int))).sum()))(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grad))
    # training-mode outputs are batch-normalised: zero mean per feature
    np.testing.assert_allclose(jax.jit(apply_fn)(params, x).mean(0), 0.0, atol=1e-5)


def test_estimator_rejects_bad_data_size():
    with pytest.raises(ValueError, match="data_size"):
        glue.grad_estimator(glue.gaussian_logprior(1.0), lambda p, b: p, 0)
    with pytest.raises(ValueError, match="prior_precision"):
        glue.gaussian_logprior(-1.0)


@pytest.fixture(scope="module")
def resnet_variables():
    model = ResNet18(num_classes=4)
    return model, model.init(jax.random.key(0), jnp.ones((1, 8, 8, 3)))


def test_norm_and_head_mask_selects_batchnorm_and_head(resnet_variables):
    _, variables = resnet_variables
    params = variables["params"]
    mask = masks.norm_and_head_mask(params)
    paths = masks.leaf_paths(params)
    selected = {p for p, m in zip(paths, jax.tree.leaves(mask), strict=True) if m}
    expected = {p for p in paths if "norm" in p or p.startswith("head/")}
    assert selected == expected
    assert {"head/kernel", "head/bias", "norm_init/scale"} <= selected
    assert not any(p.endswith("kernel") and not p.startswith("head") for p in selected)
    with pytest.raises(ValueError, match="selects no parameter"):
        masks.norm_and_head_mask({"Conv_0": {"kernel": jnp.ones(2)}}, head="nothing")


def test_linen_apply_train_mode_uses_batch_statistics_and_recompute(resnet_variables):
    model, variables = resnet_variables
    x = 3.0 + jax.random.normal(jax.random.key(1), (64, 8, 8, 3))
    train_apply = glue.linen_apply(model, {"batch_stats": variables["batch_stats"]}, train=True)
    eval_apply = glue.linen_apply(model, {"batch_stats": variables["batch_stats"]}, train=False)
    assert train_apply(variables["params"], x).shape == (64, 4)
    # with fresh running stats (mean 0, var 1) the two modes differ on shifted inputs
    assert not np.allclose(train_apply(variables["params"], x), eval_apply(variables["params"], x))
    stats_ = batchnorm.recompute_batch_stats(
        model, variables["params"], variables["batch_stats"], x, batch_size=64
    )
    recomputed = glue.linen_apply(model, {"batch_stats": stats_}, train=False)
    # one batch: its exact statistics make eval mode equal train mode on that batch
    np.testing.assert_allclose(
        recomputed(variables["params"], x),
        train_apply(variables["params"], x),
        rtol=2e-3,
        atol=2e-3,
    )
