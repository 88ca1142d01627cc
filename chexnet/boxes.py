"""Heatmap -> boxes, in pixels of the 1024x1024 original.

A heatmap is float (224, 224) in [0, 1] on the network's centre crop: rows are y, columns x.
A crop pixel (row, col) is the original's pixel ((col + 16) * 4, (row + 16) * 4) as (x, y).

Box methods live in METHODS, so the CLI can offer them by name: "peaks" is the original heuristic
(one box of the class's average size per strong peak), "threshold" the bounding rectangles of the
connected regions above a fraction of the map's maximum, "percentile" and "otsu" the same above a
percentile of the map's values or above Otsu's threshold: those three take no size from any
table. Each is called as
`method(heatmap, size_wh, param=None) -> [(x, y, w, h), ...]` in the 1024 frame, and is split in
two so that calibrate.py can search sizes without recomputing the slow part: `locate(heatmap,
param)` (size-free anchors) and `place(anchors, size_wh)`; heatmap_boxes places them, with a
size-free rule's rectangles scaled about their centres when calibrate.py tuned a scale for the
class (scale_rect). Crop pixels become 1024 pixels in one place only, crop_rect_to_original. For
both methods, localization writes the class's average box first (class_boxes): the file reads the
same whichever method made it, and the evaluator's difference between the methods is their heatmap
boxes alone.

Boxes are made in the 1024 frame (the NIH release's, in which the average boxes and box_sizes.json
are given) and then scaled into the image's own pixels by to_image: an image of any size W x H,
resized to 256x256, maps a crop pixel to ((col + 16) * W / 256, (row + 16) * H / 256).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage

from chexnet.boxfile import Box
from chexnet.constants import (CLASS_NAMES, CROP_OFFSET, CROP_SIZE, PEAK_CONTRAST, PEAK_DILATIONS,
                       OTSU_SCALE, PEAK_KEEP_FRACTION, PEAK_NEIGHBORHOOD, REGION_PERCENTILE,
                       ORIGINAL_SIZE, RESCALE_FACTOR, THRESHOLD_FRACTION)

XYWH = tuple[float, float, float, float]


def check_heatmap(heatmap: np.ndarray) -> np.ndarray:
    """The heatmap as float64 (224, 224); a wrong shape, a NaN or a value outside [0, 1] is a
    ValueError."""
    data = np.asarray(heatmap, dtype=np.float64)
    if data.shape != (CROP_SIZE, CROP_SIZE):
        raise ValueError(f"heatmap must be ({CROP_SIZE}, {CROP_SIZE}) on the centre crop, "
                         f"got {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError(f"heatmap has {int((~np.isfinite(data)).sum())} NaN/inf values")
    low, high = data.min(), data.max()
    if low < 0 or high > 1:  # negative weights would put a blob's centre of mass off the map
        raise ValueError(f"heatmap values must lie in [0, 1] (a min-max normalised map), "
                         f"got {low:g} to {high:g}")
    return data


def find_peaks(heatmap: np.ndarray,
               keep_fraction: float = PEAK_KEEP_FRACTION) -> list[tuple[float, float]]:
    """The original's strong local maxima: intensity-weighted centres (row, col) in crop pixels.

    A pixel is a maximum where it equals the max filter (size 100) and the filter window spans more
    than 0.1 (max - min); five dilations merge nearby maxima; each labelled blob's centre is the
    heatmap-weighted centre of mass; a centre is kept where the map there exceeds keep_fraction
    (the original's 0.9) of its max.
    """
    data = check_heatmap(heatmap)
    data_max = ndimage.maximum_filter(data, PEAK_NEIGHBORHOOD)
    data_min = ndimage.minimum_filter(data, PEAK_NEIGHBORHOOD)
    maxima = (data == data_max) & ((data_max - data_min) > PEAK_CONTRAST)
    if not maxima.any():
        return []  # flat map (all zero, constant): no peak
    maxima = ndimage.binary_dilation(maxima, iterations=PEAK_DILATIONS)
    labeled, count = ndimage.label(maxima)
    centres = ndimage.center_of_mass(data, labeled, range(1, count + 1))
    top = data.max()
    return [(r, c) for r, c in centres
            if np.isfinite(r) and data[int(r), int(c)] > keep_fraction * top]


def box_at(centre_rc: tuple[float, float], size_wh: tuple[float, float]) -> XYWH:
    """A box of size_wh (1024 px) centred on a crop pixel (row, col), clipped to the crop, in 1024
    px.

    The integer maths is the original's: the size becomes whole crop pixels (truncated), the
    top-left corner is truncated, right/bottom are clipped at 224.
    """
    row, col = centre_rc
    # crop pixels; at least one, so a size under 4 px (one crop pixel) still gives a box, not 0 x 0
    w = max(1, int(size_wh[0] / RESCALE_FACTOR))
    h = max(1, int(size_wh[1] / RESCALE_FACTOR))
    top = int(max(row - h / 2, 0.0))
    left = int(max(col - w / 2, 0.0))
    right = min(left + w, CROP_SIZE)
    bottom = min(top + h, CROP_SIZE)
    return crop_rect_to_original(left, top, right, bottom)


def crop_rect_to_original(left: int, top: int, right: int, bottom: int) -> XYWH:
    """Crop pixels [left, right) x [top, bottom) (columns x, rows y) -> (x, y, w, h) in 1024 px."""
    return (float((left + CROP_OFFSET) * RESCALE_FACTOR),
            float((top + CROP_OFFSET) * RESCALE_FACTOR),
            float((right - left) * RESCALE_FACTOR), float((bottom - top) * RESCALE_FACTOR))


def to_image(box: Box, size: tuple[int, int]) -> Box:
    """A box of the 1024 frame -> pixels of an image of size (width, height):
    x = (col + 16) * W / 256, y = (row + 16) * H / 256, sizes likewise. 1024x1024 keeps the
    numbers."""
    sx, sy = size[0] / ORIGINAL_SIZE, size[1] / ORIGINAL_SIZE
    if sx == 1.0 and sy == 1.0:
        return box
    return Box(box.label, box.x * sx, box.y * sy, box.w * sx, box.h * sy)


def place_peaks(centres: list[tuple[float, float]], size_wh: tuple[float, float]) -> list[XYWH]:
    return [box_at(centre, size_wh) for centre in centres]


def threshold_rects(heatmap: np.ndarray,
                    fraction: float = THRESHOLD_FRACTION) -> list[tuple[int, int, int, int]]:
    """Bounding rectangles (left, top, right, bottom) in crop pixels of the 8-connected regions
    where the map is at least `fraction` of its maximum, the region with the highest value first.

    A flat map (zero or constant) says nothing about where: no region, like the peaks method.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"threshold fraction must be in (0, 1], got {fraction}")
    data = check_heatmap(heatmap)
    return _rects_at_or_above(data, fraction * data.max())


