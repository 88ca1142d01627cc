"""Figures of the pipeline's results, drawn with matplotlib's headless Agg backend.

Nothing is drawn at import. Every function writes one PNG through common.atomic_path and
closes its figure. Pictures of an X-ray are drawn margin-free at a fixed pixel size: the
image axes fill their part of the figure, in the coordinates of the 1024x1024 original (the
box file's frame), so a box (x, y, w, h) covers output pixels column x * size / 1024 onward
and row y * size / 1024 onward (x is the column, y the row; the origin is the top-left).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: no display is needed or opened
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from boxfile import Box  # noqa: E402
from common import InputError, atomic_path  # noqa: E402
from constants import CLASS_NAMES, CROP_OFFSET, CROP_SIZE, ORIGINAL_SIZE, RESCALE_FACTOR  # noqa: E402
from metrics_log import read_metrics_log  # noqa: E402
from tables import TruthBox  # noqa: E402

DPI = 100
# Predicted boxes are pure-ish blue, truth boxes red: both stand out from the gray X-ray and a
# test can find their pixels by colour. Label text uses lighter tints, so it is never mistaken
# for a box edge.
PRED_COLOR = "#0050ff"
TRUTH_COLOR = "#ff1a1a"
PRED_TEXT = "#a8c4ff"
TRUTH_TEXT = "#ffb0b0"
BOX_LINEWIDTH = 2.0  # points; 2.8 px at DPI 100
HEATMAP_ALPHA = 0.4
# The 224 heatmap covers the centre crop: 16 px inside the 256 image, i.e. [64, 960) of the 1024 frame.
CROP_START = CROP_OFFSET * RESCALE_FACTOR
CROP_END = (CROP_OFFSET + CROP_SIZE) * RESCALE_FACTOR
COLORBAR_PX = 90  # width of the strip right of a heatmap that holds its colour bar


def _save(fig, out_path: str | os.PathLike) -> None:
    """Write the PNG atomically (the temp name ends in .tmp, so the format is given) and close."""
    try:
        with atomic_path(out_path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        plt.close(fig)


def _image_axes(fig, left_px: float, bottom_px: float, size: int):
    """Margin-free axes of size x size pixels at (left_px, bottom_px), showing the 1024 frame."""
    width, height = fig.get_size_inches() * DPI
    ax = fig.add_axes((left_px / width, bottom_px / height, size / width, size / height))
    ax.set_xlim(0, ORIGINAL_SIZE)
    ax.set_ylim(ORIGINAL_SIZE, 0)  # row 0 at the top, as in the image
    ax.set_axis_off()
    return ax


def _show_xray(ax, image: np.ndarray) -> None:
    """Any square gray image (1024 original, 256 stored) stretched over the 1024 frame."""
    if image.ndim != 2 or image.shape[0] != image.shape[1]:
        raise ValueError(f"expected a square (H, W) gray image, got shape {image.shape}")
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, extent=(0, ORIGINAL_SIZE, ORIGINAL_SIZE, 0),
              interpolation="bilinear" if image.shape[0] < ORIGINAL_SIZE else "nearest")


def _show_heatmap(ax, heatmap: np.ndarray):
    """(224, 224) map in [0, 1] over the centre crop of the 1024 frame."""
    if heatmap.shape != (CROP_SIZE, CROP_SIZE):
        raise ValueError(f"expected a ({CROP_SIZE}, {CROP_SIZE}) heatmap, got shape {heatmap.shape}")
    return ax.imshow(heatmap, cmap="jet", vmin=0.0, vmax=1.0, alpha=HEATMAP_ALPHA, interpolation="bilinear",
                     extent=(CROP_START, CROP_END, CROP_END, CROP_START))


def _colorbar(fig, rect: tuple[float, float, float, float], labelsize: float) -> None:
    """The heatmap scale at full opacity (the overlay's alpha would wash the colours out)."""
    mappable = ScalarMappable(norm=Normalize(0.0, 1.0), cmap="jet")
    bar = fig.colorbar(mappable, cax=fig.add_axes(rect))
    bar.ax.tick_params(labelsize=labelsize)
    bar.set_label("Grad-CAM", fontsize=labelsize)


def _draw_boxes(ax, predicted: Sequence[Box], truth: Sequence[TruthBox] | None,
                probs: dict[str, float] | None, fontsize: float, labels: bool = True) -> None:
    """Truth first (red), predicted on top (blue); labels sit just above each box's top-left corner."""
    for boxes, edge, text_color, is_pred in ((truth or (), TRUTH_COLOR, TRUTH_TEXT, False),
                                             (predicted, PRED_COLOR, PRED_TEXT, True)):
        for box in boxes:
            ax.add_patch(Rectangle((box.x, box.y), box.w, box.h, fill=False, edgecolor=edge,
                                   linewidth=BOX_LINEWIDTH))
            if not labels:
                continue
            text = box.label
            if is_pred and probs and box.label in probs:
                text += f" {probs[box.label]:.2f}"
            # Truth labels go below the box's bottom edge so that a truth and a predicted box at
            # the same corner keep readable labels.
            y, va = (box.y - 6, "bottom") if is_pred else (box.y + box.h + 6, "top")
            ax.text(box.x, y, text, color=text_color, fontsize=fontsize, va=va, ha="left", clip_on=True,
                    bbox=dict(facecolor="black", alpha=0.6, edgecolor="none", pad=1.5))


def _caption(ax, text: str, fontsize: float) -> None:
    """White text on a dark band at the top-left, inside the image (the figure has no margins)."""
    ax.text(12, 12, text, color="white", fontsize=fontsize, va="top", ha="left",
            bbox=dict(facecolor="black", alpha=0.6, edgecolor="none", pad=3))


def _fontsize(size: int) -> float:
    """Text that reads the same at any output size: 11 pt on a 1024 px picture."""
    return max(7.0, 11.0 * size / ORIGINAL_SIZE)


def boxes_figure(image: np.ndarray, predicted: Sequence[Box], truth: Sequence[TruthBox] | None,
                 probs: dict[str, float] | None, out_path: str | os.PathLike, title: str = "",
                 size: int = ORIGINAL_SIZE, labels: bool = True) -> None:
    """X-ray with predicted boxes (blue, class and probability) and truth boxes (red); size x size PNG."""
    fig = plt.figure(figsize=(size / DPI, size / DPI), dpi=DPI)
    ax = _image_axes(fig, 0, 0, size)
    _show_xray(ax, image)
    _draw_boxes(ax, predicted, truth, probs, _fontsize(size), labels)
    legend = "blue: predicted" + ("   red: truth" if truth is not None else "")
    _caption(ax, f"{title}\n{legend}" if title else legend, _fontsize(size))
    _save(fig, out_path)


def heatmap_overlay(image: np.ndarray, heatmap: np.ndarray, label: str, out_path: str | os.PathLike,
                    predicted: Sequence[Box] = (), truth: Sequence[TruthBox] | None = None,
                    prob: float | None = None, size: int = ORIGINAL_SIZE, title: str = "") -> None:
    """Grad-CAM map (224, 224) in jet over the X-ray's centre crop, with a colour bar on the right.

    The PNG is (size + COLORBAR_PX) wide and size high; the X-ray fills the left size x size.
    """
    fig = plt.figure(figsize=((size + COLORBAR_PX) / DPI, size / DPI), dpi=DPI)
    ax = _image_axes(fig, 0, 0, size)
    _show_xray(ax, image)
    _show_heatmap(ax, heatmap)
    _draw_boxes(ax, predicted, truth, None, _fontsize(size))
    head = f"{label} heatmap" + (f"  p={prob:.2f}" if prob is not None else "")
    _caption(ax, f"{title}\n{head}" if title else head, _fontsize(size))
    width = size + COLORBAR_PX
    _colorbar(fig, ((size + 12) / width, 0.1, 18 / width, 0.8), max(7.0, _fontsize(size) * 0.8))
    _save(fig, out_path)


def probability_chart(probs: np.ndarray, thresholds: np.ndarray, out_path: str | os.PathLike,
                      title: str = "", class_names: Sequence[str] = CLASS_NAMES) -> None:
    """Horizontal bars of the 8 probabilities; a black tick marks each class's threshold.

    A class is active (blue bar, bold name) when its probability exceeds its threshold, the rule
    of localization (metrics.youden_thresholds).
    600 x 380 px.
    """
    probs, thresholds = np.asarray(probs, float), np.asarray(thresholds, float)
    active = probs > thresholds
    fig, ax = plt.subplots(figsize=(6.0, 3.8), dpi=DPI)
    rows = np.arange(len(class_names))
    ax.barh(rows, probs, color=np.where(active, PRED_COLOR, "#b0b0b0"), height=0.6)
    ax.scatter(thresholds, rows, marker="|", s=300, color="black", linewidths=2, zorder=3)
    for row, p, t in zip(rows, probs, thresholds):
        ax.text(min(max(p, t), 1.0) + 0.015, row, f"{p:.2f}", va="center", fontsize=8)
    ax.set_yticks(rows, class_names)
    for tick, on in zip(ax.get_yticklabels(), active):
        tick.set_fontweight("bold" if on else "normal")
    ax.invert_yaxis()  # first class on top
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("probability (black tick: the class's threshold; blue: above it)", fontsize=9)
    ax.set_title(title or "class probabilities", fontsize=10)
    fig.tight_layout()
    _save(fig, out_path)


class SheetCell(NamedTuple):
    """One picture of the contact sheet: the X-ray, its heatmap (or None) and its boxes."""
    image: np.ndarray
    heatmap: np.ndarray | None
    predicted: Sequence[Box]
    truth: Sequence[TruthBox]
    caption: str = ""


SHEET_LABEL_PX = 150  # left strip holding each row's class name
SHEET_GAP_PX = 3  # white line between neighbouring cells, so captions and edges do not run together


def contact_sheet(rows: Sequence[tuple[str, Sequence[SheetCell]]], out_path: str | os.PathLike,
                  cell: int = 256) -> None:
    """One row per class, its cells side by side: heatmap overlay, truth red, predicted blue.

    PNG size: (SHEET_LABEL_PX + columns * cell + COLORBAR_PX) x (len(rows) * cell).
    """
    if not rows:
        raise ValueError("contact_sheet needs at least one row")
    columns = max(1, max(len(cells) for _, cells in rows))
    width, height = SHEET_LABEL_PX + columns * cell + COLORBAR_PX, len(rows) * cell
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    fig.patch.set_facecolor("white")
    for r, (class_name, cells) in enumerate(rows):
        bottom = height - (r + 1) * cell
        fig.text(8 / width, (bottom + cell / 2) / height, class_name, fontsize=11, va="center", ha="left")
        for c, item in enumerate(cells):
            ax = _image_axes(fig, SHEET_LABEL_PX + c * cell, bottom + SHEET_GAP_PX, cell - SHEET_GAP_PX)
            _show_xray(ax, item.image)
            if item.heatmap is not None:
                _show_heatmap(ax, item.heatmap)
            _draw_boxes(ax, item.predicted, item.truth, None, _fontsize(cell), labels=False)
            if item.caption:
                _caption(ax, item.caption, 7)
    if any(item.heatmap is not None for _, cells in rows for item in cells):
        _colorbar(fig, ((width - COLORBAR_PX + 12) / width, 0.1, 18 / width, 0.8), 8)
    _save(fig, out_path)


def _defined(values) -> tuple[list, list]:
    """(epochs, values) without the epochs whose value is null (an undefined AUROC)."""
    pairs = [(e, v) for e, v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return [e for e, _ in pairs], [v for _, v in pairs]


def training_curves(metrics_jsonl: str | os.PathLike, out_path: str | os.PathLike) -> None:
    """Loss (train, valid) and per-class + mean validation AUROC per epoch; 1200 x 450 px."""
    records = read_metrics_log(metrics_jsonl)
    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(12.0, 4.5), dpi=DPI)
    for key, style in (("train_loss", "-o"), ("valid_loss", "-s")):
        xs, ys = _defined(zip(epochs, (r.get(key) for r in records)))
        ax_loss.plot(xs, ys, style, label=key.replace("_", " "))
    ax_loss.set(xlabel="epoch", ylabel="BCE loss", title="loss")
    ax_loss.legend(fontsize=8)
    cmap = plt.get_cmap("tab10")
    for k, name in enumerate(CLASS_NAMES):
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
    _save(fig, out_path)


def roc_curves(y_true: np.ndarray, y_prob: np.ndarray, thresholds: np.ndarray,
               out_path: str | os.PathLike, class_names: Sequence[str] = CLASS_NAMES) -> None:
    """One ROC panel per class (2 x 4, 1400 x 700 px) with the threshold's operating point marked.

    The operating point counts a prediction positive when prob > threshold (as localization
    does). A class without a positive or a negative example has no ROC curve: its panel says so.
    """
    from sklearn.metrics import roc_auc_score, roc_curve  # sklearn is slow to import: only when used

    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob, float)
    fig, axes = plt.subplots(2, 4, figsize=(14.0, 7.0), dpi=DPI)
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
        ax.plot(fpr, tpr, color=PRED_COLOR, linewidth=1.5)
        on = score > t
        ax.plot(on[~truth].mean(), on[truth].mean(), "o", color=TRUTH_COLOR, label=f"threshold {t:.3f}")
        ax.set_title(f"{name}  AUROC {roc_auc_score(truth, score):.3f}\n{positives} pos / {negatives} neg",
                     fontsize=9)
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    _save(fig, out_path)


