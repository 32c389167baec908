"""Randomized SVD in q+1 passes, as pure steps on blocks and small matrices.

The Dask engine (:mod:`streamsvd.engine.fit`) streams row blocks ``A_i`` of an
``(n_rows, n_cols)`` matrix through the *block kernels* here
(:func:`power_block`, :func:`final_block`), sums their :class:`BlockSums` in a
fixed tree with :func:`combine`, and finishes in memory with
:func:`power_step`, :func:`finish_final_pass`, :func:`sketch_svd` and
:func:`truncate`::

    Ω ~ N(0, 1) (n_cols × l, seeded);  Q = Ω            (Q = I when l ≥ n_cols)
    q times, one pass each:  Y = Σ_i A_iᵀ(A_i Q);  Q = orth(Y)
    final pass:  Z_i = A_i Q;  R = TSQR-R(Z);  Y = Σ_i A_iᵀ Z_i;  f = Σ_i ‖A_i‖_F²
    in memory:   R = P Σ Wᵀ;  B = Σ_r⁻¹ W_rᵀ Yᵀ  (= Q_Zᵀ A);  B = Û S Vᵀ;  T = W_r Σ_r⁻¹ Û

so that ``U = Z T`` (``Z`` is never gathered: it stays on the workers or goes to
a sink as ``U_raw``) and ``‖A − U_k S_k V_kᵀ‖_F² = f − Σ_{i≤k} S_i²`` exactly,
because ``Z W_r Σ_r⁻¹`` has orthonormal columns.

When ``Z`` is well conditioned the final pass skips the TSQR: ``ZᵀZ = QᵀY`` comes
free with ``Y``, and ``R = Λ^½ Wᵀ`` from its eigendecomposition (see
:data:`GRAM_MAX_COND_SQ` and :func:`gram_r`).

PCA mode (centering) is carried by a *shift* ``μ₀`` subtracted inside each block
(zero when the mean is not known yet, the mean of the first pass otherwise) and
a ones column appended to ``Z`` for the rest ``δ = μ − μ₀`` of the mean; see
:func:`finish_final_pass` for the formulas. Subtracting a known mean in the
block avoids the cancellation of ``‖A‖² − m‖μ‖²`` when the mean is large.

Nothing here knows about Dask or does I/O. Every block kernel casts its block
to float64 (or float32 where asked) itself, so float32 data is never copied as
a whole.

References
----------
Halko, Martinsson, Tropp (2011), "Finding structure with randomness", SIAM Rev.
53(2). Yu, Gu, Li, Liu, Li (2017), "Single-pass PCA of large high-dimensional
data", IJCAI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse
from numpy.typing import NDArray

from streamsvd.linalg.merge import _svd, condition, relative_error
from streamsvd.linalg.signs import fix_signs
from streamsvd.linalg.tall import row_slices
from streamsvd.linalg.tsqr import block_r, merge_r, pad_r, sliced_r

FloatArray = NDArray[np.float64]

#: Relative cut-off on the singular values of R (those of Z = AQ). ``Y = AᵀZ``
#: carries an absolute rounding error ~eps·σ₁², so row j of ``B = Σ⁻¹WᵀYᵀ`` is
#: off by ~eps·σ₁²/σ_j. A cut at l·eps (the usual pseudo-inverse rule) lets that
#: noise reach σ₁/l: measured on a 3000×200 matrix with σ_i from 1 to 1e-18 and
#: l = n, it gave ΣS² > ‖A‖², ‖UᵀU − I‖ = 1e-5 and σ₁ off by 3e-6. A cut at
#: √eps bounds the noise by ~√eps·σ₁ and drops directions whose energy is below
#: eps·σ₁² each, far under any tolerance the rank rules accept (≥ 10√eps).
DEFAULT_RCOND = float(np.sqrt(np.finfo(np.float64).eps))


#: Largest ``κ(Z)²`` for which ``R`` is taken from the Gram matrix ``ZᵀZ = QᵀY``
#: instead of a TSQR of ``Z``. Factoring a Gram matrix loses about ``eps·κ²`` of
#: orthogonality in ``Z R⁻¹`` (Cholesky QR; Householder TSQR loses ``eps·κ``):
#: measured on 50,000 × 60 matrices, 2e-11 at κ² = 1e6 and 5e-10 at 9e6, so this
#: bound keeps ``U`` orthonormal to ~1e-9, far inside ``verify``'s 1e-6. The TSQR
#: was 18 % of the final pass's work on the fit benchmark (κ² = 2.6e5 there).
GRAM_MAX_COND_SQ = 1e7

#: Rows per slice of the TSQR inside one sparse block (:func:`final_block`).
_R_SLICE_ROWS = 65536
#: Bytes of a row slice in the dense block kernels. Both products of a slice
#: (``A_s Q``, then ``Z_sᵀ A_s``) run while the slice is in L2 cache: the two
#: products of a whole 32 MiB block each streamed it from memory, and took 1.6×
#: (float32) to 1.7× (float64, cast included) as long on the fit benchmark's blocks.
_SLICE_BYTES = 2 * 1024 * 1024
#: ``Y`` larger than this (bytes) is factored through a QR of ``Bᵀ`` (:func:`sketch_svd`).
_TALL_SVD_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class BlockSums:
    """Partial sums over a set of row blocks, merged by :func:`combine`.

    Attributes
    ----------
    y : ndarray, shape (n_cols, width)
        ``Σ A_iᵀ(A_i Q)`` (power pass) or ``Σ A_iᵀ Z_i`` (final pass), shifted blocks.
    colsum : ndarray, shape (n_cols,)
        Column sums of the shifted blocks, float64.
    rows : int
        Number of rows summed.
    sqnorm : float
        ``Σ ‖A_i‖_F²`` of the shifted blocks (final pass only, else 0).
    r : ndarray or None, shape (<= width', width')
        TSQR R factor of the ``Z`` blocks (final pass only).
    """

    y: FloatArray
    colsum: FloatArray
    rows: int
    sqnorm: float = 0.0
    r: FloatArray | None = None


@dataclass(frozen=True)
class SketchSVD:
    """SVD of the sketch ``B = Q_Zᵀ A`` with the rotation that gives ``U``.

    Attributes
    ----------
    t : ndarray, shape (width, r)
        ``U = U_raw @ t`` for the ``r`` directions kept by the cut-off.
    s : ndarray, shape (r,)
        Singular values of ``B``, descending.
    vt : ndarray, shape (r, n_cols)
        Right singular vectors of ``B`` as rows.
    """

    t: FloatArray
    s: FloatArray
    vt: FloatArray


def start_basis(n_cols: int, width: int, seed: int) -> FloatArray:
    """The starting ``Q``: Gaussian ``(n_cols, width)``, or ``I`` when ``width >= n_cols``.

    Examples
    --------
    >>> start_basis(3, 5, seed=0)
    array([[1., 0., 0.],
           [0., 1., 0.],
           [0., 0., 1.]])
    >>> start_basis(100, 5, seed=0).shape
    (100, 5)
    """
    if width >= n_cols:
        return np.eye(n_cols)
    return np.random.default_rng(seed).standard_normal((n_cols, width))


def orthonormalize(y: NDArray[np.floating]) -> FloatArray:
    """Orthonormal basis of the columns of ``y`` (Householder QR, reduced ``Q``).

    The result has orthonormal columns even when ``y`` is rank deficient.
    """
    return _qr(y)[0]


def _qr(y: NDArray[np.floating]) -> tuple[FloatArray, FloatArray]:
    # LAPACK geqrf + orgqr in place on a Fortran copy (what numpy's qr runs, with
    # one n × width copy instead of three: matters when n_cols is in the millions).
    a = np.array(y, dtype=np.float64, order="F", copy=True)
    if a.shape[0] < a.shape[1] or a.size == 0:
        q, r = np.linalg.qr(a, mode="reduced")
        return q, r
    q, r = scipy.linalg.qr(a, mode="economic", overwrite_a=True, check_finite=False)
    return np.asarray(q, dtype=np.float64), np.asarray(r, dtype=np.float64)


def dense_block(block: Any, dtype: type[np.floating] = np.float64) -> NDArray[np.floating]:
    """A row block as a dense array of ``dtype`` (sparse blocks are densified)."""
    if hasattr(block, "toarray"):
        block = block.toarray()
    return np.asarray(block, dtype=dtype)


def is_sparse_block(block: Any) -> bool:
    """Whether ``block`` is a scipy.sparse matrix (handled without densifying)."""
    return bool(scipy.sparse.issparse(block))


def _sparse_block(block: Any, dtype: type[np.floating]) -> Any:
    """``block`` as CSR of ``dtype``: only the stored values are cast, never densified."""
    csr = scipy.sparse.csr_matrix(block)
    return csr if csr.dtype == dtype else csr.astype(dtype)


def _sparse_colsum(a: Any) -> FloatArray:
    """Column sums of a CSR block in float64 (one pass over its stored values)."""
    sums = np.bincount(a.indices, weights=a.data.astype(np.float64), minlength=a.shape[1])
    return np.asarray(sums, dtype=np.float64)


def _sparse_power(block: Any, q: NDArray[np.floating], shift: FloatArray | None) -> BlockSums:
    """:func:`power_block` on a sparse block, the shift applied algebraically.

    With ``A' = A − 1μᵀ``: ``A'Q = AQ − 1(μᵀQ)`` and ``A'ᵀ(A'Q) = Aᵀ(A'Q) − μ(1ᵀA'Q)``.
    Always float64: sparse products are bound by reading the stored values, so float32
    saves no time, and it would cost extra ``n_cols × width`` copies (Q and the result
    in both precisions). Memory: the block's stored values plus ``(n_rows_i + n_cols) ×
    width`` float64.
    """
    a = _sparse_block(block, np.float64)
    rows = a.shape[0]
    colsum = _sparse_colsum(a)
    qd = np.asarray(q, dtype=np.float64)
    z = np.asarray(a @ qd)
    if shift is not None:
        z -= (shift @ qd)[None, :]
    y = np.asarray(a.T @ z)
    if shift is None:
        return BlockSums(y=y, colsum=colsum, rows=rows)
    y -= np.outer(shift, z.sum(axis=0))
    return BlockSums(y=y, colsum=colsum - rows * shift, rows=rows)


def _sparse_final(
    block: Any, q: FloatArray, shift: FloatArray | None, ones: bool, with_r: bool
) -> tuple[FloatArray, BlockSums]:
    """:func:`final_block` on a sparse block, the shift applied algebraically.

    With ``A' = A − 1μᵀ``: ``Z = AQ − 1(μᵀQ)``, ``A'ᵀZ = AᵀZ − μ(1ᵀZ)``,
    ``colsum(A') = colsum(A) − mμ`` and ``‖A'‖² = ‖A‖² − 2μᵀcolsum(A) + m‖μ‖²``
    (``m`` the block's rows; the last one cancels when the mean is large against
    the data, which sparse data with its mostly-zero columns does not have).
    """
    a = _sparse_block(block, np.float64)
    rows = a.shape[0]
    colsum = _sparse_colsum(a)
    sqnorm = float(a.data @ a.data)
    z = np.asarray(a @ q)
    if shift is not None:
        z -= (shift @ q)[None, :]
    y = np.asarray(a.T @ z)
    if shift is not None:
        y -= np.outer(shift, z.sum(axis=0))
        sqnorm = sqnorm - 2.0 * float(shift @ colsum) + rows * float(shift @ shift)
        colsum = colsum - rows * shift
    if ones:
        z = np.hstack([z, np.ones((rows, 1))])
    # R of z by TSQR over row slices: O(slice × width) extra memory instead of a copy of z.
    r = sliced_r(z, _R_SLICE_ROWS) if with_r else None
    sums = BlockSums(y=y, colsum=colsum, rows=rows, sqnorm=max(sqnorm, 0.0), r=r)
    return z, sums


def power_block(
    block: Any,
    q: NDArray[np.floating],
    shift: FloatArray | None = None,
    dtype: type[np.floating] = np.float64,
    colsums: bool = True,
) -> BlockSums:
    """Kernel of one power-iteration pass on one row block.

    Computes ``A_iᵀ(A_i Q)`` with ``A_i`` the block minus ``shift`` (in ``dtype``;
    accumulated in float64 over row slices) and the column sums of the shifted
    block (float64; zeros unless ``colsums``: only PCA mode needs them). Memory: the
    block as given, one slice of about 2 MiB in
    ``dtype`` and ``n_cols × width`` float64. A
    scipy.sparse block is never densified (products with its stored values only)
    and is always computed in float64 (see ``_sparse_power``).
    """
    if is_sparse_block(block):
        return _sparse_power(block, q, shift)
    raw = np.asarray(block)
    rows, n_cols = raw.shape
    qd = np.asarray(q, dtype=dtype)
    shift_d = None if shift is None else shift.astype(dtype)
    colsum = np.zeros(n_cols)
    yt = np.zeros((qd.shape[1], n_cols))
    for rows_slice in _slices(rows, n_cols, dtype):
        if colsums:
            colsum += raw[rows_slice].sum(axis=0, dtype=np.float64)
        a = np.asarray(raw[rows_slice], dtype=dtype)
        if shift_d is not None:
            a = a - shift_d
        yt += (a @ qd).T @ a
    if shift is not None and colsums:
        colsum -= rows * shift
    return BlockSums(y=yt.T, colsum=colsum, rows=rows)


def final_block(
    block: Any,
    q: FloatArray,
    shift: FloatArray | None = None,
    ones: bool = False,
    with_r: bool = True,
) -> tuple[FloatArray, BlockSums]:
    """Kernel of the final pass on one row block, always in float64.

    Returns ``(z, sums)``: ``z = [A_i Q]`` or ``[A_i Q, 1]`` when ``ones`` (the
    rows of ``U_raw``), and the block's ``AᵢᵀZ_i`` (without the ones column),
    column sums (of dense blocks with ``ones`` only, else zeros), ``‖A_i‖_F²`` and, if
    ``with_r``, the R factor of ``z``; ``A_i`` is the block minus ``shift``.
    Memory: the block as given, one slice of about 2 MiB in float64 and
    ``(n_rows_i + n_cols) × width`` float64. A scipy.sparse block is never
    densified (products with its stored values only).
    """
    if is_sparse_block(block):
        return _sparse_final(block, q, shift, ones, with_r)
    raw = np.asarray(block)
    rows, n_cols = raw.shape
    width = q.shape[1]
    z = np.empty((rows, width + int(ones)))
    colsum = np.zeros(n_cols)
    sqnorm = 0.0
    yt = np.zeros((width, n_cols))
    for rows_slice in _slices(rows, n_cols, np.float64):
        a = np.asarray(raw[rows_slice], dtype=np.float64)
        if shift is not None:
            a = a - shift
        if ones:  # the column sums serve the mean, in PCA mode only
            colsum += a.sum(axis=0)
        flat = a.ravel()  # contiguous: BLAS ddot, 3× faster than einsum here
        sqnorm += float(flat @ flat)
        z_slice = np.matmul(a, q, out=z[rows_slice, :width])  # straight into U_raw's rows
        yt += z_slice.T @ a
    if ones:
        z[:, width] = 1.0
    r = block_r(z) if with_r else None
    return z, BlockSums(y=yt.T, colsum=colsum, rows=rows, sqnorm=sqnorm, r=r)


def _slices(rows: int, n_cols: int, dtype: type[np.floating]) -> list[slice]:
    """Row slices of about :data:`_SLICE_BYTES` each (at least 16 rows)."""
    return row_slices(rows, n_cols, _SLICE_BYTES, itemsize=np.dtype(dtype).itemsize)


def combine(parts: Sequence[BlockSums]) -> BlockSums:
    """Sum partial results in the order given (a fixed order gives fixed rounding)."""
    if not parts:
        raise ValueError("combine needs at least one partial result, got none")
    y = parts[0].y.copy()
    colsum = parts[0].colsum.copy()
    for p in parts[1:]:
        y += p.y
        colsum += p.colsum
    rs = [p.r for p in parts if p.r is not None]
    return BlockSums(
        y=y,
        colsum=colsum,
        rows=sum(p.rows for p in parts),
        sqnorm=float(sum(p.sqnorm for p in parts)),
        r=merge_r(rs) if rs else None,
    )


def power_step(
    sums: BlockSums, q: FloatArray, center: bool, shift: FloatArray | None
) -> tuple[FloatArray, FloatArray | None, float]:
    """Finish a power pass in memory: the next orthonormal ``Q``, the column mean
    and an estimate of ``κ(AQ)²`` for that ``Q``.

    In PCA mode the centred product is ``A_cᵀA_c Q = A'ᵀA'Q − m δ(δᵀQ)`` with
    ``A' = A − 1μ₀ᵀ`` the shifted blocks and ``δ = colsum(A')/m`` the rest of the
    mean (expand ``(A' − 1δᵀ)ᵀ(A' − 1δᵀ)`` with ``A'ᵀ1 = mδ``).

    Returns
    -------
    q : ndarray, shape (n_cols, width)
    mean : ndarray, shape (n_cols,) or None
        ``μ₀ + δ`` in PCA mode, else None.
    cond_sq : float
        ``κ`` of the R factor of ``Y = AᵀAQ_prev``: its singular values are about
        ``σ_j(A)²``, so this estimates ``κ(AQ)²`` for the next pass before it is
        made (1.0-2.9× the truth on steep, slow and flat spectra with noise after
        two power iterations; too high rather than too low where the tail has not
        converged).
    """
    y = sums.y
    mean = None
    if center:
        m = sums.rows
        delta = sums.colsum / m if m else np.zeros_like(sums.colsum)
        y = y - m * np.outer(delta, delta @ q)
        mean = delta if shift is None else shift + delta
    q_next, r = _qr(y)
    return q_next, mean, condition(r)


def finish_final_pass(
    sums: BlockSums, q: FloatArray, center: bool, shift: FloatArray | None
) -> tuple[FloatArray | None, FloatArray, float, FloatArray | None, FloatArray | None]:
    """Turn the sums of the final pass into ``(R, Y, f, mean, c)`` of the (centred) matrix.

    Without centering: ``R`` (padded to ``width × width``), ``Y = AᵀZ``, ``f = ‖A‖_F²``.

    In PCA mode, with ``A' = A − 1μ₀ᵀ``, ``Z' = A'Q``, ``δ = A'ᵀ1/m`` and ``c = Qᵀδ``
    (so ``1ᵀZ' = m cᵀ``), the centred ``A_c = A' − 1δᵀ`` and ``Z_c = Z' − 1cᵀ = A_c Q``:

    * ``Z_c = [Z', 1] E`` with ``E = [[I], [−cᵀ]]``, so ``R_c = qr(R_aug E)`` where
      ``R_aug`` is the TSQR R factor of ``[Z', 1]``;
    * ``Y_c = A_cᵀZ_c = A'ᵀZ' − A'ᵀ1cᵀ − δ1ᵀZ' + mδcᵀ = A'ᵀZ' − m δ cᵀ``;
    * ``f_c = ‖A' − 1δᵀ‖² = ‖A'‖² − m‖δ‖²`` (no cancellation when ``μ₀ ≈ μ``).

    ``c`` is returned so the caller can append the row ``−cᵀT₀`` to ``T``
    (``U = [Z', 1] E T₀``).

    Sums without an R factor (``final_block(..., with_r=False)``) take ``R`` from
    the Gram matrix ``Z_cᵀZ_c = QᵀY_c`` (:func:`gram_r`); ``R`` is None when that is
    too ill-conditioned, and the pass must be made again with the TSQR.
    """
    width = q.shape[1]
    if not center:
        y, f = sums.y, max(sums.sqnorm, 0.0)
        if sums.r is None:
            return gram_r(q.T @ y), y, f, None, None
        return pad_r(sums.r, width), y, f, None, None
    m = sums.rows
    delta = sums.colsum / m if m else np.zeros_like(sums.colsum)
    c = q.T @ delta
    y_c = sums.y - m * np.outer(delta, c)
    f_c = max(sums.sqnorm - m * float(delta @ delta), 0.0)
    mean = delta if shift is None else shift + delta
    if sums.r is None:
        return gram_r(q.T @ y_c), y_c, f_c, mean, c
    e = np.vstack([np.eye(width), -c[None, :]])
    r_c = pad_r(block_r(pad_r(sums.r, width + 1) @ e), width)
    return r_c, y_c, f_c, mean, c


def gram_r(gram: NDArray[np.floating]) -> FloatArray | None:
    """A factor ``R`` with ``RᵀR = G`` from a Gram matrix ``G = ZᵀZ``, or None.

    ``R = Λ^½ Wᵀ`` from ``G = W Λ Wᵀ``, the eigenvalues descending; None when
    ``λ_max/λ_min > GRAM_MAX_COND_SQ`` (or ``G`` is zero), where only a QR of
    ``Z`` itself keeps ``Z R⁻¹`` orthonormal. :func:`sketch_svd` accepts any
    such ``R``, triangular or not.

    Examples
    --------
    >>> z = np.array([[3.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    >>> r = gram_r(z.T @ z)
    >>> bool(np.allclose(r.T @ r, z.T @ z))
    True
    >>> gram_r(np.diag([1.0, 1e-12])) is None
    True
    """
    g = (np.asarray(gram, dtype=np.float64) + np.asarray(gram, dtype=np.float64).T) / 2
    lam, w = np.linalg.eigh(g)
    lam, w = lam[::-1], w[:, ::-1]
    if lam.size == 0 or lam[-1] <= 0 or lam[0] > GRAM_MAX_COND_SQ * lam[-1]:
        return None
    return np.asarray(np.sqrt(lam)[:, None] * w.T, dtype=np.float64)


def sketch_svd(r: FloatArray, y: FloatArray, *, rcond: float = DEFAULT_RCOND) -> SketchSVD:
    """SVD of ``B = Q_Zᵀ A`` from the R factor of ``Z = AQ`` and ``Y = AᵀZ``.

    With ``R = P Σ Wᵀ`` and the ``r`` singular values ``σ_j > rcond·σ₁`` kept,
    ``Z W_r Σ_r⁻¹`` is an orthonormal basis of (the numerical) range of ``Z``,
    ``B = Σ_r⁻¹ W_rᵀ Yᵀ = Û S Vᵀ`` and ``T = W_r Σ_r⁻¹ Û``. A singular ``R``
    (rank-deficient or zero data) drops directions instead of dividing by zero.

    Parameters
    ----------
    r : ndarray, shape (width, width)
    y : ndarray, shape (n_cols, width)
    rcond : float
        Relative cut-off, see :data:`DEFAULT_RCOND`.

    Returns
    -------
    SketchSVD
        ``t`` (width, r), ``s`` (r,), ``vt`` (r, n_cols); ``r`` may be 0.

    Memory: ``O(n_cols · width)``; no pass over the data.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[3.0, 0.0], [0.0, 4.0], [0.0, 0.0]])
    >>> z = a  # Q = I
    >>> sk = sketch_svd(np.linalg.qr(z, mode="r"), a.T @ z)
    >>> np.round(sk.s, 12)
    array([4., 3.])
    """
    width = r.shape[1]
    n_cols = y.shape[0]
    _, sig, wt = _svd(r)
    keep = sig > rcond * sig[0] if sig.size and sig[0] > 0 else np.zeros(sig.shape, dtype=bool)
    if not keep.any():
        return SketchSVD(t=np.zeros((width, 0)), s=np.zeros(0), vt=np.zeros((0, n_cols)))
    w_scaled = wt[keep].T / sig[keep]  # W_r Σ_r⁻¹, (width, r)
    if y.nbytes > _TALL_SVD_BYTES:
        # Bᵀ = Y W_r Σ_r⁻¹ (n_cols × r) = Q_b R_b;  R_b = P S Gᵀ  ⇒  B = G S (Q_b P)ᵀ.
        # Backward stable like gesdd on B, with one n_cols × r array instead of four.
        b_t = (w_scaled.T @ y.T).T  # Fortran order: QR works in place, no copy
        q_b, r_b = scipy.linalg.qr(b_t, mode="economic", overwrite_a=True, check_finite=False)
        del b_t
        p, s, gt = _svd(r_b)
        for i in range(0, q_b.shape[0], _R_SLICE_ROWS):  # q_b ← q_b p in place, by slices
            q_b[i : i + _R_SLICE_ROWS] = q_b[i : i + _R_SLICE_ROWS] @ p
        return SketchSVD(t=w_scaled @ gt.T, s=s, vt=q_b.T)
    b = w_scaled.T @ y.T
    u_hat, s, vt = _svd(b)
    return SketchSVD(t=w_scaled @ u_hat, s=s, vt=vt)


def orthonormal_completion(vt: FloatArray, extra: int) -> FloatArray:
    """``extra`` unit rows orthogonal to the rows of ``vt`` and to each other.

    Used for components beyond the numerical rank, so ``vt`` keeps orthonormal
    rows. Deterministic (fixed generator).
    """
    n_cols = vt.shape[1]
    if extra <= 0:
        return np.zeros((0, n_cols))
    g = np.random.default_rng(0).standard_normal((n_cols, extra))
    for _ in range(2):  # twice is enough (Kahan–Parlett)
        g -= vt.T @ (vt @ g)
    return orthonormalize(g).T


def truncate(
    sketch: SketchSVD, rank: int, c: FloatArray | None = None
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Keep ``rank`` components, append the centering row, fix signs.

    Components beyond the numerical rank get ``s = 0``, a zero column in ``t``
    and an orthonormal completion in ``vt``. In PCA mode (``c`` given) ``t``
    gets the last row ``−cᵀT₀`` that pairs with the ones column of ``U_raw``.

    Returns
    -------
    t : ndarray, shape (width, rank) or (width + 1, rank)
    s : ndarray, shape (rank,)
    vt : ndarray, shape (rank, n_cols)
        Signs follow :func:`streamsvd.linalg.signs.fix_signs`.
    """
    kept = min(rank, sketch.s.size)
    t = np.zeros((sketch.t.shape[0], rank))
    t[:, :kept] = sketch.t[:, :kept]
    s = np.zeros(rank)
    s[:kept] = sketch.s[:kept]
    vt = np.vstack([sketch.vt[:kept], orthonormal_completion(sketch.vt[:kept], rank - kept)])
    if c is not None:
        t = np.vstack([t, -(c @ t)[None, :]])
    t_fixed, vt_fixed = fix_signs(t, vt)
    return t_fixed.astype(np.float64, copy=False), s, vt_fixed.astype(np.float64, copy=False)


def error_summary(energy: float, s: NDArray[np.floating]) -> tuple[float, float]:
    """``(relative_error, captured_energy)`` of a rank-k fit with values ``s``.

    ``error² = max(f − Σ s_i², 0)`` (exact for the fit above). A zero matrix
    (``f = 0``) has error 0 and captured share 1.

    Examples
    --------
    >>> error_summary(25.0, np.array([4.0]))
    (0.6, 0.64)
    """
    if energy <= 0:
        return 0.0, 1.0
    s64 = np.asarray(s, dtype=np.float64)
    return relative_error(energy, s64), min(float(s64 @ s64) / energy, 1.0)
