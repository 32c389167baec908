"""Rank rules: parsing, choice on known spectra, sketch-width policy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamsvd.errors import ConfigError
from streamsvd.linalg.rank import (
    RankChoice,
    RankRule,
    cap_choice,
    choose_rank,
    gavish_donoho_lambda,
    marchenko_pastur_median,
    next_sketch_size,
    parse_rank,
    sketch_size,
    tolerance_floor,
)
from tests.matrices import with_spectrum


@pytest.mark.parametrize(
    ("spec", "rule"),
    [
        (7, RankRule("fixed", 7)),
        (np.int64(3), RankRule("fixed", 3)),
        ("12", RankRule("fixed", 12)),
        ("energy:0.9", RankRule("energy", 0.9)),
        (" energy : 1 ", RankRule("energy", 1.0)),
        ("tol:0.05", RankRule("tol", 0.05)),
        ("gd", RankRule("gd", None)),
        ("gd:0.25", RankRule("gd", 0.25)),
    ],
)
def test_parse(spec, rule):
    assert parse_rank(spec) == rule
    assert parse_rank(rule) is rule


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (0, r"rank=0 must be at least 1"),
        (True, r"rank=True is not valid; use an int k >= 1"),
        ("fifty", r"rank='fifty' is not valid; use an int k >= 1, 'energy:x'"),
        ("energy:1.5", r"rank='energy:1.5' has an invalid value '1.5'"),
        ("energy", r"rank='energy' has an invalid value None"),
        ("tol:abc", r"rank='tol:abc' has an invalid value 'abc'"),
        ("tol:1", r"rank='tol:1' has an invalid value"),
        ("gd:-1", r"rank='gd:-1' has an invalid value '-1'"),
        (2.5, r"rank=2.5 is not valid"),
    ],
)
def test_parse_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_rank(spec)


def test_tolerance_floor_refusal():
    assert tolerance_floor("float64") == pytest.approx(10 * math.sqrt(2.0**-52))
    with pytest.raises(
        ConfigError, match=r"tolerance 1e-08 is below 10·√eps = 1.49e-07 of float64"
    ):
        parse_rank("tol:1e-8")
    with pytest.raises(ConfigError, match=r"below 10·√eps = 0.00345 of float32.*dtype='float64'"):
        parse_rank("tol:1e-3", dtype="float32")
    assert parse_rank("tol:1e-3").value == 1e-3


def test_gavish_donoho_constants():
    assert gavish_donoho_lambda(1.0) == pytest.approx(
        4 / math.sqrt(3), rel=1e-12
    )  # GD 2014, eq. (4)
    assert gavish_donoho_lambda(1e-12) == pytest.approx(math.sqrt(2), rel=1e-6)  # limit β → 0
    # GD 2014, Table/eq. (5): ω(1) = λ*(1)/√μ₁ ≈ 2.858 with μ₁ the MP median
    assert gavish_donoho_lambda(1.0) / math.sqrt(marchenko_pastur_median(1.0)) == pytest.approx(
        2.858, abs=1e-3
    )
    with pytest.raises(ValueError, match=r"beta=1.5 must be in \(0, 1\]"):
        gavish_donoho_lambda(1.5)


def test_energy_and_tol_choices():
    s = np.array([4.0, 2.0, 1.0, 1.0])  # energies 16, 4, 1, 1 of f = 22
    energy = choose_rank(parse_rank("energy:0.9"), s, 22.0, 100, 4)
    assert energy == RankChoice(2, "energy:0.9 → k=2 captures 90.9% of ‖A‖_F²", True)
    # errors √(6/22) = 0.52, √(2/22) = 0.30, √(1/22) = 0.21, 0 for k = 1..4
    tol = choose_rank(parse_rank("tol:0.25"), s, 22.0, 100, 4)
    assert tol == RankChoice(3, "tol:0.25 → k=3 has relative Frobenius error 0.213", True)
    assert choose_rank(parse_rank("tol:0.30"), s, 22.0, 100, 4).rank == 3  # 0.3015 > 0.30
    # a tolerance the sketch cannot reach (part of f is outside the sketch)
    far = choose_rank(parse_rank("tol:0.01"), s, 30.0, 100, 40)
    assert not far.reached
    assert far.rank == 4
    zero = choose_rank(parse_rank("energy:0.5"), np.zeros(3), 0.0, 10, 3)
    assert zero.rank == 1
    assert "zero" in zero.reason


def test_fixed_rank_sizes():
    assert sketch_size(parse_rank(10), 10, n_cols=300, n_rows=2000) == 20
    assert sketch_size(parse_rank(10), 10, n_cols=15, n_rows=2000) == 15
    with pytest.raises(
        ConfigError, match=r"rank=30 exceeds min\(n_rows, n_cols\) = min\(20, 300\)"
    ):
        sketch_size(parse_rank(30), 5, n_cols=300, n_rows=20)
    with pytest.raises(ConfigError, match=r"rank=30 exceeds max_rank=10"):
        sketch_size(parse_rank(30), 5, n_cols=300, n_rows=200, max_rank=10)
    with pytest.raises(ConfigError, match=r"oversample=-1 must be >= 0"):
        sketch_size(parse_rank(3), -1, n_cols=300, n_rows=200)
    assert choose_rank(parse_rank(3), np.ones(5), 5.0, 10, 10).reason == "rank=3 (fixed)"


def test_rule_width_policy():
    rule = parse_rank("energy:0.99")
    assert sketch_size(rule, 10, n_cols=5000, n_rows=10**6) == 100
    assert sketch_size(rule, 40, n_cols=5000, n_rows=10**6) == 160
    assert sketch_size(rule, 10, n_cols=50, n_rows=10**6) == 50
    assert sketch_size(rule, 10, n_cols=5000, n_rows=10**6, max_rank=30) == 40
    kw = {"oversample": 10, "n_rows": 10**6, "n_cols": 5000, "max_rank": 1000}
    # met with k ≤ l − p: accept
    assert next_sketch_size(rule, RankChoice(90, "", True), 100, **kw) is None
    # met but in the oversampling band, or not met: double
    assert next_sketch_size(rule, RankChoice(95, "", True), 100, **kw) == 200
    assert next_sketch_size(rule, RankChoice(100, "", False), 100, **kw) == 200
    assert next_sketch_size(rule, RankChoice(100, "", False), 800, **kw) == 1010  # cap
    with pytest.raises(
        ConfigError, match=r"cannot be met within max_rank=1000 \(sketch width 1010\)"
    ):
        next_sketch_size(rule, RankChoice(1010, "energy:0.99 → k=1010", False), 1010, **kw)
    # the sketch covers the whole spectrum: nothing to grow
    small = {"oversample": 10, "n_rows": 10**6, "n_cols": 50, "max_rank": 50}
    assert next_sketch_size(rule, RankChoice(48, "", True), 50, **small) is None
    # gd never fails: it is capped
    gd = parse_rank("gd")
    assert next_sketch_size(gd, RankChoice(1010, "", True), 1010, **kw) is None
    assert cap_choice(RankChoice(1010, "gd → k=1010", True), 1000).rank == 1000


def _low_rank_plus_noise(rng, m, n, r, sigma):
    # signal singular values 3–6 × the noise edge σ(√m + √n): well above τ
    edge = sigma * (math.sqrt(m) + math.sqrt(n))
    return with_spectrum(rng, m, n, np.linspace(6, 3, r) * edge) + sigma * rng.standard_normal(
        (m, n)
    )


@pytest.mark.parametrize("how", ["given", "residual", "median"])
def test_gavish_donoho_recovers_rank(rng, how):
    m, n, r, sigma = 600, 200, 5, 0.3
    a = _low_rank_plus_noise(rng, m, n, r, sigma)
    s = np.linalg.svd(a, compute_uv=False)
    f = float(np.sum(a**2))
    spec, values = {"given": ("gd:0.3", s), "residual": ("gd", s[:60]), "median": ("gd", s)}[how]
    choice = choose_rank(parse_rank(spec), values, f, m, n)
    assert choice.rank == r, choice.reason
    assert choice.reason.startswith(f"gd → k={r} singular values above τ")
    # noise only: nothing above τ, one component kept and said so
    noise = sigma * rng.standard_normal((m, n))
    pure = choose_rank(
        parse_rank("gd"), np.linalg.svd(noise, compute_uv=False), np.sum(noise**2), m, n
    )
    assert pure.rank == 1
    assert "none above τ" in pure.reason
