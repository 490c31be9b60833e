"""Checkpoint / resume: bit-identical continuation, SIGKILL survival, clear mismatch errors."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flatjax
from flatjax.inference import loop
from flatjax.inference.checkpoint import CheckpointError

N = 64


def make_run(tmp_path=None, num_chains=2, seed=0, **kwargs):
    x = jax.random.normal(jax.random.key(5), (N, 3))
    y = (x[:, 0] > 0).astype(jnp.int32)

    def grad_fn(p, batch):
        xb, yb = batch
        logits = xb @ p
        onehot = jax.nn.one_hot(yb, 2)
        return N * (xb.T @ (onehot - jax.nn.softmax(logits))) / xb.shape[0] - p

    sampler = flatjax.emcmc(grad_fn, eta=0.05)
    states = jax.vmap(sampler.init)(jnp.zeros((num_chains, 3, 2)))
    args = dict(
        num_epochs=6,
        batch_size=16,
        step_size=1e-3,
        collect=loop.every(2),
        predict_fn=lambda p, xb: jax.nn.softmax(xb @ p),
        eval_x=x[:8],
        trace_fn=lambda p: {"norm": jnp.sum(p**2)},
        progress=False,
    )
    args.update(kwargs)
    return lambda **more: loop.run(
        sampler, states, (x, y), jax.random.key(seed), **{**args, **more}
    )


def assert_identical(a, b):
    jax.tree.map(np.testing.assert_array_equal, a.samples, b.samples)
    jax.tree.map(np.testing.assert_array_equal, a.bma, b.bma)
    jax.tree.map(np.testing.assert_array_equal, a.trace, b.trace)
    jax.tree.map(np.testing.assert_array_equal, a.state, b.state)
    assert a.collected_epochs == b.collected_epochs


def test_resume_after_interruption_is_bit_identical(tmp_path):
    full = make_run()()

    class Stop(Exception):
        pass

    def stop_after_3(epoch, traces):
        if epoch == 3:
            raise Stop

    run = make_run()
    with pytest.raises(Stop):
        run(checkpoint_dir=tmp_path, on_epoch_end=stop_after_3)
    resumed = run(checkpoint_dir=tmp_path, resume=True)
    assert_identical(full, resumed)


def test_checkpoints_every_k_epochs_and_keep_the_last_two(tmp_path):
    make_run()(checkpoint_dir=tmp_path, checkpoint_every=4)
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [4, 6]


@pytest.mark.parametrize(
    "change, field",
    [({"num_chains": 3}, "num_chains"), ({"seed": 1}, "rng_key")],
)
def test_mismatched_checkpoint_names_the_field(tmp_path, change, field):
    make_run()(checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match=field):
        make_run(**change)(checkpoint_dir=tmp_path, resume=True)


def test_other_run_parameters_are_checked_too(tmp_path):
    make_run()(checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="batch_size"):
        make_run(batch_size=8)(checkpoint_dir=tmp_path, resume=True)


def test_corrupt_checkpoint_is_reported_not_ignored(tmp_path):
    make_run()(checkpoint_dir=tmp_path)
    latest = tmp_path / "6"
    for f in latest.rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt|does not match"):
        make_run()(checkpoint_dir=tmp_path, resume=True)


def test_no_silent_fresh_start_and_no_silent_overwrite(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        make_run()(checkpoint_dir=tmp_path / "empty", resume=True)
    make_run()(checkpoint_dir=tmp_path / "full")
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        make_run()(checkpoint_dir=tmp_path / "full")
    with pytest.raises(ValueError, match="checkpoint_dir"):
        make_run()(resume=True)


SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_checkpoint import make_run
    out, ckpt, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    slow = lambda epoch, traces: time.sleep(0.4)
    kwargs = dict(checkpoint_dir=ckpt, resume=resume, on_epoch_end=slow) if ckpt != "-" else {{}}
    result = make_run(num_epochs=12)(**kwargs)
    np.save(out, np.asarray(result.samples["theta"]))
    """
)


def test_sigkill_then_resume_gives_identical_samples(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    ckpt = tmp_path / "ckpt"
    subprocess.run([sys.executable, script, tmp_path / "ref.npy", "-", "0"], check=True, env=env)
    proc = subprocess.Popen([sys.executable, script, tmp_path / "a.npy", ckpt, "0"], env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        steps = [int(p.name) for p in ckpt.glob("*") if p.name.isdigit()] if ckpt.exists() else []
        if steps and max(steps) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "a.npy").exists(), "the job finished before it was killed"
    subprocess.run([sys.executable, script, tmp_path / "b.npy", ckpt, "1"], check=True, env=env)
    np.testing.assert_array_equal(np.load(tmp_path / "ref.npy"), np.load(tmp_path / "b.npy"))
