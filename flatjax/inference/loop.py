"""The multi-chain run loop: whole epochs in one jitted ``lax.scan``, chains vmapped.

Any kernel with BlackJAX's SG-MCMC call shape
``step(rng_key, state, minibatch, step_size, temperature)`` runs here: flatjax's
Entropy-MCMC kernels, ``blackjax.sgld``, ``blackjax.sghmc``, and the optax baselines of
:mod:`flatjax.inference.optimizer`.

Randomness is derived so that a run is reproducible and resumable from any epoch:
for epoch ``e`` and chain ``c``,
``chain_key = jax.random.split(jax.random.fold_in(rng_key, e), num_chains)[c]``,
``perm_key, steps_key = jax.random.split(chain_key)``; the epoch visits
``jax.random.permutation(perm_key, N)`` in ``N // batch_size`` minibatches (the
remainder is dropped) and step ``i`` uses ``jax.random.split(steps_key, num_batches)[i]``.
The global step ``epoch * num_batches + i`` feeds the step-size and temperature
schedules.

Compilation: the epoch and the collection of a sample are module-level programs of the
static configuration (the kernel's ``step``, the schedules, ``trace_fn``,
``sample_fn``/``predict_fn``, sizes and flags) with the state, data, keys and ``eval_x``
as arguments. A second :func:`run` with the same functions and data of the same shapes
reuses the compiled programs as they are; fresh closures over equal values (a new
kernel built by the same code) are traced again but share the executable through
:mod:`flatjax.inference.compile_cache`. Constant step sizes and temperatures compare by
value.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.types import ArrayTree, PRNGKey

from flatjax.inference import bma as bma_lib
from flatjax.inference import compile_cache
from flatjax.inference import sharding as sharding_lib
from flatjax.inference.chain_groups import chains_per_group
from flatjax.inference.checkpoint import CheckpointError, RunCheckpointer

__all__ = ["RunResult", "DivergenceError", "run", "every", "last_epochs_of_cycles"]

Schedule = Callable[[jax.Array], jax.Array]


class RunResult(NamedTuple):
    """What :func:`run` returns.

    state
        The final kernel state (leading chain axis).
    samples
        ``{name: pytree}`` with leaves of shape ``(num_samples, num_chains, ...)``, or
        ``None`` when ``keep_samples=False``.
    bma
        ``{name: BMAState}`` of the streaming predictive on ``eval_x``, or ``None``.
    trace
        ``{metric: array (num_epochs_run, num_chains, ...)}`` from ``trace_fn`` (the
        metric's own shape last; ``"guide/<metric>"`` for ``trace_sets=("theta",
        "guide")``).
    collected_epochs
        The epochs after which samples were collected.
    diverged
        ``None``, or ``(epoch, chains)`` of the first non-finite state (policy "stop").
    dropped
        ``[(epoch, chains), ...]``: the chains removed by ``on_divergence="drop"``, by
        their index in ``initial_state``; empty otherwise.
    chain_ids
        The index in ``initial_state`` of each chain of the result (``0 ..
        num_chains - 1`` unless chains were dropped).
    """

    state: Any
    samples: dict | None
    bma: dict | None
    trace: dict
    collected_epochs: list[int]
    diverged: tuple[int, list[int]] | None = None
    dropped: tuple[tuple[int, list[int]], ...] = ()
    chain_ids: tuple[int, ...] = ()


class DivergenceError(FloatingPointError):
    """A chain's state became NaN/inf; ``.result`` holds everything finished before."""

    def __init__(self, message: str, result: RunResult):
        super().__init__(message)
        self.result = result


def _divergence_cause(step: Callable, step_size: Any, num_steps: int) -> str:
    """The likely cause of a divergence, when the kernel knows its stable step sizes.

    Entropy-MCMC's ``step`` carries ``step_size_bound`` (see
    :func:`flatjax.sgmcmc.emcmc.max_stable_step`): a step-size schedule that reached
    it in the first ``num_steps`` steps explains the divergence whatever the model.
    Returns ``""`` otherwise (and never raises: the report must not hide the NaN).
    """
    bound = getattr(step, "step_size_bound", None)
    if bound is None:
        return ""
    try:
        schedule = step_size if callable(step_size) else (lambda _: jnp.asarray(step_size))
        steps = np.asarray(jax.vmap(schedule)(jnp.arange(num_steps)), np.float64)
        over = np.flatnonzero(steps >= bound.value)
    except Exception:
        return ""
    if over.size == 0:
        return ""
    return (
        f" Likely cause: the step size reached {steps.max():.6g} (first at global step "
        f"{int(over[0])}), at or above the stable bound step_size < {bound.formula}: "
        f"the Entropy-MCMC coupling diverges there whatever the model. Lower the "
        f"schedule's peak or raise eta (`debug=True` on the sampler stops at the first "
        f"such step)."
    )


