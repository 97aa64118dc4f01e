"""Scoring metrics: pure functions of labels, scores and activations (no I/O, no models).

* ``correlation_score(true, predicted)``: Pearson's r over every token of every context,
  ``r = cov(a, p) / (std(a) std(p))`` with ``a``, ``p`` the flattened activations and predictions.
* ``auroc(labels, scores)``: area under the ROC curve, ``P(score(pos) > score(neg))``.
* ``balanced_accuracy(labels, predictions)``: ``(TPR + TNR) / 2``; 0.5 for a constant guess.
* ``bootstrap_ci(*columns, statistic=...)``: percentile interval of a statistic when the items
  (contexts) are resampled with replacement.

Undefined values raise ``ValueError`` rather than returning a number that looks like a
measurement: a constant prediction has no correlation (not 0), one class has no AUROC (not 0.5).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import balanced_accuracy_score


def _flatten(x) -> np.ndarray:
    """A flat float array from a number sequence or a sequence of per-context sequences."""
    if len(x) and isinstance(x[0], (list, tuple, np.ndarray)):
        return np.concatenate([np.asarray(c, dtype=np.float64).ravel() for c in x]) if len(x) else np.zeros(0)
    return np.asarray(x, dtype=np.float64).ravel()


def correlation_score(true, predicted) -> float:
    """Pearson's r between true activations and predictions over all tokens of all contexts.

    ``true`` and ``predicted``: flat sequences, or per-context sequences (flattened in order);
    the flattened lengths must match. Raises ``ValueError`` when r is undefined: fewer than two
    tokens, a non-finite value, or either vector constant.
    """
    a, p = _flatten(true), _flatten(predicted)
    if a.shape != p.shape:
        raise ValueError(f"true and predicted differ in length: {a.size} vs {p.size}")
    if a.size < 2:
        raise ValueError(f"correlation needs at least 2 tokens, got {a.size}")
    if not (np.isfinite(a).all() and np.isfinite(p).all()):
        raise ValueError("correlation of non-finite values")
    if np.ptp(a) == 0 or np.ptp(p) == 0:
        which = "true activations" if np.ptp(a) == 0 else "predictions"
        raise ValueError(f"correlation undefined: the {which} are constant")
    return float(np.corrcoef(a, p)[0, 1])


def _binary(labels) -> np.ndarray:
    y = np.asarray(labels).astype(int).ravel()
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1 (or bool)")
    if y.min(initial=1) == y.max(initial=0):
        raise ValueError("undefined: labels hold a single class")
    return y


def auroc(labels, scores) -> float:
    """Area under the ROC curve of ``scores`` for 0/1 ``labels``; ``ValueError`` with one class.

    Computed as the Mann-Whitney statistic ``(R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``
    with ``R_pos`` the sum of the positives' (tie-averaged) ranks: the same value as
    ``sklearn.metrics.roc_auc_score`` (ties count one half), without its per-call input
    validation, which dominated the bootstrap (1,000 calls per interval).
    """
    y = _binary(labels)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.shape != y.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if not np.isfinite(s).all():
        raise ValueError("AUROC of non-finite scores")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    rank_sum = float(rankdata(s)[y == 1].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def balanced_accuracy(labels, predictions) -> float:
    """``(TPR + TNR) / 2`` of 0/1 ``predictions``; ``ValueError`` when the labels hold one class."""
    y = _binary(labels)
    p = np.asarray(predictions).astype(int).ravel()
    if p.shape != y.shape:
        raise ValueError(f"labels and predictions differ in length: {y.size} vs {p.size}")
    return float(balanced_accuracy_score(y, p))


class CI(NamedTuple):
    """A bootstrap percentile interval."""

    low: float | None
    """``alpha/2`` percentile of the resampled statistic; None when too few resamples were defined."""
    high: float | None
    """``1 - alpha/2`` percentile."""
    n_valid: int
    """resamples where the statistic was defined (no ``ValueError``)."""


def bootstrap_ci(*columns: Sequence, statistic: Callable[..., float], n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05, min_valid: float = 0.5) -> CI:
    """Percentile CI of ``statistic(*columns)`` under resampling of the items with replacement.

    ``columns`` are parallel per-item sequences (``(labels, scores)``, or per-context
    ``(true, predicted)`` lists): item ``i`` is ``(c[i] for c in columns)`` and stays whole, so
    the contexts, not the tokens, are resampled. Resamples where ``statistic`` raises
    ``ValueError`` (one class drawn, a constant vector) are skipped; if fewer than
    ``min_valid * n_boot`` remain, both ends are None.
    """
    if not columns:
        raise ValueError("bootstrap_ci needs at least one column")
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        raise ValueError(f"columns differ in length: {[len(c) for c in columns]}")
    if n == 0 or n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"need items, n_boot >= 1 and alpha in (0, 1); "
                         f"got n={n}, n_boot={n_boot}, alpha={alpha}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    if statistic in _VECTORISED:
        values = list(_VECTORISED[statistic](idx, *columns))
    else:
        values = []
        for row in idx:
            try:
                values.append(statistic(*([c[i] for i in row] for c in columns)))
            except ValueError:
                continue
    if len(values) < min_valid * n_boot:
        return CI(None, None, len(values))
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return CI(float(lo), float(hi), len(values))


def _auroc_resamples(idx: np.ndarray, labels, scores) -> np.ndarray:
    """``auroc`` of every resample at once: ``idx`` ``[n_boot, n]`` -> the defined values ``[<= n_boot]``."""
    y = np.asarray(labels).astype(int).ravel()[idx]
    s = np.asarray(scores, dtype=np.float64).ravel()[idx]
    n_pos = y.sum(axis=1)
    n_neg = y.shape[1] - n_pos
    defined = (n_pos > 0) & (n_neg > 0) & np.isfinite(s).all(axis=1)
    rank_sum = (rankdata(s[defined], axis=1) * y[defined]).sum(axis=1)
    p = n_pos[defined]
    return (rank_sum - p * (p + 1) / 2) / (p * n_neg[defined])


_VECTORISED: dict[Callable, Callable[..., np.ndarray]] = {auroc: _auroc_resamples}
"""statistics whose bootstrap runs as one array computation (same values as the loop)."""
