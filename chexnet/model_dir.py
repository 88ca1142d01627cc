"""The model folder: the contract between train.py, calibrate.py, localization and the bundle.

    model/
      best.pt          the checkpoint of the best epoch (model.py's format), what localization loads
      last.pt          the last epoch, with the optimizer and RNG state for train.py --resume
      thresholds.npy   float32 (C,): per-class decision thresholds (prob > threshold), Youden's J
      metrics.jsonl    one JSON object per epoch: epoch, train_loss, valid_loss,
                       auroc {class: float | null}, mean_auroc, seconds
      training_curves.png, roc_curves.png      train.py's pictures
      box_sizes.json   calibrate.py's record (optional): {"class_names": [...],
                       "boxes": [[x, y, w, h], ...] (1024 px), "method": ..., "parameter": ...,
                       "params": [C], "calibration": {"cam": ..., "layer": ..., ...}}: the box
                       method, its parameters and the CAM whose maps they were tuned on
      heatmaps.npz     calibrate.py's maps, to re-run its search without the network

Localization finds thresholds.npy and box_sizes.json beside whatever checkpoint it is given, so a
bundle (or any folder) that keeps these names works the same way.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from chexnet import boxes, nih
from chexnet.constants import AVERAGE_BOXES, CLASS_NAMES
from chexnet.utils import InputError, atomic_path, write_text_atomic

BEST = "best.pt"
LAST = "last.pt"
THRESHOLDS = "thresholds.npy"
METRICS_LOG = "metrics.jsonl"
BOX_SIZES = "box_sizes.json"
HEATMAPS = "heatmaps.npz"
TRAINING_CURVES = "training_curves.png"
ROC_CURVES = "roc_curves.png"
# Everything train.py writes into its folder (stale temporaries of these are removed on start).
TRAINING_OUTPUTS = (BEST, LAST, THRESHOLDS, METRICS_LOG, TRAINING_CURVES, ROC_CURVES)
DEFAULT_FOLDER = "model"
DEFAULT_MODEL = f"{DEFAULT_FOLDER}/{BEST}"  # where train.py writes and localization looks
SIZE_FALLBACKS = ("none", "all")  # --size-fallback: for a class without boxes in --size-images


# ---------------------------------------------------------------- thresholds.npy

def save_thresholds(path: str | os.PathLike, thresholds) -> None:
    """float32 (C,), the precision at which localization compares them with float32
    probabilities."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # np.save(name) would append '.npy'
        np.save(f, np.asarray(thresholds, dtype=np.float32), allow_pickle=False)


def load_thresholds(path: str | os.PathLike, count: int = len(CLASS_NAMES)) -> np.ndarray:
    """thresholds.npy -> float32 (count,): one finite probability per class of the model."""
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read thresholds ({err})") from None
    return check_thresholds(values, str(path), count)


def check_thresholds(values, source: str, count: int = len(CLASS_NAMES)) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    if values.shape != (count,):
        raise InputError(f"{source}: expected {count} thresholds (one per class), "
                         f"got shape {values.shape}")
    if not np.isfinite(values).all():
        raise InputError(f"{source}: thresholds must be finite numbers, got {values.tolist()}")
    return values


def resolve_thresholds(spec: str | None, model_path: str | os.PathLike, checkpoint: dict
                       ) -> tuple[np.ndarray, str]:
    """(thresholds (C,), where they came from). spec: a .npy path, one number for every class, or
    None: then thresholds.npy beside the checkpoint, else the checkpoint's own "thresholds".
    One per class of the checkpoint (its class_names: 8 or 14)."""
    count = len(checkpoint.get("class_names", CLASS_NAMES))
    if spec is not None:
        return thresholds_from_spec(spec, count)
    beside = Path(model_path).parent / THRESHOLDS
    if beside.is_file():
        return load_thresholds(beside, count), str(beside)
    if checkpoint.get("thresholds") is not None:
        values = check_thresholds(checkpoint["thresholds"], f"{model_path}: 'thresholds'", count)
        return values, f"{model_path} (its 'thresholds')"
    raise InputError(f"{model_path}: no thresholds: {beside} does not exist and the checkpoint has "
                     f"none; pass --thresholds PATH.npy or a number")