def _restart_cause(step_size: Any, epoch: int, steps_per_epoch: int) -> str:
    """Names a jump of a step-size schedule (a cyclical restart) inside ``epoch``, or ``""``.

    A restart takes a chain that settled at a near-zero step back to the schedule's
    peak: where the loss is sharper than the new step tolerates (gradient descent needs
    ``step * lambda_max < 2`` on the scale the step multiplies) the chain is thrown out;
    most recover (a catapult), some diverge (``benchmarks/restart_divergence.py``).
    Never raises.
    """
    if not callable(step_size):
        return ""
    try:
        first = max(epoch * steps_per_epoch - 1, 0)
        ks = jnp.arange(first, (epoch + 1) * steps_per_epoch)
        steps = np.asarray(jax.vmap(step_size)(ks), np.float64)
        ratios = steps[1:] / np.maximum(steps[:-1], np.finfo(np.float64).tiny)
        k = int(np.argmax(ratios)) if ratios.size else 0
    except Exception:
        return ""
    if not ratios.size or ratios[k] < 10.0:
        return ""
    return (
        f" The step size jumped from {steps[k]:.3g} to {steps[k + 1]:.3g} at global step "
        f"{first + k + 1} (a restart of the schedule): a chain that settled where the "
        "loss is sharper than the new step tolerates is thrown out there. Lower the "
        "schedule's peak, or go on with the other chains with on_divergence='drop'."
    )


def every(thin: int, burn_in: int = 0) -> Callable[[int], bool]:
    """Collect after epoch ``e`` when ``e >= burn_in`` and ``(e - burn_in + 1) % thin == 0``.

    Examples
    --------
    >>> [e for e in range(6) if every(2, burn_in=1)(e)]
    [2, 4]
    """
    if thin < 1 or burn_in < 0:
        raise ValueError(f"need `thin` >= 1 and `burn_in` >= 0, got thin={thin}, burn_in={burn_in}")
    return lambda e: e >= burn_in and (e - burn_in + 1) % thin == 0


def last_epochs_of_cycles(num_epochs: int, num_cycles: int, num_last: int) -> Callable[[int], bool]:
    """Collect in the last ``num_last`` epochs of each of ``num_cycles`` equal cycles.

    This is the reference code's rule (4 cycles of 50 epochs, the last 2 of each).

    Examples
    --------
    >>> [e for e in range(8) if last_epochs_of_cycles(8, 2, 1)(e)]
    [3, 7]
    """
    if num_cycles < 1 or num_epochs < num_cycles:
        raise ValueError(f"`num_cycles`={num_cycles} must be in [1, num_epochs={num_epochs}]")
    cycle = num_epochs // num_cycles
    if not 1 <= num_last <= cycle:
        raise ValueError(f"`num_last`={num_last} must be in [1, epochs per cycle={cycle}]")
    return lambda e: (e % cycle) >= cycle - num_last


class _Constant(NamedTuple):
    """A constant schedule; equal values compare equal, so they share compiled epochs."""

    value: float

    def __call__(self, step: jax.Array) -> jax.Array:
        return jnp.asarray(self.value, jnp.float32)


def _as_schedule(name: str, value: float | Schedule) -> Schedule:
    if callable(value):
        return value
    v = float(value)
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0 or a schedule, got {value!r}")
    return _Constant(v)


def _progress_enabled(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return sys.stderr.isatty() and not os.environ.get("CI")


def _progress_bar(total: int, initial: int = 0, desc: str = "epochs", unit: str = "epoch"):
    """A tqdm bar on stderr, 100 x 24 where the terminal reports a size of 0 x 0.

    tqdm sizes its bar to the terminal; a pseudo-terminal whose size was never set
    (``script``, some ``docker exec -t`` and SSH sessions) reports 0 x 0, and tqdm then
    prints nothing at all.
    """
    from tqdm.auto import tqdm

    size = {}
    try:
        if os.get_terminal_size(sys.stderr.fileno()).columns == 0:
            size = {"ncols": 100, "nrows": 24}  # tqdm shows nothing below 1 row
    except (AttributeError, OSError, ValueError):  # not a real file (captured, closed)
        pass
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, **size)


def _default_sample_fn(state: Any) -> dict:
    if hasattr(state, "guide"):
        return {"theta": state.position, "guide": state.guide}
    return {"theta": getattr(state, "position", state)}


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
    return value


