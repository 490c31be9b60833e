r"""Flatness of a loss surface: Hessian spectra, traces and 1-D slices.

All functions take a scalar ``loss_fn(params) -> loss`` over any parameter pytree
(close over the data; for the SA-BMA measure it is the training cross-entropy) and
never form the Hessian: they use Hessian-vector products by forward-over-reverse
differentiation, :math:`Hv = \frac{d}{d\epsilon}\nabla f(\theta + \epsilon v)`,
which cost about two gradients.

* :func:`top_eigenvalues`: the largest Hessian eigenvalues by Lanczos with full
  reorthogonalisation (the only place a flat vector is needed: the Krylov basis);
  :func:`eigenvalue_ratio` gives :math:`\lambda_1 / \lambda_k`.
* :func:`mean_top_eigenvalue`: the SA-BMA flatness measure, the mean of
  :math:`\lambda_1` over posterior samples stacked on a leading axis
  (:func:`batched_top_eigenvalues` gives all of them).
* :func:`hutchinson_trace`: :math:`\operatorname{tr} H` from Rademacher probes.
* :func:`interpolate_loss` and :func:`random_direction_loss`: the loss along the
  segment between two parameter sets, and along random filter-normalised
  directions (Li et al., 2018).

Everything is pure and jittable (``k``, ``num_iterations``, ``num_samples``,
``num_points`` and ``num_directions`` are static).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from blackjax.types import Array, ArrayLikeTree, ArrayTree, PRNGKey
from jax.flatten_util import ravel_pytree

from flatjax._util import check_floating_tree, check_matching_tree, check_positive_int

__all__ = [
    "hessian_vector_product",
    "top_eigenvalues",
    "batched_top_eigenvalues",
    "mean_top_eigenvalue",
    "eigenvalue_ratio",
    "hutchinson_samples",
    "hutchinson_trace",
    "interpolate_loss",
    "random_direction",
    "random_direction_loss",
]

_NORMALIZE = ("filter", "layer", None)


def _tree_vdot(x: ArrayTree, y: ArrayTree) -> Array:
    leaves = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.sum(a * b), x, y))
    return sum(leaves[1:], leaves[0])


def _num_params(params: ArrayLikeTree) -> int:
    return sum(math.prod(jnp.shape(x)) for x in jax.tree.leaves(params))


def hessian_vector_product(
    loss_fn: Callable, params: ArrayLikeTree, vector: ArrayLikeTree
) -> ArrayTree:
    """``H(params) v`` by forward-over-reverse differentiation, on pytrees.

    Forward-over-reverse (``jax.jvp`` of ``jax.grad``) is the cheapest HVP. Models with
    a ``jax.custom_vjp`` inside (e.g. :class:`flatjax.nn.models.CNN`'s default
    ``conv="canonical"``) have no forward-mode rule; for them this falls back to
    reverse-over-reverse, ``grad(<grad loss, v>)``, which gives the same product.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> loss = lambda p: jnp.sum(p["x"] ** 2) + 3 * p["x"][0] * p["y"]
    >>> params = {"x": jnp.ones(2), "y": jnp.ones(())}
    >>> hessian_vector_product(loss, params, {"x": jnp.zeros(2), "y": jnp.ones(())})["x"]
    Array([3., 0.], dtype=float32)
    """
    check_matching_tree("vector", vector, "params", params)
    try:
        return jax.jvp(jax.grad(loss_fn), (params,), (vector,))[1]
    except TypeError as err:
        if "custom_vjp" not in str(err):
            raise
    return jax.grad(lambda p: _tree_vdot(jax.grad(loss_fn)(p), vector))(params)


def _check_lanczos(k: int, num_iterations: int | None, size: int) -> tuple[int, int]:
    k = check_positive_int("k", k)
    if k > size:
        raise ValueError(f"`k`={k} exceeds the number of parameters P={size}")
    if num_iterations is None:
        return k, min(size, max(20, 3 * k))
    m = check_positive_int("num_iterations", num_iterations)
    if m < k:
        raise ValueError(f"`num_iterations`={m} must be >= `k`={k}")
    if m > size:
        raise ValueError(
            f"`num_iterations`={m} exceeds the number of parameters P={size}: "
            f"the Krylov basis cannot have more than P vectors"
        )
    return k, m


def _lanczos(matvec: Callable, v0: Array, num_iterations: int, rng_key: PRNGKey) -> Array:
    """Eigenvalues (ascending) of the Lanczos tridiagonal, full reorthogonalisation.

    On breakdown (an invariant subspace: the residual vanishes) the iteration
    restarts from a random vector orthogonal to the basis, with a zero coupling.
    """
    m, size = num_iterations, v0.shape[0]
    dtype = v0.dtype
    eps = jnp.finfo(dtype).eps

    def orthogonalise(basis, w):
        # twice is enough (Giraitis-Parlett "twice is enough"); rows > j are zero
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        return w

    def restart(basis, j):
        r = jax.random.normal(jax.random.fold_in(rng_key, j), (size,), dtype)
        r = orthogonalise(basis, r)
        # after P iterations nothing is left to restart from; that vector is unused
        return r / jnp.maximum(jnp.linalg.norm(r), jnp.finfo(dtype).tiny)

    def body(j, carry):
        basis, alphas, betas, scale = carry
        v = basis[j]
        w = matvec(v)
        alpha = jnp.vdot(v, w)
        w = orthogonalise(basis, w)
        beta = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.maximum(jnp.abs(alpha), beta))
        broke = beta <= eps * scale
        nxt = jax.lax.cond(
            broke, lambda: restart(basis, j), lambda: w / jnp.where(broke, 1.0, beta)
        )
        beta = jnp.where(broke, 0.0, beta)
        return basis.at[j + 1].set(nxt), alphas.at[j].set(alpha), betas.at[j].set(beta), scale

    basis = jnp.zeros((m + 1, size), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    init = (basis, jnp.zeros(m, dtype), jnp.zeros(m, dtype), jnp.zeros((), dtype))
    _, alphas, betas, _ = jax.lax.fori_loop(0, m, body, init)
    off = betas[:-1]
    tridiagonal = jnp.diag(alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)
    return jnp.linalg.eigvalsh(tridiagonal)


def top_eigenvalues(
    loss_fn: Callable,
    params: ArrayLikeTree,
    k: int = 5,
    *,
    num_iterations: int | None = None,
    rng_key: PRNGKey | None = None,
) -> Array:
    """The ``k`` largest eigenvalues of the Hessian of ``loss_fn`` at ``params``.

    Lanczos with full reorthogonalisation on Hessian-vector products: each
    iteration is one HVP plus ``O(m P)`` work, and the Krylov basis holds
    ``(num_iterations + 1) x P`` numbers. The Ritz values returned approach the
    extreme eigenvalues from inside (by interlacing, the largest is a lower bound
    on :math:`\\lambda_1`); well-separated top eigenvalues converge in a few dozen
    iterations, clustered ones need more. With ``num_iterations = P`` the result is
    exact up to round-off.

    Parameters
    ----------
    loss_fn
        Scalar function of the parameter pytree.
    params
        Where to take the Hessian.
    k
        How many eigenvalues, ``1 <= k <= P``.
    num_iterations
        Lanczos steps ``m`` with ``k <= m <= P``; default ``min(P, max(20, 3 k))``.
    rng_key
        Key for the random start vector (and restarts on breakdown); ``None`` uses
        ``jax.random.key(0)``. The converged values do not depend on it.

    Returns
    -------
    The eigenvalues in descending order, shape ``(k,)``, in the parameters' dtype.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> loss = lambda p: 0.5 * jnp.sum(jnp.arange(1.0, 7.0) * p["w"] ** 2)
    >>> top = jax.jit(lambda p: top_eigenvalues(loss, p, k=2))({"w": jnp.ones(6)})
    >>> [round(float(x), 3) for x in top]
    [6.0, 5.0]
    """
    check_floating_tree("params", params)
    flat, unravel = ravel_pytree(params)
    k, m = _check_lanczos(k, num_iterations, flat.shape[0])
    key = jax.random.key(0) if rng_key is None else rng_key
    key_start, key_restart = jax.random.split(key)

    def matvec(v):
        # falls back to reverse-over-reverse for custom_vjp models (the CNNs' conv)
        hv = hessian_vector_product(loss_fn, params, unravel(v))
        return ravel_pytree(hv)[0].astype(flat.dtype)

    v0 = jax.random.normal(key_start, flat.shape, flat.dtype)
    eigs = _lanczos(matvec, v0, m, key_restart)
    return eigs[::-1][:k]


def _leading_size(samples: ArrayLikeTree) -> int:
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in jax.tree.leaves(samples)}
    if not sizes:
        raise ValueError("`samples` is an empty pytree")
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            "every leaf of `samples` must have the same leading (sample) axis, "
            f"got leading sizes {sorted(s for s in sizes if s is not None)}"
            + (" and scalar leaves" if None in sizes else "")
        )
    return sizes.pop()


def batched_top_eigenvalues(
    loss_fn: Callable,
    samples: ArrayLikeTree,
    k: int = 5,
    *,
    num_iterations: int | None = None,
    rng_key: PRNGKey | None = None,
    batch_size: int | None = None,
) -> Array:
    """:func:`top_eigenvalues` at each of ``S`` parameter samples, shape ``(S, k)``.

    ``samples`` is a parameter pytree with a leading sample axis on every leaf (as
    a BMA buffer stores them). The samples are processed by :func:`jax.lax.map`,
    ``batch_size`` at a time under ``vmap`` (``None``: one at a time, the least
    memory). Each sample gets its own start vector.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> loss = lambda p: 0.5 * jnp.sum(jnp.arange(1.0, 5.0) * p**4)
    >>> samples = jnp.stack([jnp.ones(4), 2 * jnp.ones(4)])  # Hessian 6 diag(1..4) p^2
    >>> batched_top_eigenvalues(loss, samples, k=2).round(2)
    Array([[24., 18.],
           [96., 72.]], dtype=float32)
    """
    num = _leading_size(samples)
    key = jax.random.key(0) if rng_key is None else rng_key
    keys = jax.random.split(key, num)

    def one(args):
        params, key = args
        return top_eigenvalues(loss_fn, params, k, num_iterations=num_iterations, rng_key=key)

    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size)
    return jax.lax.map(one, (samples, keys), batch_size=batch_size)


def mean_top_eigenvalue(
    loss_fn: Callable,
    samples: ArrayLikeTree,
    *,
    num_iterations: int | None = None,
    rng_key: PRNGKey | None = None,
    batch_size: int | None = None,
) -> Array:
    """The SA-BMA flatness measure: the mean of :math:`\\lambda_1` over samples.

    ``samples`` stacks ``S`` parameter sets on a leading axis; ``loss_fn`` is the
    training loss (cross-entropy) as a function of one of them. For the companion
    :math:`\\lambda_1/\\lambda_5` use ``eigenvalue_ratio(batched_top_eigenvalues(
    loss_fn, samples, k=5)).mean()``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> loss = lambda p: 0.5 * jnp.sum(jnp.arange(1.0, 5.0) * p**4)
    >>> samples = jnp.stack([jnp.ones(4), 2 * jnp.ones(4)])
    >>> mean_top_eigenvalue(loss, samples).round(2)  # (24 + 96) / 2
    Array(60., dtype=float32)
    """
    eigs = batched_top_eigenvalues(
        loss_fn,
        samples,
        1,
        num_iterations=num_iterations,
        rng_key=rng_key,
        batch_size=batch_size,
    )
    return jnp.mean(eigs[:, 0])


def eigenvalue_ratio(eigenvalues: Array, k: int | None = None) -> Array:
    """:math:`\\lambda_1 / \\lambda_k` from eigenvalues sorted in descending order.

    ``eigenvalues`` has the eigenvalues on its last axis (any leading batch axes);
    ``k`` defaults to the last one. Large ratios mean a few sharp directions.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> eigenvalue_ratio(jnp.array([10.0, 4.0, 2.0]))
    Array(5., dtype=float32)
    >>> eigenvalue_ratio(jnp.array([[10.0, 4.0, 2.0], [6.0, 3.0, 1.0]]), k=2)
    Array([2.5, 2. ], dtype=float32)
    """
    eigenvalues = jnp.asarray(eigenvalues)
    if eigenvalues.ndim == 0:
        raise ValueError("`eigenvalues` must have at least one axis")
    n = eigenvalues.shape[-1]
    k = n if k is None else check_positive_int("k", k)
    if k > n:
        raise ValueError(f"`k`={k} exceeds the {n} eigenvalues given")
    return eigenvalues[..., 0] / eigenvalues[..., k - 1]


def hutchinson_samples(
    loss_fn: Callable,
    params: ArrayLikeTree,
    rng_key: PRNGKey,
    num_samples: int = 100,
    *,
    batch_size: int | None = None,
) -> Array:
    """Hutchinson's summands ``z^T H z``, one per Rademacher probe ``z``, shape ``(num_samples,)``.

    Their mean is :func:`hutchinson_trace`; their spread gives its Monte Carlo error.
    Probes are drawn leaf by leaf in each leaf's dtype; ``batch_size`` probes are
    evaluated at a time under ``vmap`` (``None``: one at a time).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> loss = lambda p: 0.5 * jnp.sum(jnp.arange(1.0, 5.0) * p**2)  # diagonal: exact
    >>> hutchinson_samples(loss, jnp.zeros(4), jax.random.key(0), num_samples=2)
    Array([10., 10.], dtype=float32)
    """
    check_floating_tree("params", params)
    num_samples = check_positive_int("num_samples", num_samples)
    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size)
    leaves, treedef = jax.tree.flatten(params)

    def quadratic_form(key):
        keys = jax.random.split(key, len(leaves))
        z = [
            jax.random.rademacher(k, jnp.shape(x), jnp.result_type(x))
            for k, x in zip(keys, leaves, strict=True)
        ]
        z = jax.tree.unflatten(treedef, z)
        return _tree_vdot(z, hessian_vector_product(loss_fn, params, z))

    keys = jax.random.split(rng_key, num_samples)
    return jax.lax.map(quadratic_form, keys, batch_size=batch_size)


def hutchinson_trace(
    loss_fn: Callable,
    params: ArrayLikeTree,
    rng_key: PRNGKey,
    num_samples: int = 100,
    *,
    batch_size: int | None = None,
) -> Array:
    """Hutchinson's estimate of ``tr H``: the mean of ``z^T H z``, ``z`` Rademacher.

    Unbiased, with variance :math:`2 \\sum_{i \\ne j} H_{ij}^2 / n` for ``n =
    num_samples`` probes (zero for a diagonal Hessian); the summands themselves are
    :func:`hutchinson_samples`.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> loss = lambda p: 0.5 * jnp.sum(jnp.arange(1.0, 5.0) * p**2)  # diagonal: exact
    >>> hutchinson_trace(loss, jnp.zeros(4), jax.random.key(0), num_samples=3)
    Array(10., dtype=float32)
    """
    samples = hutchinson_samples(loss_fn, params, rng_key, num_samples, batch_size=batch_size)
    return jnp.mean(samples)


def interpolate_loss(
    loss_fn: Callable,
    params_a: ArrayLikeTree,
    params_b: ArrayLikeTree,
    num_points: int = 21,
    *,
    t_min: float = 0.0,
    t_max: float = 1.0,
    batch_size: int | None = None,
) -> tuple[Array, Array]:
    """The loss along the line ``params_a + t (params_b - params_a)``.

    E.g. between a sample and its Entropy-MCMC guide, or between two modes.

    Returns
    -------
    ``(ts, losses)``, ``ts = linspace(t_min, t_max, num_points)``: ``t = 0`` is
    ``params_a`` and ``t = 1`` is ``params_b``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> loss = lambda p: jnp.sum(p**2)
    >>> ts, losses = interpolate_loss(loss, jnp.zeros(2), jnp.ones(2), num_points=3)
    >>> losses
    Array([0. , 0.5, 2. ], dtype=float32)
    """
    check_floating_tree("params_a", params_a)
    check_matching_tree("params_b", params_b, "params_a", params_a)
    num_points = check_positive_int("num_points", num_points)
    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size)
    dtype = jnp.result_type(*jax.tree.leaves(params_a))
    ts = jnp.linspace(t_min, t_max, num_points, dtype=dtype)
    delta = jax.tree.map(jnp.subtract, params_b, params_a)

    def at(t):
        return loss_fn(jax.tree.map(lambda a, d: a + t.astype(a.dtype) * d, params_a, delta))

    return ts, jax.lax.map(at, ts, batch_size=batch_size)


def random_direction(
    rng_key: PRNGKey,
    params: ArrayLikeTree,
    normalize: str | None = "filter",
    filter_axis: int = -1,
) -> ArrayTree:
    """A Gaussian direction in parameter space, scaled like ``params``.

    Parameters
    ----------
    normalize
        ``"filter"`` (Li et al., 2018): in every leaf with two or more axes, each
        filter (slice along ``filter_axis``) of the direction is rescaled to the
        norm of the same filter of ``params``; leaves with at most one axis (biases,
        normalisation scales) get a zero direction, as in the reference code's
        ``ignore="biasbn"``. ``"layer"``: each leaf is rescaled to the leaf's norm.
        ``None``: the raw ``N(0, I)`` draw.
    filter_axis
        The axis indexing filters / output units. Flax kernels are ``(in, out)``
        and ``(h, w, in, out)``, so the default is the last axis (PyTorch puts it
        first).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> params = {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}
    >>> d = random_direction(jax.random.key(0), params)
    >>> jnp.linalg.norm(d["kernel"], axis=0).round(4), d["bias"]
    (Array([1.7321, 1.7321], dtype=float32), Array([0., 0.], dtype=float32))
    """
    check_floating_tree("params", params)
    if normalize not in _NORMALIZE:
        raise ValueError(f"`normalize` must be one of {_NORMALIZE}, got {normalize!r}")
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(rng_key, len(leaves))
    out = []
    for key, x in zip(keys, leaves, strict=True):
        x = jnp.asarray(x)
        d = jax.random.normal(key, x.shape, x.dtype)
        if normalize == "layer":
            d = d * jnp.linalg.norm(x) / jnp.linalg.norm(d)
        elif normalize == "filter":
            if x.ndim <= 1:
                d = jnp.zeros_like(x)
            else:
                axis = filter_axis % x.ndim
                other = tuple(i for i in range(x.ndim) if i != axis)
                norm = lambda y: jnp.sqrt(jnp.sum(y**2, axis=other, keepdims=True))
                d = d * norm(x) / norm(d)
        out.append(d)
    return jax.tree.unflatten(treedef, out)


def random_direction_loss(
    loss_fn: Callable,
    params: ArrayLikeTree,
    rng_key: PRNGKey,
    radii: Array,
    normalize: str | None = "filter",
    *,
    num_directions: int = 1,
    filter_axis: int = -1,
    batch_size: int | None = None,
) -> Array:
    """The loss at ``params + r d`` for each radius ``r`` and random direction ``d``.

    Directions come from :func:`random_direction` (filter-normalised by default, so
    that radii are comparable across networks and scale-invariant layers).

    Returns
    -------
    Losses of shape ``(num_directions, len(radii))``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> loss = lambda p: jnp.sum(p["w"] ** 2)
    >>> params = {"w": jnp.ones((2, 2))}  # each filter has norm sqrt(2)
    >>> random_direction_loss(loss, params, jax.random.key(0), jnp.array([0.0, 1.0]),
    ...                       num_directions=2).shape
    (2, 2)
    """
    check_floating_tree("params", params)
    num_directions = check_positive_int("num_directions", num_directions)
    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size)
    radii = jnp.asarray(radii)
    if radii.ndim != 1:
        raise ValueError(f"`radii` must be one-dimensional, got shape {radii.shape}")
    keys = jax.random.split(rng_key, num_directions)

    def along(key):
        d = random_direction(key, params, normalize, filter_axis)

        def at(r):
            return loss_fn(jax.tree.map(lambda x, y: x + r.astype(x.dtype) * y, params, d))

        return jax.lax.map(at, radii, batch_size=batch_size)

    return jax.lax.map(along, keys)
