"""Entropy-MCMC chains over a device mesh: chains split across devices, minibatches too.

``flatjax.inference.run(..., mesh=mesh)`` places the chain axis of the run (kernel
states, sample buffer, BMA sums) on the mesh's ``"chains"`` axis and splits each
step's minibatch over its ``"data"`` axis; XLA's GSPMD partitioner turns the jitted
epoch into one SPMD program (the minibatch sum in the gradient becomes an all-reduce).
The random stream is derived per chain from the run's key, so the samples equal the
single-device run's up to floating-point reassociation.

On a CPU-only machine this example asks XLA for 4 host devices; the flag must be set
before ``jax`` is imported. On a machine with 4 or more accelerators they are used.

Run::

    python examples/multi_device_chains.py            # about a minute on a laptop CPU
    python examples/multi_device_chains.py --quick    # seconds; or FLATJAX_EXAMPLES_QUICK=1
"""

from __future__ import annotations

import os
import sys

# Must happen before jax is imported: 4 virtual CPU devices.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import flatjax  # noqa: E402
from flatjax.data import load_digits  # noqa: E402
from flatjax.inference import bma, run  # noqa: E402
from flatjax.inference.sharding import make_mesh  # noqa: E402
from flatjax.metrics import accuracy  # noqa: E402
from flatjax.nn import MLP, glue  # noqa: E402

QUICK = "--quick" in sys.argv or os.environ.get("FLATJAX_EXAMPLES_QUICK") == "1"
NUM_CHAINS, NUM_EPOCHS, HIDDEN = (4, 2, (32,)) if QUICK else (8, 20, (128, 128))
BATCH_SIZE = 64

devices = jax.devices() if len(jax.devices()) >= 4 else jax.devices("cpu")
print(f"{len(devices)} devices: {devices[0].platform}")

data = load_digits()
x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
n = x_train.shape[0]
model = MLP(features=HIDDEN, num_classes=data.num_classes)
apply_fn = glue.linen_apply(model)
grad_fn = glue.grad_estimator(
    glue.gaussian_logprior(n * 5e-4), glue.categorical_loglikelihood(apply_fn), n
)
emcmc = flatjax.emcmc(grad_fn, eta=4e-4)
init_key, run_key = jax.random.split(jax.random.key(0))
params = jax.vmap(lambda k: model.init(k, x_train[:1])["params"])(
    jax.random.split(init_key, NUM_CHAINS)
)


def run_on(mesh):
    """The same run (same key, same chains) on ``mesh`` (``None``: default device)."""
    return run(
        emcmc,
        jax.vmap(emcmc.init)(params),
        (x_train, y_train),
        run_key,
        num_epochs=NUM_EPOCHS,
        batch_size=BATCH_SIZE,
        step_size=2e-4,
        temperature=1e-3,
        predict_fn=lambda p, x: jax.nn.softmax(apply_fn(p, x)),
        eval_x=jnp.asarray(data.x_test),
        mesh=mesh,
    )


reference = run_on(None)
layouts = {"1 device": None, "4 x 1 (chains x data)": make_mesh(4, 1, devices)}
if not QUICK:
    layouts["2 x 2 (chains x data)"] = make_mesh(2, 2, devices)

print(f"{NUM_CHAINS} chains, {NUM_EPOCHS} epochs")
print(f"{'layout':<24} {'theta sharding':<26} {'max |theta - 1 device|':>22} {'BMA ACC':>8}")
for name, mesh in layouts.items():
    result = reference if mesh is None else run_on(mesh)
    theta = result.samples["theta"]
    diff = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(
            jax.tree.leaves(theta), jax.tree.leaves(reference.samples["theta"]), strict=True
        )
    )
    spec = str(jax.tree.leaves(result.state.position)[0].sharding.spec) if mesh else "-"
    acc = float(accuracy(bma.predictive(result.bma["theta"]), data.y_test))
    print(f"{name:<24} {spec:<26} {diff:22.2e} {acc:8.4f}")