def _as_data(data: jax.Array | Sequence[jax.Array]) -> tuple[tuple[jax.Array, ...], bool]:
    """``(arrays, single_array)``: ``data`` as a tuple of device arrays with equal rows."""
    single_array = not isinstance(data, tuple | list)
    arrays = (jnp.asarray(data),) if single_array else tuple(jnp.asarray(d) for d in data)
    if not arrays:
        raise ValueError("`data` must hold at least one array")
    n = arrays[0].shape[0]
    for i, d in enumerate(arrays):
        if d.shape[0] != n:
            raise ValueError(
                f"`data` arrays disagree on the number of rows: data[0] has {n}, "
                f"data[{i}] has {d.shape[0]}"
            )
    return arrays, single_array


# --- the jitted programs ------------------------------------------------------------
#
# Each program is a module-level function of a hashable *spec* (the static
# configuration: functions by identity, sizes, flags) and of array arguments (state,
# data, keys). ``_epoch_program(spec)`` is cached on the spec, so a run with the same
# functions reuses the traced program; :func:`compile_cache.shared_jit` shares the
# executable between specs whose programs lower to the same text (fresh closures over
# equal values, as built by every call of ``run_experiment``).


class _EpochSpec(NamedTuple):
    """Static configuration of the jitted epoch (everything but array shapes)."""

    step: Callable
    step_size_fn: Schedule
    temperature_fn: Schedule
    trace_fn: Callable | None
    rows_per_step: int
    batch_shape: tuple[int, ...]
    single_array: bool
    chains_per_group: int | None
    place: sharding_lib.Placement
    trace_sets: tuple[str, ...] = ("theta",)


class _CollectSpec(NamedTuple):
    """Static configuration of the jitted collection of one sample."""

    sample_fn: Callable
    predict_fn: Callable | None
    place: sharding_lib.Placement


def _chain_epoch(
    spec: _EpochSpec, state: Any, chain_key: PRNGKey, epoch: jax.Array, data: tuple
) -> Any:
    """One chain's epoch: a fresh permutation, ``N // rows_per_step`` kernel steps."""
    n = data[0].shape[0]
    num_batches = n // spec.rows_per_step
    perm_key, steps_key = jax.random.split(chain_key)
    perm = jax.random.permutation(perm_key, n)
    step_keys = jax.random.split(steps_key, num_batches)

    def body(state, inputs):
        i, key = inputs
        idx = jax.lax.dynamic_slice_in_dim(perm, i * spec.rows_per_step, spec.rows_per_step)
        idx = idx.reshape(spec.batch_shape)
        minibatch = data[0][idx] if spec.single_array else tuple(d[idx] for d in data)
        minibatch = spec.place.constrain_batch(minibatch, axis=len(spec.batch_shape) - 1)
        step = epoch * num_batches + i
        state = spec.step(key, state, minibatch, spec.step_size_fn(step), spec.temperature_fn(step))
        return state, None

    state, _ = jax.lax.scan(body, state, (jnp.arange(num_batches), step_keys))
    return state


def _all_finite(state: Any) -> jax.Array:
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(state)]).all()


def _epoch_keys(
    spec: _EpochSpec, rng_key: PRNGKey, epoch: jax.Array, ids: jax.Array, chains: jax.Array
):
    """The keys for epoch ``epoch`` of the chains ``ids`` of the ``len(chains)`` started."""
    keys = jax.random.split(jax.random.fold_in(rng_key, epoch), chains.shape[0])
    return spec.place.constrain_chains(keys[ids])


def _epoch_summary(spec: _EpochSpec, state: Any) -> tuple[jax.Array, dict]:
    """``(finite per chain, traces)`` of the state after an epoch."""
    finite = jax.vmap(_all_finite)(state)
    traces = {}
    if spec.trace_fn:
        named = _default_sample_fn(state)
        for name in spec.trace_sets:
            prefix = "" if name == "theta" else f"{name}/"
            out = jax.vmap(spec.trace_fn)(named[name])
            traces.update({prefix + k: v for k, v in out.items()})
    return spec.place.constrain_replicated((finite, traces))


def _run_epoch(
    spec: _EpochSpec,
    state: Any,
    epoch: jax.Array,
    data: tuple,
    rng_key: PRNGKey,
    ids: jax.Array,
    chains: jax.Array,
) -> tuple[Any, jax.Array, dict]:
    """Every chain's epoch ``epoch``, all vmapped; returns ``(state, finite, traces)``."""
    place = spec.place
    keys = _epoch_keys(spec, rng_key, epoch, ids, chains)
    epoch_fn = jax.vmap(
        lambda s, k: _chain_epoch(spec, s, k, epoch, data), spmd_axis_name=place.chain_axis
    )
    state = place.constrain_chains(epoch_fn(state, keys))
    return state, *_epoch_summary(spec, state)


