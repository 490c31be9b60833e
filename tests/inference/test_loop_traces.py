"""The run loop's traces of array metrics on theta and the guide, and its progress bar."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flatjax
from flatjax.inference import loop
from flatjax.nn import glue

N, D, C = 64, 4, 3


@pytest.fixture(scope="module")
def problem():
    kx, ky = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (N, D))
    y = jax.random.randint(ky, (N,), 0, C)
    apply_fn = lambda p, xb: xb @ p["w"]
    grad_fn = glue.grad_estimator(
        glue.gaussian_logprior(1.0), glue.categorical_loglikelihood(apply_fn), N
    )
    positions = {"w": 0.1 * jax.random.normal(jax.random.key(1), (2, D, C))}
    probe = lambda p: {"probs": jax.nn.softmax(apply_fn(p, x[:5])), "norm": jnp.sum(p["w"] ** 2)}
    return x, y, grad_fn, positions, probe


def test_array_metrics_on_theta_and_guide_match_the_collected_samples(problem):
    x, y, grad_fn, positions, probe = problem
    kernel = flatjax.emcmc(grad_fn, eta=0.05)
    result = loop.run(
        kernel,
        jax.vmap(kernel.init)(positions),
        (x, y),
        jax.random.key(2),
        num_epochs=3,
        batch_size=16,
        step_size=1e-3,
        collect=loop.every(1),
        trace_fn=probe,
        trace_sets=("theta", "guide"),
        progress=False,
    )
    assert set(result.trace) == {"probs", "norm", "guide/probs", "guide/norm"}
    assert result.trace["probs"].shape == (3, 2, 5, C)
    assert result.trace["guide/norm"].shape == (3, 2)
    # the trace after a collected epoch is the collected sample's
    for name, prefix in (("theta", ""), ("guide", "guide/")):
        sample = jax.tree.map(lambda a: a[1], result.samples[name])  # after epoch 1
        expected = jax.vmap(probe)(sample)["probs"]
        np.testing.assert_allclose(result.trace[prefix + "probs"][1], expected, rtol=1e-5)
    assert not np.allclose(result.trace["probs"], result.trace["guide/probs"])


def test_unknown_trace_set_names_the_argument(problem):
    x, y, grad_fn, positions, probe = problem
    sgld = flatjax.sgmcmc.sgld.as_top_level_api(grad_fn)
    with pytest.raises(ValueError, match="trace_sets"):
        loop.run(
            sgld,
            positions,
            (x, y),
            jax.random.key(0),
            num_epochs=1,
            batch_size=16,
            step_size=1e-3,
            trace_fn=probe,
            trace_sets=("guide",),
            progress=False,
        )


def test_progress_bar_is_sized_when_the_terminal_reports_no_width(monkeypatch):
    monkeypatch.setattr(loop.os, "get_terminal_size", lambda fd: loop.os.terminal_size((0, 0)))
    stream = io.StringIO()
    stream.fileno = lambda: 2
    monkeypatch.setattr(loop.sys, "stderr", stream)
    bar = loop._progress_bar(4, desc="epochs")
    bar.update(2)
    bar.close()
    assert "2/4" in stream.getvalue() and "epochs" in stream.getvalue()
