"""Chains and minibatches over a device mesh, with JAX's own SPMD machinery.

A run is placed on a :class:`jax.sharding.Mesh` with up to two named axes:

``"chains"`` (:data:`CHAINS`)
    The leading chain axis of the kernel state, the sample buffer and the BMA sums is
    split over it: chain ``c`` lives on one row of devices. Chains never talk to each
    other, so this axis needs no communication at all.
``"data"`` (:data:`DATA`)
    Data parallelism *within* a chain: every step's minibatch is split over it, the
    parameters are replicated over it, and XLA's GSPMD partitioner turns the sum over
    the minibatch in the gradient into local sums plus one all-reduce.

The data set is replicated on every device (each chain draws its own permutation of
all rows). Nothing here is a process pool: the jitted epoch of
:func:`flatjax.inference.loop.run` is one SPMD program; on several hosts
(``jax.distributed.initialize``) the same program runs on every process over the
global mesh (see ``docs/multi_device.md``).

The results do not depend on the mesh: the random stream is derived per chain from the
run's key (partitionable threefry, JAX's default), so a run on 8 devices draws the same
numbers as on one and reproduces it up to float rounding (XLA vectorises other array
shapes differently; the ``"data"`` axis also reassociates the gradient's sum). The
tests check ``rtol=1e-5``.

Examples
--------
>>> import jax, jax.numpy as jnp
>>> mesh = make_mesh(num_chain_devices=1)  # default: every device on "chains"
>>> dict(mesh.shape)
{'chains': 1, 'data': 1}
>>> state = shard_chains({"w": jnp.zeros((4, 3))}, mesh)
>>> state["w"].sharding.spec
P('chains',)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from blackjax.types import ArrayLikeTree, ArrayTree
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "CHAINS",
    "DATA",
    "Placement",
    "make_mesh",
    "chain_sharding",
    "shard_chains",
    "replicate",
    "placement",
]

#: Mesh axis over which chains are split.
CHAINS = "chains"
#: Mesh axis over which each step's minibatch is split (data parallelism in a chain).
DATA = "data"

_CPU_HINT = (
    "on CPU, create more host devices by setting "
    "XLA_FLAGS=--xla_force_host_platform_device_count=N before jax is imported"
)


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
    return int(value)


def make_mesh(
    num_chain_devices: int | None = None,
    num_data_devices: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A ``(chains, data)`` mesh for :func:`flatjax.inference.loop.run`.

    Parameters
    ----------
    num_chain_devices
        Size of the ``"chains"`` axis; default: every device not used by the data axis
        (``len(devices) // num_data_devices``).
    num_data_devices
        Size of the ``"data"`` axis (devices that share one chain's minibatch).
    devices
        The devices to use; default ``jax.devices()``, i.e. every device of every
        process in a multi-host run.

    Returns
    -------
    Mesh
        Axis names ``("chains", "data")``, both of :class:`jax.sharding.AxisType`
        ``Auto`` so that XLA's partitioner propagates the shardings. The device order
        comes from :func:`jax.make_mesh` (topology-aware on TPU; the devices of one
        process are contiguous, so a ``"data"`` axis whose size divides a host's
        device count stays inside that host).

    Raises
    ------
    ValueError
        If a size is not a positive integer, or more devices are requested than exist.

    Examples
    --------
    >>> mesh = make_mesh(num_chain_devices=1)
    >>> mesh.axis_names, dict(mesh.shape)
    (('chains', 'data'), {'chains': 1, 'data': 1})
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("`devices` is empty")
    num_data_devices = _check_count("num_data_devices", num_data_devices)
    if num_chain_devices is None:
        num_chain_devices = max(len(devices) // num_data_devices, 1)
    num_chain_devices = _check_count("num_chain_devices", num_chain_devices)
    wanted = num_chain_devices * num_data_devices
    if wanted > len(devices):
        raise ValueError(
            f"the mesh needs {num_chain_devices} (chains) x {num_data_devices} (data) = "
            f"{wanted} devices but only {len(devices)} are available "
            f"({devices[0].platform}); {_CPU_HINT}"
        )
    return jax.make_mesh(
        (num_chain_devices, num_data_devices),
        (CHAINS, DATA),
        axis_types=(AxisType.Auto, AxisType.Auto),
        devices=devices[:wanted],
    )


def _as_auto(mesh: Mesh) -> Mesh:
    """``mesh`` checked for axis names, with every axis ``Auto`` (GSPMD propagation)."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    unknown = [a for a in mesh.axis_names if a not in (CHAINS, DATA)]
    if unknown:
        raise ValueError(
            f"`mesh` axes must be named {CHAINS!r} and/or {DATA!r}, got {mesh.axis_names}"
        )
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * mesh.devices.ndim)


def _axis(mesh: Mesh, name: str) -> str | None:
    return name if name in mesh.axis_names else None