def read_wang_table(path: str | os.PathLike) -> dict[float, dict[str, float]]:
    """docs/wang2017_localization_table4.csv -> {threshold: {class: accuracy}}; '#' lines are notes."""
    try:
        lines = [l for l in Path(path).read_text().splitlines() if l.strip() and not l.startswith("#")]
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    header = lines[0].split(",")
    table: dict[float, dict[str, float]] = {}
    for number, line in enumerate(lines[1:], start=2):
        cells = line.split(",")
        try:
            if len(cells) != len(header):
                raise ValueError
            table[float(cells[0])] = {name: float(v) for name, v in zip(header[1:], cells[1:])}
        except ValueError:
            raise InputError(f"{path}: data row {number}: expected {len(header)} numbers, got {line!r}") from None
    return table


def evaluation_bars(results: dict[str, dict[float, float | None]], wang_table: dict[float, dict[str, float]] | None,
                    out_path: str | os.PathLike, metric: str = "IoBB") -> None:
    """Per-class localization accuracy at each threshold: ours (blue) beside Wang et al. (gray).

    results is {class: {threshold (float or its string): accuracy or None}} (results_from_report
    turns evaluate.py's report into it); one panel per threshold, stacked
    (1200 px wide, 260 px per threshold). A None accuracy (no truth box) draws no bar.
    """
    results = {name: {float(t): v for t, v in per_t.items()} for name, per_t in results.items()}  # '0.1' -> 0.1
    names = [n for n in CLASS_NAMES if n in results] + [n for n in results if n not in CLASS_NAMES]
    thresholds = sorted({t for per_t in results.values() for t in per_t})
    if not thresholds:
        raise ValueError("evaluation_bars: the results hold no threshold")
    fig, axes = plt.subplots(len(thresholds), 1, figsize=(12.0, 2.6 * len(thresholds)), dpi=DPI, squeeze=False)
    x = np.arange(len(names))
    for ax, t in zip(axes[:, 0], thresholds):
        ours = [results[n].get(t) for n in names]
        series = [(0.0, ours, PRED_COLOR, "this run")]
        if wang_table is not None:  # ours left, Wang et al. right of each class's tick
            series = [(-0.2, ours, PRED_COLOR, "this run"),
                      (0.2, [wang_table.get(t, {}).get(n) for n in names], "#9a9a9a", "Wang et al. 2017")]
        for offset, values, color, label in series:
            xs = [i + offset for i, v in enumerate(values) if v is not None]
            ys = [v for v in values if v is not None]
            bars = ax.bar(xs, ys, width=0.38, color=color, label=label)
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
            for i, v in enumerate(values):
                if v is None and (label == "this run" or names[i] in CLASS_NAMES):
                    ax.text(i + offset, 0.02, "n/a", ha="center", fontsize=7, color="dimgray")
        ax.set_xticks(x, names, fontsize=8)
        ax.set_xlim(-0.6, len(names) - 0.4)  # every group's slot, even where no bar is drawn
        ax.set(ylim=(0, 1.3), yticks=np.linspace(0, 1, 6), ylabel="accuracy")  # headroom for the legend
        ax.set_title(f"{metric} > {t:g}", fontsize=9, loc="left")
        ax.legend(fontsize=7, loc="upper right", ncol=2)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, out_path)


