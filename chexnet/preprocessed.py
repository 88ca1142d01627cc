"""The preprocessed folder: the contract between preprocessing.py and train.py.

    OUT_DIR/
      train_X.npy      uint8 (N, 256, 256)  grayscale images, row-major (row = y, column = x);
                                            (N, 512, 512) at --input-size 448 (geometry.py)
      train_y.npy      uint8 (N, C)         0/1 labels in meta.json's class_names order (8 or 14)
      valid_X.npy      uint8 (M, 256, 256)
      valid_y.npy      uint8 (M, C)
      valid_boxes.csv  ground-truth boxes of the validation images:
                       image,label,x,y,w,h (the image's own pixels, as the table gives them;
                       'Infiltrate' already mapped)
      meta.json        written last, so its presence means the folder is complete:
                       {"format": "chexnet-preprocessed", "version": 1,
                        "class_names": [...], "image_size": 256,   # the arrays' side
                        "input_size": 448,   # the crop train.py takes: image_size * 224 / 256;
                                             # written only where it is not 224 (absent: 224)
                        "resize": "original" | "area",   # how 1024 became 256 (images.py);
                                                         # absent in folders made before: "area"
                        "train_images": [...], "valid_images": [...],   # row order of the arrays
                        "train_sizes": [[W, H], ...], "valid_sizes": [...],  # originals, rows
                        "sources": {"images": ..., "data_entry": ..., "bbox_list": ...,
                                    "train_list": ..., "valid_list": ...}}

All .npy files are plain arrays (np.load with allow_pickle=False) and open as memory maps;
store_images writes the image arrays (worker processes, each writing its own rows).
A folder written before the sizes were kept has no *_sizes: its images were all 1024x1024 (that
version refused any other size), which is what load_prepared then gives.
"""
from __future__ import annotations

import csv
import json
import multiprocessing
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from chexnet.utils import InputError
from chexnet.constants import ORIGINAL_SIZE, STORED_SIZE
from chexnet.geometry import Geometry, geometry
from chexnet.images import DEFAULT_RESIZE, load_stored_sized
from chexnet.nih import class_set

FORMAT = "chexnet-preprocessed"
VERSION = 1
META = "meta.json"
VALID_BOXES = "valid_boxes.csv"
VALID_BOXES_HEADER = ("image", "label", "x", "y", "w", "h")


def array_names(split: str) -> tuple[str, str]:
    """File names of a split's images and labels: ('train_X.npy', 'train_y.npy')."""
    return f"{split}_X.npy", f"{split}_y.npy"


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, S, S), S the stored size (256), a read-only memory map
    labels: np.ndarray  # uint8 (N, C)
    names: list[str]
    sizes: list[tuple[int, int]]  # each image's original (width, height): the frame of its boxes


@dataclass
class Prepared:
    folder: Path
    meta: dict
    train: Split
    valid: Split

    @property
    def resize(self) -> str:
        """How the stored images were resized; folders written before the choice existed used
        area."""
        return self.meta.get("resize", "area")

    @property
    def geometry(self) -> Geometry:
        """The input size the folder was made for (meta.json's input_size; 224 before the key)."""
        return geometry(self.meta.get("input_size"), str(self.folder / META))

    def input_size(self, requested: int | None = None) -> int:
        """The folder's input size; `requested` (train.py --input-size, None: the folder's) must
        be it, else one InputError line saying how to make a folder of that size."""
        made = self.geometry.input_size
        if requested not in (None, made):
            raise InputError(f"{self.folder / META}: the folder was made for input size {made}, "
                             f"not --input-size {requested}; run preprocessing.py again with "
                             f"--input-size {requested}")
        return made


def load_prepared(folder: str | Path) -> Prepared:
    """Open a preprocessed folder, checking meta.json and array shapes before anything else."""
    folder = Path(folder)
    meta_path = folder / META
    if not meta_path.is_file():
        raise InputError(f"{meta_path}: not found; is {folder} the output folder of "
                         f"preprocessing.py?")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{meta_path}: not valid JSON ({err})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise InputError(f"{meta_path}: not a {FORMAT} v{VERSION} folder; "
                         f"run preprocessing.py again")
    missing = [key for key in ("class_names", "train_images", "valid_images") if key not in meta]
    if missing:
        raise InputError(f"{meta_path}: missing {', '.join(missing)}; run preprocessing.py again")
    class_set(meta["class_names"], str(meta_path))
    stored = _stored_size(meta_path, meta)
    return Prepared(folder, meta, _load_split(folder, meta, "train", stored),
                    _load_split(folder, meta, "valid", stored))


def _stored_size(meta_path: Path, meta: dict) -> int:
    """The arrays' side: input_size's stored size (256 at 224), which image_size must equal."""
    stored = geometry(meta.get("input_size"), str(meta_path)).stored_size
    if meta.get("image_size", STORED_SIZE) != stored:
        raise InputError(f"{meta_path}: image_size {meta.get('image_size')!r} does not fit "
                         f"input_size {meta.get('input_size', 224)} (stored {stored}); "
                         f"run preprocessing.py again")
    return stored


def warn_if_resized_otherwise(folder: str | Path, trained: str, model: str | Path) -> None:
    """A warning when the folder's images were resized otherwise than `model`'s were in training
    (its checkpoint's "resize"): the model would go on learning from other pixels."""
    resized = load_prepared(folder).resize
    if resized != trained:
        print(f"warning: {folder}: resized with {resized!r}, but {model} was trained on images "
              f"resized with {trained!r}", file=sys.stderr)


