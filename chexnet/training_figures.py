"""train.py's pictures: loss and AUROC per epoch, and the validation ROC curves of the best
epoch."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from chexnet import drawing, model_dir
from chexnet.constants import CLASS_NAMES
from chexnet.drawing import plt
from chexnet.model_dir import read_metrics_log


def _defined(values) -> tuple[list, list]:
    """(epochs, values) without the epochs whose value is null (an undefined AUROC)."""
    pairs = [(e, v) for e, v in values
             if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return [e for e, _ in pairs], [v for _, v in pairs]


def training_curves(metrics_jsonl: str | os.PathLike, out_path: str | os.PathLike) -> None:
    """Loss (train, valid) and per-class + mean validation AUROC per epoch; 1200 x 450 px."""
    records = read_metrics_log(metrics_jsonl)
    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(12.0, 4.5), dpi=drawing.DPI)
    for key, style in (("train_loss", "-o"), ("valid_loss", "-s")):
        xs, ys = _defined(zip(epochs, (r.get(key) for r in records)))
        ax_loss.plot(xs, ys, style, label=key.replace("_", " "))
    ax_loss.set(xlabel="epoch", ylabel="BCE loss", title="loss")
    ax_loss.legend(fontsize=8)
    names = list(records[-1].get("auroc") or {}) or list(CLASS_NAMES)  # the run's 8 or 14 classes
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for k, name in enumerate(names):
        xs, ys = _defined(zip(epochs, ((r.get("auroc") or {}).get(name) for r in records)))
        ax_auc.plot(xs, ys, "-", marker=".", color=cmap(k), linewidth=1, label=name)
    xs, ys = _defined(zip(epochs, (r.get("mean_auroc") for r in records)))
    ax_auc.plot(xs, ys, "-o", color="black", linewidth=2.5, label="mean")
    ax_auc.set(xlabel="epoch", ylabel="AUROC", title="validation AUROC (undefined classes omitted)",
               ylim=(0.0, 1.02))
    ax_auc.legend(fontsize=7, ncol=2, loc="lower right")
    for ax in (ax_loss, ax_auc):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    drawing.save_figure(fig, out_path)


def roc_curves(y_true: np.ndarray, y_prob: np.ndarray, thresholds: np.ndarray,
               out_path: str | os.PathLike, class_names: Sequence[str] = CLASS_NAMES) -> None:
    """One ROC panel per class (4 a row: 1400 x 700 px for 8) with the threshold's operating point
    marked (none where the threshold is NaN).

    The operating point counts a prediction positive when prob > threshold (as localization
    does). A class without a positive or a negative example has no ROC curve: its panel says so.
    """
    # sklearn is slow to import: only when used
    from sklearn.metrics import roc_auc_score, roc_curve

    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob, float)
    rows = math.ceil(len(class_names) / 4)
    fig, axes = plt.subplots(rows, 4, figsize=(14.0, 3.5 * rows), dpi=drawing.DPI, squeeze=False)
    for ax in axes.flat[len(class_names):]:
        ax.axis("off")
    for k, (ax, name) in enumerate(zip(axes.flat, class_names)):
        truth, score, t = y_true[:, k].astype(bool), y_prob[:, k], float(thresholds[k])
        ax.plot([0, 1], [0, 1], ":", color="gray", linewidth=1)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), aspect="equal")
        ax.set_xlabel("false positive rate", fontsize=8)
        ax.set_ylabel("true positive rate", fontsize=8)
        positives, negatives = int(truth.sum()), int((~truth).sum())
        if positives == 0 or negatives == 0:
            ax.set_title(name, fontsize=10)
            ax.text(0.5, 0.5, f"undefined:\n{positives} positive, {negatives} negative",
                    ha="center", va="center", fontsize=9, color="dimgray")
            continue
        fpr, tpr, _ = roc_curve(truth, score)
        ax.plot(fpr, tpr, color=drawing.PRED_COLOR, linewidth=1.5)
        if np.isfinite(t):
            on = score > t
            ax.plot(on[~truth].mean(), on[truth].mean(), "o", color=drawing.TRUTH_COLOR,
                    label=f"threshold {t:.3f}")
        ax.set_title(f"{name}  AUROC {roc_auc_score(truth, score):.3f}\n"
                     f"{positives} pos / {negatives} neg", fontsize=9)
        if np.isfinite(t):
            ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    drawing.save_figure(fig, out_path)


def training_figures(out_dir: str | os.PathLike, metrics_jsonl: str | os.PathLike,
                     y_true: np.ndarray | None = None, y_prob: np.ndarray | None = None,
                     thresholds: np.ndarray | None = None) -> list[Path]:
    """training_curves.png from metrics.jsonl and, given validation labels/probabilities/thresholds
    ((N, C), (N, C), (C,)), roc_curves.png; into out_dir (train.py's --out), returns the paths."""
    out = Path(out_dir)
    paths = [out / model_dir.TRAINING_CURVES]
    training_curves(metrics_jsonl, paths[0])
    if y_true is not None and y_prob is not None and thresholds is not None:
        paths.append(out / model_dir.ROC_CURVES)
        names = list(read_metrics_log(metrics_jsonl)[-1].get("auroc") or {}) or list(CLASS_NAMES)
        roc_curves(y_true, y_prob, thresholds, paths[1], names)
    return paths