# ---------------------------------------------------------------- one call per pipeline stage

def image_figures(out_dir: str | os.PathLike, image_name: str, image: np.ndarray, probs: np.ndarray,
                  thresholds: np.ndarray, heatmaps: dict[int, np.ndarray], predicted: Sequence[Box],
                  truth: Sequence[TruthBox] | None = None, size: int = 512) -> list[Path]:
    """All pictures of one localized image: boxes, the probability chart, one heatmap per class.

    Writes <stem>_boxes.png, <stem>_probs.png and <stem>_heatmap_<Class>.png (for each class
    index in heatmaps) into out_dir; returns their paths. image is (1024, 1024) or (256, 256).
    """
    out, stem = Path(out_dir), Path(image_name).stem
    prob_of = {name: float(p) for name, p in zip(CLASS_NAMES, probs)}
    paths = [out / f"{stem}_boxes.png", out / f"{stem}_probs.png"]
    boxes_figure(image, predicted, truth, prob_of, paths[0], title=image_name, size=size)
    probability_chart(probs, thresholds, paths[1], title=image_name)
    for k, heatmap in sorted(heatmaps.items()):
        name = CLASS_NAMES[k]
        paths.append(out / f"{stem}_heatmap_{name}.png")
        heatmap_overlay(image, heatmap, name, paths[-1], predicted=[b for b in predicted if b.label == name],
                        truth=[b for b in truth or () if b.label == name] if truth is not None else None,
                        prob=prob_of[name], size=size, title=image_name)
    return paths


