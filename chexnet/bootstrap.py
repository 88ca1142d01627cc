"""Test-set AUROC with patient-level bootstrap intervals, and the operating point of thresholds.

The bootstrap resamples patients, not images: images of one patient are correlated, and an
image-level resample would make the interval too narrow. One draw takes P patients with
replacement out of the P patients of the test set; every image of a patient drawn k times
counts k times. Each draw gives every class's AUROC from the same patients (and the mean over the
classes); the interval is the 2.5th and 97.5th percentiles of the draws where the figure is
defined (a draw without a positive of a rare class is left out for that class, and counted).
The paired bootstrap of two models weighs both with the same draws of patients, and takes the
interval of the difference A - B from the same draws.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95


def _grouped_auroc(positive: np.ndarray, groups: np.ndarray, weights: np.ndarray) -> float | None:
    """AUROC where image i counts weights[i] times (ties count one half); None if undefined. With
    all weights 1 it is sklearn's roc_auc_score (the Mann-Whitney statistic). groups: each image's
    rank among the distinct scores (0 = lowest)."""
    size = int(groups.max()) + 1
    pos = np.bincount(groups, weights * positive, minlength=size)  # positive weight per score
    neg = np.bincount(groups, weights * ~positive, minlength=size)
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos == 0 or total_neg == 0:
        return None
    below = np.cumsum(neg) - neg  # negative weight strictly below each score
    return float((pos * (below + 0.5 * neg)).sum() / (total_pos * total_neg))


@dataclass
class BootstrapResult:
    draws: int
    low: list[float | None]  # per class, then the mean's as the last entry
    high: list[float | None]
    used: list[int]  # draws where the figure was defined


def patient_weights(patients: list[str], draws: int, seed: int):
    """Per draw, (N,) float weights: how many times each image's patient was drawn (P patients
    with replacement out of P). The same seed gives the same draws to every caller."""
    ids, patient_of = np.unique(np.asarray(patients), return_inverse=True)
    rng = np.random.default_rng(seed)
    for _ in range(draws):
        counts = np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids))
        yield counts[patient_of].astype(np.float64)


def _draw_aurocs(positive: np.ndarray, ranks: list[np.ndarray], weights: np.ndarray,
                 mean_over: list[int]) -> np.ndarray:
    """(C + 1,): each class's AUROC of one draw (NaN where undefined), then the mean of
    mean_over (NaN where one of them is undefined, or mean_over is empty)."""
    values = np.full(len(ranks) + 1, np.nan)
    for c, rank in enumerate(ranks):
        value = _grouped_auroc(positive[:, c], rank, weights)
        values[c] = np.nan if value is None else value
    if mean_over:
        values[-1] = values[mean_over].mean()
    return values


def _percentiles(values: np.ndarray, draws: int) -> BootstrapResult:
    """values (draws, K) with NaN where undefined -> the interval of each column."""
    alpha = (1 - CONFIDENCE) / 2 * 100
    low, high, used = [], [], []
    for column in values.T:
        kept = column[np.isfinite(column)]
        used.append(len(kept))
        low.append(float(np.percentile(kept, alpha)) if len(kept) else None)
        high.append(float(np.percentile(kept, 100 - alpha)) if len(kept) else None)
    return BootstrapResult(draws, low, high, used)


def _ranks(scores: np.ndarray) -> list[np.ndarray]:
    return [np.unique(scores[:, c], return_inverse=True)[1] for c in range(scores.shape[1])]


def patient_bootstrap(labels: np.ndarray, scores: np.ndarray, patients: list[str], draws: int,
                      seed: int, mean_over: list[int]) -> BootstrapResult:
    """Percentile intervals of each class's AUROC and of the mean over the classes `mean_over`.

    labels 0/1 (N, C), scores (N, C), patients (N,) ids. A draw counts for the mean only when
    every class of mean_over is defined in it.
    """
    positive, ranks = np.asarray(labels, bool), _ranks(scores)
    values = np.stack([_draw_aurocs(positive, ranks, w, mean_over)
                       for w in patient_weights(patients, draws, seed)]
                      ) if draws else np.full((0, scores.shape[1] + 1), np.nan)
    return _percentiles(values, draws)


def paired_bootstrap(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray,
                     patients: list[str], draws: int, seed: int, mean_over: list[int]
                     ) -> BootstrapResult:
    """Percentile intervals of AUROC(A) - AUROC(B) per class and for the mean over mean_over:
    each draw weighs both models' images by the same resampled patients (a paired bootstrap)."""
    positive, ranks_a, ranks_b = np.asarray(labels, bool), _ranks(scores_a), _ranks(scores_b)
    values = np.full((draws, scores_a.shape[1] + 1), np.nan)
    for d, weights in enumerate(patient_weights(patients, draws, seed)):
        values[d] = (_draw_aurocs(positive, ranks_a, weights, mean_over)
                     - _draw_aurocs(positive, ranks_b, weights, mean_over))
    return _percentiles(values, draws)


def operating_point(labels: np.ndarray, scores: np.ndarray, threshold: float
                    ) -> tuple[float | None, float | None]:
    """(sensitivity, specificity) where prob > threshold counts positive (as localization
    decides)."""
    truth, on = np.asarray(labels, bool), np.asarray(scores) > threshold
    sensitivity = float(on[truth].mean()) if truth.any() else None
    specificity = float((~on[~truth]).mean()) if (~truth).any() else None
    return sensitivity, specificity
