"""Box-file scoring against ground-truth boxes: what tools/evaluate.py reports and calibrate.py
tunes.

Three metrics, each per class and overall (README and tools/evaluate.py --help say more):
1. the original project's score (its iou.py): the first ORIGINAL_TOP_K predicted boxes of each
   image, each with its best IoU against the truth boxes of its class on its image (0 when there is
   none); shares above 0.25 and 0.5, their mean (`score`) and the boxes' mean IoU, pooled per box;
2. Wang et al.'s localization accuracy (ChestX-ray8, CVPR 2017, Table 4): a truth box is hit at T
   when a predicted box of its class on its image has IoU > T (or IoBB > T, intersection over the
   predicted box's area); hits / truth boxes; and AFP, false positives per evaluated image;
3. the mean, over truth boxes, of the best IoU of a predicted box of its class.
Only images that have truth boxes are scored. A figure with an empty denominator is None.

Maps are scored without any box (score_maps, no box size from anywhere): the pointing game (Zhang
et al. 2018): a hit when the map's maximum lies within POINTING_TOLERANCE pixels of a truth box of
its class, and the IoU of the map thresholded at a fraction of its maximum with the union of the
class's truth boxes. Both per (image, class) pair that has a truth box; a pair without a map (the
class was not active) is a miss and IoU 0, and the `with_map` figures leave such pairs out. Maps
live in the 1024 frame (the 256 stored image, x4); the truth boxes of a W x H image are scaled into
it by 1024 / W, 1024 / H, so the tolerance stays 15 pixels of what the network saw.
"""
from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Iterable, Protocol

from chexnet.boxfile import Box, ImageBoxes
import numpy as np

from chexnet.constants import (BOX_TABLE_ALIASES, CLASS_NAMES, CROP_OFFSET, CROP_SIZE,
                               ORIGINAL_SIZE, RESCALE_FACTOR, STORED_SIZE)
from chexnet.nih import TruthBox
from chexnet.utils import InputError

# Thresholds of Wang et al.'s Table 4 (ChestX-ray8), for both IoU and IoBB.
WANG_THRESHOLDS = (0.1, 0.25, 0.5, 0.75, 0.9)
# The original scorer (iou.py) looked at the first 10 boxes of each image, with IoU cuts 0.25 and
# 0.5.
ORIGINAL_TOP_K = 10
ORIGINAL_IOU_CUTS = (0.25, 0.5)
OVERALL = "overall"
# The pointing game's tolerance: 15 pixels at the map's own scale, the 224 crop the network sees
# (Zhang et al.'s 15 px at the network's input), i.e. 60 px of the 1024 image.
POINTING_TOLERANCE = 15
MAP_IOU_FRACTION = 0.5  # score_maps: a map pixel is "on" at >= this share of the map's maximum


class BoxLike(Protocol):
    """Anything with x, y, w, h in pixels: a predicted Box or a TruthBox."""
    x: float
    y: float
    w: float
    h: float


# ---------------------------------------------------------------- geometry

def intersection(a: BoxLike, b: BoxLike) -> float:
    """Area shared by two (x, y, w, h) boxes; 0 when they only touch or are apart."""
    dx = min(a.x + a.w, b.x + b.w) - max(a.x, b.x)
    dy = min(a.y + a.h, b.y + b.h) - max(a.y, b.y)
    return dx * dy if dx > 0 and dy > 0 else 0.0


def iou(a: BoxLike, b: BoxLike) -> float:
    """Intersection over union; 0 for two empty boxes (nothing to overlap)."""
    inter = intersection(a, b)
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


def iobb(pred: BoxLike, truth: BoxLike) -> float:
    """Intersection over the predicted box's area (Wang et al.); 0 for an empty predicted box."""
    area = pred.w * pred.h
    return intersection(pred, truth) / area if area > 0 else 0.0


# ---------------------------------------------------------------- inputs

def image_key(path: str) -> str:
    """The file name that links a box-file path to the table's 'Image Index'."""
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def predictions_by_image(path: str | os.PathLike,
                         entries: Iterable[ImageBoxes]) -> dict[str, list[Box]]:
    """{image name: boxes in file order}, labels in CLASS_NAMES spelling; bad entries are
    InputErrors."""
    preds: dict[str, list[Box]] = {}
    for entry in entries:
        key = image_key(entry.image_path)
        if key in preds:
            raise InputError(f"{path}: image {key} appears more than once")
        preds[key] = [_checked_box(path, key, n, box) for n, box in enumerate(entry.boxes, start=1)]
    return preds


def _checked_box(path, key: str, n: int, box: Box) -> Box:
    label = BOX_TABLE_ALIASES.get(box.label, box.label)
    where = f"{path}: image {key}, box {n}"
    if label not in CLASS_NAMES:
        raise InputError(f"{where}: unknown class {box.label!r}; "
                         f"expected one of {', '.join(CLASS_NAMES)}")
    if not all(math.isfinite(v) for v in (box.x, box.y, box.w, box.h)) or box.w < 0 or box.h < 0:
        raise InputError(f"{where}: x, y must be finite and width, height finite and >= 0, "
                         f"got {box.x} {box.y} {box.w} {box.h}")
    return Box(label, box.x, box.y, box.w, box.h)


