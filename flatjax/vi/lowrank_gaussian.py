r"""Low-rank-plus-diagonal Gaussians in SWAG form, over any parameter pytree.

The distribution is :math:`q = \mathcal{N}(\mu, \Sigma)` with

.. math::

    \Sigma = \tfrac12 \operatorname{diag}(\sigma^2) + \frac{C C^\top}{2(K-1)},
    \qquad \sigma = \exp(\ell),\ C \in \mathbb{R}^{P \times K},

the covariance of SWAG (Maddox et al., 2019) when :math:`\sigma^2` is the diagonal
variance of the iterates and the columns of :math:`C` are their deviations from the
mean. :class:`LowRankGaussian` holds ``(mean, log_scale, deviations)``: ``mean`` and
``log_scale`` are pytrees shaped like the parameters, and each leaf of ``deviations``
has the leaf's shape plus a trailing axis of length :math:`K \ge 2` (column ``k`` of
:math:`C` is ``deviations[..., k]`` in every leaf).

Nothing here forms a :math:`P \times P` matrix. Write :math:`A = \frac12
\operatorname{diag}(\sigma^2)` and :math:`U = C / \sqrt{2(K-1)}`, so that
:math:`\Sigma = A + U U^\top`. With the :math:`K \times K` capacitance
:math:`M = I_K + U^\top A^{-1} U = L L^\top`:

* :math:`\Sigma v = a \odot v + U (U^\top v)` in :math:`O(PK)` (:func:`cov_matvec`);
* :math:`\Sigma^{-1} = A^{-1} - A^{-1} U M^{-1} U^\top A^{-1}` (Woodbury,
  :func:`precision_matvec`) and :math:`\log|\Sigma| = \sum_i \log a_i + \log|M|`
  (matrix-determinant lemma, :func:`logdet`), in :math:`O(PK^2 + K^3)`;
* the trace in :func:`kl` uses the same identities (see there).

The Fisher information of :math:`q` in :math:`\gamma = (\mu, \ell, C)` is block
diagonal between :math:`\mu` and :math:`(\ell, C)`: the :math:`\mu`-block is
:math:`\Sigma^{-1}` (so its inverse is :func:`cov_matvec`) and the covariance block
has the quadratic form :math:`\frac12 \operatorname{tr}(\Sigma^{-1} d\Sigma\,
\Sigma^{-1} d\Sigma)`. :func:`fisher_vp` applies the whole Fisher exactly,
:func:`fisher_diagonal` gives its exact diagonal and :func:`fisher_solve` inverts it
(exactly on the mean block, by conjugate gradients on the covariance block).

All functions are pure and work under ``jit`` and ``vmap``; shapes are checked at
trace time.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from blackjax.types import Array, ArrayLikeTree, ArrayTree, PRNGKey
from jax.flatten_util import ravel_pytree
from jax.scipy.linalg import cho_solve, solve_triangular

from flatjax._util import (
    check_matching_tree,
    check_positive_int,
    concrete_or_none,
    normal_like,
)

__all__ = [
    "LowRankGaussian",
    "from_swag_moments",
    "isotropic",
    "rank",
    "sample",
    "sample_noise",
    "reparameterize",
    "noise_offset",
    "sample_n",
    "log_prob",
    "entropy",
    "cov_matvec",
    "precision_matvec",
    "logdet",
    "kl",
    "kl_to_isotropic",
    "fisher_vp",
    "fisher_diagonal",
    "fisher_solve",
    "project_out_rotations",
    "to_dense",
]


class LowRankGaussian(NamedTuple):
    """Parameters ``(mu, l, C)`` of ``N(mu, diag(exp(2 l)) / 2 + C C^T / (2 (K - 1)))``.

    mean
        The mean :math:`\\mu`, a pytree shaped like the model's parameters.
    log_scale
        :math:`\\ell = \\log\\sigma`, same structure and shapes as ``mean``.
    deviations
        :math:`C`: each leaf has the shape of the matching ``mean`` leaf plus a
        trailing axis of length ``K >= 2`` (the same ``K`` in every leaf).

    The tuple is itself a pytree, so gradients, Fisher-vector products and
    natural-gradient steps with respect to ``q`` are ``LowRankGaussian`` too.
    """

    mean: ArrayTree
    log_scale: ArrayTree
    deviations: ArrayTree


# --------------------------------------------------------------------------- validation


def _path(path) -> str:
    return jax.tree_util.keystr(path) or "<root>"


def _check_like(name: str, tree: ArrayLikeTree, mean: ArrayLikeTree) -> None:
    """Raise unless ``tree`` has the structure and leaf shapes of the mean."""
    check_matching_tree(name, tree, "mean", mean)


def rank(q: LowRankGaussian, name: str = "q") -> int:
    """Check that ``q`` is a valid :class:`LowRankGaussian` and return its rank ``K``.

    Raises ``ValueError`` naming the leaf path when ``log_scale`` or ``deviations``
    does not match ``mean``, and naming ``num_columns`` when ``K < 2``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> rank(isotropic({"w": jnp.zeros((2, 3))}, 1.0, num_columns=4))
    4
    """
    if not isinstance(q, LowRankGaussian):
        raise TypeError(f"`{name}` must be a LowRankGaussian, got {type(q).__name__}")
    mean, log_scale, deviations = q
    leaves = jax.tree_util.tree_leaves_with_path(mean)
    if not leaves:
        raise ValueError(f"`{name}.mean` is an empty pytree")
    _check_like(f"{name}.log_scale", log_scale, mean)
    if jax.tree.structure(deviations) != jax.tree.structure(mean):
        raise ValueError(
            f"`{name}.deviations` must have the pytree structure of the mean "
            f"{jax.tree.structure(mean)}, got {jax.tree.structure(deviations)}"
        )
    k = None
    for (path, m), c in zip(leaves, jax.tree.leaves(deviations), strict=True):
        shape, cshape = jnp.shape(m), jnp.shape(c)
        if len(cshape) != len(shape) + 1 or cshape[:-1] != shape:
            raise ValueError(
                f"`{name}.deviations` leaf {_path(path)} has shape {cshape}, expected the "
                f"mean's shape {shape} plus a trailing axis of K columns"
            )
        if k is None:
            k = cshape[-1]
        elif cshape[-1] != k:
            raise ValueError(
                f"`{name}.deviations` leaf {_path(path)} has {cshape[-1]} columns, "
                f"other leaves have K={k}: every leaf must have the same K"
            )
    if k < 2:
        raise ValueError(
            f"`num_columns` (K) must be >= 2 for the SWAG normalisation C C^T / (2(K-1)), got K={k}"
        )
    return k


# --------------------------------------------------------------------------- constructors


def from_swag_moments(
    mean: ArrayLikeTree,
    sq_mean: ArrayLikeTree,
    deviations: ArrayLikeTree,
    min_variance: float = 1e-10,
) -> LowRankGaussian:
    """The SWAG posterior ``N(mean, Sigma_diag / 2 + D D^T / (2 (K - 1)))``.

    SWAG (Maddox et al., 2019) keeps the running first and second moments of the
    SGD iterates and the deviations ``D`` of the last ``K`` iterates from the running
    mean, and uses :math:`\\Sigma_{SWAG} = \\frac12 \\Sigma_{diag} + \\frac12
    \\frac{D D^\\top}{K - 1}` with :math:`\\Sigma_{diag} = \\operatorname{diag}(
    \\overline{\\theta^2} - \\bar\\theta^2)`. In this module's parameterisation that is
    :math:`\\sigma^2 = \\overline{\\theta^2} - \\bar\\theta^2` (clipped below at
    ``min_variance``) and :math:`C = D`.

    Parameters
    ----------
    mean, sq_mean
        Running means of the iterates and of their squares (pytrees of equal shapes).
    deviations
        ``D``, each leaf of shape ``leaf.shape + (K,)`` with ``K >= 2``.
    min_variance
        Lower clip of the diagonal variance, which round-off can make zero or
        negative. SWAG's reference code clips at ``1e-30``; that is too small for
        the Woodbury solves in float32, hence the larger default.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> q = from_swag_moments(jnp.ones(3), jnp.full(3, 1.25), jnp.zeros((3, 2)))
    >>> jnp.exp(2 * q.log_scale)
    Array([0.25, 0.25, 0.25], dtype=float32)
    """
    floor = concrete_or_none(min_variance)
    if floor is not None and not floor > 0:
        raise ValueError(f"`min_variance` must be > 0, got {min_variance!r}")
    mean = jax.tree.map(jnp.asarray, mean)
    _check_like("sq_mean", sq_mean, mean)
    var = jax.tree.map(lambda m, s: jnp.maximum(s - m**2, min_variance), mean, sq_mean)
    log_scale = jax.tree.map(lambda v: 0.5 * jnp.log(v), var)
    q = LowRankGaussian(mean, log_scale, jax.tree.map(jnp.asarray, deviations))
    rank(q)
    return q


def isotropic(mean: ArrayLikeTree, variance: float, num_columns: int = 2) -> LowRankGaussian:
    """``N(mean, variance * I)``, with ``K = num_columns`` zero deviation columns.

    ``sigma^2 = 2 * variance`` (the diagonal part is ``sigma^2 / 2``) and ``C = 0``.
    At ``C = 0`` the covariance does not depend on ``C`` to first order: the
    ``C``-block of the Fisher is zero and the expected gradient in ``C`` vanishes,
    so optimisation started here only leaves ``C = 0`` through gradient noise.
    Start from a SWAG posterior (:func:`from_swag_moments`) or small random
    deviations to learn a low-rank part.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> q = isotropic({"w": jnp.zeros(2)}, variance=0.5, num_columns=3)
    >>> q.deviations["w"].shape, cov_matvec(q, {"w": jnp.ones(2)})["w"]
    ((2, 3), Array([0.5, 0.5], dtype=float32))
    """
    k = check_positive_int("num_columns", num_columns)
    if k < 2:
        raise ValueError(f"`num_columns` (K) must be >= 2, got {num_columns!r}")
    v = concrete_or_none(variance)
    if v is not None and not v > 0:
        raise ValueError(f"`variance` must be > 0, got {variance!r}")
    mean = jax.tree.map(jnp.asarray, mean)
    log_scale = jax.tree.map(
        lambda m: jnp.full(jnp.shape(m), 0.5 * jnp.log(2 * jnp.asarray(variance, m.dtype))),
        mean,
    )
    deviations = jax.tree.map(lambda m: jnp.zeros(jnp.shape(m) + (k,), m.dtype), mean)
    return LowRankGaussian(mean, log_scale, deviations)


# --------------------------------------------------------------------------- linear algebra


def _sum(tree: ArrayTree) -> Array:
    return functools.reduce(operator.add, jax.tree.leaves(tree))


def _sum_leaves(tree: ArrayTree) -> Array:
    """The sum of equally shaped small leaves (per-leaf ``K x K`` Gram matrices, ``U^T v``),
    materialised once.

    A chain of adds (or a reduction, which XLA rewrites into adds) is fused into every
    element of the large consumers of the sum (``U (U^T X)``), recomputing all leaves'
    terms there: 7x slower for ``U (U^T X)`` on a 784-512-512 MLP on CPU. A matrix
    product is never fused into its consumers, so the sum is taken as one: row 0 of
    ``ones(2, L) @ stack(leaves)`` (two rows: XLA rewrites a vector-matrix product
    into a fusible reduction).
    """
    leaves = jax.tree.leaves(tree)
    if len(leaves) == 1:
        return leaves[0]
    stacked = jnp.stack(leaves).reshape(len(leaves), -1)
    ones = jnp.ones((2, len(leaves)), stacked.dtype)
    return (ones @ stacked)[0].reshape(jnp.shape(leaves[0]))


def _vdot(x: ArrayTree, y: ArrayTree) -> Array:
    """``<x, y>`` over all leaves."""
    return _sum(jax.tree.map(lambda a, b: jnp.sum(a * b), x, y))


def _folded_gram(a: Array, b: Array, fold: int) -> Array:
    """``a^T b`` for 2-D ``a`` (n, k1) and ``b`` (n, k2), with ``fold`` rows folded into columns.

    XLA:CPU's matrix product runs ``a^T b`` with a short output (``k1, k2 <= K``) well
    below memory speed. Folding ``fold`` consecutive rows into the columns gives a
    ``(fold k1) x (fold k2)`` product over ``n / fold`` rows (``fold`` times the
    arithmetic, on a shape that streams at memory speed) whose diagonal blocks sum to
    ``a^T b``. Measured on CPU for n = 401,408, K = 5: ``U^T v`` 5x faster with
    ``fold=8``, ``U^T V`` 1.4x faster with ``fold=2``.
    """
    n, k1 = a.shape
    k2 = b.shape[1]
    if fold == 1 or n % fold or n < 64 * fold:
        return a.T @ b
    x = a.reshape(n // fold, fold * k1).T @ b.reshape(n // fold, fold * k2)
    x = x.reshape(fold, k1, fold, k2)
    return _sum([x[j, :, j, :] for j in range(fold)])


def _rmatvec(factor: ArrayTree, v: ArrayTree) -> Array:
    """``U^T v`` in ``R^K`` for ``U`` stored per leaf as ``leaf.shape + (K,)``."""

    def leaf(u, x):
        return _folded_gram(x.reshape(-1, 1), u.reshape(-1, u.shape[-1]), fold=8)[0]

    return _sum_leaves(jax.tree.map(leaf, factor, v))


# XLA:CPU runs contractions and reductions over a short minor axis (the K columns
# of a factor leaf) as scalar loops, several times slower than one pass over the
# data (measured: U @ X for a K x K X 6x, sum over K 3x, X^T Y as an N-d tensordot
# 6x slower than the forms below). Hence: products with a K x K matrix and sums over
# K as K (or K^2) fused column axpys, Gram matrices as row-folded 2-D products
# (:func:`_folded_gram`), and sums over leaves as one product (:func:`_sum_leaves`).


def _columns(u: Array) -> list[Array]:
    return [u[..., k] for k in range(u.shape[-1])]


def _matmul(factor: ArrayTree, x: Array) -> ArrayTree:
    """``U x`` for ``x`` of shape ``(K,)`` (a pytree like the mean) or ``(K, J)``.

    Large leaves as ``K`` fused column axpys; small leaves (below ``_AXPY_MIN`` entries,
    e.g. normalisation-layer scales) as a matrix product, which XLA never fuses into
    its consumers: fused, their few numbers would be recomputed for every element of
    the activations they scale (measured 3x slower for two gradients of a ResNet whose
    norm layers are drawn from ``q``).
    """

    def leaf(u):
        if math.prod(u.shape) < _AXPY_MIN:
            return u @ x
        if jnp.ndim(x) == 1:
            return _sum([c * x[k] for k, c in enumerate(_columns(u))])
        return _sum([u[..., k : k + 1] * x[k] for k in range(u.shape[-1])])

    return jax.tree.map(leaf, factor)


_AXPY_MIN = 2**15


def _row_sum(x: Array) -> Array:
    """``sum(x, axis=-1)`` over the K columns of a factor leaf."""
    return _sum(_columns(x))


def _row_quadratic(x: Array, m: Array) -> Array:
    """``sum_ij x[..., i] m[i, j] x[..., j]`` for a factor leaf ``x`` and a ``K x K`` ``m``."""
    cols = _columns(x)
    return _sum([m[i, j] * a * b for i, a in enumerate(cols) for j, b in enumerate(cols)])


def _gram(x: ArrayTree, y: ArrayTree) -> Array:
    """``X^T Y`` (``K1 x K2``) for two factors stored per leaf."""

    def leaf(a, b):
        return _folded_gram(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]), fold=2)

    return _sum_leaves(jax.tree.map(leaf, x, y))


class _Factors(NamedTuple):
    """``Sigma = diag(a) + U U^T``, ``W = A^{-1} U``, ``chol = cholesky(I + U^T W)``."""

    diag: ArrayTree
    factor: ArrayTree
    scaled: ArrayTree
    chol: Array
    size: int


def _factors(q: LowRankGaussian, name: str = "q") -> _Factors:
    k = rank(q, name)
    c = 1.0 / math.sqrt(2.0 * (k - 1))
    diag = jax.tree.map(lambda ell: 0.5 * jnp.exp(2 * ell), q.log_scale)
    factor = jax.tree.map(lambda d: c * d, q.deviations)
    scaled = jax.tree.map(lambda u, a: u / a[..., None], factor, diag)
    gram = _gram(scaled, factor)
    chol = jnp.linalg.cholesky(jnp.eye(k, dtype=gram.dtype) + gram)
    size = sum(math.prod(jnp.shape(x)) for x in jax.tree.leaves(q.mean))
    return _Factors(diag, factor, scaled, chol, size)


def _precision(f: _Factors, v: ArrayTree) -> ArrayTree:
    y = jax.tree.map(jnp.divide, v, f.diag)
    s = cho_solve((f.chol, True), _rmatvec(f.factor, y))
    return jax.tree.map(jnp.subtract, y, _matmul(f.scaled, s))


def _logdet(q: LowRankGaussian, f: _Factors) -> Array:
    # sum log a_i = sum (2 l_i - log 2); log|M| = 2 sum log L_kk
    log_diag = _sum(jax.tree.map(lambda ell: 2 * jnp.sum(ell), q.log_scale))
    return log_diag - f.size * math.log(2.0) + 2 * jnp.sum(jnp.log(jnp.diagonal(f.chol)))


def cov_matvec(q: LowRankGaussian, v: ArrayLikeTree) -> ArrayTree:
    """``Sigma v`` in ``O(PK)``; also the inverse of the Fisher's mean block.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> q = LowRankGaussian(jnp.zeros(2), jnp.zeros(2), jnp.array([[1.0, -1.0], [0.0, 0.0]]))
    >>> cov_matvec(q, jnp.array([1.0, 1.0]))  # diag(1/2, 1/2) + [[1, 0], [0, 0]]
    Array([1.5, 0.5], dtype=float32)
    """
    k = rank(q)
    _check_like("v", v, q.mean)
    c = 1.0 / (2.0 * (k - 1))
    coef = c * _rmatvec(q.deviations, v)
    low_rank = _matmul(q.deviations, coef)
    return jax.tree.map(lambda ell, x, y: 0.5 * jnp.exp(2 * ell) * x + y, q.log_scale, v, low_rank)


def precision_matvec(q: LowRankGaussian, v: ArrayLikeTree) -> ArrayTree:
    """``Sigma^{-1} v`` by the Woodbury identity (a ``K x K`` Cholesky solve).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> q = LowRankGaussian(jnp.zeros(2), jnp.zeros(2), jnp.array([[1.0, -1.0], [0.0, 0.0]]))
    >>> precision_matvec(q, jnp.array([1.5, 0.5])).round(4)
    Array([1., 1.], dtype=float32)
    """
    f = _factors(q)
    _check_like("v", v, q.mean)
    return _precision(f, v)


def logdet(q: LowRankGaussian) -> Array:
    """``log |Sigma|`` by the matrix-determinant lemma, ``O(PK^2 + K^3)``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> q = isotropic(jnp.zeros(4), variance=2.0, num_columns=2)
    >>> logdet(q).round(4)  # 4 log 2
    Array(2.7726, dtype=float32)
    """
    return _logdet(q, _factors(q))


# --------------------------------------------------------------------------- densities


def sample_noise(rng_key: PRNGKey, q: LowRankGaussian) -> tuple[ArrayTree, Array]:
    """The standard-normal noise ``(z1, z2)`` of one reparameterised draw from ``q``.

    ``z1 ~ N(0, I_P)`` is drawn leaf by leaf in each leaf's dtype (like ``q.mean``);
    ``z2 ~ N(0, I_K)`` is shared by all leaves. ``reparameterize(q, sample_noise(key,
    q))`` is ``sample(key, q)``. Draw the noise once and reparameterise several
    distributions with it (common random numbers, e.g. ``q`` and a perturbed ``q``
    in one SA-BMA step): the draw of ``z1`` costs about as much as a gradient of a
    small network on CPU.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> q = isotropic(jnp.zeros(3), 1.0, num_columns=4)
    >>> z1, z2 = sample_noise(jax.random.key(0), q)
    >>> z1.shape, z2.shape
    ((3,), (4,))
    """
    k = rank(q)
    key_diag, key_low = jax.random.split(rng_key)
    z1 = normal_like(key_diag, q.mean)
    dtype = jnp.result_type(*jax.tree.leaves(q.deviations))
    return z1, jax.random.normal(key_low, (k,), dtype)


def noise_offset(q: LowRankGaussian, noise: tuple[ArrayTree, Array]) -> ArrayTree:
    """``sigma z1 / sqrt(2) + C z2 / sqrt(2 (K - 1))``: the draw's offset from the mean.

    ``reparameterize(q, noise)`` is ``q.mean + noise_offset(q, noise)``. Where only
    the mean is trained, compute the offset once and reuse it for every gradient in
    the mean (an ``O(PK)`` pass saved per gradient).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> q = LowRankGaussian(jnp.ones(2), jnp.zeros(2), jnp.array([[1.0, -1.0], [0.0, 0.0]]))
    >>> noise_offset(q, (jnp.zeros(2), jnp.array([1.0, 0.0])))  # C z2 / sqrt(2)
    Array([0.70710677, 0.        ], dtype=float32)
    """
    k = rank(q)
    z1, z2 = noise
    _check_like("noise[0]", z1, q.mean)
    if jnp.shape(z2) != (k,):
        raise ValueError(f"`noise[1]` must have shape ({k},) (K of q), got {jnp.shape(z2)}")
    coef = z2 / math.sqrt(2.0 * (k - 1))
    half = 1.0 / math.sqrt(2.0)

    def leaf(ell, z, u):
        diag = half * jnp.exp(ell) * z
        if math.prod(u.shape) < _AXPY_MIN:
            # one matrix product [C, diag] @ [coef, 1], which XLA materialises: fused
            # instead, the draw of z (threefry) and the exp of a small leaf (a norm
            # layer's scale, a bias) would be recomputed for every element of the
            # activations it scales (measured 5x slower for two gradients of a ResNet
            # whose norm layers are drawn from q)
            column = jnp.concatenate([u, diag[..., None]], axis=-1)
            return column @ jnp.append(coef, jnp.ones((1,), coef.dtype)).astype(u.dtype)
        return diag + _matmul(u, coef)

    return jax.tree.map(leaf, q.log_scale, z1, q.deviations)


def reparameterize(q: LowRankGaussian, noise: tuple[ArrayTree, Array]) -> ArrayTree:
    """``mu + sigma z1 / sqrt(2) + C z2 / sqrt(2 (K - 1))`` for ``noise = (z1, z2)``.

    Differentiable in ``q`` (the reparameterisation trick); see :func:`sample_noise`
    and :func:`noise_offset`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> q = LowRankGaussian(jnp.ones(2), jnp.zeros(2), jnp.array([[1.0, -1.0], [0.0, 0.0]]))
    >>> reparameterize(q, (jnp.zeros(2), jnp.array([1.0, 0.0])))  # mu + C z2 / sqrt(2)
    Array([1.7071068, 1.       ], dtype=float32)
    """
    return jax.tree.map(jnp.add, q.mean, noise_offset(q, noise))


def sample(rng_key: PRNGKey, q: LowRankGaussian) -> ArrayTree:
    """One reparameterised draw ``mu + sigma z1 / sqrt(2) + C z2 / sqrt(2 (K - 1))``.

    ``z1`` is drawn leaf by leaf in each leaf's dtype; one ``z2 ~ N(0, I_K)`` is shared
    by all leaves. Differentiable in ``q`` (the reparameterisation trick). The same as
    ``reparameterize(q, sample_noise(rng_key, q))``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> q = isotropic({"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}, 1.0, num_columns=5)
    >>> jax.tree.map(jnp.shape, sample(jax.random.key(0), q))
    {'b': (3,), 'w': (2, 3)}
    """
    return reparameterize(q, sample_noise(rng_key, q))


def sample_n(
    rng_key: PRNGKey, q: LowRankGaussian, num_samples: int, antithetic: bool = False
) -> ArrayTree:
    """``num_samples`` draws, stacked on a new leading axis of every leaf.

    Independent draws by default. ``antithetic=True`` draws ``num_samples / 2``
    independently and appends their mirrors ``2 mu - w`` (same order): every draw still
    has ``q``'s marginal and the draws' mean is exactly ``mu``, so a Monte-Carlo
    average of a function that is near-linear over ``q`` (a BMA over a narrow ``q``)
    loses its first-order noise. ``num_samples`` must then be even.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> q = isotropic(jnp.zeros(3), 1.0, num_columns=2)
    >>> sample_n(jax.random.key(0), q, 4).shape
    (4, 3)
    >>> draws = sample_n(jax.random.key(0), q, 4, antithetic=True)
    >>> bool(jnp.allclose(draws.mean(0), 0.0, atol=1e-6))
    True
    """
    num_samples = check_positive_int("num_samples", num_samples)
    if not isinstance(antithetic, bool):
        raise TypeError(f"`antithetic` must be a bool, got {antithetic!r}")
    if antithetic and num_samples % 2:
        raise ValueError(f"`num_samples` must be even with antithetic=True, got {num_samples}")
    keys = jax.random.split(rng_key, num_samples // 2 if antithetic else num_samples)
    draws = jax.vmap(sample, in_axes=(0, None))(keys, q)
    if not antithetic:
        return draws
    return jax.tree.map(lambda w, m: jnp.concatenate([w, 2 * m - w]), draws, q.mean)


def log_prob(q: LowRankGaussian, w: ArrayLikeTree) -> Array:
    """``log q(w)``, with the Woodbury solve and the determinant lemma.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> log_prob(isotropic(jnp.zeros(2), 1.0), jnp.zeros(2))  # -log(2 pi)
    Array(-1.837877, dtype=float32)
    """
    f = _factors(q)
    _check_like("w", w, q.mean)
    r = jax.tree.map(jnp.subtract, w, q.mean)
    maha = _vdot(r, _precision(f, r))
    return -0.5 * (f.size * math.log(2 * math.pi) + _logdet(q, f) + maha)


def entropy(q: LowRankGaussian) -> Array:
    """Differential entropy ``(P (1 + log 2 pi) + log |Sigma|) / 2``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> entropy(isotropic(jnp.zeros(1), 1.0))  # (1 + log 2 pi) / 2
    Array(1.4189385, dtype=float32)
    """
    f = _factors(q)
    return 0.5 * (f.size * (1.0 + math.log(2 * math.pi)) + _logdet(q, f))


def kl(q1: LowRankGaussian, q2: LowRankGaussian) -> Array:
    """``KL(q1 || q2)`` in ``O(P K1 K2 + P K2^2 + K2^3)``, never forming ``P x P``.

    .. math::

        \\mathrm{KL} = \\tfrac12\\big[\\operatorname{tr}(\\Sigma_2^{-1}\\Sigma_1)
            + \\delta^\\top\\Sigma_2^{-1}\\delta - P
            + \\log|\\Sigma_2| - \\log|\\Sigma_1|\\big],\\quad \\delta = \\mu_1 - \\mu_2.

    With :math:`\\Sigma_j = A_j + U_j U_j^\\top`, :math:`W_2 = A_2^{-1} U_2` and
    :math:`M_2 = I + U_2^\\top W_2`, Woodbury gives

    .. math::

        \\operatorname{tr}(\\Sigma_2^{-1}\\Sigma_1) = \\textstyle\\sum_i a_{1i}/a_{2i}
            - \\operatorname{tr}(M_2^{-1} W_2^\\top A_1 W_2)
            + \\sum U_1^2 / a_2 - \\operatorname{tr}(G^\\top M_2^{-1} G),
            \\quad G = W_2^\\top U_1,

    only ``K x K`` Gram matrices and solves. The two ranks may differ; the means
    must have the same structure and shapes.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> kl(isotropic(jnp.zeros(3), 1.0), isotropic(jnp.ones(3), 1.0))  # |delta|^2 / 2
    Array(1.5, dtype=float32)
    """
    f1 = _factors(q1, "q1")
    f2 = _factors(q2, "q2")
    _check_like("q2.mean", q2.mean, q1.mean)
    m_inv = lambda x: cho_solve((f2.chol, True), x)
    trace_diag = _sum(jax.tree.map(lambda a1, a2: jnp.sum(a1 / a2), f1.diag, f2.diag))
    weighted = jax.tree.map(lambda w, a1: w * a1[..., None], f2.scaled, f1.diag)
    trace_diag -= jnp.trace(m_inv(_gram(f2.scaled, weighted)))
    trace_low = _sum(jax.tree.map(lambda u, a2: jnp.sum(u**2 / a2[..., None]), f1.factor, f2.diag))
    g = _gram(f2.scaled, f1.factor)
    trace_low -= jnp.sum(g * m_inv(g))
    delta = jax.tree.map(jnp.subtract, q1.mean, q2.mean)
    maha = _vdot(delta, _precision(f2, delta))
    return 0.5 * (trace_diag + trace_low + maha - f1.size + _logdet(q2, f2) - _logdet(q1, f1))


def kl_to_isotropic(
    q: LowRankGaussian, prior_variance: float, prior_mean: ArrayLikeTree | None = None
) -> Array:
    """``KL(q || N(prior_mean, prior_variance I))`` (``prior_mean`` defaults to 0).

    ``(tr Sigma + |mu - m|^2) / (2 s) - P / 2 + P log(s) / 2 - log|Sigma| / 2`` with
    ``tr Sigma = sum sigma^2 / 2 + |C|_F^2 / (2 (K - 1))``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> kl_to_isotropic(isotropic(jnp.zeros(5), 2.0), prior_variance=2.0)
    Array(0., dtype=float32)
    """
    f = _factors(q)
    s = concrete_or_none(prior_variance)
    if s is not None and not s > 0:
        raise ValueError(f"`prior_variance` must be > 0, got {prior_variance!r}")
    if prior_mean is None:
        sq_dist = _vdot(q.mean, q.mean)
    else:
        _check_like("prior_mean", prior_mean, q.mean)
        delta = jax.tree.map(jnp.subtract, q.mean, prior_mean)
        sq_dist = _vdot(delta, delta)
    trace = _sum(jax.tree.map(jnp.sum, f.diag)) + _vdot(f.factor, f.factor)
    return 0.5 * (
        (trace + sq_dist) / prior_variance
        - f.size
        + f.size * jnp.log(prior_variance)
        - _logdet(q, f)
    )


# --------------------------------------------------------------------------- Fisher


class _FisherFactors(NamedTuple):
    """What every Fisher computation at ``q`` shares (``B = Sigma^{-1}``)."""

    base: _Factors
    m_inv: Array  # M^{-1}
    root: ArrayTree  # R = W L^{-T}, so that B = A^{-1} - R R^T
    b_factor: ArrayTree  # B U = W M^{-1}
    b_diag: ArrayTree  # diag(B)
    scale: float  # 1 / sqrt(2 (K - 1)), U = scale * C


def _fisher_factors(q: LowRankGaussian, name: str = "q") -> _FisherFactors:
    k = rank(q, name)
    f = _factors(q, name)
    eye = jnp.eye(k, dtype=f.chol.dtype)
    m_inv = cho_solve((f.chol, True), eye)
    root = _matmul(f.scaled, solve_triangular(f.chol, eye, lower=True).T)
    b_diag = jax.tree.map(lambda a, r: 1.0 / a - _row_sum(r**2), f.diag, root)
    b_factor = _matmul(f.scaled, m_inv)
    return _FisherFactors(f, m_inv, root, b_factor, b_diag, 1.0 / math.sqrt(2.0 * (k - 1)))


def _fisher_vp(ff: _FisherFactors, t: LowRankGaussian) -> LowRankGaussian:
    """``F t`` in closed form, ``O(PK^2)``.

    ``F t`` is the gradient of ``t^T F t / 2 = dmu^T B dmu / 2 + tr(B dS B dS) / 4``
    with ``dS = E + Z U^T + U Z^T``, ``E = diag(e)``, ``e = 2 a dl``, ``Z = s dC``,
    ``s = 1 / sqrt(2 (K - 1))``. With ``G = B dS B`` (symmetric):
    ``(F t)_mu = B dmu``, ``(F t)_l = a * diag(G)`` and ``(F t)_C = s G U``, where

    * ``G U = B V`` with ``V = dS (B U) = e * Y + Z (I - M^{-1}) + U (Z^T Y)``,
      ``Y = B U = W M^{-1}`` and ``U^T B U = I - M^{-1}``;
    * ``diag(G)_i = b_i^T dS b_i`` (``b_i`` the rows of ``B = A^{-1} - R R^T``)
      ``= e_i / a_i^2 - 2 e_i |r_i|^2 / a_i + r_i^T (R^T E R) r_i
      + 2 <(B Z)_i, Y_i>``.
    """
    f = ff.base
    k = ff.m_inv.shape[0]
    eye = jnp.eye(k, dtype=ff.m_inv.dtype)

    def b_times(x):  # B X for a factor X stored per leaf, as (A^{-1} - R R^T) X
        rx = _gram(ff.root, x)
        rrx = _matmul(ff.root, rx)
        return jax.tree.map(lambda v, a, r: v / a[..., None] - r, x, f.diag, rrx)

    e = jax.tree.map(lambda a, d: 2.0 * a * d, f.diag, t.log_scale)
    z = jax.tree.map(lambda d: ff.scale * d, t.deviations)
    bz = b_times(z)
    ere = _gram(ff.root, jax.tree.map(lambda e, r: e[..., None] * r, e, ff.root))
    diag_g = jax.tree.map(
        lambda e, a, r, bz, y: (
            e / a**2
            - 2.0 * e / a * _row_sum(r**2)
            + _row_quadratic(r, ere)
            + 2.0 * _row_sum(bz * y)
        ),
        e,
        f.diag,
        ff.root,
        bz,
        ff.b_factor,
    )
    zy = _gram(z, ff.b_factor)
    one_minus = eye - ff.m_inv
    v = jax.tree.map(
        lambda e, y, z1, u1: e[..., None] * y + z1 + u1,
        e,
        ff.b_factor,
        _matmul(z, one_minus),
        _matmul(f.factor, zy),
    )
    return LowRankGaussian(
        mean=_precision(f, t.mean),
        log_scale=jax.tree.map(jnp.multiply, f.diag, diag_g),
        deviations=jax.tree.map(lambda x: ff.scale * x, b_times(v)),
    )


def _check_tangent(name: str, t: LowRankGaussian, q: LowRankGaussian) -> None:
    if rank(t, name) != rank(q):
        raise ValueError(f"`{name}` must have the K={rank(q)} columns of `q`, got {rank(t)}")
    _check_like(f"{name}.mean", t.mean, q.mean)


def fisher_vp(q: LowRankGaussian, tangent: LowRankGaussian) -> LowRankGaussian:
    """Exact Fisher-vector product ``F(gamma) t`` for ``gamma = (mu, l, C)``.

    The Fisher information of a Gaussian family has the quadratic form

    .. math::

        t^\\top F t = d\\mu^\\top \\Sigma^{-1} d\\mu + \\tfrac12
            \\operatorname{tr}(\\Sigma^{-1} d\\Sigma\\, \\Sigma^{-1} d\\Sigma),
        \\quad d\\Sigma = \\operatorname{diag}(\\sigma^2 \\odot d\\ell)
            + \\frac{dC\\,C^\\top + C\\,dC^\\top}{2(K-1)},

    (no cross term between :math:`\\mu` and :math:`\\Sigma`). The trace is expanded
    with the Woodbury form of :math:`\\Sigma^{-1}`, and ``F t``, the gradient of
    ``t^T F t / 2``, is written out in closed form with ``K x K`` Gram matrices:
    ``O(PK^2)`` time, ``O(PK)`` memory, nothing of size ``P x P``.

    ``F`` is singular: ``C -> C R`` for any orthogonal ``R`` leaves ``Sigma``
    unchanged, so the ``K (K - 1) / 2`` directions ``dC = C S`` (``S``
    antisymmetric) are in its null space, and the whole ``C``-block vanishes at
    ``C = 0``. See :func:`fisher_solve` for the damping this calls for.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> q = isotropic(jnp.zeros(3), 0.5)
    >>> t = jax.tree.map(jnp.ones_like, q)
    >>> jax.jit(fisher_vp)(q, t).mean  # Sigma^{-1} dmu
    Array([2., 2., 2.], dtype=float32)
    """
    _check_tangent("tangent", tangent, q)
    ff = _fisher_factors(q)
    return _fisher_vp(ff, tangent)


def fisher_diagonal(q: LowRankGaussian) -> LowRankGaussian:
    """The exact diagonal of the Fisher, in ``O(PK^2 + K^3)``.

    With :math:`B = \\Sigma^{-1}`, :math:`\\Sigma = A + UU^\\top`,
    :math:`U = C/\\sqrt{2(K-1)}`, :math:`W = A^{-1}U`, :math:`M = I + U^\\top W`:

    * mean: :math:`B_{ii} = 1/a_i - (W M^{-1} W^\\top)_{ii}`;
    * log-scale: :math:`2 a_i^2 B_{ii}^2` (:math:`\\partial\\Sigma_{ii}/\\partial\\ell_i
      = 2a_i`);
    * deviations: :math:`\\frac{1}{2(K-1)}\\big[(W M^{-1})_{ik}^2 + B_{ii}
      (1 - (M^{-1})_{kk})\\big]`, using :math:`BU = WM^{-1}` and
      :math:`U^\\top B U = I - M^{-1}`.

    Use it as a Jacobi preconditioner or as a cheap diagonal approximation of the
    Fisher (``g / fisher_diagonal(q)`` leaf by leaf). The ``C`` entries are zero
    where ``C = 0``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> d = fisher_diagonal(isotropic(jnp.zeros(2), 0.5))
    >>> d.mean, d.log_scale
    (Array([2., 2.], dtype=float32), Array([2., 2.], dtype=float32))
    """
    return _fisher_diagonal(_fisher_factors(q))


def _fisher_diagonal(ff: _FisherFactors) -> LowRankGaussian:
    one_minus = 1.0 - jnp.diagonal(ff.m_inv)
    c = ff.scale**2
    return LowRankGaussian(
        mean=ff.b_diag,
        log_scale=jax.tree.map(lambda a, b: 2.0 * (a * b) ** 2, ff.base.diag, ff.b_diag),
        deviations=jax.tree.map(
            lambda y, b: c * (y**2 + b[..., None] * one_minus), ff.b_factor, ff.b_diag
        ),
    )


def project_out_rotations(q: LowRankGaussian, g: LowRankGaussian) -> LowRankGaussian:
    """Remove from ``g`` its component along the Fisher's null space ``dC = C S``.

    ``C -> C R`` (``R`` orthogonal) leaves :math:`\\Sigma` unchanged, so the
    directions ``(0, 0, C S)`` with ``S`` antisymmetric are in the null space of the
    Fisher (for ``C`` of full column rank and ``P`` well above ``K``, all of it).
    The gradient of any function of :math:`(\\mu, \\Sigma)` is orthogonal to them,
    but a Monte Carlo estimate is not. This returns ``g`` with
    ``g.deviations - C S*`` where ``S*`` minimises ``|g.deviations - C S|_F`` over
    antisymmetric ``S``: with :math:`A = C^\\top C = V \\Lambda V^\\top` it solves
    :math:`AS + SA = C^\\top G - G^\\top C` as :math:`\\tilde S_{ij} = \\tilde B_{ij} /
    (\\lambda_i + \\lambda_j)` in the eigenbasis (zero where both eigenvalues
    vanish), ``O(PK^2 + K^3)``. The mean and log-scale parts are unchanged.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> c = jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    >>> q = LowRankGaussian(jnp.zeros(3), jnp.zeros(3), c)
    >>> s = jnp.array([[0.0, 1.0], [-1.0, 0.0]])
    >>> g = LowRankGaussian(jnp.ones(3), jnp.ones(3), c @ s)  # a pure rotation of C
    >>> jnp.abs(project_out_rotations(q, g).deviations).max() < 1e-6
    Array(True, dtype=bool)
    """
    _check_tangent("g", g, q)
    a = _gram(q.deviations, q.deviations)
    cg = _gram(q.deviations, g.deviations)
    lam, v = jnp.linalg.eigh(a)
    b = v.T @ (cg - cg.T) @ v
    denom = lam[:, None] + lam[None, :]
    floor = jnp.finfo(denom.dtype).eps * a.shape[0] * jnp.maximum(lam[-1], 0.0)
    s = v @ jnp.where(denom > floor, b / jnp.where(denom > floor, denom, 1.0), 0.0) @ v.T
    rotation = _matmul(q.deviations, s)
    return g._replace(deviations=jax.tree.map(jnp.subtract, g.deviations, rotation))


def fisher_solve(
    q: LowRankGaussian,
    g: LowRankGaussian,
    damping: float = 1e-4,
    relative_damping: float = 0.0,
    project_rotations: bool = True,
    tol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int = 100,
    precondition: bool = True,
    x0: LowRankGaussian | None = None,
    return_quadratic_form: bool = False,
) -> LowRankGaussian | tuple[LowRankGaussian, Array]:
    """Natural gradient ``F^{-1} g``: exact on the mean block, CG on ``(l, C)``.

    The Fisher is block diagonal. Its mean block is :math:`\\Sigma^{-1}`, so the
    mean part of the result is exactly ``cov_matvec(q, g.mean)`` (``O(PK)``, no
    damping). The covariance block :math:`F_c` is singular (see :func:`fisher_vp`)
    and a Monte Carlo gradient has components in its null space, which a damped
    solve would amplify by ``1 / damping``. So, by default, ``g`` is first
    projected off the rotations of ``C`` (:func:`project_out_rotations`), and the
    block is solved with damping,

    .. math::

        (F_c + \\lambda_r \\operatorname{diag}(F_c) + \\lambda I)\\, x = g_c,

    by :func:`jax.scipy.sparse.linalg.cg` on the exact Fisher-vector product,
    preconditioned by the diagonal of that matrix. The blocks live on very
    different scales (the log-scale diagonal is about 2, the ``C`` diagonal about
    ``1 / (2 (K - 1) a)`` for a diagonal variance ``a``): Levenberg-Marquardt damping
    relative to the diagonal (``relative_damping``, e.g. ``1e-3``) is scale-free and
    typically lets CG converge in tens of iterations; absolute ``damping`` is what
    keeps the system regular where the diagonal vanishes (a zero column of ``C``,
    e.g. :func:`isotropic`, where the whole ``C`` block of the Fisher is zero).

    Parameters
    ----------
    q
        The distribution at which the Fisher is taken.
    g
        A gradient with respect to ``q`` (a ``LowRankGaussian`` pytree).
    damping
        :math:`\\lambda`, added to the covariance block's diagonal.
    relative_damping
        :math:`\\lambda_r`: the covariance block's own diagonal is scaled by
        ``1 + relative_damping``. ``0`` by default (pure Tikhonov damping); in
        float32 with realistic scales use e.g. ``1e-3``: with only a small absolute
        ``damping`` the preconditioned system keeps a condition number of order
        ``diag / damping`` along what is left of the null space after round-off,
        and CG can stall or diverge.
    project_rotations
        Project ``g`` off the null directions ``dC = C S`` first (a no-op for exact
        expected gradients). Without it, those components come back as
        ``g / damping``.
    tol, atol
        CG stops when ``|residual| <= max(tol * |g_c|, atol)`` (unpreconditioned
        residual, Euclidean norm over ``(l, C)``) or after ``maxiter`` iterations.
    maxiter
        Maximum number of CG iterations (one Fisher-vector product each).
    precondition
        Use the diagonal of the damped matrix as a Jacobi preconditioner.
    x0
        Initial guess for the ``(l, C)`` block (its ``mean`` is ignored), e.g. the
        previous step's solution; zeros by default.
    return_quadratic_form
        Also return ``x^T F x`` of the solution ``x`` (the KL-ball metric of SA-BMA). It
        comes from CG's residual ``r = b - (F_c + S) x_c`` (``S`` the damping):
        ``x_c^T F_c x_c = x_c^T (b - r) - x_c^T S x_c``, plus the exact mean part
        ``g_mu^T Sigma g_mu``; no Fisher-vector product beyond CG's own.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> q = LowRankGaussian(jnp.zeros(3), jnp.zeros(3), jnp.eye(3))
    >>> g = jax.tree.map(jnp.ones_like, q)
    >>> x = jax.jit(fisher_solve)(q, g)
    >>> x.mean  # Sigma g, with Sigma = I / 2 + I / 4
    Array([0.75, 0.75, 0.75], dtype=float32)

    For the mean alone (e.g. a SAM-like perturbation of ``mu``), ``cov_matvec`` is
    the whole solve: ``F_mu^{-1} g = Sigma g``.
    """
    _check_tangent("g", g, q)
    if x0 is not None:
        _check_tangent("x0", x0, q)
    for name, value in (("damping", damping), ("relative_damping", relative_damping)):
        v = concrete_or_none(value)
        if v is not None and not v >= 0:
            raise ValueError(f"`{name}` must be >= 0, got {value!r}")
    maxiter = check_positive_int("maxiter", maxiter)
    if project_rotations:
        g = project_out_rotations(q, g)
    unflatten = None
    if len(jax.tree.leaves(q.mean)) > 1 and _num_entries(q.deviations) <= _FLATTEN_MAX:
        (q, unflatten), g = _flatten(q), _flatten(g)[0]
        x0 = None if x0 is None else _flatten(x0)[0]
    ff = _fisher_factors(q)
    zeros_mean = jax.tree.map(jnp.zeros_like, q.mean)
    diag = _fisher_diagonal(ff)
    diag = (diag.log_scale, diag.deviations)
    shift = jax.tree.map(lambda d: relative_damping * d + damping, diag)

    def matvec(x):
        out = _fisher_vp(ff, LowRankGaussian(zeros_mean, *x))
        return jax.tree.map(lambda y, s, z: y + s * z, (out.log_scale, out.deviations), shift, x)

    preconditioner = None
    if precondition:
        # entries whose damped diagonal is exactly zero (C = 0, no damping) stay unscaled
        inv = jax.tree.map(
            lambda d, s: jnp.where(d + s > 0, 1.0 / (d + s), 1.0),
            diag,
            shift,
        )
        preconditioner = lambda x: jax.tree.map(jnp.multiply, inv, x)
    b = (g.log_scale, g.deviations)
    init = None if x0 is None else (x0.log_scale, x0.deviations)
    x, r = _pcg(matvec, b, preconditioner, init, tol, atol, maxiter)
    mean = cov_matvec(q, g.mean)
    solution = LowRankGaussian(mean, *x)
    if unflatten is not None:
        solution = unflatten(solution)
    if not return_quadratic_form:
        return solution
    residual_form = _vdot(x, jax.tree.map(jnp.subtract, b, r))
    shifted = _vdot(x, jax.tree.map(jnp.multiply, shift, x))
    return solution, _vdot(g.mean, mean) + residual_form - shifted


# A CG iteration is a few dozen operations per leaf. On a small q with many leaves (the
# norm layers and head of a ResNet in the transfer scheme: 60+ leaves) their fixed cost
# on CPU is the whole cost of a solve, so small q are solved as one leaf per block. On
# a large q (P K of millions) one-leaf blocks measured slower (the per-leaf products
# fuse better), hence the bound on the number of entries of C.
_FLATTEN_MAX = 2**20


def _num_entries(tree: ArrayTree) -> int:
    return sum(math.prod(jnp.shape(x)) for x in jax.tree.leaves(tree))


def _flatten(q: LowRankGaussian) -> tuple[LowRankGaussian, Callable]:
    """``q`` (or a tangent) with one leaf per block, ``(P,)``, ``(P,)`` and ``(P, K)`` in
    :func:`jax.flatten_util.ravel_pytree` order, and the function that undoes it."""
    mean, unravel_vector = ravel_pytree(q.mean)
    columns, unravel_columns = ravel_pytree(q.deviations)
    k = rank(q)
    flat = LowRankGaussian(mean, ravel_pytree(q.log_scale)[0], columns.reshape(-1, k))

    def unflatten(t: LowRankGaussian) -> LowRankGaussian:
        return LowRankGaussian(
            unravel_vector(t.mean),
            unravel_vector(t.log_scale),
            unravel_columns(t.deviations.reshape(-1)),
        )

    return flat, unflatten


def _pcg(
    matvec: Callable,
    b: Any,
    preconditioner: Callable | None,
    x0: Any | None,
    tol: float,
    atol: float,
    maxiter: int,
) -> tuple[Any, Any]:
    """Preconditioned conjugate gradients on pytrees: ``(x, r)`` with ``r = b - A x``.

    The algorithm and stopping rule of :func:`jax.scipy.sparse.linalg.cg`
    (``|r| <= max(tol |b|, atol)`` or ``maxiter`` iterations), which returns no
    residual and evaluates ``A x0`` even for ``x0 = 0``; here ``r`` is the
    recursively updated residual and ``x0 = None`` starts from zero for free.
    """
    precondition = preconditioner if preconditioner is not None else (lambda v: v)
    if x0 is None:
        x, r = jax.tree.map(jnp.zeros_like, b), b
    else:
        x = x0
        r = jax.tree.map(jnp.subtract, b, matvec(x0))
    z = precondition(r)
    bound = jnp.maximum(tol * jnp.sqrt(_vdot(b, b)), atol) ** 2

    def cond(state):
        _, r, _, _, k = state
        return (_vdot(r, r) > bound) & (k < maxiter)

    def body(state):
        x, r, p, rz, k = state
        ap = matvec(p)
        alpha = rz / _vdot(p, ap)
        x = jax.tree.map(lambda x, p: x + alpha * p, x, p)
        r = jax.tree.map(lambda r, ap: r - alpha * ap, r, ap)
        z = precondition(r)
        rz_new = _vdot(r, z)
        p = jax.tree.map(lambda z, p: z + (rz_new / rz) * p, z, p)
        return x, r, p, rz_new, k + 1

    x, r, *_ = jax.lax.while_loop(cond, body, (x, r, z, _vdot(r, z), 0))
    return x, r


# --------------------------------------------------------------------------- dense


def to_dense(q: LowRankGaussian) -> tuple[Array, Array]:
    """``(mean, Sigma)`` as a flat vector and a dense ``P x P`` matrix.

    For tests and small problems only: ``O(P^2)`` memory. The order of the
    coordinates is that of :func:`jax.flatten_util.ravel_pytree` on the mean.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> q = LowRankGaussian(jnp.zeros(2), jnp.zeros(2), jnp.array([[1.0, -1.0], [0.0, 0.0]]))
    >>> to_dense(q)[1]
    Array([[1.5, 0. ],
           [0. , 0.5]], dtype=float32)
    """
    k = rank(q)
    mean, log_scale, dev = _flatten(q)[0]
    cov = 0.5 * jnp.diag(jnp.exp(2 * log_scale)) + dev @ dev.T / (2.0 * (k - 1))
    return mean, cov
