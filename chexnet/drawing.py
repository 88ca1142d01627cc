"""What every figure shares: matplotlib's headless Agg backend, colours, X-ray axes, saving.

Nothing is drawn at import. Every figure is written as one PNG through save_figure (atomic) and
closed. Pictures of an X-ray are drawn margin-free at a fixed pixel size: the
image axes fill their part of the figure, in the coordinates of the image's frame (its own pixels,
the box file's frame; (1024, 1024) unless given), so a box (x, y, w, h) covers output pixels
column x * width_px / W onward and row y * height_px / H onward (x is the column, y the row; the
origin is the top-left).
"""
from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: no display is needed or opened
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from chexnet.boxfile import Box  # noqa: E402
from chexnet.utils import atomic_path  # noqa: E402
from chexnet.constants import CROP_OFFSET, CROP_SIZE, ORIGINAL_SIZE, RESCALE_FACTOR  # noqa: E402
from chexnet.nih import TruthBox  # noqa: E402

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
# The 224 heatmap covers the centre crop: 16 px inside the 256 image, i.e. [64, 960) of the 1024
# frame and [16 W / 256, 240 W / 256) of a W-wide one.
CROP_START = CROP_OFFSET * RESCALE_FACTOR
CROP_END = (CROP_OFFSET + CROP_SIZE) * RESCALE_FACTOR
SQUARE = (ORIGINAL_SIZE, ORIGINAL_SIZE)  # the NIH frame, (width, height)
COLORBAR_PX = 90  # width of the strip right of a heatmap that holds its colour bar
# What a picture calls each --cam method (gradcam.CAM_METHODS' keys); another name is shown as is.
CAM_TITLES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "layercam": "LayerCAM",
              "cam": "CAM"}
LABEL_SHIFTS = 8  # at most this many label heights up (or down) to clear the labels drawn before


def save_figure(fig, out_path: str | os.PathLike) -> None:
    """Write the PNG atomically (the temp name ends in .tmp, so the format is given) and close."""
    try:
        with atomic_path(out_path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        plt.close(fig)


def picture_height(width_px: int, frame: tuple[int, int] = SQUARE) -> int:
    """Output height that keeps a frame's aspect ratio at width_px (width_px for a square)."""
    return max(1, round(width_px * frame[1] / frame[0]))


def image_axes(fig, left_px: float, bottom_px: float, size: int, frame: tuple[int, int] = SQUARE,
               height_px: int | None = None):
    """Margin-free axes of size x height_px (default size) pixels at (left_px, bottom_px), showing
    the frame (width, height)."""
    width, height = fig.get_size_inches() * DPI
    tall = size if height_px is None else height_px
    ax = fig.add_axes((left_px / width, bottom_px / height, size / width, tall / height))
    ax.set_xlim(0, frame[0])
    ax.set_ylim(frame[1], 0)  # row 0 at the top, as in the image
    ax.set_axis_off()
    return ax


def show_xray(ax, image: np.ndarray, frame: tuple[int, int] = SQUARE) -> None:
    """A gray image (the original, or its 256 stored form) stretched over the frame (width,
    height)."""
    if image.ndim != 2:
        raise ValueError(f"expected an (H, W) gray image, got shape {image.shape}")
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, extent=(0, frame[0], frame[1], 0),
              interpolation="bilinear" if image.shape[1] < frame[0] else "nearest")


def show_heatmap(ax, heatmap: np.ndarray, frame: tuple[int, int] = SQUARE):
    """(224, 224) map in [0, 1] over the centre crop of the frame (width, height)."""
    if heatmap.shape != (CROP_SIZE, CROP_SIZE):
        raise ValueError(f"expected a ({CROP_SIZE}, {CROP_SIZE}) heatmap, "
                         f"got shape {heatmap.shape}")
    sx, sy = frame[0] / ORIGINAL_SIZE, frame[1] / ORIGINAL_SIZE
    return ax.imshow(heatmap, cmap="jet", vmin=0.0, vmax=1.0, alpha=HEATMAP_ALPHA,
                     interpolation="bilinear",
                     extent=(CROP_START * sx, CROP_END * sx, CROP_END * sy, CROP_START * sy))


