"""What SA-BMA's radius rho buys: few-shot NLL and flatness (lambda_1) together, per block.

Issue 16, item 6. One pretrained network and source SWAG per seed (digits 0-4), then
10-shot SA-BMA on digits 5-9 through :func:`flatjax.transfer.finetune_pretrained`
(source posterior = the source SWAG, frozen part drawn per step) for each rho, with
SGD on the same trainable block as the reference. For every run: test accuracy, NLL
and ECE (before and after temperature scaling on a 5-shot validation set), and the
flatness measure, the top Hessian eigenvalue lambda_1 of the few-shot training loss
with respect to the trainable block at each BMA sample (mean over samples), taken

* ``paired``: at each sample's own frozen draw (a sample is a whole network; the
  library's default), and
* ``at mean``: with the frozen part at the source mean (the measure reported before),

plus lambda_1 of each trainable module alone (the Hessian's diagonal block). For SA-BMA
also the Euclidean length of its adversarial step on q's mean at the end of training
(:func:`benchmarks.transfer_head_only.adversarial_length`, frozen part at the source
mean), absolute and relative to the norm of the mean.

Usage: ``python -m benchmarks.transfer_rho_sweep [--quick]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import optax

from benchmarks._common import fmt, mean_sd, table, write
from benchmarks.transfer_head_only import adversarial_length
from flatjax.data import load_digits, split_classes
from flatjax.transfer import (
    TransferConfig,
    _model,
    few_shot_split,
    finetune_pretrained,
    pretrain,
)

RHOS = (0.0, 0.01, 0.05, 0.1, 0.3, 1.0)


def budget(quick: bool) -> dict:
    if quick:
        return dict(seeds=(0, 1), source_epochs=8, swag_epochs=5, epochs=30, num_bma=6)
    return dict(seeds=(0, 1, 2), source_epochs=20, swag_epochs=10, epochs=150, num_bma=30)


def one_run(config, model, source_swag, split_sets, target) -> dict:
    x_tr, y_tr, x_val, y_val = split_sets
    result = finetune_pretrained(
        model,
        source_swag.mean,
        (x_tr, y_tr),
        method=config.method,
        num_classes=int(target.num_classes),
        source_posterior=source_swag,
        validation=(x_val, y_val),
        config=config,
    )
    scored = result.evaluate(target.x_test, target.y_test)
    paired = result.flatness(per_block=True)
    at_mean = result.flatness(backbone="mean")
    step = {}
    if config.method == "sabma":

        def train_loss(w):
            logits = result.apply_fn(result.split.merge(w, result.frozen_mean), x_tr)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y_tr).mean()

        length = adversarial_length(result.q, train_loss, config.rho)
        norm = jnp.sqrt(sum(jnp.sum(a**2) for a in jax.tree.leaves(result.q.mean)))
        step = {"step": length, "step_relative": length / float(norm)}
    return {
        **step,
        **{k: scored["raw"][k] for k in ("accuracy", "nll", "ece")},
        **{f"ts_{k}": scored["temperature_scaled"][k] for k in ("nll", "ece")},
        "lambda_1": paired["lambda_1_mean"],
        "lambda_1_at_mean": at_mean["lambda_1_mean"],
        "lambda_ratio": paired["lambda_1_over_lambda_k"],
        **{f"lambda_1/{b}": v["lambda_1_mean"] for b, v in paired["blocks"].items()},
    }


def main(quick: bool) -> dict:
    b = budget(quick)
    data = load_digits()
    source, target = split_classes(data, range(5)), split_classes(data, range(5, 10))
    runs: dict[str, list[dict]] = {}
    start = time.perf_counter()
    for seed in b["seeds"]:
        base = TransferConfig(
            seed=seed, shots=10, source_epochs=b["source_epochs"],
            swag_epochs=b["swag_epochs"], epochs=b["epochs"], num_bma=b["num_bma"],
        )  # fmt: skip
        _, source_swag = pretrain(base, source)
        sets = few_shot_split(target, base.shots, base.val_shots, seed)
        model = _model(base, target.num_classes)
        for name, config in [("sgd", dataclasses.replace(base, method="sgd"))] + [
            (f"sabma rho={rho:g}", dataclasses.replace(base, method="sabma", rho=rho))
            for rho in RHOS
        ]:
            runs.setdefault(name, []).append(one_run(config, model, source_swag, sets, target))
            print(f"  transfer_rho_sweep: seed {seed} {name} done", flush=True)
    cols = sorted({k for rs in runs.values() for r in rs for k in r})
    stats = {m: {k: mean_sd(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}
    blocks = sorted(k for k in cols if k.startswith("lambda_1/"))
    header = ["run", "ACC ↑", "NLL ↓", "ECE ↓", "TS NLL ↓", "λ1 paired", "λ1 at mean"]
    header += [f"λ1 {k.split('/', 1)[1]}" for k in blocks] + ["step", "step / |μ|"]
    rows = [
        [m]
        + [fmt(s[k]) for k in ("accuracy", "nll", "ece", "ts_nll")]
        + [fmt(s[k], 4) for k in ("lambda_1", "lambda_1_at_mean", *blocks)]
        + [fmt(s[k], 5) if k in s else "–" for k in ("step", "step_relative")]
        for m, s in stats.items()
    ]
    md = (
        f"# SA-BMA's rho: NLL and flatness together{' — quick' if quick else ''}\n\n"
        f"Digits 0-4 (source: SGD {b['source_epochs']} epochs, SWAG over the last "
        f"{b['swag_epochs']}) -> 5-9, 10 shots per class, MLP (64, 64) with layer norm, "
        f"norm layers + head trained for {b['epochs']} epochs, {b['num_bma']} BMA samples, "
        f"seeds {list(b['seeds'])}, mean ± sd; through `finetune_pretrained` with the "
        "source SWAG as the source posterior (frozen part drawn per step).\n\n"
        "λ1: top Hessian eigenvalue of the few-shot training loss (mean CE) with respect "
        "to the trainable block, mean over BMA samples; *paired*: each sample with its own "
        "frozen draw (the default), *at mean*: frozen part at the source mean (the measure "
        "reported before); per-module columns: that module's diagonal block of the "
        "Hessian. Step: the Euclidean length of SA-BMA's adversarial step on q's mean at "
        "the end of training, were the KL ball spent on the mean alone (an upper bound), "
        "and its ratio to the norm of the mean (SAM's ρ = 0.05 is the length of its "
        "step).\n\n" + table(header, rows)
    )
    result = {
        "task": "digits 0-4 -> 5-9, 10-shot",
        "budget": b,
        "rhos": list(RHOS),
        "runs": runs,
        "stats": stats,
        "seconds": time.perf_counter() - start,
    }
    write("transfer_rho_sweep", quick, result, md)
    print(md)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    main(quick=parser.parse_args().quick)
