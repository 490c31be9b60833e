"""Compiled programs shared by what they compute, not by which Python closure built them.

``jax.jit`` caches on the identity of the function it wraps. Code that builds fresh
closures for every run (a new ``grad_fn``, kernel and ``predict`` per experiment)
therefore traces *and* compiles again each time, although the XLA program is the same;
for a small MLP's epoch the compile is ~2.5 s against ~0.2 s of tracing and lowering.

:func:`shared_jit` wraps a function like ``jax.jit`` and adds one level: on a miss it
lowers the function, and looks the lowered program up by its text (a SHA-256 of the
StableHLO, which holds every constant the function closed over), the argument and
result tree structures and the arguments' shardings. Two closures that compute the same
program then share one executable; anything that changes the computation (a constant's
value, a shape, a name in the result pytree, a device) changes the key.

Programs with host callbacks (``jax.debug.callback``, ``jax.pure_callback``, ...) are
never shared across closures: XLA refers to the Python callable by an index only, so
two programs with identical text may call different functions. With JAX's
``jax_use_simplified_jaxpr_constants`` on, closed-over arrays leave the text and travel
with the executable; sharing is then off as well. Both fall back to ``jax.jit``'s own
per-function caching.

The cache is process-wide (like JAX's own caches), holds at most
:data:`MAX_PROGRAMS` executables (least recently used first out) and is emptied by
:func:`clear`.

Examples
--------
>>> import jax.numpy as jnp
>>> scale = jnp.float32(2.0)
>>> make = lambda: shared_jit(lambda x: x * scale)  # a new closure on every call
>>> make()(jnp.ones(3)).tolist(), make()(jnp.ones(3)).tolist()  # compiled once
([2.0, 2.0, 2.0], [2.0, 2.0, 2.0])
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax

__all__ = ["MAX_PROGRAMS", "shared_jit", "clear", "count_compiles"]

#: JAX's monitoring event for one XLA backend compilation.
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

#: Executables kept by the process-wide cache.
MAX_PROGRAMS = 32

_programs: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
_lock = threading.Lock()


def clear() -> None:
    """Drop every shared executable (``jax.clear_caches`` does not reach them)."""
    with _lock:
        _programs.clear()


def _leaf_signature(x: Any) -> tuple:
    """What a compiled program depends on in one argument leaf: type and placement."""
    return jax.typeof(x), x.sharding if isinstance(x, jax.Array) else None


def _sharing_safe(text: str) -> bool:
    """Whether identical lowered text implies an identical computation (see module doc)."""
    if getattr(jax.config, "jax_use_simplified_jaxpr_constants", True):
        return False
    return "callback" not in text


def _compile(lowered: Any, signature: tuple) -> Any:
    """``lowered.compile()``, or the executable of an earlier lowering with the same text."""
    text = lowered.as_text()
    if not _sharing_safe(text):
        return lowered.compile()
    key = (hashlib.sha256(text.encode()).hexdigest(), signature, lowered.out_tree)
    with _lock:
        compiled = _programs.get(key)
        if compiled is not None:
            _programs.move_to_end(key)
            return compiled
    compiled = lowered.compile()
    with _lock:
        _programs[key] = compiled
        while len(_programs) > MAX_PROGRAMS:
            _programs.popitem(last=False)
    return compiled


def shared_jit(fn: Callable) -> Callable:
    """``jax.jit(fn)`` whose executables are shared with every equal program.

    Parameters
    ----------
    fn
        A function of positional array-pytree arguments (no static arguments, no
        keyword arguments); it is traced like under ``jax.jit``.

    Returns
    -------
    Callable
        ``f(*args)``, equal to ``jax.jit(fn)(*args)``. Its own cache, keyed on the
        arguments' tree structure, types (shape, dtype, weak type) and shardings and on
        the ``jax_enable_x64`` and ``jax_default_matmul_precision`` settings, skips
        tracing for repeated calls; a miss traces and lowers ``fn`` and compiles only if
        no equal program was compiled before (see the module docstring).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> f = shared_jit(lambda x, y: {"sum": x + y})
    >>> f(jnp.ones(2), jnp.ones(2))["sum"].tolist()
    [2.0, 2.0]
    """
    jitted = jax.jit(fn)
    executables: dict[tuple, Any] = {}

    def call(*args: Any) -> Any:
        leaves, treedef = jax.tree.flatten(args)
        signature = (
            treedef,
            tuple(_leaf_signature(x) for x in leaves),
            jax.config.jax_enable_x64,
            jax.config.jax_default_matmul_precision,
        )
        compiled = executables.get(signature)
        if compiled is None:
            compiled = executables[signature] = _compile(jitted.lower(*args), signature)
        return compiled(*args)

    call.__wrapped__ = fn
    return call


@contextlib.contextmanager
def count_compiles() -> Iterator[list[float]]:
    """Collect the seconds of every XLA compilation made inside the ``with`` block.

    Yields a list that receives one duration per backend compilation (JAX's monitoring
    event :data:`COMPILE_EVENT`), from any thread, until the block exits.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> x = jnp.ones(7)
    >>> with count_compiles() as compiles:
    ...     _ = jax.jit(lambda x: x * 3.0 + 1.0)(x)
    >>> len(compiles)
    1
    """
    durations: list[float] = []

    def listener(event: str, duration: float, **_: Any) -> None:
        if event == COMPILE_EVENT:
            durations.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield durations
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
