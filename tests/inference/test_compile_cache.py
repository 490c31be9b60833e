"""The run loop compiles once per static configuration; shared executables stay correct.

Compilations are counted with JAX's monitoring event for a backend compile, so the
tests see every XLA compilation, whichever Python object asked for it.
"""

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flatjax
from flatjax.inference import compile_cache, loop
from flatjax.nn import glue

N, D, C = 64, 4, 3
count_compiles = compile_cache.count_compiles


def make_data(seed):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (N, D)), jax.random.randint(ky, (N,), 0, C)


def make_problem(trace_x, scale=1.0, metric="nll", callback=None):
    """Fresh closures every call, as ``run_experiment`` builds them."""
    apply_fn = lambda p, xb: scale * (xb @ p["w"] + p["b"])
    grad_fn = glue.grad_estimator(
        glue.gaussian_logprior(1.0), glue.categorical_loglikelihood(apply_fn), N
    )
    kernel = flatjax.emcmc(grad_fn, eta=0.05)
    if callback is not None:
        inner = kernel

        def step(key, state, batch, step_size, temperature):
            jax.debug.callback(callback, step_size)
            return inner.step(key, state, batch, step_size, temperature)

        kernel = blackjax.base.SamplingAlgorithm(inner.init, step)
    predict = lambda p, xb: jax.nn.softmax(apply_fn(p, xb))
    trace_fn = lambda p: {metric: jnp.mean(predict(p, trace_x)[:, 0])}
    return kernel, predict, trace_fn


def run_once(kernel, predict, trace_fn, data, **kw):
    params = {"w": jnp.zeros((3, D, C)), "b": jnp.zeros((3, C))}
    return loop.run(
        kernel,
        jax.vmap(kernel.init)(params),
        data,
        jax.random.key(1),
        num_epochs=3,
        batch_size=16,
        step_size=kw.pop("step_size", 1e-3),
        collect=loop.every(1),
        predict_fn=predict,
        eval_x=data[0][:8],
        trace_fn=trace_fn,
        progress=False,
        **kw,
    )


def test_second_run_with_the_same_functions_and_new_data_does_not_compile():
    x, y = make_data(0)
    kernel, predict, trace_fn = make_problem(x[:16])
    first = run_once(kernel, predict, trace_fn, (x, y))
    new_data = make_data(1)
    with count_compiles() as compiles:
        second = run_once(kernel, predict, trace_fn, new_data)
    assert compiles == []
    # the new data is used, not the data of the first run
    assert not np.allclose(first.samples["theta"]["w"], second.samples["theta"]["w"])
    alone = run_once(*make_problem(x[:16]), new_data)
    np.testing.assert_array_equal(second.samples["theta"]["w"], alone.samples["theta"]["w"])


def test_fresh_closures_over_equal_values_share_the_compiled_program():
    x, y = make_data(2)
    first = run_once(*make_problem(x[:16]), (x, y), step_size=lambda k: 1e-3 / (1 + k))
    with count_compiles() as compiles:
        second = run_once(*make_problem(x[:16]), (x, y), step_size=lambda k: 1e-3 / (1 + k))
    assert compiles == []
    for name in ("theta", "guide"):
        np.testing.assert_array_equal(first.samples[name]["w"], second.samples[name]["w"])
    np.testing.assert_array_equal(first.trace["nll"], second.trace["nll"])


def test_closed_over_values_and_result_names_are_part_of_the_program():
    x, y = make_data(3)
    base = run_once(*make_problem(x[:16]), (x, y))
    other_constant = run_once(*make_problem(x[16:32]), (x, y))  # trace on other rows
    np.testing.assert_array_equal(base.samples["theta"]["w"], other_constant.samples["theta"]["w"])
    assert not np.allclose(base.trace["nll"], other_constant.trace["nll"])
    scaled = run_once(*make_problem(x[:16], scale=2.0), (x, y))  # a constant in the gradient
    assert not np.allclose(base.samples["theta"]["w"], scaled.samples["theta"]["w"])
    renamed = run_once(*make_problem(x[:16], metric="p0"), (x, y))
    assert set(renamed.trace) == {"p0"}
    np.testing.assert_array_equal(base.trace["nll"], renamed.trace["p0"])


def test_programs_with_host_callbacks_are_not_shared_between_closures():
    x, y = make_data(4)
    calls = {"a": 0, "b": 0}

    def count(name):
        def callback(_):
            calls[name] += 1

        return callback

    run_once(*make_problem(x[:16], callback=count("a")), (x, y))
    after_a = dict(calls)
    run_once(*make_problem(x[:16], callback=count("b")), (x, y))
    jax.effects_barrier()
    assert after_a["a"] > 0 and after_a["b"] == 0
    assert calls["b"] == after_a["a"] and calls["a"] == after_a["a"]


def test_shared_jit_equals_jit_and_keys_on_types():
    f = lambda a, b: {"out": a * b + 1}
    shared = compile_cache.shared_jit(f)
    for a in (jnp.arange(3.0), jnp.arange(3), jnp.ones((2, 2))):
        np.testing.assert_array_equal(shared(a, a)["out"], jax.jit(f)(a, a)["out"])
    a = jnp.linspace(0.0, 1.0, 3)
    with count_compiles() as compiles:
        out = compile_cache.shared_jit(lambda a, b: {"out": a * b + 1})(a, a)
    assert compiles == []
    np.testing.assert_array_equal(out["out"], a * a + 1)


@pytest.mark.parametrize("value", [0.5, 2.0])
def test_constant_schedules_compare_by_value(value):
    assert loop._as_schedule("step_size", value) == loop._as_schedule("step_size", value)
    assert float(loop._as_schedule("step_size", value)(3)) == value
