"""The SWAG-form Gaussian against dense linear algebra on a small pytree (P = 17), float64."""

import functools
from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy import stats

from flatjax.vi import lowrank_gaussian as lrg
from flatjax.vi.lowrank_gaussian import LowRankGaussian

SHAPES = {"a": (4, 3), "b": (5,)}
P = 17


# one jitted version of each function, shared by the tests (compiled once per shape)
J = {
    name: jax.jit(getattr(lrg, name))
    for name in [
        "to_dense",
        "cov_matvec",
        "precision_matvec",
        "logdet",
        "log_prob",
        "entropy",
        "kl",
        "kl_to_isotropic",
        "fisher_vp",
        "fisher_diagonal",
        "sample",
    ]
}


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def random_tree(seed, extra=(), scale=1.0):
    rng = np.random.default_rng(seed)
    return {name: jnp.asarray(scale * rng.normal(size=s + extra)) for name, s in SHAPES.items()}


def random_q(seed, k=3):
    return LowRankGaussian(
        random_tree(seed), random_tree(seed + 100, scale=0.3), random_tree(seed + 200, (k,))
    )


def flat(tree):
    """Concatenated leaves, in ravel_pytree's order."""
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def unflatten(x, like):
    leaves, treedef = jax.tree.flatten(like)
    splits = np.cumsum([np.size(leaf) for leaf in leaves])[:-1]
    parts = np.split(np.asarray(x), splits)
    return jax.tree.unflatten(
        treedef,
        [jnp.asarray(p.reshape(np.shape(leaf))) for p, leaf in zip(parts, leaves, strict=True)],
    )


def dense(q):
    """mean and Sigma = diag(sigma^2) / 2 + C C^T / (2 (K - 1)), written from scratch."""
    k = q.deviations["a"].shape[-1]
    c = np.concatenate([np.asarray(q.deviations[n]).reshape(-1, k) for n in sorted(SHAPES)])
    sigma2 = np.exp(2 * flat(q.log_scale))
    return flat(q.mean), 0.5 * np.diag(sigma2) + c @ c.T / (2 * (k - 1))


def test_to_dense_matches_definition():
    q = random_q(0)
    mean, cov = dense(q)
    got_mean, got_cov = J["to_dense"](q)
    np.testing.assert_allclose(got_mean, mean)
    np.testing.assert_allclose(got_cov, cov, rtol=1e-12)


@pytest.mark.parametrize("k", [3, 5])
def test_matvecs_and_logdet(k):
    q = random_q(1, k)
    _, cov = dense(q)
    v = random_tree(9)
    np.testing.assert_allclose(flat(J["cov_matvec"](q, v)), cov @ flat(v), rtol=1e-10)
    np.testing.assert_allclose(
        flat(J["precision_matvec"](q, v)), np.linalg.solve(cov, flat(v)), rtol=1e-9
    )
    np.testing.assert_allclose(J["logdet"](q), np.linalg.slogdet(cov)[1], rtol=1e-10)


def test_log_prob_and_entropy_match_scipy():
    q = random_q(2)
    mean, cov = dense(q)
    mvn = stats.multivariate_normal(mean, cov)
    ws = [random_tree(seed) for seed in range(3, 6)]
    np.testing.assert_allclose(J["log_prob"](q, ws[0]), mvn.logpdf(flat(ws[0])), rtol=1e-10)
    np.testing.assert_allclose(J["entropy"](q), mvn.entropy(), rtol=1e-10)
    # batched under jit(vmap)
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *ws)
    got = jax.jit(jax.vmap(lrg.log_prob, in_axes=(None, 0)))(q, stacked)
    np.testing.assert_allclose(got, [mvn.logpdf(flat(w)) for w in ws], rtol=1e-10)


def dense_kl(m1, s1, m2, s2):
    d = m2 - m1
    s2_inv = np.linalg.inv(s2)
    return 0.5 * (
        np.trace(s2_inv @ s1)
        + d @ s2_inv @ d
        - len(m1)
        + np.linalg.slogdet(s2)[1]
        - np.linalg.slogdet(s1)[1]
    )