def cam_title(cam: str) -> str:
    """'LayerCAM' for 'layercam': the name a picture gives the method that made its map."""
    return CAM_TITLES.get(cam, cam)


def colorbar(fig, rect: tuple[float, float, float, float], labelsize: float,
             label: str = CAM_TITLES["gradcam"]) -> None:
    """The heatmap scale at full opacity (the overlay's alpha would wash the colours out), named
    after the method that made the map."""
    mappable = ScalarMappable(norm=Normalize(0.0, 1.0), cmap="jet")
    bar = fig.colorbar(mappable, cax=fig.add_axes(rect))
    bar.ax.tick_params(labelsize=labelsize)
    bar.set_label(label, fontsize=labelsize)


def draw_boxes(ax, predicted: Sequence[Box], truth: Sequence[TruthBox] | None,
                probs: dict[str, float] | None, fontsize: float, labels: bool = True,
                avoid: Sequence = ()) -> list:
    """Truth first (red), predicted on top (blue); a predicted box's label sits just above its
    top-left corner, a truth box's below its bottom edge, each moved clear of the labels drawn
    before it (keep_apart) and of the texts in avoid (the caption). Returns the labels' Text
    artists."""
    renderer = ax.figure.canvas.get_renderer()
    kept_clear = [t.get_window_extent(renderer).padded(4) for t in avoid]  # its band: 3 pt, 4 px
    placed, texts = list(kept_clear), []
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
            texts.append(ax.text(box.x, y, text, color=text_color, fontsize=fontsize, va=va,
                                 ha="left", clip_on=True,
                                 bbox=dict(facecolor="black", alpha=0.6, edgecolor="none",
                                           pad=1.5)))
            keep_apart(ax, texts[-1], placed, up=is_pred, kept_clear=kept_clear)
    return texts


def keep_apart(ax, label, placed: list, up: bool, kept_clear: Sequence = ()) -> None:
    """Move the label by its own height, away from its box's edge (up: predicted, above the box;
    else down), until it covers none of the placed labels' extents and lies inside the picture,
    then add its own to placed; failing that, the other way. After LABEL_SHIFTS steps each way it
    takes the first of those places that at least clears kept_clear (the caption), over another
    label, or else stays where it started: a box at the top has no room above it, and its start
    would be clipped away or sit on the caption's title."""
    renderer = ax.figure.canvas.get_renderer()
    start, fallback = label.get_position()[1], None
    extent = label.get_window_extent(renderer).padded(3)  # the dark band's pad, about 2 px
    step = abs(ax.transData.inverted().transform((0, 0))[1]
               - ax.transData.inverted().transform((0, extent.height))[1])  # data units
    for sign in ((-1, 1) if up else (1, -1)):  # the y axis points down: -1 moves it up
        for k in range(LABEL_SHIFTS + 1):
            label.set_y(start + sign * k * step)
            extent = label.get_window_extent(renderer).padded(3)
            if extent.y0 < ax.bbox.y0 or extent.y1 > ax.bbox.y1:
                continue  # above or below the picture: clipped away, no place for it
            if not any(extent.overlaps(other) for other in placed):
                placed.append(extent)
                return
            if fallback is None and not any(extent.overlaps(c) for c in kept_clear):
                fallback = label.get_position()[1]
    label.set_y(start if fallback is None else fallback)
    placed.append(label.get_window_extent(renderer).padded(3))


def caption(ax, text: str, fontsize: float):
    """White text on a dark band at the top-left, inside the image (the figure has no margins);
    returns the Text."""
    return ax.text(12, 12, text, color="white", fontsize=fontsize, va="top", ha="left",
            bbox=dict(facecolor="black", alpha=0.6, edgecolor="none", pad=3))


def fontsize(size: int) -> float:
    """Text that reads the same at any output size: 11 pt on a 1024 px picture."""
    return max(7.0, 11.0 * size / ORIGINAL_SIZE)
