"""How many chains to vmap together: all of them on accelerators, few of a large model on CPU.

A vmapped step does the arithmetic of every chain at once. On an accelerator that
fills otherwise idle units, so all chains are vmapped. On a CPU with a few cores one
chain's matrix products already occupy them, so vmapping a large model buys nothing
and costs memory traffic (the stacked weights of all chains pass through the caches
at every layer); it still pays for a small model, whose step is dominated by fixed
costs (loop iterations, kernel launches, one random-number loop per leaf) that a
vmapped step pays once for all chains. :func:`chains_per_group` therefore groups
chains on CPU so that a group holds about :data:`CPU_GROUP_PARAMS` parameters, and
the run loop runs the groups one after another (each group its own jitted program,
called from the host).
The constant comes from ``benchmarks/step_overhead.py`` (section "Chains").

Examples
--------
>>> import jax.numpy as jnp
>>> small = {"w": jnp.zeros((32, 650))}  # 32 chains of a 650-parameter model
>>> chains_per_group(True, small), chains_per_group(False, small), chains_per_group(4, small)
(None, 1, 4)
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

__all__ = ["CPU_GROUP_PARAMS", "chains_per_group"]

#: Parameters per vmapped group on CPU under ``vectorize_chains="auto"``: 32 chains of a
#: 25k-parameter MLP's Entropy-MCMC state (1.6M numbers) ran 1.34x faster vmapped than one
#: after another, one chain of the 670k-parameter MLP (1.3M) 0.84-0.91x
#: (``benchmarks/results/step_overhead.md``).
CPU_GROUP_PARAMS = 2**21


def chains_per_group(
    vectorize_chains: bool | int | str,
    state: Any,
    *,
    mesh: jax.sharding.Mesh | None = None,
    backend: str | None = None,
) -> int | None:
    """The group size for ``vectorize_chains``; ``None`` means all chains in one vmap.

    Parameters
    ----------
    vectorize_chains
        ``True`` (all chains vmapped), ``False`` (one after another, groups of 1), a
        positive integer (groups of that many), or ``"auto"``.
    state
        The kernel state with a leading chain axis; ``"auto"`` counts its parameters.
    mesh
        With a device mesh ``"auto"`` vmaps all chains (the mesh splits them).
    backend
        The platform ``"auto"`` decides for (default: ``jax.default_backend()``).

    Returns
    -------
    ``None`` for one vmap over all chains, otherwise the number of chains per group.
    """
    if isinstance(vectorize_chains, bool):
        return None if vectorize_chains else 1
    if isinstance(vectorize_chains, int | np.integer):
        if vectorize_chains < 1:
            raise ValueError(
                f"`vectorize_chains` as a group size must be >= 1, got {vectorize_chains}"
            )
        return int(vectorize_chains)
    if vectorize_chains != "auto":
        raise ValueError(
            "`vectorize_chains` must be True, False, a positive integer or 'auto', "
            f"got {vectorize_chains!r}"
        )
    if mesh is not None or (backend or jax.default_backend()) != "cpu":
        return None
    leaves = jax.tree.leaves(state)
    num_chains = leaves[0].shape[0] if leaves and np.ndim(leaves[0]) else 1
    params_per_chain = max(1, sum(int(np.size(x)) for x in leaves) // max(num_chains, 1))
    if num_chains == 1:  # a vmap over one chain ran at 0.84-0.94x of the unbatched step
        return 1
    group = max(1, CPU_GROUP_PARAMS // params_per_chain)
    return None if group >= num_chains else group
