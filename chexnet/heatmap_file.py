"""The file of `denseNet_localization.py --save-heatmaps FILE.npz`, which tools/evaluate.py scores.

np.savez, no pickle (strings are fixed-width unicode arrays): one row per (image, active class), in
the order localization yields them:

    image        (M,) str     the image path as the box file writes it (IMAGES/name)
    label        (M,) str     the class name (constants.CLASS_NAMES)
    probability  (M,) float32 the class's probability on that image
    heatmap      (M, 224, 224) float32 in [0, 1], on the 224 centre crop (rows y, columns x)
    cam, layer   ()   str     the CAM method and its layer
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from chexnet.constants import CLASS_NAMES, CROP_SIZE
from chexnet.utils import InputError, atomic_path

KEYS = ("image", "label", "probability", "heatmap", "cam", "layer")


@dataclass
class SavedHeatmaps:
    images: list[str]
    labels: list[str]
    probs: np.ndarray  # float32 (M,)
    maps: np.ndarray  # float32 (M, 224, 224)
    cam: str
    layer: str


def write_heatmaps(path: str | os.PathLike, saved: SavedHeatmaps) -> None:
    maps = np.asarray(saved.maps, dtype=np.float32).reshape(-1, CROP_SIZE, CROP_SIZE)
    arrays = {"image": np.array(saved.images, dtype=str),
              "label": np.array(saved.labels, dtype=str),
              "probability": np.asarray(saved.probs, dtype=np.float32), "heatmap": maps,
              "cam": np.array(saved.cam), "layer": np.array(saved.layer)}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def read_heatmaps(path: str | os.PathLike) -> SavedHeatmaps:
    """The inverse of write_heatmaps; a missing key, a bad shape or a NaN: a one-line InputError."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in KEYS if k not in data.files]
            if missing:
                raise InputError(f"{path}: not a --save-heatmaps file (no {', '.join(missing)})")
            arrays = {k: data[k] for k in KEYS}
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read as a heatmap .npz ({err})") from None
    maps, m = arrays["heatmap"], len(arrays["image"])
    if maps.shape != (m, CROP_SIZE, CROP_SIZE) or len(arrays["label"]) != m:
        raise InputError(f"{path}: expected {m} labels and ({m}, {CROP_SIZE}, {CROP_SIZE}) maps, "
                         f"got {len(arrays['label'])} and {maps.shape}")
    unknown = sorted(set(arrays["label"].tolist()) - set(CLASS_NAMES))
    if unknown:
        raise InputError(f"{path}: unknown class {unknown[0]!r}")
    if not np.isfinite(maps).all() or (m and (maps.min() < 0 or maps.max() > 1)):
        raise InputError(f"{path}: heatmaps must be finite and within [0, 1]")
    return SavedHeatmaps(arrays["image"].tolist(), arrays["label"].tolist(),
                         arrays["probability"].astype(np.float32), maps.astype(np.float32),
                         str(arrays["cam"]), str(arrays["layer"]))
