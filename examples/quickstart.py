"""Quickstart: Entropy-MCMC on a Flax MLP, several chains, Bayesian model average.

Trains ``flatjax.emcmc`` on scikit-learn's 8x8 digits (shipped with scikit-learn, no
download) with 4 vmapped chains in one jitted ``lax.scan`` per epoch, a cyclical step
size, samples collected at the end of each cycle, and prints the BMA metrics of the
theta samples and of the guide samples.

Run::

    python examples/quickstart.py            # under a minute on a laptop CPU
    python examples/quickstart.py --quick    # seconds; or FLATJAX_EXAMPLES_QUICK=1
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp

import flatjax
from flatjax.data import load_digits
from flatjax.inference import bma, last_epochs_of_cycles, run
from flatjax.metrics import summarize
from flatjax.nn import MLP, glue
from flatjax.sgmcmc.emcmc import from_reference_hyperparameters
from flatjax.sgmcmc.schedules import cyclical_cosine_schedule

QUICK = "--quick" in sys.argv or os.environ.get("FLATJAX_EXAMPLES_QUICK") == "1"
NUM_CHAINS, NUM_EPOCHS, NUM_CYCLES, HIDDEN = (2, 4, 2, (32,)) if QUICK else (4, 40, 4, (128, 128))
BATCH_SIZE = 64

# 1. Data: 1,437 train / 360 test images of shape (8, 8, 1) in [0, 1].
data = load_digits()
x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
n = x_train.shape[0]

# 2. Hyper-parameters in the reference code's knobs (learning rate on the mean loss,
#    weight decay), converted to the Langevin step, prior precision and guide prior.
hp = from_reference_hyperparameters(
    lr=0.5, data_size=n, temperature=1e-3, eta=4e-4, weight_decay=5e-4
)

# 3. Model -> log-posterior gradient: log p(theta) + N * mean_i log p(y_i | x_i, theta).
model = MLP(features=HIDDEN, num_classes=data.num_classes)
apply_fn = glue.linen_apply(model)
loglikelihood = glue.categorical_loglikelihood(apply_fn)
grad_fn = glue.grad_estimator(glue.gaussian_logprior(hp.prior_precision), loglikelihood, n)

# 4. The sampler and one state per chain (the guide starts at the position).
emcmc = flatjax.emcmc(grad_fn, eta=hp.eta, guide_prior_precision=hp.guide_prior_precision)
init_key, run_key = jax.random.split(jax.random.key(0))
params = jax.vmap(lambda k: model.init(k, x_train[:1])["params"])(
    jax.random.split(init_key, NUM_CHAINS)
)
state = jax.vmap(emcmc.init)(params)

# 5. Run: cyclical cosine step size, collect theta and guide in the last epoch of each
#    cycle, and stream every sample's test predictive into a BMA accumulator.
steps_per_epoch = n // BATCH_SIZE
result = run(
    emcmc,
    state,
    (x_train, y_train),
    run_key,
    num_epochs=NUM_EPOCHS,
    batch_size=BATCH_SIZE,
    step_size=cyclical_cosine_schedule(hp.step_size, NUM_EPOCHS * steps_per_epoch, NUM_CYCLES),
    temperature=hp.temperature,
    collect=last_epochs_of_cycles(NUM_EPOCHS, NUM_CYCLES, num_last=1),
    keep_samples=False,
    predict_fn=lambda p, x: jax.nn.softmax(apply_fn(p, x)),
    eval_x=jnp.asarray(data.x_test),
)

# 6. Metrics of the Bayesian model average (pooled over chains and samples).
print(f"{NUM_CHAINS} chains x {len(result.collected_epochs)} samples, epochs {NUM_EPOCHS}")
print(f"{'samples':<8} {'ACC':>7} {'NLL':>7} {'ECE':>7} {'Brier':>7}")
for name, acc in result.bma.items():
    m = summarize(bma.predictive(acc), data.y_test)
    print(f"{name:<8} {m['accuracy']:7.4f} {m['nll']:7.4f} {m['ece']:7.4f} {m['brier']:7.4f}")
