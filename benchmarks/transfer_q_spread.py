"""What SA-BMA's q learns on a pretrained network: its spread, and what the spread costs.

A diagnostic for issue 16 (``benchmarks/transfer_pretrained.py`` has the comparison):
for the re-initialised-head grids of that benchmark (same pretrained checkpoints, shots,
seeds and budget), SA-BMA through ``finetune_pretrained`` at the default initial head
variance ``alpha`` and at ``alpha / 100``, and SGD, recording

* how far q's diagonal scale ``sigma`` and its low-rank columns ``C`` moved from their
  initial values (MOPED-style, ``flatjax.transfer_pretrained``): final / initial, the
  range over trainable leaves for ``sigma`` and the median for the RMS of ``C``;
* the spread of the BMA: the standard deviation of the logits over the BMA samples on
  300 test inputs (mean over inputs and classes);
* test NLL of the BMA, of q's mean alone, and of SGD.

Writes ``results/transfer_q_spread.{json,md}``. Needs the checkpoints that
``python -m benchmarks.transfer_pretrained`` caches (it pretrains them if missing).

Usage::

    python -m benchmarks.transfer_q_spread --quick                # digits, tiny CNN, seed 0
    python -m benchmarks.transfer_q_spread                        # cnn-reinit, 3 seeds
    python -m benchmarks.transfer_q_spread --grids resnet18-reinit --seeds 0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import transfer_pretrained as tp
from flatjax.nn import masks
from flatjax.transfer import TransferConfig, few_shot_split
from flatjax.vi import lowrank_gaussian as lrg

NAME = "transfer_q_spread"
ALPHA_FACTORS = (1.0, 0.01)


def initial_scales(params: dict, q, reinit: bool, config: TransferConfig, delta: float) -> dict:
    """``{path: (sigma0, C0 scale)}``: ``finetune_pretrained``'s initial q (no source posterior)."""
    pretrained = dict(zip(masks.leaf_paths(params), jax.tree.leaves(params), strict=True))
    out = {}
    for path in q.mean:
        fresh = reinit and path.split("/")[0] == "head"
        if fresh:
            var = jnp.full(q.mean[path].shape, config.head_variance)
        else:
            var = jnp.maximum((delta * jnp.abs(pretrained[path])) ** 2, config.min_variance)
        # q's diagonal part sigma^2 / 2 = var; C = 0.1 sqrt(var) N(0, 1)
        out[path] = (jnp.sqrt(2.0 * var), 0.1 * jnp.sqrt(var))
    return out


def spread(
    result, params: dict, reinit: bool, config: TransferConfig, x: jax.Array, delta: float
) -> dict:
    q = result.q
    init = initial_scales(params, q, reinit, config, delta)
    sigma = [float(jnp.mean(jnp.exp(q.log_scale[p]) / init[p][0])) for p in q.mean]
    dev = [
        float(jnp.sqrt(jnp.mean(q.deviations[p] ** 2)) / jnp.sqrt(jnp.mean(init[p][1] ** 2)))
        for p in q.mean
    ]
    logits = jnp.stack(
        [
            result.apply_fn(
                result.split.merge(
                    jax.tree.map(lambda a, i=i: a[i], result.samples), result.backbones
                ),
                x,
            )
            for i in range(result.num_samples)
        ]
    )
    # SA-BMA's adversarial step on the mean at the final q: the KL ball measured in q's
    # Fisher, whose mean block is Sigma^-1, bounds it by sqrt(2 rho) |Sigma g| / sqrt(g' Sigma g)
    # (all of rho spent on the mean), against SAM's rho in weight space
    x_tr, y_tr = result.train_data

    def train_loss(w):
        logits = result.apply_fn(result.split.merge(w, result.frozen_mean), x_tr)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y_tr).mean()

    g = jax.grad(train_loss)(q.mean)
    sg = lrg.cov_matvec(q, g)
    pairs = zip(jax.tree.leaves(g), jax.tree.leaves(sg), strict=True)
    g_sg = sum(float(jnp.vdot(a, b)) for a, b in pairs)
    sg_norm = float(jnp.sqrt(sum(jnp.sum(a**2) for a in jax.tree.leaves(sg))))
    radius = float(np.sqrt(2 * config.rho) * sg_norm / np.sqrt(g_sg))
    return {
        "mean_step_bound": radius,
        "sam_radius": config.rho,
        "sigma_ratio_min": min(sigma),
        "sigma_ratio_max": max(sigma),
        "dev_rms_ratio_median": float(np.median(dev)),
        "dev_rms_final_median": float(
            np.median([float(jnp.sqrt(jnp.mean(q.deviations[p] ** 2))) for p in q.mean])
        ),
        "logit_sd": float(logits.std(0).mean()),
    }


