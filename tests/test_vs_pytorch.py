"""The PyTorch comparison (benchmarks/vs_pytorch.py) runs the same algorithm as flatjax.

Skipped unless PyTorch is installed (it is not a flatjax dependency; the benchmark
prints the command that installs its CPU wheel).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import vs_pytorch  # noqa: E402
from flatjax._util import normal_like  # noqa: E402
from flatjax.sgmcmc.emcmc import EMCMCState  # noqa: E402

SETTINGS = vs_pytorch.Settings(num_train=512, num_test=64, rounds=1, compile=False, lr=0.1)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, (SETTINGS.num_train, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, SETTINGS.num_train).astype(np.int32)
    return x, y


def test_torch_mlp_computes_the_flax_mlp(data):
    x, _ = data
    setup = vs_pytorch.flax_setup("emcmc", SETTINGS, x)
    expected = setup.apply_fn(setup.params, jnp.asarray(x[:16]))
    model = vs_pytorch.torch_mlp(setup.params)
    with torch.no_grad():
        got = model(torch.from_numpy(x[:16])).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    back = vs_pytorch.flax_params_from_torch(model, setup.params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(setup.params), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method", ["emcmc", "sgld"])
def test_one_noise_free_step_matches_flatjax(data, method):
    """At temperature 0, one torch step equals flatjax's kernel step from the same state."""
    x, y = data
    setup = vs_pytorch.flax_setup(method, SETTINGS, x)
    params = setup.params
    # a guide away from theta, so that the coupling term is exercised
    noise = normal_like(jax.random.key(1), params)
    guide = jax.tree.map(lambda a, n: a + 0.05 * n, params, noise)
    sampler = vs_pytorch.TorchSampler(
        params, method, SETTINGS.num_train, setup.config.eta, SETTINGS.weight_decay
    )
    if method == "emcmc":
        sampler.guide = [p.detach().clone() for p in vs_pytorch.torch_mlp(guide).parameters()]
        state = EMCMCState(params, guide)
    else:
        state = setup.kernel.init(params)
    step_size = 1e-4  # below eta = 4e-4, large enough to move the parameters
    xb, yb = x[:32], y[:32]
    new = jax.jit(setup.kernel.step)(
        jax.random.key(0), state, (jnp.asarray(xb), jnp.asarray(yb)), step_size, 0.0
    )
    sampler.step(torch.from_numpy(xb), torch.from_numpy(yb).long(), step_size, 0.0)

    got_theta = vs_pytorch.flax_params_from_torch(sampler.model, params)
    want_theta = new.position if method == "emcmc" else new
    pairs = [(got_theta, want_theta, params)]
    if method == "emcmc":
        got_guide = vs_pytorch.flax_params_from_torch(sampler.guide, params)
        pairs.append((got_guide, new.guide, guide))
    for got, want, old in pairs:
        for g, w, o in zip(
            jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(old), strict=True
        ):
            assert float(jnp.max(jnp.abs(w - o))) > 1e-4  # the step moved the parameters
            np.testing.assert_allclose(g, w, atol=1e-5, rtol=0)
            np.testing.assert_allclose(g - o, w - o, atol=2e-6, rtol=1e-3)


@pytest.mark.parametrize(
    "method, noise, torch_draw",
    [
        ("emcmc", "gaussian", "torch.randn"),
        ("sgld", "gaussian", "Tensor.normal_"),
        *[("emcmc", "rademacher", name) for name in vs_pytorch.TORCH_NOISE["rademacher"]],
        ("sgld", "rademacher", "torch.randn().sign_()"),
    ],
)
def test_noise_has_the_same_scale(data, method, noise, torch_draw):
    """At temperature T every block gets noise of variance 2 h T on both sides (same law)."""
    x, y = data
    setup = vs_pytorch.flax_setup(method, SETTINGS, x, noise=noise)
    step_size, temperature = 1e-4, 0.5
    xb, yb = x[:32], y[:32]
    batch = (jnp.asarray(xb), jnp.asarray(yb))
    state = setup.kernel.init(setup.params)
    step = jax.jit(setup.kernel.step)
    hot = step(jax.random.key(0), state, batch, step_size, temperature)
    cold = step(jax.random.key(0), state, batch, step_size, 0.0)
    pairs = zip(jax.tree.leaves(hot), jax.tree.leaves(cold), strict=True)
    flax_noise = jnp.concatenate([jnp.ravel(a - b) for a, b in pairs])
    torch_noise = []
    for t in (temperature, 0.0):
        sampler = vs_pytorch.TorchSampler(
            setup.params,
            method,
            SETTINGS.num_train,
            setup.config.eta,
            SETTINGS.weight_decay,
            noise=vs_pytorch.TORCH_NOISE[noise][torch_draw],
        )
        sampler.step(torch.from_numpy(xb), torch.from_numpy(yb).long(), step_size, t)
        blocks = sampler.params + (sampler.guide or [])
        torch_noise.append(np.concatenate([p.detach().numpy().ravel() for p in blocks]))
    torch_noise = torch_noise[0] - torch_noise[1]
    expected = np.sqrt(2 * step_size * temperature)
    num_params = sum(a.size for a in jax.tree.leaves(setup.params))
    assert flax_noise.size == torch_noise.size == num_params * (2 if method == "emcmc" else 1)
    for draws in (np.asarray(flax_noise), torch_noise):
        assert abs(draws.mean()) < 0.01 * expected
        assert draws.std() == pytest.approx(expected, rel=0.01)
        if noise == "rademacher":  # random signs times the scale
            np.testing.assert_allclose(np.abs(draws), expected, rtol=1e-2)


