"""calibrate.py's library: Grad-CAM maps of the validation images, and the per-class grid search of
box sizes and the box method's parameter that scores best against their true boxes.

heatmaps.npz (np.savez, no pickle): key "IMAGE/CLASS" -> float32 (224, 224) and
"IMAGE/probabilities" -> float32 (C,). float32 as localization computes them: float16 would create
ties that change the peak test (a pixel equal to its neighbourhood's maximum).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from chexnet import boxes, images, scoring
from chexnet.constants import (AVERAGE_BOXES, CLASS_NAMES, CROP_SIZE, OTSU_SCALE,
                               PEAK_KEEP_FRACTION, REGION_PERCENTILE, THRESHOLD_FRACTION)
from chexnet.geometry import MAP_SIZE, input_size_of_stored
from chexnet.localize import class_probabilities
from chexnet.nih import TruthBox
from chexnet.utils import InputError, atomic_path
from gradcam import DEFAULT_CAM, make_cam

PROBS_KEY = "probabilities"  # heatmaps.npz: "IMAGE/probabilities" beside "IMAGE/CLASS"
# Multipliers of the average box's width and height, searched independently (9 x 9). 1.0 first: a
# tie keeps the table's size.
SCALES = (1.0, 0.5, 0.625, 0.75, 0.875, 1.25, 1.5, 1.75, 2.0)
# Multipliers of a size-free rule's rectangles (boxes.scale_rect), searched with its parameter;
# 1.0 first: a tie keeps the rectangles as the map draws them. peaks has none (its size is the
# average box's, SCALES).
RECT_SCALES = (1.0, 0.6, 0.7, 0.8, 0.9, 1.1, 1.25, 1.4)
# The method parameter's grid, its default first: a tie keeps the default.
PARAM_GRIDS = {
    "peaks": (PEAK_KEEP_FRACTION, 0.5, 0.6, 0.7, 0.8, 0.95),
    "threshold": (THRESHOLD_FRACTION, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9),
    "percentile": (REGION_PERCENTILE, 80.0, 85.0, 90.0, 97.0, 98.0, 99.0, 99.5),
    "otsu": (OTSU_SCALE, 0.6, 0.8, 1.2, 1.4, 1.6, 1.8),
}

# ---------------------------------------------------------------- heatmaps

@dataclass
class Heatmaps:
    images: list[str]
    probs: np.ndarray  # float32 (N, C)
    maps: np.ndarray  # float32 (N, C, 224, 224), classes in CLASS_NAMES order
    cam: str | None = None  # the CAM method and layer(s) that made the maps (None: not recorded,
    layer: str | None = None  # a file of an older version)


MAPS_KEYS = {"cam": "@cam", "layer": "@layer"}  # heatmaps.npz: no image name starts with '@'


def compute_heatmaps(net: torch.nn.Module, stored: np.ndarray, names: list[str],
                     device: torch.device, batch_size: int, layer: str | None,
                     cam_method: str = DEFAULT_CAM, columns: list[int] | None = None) -> Heatmaps:
    """uint8 (N, 256, 256) stored images -> probabilities and maps of the 8 box classes on their
    centre crops. columns: the model's output of each box class, in CLASS_NAMES order
    (localize.box_columns; None: the first 8). Stored images of another side n (a folder made
    with --input-size) give crops of n * 224 / 256, the maps 224 x 224 as localization's."""
    columns = list(range(len(CLASS_NAMES))) if columns is None else list(columns)
    probs, maps = [], []
    net.to(device)
    side = input_size_of_stored(stored.shape[-1])  # 224 of 256, 448 of 512
    with make_cam(cam_method, net, layer, map_size=MAP_SIZE) as cam:
        for start in tqdm(range(0, len(names), batch_size), unit="batch", file=sys.stderr,
                          desc="heatmaps"):
            crops = np.stack([images.center_crop(im, side)
                              for im in stored[start:start + batch_size]])
            batch = class_probabilities(cam, torch.from_numpy(crops).to(device))
            probs.append(batch[:, columns])  # (B, 8): the box classes, by name
            maps.append(cam.maps(columns).cpu().numpy())
    return Heatmaps(list(names), np.concatenate(probs), np.concatenate(maps), cam_method,
                    cam.target_layer)


