"""Which way of drawing Gaussian Langevin noise is fastest, exactly N(0, 1), on this backend.

Issue 15, item 1. flatjax draws Gaussian noise with :func:`flatjax._util.normal_like`
(``jax.random.normal`` per big leaf, small leaves grouped; threefry2x32 keys) and
Rademacher noise with :func:`flatjax._util.rademacher_like`. This script times, on
whatever ``jax.default_backend()`` is, unit-variance noise of

(a) one float32 leaf of 669,706 entries (the 784-512-512-10 MLP's size), by

- ``threefry normal``: ``jax.random.normal`` with the default threefry2x32 key (what
  flatjax uses; the baseline of every ratio);
- ``threefry bits``: ``jax.random.bits`` uint32 of the same count (the bits alone);
- ``threefry uniform→Box-Muller``: threefry bits → two uniforms → Box-Muller, cos and
  sin both used;
- ``rbg normal`` / ``unsafe_rbg`` / ``threefry4x32`` / ``philox4x32`` /
  ``philox2x32 normal``: a key of that impl derived from the threefry key
  (``wrap_key_data(bits(key, key_shape), impl=...)``), then ``jax.random.normal``;
- ``philox (lax.rng_bit_generator) + erfinv``: bits of
  ``lax.rng_bit_generator(seed, ..., RNG_PHILOX)``, the seed drawn from the key,
  then jax's own uniform → erfinv transform;
- ``threefry2x32 unrolled + erfinv``: threefry2x32 written in jnp (20 rounds, counters
  from iota), bit for bit ``jax.random.bits`` (checked), then jax's transform: bit
  for bit ``jax.random.normal``. JAX lowers threefry on CPU as a *rolled* 5-iteration
  loop (``use_rolled_loops``), which XLA cannot fuse; the jnp version is one fusion;
- ``threefry2x32 unrolled, both words + erfinv`` / ``+ Box-Muller``: the same hash,
  but both 32-bit output words of each counter used (half the hashing; jax XORs them);
- ``rademacher``: :func:`flatjax._util.rademacher_like` (random signs, not N(0, 1));

(b) the MLP's parameter pytree (6 leaves: kernels 784x512, 512x512, 512x10, biases),
by ``normal_like`` (per leaf, small leaves grouped), one fused ``jax.random.normal`` of
the total size sliced per leaf, ``blackjax.util.generate_gaussian_noise`` (ravels the
pytree), the unrolled threefry per leaf with the counters of a fused draw (bit for bit
the fused draw, no key split), its both-words variants, and ``rademacher_like``.

Every path is jitted and also timed under ``jax.vmap`` over 8 keys (time per key). All
cases run in the same interleaved rounds (``benchmarks/_timing.py``); ratios are per
round (paired) against ``threefry normal`` (resp. its vmapped version). For each path
the output's mean, variance and 4th moment are checked against N(0, 1) (z-scores
within ``Z_MAX`` standard errors); a path that is not N(0, 1) is marked, not ranked.
Each path is checked to be a deterministic function of the key (same key → same
output, other key → other output) and, under vmap, to give key ``i`` what it gives
alone.

Usage::

    python benchmarks/noise_paths.py            # full run, ~2-3 min on 2 CPUs
    python benchmarks/noise_paths.py --quick    # smaller sizes, 3 rounds (< 1 min)

Writes ``benchmarks/results/noise_paths.{json,md}`` (``noise_paths_quick`` with
``--quick``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import blackjax.util
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from flatjax._util import normal_like, rademacher_like

try:  # run as a script (`python benchmarks/noise_paths.py`) or as a module
    from benchmarks._timing import (
        load_average,
        machine_info,
        measure,
        paired,
        summary,
        write_results,
    )
except ImportError:  # pragma: no cover
    from _timing import (  # type: ignore[no-redef]
        load_average,
        machine_info,
        measure,
        paired,
        summary,
        write_results,
    )

BASELINE = "threefry normal"
NUM_KEYS = 8  # keys under vmap
Z_MAX = 4.5  # a moment's |z| above this fails its check
SPEEDUP_CLAIM = 1.2  # "beats the baseline" threshold of the verdict
FULL = {"hidden": (512, 512), "rounds": 15, "reps": 10, "vmap_reps": 2}
QUICK = {"hidden": (64, 64), "rounds": 3, "reps": 2, "vmap_reps": 1}

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


# ---------------------------------------------------------------- bits -> N(0, 1)


def _rotl(x: jax.Array, d: int) -> jax.Array:
    return (x << np.uint32(d)) | (x >> np.uint32(32 - d))


def threefry2x32_unrolled(key_data: jax.Array, n: int, offset: int = 0) -> tuple:
    """Threefry-2x32 (20 rounds) of the counters ``(0, offset + i)``, ``i < n``, in jnp.

    The same hash as JAX's ``threefry2x32_p`` with the counters of
    ``jax.random.bits`` under ``jax_threefry_partitionable`` (high word 0 for fewer
    than 2**32 numbers), written as plain element-wise jnp so that XLA fuses it into
    one loop-free kernel. Returns both output words; ``jax.random.bits`` is their XOR.
    """
    if offset + n >= 2**32:
        raise ValueError("counters must stay below 2**32")
    k0, k1 = key_data[0], key_data[1]
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0 = jnp.zeros((n,), jnp.uint32) + ks[0]
    x1 = lax.iota(jnp.uint32, n) + np.uint32(offset) + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = _rotl(x1, r) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def erfinv_transform(bits: jax.Array) -> jax.Array:
    """jax.random.normal's float32 transform: 23 mantissa bits → u in (-1, 1) → √2 erfinv(u)."""
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0), dtype=np.float32)
    hi = np.float32(1.0)
    one = np.array(1.0, np.float32).view(np.uint32)
    floats = lax.bitcast_convert_type((bits >> np.uint32(9)) | one, jnp.float32) - np.float32(1)
    u = lax.max(lo, floats * (hi - lo) + lo)
    return np.float32(np.sqrt(2)) * lax.erf_inv(u)


