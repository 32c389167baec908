"""The one place that fixes the signs of singular vectors.

Convention: in every right singular vector (row of ``vt``) the entry of largest
absolute value is positive (ties: the first such entry). The left factor is
flipped with it, so ``u @ diag(s) @ vt`` is unchanged. The decision uses ``vt``
because ``V`` is small, always in memory, and its size does not grow with the
number of rows, so the signs do not depend on how many rows were seen or on how
the rows were chunked.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def sign_flips(vt: NDArray[np.floating]) -> NDArray[np.floating]:
    """Return the ±1 per component that makes ``vt`` follow the convention.

    Parameters
    ----------
    vt : ndarray, shape (rank, n_cols)
        Right singular vectors as rows.

    Returns
    -------
    ndarray, shape (rank,)
        Multiply column ``i`` of ``u`` and row ``i`` of ``vt`` by entry ``i``.
    """
    if vt.shape[0] == 0 or vt.shape[1] == 0:
        return np.ones(vt.shape[0], dtype=vt.dtype)
    idx = np.argmax(np.abs(vt), axis=1)
    signs = np.sign(vt[np.arange(vt.shape[0]), idx])
    signs[signs == 0] = 1
    return signs.astype(vt.dtype, copy=False)


def fix_signs(
    u: NDArray[np.floating], vt: NDArray[np.floating]
) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
    """Flip ``u`` (columns) and ``vt`` (rows) together to the sign convention.

    ``u`` may be the full left factor or any matrix whose columns pair with the
    rows of ``vt`` (for example the small rotation ``T`` of a lazy ``U = U_raw T``).
    Returns new arrays; the inputs are not modified.

    Examples
    --------
    >>> import numpy as np
    >>> u, vt = np.eye(2), np.array([[0.5, -2.0], [1.0, 0.25]])
    >>> fix_signs(u, vt)[1]
    array([[-0.5 ,  2.  ],
           [ 1.  ,  0.25]])
    """
    signs = sign_flips(vt)
    return u * signs, vt * signs[:, None]
