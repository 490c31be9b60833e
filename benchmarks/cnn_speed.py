"""The small CNN's gradient on CPU: flatjax vs one-thread PyTorch, and where XLA's time goes.

One gradient of the mean cross-entropy of :class:`flatjax.nn.models.CNN` (conv 3x3 32
-> ReLU -> max-pool 2x2 -> conv 3x3 64 -> ReLU -> max-pool 2x2 -> dense 128 -> ReLU ->
head 10; 28x28x1 inputs, batch 128), timed

- ``torch-1thread``: the same architecture as a ``torch.nn.Sequential`` (``Conv2d``
  padding 1, ``MaxPool2d(2)``, NCHW, the same weights), ``torch.autograd.grad``, eager,
  ``torch.set_num_threads(1)``;
- ``flatjax``: the model as built by default (``conv="auto"``: on CPU
  :func:`~flatjax.nn.models.canonical_conv`; pools :func:`~flatjax.nn.models.max_pool`),
  ``jax.jit(jax.grad(loss))``;
- ``flatjax-scan``: the same gradient per step inside a ``lax.scan`` of
  ``scan_steps`` steps (as a sampling loop runs it; XLA:CPU compiles loop bodies
  differently, see :mod:`flatjax.nn.models`);
- ``flatjax-xla``: ``conv="xla"`` (``lax.conv_general_dilated`` and its own gradients);
- ``flatjax-flaxpool``: the default convolution with ``flax.linen.max_pool`` (the
  pool the model used before), to show what the pooling's backward pass costs.

Then each layer's forward and backward pass alone (``layer/*`` cases), on both sides,
to show where the time goes. Timing (:mod:`benchmarks._timing`): every case once per
round in a fresh random order; paired ratios torch / flatjax within rounds, medians
over rounds, wall-clock and process CPU time. Target (issue 15): flatjax's gradient no
slower than one-thread PyTorch (median paired ratio torch / flatjax >= 1), jitted and
inside ``lax.scan``.

Usage::

    python -m benchmarks.cnn_speed            # full run, a few minutes
    python -m benchmarks.cnn_speed --quick    # smoke run

Writes ``benchmarks/results/cnn_speed[_quick].{json,md}``. Needs PyTorch (not a flatjax
dependency; ``python -m benchmarks.vs_pytorch --install`` installs its CPU wheel).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from flatjax.nn.models import CNN, CONVS, _conv_bwd, canonical_conv, max_pool

try:  # run as a module (`python -m benchmarks.cnn_speed`) or as a script
    from benchmarks._common import RESULTS
    from benchmarks._timing import (
        load_average,
        machine_info,
        measure,
        paired,
        summary,
        write_results,
    )
    from benchmarks.vs_pytorch import require_torch
except ImportError:  # pragma: no cover
    from _common import RESULTS  # type: ignore[no-redef]
    from _timing import (  # type: ignore
        load_average,
        machine_info,
        measure,
        paired,
        summary,
        write_results,  # type: ignore[no-redef]
    )
    from vs_pytorch import require_torch  # type: ignore[no-redef]

BATCH = 128
DN = ("NHWC", "HWIO", "NHWC")
#: (numerator, denominator, target on the median ratio or None)
RATIOS = [
    ("torch-1thread", "flatjax", 1.0),
    ("torch-1thread", "flatjax-scan", 1.0),
    ("torch-1thread", "flatjax-xla", None),
    ("flatjax-flaxpool", "flatjax", None),
]


class FlaxPoolCNN(nn.Module):
    """:class:`~flatjax.nn.models.CNN` with ``flax.linen.max_pool`` (same parameters)."""

    conv: str = "auto"

    @nn.compact
    def __call__(self, x):
        for width in (32, 64):
            x = nn.Conv(width, (3, 3), padding="SAME", conv_general_dilated=CONVS[self.conv])(x)
            x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2), padding="SAME")
        x = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10, name="head")(x)


def cross_entropy(apply: Callable) -> Callable:
    def loss(params, x, y):
        logp = jax.nn.log_softmax(apply({"params": params}, x))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))

    return loss


def torch_cnn(params: dict) -> Any:
    """The CNN in torch (NCHW) with the Flax parameters (flatten order made to match)."""
    import torch

    tnn = torch.nn

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv0 = tnn.Conv2d(1, 32, 3, padding=1)
            self.conv1 = tnn.Conv2d(32, 64, 3, padding=1)
            self.dense = tnn.Linear(7 * 7 * 64, 128)
            self.head = tnn.Linear(128, 10)

        def forward(self, x):
            x = torch.max_pool2d(torch.relu(self.conv0(x)), 2)
            x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
            # channels-last flatten, as the Flax model's
            x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
            return self.head(torch.relu(self.dense(x)))

    net = Net()
    with torch.no_grad():
        for i, conv in enumerate((net.conv0, net.conv1)):
            p = params[f"Conv_{i}"]
            conv.weight.copy_(
                torch.from_numpy(np.asarray(p["kernel"]).transpose(3, 2, 0, 1).copy())
            )
            conv.bias.copy_(torch.from_numpy(np.asarray(p["bias"]).copy()))
        for lin, name in ((net.dense, "Dense_0"), (net.head, "head")):
            lin.weight.copy_(torch.from_numpy(np.asarray(params[name]["kernel"]).T.copy()))
            lin.bias.copy_(torch.from_numpy(np.asarray(params[name]["bias"]).copy()))
    return net


def model_cases(scan_steps: int, seed: int = 0) -> tuple[dict, dict]:
    """The whole-gradient cases, and a check that both sides compute the same gradient."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, (BATCH, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, BATCH).astype(np.int32)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    model = CNN(10)
    params = jax.jit(model.init)(jax.random.key(seed), xj[:1])["params"]
    cases: dict[str, Callable] = {}
    grads = {}
    for name, module in [
        ("flatjax", model),
        ("flatjax-xla", CNN(10, conv="xla")),
        ("flatjax-flaxpool", FlaxPoolCNN()),
    ]:
        g = jax.jit(jax.grad(cross_entropy(module.apply)))
        grads[name] = jax.block_until_ready(g(params, xj, yj))
        cases[name] = lambda g=g: g(params, xj, yj)

    grad = jax.grad(cross_entropy(model.apply))
    idx = jnp.asarray(rng.integers(0, BATCH, (scan_steps, BATCH)))

    @jax.jit
    def scanned(params, idx):
        def body(acc, i):
            return jax.tree.map(jnp.add, acc, grad(params, xj[i], yj[i])), None

        return lax.scan(body, jax.tree.map(jnp.zeros_like, params), idx)[0]

    jax.block_until_ready(scanned(params, idx))
    cases["flatjax-scan"] = lambda: scanned(params, idx)

    net = torch_cnn(params)
    tparams = list(net.parameters())
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    ty = torch.from_numpy(y).long()

    def torch_grad():
        torch.set_num_threads(1)
        return torch.autograd.grad(F.cross_entropy(net(tx), ty), tparams)

    tg = torch_grad()
    check = {
        "max_abs_diff_grad_kernel_conv1": float(
            np.max(
                np.abs(
                    tg[2].numpy().transpose(2, 3, 1, 0)
                    - np.asarray(grads["flatjax"]["Conv_1"]["kernel"])
                )
            )
        ),
        "max_abs_diff_flatjax_vs_xla": max(
            float(jnp.max(jnp.abs(a - b)))
            for a, b in zip(
                jax.tree.leaves(grads["flatjax"]),
                jax.tree.leaves(grads["flatjax-xla"]),
                strict=True,
            )
        ),
        "max_abs_diff_flatjax_vs_flaxpool": max(
            float(jnp.max(jnp.abs(a - b)))
            for a, b in zip(
                jax.tree.leaves(grads["flatjax"]),
                jax.tree.leaves(grads["flatjax-flaxpool"]),
                strict=True,
            )
        ),
    }
    cases["torch-1thread"] = torch_grad
    return cases, check


