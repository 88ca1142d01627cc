"""Pictures of localized images: boxes, heatmaps, probabilities, and the contact sheet of a run.

X-ray pictures use drawing's frame: the image's own pixels ((1024, 1024) unless a frame is given),
margin-free, `size` pixels wide and as high as the frame's aspect ratio asks.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from chexnet import drawing
from chexnet.boxfile import Box
from chexnet.constants import CLASS_NAMES, CLASS_SETS, ORIGINAL_SIZE
from chexnet.drawing import plt
from chexnet.nih import TruthBox


def boxes_figure(image: np.ndarray, predicted: Sequence[Box], truth: Sequence[TruthBox] | None,
                 probs: dict[str, float] | None, out_path: str | os.PathLike, title: str = "",
                 size: int = ORIGINAL_SIZE, labels: bool = True,
                 frame: tuple[int, int] = drawing.SQUARE) -> None:
    """X-ray with predicted boxes (blue, class and probability) and truth boxes (red), in the
    frame (width, height) of the boxes; a PNG size wide, drawing.picture_height(size, frame)
    high."""
    tall = drawing.picture_height(size, frame)
    fig = plt.figure(figsize=(size / drawing.DPI, tall / drawing.DPI), dpi=drawing.DPI)
    ax = drawing.image_axes(fig, 0, 0, size, frame, tall)
    drawing.show_xray(ax, image, frame)
    legend = "blue: predicted" + ("   red: truth" if truth is not None else "")
    text = drawing.caption(ax, f"{title}\n{legend}" if title else legend, drawing.fontsize(size))
    drawing.draw_boxes(ax, predicted, truth, probs, drawing.fontsize(size), labels, avoid=[text])
    drawing.save_figure(fig, out_path)


def map_name(cam: str = "gradcam", layer: str | None = None) -> str:
    """'LayerCAM at denseblock2+denseblock3': the method (and the layers) that made a map, as the
    pictures name it; layer: one module name or several joined by commas, None: not named."""
    if not layer:
        return drawing.cam_title(cam)
    layers = "+".join(name.removeprefix("features.") for name in layer.split(","))
    return f"{drawing.cam_title(cam)} at {layers}"


def heatmap_overlay(image: np.ndarray, heatmap: np.ndarray, label: str, out_path: str | os.PathLike,
                    predicted: Sequence[Box] = (), truth: Sequence[TruthBox] | None = None,
                    prob: float | None = None, size: int = ORIGINAL_SIZE, title: str = "",
                    frame: tuple[int, int] = drawing.SQUARE, cam: str = "gradcam",
                    layer: str | None = None) -> None:
    """The map (224, 224) of the method cam (at layer) in jet over the X-ray's centre crop, with a
    colour bar on the right; caption and colour bar name the method.

    The PNG is (size + drawing.COLORBAR_PX) wide and picture_height(size, frame) high; the X-ray
    fills the left part.
    """
    tall = drawing.picture_height(size, frame)
    fig = plt.figure(figsize=((size + drawing.COLORBAR_PX) / drawing.DPI, tall / drawing.DPI),
                     dpi=drawing.DPI)
    ax = drawing.image_axes(fig, 0, 0, size, frame, tall)
    drawing.show_xray(ax, image, frame)
    drawing.show_heatmap(ax, heatmap, frame)
    head = f"{label}: {map_name(cam, layer)}" + (f"  p={prob:.2f}" if prob is not None else "")
    text = drawing.caption(ax, f"{title}\n{head}" if title else head, drawing.fontsize(size))
    drawing.draw_boxes(ax, predicted, truth, None, drawing.fontsize(size), avoid=[text])
    width = size + drawing.COLORBAR_PX
    drawing.colorbar(fig, ((size + 12) / width, 0.1, 18 / width, 0.8),
                     max(7.0, drawing.fontsize(size) * 0.8), drawing.cam_title(cam))
    drawing.save_figure(fig, out_path)


def probability_chart(probs: np.ndarray, thresholds: np.ndarray, out_path: str | os.PathLike,
                      title: str = "", class_names: Sequence[str] = CLASS_NAMES) -> None:
    """Horizontal bars of the 8 probabilities; a black tick marks each class's threshold.

    A class is active (blue bar, bold name) when its probability exceeds its threshold, the rule
    of localization (metrics.youden_thresholds).
    600 x 380 px.
    """
    probs, thresholds = np.asarray(probs, float), np.asarray(thresholds, float)
    active = probs > thresholds
    fig, ax = plt.subplots(figsize=(6.0, 3.8), dpi=drawing.DPI)
    rows = np.arange(len(class_names))
    ax.barh(rows, probs, color=np.where(active, drawing.PRED_COLOR, "#b0b0b0"), height=0.6)
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
    drawing.save_figure(fig, out_path)


class SheetCell(NamedTuple):
    """One picture of the contact sheet: the X-ray, its heatmap (or None) and its boxes."""
    image: np.ndarray
    heatmap: np.ndarray | None
    predicted: Sequence[Box]
    truth: Sequence[TruthBox]
    caption: str = ""
    # the boxes' frame: the original image's (width, height)
    frame: tuple[int, int] = drawing.SQUARE


SHEET_LABEL_PX = 150  # left strip holding each row's class name


SHEET_GAP_PX = 3  # white line between neighbouring cells, so captions and edges do not run together


def contact_sheet(rows: Sequence[tuple[str, Sequence[SheetCell]]], out_path: str | os.PathLike,
                  cell: int = 256, cam: str = "gradcam") -> None:
    """One row per class, its cells side by side: heatmap overlay (the colour bar names the
    method cam), truth red, predicted blue.

    PNG size: (SHEET_LABEL_PX + columns * cell + drawing.COLORBAR_PX) x (len(rows) * cell).
    """
    if not rows:
        raise ValueError("contact_sheet needs at least one row")
    columns = max(1, max(len(cells) for _, cells in rows))
    width, height = SHEET_LABEL_PX + columns * cell + drawing.COLORBAR_PX, len(rows) * cell
    fig = plt.figure(figsize=(width / drawing.DPI, height / drawing.DPI), dpi=drawing.DPI)
    fig.patch.set_facecolor("white")
    for r, (class_name, cells) in enumerate(rows):
        bottom = height - (r + 1) * cell
        fig.text(8 / width, (bottom + cell / 2) / height, class_name, fontsize=11, va="center",
                 ha="left")
        for c, item in enumerate(cells):
            # square cells: a non-square frame is stretched, its boxes with it
            ax = drawing.image_axes(fig, SHEET_LABEL_PX + c * cell, bottom + SHEET_GAP_PX,
                                    cell - SHEET_GAP_PX, item.frame)
            drawing.show_xray(ax, item.image, item.frame)
            if item.heatmap is not None:
                drawing.show_heatmap(ax, item.heatmap, item.frame)
            drawing.draw_boxes(ax, item.predicted, item.truth, None, drawing.fontsize(cell),
                               labels=False)
            if item.caption:
                drawing.caption(ax, item.caption, 7)
    if any(item.heatmap is not None for _, cells in rows for item in cells):
        drawing.colorbar(fig, ((width - drawing.COLORBAR_PX + 12) / width, 0.1, 18 / width, 0.8),
                         8, drawing.cam_title(cam))
    drawing.save_figure(fig, out_path)


def image_figures(out_dir: str | os.PathLike, image_name: str, image: np.ndarray, probs: np.ndarray,
                  thresholds: np.ndarray, heatmaps: dict[int, np.ndarray], predicted: Sequence[Box],
                  truth: Sequence[TruthBox] | None = None, size: int = 512,
                  frame: tuple[int, int] = drawing.SQUARE,
                  class_names: Sequence[str] | None = None, cam: str = "gradcam",
                  layer: str | None = None) -> list[Path]:
    """All pictures of one localized image: boxes, the probability chart, one heatmap per class
    (made by the method cam at layer, as their captions say).

    Writes <stem>_boxes.png, <stem>_probs.png and <stem>_heatmap_<Class>.png (for each model
    column in heatmaps) into out_dir; returns their paths. class_names: the model's, one per
    probability (None: the usual order of 8 or 14). frame: the boxes' (width, height), over which
    the image (the original, or its 256 stored form) is drawn.
    """
    out, stem = Path(out_dir), Path(image_name).stem
    names = list(class_names or CLASS_SETS.get(len(probs), CLASS_NAMES))
    prob_of = {name: float(p) for name, p in zip(names, probs)}
    paths = [out / f"{stem}_boxes.png", out / f"{stem}_probs.png"]
    boxes_figure(image, predicted, truth, prob_of, paths[0], title=image_name, size=size,
                 frame=frame)
    probability_chart(probs, thresholds, paths[1], title=image_name, class_names=names)
    for k, heatmap in sorted(heatmaps.items()):
        name = names[k]
        paths.append(out / f"{stem}_heatmap_{name}.png")
        heatmap_overlay(image, heatmap, name, paths[-1],
                        predicted=[b for b in predicted if b.label == name],
                        truth=([b for b in truth or () if b.label == name] if truth is not None
                               else None),
                        prob=prob_of[name], size=size, title=image_name, frame=frame, cam=cam,
                        layer=layer)
    return paths


class LocalizationPlots:
    """Pictures of a localization run, fed one engine result at a time (denseNet_localization.py
    --plots).

    The first `max_images` images get image_figures (boxes, probability chart, one heatmap per
    detected class). The contact sheet keeps at most `per_class` cells per class, images with a
    true box of the class first, then images where it was detected; a cell holds the (256, 256)
    image and one (224, 224) heatmap, so memory stays bounded however many images stream past.
    cam and layer: the method and layer(s) that made the maps, named on every picture.
    """

    def __init__(self, out_dir: str | os.PathLike, thresholds: np.ndarray,
                 truth: dict[str, list[TruthBox]] | None, max_images: int = 20, per_class: int = 4,
                 size: int = 512, class_names: Sequence[str] | None = None,
                 cam: str = "gradcam", layer: str | None = None):
        self.cam, self.layer = cam, layer
        self.out, self.thresholds, self.truth = Path(out_dir), np.asarray(thresholds, float), truth
        self.max_images, self.per_class, self.size = max_images, per_class, size
        # the model's classes, one per probability; each box class's model column, by name
        self.class_names = list(class_names or CLASS_SETS.get(len(self.thresholds), CLASS_NAMES))
        self._column = {n: self.class_names.index(n) if n in self.class_names else None
                        for n in CLASS_NAMES}
        self.seen = 0
        self._cells: dict[str, tuple[list[SheetCell], list[SheetCell]]] = {
            n: ([], []) for n in CLASS_NAMES}

    def _wanted(self, truth: Sequence[TruthBox], heatmaps: dict[int, np.ndarray]) -> list[str]:
        """Box classes whose sheet row still has room for this image (heatmaps: by model
        column)."""
        labels = {b.label for b in truth}
        return [name for name in CLASS_NAMES
                if (name in labels or self._column[name] in heatmaps)
                and len(self._cells[name][0 if name in labels else 1]) < self.per_class]

    def add(self, image_path: str, probs: np.ndarray, heatmaps: dict[int, np.ndarray],
            predicted: Sequence[Box]) -> list[Path]:
        """Draw this image's figures (while under max_images) and keep its sheet cells; returns the
        paths."""
        # OpenCV only when pictures are drawn
        from chexnet.images import read_xray, resize_stored

        name = Path(image_path).name
        truth = self.truth.get(name, []) if self.truth is not None else None
        wanted = self._wanted(truth or (), heatmaps)
        paths: list[Path] = []
        if self.seen >= self.max_images and not wanted:
            self.seen += 1
            return paths  # nothing to draw: the image is not even decoded
        image = read_xray(image_path)  # (H, W) uint8: the boxes are in its pixels
        frame = (image.shape[1], image.shape[0])
        if self.seen < self.max_images:
            paths = image_figures(self.out, name, image, probs, self.thresholds, heatmaps,
                                  predicted, truth, size=self.size, frame=frame,
                                  class_names=self.class_names, cam=self.cam,
                                  layer=self.layer)
        self.seen += 1
        # one (256, 256) copy shared by this image's cells
        small = resize_stored(image) if wanted else None
        for label in wanted:
            k = self._column[label]  # None: a box class the model does not have (truth only)
            class_truth = [b for b in truth or () if b.label == label]
            caption = Path(name).stem + ("" if k is None else f"  p={float(probs[k]):.2f}")
            cell = SheetCell(small, heatmaps.get(k), [b for b in predicted if b.label == label],
                             class_truth, caption, frame)
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
        contact_sheet(rows, path, cell=cell, cam=self.cam)
        return path
