"""Rank selection: a fixed rank or a rule evaluated on the sketch's singular values.

Rules (``rank=`` in the fit):

``k`` (int)
    Exactly ``k`` components; sketch width ``l = min(k + oversample, n_cols)``.
``"energy:x"``
    Smallest ``k`` with ``Σ_{i≤k} s_i² ≥ x·‖A‖_F²``, ``0 < x ≤ 1``.
``"tol:x"``
    Smallest ``k`` with relative Frobenius error ``√(1 − Σ_{i≤k} s_i²/‖A‖_F²) ≤ x``;
    ``x`` must be at least ``10·√eps`` of the accumulation dtype.
``"gd"`` or ``"gd:σ"``
    Gavish–Donoho (2014) optimal hard threshold ``τ = λ*(β)·√max(m, n)·σ`` with
    ``σ`` given, or estimated from the residual energy
    ``σ̂² = (‖A‖_F² − Σ_{i≤l} s_i²)/((m − l)(n − l))``, or, when the sketch holds
    the whole spectrum (``l ≥ min(m, n)``), from the median singular value.

Sketch-width policy for rules (:func:`sketch_size`, :func:`next_sketch_size`):
start at ``l₀ = min(n_cols, max_rank + oversample, max(100, 4·oversample))``;
the choice is accepted when the rule is met with ``k ≤ l − oversample`` (the
last ``oversample`` directions of a sketch are its least accurate), or when
``l`` already covers the whole spectrum (``l ≥ min(m, n)``: the fit is exact);
otherwise ``l`` doubles, capped at ``min(n_cols, max_rank + oversample)``.
At the cap, ``energy`` and ``tol`` that are still not met raise
:class:`~streamsvd.errors.ConfigError`; ``gd`` keeps at most ``max_rank``.
Every rule keeps at least one component.

Pure: no I/O, no Dask.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import integrate, optimize

from streamsvd.errors import ConfigError

RuleKind = Literal["fixed", "energy", "tol", "gd"]
_ALLOWED = "an int k >= 1, 'energy:x' (0 < x <= 1), 'tol:x' (0 < x < 1), 'gd' or 'gd:sigma'"
_RULE = re.compile(r"^\s*(energy|tol|gd)\s*(?::\s*(.+?))?\s*$")
#: Smallest initial sketch width for rules (before the caps by n_cols and max_rank).
MIN_RULE_WIDTH = 100


@dataclass(frozen=True)
class RankRule:
    """A parsed ``rank=`` value.

    Attributes
    ----------
    kind : {"fixed", "energy", "tol", "gd"}
    value : float or None
        ``k`` (fixed), the share (energy), the tolerance (tol), the noise level
        (gd, None when it is to be estimated).
    """

    kind: RuleKind
    value: float | None = None

    def __str__(self) -> str:
        if self.kind == "fixed":
            return str(int(self.value or 0))
        if self.value is None:
            return self.kind
        return f"{self.kind}:{self.value:g}"


@dataclass(frozen=True)
class RankChoice:
    """The rank chosen by a rule and why.

    Attributes
    ----------
    rank : int
    reason : str
        One sentence for the factors' metadata.
    reached : bool
        False when the rule's target is not met by the singular values given
        (the sketch must grow).
    """

    rank: int
    reason: str
    reached: bool = True


def tolerance_floor(dtype: str | type[np.floating] = "float64") -> float:
    """Smallest accepted ``tol:``: ``10·√eps`` of ``dtype``.

    Products ``AᵀAQ`` square the dynamic range, so directions below ``√eps·σ₁``
    are rounding noise.

    Examples
    --------
    >>> f"{tolerance_floor('float64'):.2e}"
    '1.49e-07'
    """
    return float(10 * np.sqrt(np.finfo(np.dtype(dtype)).eps))


def parse_rank(spec: int | str | RankRule, *, dtype: str = "float64") -> RankRule:
    """Parse ``rank=``: an int, ``"energy:x"``, ``"tol:x"``, ``"gd"`` or ``"gd:σ"``.

    Parameters
    ----------
    spec : int, str or RankRule
    dtype : str
        Accumulation dtype of the power passes; fixes the ``tol:`` floor.

    Raises
    ------
    ConfigError
        For anything else, naming the value and the allowed forms.

    Examples
    --------
    >>> parse_rank("energy:0.9")
    RankRule(kind='energy', value=0.9)
    >>> parse_rank(12)
    RankRule(kind='fixed', value=12)
    """
    if isinstance(spec, RankRule):
        return spec
    if isinstance(spec, bool):
        raise ConfigError(f"rank={spec!r} is not valid; use {_ALLOWED}")
    if isinstance(spec, int | np.integer) or (isinstance(spec, str) and spec.strip().isdigit()):
        k = int(spec)
        if k < 1:
            raise ConfigError(f"rank={spec!r} must be at least 1; use {_ALLOWED}")
        return RankRule("fixed", k)
    if not isinstance(spec, str) or (match := _RULE.match(spec)) is None:
        raise ConfigError(f"rank={spec!r} is not valid; use {_ALLOWED}")
    kind, raw = match.group(1), match.group(2)
    if kind == "gd" and raw is None:
        return RankRule("gd", None)
    try:
        value = float(raw) if raw is not None else math.nan
    except ValueError:
        value = math.nan
    if kind == "energy" and 0 < value <= 1:
        return RankRule("energy", value)
    if kind == "gd" and 0 < value < math.inf:
        return RankRule("gd", value)
    if kind == "tol" and 0 < value < 1:
        floor = tolerance_floor(dtype)
        if value < floor:
            raise ConfigError(
                f"rank={spec!r}: tolerance {value:g} is below 10·√eps = {floor:.3g} of {dtype} "
                "accumulation, where rounding dominates; use a larger tolerance"
                + (" or dtype='float64'" if np.dtype(dtype) != np.float64 else "")
            )
        return RankRule("tol", value)
    raise ConfigError(f"rank={spec!r} has an invalid value {raw!r}; use {_ALLOWED}")


def default_max_rank(n_rows: int, n_cols: int) -> int:
    """``min(n_rows, n_cols, 1000)``."""
    return max(1, min(n_rows, n_cols, 1000))


def sketch_size(
    rule: RankRule, oversample: int, n_cols: int, n_rows: int, max_rank: int | None = None
) -> int:
    """Sketch width ``l`` to start with (see the module docstring for the policy).

    Raises
    ------
    ConfigError
        A fixed rank above ``min(n_rows, n_cols)`` or above ``max_rank``.

    Examples
    --------
    >>> sketch_size(parse_rank(10), 10, n_cols=300, n_rows=2000)
    20
    >>> sketch_size(parse_rank("gd"), 10, n_cols=300, n_rows=2000)
    100
    """
    if oversample < 0:
        raise ConfigError(f"oversample={oversample} must be >= 0")
    cap = max_rank if max_rank is not None else default_max_rank(n_rows, n_cols)
    if cap < 1:
        raise ConfigError(f"max_rank={max_rank} must be >= 1")
    if rule.kind == "fixed":
        k = int(rule.value or 0)
        if k > min(n_rows, n_cols):
            raise ConfigError(
                f"rank={k} exceeds min(n_rows, n_cols) = min({n_rows}, {n_cols}); "
                f"use rank <= {min(n_rows, n_cols)}"
            )
        if max_rank is not None and k > max_rank:
            raise ConfigError(f"rank={k} exceeds max_rank={max_rank}; raise max_rank")
        return min(k + oversample, n_cols)
    return min(n_cols, cap + oversample, max(MIN_RULE_WIDTH, 4 * oversample))


def gavish_donoho_lambda(beta: float) -> float:
    """Optimal hard-threshold coefficient λ*(β) for known noise (Gavish–Donoho 2014, eq. 11).

    ``λ*(β) = √(2(β+1) + 8β/((β+1) + √(β² + 14β + 1)))``, β = aspect ratio ≤ 1.

    Examples
    --------
    >>> round(gavish_donoho_lambda(1.0), 4)  # 4/√3
    2.3094
    """
    if not 0 < beta <= 1:
        raise ValueError(f"beta={beta} must be in (0, 1]")
    return math.sqrt(2 * (beta + 1) + 8 * beta / ((beta + 1) + math.sqrt(beta**2 + 14 * beta + 1)))


def marchenko_pastur_median(beta: float) -> float:
    """Median of the Marchenko–Pastur law with ratio β ≤ 1 and unit variance."""
    lo, hi = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2

    def density(t: float) -> float:
        return math.sqrt(max((hi - t) * (t - lo), 0.0)) / (2 * math.pi * beta * t)

    def excess(x: float) -> float:
        return float(integrate.quad(density, lo, x)[0]) - 0.5

    return float(optimize.brentq(excess, lo, hi, xtol=1e-12))


def _gd_threshold(
    rule: RankRule, s: NDArray[np.float64], energy: float, n_rows: int, n_cols: int
) -> tuple[float, str]:
    beta = min(n_rows, n_cols) / max(n_rows, n_cols)
    lam = gavish_donoho_lambda(beta)
    big = max(n_rows, n_cols)
    width = s.size
    if rule.value is not None:
        sigma, how = rule.value, "given"
    elif (n_rows - width) * (n_cols - width) > 0:
        resid = max(energy - float(np.sum(s**2)), 0.0)
        sigma = math.sqrt(resid / ((n_rows - width) * (n_cols - width)))
        how = "from the residual energy"
    else:
        median = float(np.median(s[: min(n_rows, n_cols)]))
        sigma = median / math.sqrt(big * marchenko_pastur_median(beta))
        how = "from the median singular value"
    tau = lam * math.sqrt(big) * sigma
    return tau, (
        f"τ = λ*(β)·√max(m,n)·σ̂ = {tau:.4g} (β = {beta:.3g}, λ* = {lam:.4f}, σ̂ = {sigma:.4g} {how})"
    )


def choose_rank(
    rule: RankRule, s: ArrayLike, energy: float, n_rows: int, n_cols: int
) -> RankChoice:
    """Apply ``rule`` to the sketch's singular values ``s`` (descending) and ``‖A‖_F²``.

    Examples
    --------
    >>> import numpy as np
    >>> s = np.array([3.0, 2.0, 1.0])
    >>> choose_rank(parse_rank("energy:0.9"), s, energy=14.0, n_rows=10, n_cols=3).rank
    2
    """
    sv = np.asarray(s, dtype=np.float64)
    full = min(n_rows, n_cols)
    if rule.kind == "fixed":
        k = int(rule.value or 0)
        return RankChoice(k, f"rank={k} (fixed)")
    cum = np.cumsum(sv**2)
    if rule.kind == "gd":
        tau, how = _gd_threshold(rule, sv, energy, n_rows, n_cols)
        floor = float(np.sqrt(np.finfo(np.float64).eps)) * (sv[0] if sv.size else 0.0)
        count = int(np.sum(sv > max(tau, floor)))
        k = max(count, 1)
        note = "" if count else " (none above τ; one component kept)"
        return RankChoice(k, f"gd → k={k} singular values above {how}{note}", True)
    value = float(rule.value or 0.0)
    if energy <= 0:
        return RankChoice(1, f"{rule} → k=1: the matrix is zero (one component kept)", True)
    if rule.kind == "energy":
        hit = np.flatnonzero(cum >= value * energy)
        k = int(hit[0]) + 1 if hit.size else max(sv.size, 1)
        share = float(cum[k - 1] / energy) if sv.size else 0.0
        return RankChoice(
            k, f"energy:{value:g} → k={k} captures {share:.1%} of ‖A‖_F²", bool(hit.size)
        )
    err = np.sqrt(np.maximum(energy - cum, 0.0) / energy)
    hit = np.flatnonzero(err <= value)
    k = int(hit[0]) + 1 if hit.size else max(sv.size, 1)
    reached = float(err[k - 1]) if sv.size else 1.0
    return RankChoice(
        min(k, full),
        f"tol:{value:g} → k={k} has relative Frobenius error {reached:.3g}",
        bool(hit.size),
    )


def next_sketch_size(
    rule: RankRule,
    choice: RankChoice,
    width: int,
    *,
    oversample: int,
    n_rows: int,
    n_cols: int,
    max_rank: int,
) -> int | None:
    """Decide whether the sketch of width ``width`` was wide enough for ``choice``.

    Returns None to accept, or the next (doubled, capped) width.

    Raises
    ------
    ConfigError
        ``energy``/``tol`` not met, or needing more than ``max_rank``
        components, with the sketch already at its cap.
    """
    if rule.kind == "fixed":
        return None
    exact = width >= min(n_rows, n_cols)  # the sketch holds the whole spectrum
    cap = min(n_cols, max_rank + oversample)
    rank_ok = choice.rank <= max_rank or rule.kind == "gd"
    fits = choice.reached and choice.rank <= max(width - oversample, 1)
    if rank_ok and (fits or (exact and (choice.reached or rule.kind != "tol"))):
        return None
    if width < cap and not exact:
        return min(2 * width, cap)
    if rule.kind == "gd":
        return None
    raise ConfigError(
        f"rank={str(rule)!r} cannot be met within max_rank={max_rank} "
        f"(sketch width {width}): best reached is {choice.reason}; "
        "raise max_rank or relax the rule"
    )


def cap_choice(choice: RankChoice, max_rank: int) -> RankChoice:
    """Limit a (gd) choice to ``max_rank``, saying so in the reason."""
    if choice.rank <= max_rank:
        return choice
    return RankChoice(max_rank, f"{choice.reason}; capped at max_rank={max_rank}", choice.reached)
