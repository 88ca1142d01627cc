"""The localization engine shared by denseNet_localization.py, inference.py and the plots.

It loads nothing by itself: callers resolve the model, thresholds and box sizes (helpers below)
and pass them in. Per batch: decode + crop in DataLoader workers (overlapping the network),
normalise on the device, one forward, the classes with prob > threshold, one batched Grad-CAM
backward for the classes active anywhere in the batch, then boxes in a background thread while
the next batch runs through the network.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import boxes
import images
import tables
import transforms
from boxfile import Box
from common import InputError, write_text_atomic
from constants import AVERAGE_BOXES, CLASS_NAMES, CROP_SIZE, DEFAULT_TARGET_LAYER
from gradcam import GradCAM

THRESHOLDS_FILE = "thresholds.npy"  # beside the checkpoint (train.py writes it)
BOX_SIZES_FILE = "box_sizes.json"  # beside the checkpoint (calibration writes it)


@dataclass
class ImageResult:
    image_path: str
    probs: np.ndarray  # float32 (C,): sigmoid of the logits
    heatmaps: dict[int, np.ndarray] = field(default_factory=dict)  # active class -> float32 (224, 224)
    boxes: list[Box] = field(default_factory=list)  # per active class: average box, then heatmap boxes


class _CropDataset(Dataset):
    """Path -> (uint8 (224, 224) centre crop, error text or ''). Errors travel as text: the main
    process raises them as one-line InputErrors (a worker's exception would carry its traceback)."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        try:
            crop = transforms.center_crop(images.load_stored(self.paths[index]))
        except InputError as err:
            return torch.zeros((CROP_SIZE, CROP_SIZE), dtype=torch.uint8), str(err)
        return torch.from_numpy(np.ascontiguousarray(crop)), ""


def iter_localize(model: torch.nn.Module, image_paths: Sequence[str], thresholds: np.ndarray,
                  box_sizes: np.ndarray, device: torch.device, batch_size: int = 16,
                  target_layer: str = DEFAULT_TARGET_LAYER, workers: int = 0,
                  method: str = "peaks", method_params: np.ndarray | None = None) -> Iterator[ImageResult]:
    """Yield one ImageResult per path, in input order. The model is moved to `device`.

    thresholds: (C,) probabilities; box_sizes: (C, 4) average boxes (x, y, w, h) in 1024 px whose
    w, h size the heatmap boxes; method_params: (C,) the box method's parameter per class (None: its
    default; see resolve_box_params). While the generator is open the model carries the Grad-CAM hook.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    box_sizes = np.asarray(box_sizes, dtype=np.float64)
    if method not in boxes.METHODS:
        raise ValueError(f"unknown box method {method!r}; choose from {', '.join(boxes.METHODS)}")
    paths = list(image_paths)
    loader = DataLoader(_CropDataset(paths), batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    model.to(device)
    start, pending = 0, None
    with GradCAM(model, target_layer) as cam, ThreadPoolExecutor(max_workers=1) as pool:
        for crops, errors in loader:
            for message in errors:
                if message:
                    raise InputError(message)
            batch_paths = paths[start:start + len(crops)]
            start += len(crops)
            probs, maps, classes = _network(cam, crops.to(device, non_blocking=True), thresholds)
            job = pool.submit(_results, batch_paths, probs, maps, classes, thresholds, box_sizes, method,
                              method_params)
            if pending is not None:
                yield from pending.result()  # boxes of the previous batch, made during this batch's pass
            pending = job
        if pending is not None:
            yield from pending.result()


def _network(cam: GradCAM, crops: torch.Tensor, thresholds: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 (B, 224, 224) on the device -> probs (B, C), maps (B, K, 224, 224), classes (K,)."""
    logits = cam.forward(transforms.normalize(crops))
    probs = torch.sigmoid(logits.float()).cpu().numpy()
    if probs.shape[1] != len(thresholds):
        raise InputError(f"the model has {probs.shape[1]} outputs but there are {len(thresholds)} thresholds")
    classes = np.flatnonzero((probs > thresholds).any(axis=0))  # active in at least one image
    maps = cam.maps(classes.tolist()).cpu().numpy()
    return probs, maps, classes


def _results(paths: list[str], probs: np.ndarray, maps: np.ndarray, classes: np.ndarray,
             thresholds: np.ndarray, box_sizes: np.ndarray, method: str,
             method_params: np.ndarray | None = None) -> list[ImageResult]:
    """Per image: the heatmaps of its own active classes and their box lines, in class order."""
    results = []
    for b, path in enumerate(paths):
        if not np.isfinite(probs[b]).all():
            raise InputError(f"{path}: the model gives NaN/inf probabilities (a broken checkpoint?)")
        result = ImageResult(path, probs[b])
        for j, k in enumerate(classes):
            if probs[b, k] > thresholds[k]:
                result.heatmaps[int(k)] = maps[b, j].copy()
                try:
                    param = None if method_params is None else float(method_params[k])
                    result.boxes += boxes.class_boxes(int(k), maps[b, j], box_sizes, method, param)
                except ValueError as err:
                    raise InputError(f"{path}: {CLASS_NAMES[k]}: {err}") from None
        results.append(result)
    return results


def check_images(paths: Sequence[str], list_path: str | os.PathLike) -> None:
    """Every listed image must exist before any work starts; the error names the first missing one."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise InputError(f"{list_path}: {len(missing)} of {len(paths)} images not found, "
                         f"the first: {missing[0]}")


def load_thresholds(path: str | os.PathLike) -> np.ndarray:
    """thresholds.npy -> float64 (C,): one finite probability per class."""
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read thresholds ({err})") from None
    return _check_thresholds(values, str(path))


def _check_thresholds(values, source: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(CLASS_NAMES),):
        raise InputError(f"{source}: expected {len(CLASS_NAMES)} thresholds (one per class), "
                         f"got shape {values.shape}")
    if not np.isfinite(values).all():
        raise InputError(f"{source}: thresholds must be finite numbers, got {values.tolist()}")
    return values


def resolve_thresholds(spec: str | None, model_path: str | os.PathLike, checkpoint: dict
                       ) -> tuple[np.ndarray, str]:
    """(thresholds (C,), where they came from). spec: a .npy path, one number for every class, or None:
    then thresholds.npy beside the checkpoint, else the checkpoint's own "thresholds"."""
    if spec is not None:
        if os.path.isfile(spec):
            return load_thresholds(spec), spec
        try:
            value = float(spec)
        except ValueError:
            raise InputError(f"--thresholds {spec}: no such file, and not a number") from None
        return _check_thresholds(np.full(len(CLASS_NAMES), value), f"--thresholds {spec}"), f"{value} for every class"
    beside = Path(model_path).parent / THRESHOLDS_FILE
    if beside.is_file():
        return load_thresholds(beside), str(beside)
    if checkpoint.get("thresholds") is not None:
        return _check_thresholds(checkpoint["thresholds"], f"{model_path}: 'thresholds'"), f"{model_path} (its 'thresholds')"
    raise InputError(f"{model_path}: no thresholds: {beside} does not exist and the checkpoint has none; "
                     f"pass --thresholds PATH.npy or a number")


def resolve_box_sizes(bbox_list: str | os.PathLike | None, model_path: str | os.PathLike | None
                      ) -> tuple[np.ndarray, str]:
    """(average boxes (C, 4) x, y, w, h in 1024 px, where they came from): the per-class mean of a
    box table when given, else box_sizes.json beside the checkpoint, else the original's table."""
    fallback = np.array(AVERAGE_BOXES, dtype=np.float64)
    if bbox_list is not None:
        truth = tables.read_bbox_list(bbox_list)
        table = tables.average_boxes(truth)
        absent = np.isnan(table).any(axis=1)
        table[absent] = fallback[absent]  # a class without boxes in the file keeps the original's numbers
        note = f" (built-in sizes for {', '.join(np.array(CLASS_NAMES)[absent])})" if absent.any() else ""
        return table, f"mean of {len(truth)} boxes in {bbox_list}{note}"
    calibrated = calibrated_box_file(None, model_path)
    if calibrated is not None:
        return read_box_sizes(calibrated), str(calibrated)
    return fallback, "the original's average boxes (constants.AVERAGE_BOXES)"


def read_box_sizes(path: str | os.PathLike) -> np.ndarray:
    """box_sizes.json {"class_names": [...], "boxes": [[x, y, w, h], ...]} -> float64 (C, 4)."""
    data = _read_box_json(path)
    try:
        names, table = data["class_names"], np.asarray(data["boxes"], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path}: not a box-size file ({type(err).__name__}: {err})") from None
    if list(names) != list(CLASS_NAMES):
        raise InputError(f"{path}: class_names {names} differ from {list(CLASS_NAMES)}")
    if table.shape != (len(CLASS_NAMES), 4) or not np.isfinite(table).all() or (table[:, 2:] <= 0).any():
        raise InputError(f"{path}: boxes must be {len(CLASS_NAMES)} finite [x, y, w, h] with w, h > 0")
    return table


def write_box_sizes(path: str | os.PathLike, table: np.ndarray, method: str | None = None,
                    params: np.ndarray | None = None, calibration: dict | None = None) -> None:
    """The inverse of read_box_sizes (and read_box_params), written atomically. box_sizes.json:
    {"class_names": [...], "boxes": [[x, y, w, h], ...],              always
     "method": "peaks", "parameter": "keep_fraction", "params": [C],  optional: tuned for that method
     "calibration": {...}}                                            optional: calibrate.py's record"""
    table = np.asarray(table, dtype=np.float64)
    # Full precision (JSON floats round-trip exactly): a bundle or a re-read sizes boxes bit for bit.
    data = {"class_names": list(CLASS_NAMES), "boxes": table.tolist()}
    if method is not None:
        values = np.asarray(params, dtype=np.float64)
        data.update(method=method, parameter=boxes.METHODS[method].parameter,
                    params=values.tolist())
    if calibration is not None:
        data["calibration"] = calibration
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def read_box_params(path: str | os.PathLike, method: str) -> np.ndarray | None:
    """The per-class parameters (C,) that box_sizes.json holds for `method`; None if it has none for it."""
    data = _read_box_json(path)
    if data.get("method") != method:
        return None
    try:
        values = np.asarray(data.get("params"), dtype=np.float64)
    except (ValueError, TypeError) as err:
        raise InputError(f"{path}: not a box-size file ({type(err).__name__}: {err})") from None
    if values.shape != (len(CLASS_NAMES),) or not ((values > 0) & (values <= 1)).all():
        raise InputError(f"{path}: 'params' must be {len(CLASS_NAMES)} numbers in (0, 1], got {data.get('params')}")
    return values


def _read_box_json(path: str | os.PathLike) -> dict:
    """box_sizes.json as a dict; unreadable or not a JSON object: an InputError naming the file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a box-size file ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a box-size file (a JSON object is expected)")
    return data


def calibrated_box_file(bbox_list: str | os.PathLike | None, model_path: str | os.PathLike | None) -> Path | None:
    """box_sizes.json beside the checkpoint, where it applies: when it exists and no box table is
    given (a table's mean boxes replace its sizes, and then its tuned parameters do not apply)."""
    if bbox_list is not None or model_path is None:
        return None
    beside = Path(model_path).parent / BOX_SIZES_FILE
    return beside if beside.is_file() else None


def calibrated_method(bbox_list: str | os.PathLike | None, model_path: str | os.PathLike | None) -> str | None:
    """The box method that the applicable box_sizes.json was tuned for (None: none tuned)."""
    path = calibrated_box_file(bbox_list, model_path)
    if path is None:
        return None
    method = _read_box_json(path).get("method")
    if method is not None and method not in boxes.METHODS:
        raise InputError(f"{path}: unknown box method {method!r}; choose from {', '.join(boxes.METHODS)}")
    return method


def resolve_box_params(bbox_list: str | os.PathLike | None, model_path: str | os.PathLike | None,
                       method: str) -> tuple[np.ndarray | None, str]:
    """(per-class parameters of `method` or None for its default, where they came from): from the
    applicable box_sizes.json when it was tuned for `method`."""
    default = f"{boxes.METHODS[method].parameter} {boxes.METHODS[method].default:g} (the default)"
    path = calibrated_box_file(bbox_list, model_path)
    params = None if path is None else read_box_params(path, method)
    if params is None:
        return None, default if path is None else f"{default}; {path} has none for {method}"
    return params, str(path)