def test_kl_matches_dense_formula_with_different_ranks():
    q1, q2 = random_q(5, 3), random_q(6, 5)
    np.testing.assert_allclose(J["kl"](q1, q2), dense_kl(*dense(q1), *dense(q2)), rtol=1e-9)


def test_kl_to_isotropic():
    q = random_q(7)
    mean, cov = dense(q)
    s2 = 0.7
    want = dense_kl(mean, cov, np.zeros(P), s2 * np.eye(P))
    np.testing.assert_allclose(J["kl_to_isotropic"](q, s2), want, rtol=1e-10)
    m = random_tree(8)
    want = dense_kl(mean, cov, flat(m), s2 * np.eye(P))
    np.testing.assert_allclose(J["kl_to_isotropic"](q, s2, m), want, rtol=1e-10)
    prior = lrg.isotropic(m, s2, num_columns=3)
    np.testing.assert_allclose(J["kl"](q, prior), want, rtol=1e-9)
    assert abs(J["kl"](q, q)) < 1e-10


def test_constructors():
    mean = random_tree(10)
    q = lrg.isotropic(mean, 0.3, num_columns=4)
    np.testing.assert_allclose(dense(q)[1], 0.3 * np.eye(P), rtol=1e-12)
    assert lrg.rank(q) == 4

    sq_mean = jax.tree.map(lambda m: m**2 + 0.25, mean)
    sq_mean["b"] = sq_mean["b"].at[0].add(-1.0)  # negative variance -> clipped
    dev = random_tree(11, (3,))
    q = lrg.from_swag_moments(mean, sq_mean, dev, min_variance=1e-6)
    var = np.clip(flat(sq_mean) - flat(mean) ** 2, 1e-6, None)
    d = np.concatenate([np.asarray(dev[n]).reshape(-1, 3) for n in sorted(SHAPES)])
    swag = 0.5 * np.diag(var) + 0.5 * d @ d.T / (3 - 1)  # Maddox et al. (2019)
    np.testing.assert_allclose(dense(q)[1], swag, rtol=1e-9)


@functools.lru_cache
def dense_fisher(seed, k):
    """J_mu^T S^-1 J_mu + 1/2 J_S^T (S^-1 kron S^-1) J_S in flat gamma = (mu, l, C)."""
    g0, unravel = ravel_pytree(random_q(seed, k))

    @jax.jit
    def fisher(g):
        j_mu, j_cov = jax.jacfwd(lambda g: lrg.to_dense(unravel(g)))(g)  # (P, n), (P, P, n)
        prec = jnp.linalg.inv(lrg.to_dense(unravel(g))[1])
        x = jnp.einsum("ij,jkn->ikn", prec, j_cov)
        return j_mu.T @ prec @ j_mu + 0.5 * jnp.einsum("ijn,jim->nm", x, x)

    return np.asarray(fisher(g0))


def test_reparameterize_is_the_affine_map_of_the_dense_covariance_factor():
    """``w = mu + L z`` with ``L = [diag(sigma) / sqrt(2), C / sqrt(2 (K - 1))]``."""
    q = random_q(12)
    z1, z2 = lrg.sample_noise(jax.random.key(3), q)
    w = lrg.reparameterize(q, (z1, z2))
    mean, cov = lrg.to_dense(q)
    sigma = flat(q.log_scale)
    dev = np.concatenate([np.reshape(d, (-1, 3)) for d in jax.tree.leaves(q.deviations)])
    factor = np.hstack([np.diag(np.exp(sigma)) / np.sqrt(2.0), dev / np.sqrt(2.0 * 2)])
    np.testing.assert_allclose(factor @ factor.T, cov, rtol=1e-10)
    expected = mean + factor @ np.concatenate([flat(z1), np.asarray(z2)])
    np.testing.assert_allclose(flat(w), expected, rtol=1e-10)
    sample = lrg.sample(jax.random.key(3), q)
    jax.tree.map(np.testing.assert_array_equal, sample, w)