def _unit24(bits: jax.Array) -> jax.Array:
    """The top 24 bits as a float32 in [0, 1) (exact: 24 bits fit the mantissa)."""
    return (bits >> np.uint32(8)).astype(jnp.float32) * np.float32(2.0**-24)


def box_muller(bits_a: jax.Array, bits_b: jax.Array, n: int) -> jax.Array:
    """Box-Muller: radius from ``bits_a``, angle from ``bits_b``; cos and sin both used.

    ``u1 = 1 - unit24(a)`` lies in (0, 1], so the log is finite; the largest radius is
    sqrt(2 * 24 ln 2) = 5.77 (erfinv's 23-bit uniform stops at 5.3).
    """
    radius = jnp.sqrt(np.float32(-2.0) * jnp.log(np.float32(1.0) - _unit24(bits_a)))
    angle = np.float32(2 * np.pi) * _unit24(bits_b)
    return jnp.concatenate([radius * jnp.cos(angle), radius * jnp.sin(angle)])[:n]


# ---------------------------------------------------------------- the paths


def derived_key(key: jax.Array, impl: str) -> jax.Array:
    """A key of ``impl`` whose data are threefry bits of ``key`` (reproducible from it)."""
    shape = jax.random.key_data(jax.random.key(0, impl=impl)).shape
    return jax.random.wrap_key_data(jax.random.bits(key, shape, jnp.uint32), impl=impl)


