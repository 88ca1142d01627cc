"""The file of `denseNet_localization.py --save-heatmaps FILE.npz`, which tools/evaluate.py scores.

np.savez, no pickle (strings are fixed-width unicode arrays): one row per (image, active class), in
the order localization yields them:

    image        (M,) str     the image path as the box file writes it (IMAGES/name)
    label        (M,) str     the class name (constants.CLASS_NAMES)
    probability  (M,) float32 the class's probability on that image
    heatmap      (M, 224, 224) float32 in [0, 1], on the 224 centre crop (rows y, columns x)
    size         (M, 2) int64 the image's own (width, height) in pixels, the frame of its boxes
    cam, layer   ()   str     the CAM method and its layer

A file without `size` (written before it was kept) reads as 1024x1024 images, the NIH frame.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from chexnet.constants import CLASS_NAMES, CROP_SIZE, ORIGINAL_SIZE
from chexnet.utils import InputError, atomic_path

KEYS = ("image", "label", "probability", "heatmap", "cam", "layer")  # "size" is optional


@dataclass
class SavedHeatmaps:
    images: list[str]
    labels: list[str]
    probs: np.ndarray  # float32 (M,)
    maps: np.ndarray  # float32 (M, 224, 224)
    cam: str
    layer: str
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) per row


def _sizes_array(saved: SavedHeatmaps) -> np.ndarray:
    """(M, 2) int64; the images must each have a size, and they must be positive whole pixels."""
    sizes = np.asarray(saved.sizes, dtype=np.float64).reshape(-1, 2)
    if len(sizes) != len(saved.images):
        raise ValueError(f"{len(saved.images)} heatmaps but {len(sizes)} image sizes")
    if (sizes < 1).any() or (sizes != np.round(sizes)).any():
        raise ValueError("image sizes must be whole (width, height) pixels >= 1")
    return sizes.astype(np.int64)


def write_heatmaps(path: str | os.PathLike, saved: SavedHeatmaps) -> None:
    maps = np.asarray(saved.maps, dtype=np.float32).reshape(-1, CROP_SIZE, CROP_SIZE)
    arrays = {"image": np.array(saved.images, dtype=str),
              "label": np.array(saved.labels, dtype=str),
              "probability": np.asarray(saved.probs, dtype=np.float32), "heatmap": maps,
              "size": _sizes_array(saved),
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
            sizes = data["size"] if "size" in data.files else None
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
    if sizes is None:  # an older file: the NIH frame
        sizes = np.full((m, 2), ORIGINAL_SIZE, dtype=np.int64)
    if sizes.shape != (m, 2) or sizes.dtype.kind not in "iu" or (m and sizes.min() < 1):
        raise InputError(f"{path}: size must be ({m}, 2) whole (width, height) pixels >= 1, got "
                         f"{sizes.dtype} {sizes.shape}")
    return SavedHeatmaps(arrays["image"].tolist(), arrays["label"].tolist(),
                         arrays["probability"].astype(np.float32), maps.astype(np.float32),
                         str(arrays["cam"]), str(arrays["layer"]),
                         [(int(w), int(h)) for w, h in sizes.tolist()])
