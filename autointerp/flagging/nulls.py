"""A flag signal's value against a null sample: ``z = (v - mean(null)) / std(null)`` (None when the
null has no spread) and the empirical upper-tail p-value ``(1 + #{null >= v}) / (1 + n)``; and each
value of a vector against all of them (:func:`zscores`, :func:`percentile_p`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class NullStat(NamedTuple):
    """A value against a null sample."""

    z: float | None
    """``(v - mean) / std`` (sample std); None when the null has fewer than 2 values or no spread."""
    p: float
    """``(1 + #{null >= v}) / (1 + n)``: the upper-tail empirical p-value."""
    null_mean: float | None
    null_std: float | None
    n: int


def against_null(value: float, null: Sequence[float] | np.ndarray) -> NullStat:
    """``value`` against the finite values of ``null``."""
    x = np.asarray(null, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return NullStat(None, 1.0, None, None, 0)
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    z = (value - mean) / std if std > 1e-12 else None
    return NullStat(z, float((1 + (x >= value).sum()) / (1 + x.size)), mean, std, int(x.size))


def zscores(values_F: np.ndarray) -> np.ndarray:
    """Each finite value against the distribution of all of them, ``(v - mean) / std`` (NaN where
    the value is NaN or the spread is 0)."""
    v = np.asarray(values_F, dtype=np.float64)
    ok = np.isfinite(v)
    out = np.full(v.shape, np.nan)
    if ok.sum() > 1:
        std = v[ok].std(ddof=1)
        if std > 1e-12:
            out[ok] = (v[ok] - v[ok].mean()) / std
    return out


def percentile_p(values_F: np.ndarray) -> np.ndarray:
    """Empirical upper-tail p of each finite value among all of them: ``#{g : v_g >= v_f} / n``."""
    v = np.asarray(values_F, dtype=np.float64)
    ok = np.isfinite(v)
    out = np.full(v.shape, np.nan)
    if ok.any():
        s = np.sort(v[ok])
        out[ok] = (s.size - np.searchsorted(s, v[ok], side="left")) / s.size
    return out
