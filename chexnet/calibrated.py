"""box_sizes.json beside a checkpoint (model_dir.BOX_SIZES, calibrate.py's record), and how
localization resolves its box sizes, box rules, their parameters and its CAM from the options,
that file or the defaults.

    {"class_names": [...], "boxes": [[x, y, w, h], ...] (1024 px), "method": ..., "parameter": ...,
     "params": [C], "rect_scales": [C], "calibration": {"cam": ..., "layer": ..., ...}}

"method" and its per-class "params" only when tuned for a box rule; "method": "auto" (tuned per
class) adds "methods", each class's rule, and "parameter" is then a list. "rect_scales" (absent:
all 1) widens or narrows each class's size-free rectangles (boxes.scale_rect), with the params.
A box table given to localization (--bbox-list) replaces the file: its mean boxes, the rules'
default parameters.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from chexnet import boxes, nih
from chexnet.constants import AVERAGE_BOXES, CLASS_NAMES
from chexnet.model_dir import BOX_SIZES
from chexnet.utils import InputError, write_text_atomic

SIZE_FALLBACKS = ("none", "all")  # --size-fallback: for a class without boxes in --size-images


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
                    params: np.ndarray | None = None, calibration: dict | None = None,
                    methods: list[str] | None = None,
                    rect_scales: np.ndarray | None = None) -> None:
    """The inverse of read_box_sizes (and read_box_params, read_box_methods), written atomically;
    "method", "parameter" and "params" only when tuned for a method, "calibration" when
    calibrate.py wrote it. method boxes.PER_CLASS ("auto"): `methods` names each class's rule,
    written as "methods", and "parameter" is then a list too (the parameter of each);
    rect_scales written only when one differs from 1."""
    table = np.asarray(table, dtype=np.float64)
    # Full precision (JSON floats round-trip exactly): a bundle or a re-read sizes boxes bit for
    # bit.
    data = {"class_names": list(CLASS_NAMES), "boxes": table.tolist()}
    if method is not None:
        values = np.asarray(params, dtype=np.float64)
        if method == boxes.PER_CLASS:
            rules = boxes.per_class(methods)
            data.update(method=method, methods=list(rules),
                        parameter=[boxes.METHODS[m].parameter for m in rules])
        else:
            data.update(method=method, parameter=boxes.METHODS[method].parameter)
        data["params"] = values.tolist()
        if rect_scales is not None and (np.asarray(rect_scales) != 1.0).any():
            data["rect_scales"] = np.asarray(rect_scales, dtype=np.float64).tolist()
    if calibration is not None:
        data["calibration"] = calibration
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def read_box_methods(path: str | os.PathLike) -> tuple[str, ...] | None:
    """The box rule of each class (CLASS_NAMES order) that box_sizes.json was tuned for: its
    "methods" when calibrated per class, else its "method" for all; None if tuned for none."""
    data = _read_box_json(path)
    method = data.get("method")
    if method is None:
        return None
    rules = data.get("methods") if method == boxes.PER_CLASS else method
    if method == boxes.PER_CLASS and not isinstance(rules, list):
        raise InputError(f"{path}: \"method\": \"{boxes.PER_CLASS}\" needs \"methods\", a list of "
                         f"{len(CLASS_NAMES)} box rules, one per class (got {rules!r})")
    try:
        return boxes.per_class(rules)
    except (ValueError, TypeError) as err:
        raise InputError(f"{path}: {err}") from None


def check_box_rules(path: str | os.PathLike) -> None:
    """The box rules and parameters of box_sizes.json, read as localization will read them (a
    bad one is an InputError naming the file): the bundle checks them before it ships them."""
    if read_box_methods(path) is not None:
        read_box_params(path, _read_box_json(path)["method"])
        read_rect_scales(path, _read_box_json(path)["method"])


def read_box_params(path: str | os.PathLike, method: str) -> np.ndarray | None:
    """The per-class parameters (C,) box_sizes.json holds for `method` (boxes.PER_CLASS: for its
    own rule of each class); None if none for it. Each must lie in (0, its rule's upper]."""
    data = _read_box_json(path)
    if data.get("method") != method:
        return None
    rules = read_box_methods(path)
    try:
        values = np.asarray(data.get("params"), dtype=np.float64)
    except (ValueError, TypeError) as err:
        raise InputError(f"{path}: not a box-size file ({type(err).__name__}: {err})") from None
    upper = np.array([boxes.METHODS[m].upper for m in rules])
    if values.shape != (len(CLASS_NAMES),) or not ((values > 0) & (values <= upper)).all():
        ranges = ", ".join(f"{m} (0, {boxes.METHODS[m].upper:g}]" for m in dict.fromkeys(rules))
        raise InputError(f"{path}: 'params' must be {len(CLASS_NAMES)} numbers, each in its "
                         f"rule's range ({ranges}), got {data.get('params')}")
    return values


def read_rect_scales(path: str | os.PathLike, method: str) -> np.ndarray | None:
    """The per-class rectangle scales (C,) box_sizes.json holds with its params for `method`;
    None if it was not tuned for `method` or scales none. Each must be a positive number."""
    data = _read_box_json(path)
    if data.get("method") != method or "rect_scales" not in data:
        return None
    try:
        values = np.asarray(data["rect_scales"], dtype=np.float64)
    except (ValueError, TypeError):
        values = np.array([])
    if values.shape != (len(CLASS_NAMES),) or not ((values > 0) & (values < np.inf)).all():
        raise InputError(f"{path}: 'rect_scales' must be {len(CLASS_NAMES)} positive numbers, "
                         f"got {data['rect_scales']!r}")
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
    if method is not None and method not in (*boxes.METHODS, boxes.PER_CLASS):
        raise InputError(f"{path}: unknown box method {method!r}; "
                         f"choose from {', '.join(boxes.METHODS)} or {boxes.PER_CLASS}")
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


def resolve_box_methods(bbox_list: str | os.PathLike | None,
                        model_path: str | os.PathLike | None, method: str) -> tuple[str, ...]:
    """The box rule of each class: `method` for all, or for boxes.PER_CLASS the rules of the
    applicable box_sizes.json that calibrate.py --method auto wrote (else an InputError)."""
    if method != boxes.PER_CLASS:
        return boxes.per_class(method)
    path = calibrated_box_file(bbox_list, model_path)
    if path is None or _read_box_json(path).get("method") != boxes.PER_CLASS:
        where = ("--bbox-list replaces it" if bbox_list is not None else
                 f"there is none beside {model_path}" if path is None else
                 f"{path} was tuned for {_read_box_json(path).get('method') or 'no rule'}")
        raise InputError(f"--method {boxes.PER_CLASS}: the rules per class come from the "
                         f"{BOX_SIZES} of tools/calibrate.py --method {boxes.PER_CLASS} beside "
                         f"--model ({where})")
    return read_box_methods(path)


def resolve_box_params(bbox_list: str | os.PathLike | None, model_path: str | os.PathLike | None,
                       method: str) -> tuple[np.ndarray | None, str]:
    """(per-class parameters of `method` or None for its default, where they came from): from the
    applicable box_sizes.json when it was tuned for `method` (boxes.PER_CLASS: always; see
    resolve_box_methods)."""
    path = calibrated_box_file(bbox_list, model_path)
    if method == boxes.PER_CLASS:
        params = None if path is None else read_box_params(path, method)
        if params is None:  # no per-class file: resolve_box_methods' error says why
            resolve_box_methods(bbox_list, model_path, method)
        return params, str(path)
    default = f"{boxes.METHODS[method].parameter} {boxes.METHODS[method].default:g} (the default)"
    params = None if path is None else read_box_params(path, method)
    if params is None:
        return None, default if path is None else f"{default}; {path} has none for {method}"
    return params, str(path)


def resolve_rect_scales(bbox_list: str | os.PathLike | None,
                        model_path: str | os.PathLike | None, method: str) -> np.ndarray | None:
    """The rectangle scales (C,) that go with resolve_box_params' parameters (None: all 1)."""
    path = calibrated_box_file(bbox_list, model_path)
    return None if path is None else read_rect_scales(path, method)
