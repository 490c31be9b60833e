"""Chains and minibatches on a device mesh: the same numbers as one device, really sharded.

The pytest process has already imported jax with one CPU device, and the number of
host devices is fixed when jax starts. So the multi-device checks run *this file* as a
script in one subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
(``python test_sharding.py REPORT``), which writes a JSON report that the tests read.
The two-host check starts two processes (:data:`_HOST_BOOT`) that join with
``jax.distributed`` on loopback, 2 CPU devices each, and run :func:`_host_worker`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import flatjax
from flatjax.inference import loop, sharding
from flatjax.nn import glue

N, D, H, C = 64, 4, 8, 3
RTOL, ATOL = 1e-5, 1e-6


# ---------------------------------------------------------------- the worker side


def _problem():
    # numpy draws: eager jax.random calls would each compile a threefry program
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(D, C)) + rng.gumbel(size=(N, C)), axis=1).astype(np.int32)
    w1, w2 = (0.3 * rng.normal(size=s).astype(np.float32) for s in ((16, D, H), (16, H, C)))
    apply_fn = lambda p, xb: jnp.tanh(xb @ p["w1"]) @ p["w2"]
    loglik = glue.categorical_loglikelihood(apply_fn)
    grad_fn = glue.grad_estimator(glue.gaussian_logprior(1.0), loglik, N)
    predict = lambda p, xb: jax.nn.softmax(apply_fn(p, xb))

    def positions(num_chains):
        return {"w1": w1[:num_chains], "w2": w2[:num_chains]}

    return x, y, grad_fn, predict, positions


class _Spy:
    """Wraps a kernel; records the sharding of the minibatch its step receives."""

    def __init__(self, algorithm):
        self.algorithm, self.init, self.seen = algorithm, algorithm.init, []

    def step(self, rng_key, state, minibatch, step_size, temperature):
        jax.debug.inspect_array_sharding(minibatch[0], callback=self.seen.append)
        return self.algorithm.step(rng_key, state, minibatch, step_size, temperature)


def _run(algorithm, num_chains, mesh, data, positions, predict, bma, num_epochs=2):
    state = jax.vmap(algorithm.init)(positions(num_chains))
    return loop.run(
        algorithm,
        state,
        data,
        jax.random.key(7),
        num_epochs=num_epochs,
        batch_size=16,
        step_size=1e-3,
        temperature=1.0,
        collect=loop.every(1),
        predict_fn=predict if bma else None,
        eval_x=data[0][:8] if bma else None,
        trace_fn=(lambda p: {"norm": jnp.sum(p["w1"] ** 2)}) if bma else None,
        progress=False,
        mesh=mesh,
    )


def _gather(tree):
    from jax.experimental import multihost_utils

    return jax.tree.map(
        lambda a: (
            multihost_utils.process_allgather(a, tiled=True)
            if isinstance(a, jax.Array) and not a.is_fully_addressable
            else np.asarray(a)
        ),
        tree,
    )


def _compare(result, reference) -> str | None:
    """``None`` if states, samples, BMA sums and traces agree, else the mismatch."""
    got = _gather((result.state, result.samples, result.bma, result.trace))
    want = _gather((reference.state, reference.samples, reference.bma, reference.trace))
    try:
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, RTOL, ATOL), got, want)
    except AssertionError as error:
        return str(error)
    return None


def _layout(array: jax.Array) -> dict:
    return {
        "spec": str(array.sharding.spec),
        "num_devices": len(array.sharding.device_set),
        "shard_shapes": sorted({tuple(s.data.shape) for s in array.addressable_shards}),
        "num_addressable_shards": len(array.addressable_shards),
    }


def _cases(algorithm, num_chains, meshes, bma, **problem) -> dict:
    """Run once without a mesh and once on each mesh shape; compare and describe."""
    reference = _run(algorithm, num_chains, None, bma=bma, **problem)
    reports = {}
    for mesh_shape in meshes:
        seen = getattr(algorithm, "seen", [])
        seen.clear()
        result = _run(algorithm, num_chains, sharding.make_mesh(*mesh_shape), bma=bma, **problem)
        report = {
            "mismatch": _compare(result, reference),
            "state": _layout(jax.tree.leaves(result.state)[0]),
            "samples": _layout(jax.tree.leaves(result.samples)[0]),
            "reference_devices": len(jax.tree.leaves(reference.state)[0].sharding.device_set),
        }
        if bma:
            report["bma"] = _layout(result.bma["theta"].sum_probs)
        if seen:  # the minibatch (chains, batch, features) as one step saw it
            report["minibatch"] = sorted(
                {(str(s.spec), s.shard_shape((num_chains, 16, D))) for s in seen}
            )
        reports["x".join(map(str, mesh_shape))] = report
    return reports


def _devices_worker(report_path: str) -> None:
    x, y, grad_fn, predict, positions = _problem()
    problem = dict(data=(x, y), positions=positions, predict=predict)
    report: dict = {"device_count": jax.device_count()}
    emcmc = _Spy(flatjax.emcmc(grad_fn, eta=0.05))
    # 8 chains: one per device (8 x 1), and 4 per row of a 2 x 4 mesh (data parallel)
    report["emcmc_8_chains"] = _cases(emcmc, 8, [(8, 1), (2, 4)], bma=True, **problem)
    report["sgld_16_chains"] = _cases(blackjax.sgld(grad_fn), 16, [(8, 1)], bma=False, **problem)

    # the partitioner turns the minibatch sum of the gradient into an all-reduce
    place = sharding.placement(sharding.make_mesh(2, 4), num_chains=2, batch_size=16)

    def grads(position, minibatch):
        return grad_fn(position, place.constrain_batch(minibatch))

    batched = jax.vmap(grads, spmd_axis_name=place.chain_axis)
    minibatch = (jnp.broadcast_to(x[:16], (2, 16, D)), jnp.broadcast_to(y[:16], (2, 16)))
    hlo = jax.jit(batched).lower(positions(2), minibatch).compile().as_text()
    report["all_reduce_in_hlo"] = "all-reduce" in hlo

    errors = {}
    for name, call in {
        "chains": lambda: sharding.placement(sharding.make_mesh(8, 1), 12, 16),
        "batch": lambda: sharding.placement(sharding.make_mesh(2, 4), 2, 10),
        "too_many": lambda: sharding.make_mesh(4, 4),
        "run_chains": lambda: _run(emcmc, 4, sharding.make_mesh(8, 1), bma=False, **problem),
    }.items():
        try:
            call()
            errors[name] = None
        except ValueError as error:
            errors[name] = str(error)
    report["errors"] = errors
    Path(report_path).write_text(json.dumps(report))


#: Starts one of the two "hosts". ``jax.distributed.initialize`` must run before the
#: XLA backend starts, and ``import blackjax`` (hence this module) already starts it.
_HOST_BOOT = """
import runpy, sys
import jax
test_file, process_id, port, report_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(
    coordinator_address=f"localhost:{port}",
    num_processes=2,
    process_id=process_id,
    initialization_timeout=60,
)
runpy.run_path(test_file)["_host_worker"](process_id, report_path)
jax.distributed.shutdown()
"""


def _host_worker(process_id: int, report_path: str) -> None:
    """One of two processes: a run on the global 2 x 2 mesh equals the local run."""
    x, y, grad_fn, predict, positions = _problem()
    mesh = sharding.make_mesh(num_chain_devices=2, num_data_devices=2)  # 4 devices, 2 hosts
    # per-host loading: each process builds only the rows of its own shards (here cut
    # from the full array; in practice read from its own file); the loop replicates them
    rows = NamedSharding(mesh, P((sharding.CHAINS, sharding.DATA)))
    data = tuple(jax.make_array_from_callback(a.shape, rows, lambda i, a=a: a[i]) for a in (x, y))
    emcmc = flatjax.emcmc(grad_fn, eta=0.05)
    reference = _run(emcmc, 4, None, (x, y), positions, predict, bma=True)
    result = _run(emcmc, 4, mesh, data, positions, predict, bma=True)
    report = {
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "data_fully_addressable": data[0].is_fully_addressable,
        "mesh_processes": [[d.process_index for d in row] for row in mesh.devices],
        "mismatch": _compare(result, reference),
        "state": _layout(jax.tree.leaves(result.state)[0]),
    }
    if process_id == 0:
        Path(report_path).write_text(json.dumps(report))


# ---------------------------------------------------------------- the pytest side


def _env(num_devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={num_devices}"
    )
    env["JAX_PLATFORMS"] = "cpu"
    return env


@pytest.fixture(scope="module")
def devices_report(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("sharding") / "report.json"
    subprocess.run([sys.executable, __file__, str(path)], env=_env(8), check=True, timeout=300)
    return json.loads(path.read_text())


def test_eight_chains_on_eight_devices_equal_one_device(devices_report):
    case = devices_report["emcmc_8_chains"]["8x1"]
    assert devices_report["device_count"] == 8
    assert case["mismatch"] is None, case["mismatch"]
    assert case["reference_devices"] == 1
    # one chain per device for the state, the sample buffer and the BMA sums
    assert case["state"] == {
        "spec": "P('chains',)",
        "num_devices": 8,
        "shard_shapes": [[1, D, H]],
        "num_addressable_shards": 8,
    }
    assert case["samples"]["spec"] == "P(None, 'chains')"
    assert case["samples"]["shard_shapes"] == [[2, 1, D, H]]
    assert case["bma"]["spec"] == "P('chains',)" and case["bma"]["shard_shapes"] == [[1, 8, C]]
    assert case["minibatch"] == [["P('chains',)", [1, 16, D]]]  # size-1 data axis


def test_blackjax_sgld_sixteen_chains_on_eight_devices(devices_report):
    case = devices_report["sgld_16_chains"]["8x1"]
    assert case["mismatch"] is None, case["mismatch"]
    assert case["state"]["spec"] == "P('chains',)"
    assert case["state"]["shard_shapes"] == [[2, D, H]]  # two chains per device
    assert case["state"]["num_devices"] == 8


def test_data_parallel_two_chain_rows_by_four_data_devices(devices_report):
    case = devices_report["emcmc_8_chains"]["2x4"]
    assert case["mismatch"] is None, case["mismatch"]
    # parameters: 4 chains per row of the mesh, replicated over its 4 data devices
    assert case["state"]["spec"] == "P('chains',)"
    assert case["state"]["shard_shapes"] == [[4, D, H]]
    assert case["state"]["num_devices"] == 8
    assert case["bma"]["shard_shapes"] == [[4, 8, C]]
    # each step's minibatch of 16 rows is split in 4 inside the jitted epoch ...
    assert case["minibatch"] == [["P('chains', 'data')", [4, 4, D]]]
    # ... and the partitioner sums the gradient over the data devices with an all-reduce
    assert devices_report["all_reduce_in_hlo"]


def test_mesh_validation_errors(devices_report):
    errors = devices_report["errors"]
    assert "`num_chains`=12 is not divisible by the size 8" in errors["chains"]
    assert "`batch_size`=10 is not divisible by the size 4" in errors["batch"]
    assert "16 devices but only 8 are available" in errors["too_many"]
    assert "xla_force_host_platform_device_count" in errors["too_many"]
    assert "`num_chains`=4 is not divisible" in errors["run_chains"]


def test_validation_on_one_device():
    with pytest.raises(ValueError, match="needs 1 \\(chains\\) x 2 \\(data\\) = 2 devices"):
        sharding.make_mesh(1, 2, devices=jax.devices()[:1])
    with pytest.raises(ValueError, match="`num_data_devices` must be a positive integer"):
        sharding.make_mesh(num_data_devices=0)
    with pytest.raises(ValueError, match="axes must be named"):
        sharding.placement(Mesh(np.array(jax.devices()[:1]), ("x",)), 4, 8)
    with pytest.raises(TypeError, match="must be a jax.sharding.Mesh"):
        sharding.placement("chains", 4, 8)
    with pytest.raises(ValueError, match="no chain dimension 1"):
        sharding.shard_chains(jnp.zeros(3), sharding.make_mesh(1), axis=1)


def test_placement_without_mesh_is_the_identity():
    place = sharding.placement(None, num_chains=3, batch_size=5)
    tree = {"a": jnp.ones(3)}
    assert place.chain_axis is None
    for method in (place.put_chains, place.put_replicated, place.constrain_chains):
        assert method(tree) is tree
    assert place.constrain_batch(tree, axis=1) is tree


def test_explicit_mesh_axes_are_used_as_auto():
    explicit = jax.make_mesh((1,), (sharding.CHAINS,), devices=jax.devices()[:1])
    x = sharding.shard_chains(jnp.zeros((2, 3)), explicit)
    assert x.sharding.mesh.axis_types == (jax.sharding.AxisType.Auto,)
    assert x.sharding.spec == P(sharding.CHAINS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_hosts_on_loopback(tmp_path):
    """Two ``jax.distributed`` processes (2 CPU devices each) = one 4-device global mesh."""
    report_path, port = tmp_path / "hosts.json", _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _HOST_BOOT, __file__, str(i), str(port), str(report_path)],
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=240)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert all(p.returncode == 0 for p in procs), "\n---\n".join(outputs)[-4000:]
    report = json.loads(report_path.read_text())
    assert report["process_count"] == 2
    assert report["device_count"] == 4 and report["local_device_count"] == 2
    assert not report["data_fully_addressable"]  # each host built only its own rows
    # each row of the mesh (one group of chains, its data axis) lies on one host
    assert report["mesh_processes"] == [[0, 0], [1, 1]]
    assert report["mismatch"] is None, report["mismatch"]
    assert report["state"]["spec"] == "P('chains',)"
    assert report["state"]["num_devices"] == 4
    assert report["state"]["num_addressable_shards"] == 2


if __name__ == "__main__":
    _devices_worker(sys.argv[1])