# ---------------------------------------------------------------- metrics

@dataclass
class Tally:
    """Running sums of one class (or of all classes) over the evaluated images."""
    pred_boxes: int = 0  # predicted boxes scored by the original's metric (first ORIGINAL_TOP_K)
    pred_iou_sum: float = 0.0
    pred_above: tuple[int, ...] = (0,) * len(ORIGINAL_IOU_CUTS)
    truth_boxes: int = 0
    truth_iou_sum: float = 0.0
    hits_iou: tuple[int, ...] = (0,) * len(WANG_THRESHOLDS)
    hits_iobb: tuple[int, ...] = (0,) * len(WANG_THRESHOLDS)
    fp_iou: tuple[int, ...] = (0,) * len(WANG_THRESHOLDS)
    fp_iobb: tuple[int, ...] = (0,) * len(WANG_THRESHOLDS)

    def add_scored_prediction(self, best_iou: float) -> None:
        self.pred_boxes += 1
        self.pred_iou_sum += best_iou
        self.pred_above = _count_if(self.pred_above, ORIGINAL_IOU_CUTS, lambda c: best_iou > c)

    def add_prediction(self, best_iou: float, best_iobb: float) -> None:
        self.fp_iou = _count_if(self.fp_iou, WANG_THRESHOLDS, lambda t: best_iou <= t)
        self.fp_iobb = _count_if(self.fp_iobb, WANG_THRESHOLDS, lambda t: best_iobb <= t)

    def add_truth(self, best_iou: float, best_iobb: float) -> None:
        self.truth_boxes += 1
        self.truth_iou_sum += best_iou
        self.hits_iou = _count_if(self.hits_iou, WANG_THRESHOLDS, lambda t: best_iou > t)
        self.hits_iobb = _count_if(self.hits_iobb, WANG_THRESHOLDS, lambda t: best_iobb > t)

    def summary(self, images: int) -> dict:
        n, m = self.pred_boxes, self.truth_boxes
        by_t = lambda counts, d: {f"{t:g}": _ratio(c, d) for t, c in zip(WANG_THRESHOLDS, counts)}
        shares = [_ratio(count, n) for count in self.pred_above]
        original = {"boxes": n, **{f"iou>{cut:g}": v for cut, v in zip(ORIGINAL_IOU_CUTS, shares)},
                    "score": None if n == 0 else sum(shares) / len(shares),
                    "mean_iou": _ratio(self.pred_iou_sum, n)}
        return {"original": original, "truth_boxes": m, "mean_iou": _ratio(self.truth_iou_sum, m),
                "acc_iou": by_t(self.hits_iou, m), "acc_iobb": by_t(self.hits_iobb, m),
                "afp_iou": by_t(self.fp_iou, images), "afp_iobb": by_t(self.fp_iobb, images)}


def _count_if(counts: tuple[int, ...], cuts: tuple[float, ...], test) -> tuple[int, ...]:
    return tuple(c + (1 if test(cut) else 0) for c, cut in zip(counts, cuts))


def _ratio(num: float, den: int) -> float | None:
    return num / den if den else None


def _best(measure, box: BoxLike, others: list) -> float:
    return max((measure(box, o) for o in others), default=0.0)


def score_image(preds: list[Box], truths: list[TruthBox], tallies: dict[str, Tally]) -> None:
    """Add one image's predicted and truth boxes to its classes' tallies and to OVERALL's."""
    truth_of = defaultdict(list)
    for t in truths:
        truth_of[t.label].append(t)
    for box in preds[:ORIGINAL_TOP_K]:
        best = _best(iou, box, truth_of[box.label])
        for name in (box.label, OVERALL):
            tallies[name].add_scored_prediction(best)
    for box in preds:
        best_iou, best_iobb = (_best(iou, box, truth_of[box.label]),
                               _best(iobb, box, truth_of[box.label]))
        for name in (box.label, OVERALL):
            tallies[name].add_prediction(best_iou, best_iobb)
    for t in truths:
        mine = [b for b in preds if b.label == t.label]
        best_iou = max((iou(b, t) for b in mine), default=0.0)
        best_iobb = max((iobb(b, t) for b in mine), default=0.0)
        for name in (t.label, OVERALL):
            tallies[name].add_truth(best_iou, best_iobb)


def score_boxes(preds: dict[str, list[Box]], truth: dict[str, list[TruthBox]]) -> dict:
    """All three metrics (module docstring) as a JSON-ready dict."""
    evaluated = [key for key in preds if key in truth]
    tallies = {name: Tally() for name in CLASS_NAMES + (OVERALL,)}
    for key in evaluated:
        score_image(preds[key], truth[key], tallies)
    return {
        "images": {"box_file": len(preds), "evaluated": len(evaluated),
                   "box_file_not_in_truth": sum(1 for key in preds if key not in truth),
                   "truth_not_in_box_file": sum(1 for key in truth if key not in preds)},
        "box_file_images_not_in_truth": sorted(key for key in preds if key not in truth),
        "truth_images_not_in_box_file": sorted(key for key in truth if key not in preds),
        "top_k": ORIGINAL_TOP_K,
        "thresholds": list(WANG_THRESHOLDS),
        "classes": {name: tallies[name].summary(len(evaluated))
                    for name in CLASS_NAMES + (OVERALL,)},
    }


