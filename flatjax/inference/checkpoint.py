"""Atomic checkpoints of a run with orbax, and their validation on resume.

A checkpoint holds everything a run needs to continue bit-identically: the kernel
state of every chain, the sample buffer, the streaming BMA sums, the per-epoch traces,
the collected epochs and the next epoch to run. The random stream needs no saving:
every epoch's keys are derived from the run's key and the epoch index (see
:mod:`flatjax.inference.loop`), so the run's key is stored only to check that a resumed
run uses the same one.

Orbax writes each checkpoint to a temporary folder and renames it when complete, so
a run killed at any moment leaves the previous checkpoint intact. On resume, a
checkpoint written by a different run (another number of chains, epochs, batch size,
data shape, key, or kernel-state structure) is refused with a :class:`CheckpointError`
that names the first field that differs; it never silently starts from scratch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax

__all__ = ["CheckpointError", "RunCheckpointer"]


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or belongs to a different run."""


def _manager(directory: Path, max_to_keep: int):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True
    )
    return ocp.CheckpointManager(directory, options=options)


class RunCheckpointer:
    """Save and restore the state of :func:`flatjax.inference.loop.run`.

    Parameters
    ----------
    directory
        Where checkpoints live (one sub-folder per saved epoch).
    signature
        JSON-serialisable description of the run; a checkpoint is only restored into a
        run with an equal signature.
    max_to_keep
        Number of most recent checkpoints kept on disk.

    Examples
    --------
    >>> import tempfile, jax.numpy as jnp
    >>> ckpt = RunCheckpointer(tempfile.mkdtemp(), {"num_chains": 2})
    >>> ckpt.save(3, {"x": jnp.arange(2.0)})
    >>> ckpt.latest_epoch()
    3
    >>> ckpt.restore({"x": jnp.zeros(2)})["x"]
    Array([0., 1.], dtype=float32)
    >>> ckpt.close()
    """

    def __init__(self, directory: str | os.PathLike, signature: dict, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        self.signature = signature
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"checkpoint path {self.directory} exists and is not a directory")
        self._manager = _manager(self.directory, max_to_keep)

    def latest_epoch(self) -> int | None:
        """The epoch of the newest complete checkpoint, or ``None``."""
        return self._manager.latest_step()

    def save(self, epoch: int, payload: Any) -> None:
        """Write ``payload`` (a pytree of arrays) for ``epoch``, atomically."""
        import orbax.checkpoint as ocp

        args = ocp.args.Composite(
            payload=ocp.args.StandardSave(payload),
            signature=ocp.args.JsonSave(self.signature),
        )
        self._manager.save(epoch, args=args, force=True)
        self._manager.wait_until_finished()

    def restore(self, template: Any, epoch: int | None = None) -> Any:
        """Restore the newest (or the given) checkpoint into ``template``'s structure.

        Raises
        ------
        CheckpointError
            If there is no checkpoint, if it was written by a different run (the
            message names the first differing field), or if it cannot be read.
        """
        import orbax.checkpoint as ocp

        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise CheckpointError(f"no checkpoint found in {self.directory}")
        where = f"checkpoint {self.directory / str(epoch)}"
        try:
            stored = self._manager.restore(
                epoch, args=ocp.args.Composite(signature=ocp.args.JsonRestore())
            )["signature"]
        except Exception as err:  # orbax raises many types for unreadable files
            raise CheckpointError(f"{where} is unreadable or corrupt: {err}") from None
        for key in sorted(set(stored) | set(self.signature)):
            if stored.get(key) != self.signature.get(key):
                raise CheckpointError(
                    f"{where} belongs to a different run: {key}={stored.get(key)!r} in the "
                    f"checkpoint, {self.signature.get(key)!r} in this run"
                )
        try:
            restored = self._manager.restore(
                epoch, args=ocp.args.Composite(payload=ocp.args.StandardRestore(template))
            )["payload"]
        except Exception as err:
            raise CheckpointError(f"{where} does not match this run's state: {err}") from None
        return jax.tree.map(lambda t, r: r, template, restored)

    def close(self) -> None:
        """Release orbax's resources."""
        self._manager.close()