def _group_epoch(
    spec: _EpochSpec, state: Any, keys: jax.Array, epoch: jax.Array, data: tuple
) -> Any:
    """The epoch of one group of chains (vmapped; a group of one runs unbatched)."""
    if jax.tree.leaves(state)[0].shape[0] == 1:
        one = _chain_epoch(spec, jax.tree.map(lambda x: x[0], state), keys[0], epoch, data)
        return jax.tree.map(lambda x: x[None], one)
    return jax.vmap(lambda s, k: _chain_epoch(spec, s, k, epoch, data))(state, keys)


def split_groups(tree: Any, bounds: tuple[tuple[int, int], ...]) -> list:
    """``tree`` cut along its leading (chain) axis at ``bounds``; jit it (one dispatch)."""
    return [jax.tree.map(lambda x, a=a, b=b: x[a:b], tree) for a, b in bounds]


@functools.lru_cache(maxsize=16)
def _split_program(bounds: tuple[tuple[int, int], ...]) -> Callable:
    """``split_groups`` at ``bounds``, jitted once per distinct ``bounds``."""
    return jax.jit(functools.partial(split_groups, bounds=bounds))


@jax.jit
def concat_groups(parts: list) -> Any:
    """The groups' states joined back along the chain axis (one dispatch)."""
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)


def _grouped_epoch_runner(spec: _EpochSpec, num_chains: int) -> Callable:
    """``run_epoch`` for groups of ``spec.chains_per_group`` chains, one after another.

    Each group is its own jitted program, called from the host: on CPU a Python loop
    over groups is faster than the same groups inside one program (``lax.map``), which
    ran an MLP's single chains at 0.79-0.84x of separate programs
    (``benchmarks/results/step_overhead.md``). The keys and therefore the samples are
    those of the all-vmapped epoch (up to float reassociation).
    """
    size = spec.chains_per_group
    bounds = [(a, min(a + size, num_chains)) for a in range(0, num_chains, size)]
    keys_fn = _program(_epoch_keys, spec)
    group_fn = _program(_group_epoch, spec)
    summary_fn = _program(_epoch_summary, spec)
    split_fn = _split_program(tuple(bounds))

    def run_epoch(state, epoch, data, rng_key, ids, chains):
        keys = keys_fn(rng_key, epoch, ids, chains)
        if len(bounds) > 1:
            parts = [group_fn(s, k, epoch, data) for s, k in split_fn((state, keys))]
            state = concat_groups(parts)
        else:
            state = group_fn(state, keys, epoch, data)
        return state, *summary_fn(state)

    return run_epoch


def _collect_sample(
    spec: _CollectSpec,
    state: Any,
    buffers: dict | None,
    bmas: dict | None,
    slot: jax.Array,
    eval_x: jax.Array | None,
) -> tuple[dict | None, dict | None]:
    """Write ``sample_fn(state)`` into buffer ``slot`` and add its predictive to the BMA."""
    named = spec.sample_fn(state)
    if buffers is not None:
        buffers = {
            k: jax.tree.map(lambda b, s: b.at[slot].set(s), buffers[k], named[k]) for k in named
        }
    if bmas is not None:
        predict = jax.vmap(
            lambda p: bma_lib.batched_predict(spec.predict_fn, p, eval_x),
            spmd_axis_name=spec.place.chain_axis,
        )
        bmas = {k: bma_lib.update(bmas[k], predict(named[k])) for k in named}
    return buffers, bmas


@functools.lru_cache(maxsize=16)
def _cached_program(fn: Callable, spec: tuple) -> Callable:
    return compile_cache.shared_jit(functools.partial(fn, spec))


def _program(fn: Callable, spec: tuple) -> Callable:
    """``fn`` with ``spec`` bound, jitted; the same object for equal specs."""
    try:
        return _cached_program(fn, spec)
    except TypeError:  # an unhashable callable in the spec: no reuse across runs
        return compile_cache.shared_jit(functools.partial(fn, spec))


# --- host-side parts of a run -------------------------------------------------------


def _chain_shapes(tree: Any) -> Any:
    """Shapes of one chain's slice of ``tree`` (leading chain axis dropped)."""
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), tree)


