"""DeLong's test for two correlated AUROCs (the same images, two models), in the fast midrank
form of Sun & Xu (2014), exact with ties.

For one class with m positives X and n negatives Y, an AUROC is the mean of psi(x, y) over all
m*n pairs, psi = 1 if x > y, 1/2 if x == y, else 0. DeLong et al. (1988) split it into structural
components: V10[i] = mean_j psi(X[i], Y[j]) for each positive and V01[j] = mean_i psi(X[i], Y[j])
for each negative. Sun & Xu get them from midranks in O((m+n) log(m+n)) instead of O(m*n):

    V10[i] = (Tz[i] - Tx[i]) / n,   V01[j] = 1 - (Tz[m+j] - Ty[j]) / m

with Tz the midranks of all m+n scores, Tx within the positives, Ty within the negatives. The
covariance of the two AUROCs is S10/m + S01/n (S10, S01: the 2x2 sample covariances of the
components across positives and across negatives); the difference A - B has variance
S[0,0] + S[1,1] - 2 S[0,1], and z = (A - B) / sqrt(var) is compared with the normal law.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class DelongResult:
    auroc_a: float
    auroc_b: float
    delta: float  # auroc_a - auroc_b
    variance: float  # of delta
    z: float | None  # None when the variance is 0
    # two-sided; variance 0 (no pair-to-pair spread of A - B): 1.0 when delta is 0 (the two
    # models order every pair alike, e.g. a model against itself), else 0.0
    p: float


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x where tied values share the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # starts of the runs of equal values, and each run's mean rank
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0  # ranks starts+1 .. ends, averaged
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def components(positive_scores: np.ndarray, negative_scores: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """(V10 (m,), V01 (n,)): DeLong's structural components of one model, by midranks."""
    x = np.asarray(positive_scores, np.float64)
    y = np.asarray(negative_scores, np.float64)
    m, n = len(x), len(y)
    tz = midranks(np.concatenate([x, y]))
    v10 = (tz[:m] - midranks(x)) / n
    v01 = 1.0 - (tz[m:] - midranks(y)) / m
    return v10, v01


def delong_paired(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> DelongResult:
    """DeLong's test of AUROC(A) == AUROC(B) on one class: labels 0/1 (N,), scores (N,) each.
    Needs at least 2 positives and 2 negatives (a sample covariance on each side)."""
    truth = np.asarray(labels, bool)
    m, n = int(truth.sum()), int((~truth).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs 2 positives and 2 negatives, got {m} and {n}")
    v10, v01 = zip(*(components(np.asarray(s)[truth], np.asarray(s)[~truth])
                     for s in (scores_a, scores_b)))
    aurocs = [float(v.mean()) for v in v10]
    s = np.cov(np.stack(v10)) / m + np.cov(np.stack(v01)) / n  # (2, 2)
    variance = float(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    delta = aurocs[0] - aurocs[1]
    if variance <= 1e-15 * max(1.0, s[0, 0] + s[1, 1]):  # the same order of every pair
        return DelongResult(aurocs[0], aurocs[1], delta, 0.0, None, 1.0 if delta == 0 else 0.0)
    z = delta / math.sqrt(variance)
    return DelongResult(aurocs[0], aurocs[1], delta, variance, z, math.erfc(abs(z) / math.sqrt(2)))