def test_fisher_vp_and_diagonal_match_dense_fisher():
    q = random_q(12)
    fisher = dense_fisher(12, 3)
    rng = np.random.default_rng(0)
    for _ in range(2):
        t = unflatten(rng.normal(size=fisher.shape[0]), q)
        got = flat(J["fisher_vp"](q, t))
        np.testing.assert_allclose(got, fisher @ flat(t), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(flat(J["fisher_diagonal"](q)), np.diag(fisher), rtol=1e-9)


@pytest.mark.slow
def test_fisher_is_the_hessian_of_kl():
    q = random_q(12)
    g0, unravel = ravel_pytree(q)
    hess = jax.jit(jax.hessian(lambda g: lrg.kl(q, unravel(g))))(g0)
    np.testing.assert_allclose(hess, dense_fisher(12, 3), rtol=1e-8, atol=1e-8)


def test_fisher_null_space_is_rotations_of_the_columns():
    q = random_q(12)
    s = jnp.array([[0.0, 1.0, -2.0], [-1.0, 0.0, 0.5], [2.0, -0.5, 0.0]])  # antisymmetric
    zeros = jax.tree.map(jnp.zeros_like, q.mean)
    t = LowRankGaussian(zeros, zeros, jax.tree.map(lambda c: c @ s, q.deviations))
    assert np.max(np.abs(flat(J["fisher_vp"](q, t)))) < 1e-10
    eig = np.linalg.eigvalsh(dense_fisher(12, 3))
    assert np.sum(eig < 1e-10 * eig[-1]) == 3  # K (K - 1) / 2 and no more


SOLVE = jax.jit(lrg.fisher_solve, static_argnames=("maxiter", "precondition", "project_rotations"))


def project_off_null_space(fisher, g):
    """Dense projection of g onto the range of F (orthogonal to its null space)."""
    eig, vec = np.linalg.eigh(fisher)
    null = vec[:, eig < 1e-10 * eig[-1]]
    return g - null @ (null.T @ g)


def test_project_out_rotations_is_the_projection_onto_the_range_of_the_fisher():
    q = random_q(12)
    fisher = dense_fisher(12, 3)
    g = np.random.default_rng(3).normal(size=fisher.shape[0])
    got = jax.jit(lrg.project_out_rotations)(q, unflatten(g, q))
    np.testing.assert_allclose(flat(got), project_off_null_space(fisher, g), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "precondition, project",
    [
        (True, True),
        pytest.param(True, False, marks=pytest.mark.slow),
        pytest.param(False, True, marks=pytest.mark.slow),
    ],
)
def test_fisher_solve_matches_dense_solve(precondition, project):
    q = random_q(12)
    fisher = dense_fisher(12, 3)
    g = np.random.default_rng(1).normal(size=fisher.shape[0])
    lam, lam_rel = 1e-4, 1e-3
    got = SOLVE(
        q,
        unflatten(g, q),
        lam,
        lam_rel,
        project,
        tol=1e-12,
        atol=0.0,
        maxiter=1000,
        precondition=precondition,
    )
    _, cov = dense(q)
    np.testing.assert_allclose(flat(got.mean), cov @ g[:P], rtol=1e-10)
    rhs = project_off_null_space(fisher, g) if project else g
    block = fisher[P:, P:]
    damped = block + lam_rel * np.diag(np.diag(block)) + lam * np.eye(len(block))
    want = np.linalg.solve(damped, rhs[P:])
    np.testing.assert_allclose(flat(got)[P:], want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("maxiter", [2, 1000])
def test_solve_quadratic_form_and_warm_start_match_dense(maxiter):
    """``x^T F x`` from CG's residual is exact for the x CG returns, converged or not;
    a warm start at the solution stays there."""
    q = random_q(12)
    fisher = dense_fisher(12, 3)
    g = unflatten(np.random.default_rng(3).normal(size=fisher.shape[0]), q)
    solve = jax.jit(
        lrg.fisher_solve,
        static_argnames=("maxiter", "project_rotations", "return_quadratic_form"),
    )
    x, form = solve(q, g, 1e-4, 1e-3, tol=1e-12, maxiter=maxiter, return_quadratic_form=True)
    np.testing.assert_allclose(form, flat(x) @ fisher @ flat(x), rtol=1e-8)
    if maxiter == 1000:
        again = SOLVE(q, g, 1e-4, 1e-3, True, tol=1e-12, atol=0.0, maxiter=1, x0=x)
        np.testing.assert_allclose(flat(again), flat(x), rtol=1e-8, atol=1e-12)


def test_fisher_solve_inverts_the_fisher_on_its_range():
    """For g = F t (an exact expected gradient is in the range), F solve(g) = g."""
    q = random_q(12)
    fisher = dense_fisher(12, 3)
    g = fisher @ np.random.default_rng(2).normal(size=fisher.shape[0])
    x = SOLVE(
        q, unflatten(g, q), 1e-9, 0.0, True, tol=1e-12, atol=0.0, maxiter=1000, precondition=True
    )
    np.testing.assert_allclose(fisher @ flat(x), g, rtol=1e-6, atol=1e-6 * np.abs(g).max())


@pytest.mark.parametrize("antithetic", [False, True])
def test_sample_moments_within_mcse(antithetic):
    q = random_q(16)
    mean, cov = dense(q)
    n = 20_000
    draws = jax.jit(lrg.sample_n, static_argnums=(2, 3))(jax.random.key(17), q, 2 * n, antithetic)
    w = np.concatenate([np.asarray(x).reshape(2 * n, -1) for x in jax.tree.leaves(draws)], 1)
    if antithetic:  # the second half mirrors the first through the mean, exactly
        np.testing.assert_allclose(w[n:], 2 * mean - w[:n], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(w.mean(0), mean, rtol=1e-5, atol=1e-5)
    w = w[:n]  # independent draws (both halves' second moments about the mean are equal)
    # independent draws: the sd of each estimate is estimated from the sample itself
    num_stats = P + P * (P + 1) // 2
    z_crit = NormalDist().inv_cdf(1 - 1e-3 / (2 * num_stats))  # Bonferroni, family error 1e-3
    r = w - mean
    z_mean = r.mean(0) / (r.std(0) / np.sqrt(n))
    iu = np.triu_indices(P)
    prods = (r[:, :, None] * r[:, None, :])[:, iu[0], iu[1]]
    z_cov = (prods.mean(0) - cov[iu]) / (prods.std(0) / np.sqrt(n))
    assert np.max(np.abs(z_mean)) < z_crit, np.max(np.abs(z_mean))
    assert np.max(np.abs(z_cov)) < z_crit, np.max(np.abs(z_cov))


def test_sample_n_rejects_bad_antithetic_arguments():
    q = random_q(16)
    with pytest.raises(ValueError, match="num_samples.*even.*3"):
        lrg.sample_n(jax.random.key(0), q, 3, antithetic=True)
    with pytest.raises(TypeError, match="antithetic"):
        lrg.sample_n(jax.random.key(0), q, 4, antithetic="yes")


def test_sample_is_reparameterised():
    """The draw is mu + (diagonal noise) + C z2: shifting mu shifts it, scaling C scales C z2."""
    q = random_q(18)
    key = jax.random.key(19)
    draw = lambda q: flat(J["sample"](key, q))
    w = draw(q)
    np.testing.assert_allclose(
        draw(q._replace(mean=jax.tree.map(lambda m: m + 1.0, q.mean))) - w, 1.0
    )
    q2 = q._replace(deviations=jax.tree.map(lambda c: 2 * c, q.deviations))
    q0 = q._replace(deviations=jax.tree.map(jnp.zeros_like, q.deviations))
    np.testing.assert_allclose(draw(q2) - draw(q0), 2 * (w - draw(q0)), rtol=1e-12)


def test_validation_errors():
    q = random_q(20, 3)
    with pytest.raises(ValueError, match="num_columns"):
        lrg.isotropic(q.mean, 1.0, num_columns=1)
    bad_k = q._replace(deviations=jax.tree.map(lambda c: c[..., :1], q.deviations))
    with pytest.raises(ValueError, match="num_columns"):
        lrg.logdet(bad_k)
    bad_leaf = q._replace(deviations={**q.deviations, "b": jnp.zeros((4, 3))})
    with pytest.raises(ValueError, match=r"\['b'\]"):
        lrg.entropy(bad_leaf)
    mixed_k = q._replace(deviations={**q.deviations, "b": jnp.zeros((5, 4))})
    with pytest.raises(ValueError, match="same K"):
        lrg.sample(jax.random.key(0), mixed_k)
    with pytest.raises(ValueError, match="log_scale"):
        lrg.entropy(q._replace(log_scale={"a": q.log_scale["a"]}))
    with pytest.raises(ValueError, match=r"`w` leaf \['a'\]"):
        lrg.log_prob(q, {"a": jnp.zeros(3), "b": jnp.zeros(5)})
    with pytest.raises(ValueError, match="K=3"):
        lrg.fisher_vp(q, random_q(21, 5))
    with pytest.raises(ValueError, match="prior_variance"):
        lrg.kl_to_isotropic(q, 0.0)
    with pytest.raises(ValueError, match="damping"):
        lrg.fisher_solve(q, q, damping=-1.0)
    with pytest.raises(ValueError, match="relative_damping"):
        lrg.fisher_solve(q, q, relative_damping=-1.0)
    z1, z2 = lrg.sample_noise(jax.random.key(0), q)
    with pytest.raises(ValueError, match=r"noise\[1\].*\(3,\)"):
        lrg.reparameterize(q, (z1, jnp.zeros(4)))
    with pytest.raises(ValueError, match=r"noise\[0\]"):
        lrg.reparameterize(q, ({"a": z1["a"]}, z2))


def test_large_leaves_match_dense_linear_algebra():
    """Leaves long enough for the folded products (and one that is not), against dense.

    ``U^T v`` and the Gram matrices fold rows into columns for leaves of at least
    ``64 * fold`` rows (``fold`` 8 and 2); P = 1,581 with K = 5 covers both paths and
    the fallback for a leaf whose length is not a multiple of the fold.
    """
    shapes = {"w": (64, 16), "u": (520,), "v": (37,)}
    rng = np.random.default_rng(4)

    def tree(extra=(), scale=1.0):
        return {n: jnp.asarray(scale * rng.normal(size=s + extra)) for n, s in shapes.items()}

    q = LowRankGaussian(tree(), tree(scale=0.3), tree((5,)))
    mean, cov = lrg.to_dense(q)
    v = tree()
    np.testing.assert_allclose(ravel_pytree(lrg.cov_matvec(q, v))[0], cov @ flat(v), rtol=1e-10)
    np.testing.assert_allclose(
        ravel_pytree(lrg.precision_matvec(q, v))[0], np.linalg.solve(cov, flat(v)), rtol=1e-8
    )
    np.testing.assert_allclose(lrg.logdet(q), np.linalg.slogdet(cov)[1], rtol=1e-10)
    _, unravel = ravel_pytree(q)
    t = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape)), q)

    def half_quadratic_form(t):  # t^T F t / 2, with dense Sigma and dSigma
        prec = jnp.linalg.inv(cov)
        d_sigma = jax.jvp(lambda q: lrg.to_dense(q)[1], (q,), (t,))[1]
        d_mu = ravel_pytree(t.mean)[0]
        x = prec @ d_sigma
        return 0.5 * (d_mu @ prec @ d_mu + 0.5 * jnp.trace(x @ x))

    expected = ravel_pytree(jax.grad(half_quadratic_form)(t))[0]
    got = ravel_pytree(lrg.fisher_vp(q, t))[0]
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10 * np.abs(expected).max())
    assert unravel(got).deviations["w"].shape == (64, 16, 5)
