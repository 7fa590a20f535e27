"""Seed statistics for every table, figure and MLflow parent run: one implementation.

Runs of one variant over seeds are treated as a sample; an interval is the two-sided Student-t interval of the mean
(``mean ± t_{1-α/2, n-1} · s / √n``, s the sample standard deviation). A comparison with a reference variant pairs
the runs by seed (same data order and augmentation draws) and takes the interval of the mean per-seed difference:
the paired t interval, whose test (paired t-test, two-sided) rejects "no difference" exactly when the interval
excludes 0. The minimum detectable effect is the true mean difference a two-sided paired t-test at level α detects
with the given power, for the observed spread of the differences: ``(t_{1-α/2, n-1} + t_{power, n-1}) · s_d / √n``
(the usual normal-approximation formula with t quantiles, e.g. Cohen 1988, ch. 2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _scipy_stats

__all__ = ["Interval", "mean_ci", "paired_delta_ci", "minimum_detectable_effect"]


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided confidence interval over ``n`` values (``lo``/``hi`` NaN when ``n < 2``)."""

    mean: float
    lo: float
    hi: float
    n: int
    std: float
    confidence: float = 0.95

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (False without an interval)."""
        return math.isfinite(self.lo) and (self.lo > 0 or self.hi < 0)


def _t(q: float, df: int) -> float:
    return float(_scipy_stats.t.ppf(q, df))


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean of ``values`` with its Student-t interval; NaN values are an error, an empty sample too."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        raise ValueError("mean_ci needs at least one value")
    if not np.isfinite(arr).all():
        raise ValueError(f"mean_ci got a non-finite value: {arr.tolist()}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean = float(arr.mean())
    if arr.size < 2:
        return Interval(mean, math.nan, math.nan, 1, math.nan, confidence)
    std = float(arr.std(ddof=1))
    half = _t(1 - (1 - confidence) / 2, arr.size - 1) * std / math.sqrt(arr.size)
    return Interval(mean, mean - half, mean + half, int(arr.size), std, confidence)


def paired_delta_ci(values: Mapping[int, float], reference: Mapping[int, float], confidence: float = 0.95) -> Interval:
    """Mean per-seed difference ``values[s] - reference[s]`` over the seeds both have, with its paired-t interval.

    Seeds present on one side only are an error: an unpaired seed would silently turn the paired test into an
    unpaired one.
    """
    missing = sorted(set(values) ^ set(reference))
    if missing:
        raise ValueError(f"paired comparison needs the same seeds on both sides; unpaired seeds: {missing}")
    seeds = sorted(values)
    return mean_ci([values[s] - reference[s] for s in seeds], confidence)


def minimum_detectable_effect(std_diff: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean paired difference detected with ``power`` by a two-sided paired t-test at ``alpha``.

    ``std_diff`` is the sample standard deviation of the per-seed differences; NaN when ``n < 2``.
    """
    if n < 2 or not math.isfinite(std_diff):
        return math.nan
    df = n - 1
    return (_t(1 - alpha / 2, df) + _t(power, df)) * std_diff / math.sqrt(n)