def counters_for(n: int) -> int:
    """Counters for ``n`` numbers from both words: ceil(n / 2) rounded up to a multiple of 64.

    XLA:CPU runs the unrolled hash ~9x slower when its length is odd (334,853 for the
    MLP; measured 29 ms against 3.2 ms): the spare numbers are drawn and sliced off.
    """
    return -(-n // 128) * 64


def single_paths(n: int) -> dict[str, tuple[Callable, str]]:
    """``{name: (draw(key) -> (n,) array, kind)}``; kind: gaussian, bits or rademacher."""
    half = -(-n // 2)
    pairs = counters_for(n)

    def threefry_box_muller(key):
        bits = jax.random.bits(key, (2 * half,), jnp.uint32)
        return box_muller(bits[:half], bits[half:], n)

    def philox_erfinv(key):
        seed = jax.random.bits(key, (4,), jnp.uint32)
        _, bits = lax.rng_bit_generator(
            seed, (n,), jnp.uint32, algorithm=lax.RandomAlgorithm.RNG_PHILOX
        )
        return erfinv_transform(bits)

    def unrolled_erfinv(key):
        x0, x1 = threefry2x32_unrolled(jax.random.key_data(key), n)
        return erfinv_transform(x0 ^ x1)

    def unrolled_both_erfinv(key):
        x0, x1 = threefry2x32_unrolled(jax.random.key_data(key), pairs)
        return erfinv_transform(jnp.concatenate([x0, x1])[:n])

    def unrolled_both_box_muller(key):
        x0, x1 = threefry2x32_unrolled(jax.random.key_data(key), pairs)
        return box_muller(x0, x1, n)

    def impl_normal(impl):
        return lambda key: jax.random.normal(derived_key(key, impl), (n,))

    return {
        BASELINE: (lambda key: jax.random.normal(key, (n,)), "gaussian"),
        "threefry bits": (lambda key: jax.random.bits(key, (n,), jnp.uint32), "bits"),
        "threefry uniform→Box-Muller": (threefry_box_muller, "gaussian"),
        "rbg normal": (impl_normal("rbg"), "gaussian"),
        "unsafe_rbg normal": (impl_normal("unsafe_rbg"), "gaussian"),
        "threefry4x32 normal": (impl_normal("threefry4x32"), "gaussian"),
        "philox4x32 normal": (impl_normal("philox4x32"), "gaussian"),
        "philox2x32 normal": (impl_normal("philox2x32"), "gaussian"),
        "philox (lax.rng_bit_generator) + erfinv": (philox_erfinv, "gaussian"),
        "threefry2x32 unrolled + erfinv": (unrolled_erfinv, "gaussian"),
        "threefry2x32 unrolled, both words + erfinv": (unrolled_both_erfinv, "gaussian"),
        "threefry2x32 unrolled, both words + Box-Muller": (unrolled_both_box_muller, "gaussian"),
        "rademacher": (
            lambda key: rademacher_like(key, jnp.zeros((n,), jnp.float32)),
            "rademacher",
        ),
    }


def mlp_params(hidden: Sequence[int], inputs: int = 784, outputs: int = 10) -> dict:
    """Zero float32 parameters of an MLP, as a Flax-like pytree."""
    sizes = [inputs, *hidden, outputs]
    return {
        f"Dense_{i}": {
            "bias": jnp.zeros((b,), jnp.float32),
            "kernel": jnp.zeros((a, b), jnp.float32),
        }
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
    }


def _per_leaf(
    tree: Any, draw: Callable[[int, int], jax.Array], used: Callable[[int], int] = int
) -> Any:
    """``draw(size, offset)`` per leaf; each leaf advances the offset by ``used(size)``.

    With the default the offsets are those of the flattened tree.
    """
    leaves, treedef = jax.tree.flatten(tree)
    out, offset = [], 0
    for leaf in leaves:
        out.append(draw(leaf.size, offset).reshape(leaf.shape))
        offset += used(leaf.size)
    return jax.tree.unflatten(treedef, out)


def normal_fused(key: jax.Array, tree: Any) -> Any:
    """One ``jax.random.normal`` of the total size, sliced per leaf."""
    total = sum(x.size for x in jax.tree.leaves(tree))
    flat = jax.random.normal(key, (total,))
    return _per_leaf(tree, lambda size, offset: flat[offset : offset + size])


def normal_unrolled_per_leaf(key: jax.Array, tree: Any) -> Any:
    """Unrolled threefry per leaf at the fused draw's counters: bit for bit :func:`normal_fused`."""
    data = jax.random.key_data(key)

    def draw(size, offset):
        x0, x1 = threefry2x32_unrolled(data, size, offset)
        return erfinv_transform(x0 ^ x1)

    return _per_leaf(tree, draw)


def normal_unrolled_both_per_leaf(key: jax.Array, tree: Any, box: bool = False) -> Any:
    """Both threefry words per counter, each leaf its own counter range (no key split)."""
    data = jax.random.key_data(key)

    def draw(size, offset):
        # counter ranges [offset, offset + counters_for(size)) are disjoint across leaves
        x0, x1 = threefry2x32_unrolled(data, counters_for(size), offset)
        if box:
            return box_muller(x0, x1, size)
        return erfinv_transform(jnp.concatenate([x0, x1])[:size])

    return _per_leaf(tree, draw, used=counters_for)


def tree_paths(tree: Any) -> dict[str, tuple[Callable, str]]:
    """``{name: (draw(key) -> pytree like tree, kind)}``."""
    return {
        "normal_like (flatjax)": (lambda key: normal_like(key, tree), "gaussian"),
        "fused normal, sliced": (lambda key: normal_fused(key, tree), "gaussian"),
        "blackjax generate_gaussian_noise": (
            lambda key: blackjax.util.generate_gaussian_noise(key, tree),
            "gaussian",
        ),
        "unrolled threefry per leaf (= fused)": (
            lambda key: normal_unrolled_per_leaf(key, tree),
            "gaussian",
        ),
        "unrolled both words per leaf + erfinv": (
            lambda key: normal_unrolled_both_per_leaf(key, tree),
            "gaussian",
        ),
        "unrolled both words per leaf + Box-Muller": (
            lambda key: normal_unrolled_both_per_leaf(key, tree, box=True),
            "gaussian",
        ),
        "rademacher_like (flatjax)": (lambda key: rademacher_like(key, tree), "rademacher"),
    }


# ---------------------------------------------------------------- checks


def flat(out: Any) -> np.ndarray:
    return np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(out)])