def test_schedules_are_flatjax_schedules():
    cyc = vs_pytorch.schedule_values(lambda k: 0.5 * (1.0 + jnp.cos(k / 10.0)), 5)
    assert cyc == pytest.approx([0.5 * (1.0 + np.cos(k / 10.0)) for k in range(5)], rel=1e-6)
    assert vs_pytorch.schedule_values(0.25, 3) == [0.25, 0.25, 0.25]


def test_verdicts_per_model_method_and_noise_against_the_fastest_one_thread_loop():
    def ratio(model, method, noise, torch_loop, median):
        return {
            "model": model,
            "method": method,
            "noise": noise,
            "torch": torch_loop,
            "median": median,
            "q25": median,
            "q75": median,
        }

    ratios = [
        ratio("128-128", "emcmc", "gaussian", "torch-1thread", 1.5),
        ratio("128-128", "emcmc", "gaussian", "torch-compile-1thread", 1.2),
        ratio("128-128", "emcmc", "gaussian", "torch", 9.0),
        ratio("128-128", "emcmc", "rademacher", "torch-1thread", 2.5),
        ratio("128-128", "gradients alone", "", "torch-1thread", 0.5),  # not a target
    ]
    targets = vs_pytorch.verdicts(ratios)
    fastest = {t["noise"]: t for t in targets if t["torch"] == "fastest"}
    assert set(fastest) == {"gaussian", "rademacher"}
    # the default-thread loop is judged but never the fastest; 1.2 < 1.3 fails
    assert fastest["gaussian"]["fastest"] == "torch-compile-1thread"
    assert not fastest["gaussian"]["holds"] and fastest["rademacher"]["holds"]
    assert fastest["rademacher"]["target"] == 2.0 and fastest["gaussian"]["target"] == 1.3
    line = vs_pytorch.bottom_line(targets)
    assert line["verdict"] == "fails" and "1 of 2 hold" in line["detail"]
    assert "128-128 emcmc gaussian: 1.20x < 1.3x" in line["detail"]
    ok = vs_pytorch.verdicts([ratio("512-512", "sgld", "rademacher", "torch-1thread", 2.1)])
    assert vs_pytorch.bottom_line(ok)["verdict"] == "holds"


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_torch_noise_candidates_have_unit_variance(kind):
    gen = torch.Generator().manual_seed(0)
    like = torch.zeros(200_000)
    for name, draw in vs_pytorch.TORCH_NOISE[kind].items():
        x = draw(like, gen)
        assert x.shape == like.shape and x.dtype == like.dtype, name
        assert abs(float(x.mean())) < 0.01 and float(x.std()) == pytest.approx(1.0, rel=0.01)
        if kind == "rademacher":
            assert set(x.unique().tolist()) == {-1.0, 1.0}, name
    fastest, ms = vs_pytorch.fastest_torch_noise({"w": jnp.zeros((64, 64))}, kind, 2, 1)
    assert fastest in vs_pytorch.TORCH_NOISE[kind] and set(ms) == set(vs_pytorch.TORCH_NOISE[kind])


def test_smoke_run_writes_results(tmp_path):
    result = vs_pytorch.main(
        [
            "--quick",
            "--rounds",
            "1",
            "--num-train",
            "512",
            "--lr",
            "0.1",
            "--num-test",
            "64",
            "--out",
            str(tmp_path),
        ]
    )
    saved = json.loads((tmp_path / "vs_pytorch_quick.json").read_text())
    assert saved["settings"]["rounds"] == 1
    assert {(r["method"], r["noise"], r["torch"]) for r in saved["benchmark"]["ratios"]} == {
        ("emcmc", "gaussian", "torch-1thread"),
        ("sgld", "gaussian", "torch-1thread"),
        ("emcmc", "rademacher", "torch-1thread"),
        ("sgld", "rademacher", "torch-1thread"),
        ("noise, gaussian (2 draws/step)", "", "torch-1thread"),
        ("noise, rademacher (2 draws/step)", "", "torch-1thread"),
        ("gradients alone", "", "torch-1thread"),
    }
    assert {r["model"] for r in saved["benchmark"]["ratios"]} == {"128-128"}
    for r in result["benchmark"]["ratios"]:
        assert r["median"] > 0 and len(r["raw"]) == 1
    for final in saved["benchmark"]["final"].values():
        assert np.isfinite(final["train_nll"]) and 0.0 <= final["test_accuracy"] <= 1.0
    assert len(saved["targets"]) == 8  # per method and noise: the one-thread loop, the fastest
    assert saved["verdict"]["verdict"] in ("holds", "fails")
    text = (tmp_path / "vs_pytorch_quick.md").read_text()
    assert f": {saved['verdict']['verdict']}**" in text and "## Where the time goes" in text
