"""The model folder: the contract between train.py, calibrate.py, localization and the bundle.

    model/
      best.pt          the checkpoint of the best epoch (model.py's format), what localization loads
      last.pt          the last epoch, with the optimizer and RNG state for train.py --resume
      thresholds.npy   float32 (C,): per-class decision thresholds (prob > threshold), Youden's J
      metrics.jsonl    one JSON object per epoch: epoch, train_loss, valid_loss,
                       auroc {class: float | null}, mean_auroc, seconds
      training_curves.png, roc_curves.png      train.py's pictures
      box_sizes.json   calibrate.py's record (optional): the box sizes, rules and CAM tuned for
                       this model (its format and readers: chexnet/calibrated.py)
      heatmaps.npz     calibrate.py's maps, to re-run its search without the network

Localization finds thresholds.npy and box_sizes.json beside whatever checkpoint it is given, so a
bundle (or any folder) that keeps these names works the same way.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from chexnet.constants import CLASS_NAMES
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