def moment_check(x: np.ndarray) -> dict:
    """Mean, variance and 4th moment of ``x`` against N(0, 1), as z-scores.

    Standard errors for n i.i.d. N(0, 1) numbers: mean 1/√n, E x² sqrt(2/n), E x⁴
    sqrt(96/n) (E x⁸ = 105).
    """
    x = x.astype(np.float64)
    n = x.size
    mean, m2, m4 = float(x.mean()), float((x**2).mean()), float((x**4).mean())
    z = {
        "mean": mean * math.sqrt(n),
        "var": (m2 - 1.0) / math.sqrt(2.0 / n),
        "m4": (m4 - 3.0) / math.sqrt(96.0 / n),
    }
    return {
        "n": n,
        "mean": mean,
        "var": m2 - mean**2,
        "m4": m4,
        "max_abs": float(np.abs(x).max()),
        "z": z,
        "passed": bool(np.all(np.isfinite(x)) and all(abs(v) < Z_MAX for v in z.values())),
    }


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


def checks(one: Callable, vmapped: Callable, kind: str, key: jax.Array, keys: jax.Array) -> dict:
    """Moments, determinism in the key, and vmap consistency of one path.

    ``one(key)`` draws for one key, ``vmapped(keys)`` for a batch of keys (compiled).
    """
    a, b, other = flat(one(key)), flat(one(key)), flat(one(jax.random.fold_in(key, 1)))
    batched = vmapped(keys)
    per_key = [flat(jax.tree.map(lambda x, i=i: x[i], batched)) for i in range(len(keys))]
    alone = [flat(one(k)) for k in keys]
    diffs = [
        float(np.max(np.abs(p.astype(np.float64) - q.astype(np.float64))))
        for p, q in zip(per_key, alone, strict=True)
    ]
    out = {
        "kind": kind,
        "deterministic": _same(a, b),
        "key_dependent": not _same(a, other),
        "vmap_max_abs_diff": max(diffs),
        "vmap_consistent": max(diffs) <= 1e-5,
        "vmap_keys_distinct": not _same(per_key[0], per_key[1]),
    }
    if kind == "gaussian":
        out["moments"] = moment_check(a)
    elif kind == "rademacher":
        out["moments"] = moment_check(a)
        out["moments"]["passed"] = False  # unit variance, but not N(0, 1)
    out["exact"] = kind == "gaussian" and out["moments"]["passed"] and out["deterministic"]
    return out


# ---------------------------------------------------------------- timing


def compiled(fn: Callable, *args) -> tuple[Callable, float]:
    """The AOT-compiled ``jit(fn)`` for ``args`` (warmed up), and its compile time (s)."""
    start = time.perf_counter()
    exe = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(exe(*args))
    return exe, compile_s


def repeat(exe: Callable, arg: Any, reps: int) -> Callable[[], Any]:
    """A case: ``reps`` asynchronous calls, the results blocked on by the harness."""
    return lambda: [exe(arg) for _ in range(reps)]


