"""BlackJAX NUTS on the exact Entropy-MCMC joint of a 2-D sharp/flat mixture.

The target is ``0.3 N((-1, 0), 0.1^2 I) + 0.7 N((1, 0), 0.6^2 I)``: a tall, narrow mode
next to a low, wide one. ``flatjax.sgmcmc.emcmc.joint_logdensity`` turns it into the
joint density of ``(theta, theta_a)``,

    log p(theta) - |theta - theta_a|^2 / (2 eta),

whose theta-marginal is the target itself and whose guide (theta_a) marginal is the
target smoothed by ``N(0, eta I)``: every component's variance grows by ``eta``, which
lowers the sharp peak far more than the flat one. Any full-batch BlackJAX kernel can
sample it; here NUTS runs on vmapped chains. The table compares the probability of a
disc of radius 0.5 around each mode with its exact value (quadrature), for theta and
for the guide, with twice the Monte Carlo standard error from the spread of the
independent chains (the quick run is too short to be accurate).

Run::

    python examples/nuts_on_the_joint.py            # under a minute on a laptop CPU
    python examples/nuts_on_the_joint.py --quick    # seconds; or FLATJAX_EXAMPLES_QUICK=1
"""

from __future__ import annotations

import os
import sys

import blackjax
import jax
import jax.numpy as jnp
import numpy as np

from flatjax.sgmcmc.emcmc import joint_logdensity

QUICK = "--quick" in sys.argv or os.environ.get("FLATJAX_EXAMPLES_QUICK") == "1"
# Chains move between the two basins rarely, so the warm-up must be long enough to forget
# the over-dispersed start (with 200 warm-up steps the sharp mode is still under-visited).
NUM_CHAINS, NUM_WARMUP, NUM_SAMPLES = (64, 100, 100) if QUICK else (256, 2000, 1000)
ETA, RADIUS = 0.25, 0.5

WEIGHTS = np.array([0.3, 0.7])
CENTRES = np.array([[-1.0, 0.0], [1.0, 0.0]])  # sharp mode, flat mode
SCALES = np.array([0.1, 0.6])


def logdensity(theta: jax.Array) -> jax.Array:
    """Log-density of the isotropic Gaussian mixture at a 2-vector ``theta``."""
    sq = jnp.sum((theta - CENTRES) ** 2, axis=-1)
    log_norm = jnp.log(2 * jnp.pi * SCALES**2)
    return jax.nn.logsumexp(jnp.log(WEIGHTS) - log_norm - sq / (2 * SCALES**2))


def exact_disc_probability(scales: np.ndarray, centre: np.ndarray, radius: float) -> float:
    """P(|x - centre| < radius) under the mixture with component ``scales`` (midpoint rule)."""
    n = 400
    rho = (np.arange(n) + 0.5) / n * radius
    phi = (np.arange(2 * n) + 0.5) / (2 * n) * 2 * np.pi
    points = centre + rho[:, None, None] * np.stack([np.cos(phi), np.sin(phi)], axis=-1)
    sq = np.sum((points[:, :, None, :] - CENTRES) ** 2, axis=-1)
    density = np.sum(WEIGHTS * np.exp(-sq / (2 * scales**2)) / (2 * np.pi * scales**2), axis=-1)
    return float(np.sum(density * rho[:, None]) * (radius / n) * (np.pi / n))


# The joint log-density of (theta, theta_a) and NUTS on it (a 4-D problem).
joint = joint_logdensity(logdensity, eta=ETA)
nuts = blackjax.nuts(joint, step_size=0.15, inverse_mass_matrix=jnp.ones(4))

key_theta, key_guide, key_run = jax.random.split(jax.random.key(0), 3)
starts = {  # over-dispersed starts, theta and guide independent
    "position": jax.random.uniform(key_theta, (NUM_CHAINS, 2), minval=-3.0, maxval=3.0),
    "guide": jax.random.uniform(key_guide, (NUM_CHAINS, 2), minval=-3.0, maxval=3.0),
}
states = jax.vmap(nuts.init)(starts)


@jax.jit
def sample(states, rng_key):
    def one_step(states, key):
        states, info = jax.vmap(nuts.step)(jax.random.split(key, NUM_CHAINS), states)
        return states, (states.position, info.acceptance_rate)

    keys = jax.random.split(rng_key, NUM_WARMUP + NUM_SAMPLES)
    _, (positions, acceptance) = jax.lax.scan(one_step, states, keys)
    return jax.tree.map(lambda x: x[NUM_WARMUP:], positions), acceptance[NUM_WARMUP:].mean()


positions, acceptance = sample(states, key_run)

print(
    f"NUTS on the joint: {NUM_CHAINS} chains x {NUM_SAMPLES} draws, eta={ETA}, "
    f"acceptance {float(acceptance):.2f}"
)
print(f"P(|x - mode| < {RADIUS}):")
print(f"{'variable':<9} {'mode':<6} {'estimate':>9} {'+-2 MCSE':>9} {'exact':>8}")
guide_scales = np.sqrt(SCALES**2 + ETA)  # the guide's marginal: variances grow by eta * T
for name, scales in (("theta", SCALES), ("guide", guide_scales)):
    draws = np.asarray(positions["position" if name == "theta" else name])  # (draws, chains, 2)
    for mode, centre in zip(("sharp", "flat"), CENTRES, strict=True):
        inside = np.sum((draws - centre) ** 2, axis=-1) < RADIUS**2
        per_chain = inside.mean(axis=0)  # chains are independent: MCSE from their spread
        mcse = per_chain.std(ddof=1) / np.sqrt(NUM_CHAINS)
        exact = exact_disc_probability(scales, centre, RADIUS)
        print(f"{name:<9} {mode:<6} {per_chain.mean():9.4f} {2 * mcse:9.4f} {exact:8.4f}")
