"""Few-shot transfer from pretrained CNN / ResNet-18 via ``finetune_pretrained`` (issue 16, item 5).

A small CNN and a ResNet-18 with filter response normalisation are pretrained once
(seed 0) on a source task that exists offline, Fashion-MNIST classes 0-4 (train split),
and their weights saved to a cache outside git (``~/.cache/flatjax/pretrained`` or
``--cache``; the pretraining is skipped when the checkpoint exists). Each network is
then fine-tuned on 10 shots per class of Fashion-MNIST classes 5-9 (a new label space of
the same width: the grids ``cnn``, ``resnet18``, ``cnn-all``, ``resnet18-all`` keep the
pretrained head as the starting point, ``*-reinit`` re-initialise it) with
:func:`flatjax.transfer.finetune_pretrained` and
SA-BMA, SGD, SAM, bSAM, SWAG and MOPED-VI, for 3 seeds (the seed draws the few-shot
and validation shots and the fine-tuning randomness; the pretrained network is the
same). Scored on the test split of classes 5-9 (a seeded subsample) before and after
temperature scaling on 5 validation shots per class, under the corruption shift
(every :data:`flatjax.data.CORRUPTIONS` at severities 3 and 5 on a seeded test
subsample, mean over corruptions), and with the flatness measure (mean top Hessian
eigenvalue lambda_1 of the few-shot training loss over the trainable block, over the
first ``--flat-samples`` BMA samples, and per trainable module).

The CNN has no normalisation layer: ``trainable="norm_and_head"`` trains its head
alone (the library warns); ``cnn-all`` and ``resnet18-all`` train every parameter. The
ResNet's norm layers (FRN scale, bias, tau) and head are trained in ``resnet18``.

Runs are appended one JSON line each to ``results/transfer_pretrained[_quick].jsonl``
and skipped when already there (resumable); ``--report`` (run at the end anyway)
writes the ``.json`` summary, the ``.md`` table and the ``.png`` figure from it.

Usage::

    python -m benchmarks.transfer_pretrained                 # the full grid (CNN, then ResNet)
    python -m benchmarks.transfer_pretrained --grids cnn     # one grid
    python -m benchmarks.transfer_pretrained --report        # tables from the records only
    python -m benchmarks.transfer_pretrained --quick         # digits, tiny models, < 1 min
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import _common
from flatjax.data import CORRUPTIONS, corrupt, load_digits, load_mnist_like, split_classes
from flatjax.flatness import eigenvalue_ratio, top_eigenvalues
from flatjax.inference.loop import DivergenceError
from flatjax.nn import glue
from flatjax.nn.models import make_model
from flatjax.transfer import (
    TransferConfig,
    few_shot_split,
    finetune_pretrained,
    load_params,
    save_params,
)

NAME = "transfer_pretrained"
METHODS = ("sabma", "sgd", "sam", "bsam", "swag", "mfvi")
NAMES = {
    "sabma": "SA-BMA",
    "sgd": "SGD",
    "sam": "SAM",
    "bsam": "bSAM",
    "swag": "SWAG",
    "mfvi": "MOPED-VI",
}
SEVERITIES = (3, 5)
KEYS = ("accuracy", "nll", "ece")
# records older than ``config.antithetic``: SA-BMA's pipeline default became antithetic here
ANTITHETIC_SINCE = "2026-12-07 06:30:00"


def budget(quick: bool) -> dict:
    """Data sizes and budgets; every number lands in the results."""
    if quick:
        return dict(
            data="digits",
            seeds=(0,),
            methods=("sabma", "sgd"),
            grids={
                "cnn": dict(
                    model="cnn", kwargs=dict(features=(4, 8), dense=16), trainable="norm_and_head"
                ),
                "resnet18": dict(
                    model="resnet18",
                    kwargs=dict(norm="frn", width=4, stage_sizes=(1, 1)),
                    trainable="norm_and_head",
                ),
            },
            default_grids=("cnn",),
            pretrain=dict(epochs=2, batch=64, lr=3e-3, num_source=None),
            finetune=dict(epochs=3, num_bma=3),
            num_test=100,
            num_shift=30,
            corruptions=("gaussian_noise", "rotate"),
            flat_samples=2,
        )
    return dict(
        data="fashion",
        seeds=(0, 1, 2),
        methods=METHODS,
        grids={
            "cnn": dict(model="cnn", kwargs={}, trainable="norm_and_head"),
            "resnet18": dict(
                model="resnet18", kwargs=dict(norm="frn", width=8), trainable="norm_and_head"
            ),
            "cnn-all": dict(model="cnn", kwargs={}, trainable="all"),
            "resnet18-all": dict(
                model="resnet18", kwargs=dict(norm="frn", width=8), trainable="all"
            ),
            # the same with the head re-initialised (a new label space) instead of kept
            "cnn-reinit": dict(model="cnn", kwargs={}, trainable="norm_and_head", reinit=True),
            "resnet18-reinit": dict(
                model="resnet18",
                kwargs=dict(norm="frn", width=8),
                trainable="norm_and_head",
                reinit=True,
            ),
        },
        default_grids=(
            "cnn",
            "resnet18",
            "cnn-all",
            "resnet18-all",
            "cnn-reinit",
            "resnet18-reinit",
        ),
        pretrain=dict(epochs=2, batch=128, lr=1e-3, num_source=15000),
        finetune=dict(epochs=40, num_bma=8),
        num_test=1500,
        num_shift=150,
        corruptions=tuple(CORRUPTIONS),
        flat_samples=2,
    )


# ------------------------------------------------------------------------------ data


def tasks(data: str):
    """``(source, target, note)``: classes 0-4 and 5-9 of Fashion-MNIST (or sklearn digits)."""
    if data == "fashion":
        full, note = load_mnist_like(kind="fashion"), "Fashion-MNIST"
    else:
        full, note = load_digits(), "sklearn digits"
    return split_classes(full, range(5)), split_classes(full, range(5, 10)), note


def test_sets(target, b: dict) -> tuple[tuple, dict]:
    """The clean test subsample and the corrupted copies ``{name/sev: (x, y)}``."""
    rng = np.random.default_rng(0)
    n = len(target.y_test)
    idx = np.sort(rng.choice(n, min(b["num_test"], n), replace=False))
    clean = (np.asarray(target.x_test[idx]), np.asarray(target.y_test[idx]))
    sub = np.sort(rng.choice(n, min(b["num_shift"], n), replace=False))
    xs, ys = np.asarray(target.x_test[sub]), np.asarray(target.y_test[sub])
    shifted = {
        f"{name}/{sev}": (corrupt(xs, name, sev, seed=0).astype(np.float32), ys)
        for name in b["corruptions"]
        for sev in SEVERITIES
    }
    return clean, shifted


# ------------------------------------------------------------------------ pretraining


def cache_dir(arg: str | None) -> pathlib.Path:
    if arg:
        return pathlib.Path(arg)
    root = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(root) / "flatjax" / "pretrained"


def pretrained(grid: dict, source, b: dict, cache: pathlib.Path, tag: str) -> tuple:
    """``(params, meta)``: the cached checkpoint, or Adam on the source set (seed 0) saved there."""
    spec = "-".join(f"{k}{v}" for k, v in sorted(grid["kwargs"].items())).replace(" ", "")
    stem = f"{grid['model']}{'_' + spec if spec else ''}_{tag}"
    path, meta_path = cache / f"{stem}.msgpack", cache / f"{stem}.json"
    model = make_model(grid["model"], source.num_classes, **grid["kwargs"])
    x, y = np.asarray(source.x_train), np.asarray(source.y_train)
    like = model.init(jax.random.key(0), jnp.asarray(x[:1]))["params"]
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        return load_params(path, like=like), {**meta, "cached": True, "checkpoint": str(path)}
    p = b["pretrain"]
    if p["num_source"]:
        keep = np.sort(np.random.default_rng(0).choice(len(y), p["num_source"], replace=False))
        x, y = x[keep], y[keep]
    opt = optax.adam(p["lr"])

    @jax.jit
    def step(params, state, xb, yb):
        def loss(w):
            logits = model.apply({"params": w}, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        value, grad = jax.value_and_grad(loss)(params)
        updates, state = opt.update(grad, state, params)
        return optax.apply_updates(params, updates), state, value

    params, state = like, opt.init(like)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    losses = []
    for epoch in range(p["epochs"]):
        order = rng.permutation(len(y))
        total = []
        for i in range(0, len(y) - p["batch"] + 1, p["batch"]):
            rows = order[i : i + p["batch"]]
            params, state, value = step(params, state, jnp.asarray(x[rows]), jnp.asarray(y[rows]))
            total.append(value)
        losses.append(float(jnp.mean(jnp.stack(total))))
        print(f"  pretrain {stem}: epoch {epoch + 1} loss {losses[-1]:.4f}", flush=True)
    seconds = time.perf_counter() - start
    fwd = jax.jit(lambda w, xb: model.apply({"params": w}, xb))
    xt, yt = np.asarray(source.x_test), np.asarray(source.y_test)
    pred = np.concatenate(
        [np.asarray(fwd(params, xt[i : i + 500])) for i in range(0, len(yt), 500)]
    )
    meta = {
        "model": grid["model"],
        "kwargs": grid["kwargs"],
        "num_params": int(sum(a.size for a in jax.tree.leaves(params))),
        "source": tag,
        "num_source": int(len(y)),
        **{f"pretrain_{k}": v for k, v in p.items() if k != "num_source"},
        "optimizer": "adam",
        "train_loss": losses,
        "source_test_accuracy": float(np.mean(pred.argmax(-1) == yt)),
        "pretrain_seconds": seconds,
    }
    cache.mkdir(parents=True, exist_ok=True)
    save_params(path, params)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return params, {**meta, "cached": False, "checkpoint": str(path)}


# ------------------------------------------------------------------------- one run


def for_flatness(result, grid: dict, num_classes: int, m: int):
    """The result on its first ``m`` BMA samples, its model built with ``conv="xla"``.

    The flatness measure's Hessian-vector products are forward-over-reverse
    (``jax.jvp``), which the CPU default ``conv="auto"`` (a ``custom_vjp``
    convolution) does not allow; ``conv="xla"`` has the same parameters and values.
    """
    xla = make_model(grid["model"], num_classes, **{**grid["kwargs"], "conv": "xla"})
    out = dataclasses.replace(result, apply_fn=glue.linen_apply(xla))
    if result.num_samples <= m:
        return out
    cut = lambda tree: jax.tree.map(lambda a: a[:m], tree)  # noqa: E731
    return dataclasses.replace(
        out,
        samples=cut(result.samples),
        backbones=cut(result.backbones) if result.per_sample_backbone else result.backbones,
        stats=None if result.stats is None else cut(result.stats),
    )


_EIGS: dict = {}


def flatness(result, grid_name: str) -> dict:
    """:meth:`TransferResult.flatness` ``(per_block=True)``, compiled once per grid and block.

    The same measure (same loss, keys, ``k`` and Lanczos steps) for a result whose
    frozen part is one set (no source posterior): the library's method traces and
    compiles its Lanczos loops anew for every result, which on a ResNet costs minutes
    of compilation per run (11 loops: the whole block and each module); here each is a
    jitted function of the samples, the frozen leaves and the data, reused across runs.
    """
    if result.per_sample_backbone:
        return result.flatness(per_block=True)
    split, apply_fn, heads = result.split, result.apply_fn, result.heads
    samples = result.samples
    size = sum(x[0].size for x in jax.tree.leaves(samples))
    head_size = sum(x[0].size for p, x in samples.items() if p.split("/")[0] in heads)
    k = min(result.config.num_eigenvalues, head_size or size, size)
    key = jax.random.key(result.config.seed + 5)
    n = result.num_samples

    def get(block, num):
        tag = (grid_name, block, num, n)
        if tag not in _EIGS:

            def eigs(samples, frozen, x, y, block_key):
                def train_loss(w):
                    logits = apply_fn(split.merge(w, frozen), x)
                    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

                def one(args):
                    w, kk = args
                    if block is None:
                        return top_eigenvalues(train_loss, w, num, rng_key=kk)
                    inside = {p: v for p, v in w.items() if p.split("/")[0] == block}
                    return top_eigenvalues(
                        lambda v: train_loss({**w, **v}), inside, num, rng_key=kk
                    )

                keys = jax.random.split(block_key, n)
                return jax.lax.map(one, (samples, keys))

            _EIGS[tag] = jax.jit(eigs)
        return _EIGS[tag]

    x, y = result.train_data
    frozen = result.frozen_mean
    eig = get(None, k)(samples, frozen, x, y, key)
    out = {
        "lambda_1_mean": float(jnp.mean(eig[:, 0])),
        "lambda_1_sd": float(jnp.std(eig[:, 0])),
        "lambda_1_over_lambda_k": float(jnp.mean(eigenvalue_ratio(eig))),
        "num_eigenvalues": int(k),
        "blocks": {},
    }
    for i, block in enumerate(sorted({p.split("/")[0] for p in samples})):
        lam = get(block, 1)(samples, frozen, x, y, jax.random.fold_in(key, i + 1))[:, 0]
        out["blocks"][block] = {"lambda_1_mean": float(jnp.mean(lam))}
    return out


def mean_only(result):
    """``result`` with its BMA replaced by one sample at the mean of its Gaussian q.

    ``None`` where the method has no q with a ``mean`` shaped like the samples (SGD,
    SAM, bSAM, MFVI); SA-BMA, SWAG and F-SWAG have one."""
    mean = getattr(result.q, "mean", None)
    if mean is None or jax.tree.structure(mean) != jax.tree.structure(result.samples):
        return None
    samples = jax.tree.map(lambda m: jnp.asarray(m)[None], mean)
    backbones = result.backbones
    if result.per_sample_backbone:  # one sample: pair it with the frozen leaves' mean
        backbones = jax.tree.map(lambda m: jnp.asarray(m)[None], result.frozen_mean)
    stats = None if result.stats is None else jax.tree.map(lambda a: a[:1], result.stats)
    return dataclasses.replace(
        result, samples=samples, backbones=backbones, stats=stats, temperature=None
    )


def finetune(grid, params, target, train, method, seed, config, **kwargs):
    """``finetune_pretrained`` on a grid's model (its head-only warning silenced)."""
    model = make_model(grid["model"], target.num_classes, **grid["kwargs"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="trainable='norm_and_head'")
        return finetune_pretrained(
            model,
            params,
            (jnp.asarray(train[0]), jnp.asarray(train[1])),
            method=method,
            num_classes=int(target.num_classes),
            trainable=grid["trainable"],
            seed=seed,
            config=config,
            reinit_head=grid.get("reinit", False),
            **kwargs,
        )


def one_run(name, grid, params, target, sets, clean, shifted, method, seed, b) -> dict:
    x_tr, y_tr, x_val, y_val = sets
    config = TransferConfig(shots=10, val_shots=5, **b["finetune"])
    start = time.perf_counter()
    result = finetune(
        grid, params, target, (x_tr, y_tr), method, seed, config, **b["finetune_kwargs"]
    )
    jax.block_until_ready(jax.tree.leaves(result.samples))
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    result = result.with_temperature(jnp.asarray(x_val), jnp.asarray(y_val))
    scored = result.evaluate(*clean, batch_size=500)
    extra = {k: result.evaluate(*pair, batch_size=500) for k, pair in shifted.items()}
    at_mean = mean_only(result)
    mean_scored = None if at_mean is None else at_mean.evaluate(*clean, batch_size=500)["raw"]
    eval_seconds = time.perf_counter() - start
    start = time.perf_counter()
    flat = flatness(for_flatness(result, grid, int(target.num_classes), b["flat_samples"]), name)
    flat_seconds = time.perf_counter() - start
    rec = {
        "config": dataclasses.asdict(config),
        **{k: scored["raw"][k] for k in KEYS},
        **{f"ts_{k}": scored["temperature_scaled"][k] for k in KEYS},
        "temperature": result.temperature,
        "num_bma_samples": result.num_samples,
        "num_trainable": int(sum(a[0].size for a in jax.tree.leaves(result.samples))),
        "lambda_1": flat["lambda_1_mean"],
        "lambda_1_sd": flat["lambda_1_sd"],
        "lambda_ratio": flat["lambda_1_over_lambda_k"],
        "lambda_samples": min(result.num_samples, b["flat_samples"]),
        "lambda_1_blocks": {k: v["lambda_1_mean"] for k, v in flat["blocks"].items()},
        # the posterior's mean alone (methods with a Gaussian q): separates how well the
        # mean is trained from what averaging over q's spread adds or costs
        **({} if mean_scored is None else {f"mean_{k}": mean_scored[k] for k in KEYS}),
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "flat_seconds": flat_seconds,
    }
    for sev in SEVERITIES:
        for key in KEYS:
            for kind, src in (("", "raw"), ("ts_", "temperature_scaled")):
                values = [extra[f"{c}/{sev}"][src][key] for c in b["corruptions"]]
                rec[f"{kind}{key}_sev{sev}"] = float(np.mean(values))
    return rec


# ------------------------------------------------------------------------- records


def paths(quick: bool, results: pathlib.Path) -> pathlib.Path:
    return results / f"{NAME}{'_quick' if quick else ''}.jsonl"


def read_records(path: pathlib.Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_grids(
    quick: bool,
    grids: list[str],
    results: pathlib.Path,
    cache: pathlib.Path,
    seeds: list[int] | None = None,
    methods: list[str] | None = None,
    finetune: dict | None = None,
    finetune_kwargs: dict | None = None,
) -> None:
    b = budget(quick)
    if methods is not None:
        b["methods"] = tuple(methods)
    if finetune:  # TransferConfig overrides, recorded with every run's budget
        b["finetune"] = {**b["finetune"], **finetune}
    if seeds is not None:
        b = {**b, "seeds": tuple(seeds)}
    b["finetune_kwargs"] = dict(finetune_kwargs or {})  # recorded with the budget
    path = paths(quick, results)
    results.mkdir(parents=True, exist_ok=True)
    done = {(r["grid"], r["method"], r["seed"]) for r in read_records(path)}
    source, target, note = tasks(b["data"])
    clean, shifted = test_sets(target, b)
    tag = "fashion04" if b["data"] == "fashion" else "digits04"
    for grid_name in grids:
        grid = b["grids"][grid_name]
        todo = [(m, s) for s in b["seeds"] for m in b["methods"] if (grid_name, m, s) not in done]
        if not todo:
            print(f"  {NAME}: grid {grid_name} already done", flush=True)
            continue
        params, meta = pretrained(grid, source, b, cache, tag + ("_quick" if quick else ""))
        print(
            f"  {NAME}: {grid_name} pretrained ({'cached' if meta['cached'] else 'trained'}), "
            f"source test accuracy {meta['source_test_accuracy']:.3f}",
            flush=True,
        )
        for method, seed in todo:
            if any(  # another process (other seeds) may have recorded it meanwhile
                (r["grid"], r["method"], r["seed"]) == (grid_name, method, seed)
                for r in read_records(path)
            ):
                continue
            sets = few_shot_split(target, 10, 5, seed)
            base = {
                "grid": grid_name,
                "model": grid["model"],
                "model_kwargs": grid["kwargs"],
                "trainable": grid["trainable"],
                "method": method,
                "seed": seed,
                "task": f"{note} 0-4 -> 5-9",
                "pretrained": meta,
                "budget": {
                    k: v
                    for k, v in b.items()
                    if k not in ("grids", "methods", "seeds", "default_grids")
                },
                "platform": platform.platform(),
                "load_average": os.getloadavg()[0],
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            try:
                rec = one_run(
                    grid_name, grid, params, target, sets, clean, shifted, method, seed, b
                )
                rec["diverged"] = False
            except DivergenceError as error:
                print(f"  {NAME}: {grid_name} {method} seed {seed} diverged: {error}", flush=True)
                rec = {"diverged": True}
            with path.open("a") as f:
                f.write(json.dumps({**base, **rec}) + "\n")
            if rec["diverged"]:
                continue
            print(
                f"  {NAME}: {grid_name} {method} seed {seed}: acc {rec['accuracy']:.3f} "
                f"nll {rec['nll']:.3f} ece {rec['ece']:.3f} lambda1 {rec['lambda_1']:.3g} "
                f"({rec['train_seconds']:.0f} + {rec['eval_seconds']:.0f} + "
                f"{rec['flat_seconds']:.0f} s)",
                flush=True,
            )


# -------------------------------------------------------------------------- report


COLS = (
    ("accuracy", "ACC ↑", 3),
    ("nll", "NLL ↓", 3),
    ("ece", "ECE ↓", 3),
    ("ts_nll", "TS NLL ↓", 3),
    ("ts_ece", "TS ECE ↓", 3),
    ("lambda_1", "mean λ1 ↓", 4),
)
SHIFT_COLS = tuple(
    (f"{k}_sev{s}", f"{label} sev {s}", 3)
    for s in SEVERITIES
    for k, label in (("accuracy", "ACC"), ("nll", "NLL"), ("ece", "ECE"))
)


def _stat(runs: list[dict], key: str) -> dict:
    return _common.mean_sd(r[key] for r in runs if not r["diverged"])


def paired(by_seed: dict, a: str, b: str, key: str) -> dict:
    """``a - b`` of ``key`` per seed (seeds where both finished)."""
    seeds = sorted(set(by_seed.get(a, {})) & set(by_seed.get(b, {})))
    diffs = {s: by_seed[a][s][key] - by_seed[b][s][key] for s in seeds}
    return {
        "per_seed": diffs,
        "all_negative": bool(diffs) and all(d < 0 for d in diffs.values()),
        **_common.mean_sd(diffs.values()),
    }


def antithetic(record: dict) -> bool:
    """Whether an SA-BMA run averaged over mirrored draws: its config says so, or (older
    records, without ``config.antithetic``) it ran after the default changed."""
    flag = record.get("config", {}).get("antithetic")
    return record["date"] >= ANTITHETIC_SINCE if flag is None else bool(flag)


def sabma_estimator(runs: list[dict]) -> str:
    kinds = {antithetic(r) for r in runs}
    if not kinds:
        return "no run"
    if len(kinds) == 2:
        return "mixed: " + ", ".join(
            f"seed {r['seed']} {'antithetic' if antithetic(r) else 'single draw'}" for r in runs
        )
    return "antithetic draws" if kinds.pop() else "single draw (the published estimator)"


def overrides(runs: list[dict]) -> str:
    """The runs' ``--set`` / ``--kwargs`` settings, as a sentence (empty when none)."""
    found = set()
    for r in runs:
        bud = r["budget"]
        items = {k: v for k, v in bud["finetune"].items() if k not in ("epochs", "num_bma")}
        items.update(bud.get("finetune_kwargs", {}))
        found.add(", ".join(f"{k}={v}" for k, v in sorted(items.items())))
    found.discard("")
    return f" Overrides: {'; '.join(sorted(found))}." if found else ""


def report(quick: bool, results: pathlib.Path) -> dict | None:
    records, seen = [], set()
    for r in read_records(paths(quick, results)):  # the first record of a run counts
        if (run := (r["grid"], r["method"], r["seed"])) not in seen:
            seen.add(run)
            records.append(r)
    if not records:
        print(f"  {NAME}: no records yet")
        return None
    b = budget(quick)
    grids = [g for g in b["grids"] if any(r["grid"] == g for r in records)]
    summary: dict = {"grids": {}}
    title = "# Few-shot transfer from pretrained CNN / ResNet-18 (issue 16, item 5)"
    md = [f"{title}{' — quick' if quick else ''}\n"]
    first = records[0]
    bud = first["budget"]
    md.append(
        f"Source: {first['task'].split(' 0-4')[0]} classes 0-4 (train split), target: classes "
        f"5-9 (a new label space of the same width: grids `cnn`, `resnet18`, `cnn-all`, "
        f"`resnet18-all` start "
        f"from the pretrained head, as `finetune_pretrained` does when `num_classes` equals "
        f"its width; `*-reinit` re-initialise it, mean 0 and variance 1e-5, "
        f"`reinit_head=True`). Each network is "
        f"pretrained once (Adam, seed 0) and cached outside git; then 10 shots per class "
        f"(50 images) are fine-tuned through `flatjax.transfer.finetune_pretrained` for "
        f"{bud['finetune']['epochs']} epochs (batch 10, lr 0.05, the library's defaults "
        f"otherwise unless a grid lists overrides: rho 0.05, rank 5, weight decay 5e-4, "
        f"moped_delta 0.1; SA-BMA's estimator, antithetic "
        f"draws since session 9 or the published single draw, is given per grid), "
        f"{bud['finetune']['num_bma']} BMA samples for SA-BMA, SWAG and MOPED-VI (SWAG "
        f"over the second half), seeds {sorted({r['seed'] for r in records})} (shots, "
        f"validation shots and fine-tuning randomness); mean ± sd over seeds. Test: "
        f"{bud['num_test']} images of the test split's classes 5-9 (seeded subsample); TS = "
        f"after temperature scaling on 5 validation shots per class. ECE: 15 bins. "
        f"λ1: top Hessian eigenvalue of the few-shot training loss over the trainable block, "
        f"mean over the first {bud['flat_samples']} BMA samples (Lanczos, 20 steps). Shift: "
        f"{len(bud['corruptions'])} corruptions at severities {list(SEVERITIES)} on "
        f"{bud['num_shift']} test images each, mean over corruptions, before temperature "
        f'scaling. λ1 is taken on a copy of the model built with `conv="xla"` (same '
        f"parameters and values): `TransferResult.flatness` (via "
        f"`flatness.top_eigenvalues`, forward-over-reverse HVPs) fails on the CPU default "
        f'`conv="auto"` convolution of the ResNet.\n'
    )
    for g in grids:
        runs = [r for r in records if r["grid"] == g]
        good = [r for r in runs if not r["diverged"]]
        meta = runs[0]["pretrained"]
        methods = [m for m in b["methods"] if any(r["method"] == m for r in runs)]
        by_method = {m: [r for r in runs if r["method"] == m] for m in methods}
        by_seed = {
            m: {r["seed"]: r for r in rs if not r["diverged"]} for m, rs in by_method.items()
        }
        stats = {
            m: {k: _stat(rs, k) for k, *_ in (*COLS, *SHIFT_COLS)} for m, rs in by_method.items()
        }
        blocks = sorted({blk for r in good for blk in r["lambda_1_blocks"]})
        block_stats = {
            m: {blk: _common.mean_sd(r["lambda_1_blocks"][blk] for r in rs if not r["diverged"])
                for blk in blocks}
            for m, rs in by_method.items()
        }  # fmt: skip
        diffs = {
            f"{a}-{c}/{k}": paired(by_seed, a, c, k)
            for a, c in (("sabma", "sgd"), ("sabma", "sam"))
            for k in ("nll", "ts_nll", "nll_sev3", "nll_sev5")
        }
        seconds = {
            m: _common.mean_sd(r["train_seconds"] + r["eval_seconds"] + r["flat_seconds"]
                               for r in rs if not r["diverged"])
            for m, rs in by_method.items()
        }  # fmt: skip
        summary["grids"][g] = {
            "model": runs[0]["model"],
            "model_kwargs": runs[0]["model_kwargs"],
            "trainable": runs[0]["trainable"],
            "pretrained": meta,
            "stats": stats,
            "lambda_1_blocks": block_stats,
            "paired_differences": diffs,
            "seconds": seconds,
            "diverged": {m: sum(r["diverged"] for r in rs) for m, rs in by_method.items()},
        }
        kw = ", ".join(f"{k}={v}" for k, v in runs[0]["model_kwargs"].items()) or "default"
        md.append(
            f"\n## {g}: {runs[0]['model']} ({kw}), trainable = `{runs[0]['trainable']}`\n\n"
            f"Pretrained: {meta['num_params']:,} parameters, {meta['num_source']} source "
            f"images, {meta['pretrain_epochs']} epochs of Adam (lr {meta['pretrain_lr']}, batch "
            f"{meta['pretrain_batch']}) in {meta['pretrain_seconds']:.0f} s; source test "
            f"accuracy {meta['source_test_accuracy']:.3f}. Trainable parameters: "
            f"{good[0]['num_trainable'] if good else '?'}"
            + (
                " (the CNN has no normalisation layer: `norm_and_head` trains the head alone)"
                if runs[0]["model"] == "cnn" and runs[0]["trainable"] == "norm_and_head"
                else ""
            )
            + f". SA-BMA's estimator: {sabma_estimator(by_method.get('sabma', []))}."
            + overrides(runs)
            + "\n\n"
        )
        header = ["method", "#BMA", *(c[1] for c in COLS), "seeds", "s / run"]
        rows = []
        for m in methods:
            s = stats[m]
            n_ok = sum(not r["diverged"] for r in by_method[m])
            rows.append(
                [NAMES[m], str(by_method[m][0].get("num_bma_samples", "—"))]
                + [_common.fmt(s[k], d) for k, _, d in COLS]
                + [f"{n_ok}/{len(by_method[m])}", f"{seconds[m]['mean']:.0f}"]
            )
        md.append(_common.table(header, rows))
        md.append("\n### Under corruption shift\n\n")
        header = [
            "method",
            *(c[1] + (" ↑" if c[0].startswith("acc") else " ↓") for c in SHIFT_COLS),
        ]
        rows = [
            [NAMES[m]] + [_common.fmt(stats[m][k], d) for k, _, d in SHIFT_COLS] for m in methods
        ]
        md.append(_common.table(header, rows))
        if len(blocks) > 1:
            md.append("\n### λ1 per trainable module (diagonal block of the Hessian)\n\n")
            header = ["method", *blocks]
            rows = [[NAMES[m]] + [_common.fmt(block_stats[m][blk], 3) for blk in blocks]
                    for m in methods]  # fmt: skip
            md.append(_common.table(header, rows))
        md.append("\n### Target: SA-BMA's NLL below SGD's and SAM's on every seed\n\n")
        header = ["difference", "NLL", "TS NLL", "NLL sev 3", "NLL sev 5"]
        rows = []
        for a, c in (("sabma", "sgd"), ("sabma", "sam")):
            row = [f"{NAMES[a]} − {NAMES[c]}"]
            for k in ("nll", "ts_nll", "nll_sev3", "nll_sev5"):
                d = diffs[f"{a}-{c}/{k}"]
                per = ", ".join(f"{v:+.3f}" for _, v in sorted(d["per_seed"].items()))
                row.append(f"{d['mean']:+.3f} ({per})" if d["per_seed"] else "—")
            rows.append(row)
        md.append(_common.table(header, rows))
        verdict = {}
        for k, label in (("nll", "NLL"), ("ts_nll", "TS NLL"), ("nll_sev3", "NLL at severity 3"),
                         ("nll_sev5", "NLL at severity 5")):  # fmt: skip
            d1, d2 = diffs[f"sabma-sgd/{k}"], diffs[f"sabma-sam/{k}"]
            n = len(set(d1["per_seed"]) & set(d2["per_seed"]))
            if not n:  # e.g. a side-by-side folder of SA-BMA runs alone
                verdict[k] = None
                md.append(f"\n- {label}: not measured here (no seed has SA-BMA, SGD and SAM).")
                continue
            holds = d1["all_negative"] and d2["all_negative"]
            verdict[k] = holds
            md.append(
                f"\n- {label}: SA-BMA beats both SGD and SAM on every seed: "
                f"**{'yes' if holds else 'no'}** ({n} of {len(b['seeds'])} seeds"
                + (", partial)." if n < len(b["seeds"]) else ").")
            )
        summary["grids"][g]["target_holds"] = verdict
        md.append("\n")
    summary["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    summary["platform"] = platform.platform()
    summary["budget"] = bud
    md.append(f"\n![{NAME}]({NAME}{'_quick' if quick else ''}.png)\n")
    stem = _common.RESULTS if results is None else results
    stem = stem / (NAME + ("_quick" if quick else ""))
    stem.with_suffix(".json").write_text(json.dumps({**summary, "quick": quick}, indent=2) + "\n")
    stem.with_suffix(".md").write_text("".join(md))
    figure(records, b, grids, stem.with_suffix(".png"))
    print("".join(md))
    return summary


def figure(records: list[dict], b: dict, grids: list[str], path: pathlib.Path) -> None:
    """Per-seed values (dots) and means (bars) per method; one row per grid.

    The y-range of each panel is set by the methods other than MOPED-VI, whose values
    sit far off it here (below-chance accuracy): they are drawn as a triangle at the
    panel's edge, labelled with their mean.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("accuracy", "ACC"), ("nll", "NLL"), ("ece", "ECE"), ("lambda_1", "mean λ1"),
              ("nll_sev3", "NLL, shift sev 3"), ("nll_sev5", "NLL, shift sev 5")]  # fmt: skip
    fig, axes = plt.subplots(
        len(grids), len(panels), figsize=(3.0 * len(panels), 2.8 * len(grids)), squeeze=False
    )
    for i, g in enumerate(grids):
        runs = [r for r in records if r["grid"] == g and not r["diverged"]]
        methods = [m for m in b["methods"] if any(r["method"] == m for r in runs)]
        for j, (key, label) in enumerate(panels):
            ax = axes[i][j]
            values = {m: [r[key] for r in runs if r["method"] == m] for m in methods}
            inside = [v for m in methods if m != "mfvi" for v in values[m]] or [
                v for vs in values.values() for v in vs
            ]
            lo, hi = min(inside), max(inside)
            pad = 0.1 * (hi - lo or abs(hi) or 1.0)
            lo, hi = lo - pad, hi + pad
            for x, m in enumerate(methods):
                vals = values[m]
                color = "tab:red" if m == "sabma" else "black" if m == "sgd" else "tab:blue"
                mean = float(np.mean(vals))
                if all(lo <= v <= hi for v in vals):
                    ax.scatter([x] * len(vals), vals, s=14, color=color, alpha=0.7)
                    ax.hlines(mean, x - 0.3, x + 0.3, color=color)
                else:
                    edge, marker = (hi, "^") if mean > hi else (lo, "v")
                    ax.scatter([x], [edge], marker=marker, s=30, color="gray")
                    ax.annotate(f"{mean:.3g}", (x, edge), fontsize=7, ha="center",
                                va="top" if mean > hi else "bottom")  # fmt: skip
            ax.set_ylim(lo, hi)
            ax.set_xticks(range(len(methods)))
            ax.set_xticklabels([NAMES[m] for m in methods], rotation=45, fontsize=7)
            ax.set_title(f"{g}: {label}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits, tiny models, 1 seed")
    parser.add_argument("--grids", default=None, help="comma-separated grids (default: all)")
    parser.add_argument("--report", action="store_true", help="only rewrite the report")
    parser.add_argument("--cache", default=None, help="checkpoint folder (outside git)")
    parser.add_argument("--results", default=None, help="results folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="a subset of seeds")
    parser.add_argument("--methods", default=None, help="comma-separated subset of methods")
    parser.add_argument(
        "--set",
        default="{}",
        help="JSON dict of TransferConfig overrides, e.g. '{\"rho\": 0.0}' (use with --results)",
    )
    parser.add_argument(
        "--kwargs",
        default="{}",
        help="JSON dict of finetune_pretrained keyword arguments, e.g. "
        "'{\"moped_delta\": 0.03}' (use with --results)",
    )
    args = parser.parse_args(argv)
    results = pathlib.Path(args.results) if args.results else _common.RESULTS
    if not args.report:
        b = budget(args.quick)
        grids = args.grids.split(",") if args.grids else list(b["default_grids"])
        unknown = sorted(set(grids) - set(b["grids"]))
        if unknown:
            parser.error(f"unknown grid(s) {unknown}; choose from {sorted(b['grids'])}")
        start = time.perf_counter()
        methods = args.methods.split(",") if args.methods else None
        run_grids(
            args.quick,
            grids,
            results,
            cache_dir(args.cache),
            args.seeds,
            methods,
            json.loads(args.set),
            json.loads(args.kwargs),
        )
        print(f"  {NAME}: {time.perf_counter() - start:.0f} s", flush=True)
    report(args.quick, results)


if __name__ == "__main__":
    main()