# ---------------------------------------------------------------- maps, no box prior

def map_peak_xy(heatmap: np.ndarray) -> tuple[float, float]:
    """The centre of the map's (first) maximum, (x, y) in pixels of the 1024 image."""
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return ((col + 0.5 + CROP_OFFSET) * RESCALE_FACTOR, (row + 0.5 + CROP_OFFSET) * RESCALE_FACTOR)


def points_at(x: float, y: float, truths: list, tolerance: float = POINTING_TOLERANCE) -> bool:
    """Is (x, y) (1024 px) within `tolerance` crop pixels (x4 in the 1024 frame) of a truth box?"""
    reach = tolerance * RESCALE_FACTOR
    for t in truths:
        dx, dy = max(t.x - x, 0.0, x - (t.x + t.w)), max(t.y - y, 0.0, y - (t.y + t.h))
        if math.hypot(dx, dy) <= reach:
            return True
    return False


def map_mask_iou(heatmap: np.ndarray, truths: list, fraction: float = MAP_IOU_FRACTION) -> float:
    """IoU, on the 256 grid of the stored image (1 cell = 4 px of 1024), of the map's pixels at >=
    fraction of its maximum (a flat zero map: none) with the union of the truth boxes."""
    grid = np.zeros((STORED_SIZE, STORED_SIZE), dtype=bool)
    top = float(heatmap.max())
    if top > 0:
        grid[CROP_OFFSET:CROP_OFFSET + CROP_SIZE, CROP_OFFSET:CROP_OFFSET + CROP_SIZE] = \
            heatmap >= fraction * top
    truth = np.zeros_like(grid)
    for t in truths:
        left, right = int(t.x // RESCALE_FACTOR), int(math.ceil((t.x + t.w) / RESCALE_FACTOR))
        top_row, bottom = int(t.y // RESCALE_FACTOR), int(math.ceil((t.y + t.h) / RESCALE_FACTOR))
        truth[max(top_row, 0):max(bottom, 0), max(left, 0):max(right, 0)] = True
    union = int((grid | truth).sum())
    return int((grid & truth).sum()) / union if union else 0.0


def in_1024_frame(truths: list[TruthBox], size: tuple[int, int]) -> list[TruthBox]:
    """Truth boxes of a (width, height) image in the 1024 frame of its maps (x by 1024 / width, y
    by 1024 / height): the stored 256 image is the whole image, squeezed to a square."""
    sx, sy = ORIGINAL_SIZE / size[0], ORIGINAL_SIZE / size[1]
    return [replace(t, x=t.x * sx, y=t.y * sy, w=t.w * sx, h=t.h * sy)
            for t in truths]


def score_maps(maps: dict[tuple[str, str], np.ndarray], truth: dict[str, list[TruthBox]],
               fraction: float = MAP_IOU_FRACTION, tolerance: float = POINTING_TOLERANCE,
               sizes: dict[str, tuple[int, int]] | None = None) -> dict:
    """maps: (image key, class) -> (224, 224) map; truth in each image's own pixels; sizes: image
    key -> (width, height) (None or absent: 1024x1024). Per class and OVERALL: pairs (image, class
    with a truth box), with_map, pointing, pointing_with_map, map_iou, map_iou_with_map."""
    sums = {name: [0, 0, 0, 0.0] for name in CLASS_NAMES + (OVERALL,)}  # pairs, mapped, hits, iou
    sizes = sizes or {}
    for key, truths in truth.items():
        truths = in_1024_frame(truths, sizes.get(key, (ORIGINAL_SIZE, ORIGINAL_SIZE)))
        for label in sorted({t.label for t in truths}):
            mine = [t for t in truths if t.label == label]
            heatmap = maps.get((key, label))
            hit, overlap = False, 0.0
            if heatmap is not None:
                hit = points_at(*map_peak_xy(heatmap), mine, tolerance)
                overlap = map_mask_iou(heatmap, mine, fraction)
            for name in (label, OVERALL):
                acc = sums[name]
                acc[0], acc[1] = acc[0] + 1, acc[1] + (heatmap is not None)
                acc[2], acc[3] = acc[2] + hit, acc[3] + overlap
    return {"tolerance_crop_px": tolerance, "fraction": fraction, "classes": {
        name: {"pairs": n, "with_map": m, "pointing": _ratio(h, n),
               "pointing_with_map": _ratio(h, m), "map_iou": _ratio(s, n),
               "map_iou_with_map": _ratio(s, m)}
        for name, (n, m, h, s) in sums.items()}}
