"""Heatmap -> boxes, in pixels of the 1024x1024 original.

A heatmap is float (224, 224) in [0, 1] on the network's centre crop: rows are y, columns x.
A crop pixel (row, col) is the original's pixel ((col + 16) * 4, (row + 16) * 4) as (x, y).

Box methods share one signature, `method(heatmap, size_wh) -> [(x, y, w, h), ...]` in the 1024
frame, and live in METHODS, so the CLI can offer them by name; "peaks" is the original heuristic.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

from boxfile import Box
from constants import (CLASS_NAMES, CROP_OFFSET, CROP_SIZE, PEAK_CONTRAST, PEAK_DILATIONS,
                       PEAK_KEEP_FRACTION, PEAK_NEIGHBORHOOD, RESCALE_FACTOR)

XYWH = tuple[float, float, float, float]


def check_heatmap(heatmap: np.ndarray) -> np.ndarray:
    """The heatmap as float64 (224, 224); a wrong shape, a NaN or a value outside [0, 1] is a ValueError."""
    data = np.asarray(heatmap, dtype=np.float64)
    if data.shape != (CROP_SIZE, CROP_SIZE):
        raise ValueError(f"heatmap must be ({CROP_SIZE}, {CROP_SIZE}) on the centre crop, got {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError(f"heatmap has {int((~np.isfinite(data)).sum())} NaN/inf values")
    low, high = data.min(), data.max()
    if low < 0 or high > 1:  # negative weights would put a blob's centre of mass off the map
        raise ValueError(f"heatmap values must lie in [0, 1] (a min-max normalised map), got {low:g} to {high:g}")
    return data


def find_peaks(heatmap: np.ndarray) -> list[tuple[float, float]]:
    """The original's strong local maxima: intensity-weighted centres (row, col) in crop pixels.

    A pixel is a maximum where it equals the max filter (size 100) and the filter window spans more
    than 0.1 (max - min); five dilations merge nearby maxima; each labelled blob's centre is the
    heatmap-weighted centre of mass; a centre is kept where the map there exceeds 0.9 of its max.
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
            if np.isfinite(r) and data[int(r), int(c)] > PEAK_KEEP_FRACTION * top]


def box_at(centre_rc: tuple[float, float], size_wh: tuple[float, float]) -> XYWH:
    """A box of size_wh (1024 px) centred on a crop pixel (row, col), clipped to the crop, in 1024 px.

    The integer maths is the original's: the size becomes whole crop pixels (truncated), the top-left
    corner is truncated, right/bottom are clipped at 224.
    """
    row, col = centre_rc
    # crop pixels; at least one, so a size under 4 px (one crop pixel) still gives a box, not 0 x 0
    w = max(1, int(size_wh[0] / RESCALE_FACTOR))
    h = max(1, int(size_wh[1] / RESCALE_FACTOR))
    top = int(max(row - h / 2, 0.0))
    left = int(max(col - w / 2, 0.0))
    right = min(left + w, CROP_SIZE)
    bottom = min(top + h, CROP_SIZE)
    return (float((left + CROP_OFFSET) * RESCALE_FACTOR), float((top + CROP_OFFSET) * RESCALE_FACTOR),
            float((right - left) * RESCALE_FACTOR), float((bottom - top) * RESCALE_FACTOR))


def peak_boxes(heatmap: np.ndarray, size_wh: tuple[float, float]) -> list[XYWH]:
    """The original heuristic: one box of the class's average size per strong peak, in 1024 px."""
    return [box_at(centre, size_wh) for centre in find_peaks(heatmap)]


METHODS: dict[str, Callable[[np.ndarray, tuple[float, float]], list[XYWH]]] = {
    "peaks": peak_boxes,
}


def average_box(class_index: int, box_table: np.ndarray) -> Box:
    """The class's average box (x, y, w, h from the table, 1024 px): the original's first line per class."""
    x, y, w, h = (float(v) for v in box_table[class_index])
    return Box(CLASS_NAMES[class_index], x, y, w, h)


def class_boxes(class_index: int, heatmap: np.ndarray, box_table: np.ndarray,
                method: str = "peaks") -> list[Box]:
    """All lines of one active class, in the original's order: its average box, then its heatmap boxes."""
    if method not in METHODS:
        raise ValueError(f"unknown box method {method!r}; choose from {', '.join(METHODS)}")
    first = average_box(class_index, box_table)
    found = METHODS[method](heatmap, (first.w, first.h))
    return [first] + [Box(first.label, *xywh) for xywh in found]
