"""Seed statistics: intervals worked out by hand (t quantiles from printed tables)."""

import math

import pytest

from avs_mamba.report.stats import mean_ci, minimum_detectable_effect, paired_delta_ci

T_975_DF2 = 4.302652729911275  # Student t, 0.975 quantile, 2 degrees of freedom
T_80_DF2 = 1.0606601717798212  # 0.80 quantile, 2 degrees of freedom


def test_mean_ci_three_values():
    ci = mean_ci([1.0, 2.0, 3.0])  # mean 2, sample std 1
    half = T_975_DF2 * 1.0 / math.sqrt(3)
    assert ci.mean == pytest.approx(2.0)
    assert ci.std == pytest.approx(1.0)
    assert (ci.lo, ci.hi) == pytest.approx((2.0 - half, 2.0 + half))
    assert ci.n == 3 and not ci.excludes_zero  # lo = -0.48


def test_one_value_has_no_interval():
    ci = mean_ci([0.7])
    assert ci.mean == 0.7 and ci.n == 1
    assert math.isnan(ci.lo) and math.isnan(ci.hi) and not ci.excludes_zero


def test_paired_delta_uses_per_seed_differences():
    # differences 1, 2, 1: mean 4/3, sample std sqrt(1/3)
    ci = paired_delta_ci({0: 5.0, 1: 7.0, 2: 6.0}, {0: 4.0, 1: 5.0, 2: 5.0})
    half = T_975_DF2 * math.sqrt(1 / 3) / math.sqrt(3)
    assert ci.mean == pytest.approx(4 / 3)
    assert (ci.lo, ci.hi) == pytest.approx((4 / 3 - half, 4 / 3 + half))
    assert not ci.excludes_zero  # lo = -0.10


def test_paired_delta_excludes_zero_when_consistent():
    ci = paired_delta_ci({0: 3.0, 1: 3.1, 2: 2.9}, {0: 1.0, 1: 1.0, 2: 1.0})
    assert ci.excludes_zero and ci.lo > 0


def test_unpaired_seed_is_an_error():
    with pytest.raises(ValueError, match=r"unpaired seeds: \[2\]"):
        paired_delta_ci({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.0, 1: 2.0})


def test_minimum_detectable_effect():
    assert minimum_detectable_effect(1.0, 3) == pytest.approx((T_975_DF2 + T_80_DF2) / math.sqrt(3))
    assert math.isnan(minimum_detectable_effect(1.0, 1))


def test_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        mean_ci([])
    with pytest.raises(ValueError, match="non-finite"):
        mean_ci([1.0, float("nan")])