def thresholds_from_spec(spec: str, count: int) -> tuple[np.ndarray, str]:
    """--thresholds: a .npy of `count` thresholds, or one number for every class."""
    if os.path.isfile(spec):
        return load_thresholds(spec, count), spec
    try:
        value = float(spec)
    except ValueError:
        raise InputError(f"--thresholds {spec}: no such file, and not a number") from None
    values = check_thresholds(np.full(count, value), f"--thresholds {spec}", count)
    return values, f"{value} for every class"


# ---------------------------------------------------------------- box_sizes.json

def resolve_box_sizes(bbox_list: str | os.PathLike | None, model_path: str | os.PathLike | None,
                      size_images: dict[str, set[str]] | None = None,
                      fallback: str = "none") -> tuple[np.ndarray, str]:
    """(average boxes (C, 4) x, y, w, h in 1024 px, where they came from): the per-class mean of a
    box table when given, else box_sizes.json beside the checkpoint, else the original's table.

    size_images ({list path: its image names}) keeps only the table's boxes of those images (the
    training and validation lists: sizes that never see the test images); without it every box
    counts, as the original averaged all 984, test images included. A class with no box among
    size_images' images is an InputError unless fallback is "all": then it takes its mean over
    every box of the table, test images included (said so: not leak-free). A class absent from the
    whole table keeps the original's built-in size."""
    if fallback not in SIZE_FALLBACKS:
        raise InputError(f"--size-fallback {fallback}: choose from {', '.join(SIZE_FALLBACKS)}")
    if bbox_list is None:
        calibrated = calibrated_box_file(None, model_path)
        if calibrated is not None:
            return read_box_sizes(calibrated), str(calibrated)
        return (np.array(AVERAGE_BOXES, dtype=np.float64),
                "the original's average boxes (constants.AVERAGE_BOXES)")
    truth = nih.read_bbox_list(bbox_list)
    table = nih.average_boxes(truth)
    builtin = np.isnan(table).any(axis=1)  # no box in the whole table: the original's size
    table[builtin] = np.array(AVERAGE_BOXES, dtype=np.float64)[builtin]
    if size_images is None:
        note = (f" (built-in sizes for {', '.join(np.array(CLASS_NAMES)[builtin])})"
                if builtin.any() else "")
        return table, f"mean of {len(truth)} boxes in {bbox_list}{note}"
    keep = set().union(*size_images.values())
    kept = [b for b in truth if b.image in keep]
    listed = nih.average_boxes(kept)
    absent = np.isnan(listed).any(axis=1)
    names = ", ".join(np.array(CLASS_NAMES)[absent])
    if absent.any() and fallback == "none":
        raise InputError(f"--size-images {' '.join(map(str, size_images))}: no box of {names} in "
                         f"{bbox_list} among these lists' images, so no leak-free size for them; "
                         f"pass --size-fallback all to take them from every box of the table "
                         f"(test images included, NOT leak-free), or see README 'A study'")
    listed[absent] = table[absent]
    note = (f" (for {names}: the mean of every box of the table, test images included: "
            f"NOT leak-free)" if absent.any() else "")
    lists = " + ".join(map(str, size_images))
    return listed, (f"mean of {len(kept)} boxes of the images of {lists} in {bbox_list} "
                    f"({len({b.image for b in kept})} images){note}")


def read_box_sizes(path: str | os.PathLike) -> np.ndarray:
    """box_sizes.json -> float64 (C, 4) average boxes."""
    data = _read_box_json(path)
    try:
        names, table = data["class_names"], np.asarray(data["boxes"], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path}: not a box-size file ({type(err).__name__}: {err})") from None
    if list(names) != list(CLASS_NAMES):
        raise InputError(f"{path}: class_names {names} differ from {list(CLASS_NAMES)}")
    if (table.shape != (len(CLASS_NAMES), 4) or not np.isfinite(table).all()
            or (table[:, 2:] <= 0).any()):
        raise InputError(f"{path}: boxes must be {len(CLASS_NAMES)} finite [x, y, w, h] "
                         "with w, h > 0")
    return table


