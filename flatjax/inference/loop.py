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
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.types import ArrayTree, PRNGKey

from flatjax.inference import bma as bma_lib
from flatjax.inference import sharding as sharding_lib
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
        ``{metric: array (num_epochs_run, num_chains)}`` from ``trace_fn``.
    collected_epochs
        The epochs after which samples were collected.
    diverged
        ``None``, or ``(epoch, chains)`` of the first non-finite state (policy "stop").
    """

    state: Any
    samples: dict | None
    bma: dict | None
    trace: dict
    collected_epochs: list[int]
    diverged: tuple[int, list[int]] | None = None


class DivergenceError(FloatingPointError):
    """A chain's state became NaN/inf; ``.result`` holds everything finished before."""

    def __init__(self, message: str, result: RunResult):
        super().__init__(message)
        self.result = result


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


def _as_schedule(name: str, value) -> Schedule:
    if callable(value):
        return value
    v = float(value)
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0 or a schedule, got {value!r}")
    return lambda step: jnp.asarray(v, jnp.float32)


def _progress_enabled(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return sys.stderr.isatty() and not os.environ.get("CI")


def _default_sample_fn(state) -> dict:
    if hasattr(state, "guide"):
        return {"theta": state.position, "guide": state.guide}
    return {"theta": getattr(state, "position", state)}


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
    minibatches_per_step: int = 1,
    on_divergence: str = "raise",
    progress: bool | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    vectorize_chains: bool = True,
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
        ``params -> {metric: scalar}`` evaluated for every chain after every epoch
        (e.g. loss and accuracy on a fixed training subset).
    minibatches_per_step
        ``L > 1`` gives each step ``L`` minibatches stacked on a leading axis (for
        Entropy-SGD/SGLD, whose step runs ``L`` inner gradients); an epoch is then
        ``N // (batch_size * L)`` steps, still one pass over the data.
    on_divergence
        ``"raise"`` (default): raise :class:`DivergenceError` naming the epoch and
        chains, with the finished samples in ``.result``; ``"stop"``: return them.
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
        ``True`` (default): chains are ``jax.vmap``-ped, the right choice on
        accelerators. ``False``: chains run one after another inside the same jitted
        epoch (``jax.lax.map``), which can be faster on CPU for larger models, where
        vmapping buys no parallelism and turns convolutions into slow grouped ones
        (see ``benchmarks/results/step_overhead.md``). Same samples either way.
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
    if mesh is not None and not vectorize_chains:
        raise ValueError("`vectorize_chains=False` cannot be combined with a `mesh`")
    if on_divergence not in ("raise", "stop"):
        raise ValueError(f"`on_divergence` must be 'raise' or 'stop', got {on_divergence!r}")
    single_array = not isinstance(data, tuple | list)
    data = (jnp.asarray(data),) if single_array else tuple(jnp.asarray(d) for d in data)
    if not data:
        raise ValueError("`data` must hold at least one array")
    n = data[0].shape[0]
    for i, d in enumerate(data):
        if d.shape[0] != n:
            raise ValueError(
                f"`data` arrays disagree on the number of rows: data[0] has {n}, "
                f"data[{i}] has {d.shape[0]}"
            )
    if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 1:
        raise ValueError(f"`num_epochs` must be a positive integer, got {num_epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}")
    if batch_size > n:
        raise ValueError(f"`batch_size`={batch_size} exceeds the number of data rows {n}")
    if (
        isinstance(minibatches_per_step, bool)
        or not isinstance(minibatches_per_step, int)
        or minibatches_per_step < 1
    ):
        raise ValueError(
            f"`minibatches_per_step` must be a positive integer, got {minibatches_per_step!r}"
        )
    rows_per_step = batch_size * minibatches_per_step
    if rows_per_step > n:
        raise ValueError(
            f"`batch_size` * `minibatches_per_step` = {rows_per_step} exceeds the "
            f"number of data rows {n}"
        )
    num_batches = n // rows_per_step
    batch_shape = (batch_size,) if minibatches_per_step == 1 else (minibatches_per_step, batch_size)
    step_size_fn = _as_schedule("step_size", step_size)
    temperature_fn = _as_schedule("temperature", temperature)
    collect = collect if collect is not None else (lambda e: e == num_epochs - 1)
    sample_fn = sample_fn or _default_sample_fn
    num_chains = jax.tree.leaves(initial_state)[0].shape[0]
    place = sharding_lib.placement(mesh, num_chains, batch_size)
    data = place.put_replicated(data)
    collect_epochs = [e for e in range(num_epochs) if collect(e)]

    def chain_epoch(state, chain_key, epoch, data):
        perm_key, steps_key = jax.random.split(chain_key)
        perm = jax.random.permutation(perm_key, n)
        step_keys = jax.random.split(steps_key, num_batches)

        def body(state, inputs):
            i, key = inputs
            idx = jax.lax.dynamic_slice_in_dim(perm, i * rows_per_step, rows_per_step)
            idx = idx.reshape(batch_shape)
            minibatch = data[0][idx] if single_array else tuple(d[idx] for d in data)
            minibatch = place.constrain_batch(minibatch, axis=len(batch_shape) - 1)
            step = epoch * num_batches + i
            state = algorithm.step(key, state, minibatch, step_size_fn(step), temperature_fn(step))
            return state, None

        state, _ = jax.lax.scan(body, state, (jnp.arange(num_batches), step_keys))
        return state

    def all_finite(state):
        leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(state)]
        return jnp.stack(leaves).all()

    @jax.jit
    def run_epoch(state, epoch, data):
        keys = jax.random.split(jax.random.fold_in(rng_key, epoch), num_chains)
        keys = place.constrain_chains(keys)
        if vectorize_chains:
            epoch_fn = jax.vmap(
                chain_epoch, in_axes=(0, 0, None, None), spmd_axis_name=place.chain_axis
            )
            state = epoch_fn(state, keys, epoch, data)
        else:
            state = jax.lax.map(lambda sk: chain_epoch(sk[0], sk[1], epoch, data), (state, keys))
        state = place.constrain_chains(state)
        finite = jax.vmap(all_finite)(state)
        traces = jax.vmap(trace_fn)(_default_sample_fn(state)["theta"]) if trace_fn else {}
        return state, *place.constrain_replicated((finite, traces))

    use_bma = predict_fn is not None and eval_x is not None
    if use_bma:
        eval_x = place.put_replicated(jnp.asarray(eval_x))

    @jax.jit
    def collect_sample(state, buffers, bmas, slot, eval_x):
        named = sample_fn(state)
        if buffers is not None:
            buffers = {
                k: jax.tree.map(lambda b, s: b.at[slot].set(s), buffers[k], named[k]) for k in named
            }
        if bmas is not None:
            bmas = {
                k: bma_lib.update(
                    bmas[k],
                    jax.vmap(
                        lambda p: bma_lib.batched_predict(predict_fn, p, eval_x),
                        spmd_axis_name=place.chain_axis,
                    )(named[k]),
                )
                for k in named
            }
        return buffers, bmas

    state = initial_state
    named0 = jax.eval_shape(sample_fn, state)
    buffers = None
    if keep_samples and collect_epochs:
        buffers = jax.tree.map(
            lambda s: jnp.zeros((len(collect_epochs), *s.shape), s.dtype), named0
        )
    bmas = None
    if use_bma:
        probe = jax.eval_shape(
            lambda p: predict_fn(p, eval_x[:1]),
            jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), named0["theta"]),
        )
        bmas = {k: bma_lib.init(num_chains, eval_x.shape[0], probe.shape[-1]) for k in named0}

    trace_shapes = (
        jax.eval_shape(
            trace_fn,
            jax.tree.map(
                lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype),
                _default_sample_fn(jax.eval_shape(lambda: state))["theta"],
            ),
        )
        if trace_fn
        else {}
    )
    trace = {k: np.full((num_epochs, num_chains), np.nan, np.float32) for k in trace_shapes}
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
            "sample_names": sorted(named0),
            "bma": use_bma,
        }
        checkpointer = RunCheckpointer(checkpoint_dir, signature)
        if resume:
            template = {
                "state": state,
                "buffers": buffers,
                "bmas": bmas,
                "trace": trace,
                "next_epoch": np.asarray(0),
            }
            restored = checkpointer.restore(template)
            state, buffers, bmas = restored["state"], restored["buffers"], restored["bmas"]
            trace = {k: np.array(v) for k, v in restored["trace"].items()}
            next_epoch = int(restored["next_epoch"])
        elif checkpointer.latest_epoch() is not None:
            raise CheckpointError(
                f"{checkpoint_dir} already holds checkpoints; pass resume=True to continue "
                f"that run or use an empty directory"
            )
    elif resume:
        raise ValueError("`resume=True` needs a `checkpoint_dir`")
    state, bmas = place.put_chains((state, bmas))
    buffers = place.put_chains(buffers, axis=1)

    diverged = None
    bar = None
    if _progress_enabled(progress):
        from tqdm.auto import tqdm

        bar = tqdm(total=num_epochs, initial=next_epoch, desc="epochs", unit="epoch")

    def result(epochs_done: int) -> RunResult:
        collected = [e for e in collect_epochs if e < epochs_done]
        samples = None
        if buffers is not None:
            samples = jax.tree.map(lambda b: b[: len(collected)], buffers)
        traces = {k: v[:epochs_done] for k, v in trace.items()}
        return RunResult(state, samples, bmas, traces, collected, diverged)

    try:
        for epoch in range(next_epoch, num_epochs):
            new_state, finite, traces = run_epoch(state, epoch, data)
            finite = np.asarray(finite)
            if not finite.all():
                bad = [int(c) for c in np.flatnonzero(~finite)]
                diverged = (epoch, bad)
                done = result(epoch)
                message = (
                    f"non-finite state (NaN/inf) in chain(s) {bad} during epoch {epoch}; "
                    f"{len(done.collected_epochs)} sample(s) collected before it are kept. "
                    f"Lower the step size or check the model and data."
                )
                if on_divergence == "raise":
                    raise DivergenceError(message, done)
                return done
            state = new_state
            for k, v in traces.items():
                trace[k][epoch] = np.asarray(v)
            if epoch in collect_epochs:
                buffers, bmas = collect_sample(
                    state, buffers, bmas, collect_epochs.index(epoch), eval_x
                )
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
                if traces:
                    bar.set_postfix({k: float(np.mean(v)) for k, v in traces.items()})
    finally:
        if bar is not None:
            bar.close()
        if checkpointer is not None:
            checkpointer.close()
    return result(num_epochs)