def training_figures(out_dir: str | os.PathLike, metrics_jsonl: str | os.PathLike,
                     y_true: np.ndarray | None = None, y_prob: np.ndarray | None = None,
                     thresholds: np.ndarray | None = None) -> list[Path]:
    """training_curves.png from metrics.jsonl and, given validation labels/probabilities/thresholds
    ((N, 8), (N, 8), (8,)), roc_curves.png; into out_dir (train.py's --out), returns the paths."""
    out = Path(out_dir)
    paths = [out / "training_curves.png"]
    training_curves(metrics_jsonl, paths[0])
    if y_true is not None and y_prob is not None and thresholds is not None:
        paths.append(out / "roc_curves.png")
        roc_curves(y_true, y_prob, thresholds, paths[1])
    return paths


def results_from_report(report: dict, table: str = "acc_iobb") -> dict[str, dict[float, float | None]]:
    """evaluate.py's report ({'classes': {name: {'acc_iobb': {'0.1': acc, ...}}}}) -> evaluation_bars' results.

    The 'overall' row is kept, drawn as the last group (Wang et al. give no overall figure).
    """
    return {name: {float(t): v for t, v in summary[table].items()} for name, summary in report["classes"].items()}


def evaluation_figures(out_dir: str | os.PathLike, report: dict,
                       wang_csv: str | os.PathLike | None = None) -> list[Path]:
    """localization_iobb.png (beside Wang et al.'s Table 4 when wang_csv is given) and
    localization_iou.png (Table 4 as copied holds IoBB only) from evaluate.py's report."""
    out = Path(out_dir)
    wang = read_wang_table(wang_csv) if wang_csv is not None else None
    paths = [out / "localization_iobb.png", out / "localization_iou.png"]
    evaluation_bars(results_from_report(report, "acc_iobb"), wang, paths[0], metric="IoBB")
    evaluation_bars(results_from_report(report, "acc_iou"), None, paths[1], metric="IoU")
    return paths