def chain_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """The sharding of an array whose dimension ``axis`` is the chain axis.

    It is split over the mesh's ``"chains"`` axis and replicated over ``"data"``
    (fully replicated if the mesh has no ``"chains"`` axis).

    Examples
    --------
    >>> chain_sharding(make_mesh(1), axis=1).spec
    P(None, 'chains')
    """
    mesh = _as_auto(mesh)
    chains = _axis(mesh, CHAINS)
    return NamedSharding(mesh, P(*([None] * axis), chains) if chains else P())


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
    """``device_put`` that also works when ``sharding`` spans several processes."""
    if sharding.is_fully_addressable or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return jax.device_put(x, sharding)
    # multi-host: every process holds the same host value and fills its own shards
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def shard_chains(tree: ArrayLikeTree, mesh: Mesh, axis: int = 0) -> ArrayTree:
    """Place ``tree`` with dimension ``axis`` of every leaf split over ``"chains"``.

    Works outside ``jit`` (it moves data). On several hosts every process must pass
    the same values: each keeps only its own shards.

    Raises
    ------
    ValueError
        If a leaf's chain dimension is not divisible by the ``"chains"`` axis size.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> mesh = make_mesh(num_chain_devices=1)
    >>> x = shard_chains(jnp.zeros((3, 8)), mesh, axis=1)
    >>> x.sharding.spec, [s.data.shape for s in x.addressable_shards]
    (P(None, 'chains'), [(3, 8)])
    """
    sharding = chain_sharding(mesh, axis)
    size = dict(sharding.mesh.shape).get(CHAINS, 1)

    def put(x):
        if np.ndim(x) <= axis or np.shape(x)[axis] % size:
            raise ValueError(
                f"a leaf of shape {np.shape(x)} has no chain dimension {axis} divisible "
                f"by the mesh's {CHAINS!r} axis size {size}"
            )
        return _put(x, sharding)

    return jax.tree.map(put, tree)


def replicate(tree: ArrayLikeTree, mesh: Mesh) -> ArrayTree:
    """Place a full copy of every leaf of ``tree`` on every device of ``mesh``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> replicate(jnp.arange(3.0), make_mesh(1)).sharding.is_fully_replicated
    True
    """
    sharding = NamedSharding(_as_auto(mesh), P())
    return jax.tree.map(lambda x: _put(x, sharding), tree)


class Placement(NamedTuple):
    """Where :func:`flatjax.inference.loop.run` puts its arrays; build with :func:`placement`.

    With ``mesh=None`` every method is the identity and ``chain_axis`` is ``None``, so
    the loop has a single code path.
    """

    mesh: Mesh | None = None

    @property
    def chain_axis(self) -> str | None:
        """The mesh axis of the chains: pass it as ``jax.vmap(..., spmd_axis_name=)``."""
        return None if self.mesh is None else _axis(self.mesh, CHAINS)

    def put_chains(self, tree: ArrayLikeTree, axis: int = 0) -> ArrayTree:
        """:func:`shard_chains` (outside ``jit``)."""
        return tree if self.mesh is None else shard_chains(tree, self.mesh, axis)

    def put_replicated(self, tree: ArrayLikeTree) -> ArrayTree:
        """:func:`replicate` (outside ``jit``)."""
        return tree if self.mesh is None else replicate(tree, self.mesh)

    def constrain_chains(self, tree: ArrayTree, axis: int = 0) -> ArrayTree:
        """Inside ``jit``: keep the chain dimension ``axis`` split over ``"chains"``."""
        if self.mesh is None:
            return tree
        return jax.lax.with_sharding_constraint(tree, chain_sharding(self.mesh, axis))

    def constrain_replicated(self, tree: ArrayTree) -> ArrayTree:
        """Inside ``jit``: make small results (flags, traces) whole on every process."""
        if self.mesh is None:
            return tree
        return jax.lax.with_sharding_constraint(tree, NamedSharding(self.mesh, P()))

    def constrain_batch(self, tree: ArrayTree, axis: int = 0) -> ArrayTree:
        """Inside one chain's step: split the minibatch dimension ``axis`` over ``"data"``.

        Called under ``jax.vmap(..., spmd_axis_name=self.chain_axis)``, the chain
        dimension is added in front and split over ``"chains"``.
        """
        if self.mesh is None or _axis(self.mesh, DATA) is None:
            return tree
        spec = P(*([None] * axis), DATA)
        return jax.lax.with_sharding_constraint(tree, NamedSharding(self.mesh, spec))


def placement(mesh: Mesh | None, num_chains: int, batch_size: int) -> Placement:
    """Validate ``mesh`` for a run of ``num_chains`` chains and minibatches of ``batch_size``.

    Parameters
    ----------
    mesh
        ``None`` (no placement: arrays stay where JAX puts them), or a mesh whose axes
        are named ``"chains"`` and/or ``"data"`` (see :func:`make_mesh`). Axes of type
        ``Explicit`` are treated as ``Auto``.
    num_chains
        Must be divisible by the ``"chains"`` axis size.
    batch_size
        Must be divisible by the ``"data"`` axis size.

    Raises
    ------
    ValueError
        Naming the axis and the size that do not divide.

    Examples
    --------
    >>> placement(make_mesh(1), num_chains=4, batch_size=32).chain_axis
    'chains'
    >>> placement(None, num_chains=4, batch_size=32).put_chains(1.0)
    1.0
    """
    if mesh is None:
        return Placement()
    mesh = _as_auto(mesh)
    shape = dict(mesh.shape)
    for what, value, name in (("num_chains", num_chains, CHAINS), ("batch_size", batch_size, DATA)):
        size = shape.get(name, 1)
        if value % size:
            raise ValueError(
                f"`{what}`={value} is not divisible by the size {size} of the mesh's "
                f"{name!r} axis ({dict(shape)})"
            )
    return Placement(mesh)