def layer_cases(seed: int = 0) -> dict[str, Callable]:
    """Each layer's forward and backward pass alone, flatjax (jitted) and torch (1 thread).

    Shapes are the CNN's at batch 128. ``fwd``: the forward pass; ``dk``: the kernel
    gradient; ``dx``: the input gradient; ``fwd+bwd``: forward and both gradients
    (``sum(out * ct)`` differentiated), as the model needs them.
    """
    import torch
    import torch.nn.functional as F

    key = jax.random.key(seed)
    k1, k2, k3, k4, k5, k6 = jax.random.split(key, 6)
    x1, w1 = jax.random.normal(k1, (BATCH, 28, 28, 1)), jax.random.normal(k2, (3, 3, 1, 32))
    x2, w2 = jax.random.normal(k3, (BATCH, 14, 14, 32)), jax.random.normal(k4, (3, 3, 32, 64))
    dy1, dy2 = (
        jax.random.normal(k5, (BATCH, 28, 28, 32)),
        jax.random.normal(k6, (BATCH, 14, 14, 64)),
    )
    h1, h2 = jax.nn.relu(dy1), jax.nn.relu(dy2)
    pads = ((1, 1), (1, 1))
    cases: dict[str, Callable] = {}

    def add(name, fn, *args):
        f = jax.jit(fn)
        jax.block_until_ready(f(*args))
        cases[name] = lambda: f(*args)

    for layer, x, w, dy in (("conv1", x1, w1, dy1), ("conv2", x2, w2, dy2)):
        add(
            f"{layer}/fwd/flatjax",
            lambda x, w: canonical_conv(x, w, (1, 1), pads, dimension_numbers=DN),
            x,
            w,
        )
        add(
            f"{layer}/dk/flatjax",
            lambda x, w, dy: _conv_bwd((1, 1), pads, None, (x, w), dy)[1],
            x,
            w,
            dy,
        )
        if layer == "conv2":  # the first layer's input gradient is not needed
            add(
                f"{layer}/dx/flatjax",
                lambda x, w, dy: _conv_bwd((1, 1), pads, None, (x, w), dy)[0],
                x,
                w,
                dy,
            )

        def xla_dk(x, w, dy):
            conv = lambda w: lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=DN)
            return jax.vjp(conv, w)[1](dy)[0]

        add(f"{layer}/dk/flatjax-xla", xla_dk, x, w, dy)
        tx = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).requires_grad_(
            layer == "conv2"
        )
        tw = torch.from_numpy(np.asarray(w).transpose(3, 2, 0, 1).copy()).requires_grad_(True)
        tdy = torch.from_numpy(np.asarray(dy).transpose(0, 3, 1, 2).copy())

        def t_fwd(tx=tx, tw=tw):
            torch.set_num_threads(1)
            with torch.no_grad():
                return F.conv2d(tx, tw, padding=1)

        def t_fwdbwd(tx=tx, tw=tw, tdy=tdy):
            torch.set_num_threads(1)
            wrt = [tw, tx] if tx.requires_grad else [tw]
            return torch.autograd.grad(F.conv2d(tx, tw, padding=1), wrt, tdy)

        t_fwd(), t_fwdbwd()
        cases[f"{layer}/fwd/torch-1thread"] = t_fwd
        cases[f"{layer}/fwd+bwd/torch-1thread"] = t_fwdbwd

    for layer, h in (("pool1", h1), ("pool2", h2)):
        ct = jnp.ones(max_pool(h).shape)
        for name, pool in (
            ("flatjax", max_pool),
            ("flax.linen.max_pool", lambda a: nn.max_pool(a, (2, 2), (2, 2), padding="SAME")),
        ):
            add(f"{layer}/fwd+bwd/{name}", lambda h, pool=pool: jax.vjp(pool, h)[1](ct)[0], h)
        th = torch.from_numpy(np.asarray(h).transpose(0, 3, 1, 2).copy()).requires_grad_(True)
        tct = torch.ones(th.shape[0], th.shape[1], th.shape[2] // 2, th.shape[3] // 2)

        def t_pool(th=th, tct=tct):
            torch.set_num_threads(1)
            return torch.autograd.grad(torch.max_pool2d(th, 2), [th], tct)

        t_pool()
        cases[f"{layer}/fwd+bwd/torch-1thread"] = t_pool
    return cases


def run(rounds: int, scan_steps: int, layers: bool, seed: int = 0) -> dict:
    cases, check = model_cases(scan_steps, seed)
    if layers:
        cases.update(layer_cases(seed))
    wall, cpu = measure(cases, rounds, seed=seed, label="cnn_speed")
    per = {name: 1 for name in cases}
    per["flatjax-scan"] = scan_steps
    ratios = []
    for num, den, target in RATIOS:
        r = paired(wall, cpu, per, num, den)
        ratios.append(
            {"num": num, "den": den, "target": target, **r}
            | ({} if target is None else {"holds": r["median"] >= target})
        )
    ms = {
        n: {k: 1e3 * v for k, v in summary([t / per[n] for t in ts]).items()}
        for n, ts in wall.items()
    }
    ms_cpu = {n: 1e3 * summary([t / per[n] for t in ts])["median"] for n, ts in cpu.items()}
    return {"check": check, "ms": ms, "ms_cpu": ms_cpu, "ratios": ratios, "raw_wall": wall}


def markdown(result: dict) -> str:
    info, bench = result["machine"], result["benchmark"]
    ms, cpu = bench["ms"], bench["ms_cpu"]
    out = [
        "# The small CNN's gradient: flatjax vs one-thread PyTorch (CPU)",
        "",
        f"{info['date_utc']}, {info['device']} ({info['backend']}), {info['cpus_usable']} "
        f"usable of {info['cpu_count']} CPUs, jax {info['jax']}, torch {result['torch']}. "
        f"Load average {result['load_before']} before, {result['load_after']} after (the "
        f"machine is shared). {'QUICK run. ' if result['quick'] else ''}"
        f"{result['rounds']} interleaved rounds; medians; `flatjax-scan` per step of a "
        f"{result['scan_steps']}-step `lax.scan`. CNN conv3x3(32) - pool - conv3x3(64) - "
        "pool - dense 128 - head 10, 28x28x1 inputs, batch 128, one gradient of the mean "
        "cross-entropy.",
        "",
        "## One gradient (ms)",
        "",
        "| case | wall median | IQR | CPU median |",
        "|---|---:|---:|---:|",
    ]
    for name in ("torch-1thread", "flatjax", "flatjax-scan", "flatjax-xla", "flatjax-flaxpool"):
        out.append(
            f"| {name} | {ms[name]['median']:.1f} | {ms[name]['iqr']:.1f} | {cpu[name]:.1f} |"
        )
    out += [
        "",
        "## Paired ratios",
        "",
        "| ratio | median | q25 | q75 | CPU-time median | target | holds |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in bench["ratios"]:
        target = "" if r["target"] is None else f">= {r['target']:g}"
        holds = "" if r["target"] is None else ("yes" if r["holds"] else "**no**")
        out.append(
            f"| {r['num']} / {r['den']} | {r['median']:.2f} | {r['q25']:.2f} | {r['q75']:.2f} | "
            f"{r['cpu_time']['median']:.2f} | {target} | {holds} |"
        )
    layer_rows = [n for n in ms if "/" in n]
    if layer_rows:
        out += [
            "",
            "## Where the time goes: each layer alone (ms, wall median / CPU median)",
            "",
            "`fwd`: forward; `dk`: kernel gradient; `dx`: input gradient; `fwd+bwd`: all "
            "of them (torch: `autograd.grad` of the layer).",
            "",
            "| layer / pass / implementation | wall | CPU |",
            "|---|---:|---:|",
        ]
        for n in sorted(layer_rows):
            out.append(f"| {n} | {ms[n]['median']:.1f} | {cpu[n]:.1f} |")
    check = bench["check"]
    out += [
        "",
        "## Checks",
        "",
        f"- Same gradient on both sides (second convolution's kernel, max abs difference): "
        f'{check["max_abs_diff_grad_kernel_conv1"]:.2e}; flatjax default vs `conv="xla"`: '
        f"{check['max_abs_diff_flatjax_vs_xla']:.2e}; vs `flax.linen.max_pool`: "
        f"{check['max_abs_diff_flatjax_vs_flaxpool']:.2e}.",
        "",
        *result.get("notes", []),
        "",
    ]
    return "\n".join(out)


def notes(bench: dict) -> list[str]:
    """Where the time goes, with this run's CPU-time medians (ms)."""
    cpu = bench["ms_cpu"]
    if "conv2/dk/flatjax" not in cpu:
        return []

    def c(name: str) -> str:
        return f"{cpu[name]:.1f}"

    torch_bwd2 = cpu["conv2/fwd+bwd/torch-1thread"] - cpu["conv2/fwd/torch-1thread"]
    pools = cpu["pool1/fwd+bwd/flatjax"] + cpu["pool2/fwd+bwd/flatjax"]
    flax_pools = cpu["pool1/fwd+bwd/flax.linen.max_pool"] + cpu["pool2/fwd+bwd/flax.linen.max_pool"]
    torch_pools = cpu["pool1/fwd+bwd/torch-1thread"] + cpu["pool2/fwd+bwd/torch-1thread"]
    return [
        "## Where the time goes",
        "",
        f"CPU ms per pass, this run. flatjax's gradient: {c('flatjax')} (torch "
        f"{c('torch-1thread')}; per step inside `lax.scan` {c('flatjax-scan')}).",
        "",
        "- **Pooling's backward pass** was the largest item: `flax.linen.max_pool`'s "
        "gradient is XLA's `select_and_scatter`, which XLA:CPU runs as a generic loop: "
        f"both pools' forward+backward {flax_pools:.1f} ms, more than both convolutions' "
        f"gradients. `flatjax.nn.models.max_pool` (strided slices masked to the first "
        "maximum: elementwise fusions, the same values and gradients) takes "
        f"{pools:.1f} ms (torch: {torch_pools:.1f}). "
        f"Whole gradient with flax's pool: {c('flatjax-flaxpool')} ms.",
        "- **The second convolution's kernel gradient** is now the largest item: "
        f"{c('conv2/dk/flatjax')} ms (XLA's own transpose rule: {c('conv2/dk/flatjax-xla')} "
        f"in the entry computation, 10-100x slower inside loops), against about "
        f"{torch_bwd2:.1f} ms for torch's (oneDNN) kernel *and* input gradients together; "
        f"its input gradient {c('conv2/dx/flatjax')} and forward pass "
        f"{c('conv2/fwd/flatjax')} (torch {c('conv2/fwd/torch-1thread')}) are on a par. "
        "XLA:CPU runs it as a YNNPACK convolution of the input (batch and channel axes "
        "swapped) with `dy` as a 14x14 window: one output pixel per kernel tap, a "
        "contraction of length 25,088, a shape its convolution kernels are not tuned for. "
        "Written as matrix products (stacked windows x `dy`, per tap or as one im2col "
        "product) it was slower still on this machine (the im2col copy of 29 MB alone "
        "costs ~11 ms). Padding inside the convolution rather than with `jnp.pad` first "
        "took it from ~43 to ~30 ms (in this module's `canonical_conv`).",
        f"- **The first convolution's kernel gradient** (1 input channel): "
        f"{c('conv1/dk/flatjax')} ms as one contraction of the 9 stacked input windows "
        f"with `dy` (XLA's convolution: {c('conv1/dk/flatjax-xla')}); torch's forward + "
        f"kernel gradient {c('conv1/fwd+bwd/torch-1thread')}.",
        "- The dense layers and the loss are a few ms on both sides.",
    ]


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, no per-layer cases")
    parser.add_argument("--rounds", type=int, default=None, help="paired rounds (15; quick 3)")
    parser.add_argument("--scan-steps", type=int, default=4)
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    torch = require_torch()
    threads = torch.get_num_threads()
    rounds = args.rounds or (3 if args.quick else 15)
    load_before = load_average()
    start = time.perf_counter()
    try:
        bench = run(rounds, args.scan_steps, layers=not args.quick)
    finally:
        torch.set_num_threads(threads)
    result = {
        "machine": machine_info(),
        "torch": torch.__version__,
        "quick": args.quick,
        "rounds": rounds,
        "scan_steps": args.scan_steps,
        "load_before": load_before,
        "load_after": load_average(),
        "total_s": time.perf_counter() - start,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "benchmark": bench,
    }
    result["notes"] = notes(bench)
    stem = "cnn_speed_quick" if args.quick else "cnn_speed"
    print(write_results(args.out, stem, result, markdown))
    return result


if __name__ == "__main__":
    main()