def run(
    grids: list[str],
    seeds: list[int],
    factors: tuple[float, ...],
    delta: float,
    sabma_set: dict | None = None,
    quick: bool = False,
    cache: str | None = None,
) -> list[dict]:
    sabma_set = sabma_set or {}
    b = tp.budget(quick)
    source, target, _ = tp.tasks(b["data"])
    clean, _ = tp.test_sets(target, {**b, "corruptions": ()})
    x_spread = jnp.asarray(clean[0][:300])
    rows = []
    for grid_name in grids:
        grid = b["grids"][grid_name]
        tag = "digits04_quick" if quick else "fashion04"
        params, _ = tp.pretrained(grid, source, b, tp.cache_dir(cache), tag)
        reinit = grid.get("reinit", False)
        for seed in seeds:
            x_tr, y_tr, _, _ = few_shot_split(target, 10, 5, seed)
            row = {"grid": grid_name, "seed": seed, "moped_delta": delta, "sabma_set": sabma_set}
            base = TransferConfig(shots=10, val_shots=5, **b["finetune"])
            # alpha is the initial variance of a re-initialised head only
            for factor in (None, *(factors if reinit else factors[:1])):
                method = "sgd" if factor is None else "sabma"
                config = (
                    base
                    if factor is None
                    else dataclasses.replace(
                        base, head_variance=base.head_variance * factor, **sabma_set
                    )
                )
                start = time.perf_counter()
                result = tp.finetune(
                    grid, params, target, (x_tr, y_tr), method, seed, config, moped_delta=delta
                )
                nll = result.evaluate(*clean, batch_size=500)["raw"]["nll"]
                if factor is None:
                    row["sgd_nll"] = nll
                    continue
                tag = f"alpha{factor:g}"
                mean_nll = tp.mean_only(result).evaluate(*clean, batch_size=500)["raw"]["nll"]
                row[tag] = {
                    "head_variance": config.head_variance,
                    "nll": nll,
                    "mean_nll": mean_nll,
                    **spread(result, params, reinit, config, x_spread, delta),
                    "seconds": time.perf_counter() - start,
                }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def markdown(rows: list[dict], b: dict) -> str:
    out = [
        "# What SA-BMA's q learns on a pretrained network (issue 16 diagnostic)"
        + (" — quick" if b["data"] != "fashion" else ""),
        "",
        f"`python -m benchmarks.transfer_q_spread`: the re-initialised-head grids of "
        f"`transfer_pretrained` ({b['data']} 0-4 → 5-9, 10 shots, {b['finetune']['epochs']} "
        f"epochs, {b['finetune']['num_bma']} BMA samples, the library's defaults otherwise), "
        "SA-BMA at the default initial head variance alpha = 1e-5 and at alpha / 100 "
        "(δ: `moped_delta`, the initial sd of pretrained leaves relative to |w|), and SGD. "
        "σ ratio: final / initial diagonal scale of q, range over trainable leaves; C "
        "ratio: final / initial RMS of q's low-rank columns, median over leaves; logit sd: "
        "standard deviation of the logits over the BMA samples on 300 test inputs; NLL of "
        "the BMA, of q's mean alone, and of SGD. |Δμ| bound: the largest step SA-BMA's KL "
        "ball allows q's mean at the final q along the full-batch training gradient g, "
        "sqrt(2ρ) |Σg| / sqrt(gᵀΣg) (the ball's mean block is Σ⁻¹), against SAM's radius ρ = "
        "0.05 in weight space.",
        "",
        "| grid | seed | SA-BMA overrides | δ | alpha | σ ratio | C ratio | C RMS | logit sd | "
        "|Δμ| bound | NLL BMA | NLL mean | NLL SGD | BMA − mean | mean − SGD |",
        "|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        for r in (v for k, v in row.items() if k.startswith("alpha")):
            out.append(
                f"| {row['grid']} | {row['seed']} | "
                f"{', '.join(f'{k}={v}' for k, v in row.get('sabma_set', {}).items()) or '-'} | "
                f"{row.get('moped_delta', 0.1):g} | "
                f"{r['head_variance']:.0e} | "
                f"{r['sigma_ratio_min']:.4f}-{r['sigma_ratio_max']:.4f} | "
                f"{r['dev_rms_ratio_median']:.1f} | {r['dev_rms_final_median']:.4f} | "
                f"{r['logit_sd']:.3f} | {r.get('mean_step_bound', float('nan')):.4f} | "
                f"{r['nll']:.3f} | {r['mean_nll']:.3f} | "
                f"{row['sgd_nll']:.3f} | {r['nll'] - r['mean_nll']:+.3f} | "
                f"{r['mean_nll'] - row['sgd_nll']:+.3f} |"
            )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits, tiny CNN (head kept), seed 0")
    parser.add_argument(
        "--grids", default=None, help="comma-separated grids (default cnn-reinit; quick: cnn)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2")
    parser.add_argument("--cache", default=None, help="checkpoint folder (outside git)")
    parser.add_argument(
        "--alpha-factors",
        type=float,
        nargs="+",
        default=list(ALPHA_FACTORS),
        help=f"initial head variance as multiples of the default (default {ALPHA_FACTORS})",
    )
    parser.add_argument(
        "--sabma-set",
        nargs="*",
        default=[],
        metavar="FIELD=JSON",
        help="TransferConfig overrides for SA-BMA only (e.g. weight_decay=0, antithetic=true)",
    )
    parser.add_argument(
        "--moped-delta", type=float, default=0.1, help="finetune_pretrained's moped_delta"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results", help="folder"
    )
    args = parser.parse_args(argv)
    stem = NAME + ("_quick" if args.quick else "")
    path = args.out / f"{stem}.json"
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    sabma_set = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.sabma_set)}
    grids = args.grids or ("cnn" if args.quick else "cnn-reinit")
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    rows = run(
        grids.split(","),
        seeds,
        tuple(args.alpha_factors),
        args.moped_delta,
        sabma_set,
        quick=args.quick,
        cache=args.cache,
    )

    def key(r):
        return r["grid"], r["seed"], r.get("moped_delta", 0.1), str(r.get("sabma_set", {}))

    keep = [r for r in old if key(r) not in {key(x) for x in rows}]
    rows = keep + rows
    b = tp.budget(args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"budget": b["finetune"], "rows": rows}, indent=1) + "\n")
    text = markdown(rows, b)
    (args.out / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
