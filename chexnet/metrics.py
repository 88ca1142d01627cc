"""Validation metrics: per-class AUROC and per-class decision thresholds (Youden's J).

A class whose labels hold no positive or no negative has no ROC curve: its AUROC is None
(reported as "undefined", left out of the mean) and its threshold is DEFAULT_THRESHOLD.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from chexnet.constants import DEFAULT_THRESHOLD


def _defined(labels: np.ndarray) -> bool:
    """A ROC curve needs at least one positive and one negative."""
    positives = int(labels.sum())
    return 0 < positives < len(labels)


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must both be "
                         "(N, classes)")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity; the model diverged")
    return labels, scores


def per_class_auroc(labels: np.ndarray, scores: np.ndarray) -> list[float | None]:
    """labels 0/1 (N, C), scores (N, C) -> C AUROCs, None where undefined."""
    labels, scores = _check(labels, scores)
    return [float(roc_auc_score(labels[:, c], scores[:, c])) if _defined(labels[:, c]) else None
            for c in range(labels.shape[1])]


def mean_auroc(aurocs: list[float | None]) -> float | None:
    """Mean over the defined classes; None when no class is defined."""
    defined = [a for a in aurocs if a is not None]
    return float(np.mean(defined)) if defined else None


def youden_thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """labels 0/1 (N, C), float32 probabilities (N, C) -> float32 (C,) thresholds maximising
    tpr - fpr.

    Localization predicts a class where prob > threshold, both float32. roc_curve's cut points mean
    'score >= t' (t is a score itself; the first one is +inf: nothing predicted), so we return the
    midpoint between the best cut point and the next lower score (or 0), which makes '>' select
    exactly the same images; the +inf cut point becomes 1.0. The midpoint is taken in float32, the
    precision at which it is applied: where the two scores are adjacent float32 values it would
    round up to the cut itself and select nothing, so then the float32 just below the cut is used.
    """
    labels, probs = _check(labels, probs)
    out = np.full(labels.shape[1], DEFAULT_THRESHOLD, dtype=np.float32)
    for c in range(labels.shape[1]):
        if _defined(labels[:, c]):
            fpr, tpr, cuts = roc_curve(labels[:, c], probs[:, c], drop_intermediate=False)
            best = int(np.argmax(tpr - fpr))  # first maximum: the highest cut point among ties
            lower = cuts[best + 1] if best + 1 < len(cuts) else 0.0
            out[c] = 1.0 if not np.isfinite(cuts[best]) else _below(cuts[best], lower)
    return out


def _below(cut: float, lower: float) -> np.float32:
    """A float32 t with lower <= t < cut: 'p > t' is then 'p >= cut' for every float32 p."""
    cut32 = np.float32(cut)
    t = np.float32((float(cut) + float(lower)) / 2)
    return t if t < cut32 else np.nextafter(cut32, np.float32(-np.inf))


def format_auroc(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"