def _init_collection(
    state: Any,
    sample_fn: Callable,
    predict_fn: Callable | None,
    eval_x: jax.Array | None,
    num_collect: int,
    keep_samples: bool,
) -> tuple[dict | None, dict | None]:
    """Empty sample buffers ``(num_collect, num_chains, ...)`` and BMA accumulators."""
    named0 = jax.eval_shape(sample_fn, state)
    buffers = None
    if keep_samples and num_collect:
        buffers = jax.tree.map(lambda s: jnp.zeros((num_collect, *s.shape), s.dtype), named0)
    bmas = None
    if predict_fn is not None and eval_x is not None:
        num_chains = jax.tree.leaves(state)[0].shape[0]
        probe = jax.eval_shape(lambda p: predict_fn(p, eval_x[:1]), _chain_shapes(named0["theta"]))
        bmas = {k: bma_lib.init(num_chains, eval_x.shape[0], probe.shape[-1]) for k in named0}
    return buffers, bmas


def _init_trace(
    trace_fn: Callable | None, state: Any, num_epochs: int, trace_sets: tuple[str, ...]
) -> dict:
    """NaN-filled ``{metric: (num_epochs, num_chains, ...)}`` host arrays for ``trace_fn``."""
    if not trace_fn:
        return {}
    num_chains = jax.tree.leaves(state)[0].shape[0]
    named = _default_sample_fn(jax.eval_shape(lambda: state))
    trace = {}
    for name in trace_sets:
        prefix = "" if name == "theta" else f"{name}/"
        shapes = jax.eval_shape(trace_fn, _chain_shapes(named[name]))
        for k, s in shapes.items():
            trace[prefix + k] = np.full((num_epochs, num_chains, *s.shape), np.nan, np.float32)
    return trace


def _open_checkpointer(
    checkpoint_dir: str | os.PathLike, signature: dict, resume: bool, template: dict
) -> tuple[RunCheckpointer, dict | None]:
    """The run's checkpointer and, with ``resume``, the newest checkpoint restored."""
    checkpointer = RunCheckpointer(checkpoint_dir, signature)
    if resume:
        return checkpointer, checkpointer.restore(template)
    if checkpointer.latest_epoch() is not None:
        raise CheckpointError(
            f"{checkpoint_dir} already holds checkpoints; pass resume=True to continue "
            f"that run or use an empty directory"
        )
    return checkpointer, None


def _as_device_arrays(tree: Any) -> Any:
    """Leaves as ``jax.Array``s, so every epoch sees the same argument types."""
    return jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jnp.asarray(x), tree)


def _result(
    state: Any,
    buffers: dict | None,
    bmas: dict | None,
    trace: dict,
    collect_epochs: list[int],
    epochs_done: int,
    diverged: tuple[int, list[int]] | None = None,
    dropped: Sequence[tuple[int, list[int]]] = (),
    chain_ids: np.ndarray | None = None,
) -> RunResult:
    """The :class:`RunResult` after ``epochs_done`` epochs."""
    collected = [e for e in collect_epochs if e < epochs_done]
    samples = None
    if buffers is not None:
        samples = jax.tree.map(lambda b: b[: len(collected)], buffers)
    traces = {k: v[:epochs_done] for k, v in trace.items()}
    if chain_ids is None:
        chain_ids = np.arange(jax.tree.leaves(state)[0].shape[0])
    ids = tuple(int(c) for c in chain_ids)
    return RunResult(state, samples, bmas, traces, collected, diverged, tuple(dropped), ids)


def _take_chains(tree: Any, keep: np.ndarray, axis: int = 0) -> Any:
    """The chains ``keep`` of every leaf of ``tree`` (chain axis ``axis``); ``None`` stays."""
    return jax.tree.map(lambda x: jnp.take(x, keep, axis=axis), tree)