class LocalizationPlots:
    """Pictures of a localization run, fed one engine result at a time (denseNet_localization.py --plots).

    The first `max_images` images get image_figures (boxes, probability chart, one heatmap per
    detected class). The contact sheet keeps at most `per_class` cells per class, images with a
    true box of the class first, then images where it was detected; a cell holds the (256, 256)
    image and one (224, 224) heatmap, so memory stays bounded however many images stream past.
    """

    def __init__(self, out_dir: str | os.PathLike, thresholds: np.ndarray,
                 truth: dict[str, list[TruthBox]] | None, max_images: int = 20, per_class: int = 4,
                 size: int = 512):
        self.out, self.thresholds, self.truth = Path(out_dir), np.asarray(thresholds, float), truth
        self.max_images, self.per_class, self.size = max_images, per_class, size
        self.seen = 0
        self._cells: dict[str, tuple[list[SheetCell], list[SheetCell]]] = {n: ([], []) for n in CLASS_NAMES}

    def _wanted(self, truth: Sequence[TruthBox], heatmaps: dict[int, np.ndarray]) -> list[int]:
        """Classes whose sheet row still has room for this image."""
        labels = {b.label for b in truth}
        return [k for k, name in enumerate(CLASS_NAMES) if (name in labels or k in heatmaps)
                and len(self._cells[name][0 if name in labels else 1]) < self.per_class]

    def add(self, image_path: str, probs: np.ndarray, heatmaps: dict[int, np.ndarray],
            predicted: Sequence[Box]) -> list[Path]:
        """Draw this image's figures (while under max_images) and keep its sheet cells; returns the paths."""
        from images import read_xray, resize_stored  # OpenCV only when pictures are drawn

        name = Path(image_path).name
        truth = self.truth.get(name, []) if self.truth is not None else None
        wanted = self._wanted(truth or (), heatmaps)
        paths: list[Path] = []
        if self.seen >= self.max_images and not wanted:
            self.seen += 1
            return paths  # nothing to draw: the image is not even decoded
        image = read_xray(image_path)  # (1024, 1024) uint8
        if self.seen < self.max_images:
            paths = image_figures(self.out, name, image, probs, self.thresholds, heatmaps, predicted, truth,
                                  size=self.size)
        self.seen += 1
        small = resize_stored(image) if wanted else None  # one (256, 256) copy shared by this image's cells
        for k in wanted:
            label = CLASS_NAMES[k]
            class_truth = [b for b in truth or () if b.label == label]
            cell = SheetCell(small, heatmaps.get(k), [b for b in predicted if b.label == label], class_truth,
                             f"{Path(name).stem}  p={float(probs[k]):.2f}")
            self._cells[label][0 if class_truth else 1].append(cell)
        return paths

    def rows(self) -> list[tuple[str, list[SheetCell]]]:
        """Classes with at least one cell, in class order: truth-bearing images first."""
        return [(name, (with_truth + detected)[:self.per_class])
                for name, (with_truth, detected) in self._cells.items() if with_truth or detected]

    def finish(self, cell: int = 256) -> Path | None:
        """Write contact_sheet.png (None when no class was detected and no true box was seen)."""
        rows = self.rows()
        if not rows:
            return None
        path = self.out / "contact_sheet.png"
        contact_sheet(rows, path, cell=cell)
        return path
