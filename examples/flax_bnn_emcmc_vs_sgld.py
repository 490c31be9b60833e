"""A Flax Bayesian neural net: Entropy-MCMC against blackjax SGLD, same everything else.

Both samplers run through ``flatjax.inference.run`` on the same Flax MLP, data,
log-posterior (Gaussian prior = weight decay), minibatches, initial parameters, seed,
cyclical step size, temperature and collection epochs. ``blackjax.sgld`` takes the
gradient estimator and the step call unchanged; ``flatjax.emcmc`` adds the guide.
Printed: accuracy, NLL and ECE of the Bayesian model average on the test set (ECE
with 15 equal-width bins and 10 equal-mass bins, as in the SA-BMA and Entropy-MCMC
papers).

Run::

    python examples/flax_bnn_emcmc_vs_sgld.py            # under a minute on a laptop CPU
    python examples/flax_bnn_emcmc_vs_sgld.py --quick    # seconds; or FLATJAX_EXAMPLES_QUICK=1
"""

from __future__ import annotations

import os
import sys

import blackjax
import jax
import jax.numpy as jnp

import flatjax
from flatjax import metrics
from flatjax.data import load_digits
from flatjax.inference import bma, last_epochs_of_cycles, run
from flatjax.nn import MLP, glue
from flatjax.sgmcmc.emcmc import from_reference_hyperparameters
from flatjax.sgmcmc.schedules import cyclical_cosine_schedule

QUICK = "--quick" in sys.argv or os.environ.get("FLATJAX_EXAMPLES_QUICK") == "1"
NUM_CHAINS, NUM_EPOCHS, NUM_CYCLES, HIDDEN = (2, 4, 2, (32,)) if QUICK else (4, 40, 4, (128, 128))
BATCH_SIZE = 64

data = load_digits()
x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
n = x_train.shape[0]
hp = from_reference_hyperparameters(
    lr=0.5, data_size=n, temperature=1e-3, eta=4e-4, weight_decay=5e-4
)

model = MLP(features=HIDDEN, num_classes=data.num_classes)
apply_fn = glue.linen_apply(model)
grad_fn = glue.grad_estimator(
    glue.gaussian_logprior(hp.prior_precision), glue.categorical_loglikelihood(apply_fn), n
)

samplers = {
    "SGLD (blackjax)": blackjax.sgld(grad_fn),
    "Entropy-MCMC": flatjax.emcmc(
        grad_fn, eta=hp.eta, guide_prior_precision=hp.guide_prior_precision
    ),
}

init_key, run_key = jax.random.split(jax.random.key(0))
params = jax.vmap(lambda k: model.init(k, x_train[:1])["params"])(
    jax.random.split(init_key, NUM_CHAINS)
)
total_steps = NUM_EPOCHS * (n // BATCH_SIZE)

rows = []
for name, sampler in samplers.items():
    result = run(
        sampler,
        jax.vmap(sampler.init)(params),
        (x_train, y_train),
        run_key,
        num_epochs=NUM_EPOCHS,
        batch_size=BATCH_SIZE,
        step_size=cyclical_cosine_schedule(hp.step_size, total_steps, NUM_CYCLES),
        temperature=hp.temperature,
        collect=last_epochs_of_cycles(NUM_EPOCHS, NUM_CYCLES, num_last=1),
        keep_samples=False,
        predict_fn=lambda p, x: jax.nn.softmax(apply_fn(p, x)),
        eval_x=jnp.asarray(data.x_test),
    )
    for which, accumulator in result.bma.items():  # "theta" (and "guide" for Entropy-MCMC)
        probs = bma.predictive(accumulator)
        rows.append(
            (
                f"{name} {which}",
                metrics.accuracy(probs, data.y_test),
                metrics.nll(probs, data.y_test),
                metrics.ece(probs, data.y_test, binning="width"),
                metrics.ece(probs, data.y_test, binning="mass"),
            )
        )

print(f"digits, MLP {HIDDEN}, {NUM_CHAINS} chains, {NUM_EPOCHS} epochs, {NUM_CYCLES} cycles")
print(f"{'method':<22} {'ACC':>7} {'NLL':>7} {'ECE-15w':>8} {'ECE-10m':>8}")
for name, acc, nll, ece_w, ece_m in rows:
    print(f"{name:<22} {acc:7.4f} {nll:7.4f} {ece_w:8.4f} {ece_m:8.4f}")