def run(sizes: dict, rounds: int) -> dict:
    tree = mlp_params(sizes["hidden"])
    n = sum(x.size for x in jax.tree.leaves(tree))
    key = jax.random.key(0)
    keys = jax.random.split(jax.random.key(1), NUM_KEYS)
    paths = {("leaf", k): v for k, v in single_paths(n).items()}
    paths |= {("tree", k): v for k, v in tree_paths(tree).items()}

    check, cases, units, exes = {}, {}, {}, {}
    for (part, name), (draw, kind) in paths.items():
        label = f"{part}/{name}"
        start = time.perf_counter()
        one, compile_s = compiled(draw, key)
        exes[label] = one
        vmapped, vmap_compile_s = compiled(jax.vmap(draw), keys)
        check[label] = checks(one, vmapped, kind, key, keys)
        check[label] |= {"compile_s": compile_s, "vmap_compile_s": vmap_compile_s}
        cases[label] = repeat(one, key, sizes["reps"])
        units[label] = sizes["reps"]
        cases[f"vmap/{label}"] = repeat(vmapped, keys, sizes["vmap_reps"])
        units[f"vmap/{label}"] = sizes["vmap_reps"] * NUM_KEYS
        print(f"  {label}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)

    # exactness against jax.random itself
    data = jax.random.key_data(key)
    x0, x1 = jax.jit(lambda d: threefry2x32_unrolled(d, n))(data)
    identities = {
        "unrolled threefry2x32 bits == jax.random.bits": _same(
            np.asarray(x0 ^ x1), np.asarray(jax.random.bits(key, (n,), jnp.uint32))
        ),
        "unrolled threefry2x32 + erfinv == jax.random.normal": _same(
            flat(exes["leaf/threefry2x32 unrolled + erfinv"](key)),
            flat(exes[f"leaf/{BASELINE}"](key)),
        ),
        "unrolled per leaf == fused normal, sliced": _same(
            flat(exes["tree/unrolled threefry per leaf (= fused)"](key)),
            flat(exes["tree/fused normal, sliced"](key)),
        ),
    }

    print(f"timing {len(cases)} cases, {rounds} rounds", file=sys.stderr, flush=True)
    wall, cpu = measure(cases, rounds, seed=15)
    ms = {c: summary([1e3 * t / units[c] for t in ts]) for c, ts in wall.items()}
    ratios = {}
    for c in cases:
        base = f"vmap/leaf/{BASELINE}" if c.startswith("vmap/") else f"leaf/{BASELINE}"
        r = paired(wall, cpu, units, c, base)
        ratios[c] = {k: v for k, v in r.items() if k != "cpu_time"} | {
            "cpu_time": summary(r["cpu_time"]["raw"])
        }
    return {
        "n": n,
        "leaf_shapes": [list(x.shape) for x in jax.tree.leaves(tree)],
        "checks": check,
        "identities": identities,
        "units": units,
        "seconds_per_call": wall,
        "cpu_seconds_per_call": cpu,
        "ms_per_draw": ms,
        "ratios": ratios,
    }


# ---------------------------------------------------------------- report


def verdict(result: dict) -> dict:
    """The fastest exact path (single call and under vmap), and what flatjax uses."""
    checks_, ratios = result["checks"], result["ratios"]
    exact = [c for c, v in checks_.items() if v["exact"]]

    def best(prefix: str, among: list[str]) -> tuple[str, float, float]:
        name = min(among, key=lambda c: ratios[prefix + c]["median"])
        return name, ratios[prefix + name]["median"], ratios[prefix + name]["cpu_time"]["median"]

    out = {}
    for part in ("leaf", "tree"):
        among = [c for c in exact if c.startswith(part + "/")]
        name, r, rc = best("", among)
        vr = ratios["vmap/" + name]["median"]
        vrc = ratios["vmap/" + name]["cpu_time"]["median"]
        out[part] = {
            "fastest": name,
            "ratio": r,
            "cpu_ratio": rc,
            "vmap_ratio": vr,
            "vmap_cpu_ratio": vrc,
            "vmap_consistent": checks_[name]["vmap_consistent"],
            "fastest_vmap": best("vmap/", among)[0],
            "beats_claim": r < 1 / SPEEDUP_CLAIM and vr < 1 / SPEEDUP_CLAIM,
        }
    flatjax_ratio = ratios["tree/normal_like (flatjax)"]
    out["normal_like_ratio"] = flatjax_ratio["median"]
    out["normal_like_vmap_ratio"] = ratios["vmap/tree/normal_like (flatjax)"]["median"]
    return out


def verdict_text(result: dict) -> str:
    v, info = result["verdict"], result["machine"]
    backend = f"{info['device']} ({info['backend']})"
    leaf, tree = v["leaf"], v["tree"]
    ms = result["run"]["ms_per_draw"]
    base_ms = ms[f"leaf/{BASELINE}"]["median"]

    def name(case: str) -> str:
        return case.split("/", 1)[1]

    lines = [
        f"**Verdict ({backend}).** Among the exact paths (N(0, 1) moments within "
        f"{Z_MAX} standard errors, a deterministic function of the key), the fastest for one "
        f"leaf of {result['run']['n']:,} numbers is `{name(leaf['fastest'])}`: "
        f"{leaf['ratio']:.2f}x the time of `{BASELINE}` ({1 / leaf['ratio']:.2f}x faster; "
        f"CPU-time ratio {leaf['cpu_ratio']:.2f}; baseline {base_ms:.2f} ms per draw), and "
        f"{leaf['vmap_ratio']:.2f}x under vmap over {NUM_KEYS} keys (CPU time "
        f"{leaf['vmap_cpu_ratio']:.2f}; fastest under vmap: `{name(leaf['fastest_vmap'])}`). "
        f"For the MLP's pytree the fastest exact path is `{name(tree['fastest'])}` at "
        f"{tree['ratio']:.2f}x (vmap {tree['vmap_ratio']:.2f}x), against "
        f"{v['normal_like_ratio']:.2f}x (vmap {v['normal_like_vmap_ratio']:.2f}x) for "
        f"what flatjax uses, `normal_like`: "
        f"{v['normal_like_ratio'] / tree['ratio']:.2f}x faster than flatjax "
        f"({v['normal_like_vmap_ratio'] / tree['vmap_ratio']:.2f}x under vmap).",
    ]
    if leaf["beats_claim"]:
        lines.append(
            f"This beats `{BASELINE}` by more than {SPEEDUP_CLAIM}x both alone and under vmap."
        )
    else:
        lines.append(
            f"No exact path beats `{BASELINE}` by more than {SPEEDUP_CLAIM}x both alone and "
            "under vmap on this backend."
        )
    ratios = result["run"]["ratios"]
    same, both = (
        "tree/unrolled threefry per leaf (= fused)",
        "tree/unrolled both words per leaf + erfinv",
    )
    r_same, v_same = ratios[same]["median"], ratios["vmap/" + same]["median"]
    if max(r_same, v_same) < 1 / SPEEDUP_CLAIM:
        lines.append(
            "`normal_like` could draw every float32 leaf (large or small: no key split, no "
            "grouping) with the jnp threefry2x32 at the counters that a fused draw of the "
            "flattened tree gives it (offset = the leaf's position), then jax's erfinv "
            f"transform: `{name(same)}`, {r_same:.2f}x alone and {v_same:.2f}x under vmap "
            f"({v['normal_like_ratio'] / r_same:.2f}x and "
            f"{v['normal_like_vmap_ratio'] / v_same:.2f}x faster than `normal_like`), bit for "
            "bit `jax.random.normal(key, (total,))` sliced per leaf, so reproducible from the "
            "key and checked above. Each leaf is one loop-free fusion that XLA can also fuse "
            "with the update that consumes it. Using both output words of each counter "
            f"(`{name(both)}`: {ratios[both]['median']:.2f}x, vmap "
            f"{ratios['vmap/' + both]['median']:.2f}x) halves the hashing but changes the "
            "numbers. Other dtypes can keep `jax.random.normal` (the transform takes the "
            "dtype's mantissa bits). On GPU/TPU jax already lowers threefry unrolled (or as a "
            "kernel), so a switch on `jax.default_backend() == 'cpu'` leaves those as they are."
        )
    ident = result["run"]["identities"]
    lines.append(
        "Identities: "
        + "; ".join(f"{k}: {'yes' if ok else '**no**'}" for k, ok in ident.items())
        + "."
    )
    return " ".join(lines)


def markdown(result: dict) -> str:
    info, part = result["machine"], result["run"]
    checks_, ms, ratios = part["checks"], part["ms_per_draw"], part["ratios"]
    out = [
        "# Gaussian noise paths: speed and exactness",
        "",
        f"{info['date_utc']}, {info['device']} ({info['backend']}), "
        f"{info['cpus_usable']} usable of {info['cpu_count']} CPUs, jax {info['jax']}, "
        f"threefry_partitionable={info['threefry_partitionable']}. Load average "
        f"{result['load_before']} before, {result['load_after']} after (the machine is "
        f"shared). {'QUICK run. ' if result['quick'] else ''}"
        f"{result['rounds']} paired interleaved rounds; one timed call = "
        f"{result['sizes']['reps']} draws ({result['sizes']['vmap_reps']} vmapped draws of "
        f"{NUM_KEYS} keys); ms are per draw (per key under vmap), median and IQR over rounds. "
        f"Ratios are per-round time ratios against `{BASELINE}` (vmapped cases against its "
        "vmapped version): median (q25-q75), and the median ratio of the process's CPU "
        "times. Below 1 is faster.",
        "",
        f"n = {part['n']:,} numbers; pytree leaves {part['leaf_shapes']}.",
        "",
        "## Time per draw",
        "",
        "| part | path | N(0,1)? | ms (IQR) | ratio (q25-q75) | CPU ratio | vmap ms/key (IQR) "
        "| vmap ratio (q25-q75) | vmap CPU ratio | compile s (vmap) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case, c in checks_.items():
        part_name, name = case.split("/", 1)
        tag = "yes" if c["exact"] else f"no ({c['kind']})"
        cells = []
        for prefix in ("", "vmap/"):
            s, r = ms[prefix + case], ratios[prefix + case]
            cells += [
                f"{s['median']:.3f} ({s['iqr']:.3f})",
                f"{r['median']:.3f} ({r['q25']:.3f}-{r['q75']:.3f})",
                f"{r['cpu_time']['median']:.3f}",
            ]
        if "compile_s" in c:
            cells.append(f"{c['compile_s']:.2f} ({c['vmap_compile_s']:.2f})")
        out.append(f"| {part_name} | {name} | {tag} | " + " | ".join(cells) + " |")
    out += [
        "",
        "## Checks",
        "",
        f"Moments of one draw (a leaf of n numbers or the flattened pytree) against N(0, 1): "
        f"z-scores of the mean (SE 1/√n), of E x² - 1 (SE √(2/n)) and of E x⁴ - 3 "
        f"(SE √(96/n)); passed when all |z| < {Z_MAX}. *deterministic*: the same key gives "
        "the same bits twice; *key-dependent*: another key gives other numbers; *vmap*: "
        f"under `jax.vmap` over {NUM_KEYS} keys, key i gets what it gets alone (max abs "
        "difference), and keys 0 and 1 get different numbers.",
        "",
        "| part | path | mean | var | E x⁴ | max abs | z mean / var / x⁴ | moments "
        "| deterministic | key-dependent | vmap = alone (max diff) | vmap keys distinct |",
        "|---|---|---:|---:|---:|---:|---|---|---|---|---|---|",
    ]
    yes = {True: "yes", False: "**no**"}
    for case, c in checks_.items():
        part_name, name = case.split("/", 1)
        m = c.get("moments")
        if m is None:
            mcells = ["", "", "", "", "", "n/a (bits)"]
        else:
            z = m["z"]
            verdict_cell = "passed" if m["passed"] else "**failed**"
            if c["kind"] == "rademacher":
                verdict_cell = "not N(0,1) (signs)"
            mcells = [
                f"{m['mean']:.5f}",
                f"{m['var']:.5f}",
                f"{m['m4']:.4f}",
                f"{m['max_abs']:.2f}",
                f"{z['mean']:.2f} / {z['var']:.2f} / {z['m4']:.2f}",
                verdict_cell,
            ]
        out.append(
            f"| {part_name} | {name} | "
            + " | ".join(mcells)
            + f" | {yes[c['deterministic']]} | {yes[c['key_dependent']]} | "
            f"{yes[c['vmap_consistent']]} ({c['vmap_max_abs_diff']:.2g}) | "
            f"{yes[c['vmap_keys_distinct']]} |"
        )
    out += ["", "Identities:", ""]
    out += [f"- {k}: {yes[ok]}" for k, ok in part["identities"].items()]
    out += ["", "## Verdict", "", verdict_text(result), ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, 3 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="paired rounds (default 15)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results", help="folder"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    rounds = args.rounds or sizes["rounds"]
    load_before = load_average()
    start = time.perf_counter()
    part = run(sizes, rounds)
    result = {
        "machine": machine_info(),
        "quick": args.quick,
        "rounds": rounds,
        "sizes": {**sizes, "hidden": list(sizes["hidden"])},
        "load_before": load_before,
        "load_after": load_average(),
        "run": part,
    }
    result["verdict"] = verdict(part)
    result["total_s"] = time.perf_counter() - start
    stem = "noise_paths_quick" if args.quick else "noise_paths"
    print(write_results(args.out, stem, result, markdown))
    return result


if __name__ == "__main__":
    main()
