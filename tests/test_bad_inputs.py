"""Fuzz-style hardening: every bad input gets a clear error of the right type naming the problem.

Each case is ``(id, callable, exception type, regex the message must match)``. The
callables build or call the public API with one thing wrong; none may fail deep inside
JAX or run on silently with NaNs.
"""

import gzip
import struct

import blackjax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import flatjax
from flatjax import data, metrics
from flatjax.experiment import ExperimentConfig, check_dataset
from flatjax.inference import loop
from flatjax.nn import glue, masks
from flatjax.sgmcmc import emcmc, emcmc_sghmc, entropy_sgd, schedules, sghmc, sgld

GRAD = lambda p, b: jax.tree.map(jnp.negative, p)
POS = {"w": jnp.ones(3)}
X, Y = jnp.ones((32, 2)), jnp.zeros(32, jnp.int32)
SGLD = blackjax.sgld(lambda p, b: -p)
CHAINS = jnp.zeros((2, 2))


def run_loop(**kwargs):
    args = dict(num_epochs=1, batch_size=8, step_size=1e-3, progress=False)
    args.update(kwargs)
    data_ = args.pop("data", (X, Y))
    init = args.pop("init", CHAINS)
    return loop.run(SGLD, init, data_, jax.random.key(0), **args)


def run_loop_emcmc(step_size, **kwargs):
    sampler = flatjax.emcmc(GRAD, eta=0.1, **kwargs)
    states = jax.vmap(sampler.init)({"w": jnp.zeros((2, 3))})
    return loop.run(
        sampler,
        states,
        X,
        jax.random.key(0),
        num_epochs=1,
        batch_size=1,
        step_size=step_size,
        progress=False,
    )


def step_emcmc(step_size=1e-3, temperature=1.0, grad=GRAD):
    sampler = flatjax.emcmc(grad, eta=0.1)
    return sampler.step(jax.random.key(0), sampler.init(POS), None, step_size, temperature)


# a tiny Flax model of each kind: 2 inputs, 3 outputs
NNX = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
LINEN = nn.Dense(3)
NNX_APPLY, NNX_PARAMS = glue.nnx_apply(NNX)
CAT_LL = glue.categorical_loglikelihood(NNX_APPLY)
GAUSS_LL = glue.gaussian_loglikelihood(NNX_APPLY)
XB, YB = jnp.ones((4, 2)), jnp.zeros(4, jnp.int32)


def linen_ll_wrong_input():
    params = LINEN.init(jax.random.key(0), XB)["params"]
    ll = glue.categorical_loglikelihood(glue.linen_apply(LINEN))
    return ll(params, (jnp.ones((4, 5)), YB))


def write(tmp, name, payload):
    path = tmp / name
    path.write_bytes(payload)
    return path


def idx_bytes(n=3, rows=2, cols=2, truncate=0, magic=0x00000803):
    header = struct.pack(">IIII", magic, n, rows, cols)
    body = bytes(n * rows * cols - truncate)
    return header + body


class DS:
    """A minimal data set."""

    def __init__(self, y_train, num_classes=3, x_train=None):
        self.x_train = np.zeros((len(y_train), 2), np.float32) if x_train is None else x_train
        self.y_train = np.asarray(y_train)
        self.x_test = np.zeros((2, 2), np.float32)
        self.y_test = np.zeros(2, np.int32)
        self.num_classes = num_classes