def _load_split(folder: Path, meta: dict, split: str, stored: int = STORED_SIZE) -> Split:
    x_name, y_name = array_names(split)
    names = list(meta[f"{split}_images"])
    images = _load_array(folder / x_name, np.uint8, (len(names), stored, stored))
    labels = _load_array(folder / y_name, np.uint8, (len(names), len(meta["class_names"])))
    return Split(images, labels, names, _sizes(folder / META, meta, split, len(names)))


def _sizes(meta_path: Path, meta: dict, split: str, count: int) -> list[tuple[int, int]]:
    """The split's original (width, height) per row; 1024x1024 for a folder older than the key."""
    if f"{split}_sizes" not in meta:
        return [(ORIGINAL_SIZE, ORIGINAL_SIZE)] * count
    sizes = meta[f"{split}_sizes"]
    def pair(s) -> bool:
        return isinstance(s, list) and len(s) == 2 and all(isinstance(v, int) and v > 0 for v in s)
    if not (isinstance(sizes, list) and len(sizes) == count and all(pair(s) for s in sizes)):
        raise InputError(f"{meta_path}: {split}_sizes must be {count} [width, height] pairs of "
                         f"positive integers; run preprocessing.py again")
    return [(w, h) for w, h in sizes]


def _load_array(path: Path, dtype, shape: tuple[int, ...]) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{path}: not found; run preprocessing.py again")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    # truncated, not a .npy, or an object (pickle) array
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{path}: not a readable uint8 .npy array ({err}); "
                         f"run preprocessing.py again") from None
    if array.dtype != dtype or array.shape != shape:
        raise InputError(f"{path}: expected {np.dtype(dtype).name} {shape}, "
                         f"found {array.dtype} {array.shape}")
    return array


def read_valid_boxes(folder: str | Path) -> list[dict]:
    """Ground-truth boxes of the validation images, as dicts with image, label, x, y, w, h."""
    path = Path(folder) / VALID_BOXES
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: cannot read ({getattr(err, 'strerror', None) or err}); "
                         f"run preprocessing.py again") from None
    boxes = []
    for row_number, r in enumerate(rows, start=2):
        try:
            boxes.append({"image": r["image"], "label": r["label"],
                          **{k: float(r[k]) for k in ("x", "y", "w", "h")}})
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: row {row_number}: "
                             f"expected {','.join(VALID_BOXES_HEADER)}") from None
    return boxes


# ---------------------------------------------------------------- writing the image arrays

DEFAULT_CHUNK = 8  # images a worker decodes and writes as one task (one 512 KiB memory-map window)


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the pool, once


def _decode(path: str, resize: str, size: int = STORED_SIZE
            ) -> tuple[np.ndarray, tuple[int, int]]:
    """uint8 (size, size) stored image and the original (width, height); any decoder failure
    becomes an InputError naming the file."""
    try:
        return load_stored_sized(path, resize, size)
    except cv2.error as err:
        raise InputError(f"{path}: cannot decode ({str(err).strip().splitlines()[-1]})") from None


def create_stored_array(path: Path, count: int, size: int = STORED_SIZE) -> int:
    """An empty uint8 (count, size, size) .npy at `path` (256 by default); returns the byte offset
    of its pixels."""
    header = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, size, size))
    offset = header.offset
    del header
    return offset


def _store_run(task: tuple[str, int, int, list[str], str, int]
               ) -> tuple[int, list[tuple[int, int]]]:
    """Decode a run of images and write them into their rows of the .npy through one short-lived
    memory-map window. Workers write their own rows, so no pixels travel between processes, and
    unmapping each window keeps memory flat (a long-lived map keeps every page it touched resident).
    Returns the run's first row and its images' original (width, height)."""
    path, data_offset, first_row, paths, resize, size = task
    loaded = [_decode(p, resize, size) for p in paths]
    images = np.stack([stored for stored, _ in loaded])  # (n, size, size)
    window = np.memmap(path, dtype=np.uint8, mode="r+",
                       offset=data_offset + first_row * images[0].nbytes,
                       shape=images.shape)
    window[:] = images
    del window  # unmapped: the kernel's page cache writes the pages back
    return first_row, [size for _, size in loaded]


def store_images(paths: list[str], path: Path, workers: int, chunk: int,
                 resize: str = DEFAULT_RESIZE, sizes: list | None = None,
                 stored_size: int = STORED_SIZE) -> Iterator[int]:
    """Write the stored form of `paths`, in list order, as the .npy `path`; yields images done so
    far as runs of `chunk` finish (any order: each run owns its rows, so the file is the same for
    any workers). sizes: a list of len(paths) that receives each image's [width, height] in list
    order. stored_size: the side of the stored images (256; geometry.Geometry.stored_size)."""
    data_offset = create_stored_array(path, len(paths), stored_size)
    tasks = [(str(path), data_offset, first, paths[first:first + chunk], resize, stored_size)
             for first in range(0, len(paths), chunk)]
    if workers <= 1 or len(tasks) <= 1:
        runs = map(_store_run, tasks)
    else:
        pool = multiprocessing.Pool(min(workers, len(tasks)), initializer=_init_worker)
        runs = _closing_pool(pool, pool.imap_unordered(_store_run, tasks))
    for first, run_sizes in runs:
        if sizes is not None:
            sizes[first:first + len(run_sizes)] = [list(size) for size in run_sizes]
        yield len(run_sizes)


def _closing_pool(pool, results: Iterator) -> Iterator:
    with pool:
        yield from results