def run(
    algorithm: Any,
    initial_state: Any,
    data: jax.Array | Sequence[jax.Array],
    rng_key: PRNGKey,
    *,
    num_epochs: int,
    batch_size: int,
    step_size: float | Schedule,
    temperature: float | Schedule = 1.0,
    collect: Callable[[int], bool] | None = None,
    sample_fn: Callable[[Any], dict] | None = None,
    keep_samples: bool = True,
    predict_fn: Callable | None = None,
    eval_x: jax.Array | None = None,
    trace_fn: Callable[[ArrayTree], dict] | None = None,
    trace_sets: Sequence[str] = ("theta",),
    minibatches_per_step: int = 1,
    on_divergence: str = "raise",
    progress: bool | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    vectorize_chains: bool | int | str = "auto",
    mesh: jax.sharding.Mesh | None = None,
) -> RunResult:
    """Run ``algorithm`` for ``num_epochs`` epochs on vmapped chains.

    Parameters
    ----------
    algorithm
        Anything with ``step(rng_key, state, minibatch, step_size, temperature)``.
    initial_state
        The kernel state with a leading chain axis, e.g.
        ``jax.vmap(algorithm.init)(positions)``.
    data
        An array, or a tuple of arrays with the same leading size ``N`` (e.g.
        ``(x, y)``); minibatches have the same structure. Kept on device,
        minibatches are gathered inside the jitted epoch.
    rng_key
        The run's key; see the module docstring for how it is split.
    num_epochs, batch_size
        Epochs of ``N // batch_size`` steps each.
    step_size, temperature
        Numbers or schedules ``global_step -> value`` (optax-style).
    collect
        ``epoch -> bool``: collect a sample after that epoch (see :func:`every`,
        :func:`last_epochs_of_cycles`); default: after the last epoch only.
    sample_fn
        ``state -> {name: params}``; default ``theta`` (and ``guide`` for Entropy-MCMC).
    keep_samples
        Keep the collected samples in a buffer ``(num_samples, num_chains, ...)``.
        With ``False`` only the streaming BMA is kept.
    predict_fn, eval_x
        ``predict_fn(params, x) -> probs``; when both are given, each collected sample's
        predictive on ``eval_x`` is added to a streaming BMA accumulator.
    trace_fn
        ``params -> {metric: array}`` evaluated for every chain after every epoch
        (e.g. loss and accuracy on a fixed training subset, or the predictive of a few
        fixed inputs); scalars or arrays of any fixed shape.
    trace_sets
        The parameters ``trace_fn`` is evaluated on: ``"theta"`` (default), and
        ``"guide"`` for Entropy-MCMC states (its metrics keyed ``"guide/<metric>"``).
        The traces after a collected epoch describe exactly the samples collected.
    minibatches_per_step
        ``L > 1`` gives each step ``L`` minibatches stacked on a leading axis (for
        Entropy-SGD/SGLD, whose step runs ``L`` inner gradients); an epoch is then
        ``N // (batch_size * L)`` steps, still one pass over the data.
    on_divergence
        ``"raise"`` (default): raise :class:`DivergenceError` naming the epoch and
        chains, with the finished samples in ``.result``; ``"stop"``: return them;
        ``"drop"``: remove the diverged chains, with every sample they gave, warn
        (``RuntimeWarning``) and go on with the others, whose keys and samples are
        those they have in a run without the dropped chains' divergence; the result's
        ``dropped`` and ``chain_ids`` say which. When every chain diverges it raises.
        Not with a ``mesh`` or a ``checkpoint_dir``.
    progress
        Show a per-epoch progress bar (default: only on a TTY outside CI).
    checkpoint_dir, checkpoint_every
        Write an atomic checkpoint of the whole run (kernel states, sample buffer, BMA
        sums, traces, next epoch) every ``checkpoint_every`` epochs and after the last
        one (:mod:`flatjax.inference.checkpoint`). The directory must be empty unless
        ``resume`` is set.
    resume
        Continue from the newest checkpoint in ``checkpoint_dir``. The result is
        bit-identical to an uninterrupted run with the same arguments. A missing,
        corrupt or mismatched checkpoint raises
        :class:`~flatjax.inference.checkpoint.CheckpointError`.
    on_epoch_end
        ``callback(epoch, traces)`` on the host after every finished epoch (logging).
    vectorize_chains
        How the chains share the hardware; the samples are the same either way (up to
        float reassociation). ``True``: all chains ``jax.vmap``-ped, the right choice on
        accelerators. ``False``: one chain after another, each chain's epoch its own
        jitted program called from the host. An integer ``k``: groups of ``k`` vmapped
        chains, one group after another the same way. ``"auto"`` (default):
        :func:`chains_per_group` decides: everything vmapped on accelerators and with a
        ``mesh``; on CPU, groups of about :data:`CPU_GROUP_PARAMS` parameters, because
        there a vmapped step does the same arithmetic per chain (two cores leave no idle
        units for a wider batch to fill) and vmapping pays only for small models, whose
        steps are dominated by fixed per-step costs (``benchmarks/results/step_overhead.md``).
    mesh
        Run on a device mesh (:func:`flatjax.inference.sharding.make_mesh`): chains
        split over its ``"chains"`` axis, each minibatch over its ``"data"`` axis (the
        gradient's sum becomes an all-reduce), data replicated. ``num_chains`` and
        ``batch_size`` must be divisible by those axis sizes. The results equal the
        single-device run up to float reassociation; the returned arrays stay sharded.
        See :mod:`flatjax.inference.sharding`.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, blackjax
    >>> x = jax.random.normal(jax.random.key(0), (64,))
    >>> grad_fn = blackjax.sgmcmc.gradients.grad_estimator(
    ...     lambda p: -0.5 * p**2, lambda p, xi: -0.5 * (xi - p) ** 2, data_size=64)
    >>> sgld = blackjax.sgld(grad_fn)
    >>> result = run(sgld, jnp.zeros(4), x, jax.random.key(1), num_epochs=3,
    ...              batch_size=16, step_size=1e-3, collect=every(1), progress=False)
    >>> result.samples["theta"].shape  # (samples, chains)
    (3, 4)
    """
    if (
        isinstance(checkpoint_every, bool)
        or not isinstance(checkpoint_every, int)
        or (checkpoint_every < 1)
    ):
        raise ValueError(f"`checkpoint_every` must be a positive integer, got {checkpoint_every!r}")
    num_chains = jax.tree.leaves(initial_state)[0].shape[0]
    group = chains_per_group(vectorize_chains, initial_state, mesh=mesh)
    if mesh is not None and group is not None:
        raise ValueError(
            f"`vectorize_chains`={vectorize_chains!r} cannot be combined with a `mesh` "
            "(chains on a mesh are vmapped and split over its devices)"
        )
    if on_divergence not in ("raise", "stop", "drop"):
        raise ValueError(
            f"`on_divergence` must be 'raise', 'stop' or 'drop', got {on_divergence!r}"
        )
    if on_divergence == "drop" and (mesh is not None or checkpoint_dir is not None):
        raise ValueError(
            "`on_divergence`='drop' changes the number of chains during the run, which a "
            "`mesh` (chains split over devices) and a `checkpoint_dir` (a fixed state "
            "layout) do not support; use 'stop' or 'raise' there"
        )
    data, single_array = _as_data(data)
    n = data[0].shape[0]
    _positive_int("num_epochs", num_epochs)
    _positive_int("batch_size", batch_size)
    if batch_size > n:
        raise ValueError(f"`batch_size`={batch_size} exceeds the number of data rows {n}")
    _positive_int("minibatches_per_step", minibatches_per_step)
    rows_per_step = batch_size * minibatches_per_step
    if rows_per_step > n:
        raise ValueError(
            f"`batch_size` * `minibatches_per_step` = {rows_per_step} exceeds the "
            f"number of data rows {n}"
        )
    if resume and checkpoint_dir is None:
        raise ValueError("`resume=True` needs a `checkpoint_dir`")
    collect = collect if collect is not None else (lambda e: e == num_epochs - 1)
    sample_fn = sample_fn or _default_sample_fn
    trace_sets = tuple(trace_sets)
    available = _default_sample_fn(initial_state)
    unknown = [t for t in trace_sets if t not in available]
    if unknown or not trace_sets:
        raise ValueError(
            f"`trace_sets` must name some of {sorted(available)} (this state's sample "
            f"sets), got {trace_sets!r}"
        )
    place = sharding_lib.placement(mesh, num_chains, batch_size)
    data = place.put_replicated(data)
    collect_epochs = [e for e in range(num_epochs) if collect(e)]
    epoch_spec = _EpochSpec(
        step=algorithm.step,
        step_size_fn=_as_schedule("step_size", step_size),
        temperature_fn=_as_schedule("temperature", temperature),
        trace_fn=trace_fn,
        rows_per_step=rows_per_step,
        batch_shape=(batch_size,)
        if minibatches_per_step == 1
        else (minibatches_per_step, batch_size),
        single_array=single_array,
        chains_per_group=group,
        place=place,
        trace_sets=trace_sets,
    )

    def make_runner(count: int) -> Callable:
        if group is None:
            return _program(_run_epoch, epoch_spec)
        return _grouped_epoch_runner(epoch_spec, count)

    run_epoch = make_runner(num_chains)
    ids = np.arange(num_chains, dtype=np.int32)  # the chains still running
    started = np.zeros(num_chains, np.bool_)  # one row per chain started (for the keys)
    dropped: list[tuple[int, list[int]]] = []
    use_bma = predict_fn is not None and eval_x is not None
    if use_bma:
        eval_x = place.put_replicated(jnp.asarray(eval_x))
    collect_sample = _program(
        _collect_sample, _CollectSpec(sample_fn, predict_fn if use_bma else None, place)
    )

    state = initial_state
    buffers, bmas = _init_collection(
        state,
        sample_fn,
        predict_fn if use_bma else None,
        eval_x,
        len(collect_epochs),
        keep_samples,
    )
    trace = _init_trace(trace_fn, state, num_epochs, trace_sets)
    next_epoch = 0
    checkpointer = None
    if checkpoint_dir is not None:
        signature = {
            "num_chains": num_chains,
            "num_epochs": num_epochs,
            "batch_size": batch_size,
            "minibatches_per_step": minibatches_per_step,
            "data_shapes": [list(d.shape) for d in data],
            "rng_key": np.asarray(jax.random.key_data(rng_key)).tolist(),
            "state_structure": str(jax.tree.structure(state)),
            "collect_epochs": collect_epochs,
            "sample_names": sorted(jax.eval_shape(sample_fn, state)),
            "bma": use_bma,
        }
        template = {
            "state": state,
            "buffers": buffers,
            "bmas": bmas,
            "trace": trace,
            "next_epoch": np.asarray(0),
        }
        checkpointer, restored = _open_checkpointer(checkpoint_dir, signature, resume, template)
        if restored is not None:
            state, buffers, bmas = restored["state"], restored["buffers"], restored["bmas"]
            trace = {k: np.array(v) for k, v in restored["trace"].items()}
            next_epoch = int(restored["next_epoch"])
    state, buffers, bmas = _as_device_arrays((state, buffers, bmas))
    state, bmas = place.put_chains((state, bmas))
    buffers = place.put_chains(buffers, axis=1)

    bar = None
    if _progress_enabled(progress):
        bar = _progress_bar(num_epochs, next_epoch)
    try:
        for epoch in range(next_epoch, num_epochs):
            new_state, finite, traces = run_epoch(state, epoch, data, rng_key, ids, started)
            finite = np.asarray(finite)
            if not finite.all() and on_divergence == "drop" and finite.any():
                keep = np.flatnonzero(finite)
                bad = [int(c) for c in ids[~finite]]
                warnings.warn(
                    f"non-finite state (NaN/inf) in chain(s) {bad} during epoch {epoch}: "
                    f"dropped with their samples (on_divergence='drop'); "
                    f"{len(keep)} chain(s) go on",
                    RuntimeWarning,
                    stacklevel=2,
                )
                dropped.append((epoch, bad))
                ids = ids[keep]
                new_state, bmas = _take_chains((new_state, bmas), keep)
                buffers = _take_chains(buffers, keep, axis=1)
                traces = {k: np.asarray(v)[keep] for k, v in traces.items()}
                trace = {k: v[:, keep] for k, v in trace.items()}
                run_epoch = make_runner(len(ids))
                finite = finite[keep]
            if not finite.all():
                bad = [int(c) for c in ids[~finite]]
                done = _result(
                    state,
                    buffers,
                    bmas,
                    trace,
                    collect_epochs,
                    epoch,
                    (epoch, bad),
                    dropped,
                    ids,
                )
                if on_divergence != "stop":
                    raise DivergenceError(
                        f"non-finite state (NaN/inf) in chain(s) {bad} during epoch {epoch}; "
                        f"{len(done.collected_epochs)} sample(s) collected before it are kept. "
                        f"Lower the step size or check the model and data."
                        + _divergence_cause(
                            algorithm.step, step_size, (epoch + 1) * (n // rows_per_step)
                        )
                        + _restart_cause(step_size, epoch, n // rows_per_step),
                        done,
                    )
                return done
            state = new_state
            for k, v in traces.items():
                trace[k][epoch] = np.asarray(v)
            if epoch in collect_epochs:
                slot = collect_epochs.index(epoch)
                buffers, bmas = collect_sample(state, buffers, bmas, slot, eval_x)
            if checkpointer is not None and (
                (epoch + 1) % checkpoint_every == 0 or epoch + 1 == num_epochs
            ):
                payload = {
                    "state": state,
                    "buffers": buffers,
                    "bmas": bmas,
                    "trace": trace,
                    "next_epoch": np.asarray(epoch + 1),
                }
                checkpointer.save(epoch + 1, payload)
            if on_epoch_end is not None:
                on_epoch_end(epoch, {k: v[epoch] for k, v in trace.items()})
            if bar is not None:
                bar.update(1)
                scalars = {k: float(np.mean(v)) for k, v in traces.items() if np.ndim(v) == 1}
                if scalars:
                    bar.set_postfix(scalars)
    finally:
        if bar is not None:
            bar.close()
        if checkpointer is not None:
            checkpointer.close()
    return _result(state, buffers, bmas, trace, collect_epochs, num_epochs, None, dropped, ids)