CASES = [
    # --- Entropy-MCMC constructors
    ("eta-zero", lambda t: flatjax.emcmc(GRAD, eta=0.0), ValueError, "eta"),
    ("eta-negative", lambda t: flatjax.emcmc(GRAD, eta=-1.0), ValueError, "eta"),
    ("eta-nan", lambda t: flatjax.emcmc(GRAD, eta=float("nan")), ValueError, "eta"),
    ("eta-inf", lambda t: flatjax.emcmc(GRAD, eta=float("inf")), ValueError, "eta"),
    ("eta-string", lambda t: flatjax.emcmc(GRAD, eta="0.1"), TypeError, "eta"),
    ("eta-none", lambda t: flatjax.emcmc(GRAD, eta=None), TypeError, "eta"),
    (
        "guide-prior-neg",
        lambda t: flatjax.emcmc(GRAD, 0.1, -1.0),
        ValueError,
        "guide_prior_precision",
    ),
    (
        "guide-prior-nan",
        lambda t: flatjax.emcmc(GRAD, 0.1, float("nan")),
        ValueError,
        "guide_prior_precision",
    ),
    ("sghmc-alpha-0", lambda t: flatjax.emcmc_sghmc(GRAD, 0.1, alpha=0.0), ValueError, "alpha"),
    ("sghmc-alpha-big", lambda t: flatjax.emcmc_sghmc(GRAD, 0.1, alpha=1.5), ValueError, "alpha"),
    ("sghmc-alpha-neg", lambda t: flatjax.emcmc_sghmc(GRAD, 0.1, alpha=-0.1), ValueError, "alpha"),
    ("sghmc-beta-neg", lambda t: flatjax.emcmc_sghmc(GRAD, 0.1, beta=-1.0), ValueError, "beta"),
    ("sghmc-eta-nan", lambda t: flatjax.emcmc_sghmc(GRAD, float("nan")), ValueError, "eta"),
    # --- Entropy-SGD
    (
        "esgd-gamma-0",
        lambda t: flatjax.entropy_sgd(GRAD, gamma=0.0, inner_step_size=0.1),
        ValueError,
        "gamma",
    ),
    (
        "esgd-L-0",
        lambda t: flatjax.entropy_sgd(GRAD, 1.0, 0.1, num_inner_steps=0),
        ValueError,
        "num_inner_steps",
    ),
    (
        "esgd-L-float",
        lambda t: flatjax.entropy_sgd(GRAD, 1.0, 0.1, num_inner_steps=2.5),
        TypeError,
        "num_inner_steps",
    ),
    ("esgd-ema-0", lambda t: flatjax.entropy_sgd(GRAD, 1.0, 0.1, ema=0.0), ValueError, "ema"),
    ("esgd-ema-big", lambda t: flatjax.entropy_sgd(GRAD, 1.0, 0.1, ema=1.5), ValueError, "ema"),
    (
        "esgd-inner-step-neg",
        lambda t: flatjax.entropy_sgd(GRAD, 1.0, -0.1),
        ValueError,
        "inner_step_size",
    ),
    (
        "esgd-minibatch-axis",
        lambda t: flatjax.entropy_sgd(GRAD, 1.0, 0.1, num_inner_steps=4).step(
            jax.random.key(0), entropy_sgd.init(POS), jnp.ones((3, 5)), 0.01
        ),
        ValueError,
        "4",
    ),
    # --- kernel calls
    ("init-int-position", lambda t: emcmc.init({"w": jnp.arange(3)}), TypeError, "int32"),
    ("init-empty-position", lambda t: emcmc.init({}), ValueError, "empty"),
    ("step-unstable", lambda t: step_emcmc(step_size=0.2), ValueError, "eta"),
    (
        "step-negative-temperature",
        lambda t: step_emcmc(temperature=-1.0),
        ValueError,
        "temperature",
    ),
    ("step-nan-step", lambda t: step_emcmc(step_size=float("nan")), ValueError, "step_size"),
    (
        "grad-wrong-structure",
        lambda t: step_emcmc(grad=lambda p, b: {"v": p["w"]}),
        ValueError,
        "structure",
    ),
    (
        "grad-wrong-shape",
        lambda t: step_emcmc(grad=lambda p, b: {"w": jnp.ones(4)}),
        ValueError,
        "shape",
    ),
    (
        "joint-not-a-dict",
        lambda t: emcmc.joint_logdensity(lambda x: 0.0, 0.1)(jnp.ones(2)),
        TypeError,
        "joint position",
    ),
    (
        "sample-guide-eta",
        lambda t: emcmc.sample_guide(jax.random.key(0), POS, eta=0.0),
        ValueError,
        "eta",
    ),
    # --- schedules
    ("sched-steps-0", lambda t: schedules.cyclical_schedule(0.1, 0, 1), ValueError, "total_steps"),
    ("sched-cycles-0", lambda t: schedules.cyclical_schedule(0.1, 10, 0), ValueError, "num_cycles"),
    (
        "sched-explore-1",
        lambda t: schedules.cyclical_schedule(0.1, 10, 1, exploration_fraction=1.0),
        ValueError,
        "exploration_fraction",
    ),
    (
        "sched-init-nan",
        lambda t: schedules.cyclical_schedule(float("nan"), 10, 1),
        ValueError,
        "init_value",
    ),
    # --- run loop
    ("loop-epochs-0", lambda t: run_loop(num_epochs=0), ValueError, "num_epochs"),
    ("loop-batch-0", lambda t: run_loop(batch_size=0), ValueError, "batch_size"),
    ("loop-batch-too-big", lambda t: run_loop(batch_size=64), ValueError, "batch_size"),
    ("loop-rows-mismatch", lambda t: run_loop(data=(X, Y[:-1])), ValueError, "disagree"),
    ("loop-empty-data", lambda t: run_loop(data=(X[:0], Y[:0])), ValueError, "batch_size"),
    ("loop-step-nan", lambda t: run_loop(step_size=float("nan")), ValueError, "step_size"),
    ("loop-temperature-neg", lambda t: run_loop(temperature=-1.0), ValueError, "temperature"),
    ("loop-on-divergence", lambda t: run_loop(on_divergence="ignore"), ValueError, "on_divergence"),
    (
        "loop-checkpoint-every",
        lambda t: run_loop(checkpoint_every=0),
        ValueError,
        "checkpoint_every",
    ),
    ("loop-resume-no-dir", lambda t: run_loop(resume=True), ValueError, "checkpoint_dir"),
    (
        "loop-nan-init",
        lambda t: run_loop(init=jnp.full((2, 2), jnp.nan)),
        loop.DivergenceError,
        "chain",
    ),
    (
        "loop-minibatches-0",
        lambda t: run_loop(minibatches_per_step=0),
        ValueError,
        "minibatches_per_step",
    ),
    # --- Flax glue
    (
        "glue-data-size-0",
        lambda t: glue.grad_estimator(glue.gaussian_logprior(1.0), GRAD, 0),
        ValueError,
        "data_size",
    ),
    ("glue-prior-neg", lambda t: glue.gaussian_logprior(-1.0), ValueError, "prior_precision"),
    (
        "glue-noise-0",
        lambda t: glue.gaussian_loglikelihood(GRAD, noise_scale=0.0),
        ValueError,
        "noise_scale",
    ),
    (
        "mask-selects-nothing",
        lambda t: masks.norm_and_head_mask({"Conv_0": {"k": jnp.ones(1)}}, head="x"),
        ValueError,
        "no param",
    ),
    # --- metrics
    ("metrics-label-range", lambda t: metrics.accuracy([[0.5, 0.5]], [2]), ValueError, "labels"),
    ("metrics-probs-1d", lambda t: metrics.nll([0.5, 0.5], [0]), ValueError, "probs"),
    ("metrics-length", lambda t: metrics.brier([[0.5, 0.5]], [0, 1]), ValueError, "labels"),
    (
        "metrics-bins-0",
        lambda t: metrics.ece([[0.5, 0.5]], [0], num_bins=0),
        ValueError,
        "num_bins",
    ),
    (
        "metrics-binning",
        lambda t: metrics.ece([[0.5, 0.5]], [0], binning="foo"),
        ValueError,
        "binning",
    ),
    ("metrics-not-probs", lambda t: metrics.nll([[3.0, -1.0]], [0]), ValueError, "probs"),
    # --- data files and sets
    (
        "idx-truncated",
        lambda t: data.read_idx(write(t, "a-idx3-ubyte", idx_bytes(truncate=3))),
        ValueError,
        "a-idx3-ubyte",
    ),
    (
        "idx-bad-magic",
        lambda t: data.read_idx(write(t, "b-idx3-ubyte", idx_bytes(magic=1234))),
        ValueError,
        "b-idx3-ubyte",
    ),
    (
        "idx-gz-garbage",
        lambda t: data.read_idx(write(t, "c.gz", gzip.compress(b"xx")[:-4])),
        ValueError,
        "c.gz",
    ),
    ("idx-missing", lambda t: data.read_idx(t / "nope-idx3-ubyte"), FileNotFoundError, "nope"),
    ("cifar-missing-dir", lambda t: data.load_cifar(t / "no-cifar"), FileNotFoundError, "no-cifar"),
    (
        "cifar-wrong-format",
        lambda t: data.load_cifar(
            (lambda d: (d.mkdir(), write(d, "data_batch_1", b"not a pickle"), d)[2])(t / "cf")
        ),
        ValueError,
        "data_batch_1|test_batch",
    ),
    ("corrupt-name", lambda t: data.corrupt(np.zeros((1, 4, 4, 1)), "fog", 1), ValueError, "fog"),
    (
        "corrupt-severity",
        lambda t: data.corrupt(np.zeros((1, 4, 4, 1)), "rotate", 6),
        ValueError,
        "severity",
    ),
    (
        "few-shot-too-many",
        lambda t: data.few_shot(np.zeros((4, 2)), np.array([0, 0, 1, 1]), 3),
        ValueError,
        "shots",
    ),
    ("ood-kind", lambda t: data.make_ood(data.load_digits(), "svhn"), ValueError, "kind"),
    # --- experiment / CLI level
    ("dataset-label-range", lambda t: check_dataset(DS([0, 1, 5])), ValueError, "labels outside"),
    ("dataset-float-labels", lambda t: check_dataset(DS([0.0, 1.0])), ValueError, "integer"),
    (
        "dataset-length",
        lambda t: check_dataset(DS([0, 1], x_train=np.zeros((3, 2)))),
        ValueError,
        "rows",
    ),
    ("config-method", lambda t: ExperimentConfig(method="adam").validate(), ValueError, "method"),
    (
        "config-exploration",
        lambda t: ExperimentConfig(exploration=1.0).validate(),
        ValueError,
        "exploration",
    ),
    # --- the Flax boundary: modules where functions or arrays belong
    (
        "emcmc-grad-nnx",
        lambda t: flatjax.emcmc(NNX, eta=0.1),
        TypeError,
        r"`grad_estimator` is a Flax NNX module \(Linear\).*nnx_apply",
    ),
    (
        "emcmc-grad-linen",
        lambda t: flatjax.emcmc(LINEN, eta=0.1),
        TypeError,
        r"`grad_estimator` is a Flax Linen module \(Dense\).*linen_apply",
    ),
    (
        "emcmc-grad-none",
        lambda t: flatjax.emcmc(None, eta=0.1),
        TypeError,
        "`grad_estimator` must be a function.*None",
    ),
    (
        "emcmc-sghmc-grad-nnx",
        lambda t: flatjax.emcmc_sghmc(NNX, eta=0.1),
        TypeError,
        "`grad_estimator` is a Flax NNX module",
    ),
    (
        "sgld-grad-nnx",
        lambda t: sgld.as_top_level_api(NNX),
        TypeError,
        "`grad_estimator` is a Flax NNX module",
    ),
    (
        "sghmc-grad-nnx",
        lambda t: sghmc.as_top_level_api(NNX),
        TypeError,
        "`grad_estimator` is a Flax NNX module",
    ),
    (
        "entropy-sgd-grad-nnx",
        lambda t: flatjax.entropy_sgd(NNX, 1.0, 0.1),
        TypeError,
        "`grad_estimator` is a Flax NNX module",
    ),
    (
        "emcmc-init-nnx",
        lambda t: flatjax.emcmc(GRAD, eta=0.1).init(NNX),
        TypeError,
        r"`position` is a Flax NNX module \(Linear\).*nnx\.split.*params",
    ),
    (
        "emcmc-module-init-nnx",
        lambda t: emcmc.init(NNX),
        TypeError,
        "`position` is a Flax NNX module",
    ),
    (
        "emcmc-sghmc-init-nnx",
        lambda t: emcmc_sghmc.init(NNX),
        TypeError,
        "`position` is a Flax NNX module",
    ),
    (
        "sghmc-init-nnx",
        lambda t: sghmc.as_top_level_api(GRAD).init(NNX),
        TypeError,
        "`position` is a Flax NNX module",
    ),
    (
        "sgld-init-linen",
        lambda t: sgld.init(LINEN),
        TypeError,
        "`position` is a Flax Linen module.*module.init",
    ),
    (
        "init-string-leaf",
        lambda t: emcmc.init({"w": "abc"}),
        TypeError,
        r"`position` leaf \['w'\] is a str",
    ),
    (
        "joint-logdensity-nnx",
        lambda t: emcmc.joint_logdensity(NNX, 0.1),
        TypeError,
        "`logdensity_fn` is a Flax NNX module.*nnx_apply",
    ),
    (
        "joint-logdensity-not-callable",
        lambda t: emcmc.joint_logdensity(3.0, 0.1),
        TypeError,
        "`logdensity_fn` must be a function",
    ),
    (
        "joint-bare-array-under-grad",
        lambda t: jax.grad(emcmc.joint_logdensity(lambda x: jnp.sum(x), 0.1))(jnp.ones(2)),
        TypeError,
        r"joint position.*got an array of shape \(2,\) and dtype float32",
    ),
    (
        "nnx-apply-linen",
        lambda t: glue.nnx_apply(LINEN),
        TypeError,
        r"`model` is a Flax Linen module \(Dense\).*linen_apply",
    ),
    (
        "nnx-apply-function",
        lambda t: glue.nnx_apply(lambda x: x),
        TypeError,
        "`model` must be a Flax NNX module.*function",
    ),
    (
        "linen-apply-nnx",
        lambda t: glue.linen_apply(NNX),
        TypeError,
        r"`module` is a Flax NNX module \(Linear\).*nnx_apply",
    ),
    (
        "loglik-apply-fn-nnx",
        lambda t: glue.categorical_loglikelihood(NNX),
        TypeError,
        "`apply_fn` is a Flax NNX module.*nnx_apply",
    ),
    (
        "estimator-loglik-nnx",
        lambda t: glue.grad_estimator(glue.gaussian_logprior(1.0), NNX, 10),
        TypeError,
        "`loglikelihood_fn` is a Flax NNX module.*categorical_loglikelihood",
    ),
    # --- glue log-likelihoods: the minibatch's structure and shapes
    (
        "loglik-batch-one-array",
        lambda t: CAT_LL(NNX_PARAMS, XB),
        TypeError,
        r"minibatch.*\(x, y\).*single array of shape \(4, 2\)",
    ),
    (
        "loglik-batch-three-items",
        lambda t: CAT_LL(NNX_PARAMS, (XB, YB, YB)),
        TypeError,
        r"minibatch.*\(x, y\).*tuple of 3 items",
    ),
    (
        "loglik-batch-dict",
        lambda t: CAT_LL(NNX_PARAMS, {"x": XB, "y": YB}),
        TypeError,
        r"minibatch.*\(x, y\).*dict",
    ),
    (
        "loglik-rows-mismatch",
        lambda t: CAT_LL(NNX_PARAMS, (XB, YB[:3])),
        ValueError,
        r"same number of rows.*x of shape \(4, 2\) and y of shape \(3,\)",
    ),
    (
        "loglik-wrong-input-width",
        lambda t: CAT_LL(NNX_PARAMS, (jnp.ones((4, 5)), YB)),
        ValueError,
        r"`x` of shape \(4, 5\).*dot_general",
    ),
    (
        "loglik-wrong-input-under-jit",
        lambda t: jax.jit(CAT_LL)(NNX_PARAMS, (jnp.ones((4, 5)), YB)),
        ValueError,
        r"`x` of shape \(4, 5\)",
    ),
    (
        "loglik-linen-wrong-input",
        lambda t: linen_ll_wrong_input(),
        ValueError,
        r"`x` of shape \(4, 5\)",
    ),
    (
        "loglik-one-hot-labels",
        lambda t: CAT_LL(NNX_PARAMS, (XB, jnp.zeros((4, 3)))),
        ValueError,
        r"labels `y` of shape \(4, 3\).*logits of shape \(4, 3\)",
    ),
    (
        "gauss-rows-mismatch",
        lambda t: GAUSS_LL(NNX_PARAMS, (XB, jnp.zeros((5, 3)))),
        ValueError,
        r"same number of rows.*y of shape \(5, 3\)",
    ),
    (
        "gauss-targets-would-broadcast",
        lambda t: glue.gaussian_loglikelihood(lambda p, x: x @ p)(
            jnp.ones((2, 1)), (XB, jnp.zeros(4))
        ),
        ValueError,
        r"targets `y` of shape \(4,\).*outputs of shape \(4, 1\)",
    ),
    (
        "gauss-learned-noise-position",
        lambda t: glue.gaussian_loglikelihood(NNX_APPLY, noise_scale=None)(
            NNX_PARAMS, (XB, jnp.zeros((4, 3)))
        ),
        TypeError,
        "noise_scale=None.*'log_noise'",
    ),
    # --- the step-size bound under jit
    ("emcmc-debug-not-bool", lambda t: flatjax.emcmc(GRAD, 0.1, debug="yes"), TypeError, "debug"),
    (
        "loop-emcmc-step-above-eta",
        lambda t: run_loop_emcmc(step_size=2.0),
        loop.DivergenceError,
        r"Likely cause: the step size reached 2 .*`eta` = 0\.1",
    ),
    (
        "loop-emcmc-schedule-above-bound",
        lambda t: run_loop_emcmc(step_size=lambda i: 0.01 + 0.5 * i, guide_step_ratio=3.0),
        loop.DivergenceError,
        r"first at global step 1\).*2 \* `eta` / \(1 \+ `guide_step_ratio`\) = 0\.05",
    ),
]


