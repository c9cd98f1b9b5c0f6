"""Statistics and metrics shared by evaluation, imagination, the critic and the benchmarks: intervals and paired
tests of success rates, rank statistics, and image metrics. Pure functions of arrays.

    wilson_interval(k, n)           95% interval of a success rate
    paired_difference(a, b)         two policies on the same episodes: difference, bootstrap interval, McNemar's p
    spearman(a, b), auc(s, labels)  rank correlation; area under the ROC curve
    psnr(a, b), ssim(a, b)          image metrics of frames in [0, 1]
"""

from __future__ import annotations

import numpy as np


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (the probability that a done frame outscores a not-done one)."""
    pos, neg = labels > 0.5, labels <= 0.5
    if not pos.any() or not neg.any():
        return None
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * neg.sum()))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of x, tied values sharing their mean rank."""
    x = np.asarray(x, float)
    r = np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(float)
    for v in np.unique(x):
        r[x == v] = r[x == v].mean()
    return r


def spearman(a, b) -> float:
    """Spearman's rank correlation (nan for fewer than two points or a constant side)."""
    ra, rb = average_ranks(a), average_ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1]) if len(ra) > 1 and ra.std() > 0 and rb.std() > 0 else float("nan")