def write_box_sizes(path: str | os.PathLike, table: np.ndarray, method: str | None = None,
                    params: np.ndarray | None = None, calibration: dict | None = None) -> None:
    """The inverse of read_box_sizes (and read_box_params), written atomically; "method",
    "parameter" and "params" only when tuned for a method, "calibration" when calibrate.py wrote
    it."""
    table = np.asarray(table, dtype=np.float64)
    # Full precision (JSON floats round-trip exactly): a bundle or a re-read sizes boxes bit for
    # bit.
    data = {"class_names": list(CLASS_NAMES), "boxes": table.tolist()}
    if method is not None:
        values = np.asarray(params, dtype=np.float64)
        data.update(method=method, parameter=boxes.METHODS[method].parameter,
                    params=values.tolist())
    if calibration is not None:
        data["calibration"] = calibration
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def read_box_params(path: str | os.PathLike, method: str) -> np.ndarray | None:
    """The per-class parameters (C,) box_sizes.json holds for `method`; None if none for it."""
    data = _read_box_json(path)
    if data.get("method") != method:
        return None
    try:
        values = np.asarray(data.get("params"), dtype=np.float64)
    except (ValueError, TypeError) as err:
        raise InputError(f"{path}: not a box-size file ({type(err).__name__}: {err})") from None
    if values.shape != (len(CLASS_NAMES),) or not ((values > 0) & (values <= 1)).all():
        raise InputError(f"{path}: 'params' must be {len(CLASS_NAMES)} numbers in (0, 1], "
                         f"got {data.get('params')}")
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


def calibrated_box_file(bbox_list: str | os.PathLike | None,
                        model_path: str | os.PathLike | None) -> Path | None:
    """box_sizes.json beside the checkpoint, where it applies: when it exists and no box table is
    given (a table's mean boxes replace its sizes, and then its tuned parameters do not apply)."""
    if bbox_list is not None or model_path is None:
        return None
    beside = Path(model_path).parent / BOX_SIZES
    return beside if beside.is_file() else None


def calibrated_method(bbox_list: str | os.PathLike | None,
                      model_path: str | os.PathLike | None) -> str | None:
    """The box method that the applicable box_sizes.json was tuned for (None: none tuned)."""
    path = calibrated_box_file(bbox_list, model_path)
    if path is None:
        return None
    method = _read_box_json(path).get("method")
    if method is not None and method not in boxes.METHODS:
        raise InputError(f"{path}: unknown box method {method!r}; "
                         f"choose from {', '.join(boxes.METHODS)}")
    return method


def resolve_cam(cam: str | None, layer: str | None, bbox_list: str | os.PathLike | None,
                model_path: str | os.PathLike | None) -> tuple[str, str, str, str | None]:
    """(CAM method, target layer, where they came from, a warning or None). What --cam/--layer
    leave open comes from the calibration record of the applicable box_sizes.json (calibrate.py's
    "cam" and "layer"), else gradcam at its default layer; maps of another CAM or layer than the
    record's get a warning (the boxes were tuned on its maps)."""
    from gradcam import DEFAULT_CAM, METHODS  # torch loads only where maps are made

    path = calibrated_box_file(bbox_list, model_path)
    record = {} if path is None else _read_box_json(path).get("calibration") or {}
    tuned = record.get("cam")
    if tuned is None:
        chosen = cam or DEFAULT_CAM
        return (chosen, layer or METHODS[chosen].default_layer,
                "the options" if cam or layer else "the default", None)
    if tuned not in METHODS:
        raise InputError(f"{path}: calibrated on an unknown CAM method {tuned!r}; choose from "
                         f"{', '.join(METHODS)}")
    chosen, tuned_at = cam or tuned, record.get("layer") or METHODS[tuned].default_layer
    at = layer or (tuned_at if chosen == tuned else METHODS[chosen].default_layer)
    warning = None if (chosen, at) == (tuned, tuned_at) else (
        f"warning: maps of {chosen} at {at}, but {path} was calibrated on {tuned} at {tuned_at}: "
        f"its box sizes and parameters were tuned for another CAM")
    return chosen, at, str(path) if cam is None and layer is None else "the options", warning


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


# ---------------------------------------------------------------- metrics.jsonl

def write_metrics_log(path: str | os.PathLike, records: list[dict]) -> None:
    """The whole log, rewritten atomically (a few lines per epoch: cheap, never half a line)."""
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def read_metrics_log(path: str | os.PathLike) -> list[dict]:
    """One dict per epoch; a bad line is an InputError naming it."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "epoch" not in record:
                raise ValueError("no 'epoch' key")
        except ValueError as err:
            raise InputError(f"{path}:{number}: not a metrics record ({err})") from None
        records.append(record)
    if not records:
        raise InputError(f"{path}: no epochs recorded")
    return records