def save_heatmaps(path: str | Path, hm: Heatmaps) -> None:
    arrays = {key: np.array(getattr(hm, field)) for field, key in MAPS_KEYS.items()
              if getattr(hm, field) is not None}
    for i, name in enumerate(hm.images):
        arrays[f"{name}/{PROBS_KEY}"] = hm.probs[i].astype(np.float32)
        for k, cls in enumerate(CLASS_NAMES):
            arrays[f"{name}/{cls}"] = hm.maps[i, k].astype(np.float32)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_heatmaps(path: str | Path) -> Heatmaps:
    """The inverse of save_heatmaps; every image must have its probabilities and all 8 maps."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read as heatmaps.npz ({err})") from None
    recorded = {field: str(arrays.pop(key)) if key in arrays else None
                for field, key in MAPS_KEYS.items()}
    names = list(dict.fromkeys(key.rsplit("/", 1)[0] for key in arrays))
    try:
        probs = np.stack([arrays[f"{n}/{PROBS_KEY}"] for n in names]).astype(np.float32)
        maps = np.stack([[arrays[f"{n}/{c}"] for c in CLASS_NAMES]
                         for n in names]).astype(np.float32)
    except KeyError as err:
        raise InputError(f"{path}: missing array {err}; write it with calibrate.py") from None
    if probs.shape[1:] != (len(CLASS_NAMES),) or maps.shape[2:] != (CROP_SIZE, CROP_SIZE):
        raise InputError(f"{path}: expected ({len(CLASS_NAMES)},) probabilities and "
                         f"({CROP_SIZE}, {CROP_SIZE}) maps, got {probs.shape[1:]} and "
                         f"{maps.shape[2:]}")
    if not (np.isfinite(probs).all() and np.isfinite(maps).all()):
        raise InputError(f"{path}: NaN/inf values in the probabilities or maps")
    return Heatmaps(names, probs, maps, **recorded)


# ---------------------------------------------------------------- search

@dataclass
class Choice:
    scale_w: float
    scale_h: float
    param: float
    score: float | None  # the class's original score on the tuning images (None: no predicted box)
    mean_iou: float | None
    note: str = ""
    method: str = "peaks"  # the box rule the parameter is of (--method auto: each class's winner)
    rect_scale: float = 1.0  # a size-free rule's rectangles times this (boxes.scale_rect)


def scaled_row(box: np.ndarray, scale_w: float, scale_h: float) -> np.ndarray:
    """An (x, y, w, h) box with w, h multiplied, about the same centre."""
    x, y, w, h = (float(v) for v in box)
    if scale_w == 1.0 and scale_h == 1.0:
        return np.array([x, y, w, h])  # exactly the table's numbers, no rounding through the centre
    return np.array([x + w / 2 - w * scale_w / 2, y + h / 2 - h * scale_h / 2,
                     w * scale_w, h * scale_h])


def search_class(class_index: int, maps: dict[str, np.ndarray], truth: dict[str, list[TruthBox]],
                 base_box: np.ndarray, method: str, scales=SCALES, params=None,
                 rect_scales=RECT_SCALES) -> Choice:
    """Best (scale_w, scale_h, param, rect_scale) for one class. maps: image -> its (224, 224)
    heatmap on the images where the class is active; truth: those images' true boxes. Lines as
    localization writes them (boxes.class_lines). rect_scales: searched for a size-free rule
    only, after the average box's size: the original score and the mean IoU are sums over boxes,
    and a size-free rule's boxes do not depend on that size, so the two parts are independent and
    the two passes find what the whole grid would (ties too: earlier grid points first)."""
    m = boxes.METHODS[method]
    params = PARAM_GRIDS[method] if params is None else params
    rect_scales = rect_scales if method in boxes.SIZE_FREE else (1.0,)
    label = CLASS_NAMES[class_index]

    def first_best(anchors, points):
        """(key, (scale_w, scale_h, rect_scale)) of the first of `points` with the best key."""
        found = None
        for scale_w, scale_h, rect_scale in points:
            average = scaled_row(base_box, scale_w, scale_h)
            preds = {name: boxes.class_lines(label, average, a, method, rect_scale)
                     for name, a in anchors.items()}
            figures = scoring.score_boxes(preds, truth)["classes"][label]["original"]
            key = (figures["score"], figures["mean_iou"])
            if figures["score"] is not None and (found is None or key > found[0]):
                found = (key, (scale_w, scale_h, rect_scale))
        return found

    best, best_key = Choice(1.0, 1.0, m.default, None, None, method=method), None
    for param in params:
        anchors = {name: m.locate(heatmap, param) for name, heatmap in maps.items()}
        sized = first_best(anchors, [(w, h, rect_scales[0]) for w in scales for h in scales])
        if sized is None:
            continue
        scale_w, scale_h, _ = sized[1]
        key, (_, _, rect_scale) = first_best(anchors, [(scale_w, scale_h, r) for r in rect_scales])
        if best_key is None or key > best_key:
            best = Choice(scale_w, scale_h, param, *key, method=method, rect_scale=rect_scale)
            best_key = key
    return best


def search_rules(class_index: int, maps: dict[str, np.ndarray], truth: dict[str, list[TruthBox]],
                 base_box: np.ndarray) -> Choice:
    """--method auto: search_class for every rule of boxes.METHODS, peaks (the original's) first;
    the best (score, then mean IoU) wins, an earlier rule a tie."""
    best = None
    for method in boxes.METHODS:  # peaks, the original's, first
        found = search_class(class_index, maps, truth, base_box, method)
        if found.score is not None and (best is None or (found.score, found.mean_iou)
                                        > (best.score, best.mean_iou)):
            best = found
    return best or Choice(1.0, 1.0, boxes.METHODS["peaks"].default, None, None)


def active(hm: Heatmaps, thresholds: np.ndarray) -> np.ndarray:
    """bool (N, C): the classes localization would draw on each image."""
    return hm.probs > thresholds[None, :]


def tune(hm: Heatmaps, rows: list[int], act: np.ndarray, truth: dict[str, list[TruthBox]],
         method: str) -> list[Choice]:
    """One Choice per class, searched on the images `rows` of hm; method boxes.PER_CLASS
    ("auto") searches every rule for each class (search_rules)."""
    auto = method == boxes.PER_CLASS
    rule = "peaks" if auto else method  # a class without truth or activity keeps its defaults
    default = boxes.METHODS[rule].default
    choices = []
    for k, label in enumerate(tqdm(CLASS_NAMES, unit="class", file=sys.stderr, desc="search")):
        names = [hm.images[i] for i in rows]
        if not any(t.label == label for n in names for t in truth[n]):
            choices.append(Choice(1.0, 1.0, default, None, None,
                                  "no true box in the tuning images: defaults kept", rule))
            continue
        maps = {hm.images[i]: hm.maps[i, k].astype(np.float32) for i in rows if act[i, k]}
        if not maps:
            choices.append(Choice(1.0, 1.0, default, None, None,
                                  "not active on any tuning image: defaults kept", rule))
            continue
        class_truth, base = {n: truth[n] for n in names}, np.array(AVERAGE_BOXES[k])
        choices.append(search_rules(k, maps, class_truth, base) if auto else
                       search_class(k, maps, class_truth, base, method))
    return choices


def tuned_table(choices: list[Choice]) -> np.ndarray:
    base = np.array(AVERAGE_BOXES, dtype=np.float64)
    return np.stack([scaled_row(base[k], c.scale_w, c.scale_h) for k, c in enumerate(choices)])


# ---------------------------------------------------------------- before / after

def full_report(hm: Heatmaps, rows: list[int], act: np.ndarray, truth: dict, table: np.ndarray,
                method: str | list[str], params: np.ndarray,
                rect_scales: np.ndarray | None = None) -> dict:
    """scoring.score_boxes of the box lines localization would write for the images `rows`;
    method: one rule, or one per class; rect_scales: (C,) (None: all 1)."""
    methods, preds = boxes.per_class(method), {}
    rects = np.ones(len(CLASS_NAMES)) if rect_scales is None else rect_scales
    for i in rows:
        lines = []
        for k in np.flatnonzero(act[i]):
            lines += boxes.class_boxes(int(k), hm.maps[i, k].astype(np.float32), table,
                                       methods[k], float(params[k]), float(rects[k]))
        preds[hm.images[i]] = lines
    return scoring.score_boxes(preds, {hm.images[i]: truth[hm.images[i]] for i in rows})


def split_rows(n: int, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """(tuning rows, held-out rows): a seeded random `holdout` share of 0..n-1 is held out."""
    if not 0.0 <= holdout < 1.0:
        raise InputError(f"--holdout {holdout}: must be in [0, 1)")
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * holdout))
    if holdout > 0 and (cut == 0 or cut == n):
        raise InputError(f"--holdout {holdout}: {n} images cannot be split into two non-empty "
                         "parts")
    return sorted(order[cut:].tolist()), sorted(order[:cut].tolist())


# ---------------------------------------------------------------- --cam auto

# The variants --cam auto tries, as (CAM method, layer; None: the method's own), the original's
# first so that a tie keeps it, the shortcut before the full fused LayerCAM so that a tie keeps the
# cheaper; the known-truth benchmark's leaders (benchmarks/bench_grid.py).
AUTO_CANDIDATES = (
    ("gradcam", None), ("gradcam++", None), ("layercam", "features.denseblock3"),
    ("layercam-shortcut", None), ("layercam", "features.denseblock2,features.denseblock3"),
    ("gradcam", "features.denseblock3,features.denseblock4"),
)


def pick_cam(make_maps: Callable[[str, str | None], Heatmaps], candidates, rows: list[int],
             thresholds: np.ndarray, truth: dict, method: str) -> tuple[Heatmaps, list[dict]]:
    """The candidate whose maps, once their box sizes and parameters are tuned on the images
    `rows` (tune), score best there: the original's score over all classes, then the mean IoU;
    the earlier candidate wins a tie. make_maps(cam, layer) -> its Heatmaps. Returns the winner's
    Heatmaps and, per candidate in order, {"cam", "layer", "score", "mean_iou"}."""
    tried, best, best_key = [], None, None
    for cam, layer in candidates:
        hm = make_maps(cam, layer)
        act = active(hm, thresholds)
        choices = tune(hm, rows, act, truth, method)
        params = np.array([c.param for c in choices])
        report = full_report(hm, rows, act, truth, tuned_table(choices),
                             [c.method for c in choices], params,
                             np.array([c.rect_scale for c in choices]))
        fig = report["classes"][scoring.OVERALL]["original"]
        tried.append({"cam": cam, "layer": hm.layer, "score": fig["score"],
                      "mean_iou": fig["mean_iou"]})
        key = (fig["score"] or 0.0, fig["mean_iou"] or 0.0)
        if best_key is None or key > best_key:
            best, best_key = hm, key
    return best, tried
