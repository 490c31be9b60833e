"""Claim 3 (flat minima generalise under shift): Entropy-MCMC's BMA keeps higher accuracy
and lower ECE than SGD and SGLD as the Fashion-MNIST test set is corrupted at severities
1-5 (the :data:`flatjax.data.CORRUPTIONS` set, averaged over corruption types).

Each method is trained once per seed; its BMA predictive is accumulated over the clean
test set and every corrupted copy in one pass. ``run_experiment`` returns only summary
metrics, so this script assembles the same pieces (model, gradient estimator,
:func:`flatjax.experiment.build_method`, :func:`flatjax.inference.loop.run`) itself with
``eval_x`` = all test sets stacked; training is identical to ``run_experiment``'s.

Usage: ``python -m benchmarks.run --quick --only corruption_shift``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks._common import fashion_subset, fmt, mean_sd, table, write
from flatjax import metrics
from flatjax.data import CORRUPTIONS, corrupt
from flatjax.experiment import REFERENCE_EMCMC, ExperimentConfig, build_method
from flatjax.inference import bma as bma_lib
from flatjax.inference import loop
from flatjax.nn import glue
from flatjax.nn.models import make_model

METHODS = ("emcmc", "sgd", "sgld")
SEVERITIES = (0, 1, 2, 3, 4, 5)


def budget(quick: bool) -> dict:
    if quick:
        return dict(
            num_train=1000, num_test=300, seeds=(0, 1), epochs=4, chains=2, collect_last=1, lr=0.25
        )
    return dict(
        num_train=10000, num_test=2000, seeds=(0, 1, 2), epochs=8, chains=4, collect_last=1, lr=0.5
    )


def train_and_predict(config: ExperimentConfig, data, eval_x: np.ndarray) -> dict:
    """BMA predictive on ``eval_x`` per sample set, trained exactly like run_experiment."""
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    n = int(x.shape[0])
    config.validate(n)
    model = make_model("mlp", data.num_classes, features=config.hidden)
    apply_fn = glue.linen_apply(model)
    grad_fn = glue.grad_estimator(
        glue.gaussian_logprior(n * config.weight_decay), glue.categorical_loglikelihood(apply_fn), n
    )
    kernel, step_size, temperature, collect = build_method(
        config, grad_fn, n, n // config.batch_size
    )
    init_key, run_key = jax.random.split(jax.random.key(config.seed))
    params = jax.vmap(lambda k: model.init(k, x[:1])["params"])(
        jax.random.split(init_key, config.chains)
    )
    result = loop.run(
        kernel, jax.vmap(kernel.init)(params), (x, y), run_key,
        num_epochs=config.epochs, batch_size=config.batch_size, step_size=step_size,
        temperature=temperature, collect=collect, keep_samples=False,
        predict_fn=lambda p, xb: jax.nn.softmax(apply_fn(p, xb)), eval_x=jnp.asarray(eval_x),
        progress=False,
    )  # fmt: skip
    return {name: np.asarray(bma_lib.predictive(b)) for name, b in result.bma.items()}


def main(quick: bool) -> dict:
    b = budget(quick)
    data, data_note = fashion_subset(b["num_train"], b["num_test"])
    nt = len(data.x_test)
    blocks, index = [data.x_test], [("clean", 0)]
    for name in CORRUPTIONS:
        for sev in SEVERITIES[1:]:
            blocks.append(corrupt(data.x_test, name, sev, seed=0))
            index.append((name, sev))
    eval_x = np.concatenate(blocks).astype(np.float32)
    y = jnp.asarray(data.y_test)
    per: dict[str, list[dict]] = {}
    for method in METHODS:
        for seed in b["seeds"]:
            config = ExperimentConfig(
                method=method, chains=b["chains"], epochs=b["epochs"], cycles=4,
                collect_last=b["collect_last"], lr=b["lr"], seed=seed, **REFERENCE_EMCMC,
            )  # fmt: skip
            for set_name, probs in train_and_predict(config, data, eval_x).items():
                label = method if method != "emcmc" else f"emcmc ({set_name})"
                scores: dict[int, dict[str, list[float]]] = {
                    s: {"acc": [], "ece": []} for s in SEVERITIES
                }
                for i, (_, sev) in enumerate(index):
                    p = jnp.asarray(probs[i * nt : (i + 1) * nt])
                    scores[sev]["acc"].append(float(metrics.accuracy(p, y)))
                    scores[sev]["ece"].append(
                        float(metrics.ece(p, y, num_bins=15, binning="width"))
                    )
                per.setdefault(label, []).append(
                    {
                        str(s): {k: float(np.mean(v)) for k, v in d.items()}
                        for s, d in scores.items()
                    }
                )
            print(f"  corruption_shift: {method} seed {seed} done")
    stats = {
        label: {
            str(s): {k: mean_sd(r[str(s)][k] for r in runs) for k in ("acc", "ece")}
            for s in SEVERITIES
        }
        for label, runs in per.items()
    }
    result = {
        "data": data_note, "budget": b, "corruptions": list(CORRUPTIONS),
        "runs": per, "stats": stats,
    }  # fmt: skip
    header = ["method"] + [("clean" if s == 0 else f"sev {s}") for s in SEVERITIES]
    md = (
        f"# Corruption shift (claim 3){' — quick' if quick else ''}\n\n"
        f"Data: {data_note}; test set corrupted by each of {len(CORRUPTIONS)} corruptions "
        f"({', '.join(CORRUPTIONS)}) at severities 1-5, metrics averaged over corruptions. "
        f"MLP (128, 128), {b['chains']} chains, {b['epochs']} epochs, seeds "
        f"{list(b['seeds'])}; mean ± sd over seeds.\n\n## Accuracy ↑\n\n"
        + table(header, [[m] + [fmt(stats[m][str(s)]["acc"]) for s in SEVERITIES] for m in stats])
        + "\n## ECE (15 bins) ↓\n\n"
        + table(header, [[m] + [fmt(stats[m][str(s)]["ece"]) for s in SEVERITIES] for m in stats])
    )
    stem = write("corruption_shift", quick, result, md)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key in zip(axes, ("acc", "ece"), strict=True):
        for m in stats:
            ax.errorbar(
                SEVERITIES,
                [stats[m][str(s)][key]["mean"] for s in SEVERITIES],
                yerr=[stats[m][str(s)][key]["sd"] for s in SEVERITIES],
                marker="o", capsize=3, label=m,
            )  # fmt: skip
        ax.set_xlabel("severity (0 = clean)")
        ax.set_ylabel(key)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    plt.close(fig)
    print(md)
    return result