def percentile_rects(heatmap: np.ndarray, percentile: float = REGION_PERCENTILE
                     ) -> list[tuple[int, int, int, int]]:
    """As threshold_rects, the regions at or above the map's `percentile` (0-100) of its values."""
    if not 0.0 <= percentile < 100.0:
        raise ValueError(f"percentile must be in [0, 100), got {percentile}")
    data = check_heatmap(heatmap)
    return _rects_at_or_above(data, max(float(np.percentile(data, percentile)), np.nextafter(0, 1)))


def otsu_level(data: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: the bin edge maximising the between-class variance."""
    counts, edges = np.histogram(data, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)[:-1].astype(np.float64)  # pixels below edge i + 1
    w1 = counts.sum() - w0
    m0 = np.cumsum(counts * centres)[:-1]
    m1 = (counts * centres).sum() - m0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.where((w0 > 0) & (w1 > 0), w0 * w1 * (m0 / w0 - m1 / w1) ** 2, -1.0)
    return float(edges[1 + int(np.argmax(between))])


def otsu_rects(heatmap: np.ndarray, scale: float = OTSU_SCALE) -> list[tuple[int, int, int, int]]:
    """As threshold_rects, the regions at or above `scale` x Otsu's threshold (at most the max)."""
    if scale <= 0:
        raise ValueError(f"Otsu scale must be > 0, got {scale}")
    data = check_heatmap(heatmap)
    return _rects_at_or_above(data, min(scale * otsu_level(data), data.max()))


def _rects_at_or_above(data: np.ndarray, level: float) -> list[tuple[int, int, int, int]]:
    top_value = data.max()
    if top_value <= 0 or top_value == data.min():
        return []
    labeled, count = ndimage.label(data >= level, structure=np.ones((3, 3)))
    slices = ndimage.find_objects(labeled)
    strength = ndimage.maximum(data, labeled, range(1, count + 1))
    order = sorted(range(count), key=lambda i: -strength[i])  # stable: ties keep row-major order
    return [(slices[i][1].start, slices[i][0].start, slices[i][1].stop, slices[i][0].stop)
            for i in order]


def place_rects(rects: list[tuple[int, int, int, int]], size_wh: tuple[float, float]) -> list[XYWH]:
    # the rectangle is the size: size_wh unused
    return [crop_rect_to_original(*rect) for rect in rects]


def scale_rect(rect: tuple[float, float, float, float], scale: float
               ) -> tuple[float, float, float, float]:
    """A crop rectangle (left, top, right, bottom) with its width and height times `scale`, about
    its centre, clipped to the crop; scale 1 returns it unchanged."""
    if not (0.0 < scale < np.inf):
        raise ValueError(f"a rectangle scale must be a positive number, got {scale}")
    if scale == 1.0:
        return rect
    left, top, right, bottom = rect
    half_w, half_h = (right - left) * scale / 2, (bottom - top) * scale / 2
    cx, cy = (left + right) / 2, (top + bottom) / 2
    return (max(cx - half_w, 0.0), max(cy - half_h, 0.0),
            min(cx + half_w, float(CROP_SIZE)), min(cy + half_h, float(CROP_SIZE)))


@dataclass(frozen=True)
class Method:
    """A box method: its tunable parameter (name, default, range (0, upper]) and its two
    stages."""
    parameter: str
    default: float
    locate: Callable[[np.ndarray, float], list[Any]]  # (heatmap, param) -> anchors; the slow part
    place: Callable[[list[Any], tuple[float, float]], list[XYWH]]  # (anchors, size_wh) -> boxes
    upper: float = 1.0  # the largest parameter that makes sense: a fraction, a percentile, ...

    def __call__(self, heatmap: np.ndarray, size_wh: tuple[float, float],
                 param: float | None = None) -> list[XYWH]:
        return self.place(self.locate(heatmap, self.default if param is None else param), size_wh)


METHODS: dict[str, Method] = {
    "peaks": Method("keep_fraction", PEAK_KEEP_FRACTION, find_peaks, place_peaks),
    "threshold": Method("fraction", THRESHOLD_FRACTION, threshold_rects, place_rects),
    "percentile": Method("percentile", REGION_PERCENTILE, percentile_rects, place_rects, 100.0),
    "otsu": Method("otsu_scale", OTSU_SCALE, otsu_rects, place_rects, np.inf),
}
# Rules whose boxes take their size from the map alone (the others from the average box's size).
SIZE_FREE = ("threshold", "percentile", "otsu")
# A box rule per class (calibrate.py --method auto chooses them; box_sizes.json names them).
PER_CLASS = "auto"


def per_class(method: str | Sequence[str]) -> tuple[str, ...]:
    """The rule of each box class, in CLASS_NAMES order: one name for all, or one per class."""
    methods = (method,) * len(CLASS_NAMES) if isinstance(method, str) else tuple(method)
    unknown = sorted(set(methods) - set(METHODS))
    if len(methods) != len(CLASS_NAMES) or unknown:
        raise ValueError(f"box rules must be one of {', '.join(METHODS)} or one per class "
                         f"({len(CLASS_NAMES)}), got {list(methods)}")
    return methods


def class_boxes(class_index: int, heatmap: np.ndarray, box_table: np.ndarray,
                method: str = "peaks", param: float | None = None,
                rect_scale: float = 1.0) -> list[Box]:
    """All lines of one active class, in the original's order: its average box, then its heatmap
    boxes. class_index: the BOX class, CLASS_NAMES[class_index] and row class_index of box_table
    (not a model's output column: localize.box_columns maps those by name); param: the method's
    parameter for this class (None: its default); rect_scale: see heatmap_boxes."""
    if method not in METHODS:
        raise ValueError(f"unknown box method {method!r}; choose from {', '.join(METHODS)}")
    m = METHODS[method]
    anchors = m.locate(heatmap, m.default if param is None else param)
    return class_lines(CLASS_NAMES[class_index], box_table[class_index], anchors, method,
                       rect_scale)


def heatmap_boxes(method: str, anchors: list[Any], size_wh: tuple[float, float],
                  rect_scale: float = 1.0) -> list[XYWH]:
    """The boxes `method` places at `anchors` (its locate step's), in the 1024 frame. rect_scale
    widens or narrows a size-free rule's rectangles about their centres (scale_rect; calibrate.py
    tunes it per class); peaks' boxes take size_wh, the average box's, and ignore it."""
    if method in SIZE_FREE and rect_scale != 1.0:
        anchors = [scale_rect(rect, rect_scale) for rect in anchors]
    return METHODS[method].place(anchors, size_wh)


def class_lines(label: str, average: np.ndarray, anchors: list[Any], method: str,
                rect_scale: float = 1.0) -> list[Box]:
    """The average box (x, y, w, h, 1024 px) first, then the boxes the method places at `anchors`
    (found by its locate step) with the average box's size: one class's lines in the box file."""
    x, y, w, h = (float(v) for v in average)
    return [Box(label, x, y, w, h)] + [Box(label, *xywh) for xywh in
                                       heatmap_boxes(method, anchors, (w, h), rect_scale)]
