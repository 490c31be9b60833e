"""Entropy-MCMC on a Flax NNX model: vmapped chains, a ``lax.scan`` over steps.

A tiny NNX MLP on scikit-learn's 8x8 digits (bundled, no download) becomes a
log-density with ``flatjax.nn.glue.nnx_apply`` (``nnx.split`` into a graph definition
and an ``nnx.Param`` state, which is the position). BlackJAX's
``blackjax.sgmcmc.gradients.grad_estimator`` gives the minibatch gradient of the
log-posterior; ``flatjax.emcmc`` samples it with 4 chains: ``jax.vmap`` of ``init``
over the chains' initial parameters, and one jitted ``lax.scan`` over the steps with
``jax.vmap`` of ``step`` inside. Prints the BMA metrics of the theta and guide samples.

Run::

    python examples/nnx_emcmc.py            # about 15 s on a laptop CPU, most of it compiling
    python examples/nnx_emcmc.py --quick    # seconds; or FLATJAX_EXAMPLES_QUICK=1
"""

from __future__ import annotations

import os
import sys

import blackjax
import jax
import jax.numpy as jnp
from flax import nnx

import flatjax
from flatjax import metrics
from flatjax.data import load_digits
from flatjax.nn import glue

QUICK = "--quick" in sys.argv or os.environ.get("FLATJAX_EXAMPLES_QUICK") == "1"
NUM_CHAINS, NUM_SAMPLES, THIN = (2, 4, 10) if QUICK else (4, 10, 40)
BURN_IN, BATCH_SIZE, HIDDEN = (40 if QUICK else 200), 64, 32


class MLP(nnx.Module):
    def __init__(self, din: int, hidden: int, dout: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(din, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, dout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(nnx.relu(self.hidden(x.reshape(x.shape[0], -1))))


# 1. Data: 1,437 train / 360 test images of shape (8, 8, 1) in [0, 1].
data = load_digits()
x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
n = x_train.shape[0]

# 2. The NNX model as a log-density. `nnx_apply` splits the model once: `apply_fn`
#    merges a params state back into the graph; `params` (an nnx.State) is a pytree.
model = MLP(64, HIDDEN, data.num_classes, rngs=nnx.Rngs(0))
apply_fn, _ = glue.nnx_apply(model)
loglikelihood = glue.per_example(glue.categorical_loglikelihood(apply_fn))
logprior = glue.gaussian_logprior(prior_precision=n * 5e-4)  # weight decay 5e-4
grad_fn = blackjax.sgmcmc.gradients.grad_estimator(logprior, loglikelihood, n)

# 3. The sampler (learning rate 0.5 on the mean loss = Langevin step 0.5 / N), and one
#    state per chain: each chain's parameters come from its own nnx.Rngs.
step_size, temperature = 0.5 / n, 1e-3
emcmc = flatjax.emcmc(grad_fn, eta=4e-3, guide_step_ratio=10.0)  # stable: h < 2 eta / 11


def init_params(key: jax.Array) -> nnx.State:
    return nnx.split(MLP(64, HIDDEN, data.num_classes, rngs=nnx.Rngs(key)), nnx.Param, ...)[1]


init_key, run_key = jax.random.split(jax.random.key(0))
states = jax.vmap(emcmc.init)(jax.vmap(init_params)(jax.random.split(init_key, NUM_CHAINS)))

# 4. One step for all chains: one minibatch shared by the chains, one key per chain.
vmapped_step = jax.vmap(emcmc.step, in_axes=(0, 0, None, None, None))


def one_step(states, key):
    batch_key, chain_key = jax.random.split(key)
    idx = jax.random.choice(batch_key, n, (BATCH_SIZE,), replace=False)
    keys = jax.random.split(chain_key, NUM_CHAINS)
    states = vmapped_step(keys, states, (x_train[idx], y_train[idx]), step_size, temperature)
    return states, None


def run_steps(states, key, num_steps):
    return jax.lax.scan(one_step, states, jax.random.split(key, num_steps))[0]


def thinned(states, key):  # THIN steps, then keep the chains' states as one sample
    states = run_steps(states, key, THIN)
    return states, states


@jax.jit
def sample(states, key):
    burn_key, sample_key = jax.random.split(key)
    states = run_steps(states, burn_key, BURN_IN)
    return jax.lax.scan(thinned, states, jax.random.split(sample_key, NUM_SAMPLES))[1]


samples = sample(states, run_key)  # leaves: (NUM_SAMPLES, NUM_CHAINS, ...)

# 5. Bayesian model average over samples and chains, for theta and for the guide.
predict = jax.jit(jax.vmap(jax.vmap(lambda p: jax.nn.softmax(apply_fn(p, x_test)))))
print(
    f"digits, NNX MLP (64-{HIDDEN}-10), {NUM_CHAINS} chains, "
    f"{BURN_IN + NUM_SAMPLES * THIN} steps, {NUM_SAMPLES} samples per chain"
)
print(f"{'samples':<8} {'ACC':>7} {'NLL':>7} {'ECE':>7}")
for name, position in (("theta", samples.position), ("guide", samples.guide)):
    probs = predict(position).mean(axis=(0, 1))
    acc, nll, ece = (
        metrics.accuracy(probs, y_test),
        metrics.nll(probs, y_test),
        metrics.ece(probs, y_test),
    )
    print(f"{name:<8} {acc:7.4f} {nll:7.4f} {ece:7.4f}")