def test_there_are_at_least_fifty_cases():
    assert len(CASES) >= 50


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error(case, tmp_path):
    _, fn, exc_type, pattern = case
    with pytest.raises(exc_type, match=pattern) as info:
        fn(tmp_path)
    # the error is raised by flatjax (or its data checks), not deep inside JAX
    assert "jax/_src" not in info.traceback[-1].path.as_posix()


@pytest.mark.parametrize("builder", [flatjax.emcmc, flatjax.emcmc_sghmc])
def test_debug_flag_stops_a_traced_unstable_step(builder):
    """``debug=True`` raises inside ``jit``, where the construction-time check cannot see."""
    sampler = builder(GRAD, eta=0.1, debug=True)
    step = jax.jit(sampler.step)
    state = sampler.init(POS)
    with pytest.raises(RuntimeError, match=r"`step_size`=0\.25 >= .*`eta`"):
        step(jax.random.key(0), state, None, 0.25)
        jax.effects_barrier()
    with pytest.raises(RuntimeError, match="temperature"):
        step(jax.random.key(0), state, None, 1e-3, -1.0)
        jax.effects_barrier()


def test_debug_flag_changes_nothing_for_a_stable_step():
    plain, checked = (flatjax.emcmc(GRAD, eta=0.1, debug=d) for d in (False, True))
    args = (jax.random.key(0), plain.init(POS), None, 1e-2)
    a, b = jax.jit(plain.step)(*args), jax.jit(checked.step)(*args)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert plain.step.step_size_bound.value == pytest.approx(0.1)


def test_divergence_report_names_the_bound_only_when_it_applies():
    # a divergence with a stable step (here a NaN start) does not blame eta
    sampler = flatjax.emcmc(GRAD, eta=0.1)
    states = jax.vmap(sampler.init)({"w": jnp.full((2, 3), jnp.nan)})
    with pytest.raises(loop.DivergenceError) as info:
        loop.run(
            sampler,
            states,
            X,
            jax.random.key(0),
            num_epochs=1,
            batch_size=8,
            step_size=1e-3,
            progress=False,
        )
    assert "Likely cause" not in str(info.value)
    # a kernel without a bound (blackjax SGLD) gets the plain report
    with pytest.raises(loop.DivergenceError) as info:
        run_loop(init=jnp.full((2, 2), jnp.nan))
    assert "Likely cause" not in str(info.value)
