"""X-ray pixels from file to network: decode -> stored 256x256 uint8 -> 224 crops -> normalised
tensors (at --input-size S: stored S * 256 / 224, crops S; chexnet/geometry.py).

The crops work on uint8 arrays (cheap, in the data workers); normalisation works on a uint8 batch
already on the device, so only bytes cross the PCIe bus.
"""
from __future__ import annotations

import os
from typing import Sequence

import cv2
import numpy as np
import torch

from chexnet import xray_files
from chexnet.constants import CROP_SIZE, IMAGENET_MEAN, IMAGENET_STD, STORED_SIZE
from chexnet.original_resize import resize_original
from chexnet.utils import InputError

RESIZE_METHODS = ("original", "area")
DEFAULT_RESIZE = "original"  # the original's pixels (faithful by default)
MIN_SIDE = STORED_SIZE  # a smaller image would be upsampled to the network's input


def read_xray(path: str | os.PathLike, min_side: int = MIN_SIDE) -> np.ndarray:
    """Decode an X-ray file (PNG 8/16 bit, JPEG, TIFF, DICOM) to a uint8 (H, W) grayscale array.

    RGB and RGBA files (a few in the NIH release) keep their first (red) channel, as the
    original did; 16-bit files are scaled to 8 bits; DICOM goes through xray_files.read_dicom.
    Any size of at least min_side (the stored size, 256 by default) on each side. Errors name
    the file.
    """
    xray_files.check_file(path)
    image = xray_files.read_dicom(path) if xray_files.is_dicom(path) else _read_raster(path)
    height, width = image.shape
    if min(height, width) < min_side:
        raise InputError(f"{path}: image is {width}x{height} px; need at least {min_side} px on "
                         f"each side (a smaller image would be upsampled)")
    return image


def _read_raster(path: str | os.PathLike) -> np.ndarray:
    image = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)
    if image is None:  # a DICOM without preamble and DICM magic, or the 'cannot decode' line
        return xray_files.read_undecodable(path)
    # OpenCV orders channels B, G, R(, A): index 2 is red, the first in the file
    if image.ndim == 3:
        image = image[:, :, 2] if image.shape[2] >= 3 else image[:, :, 0]
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise InputError(f"{path}: unsupported pixel type {image.dtype}")
    return np.ascontiguousarray(image)


def resize_stored(image: np.ndarray, method: str = DEFAULT_RESIZE,
                  size: int = STORED_SIZE) -> np.ndarray:
    """uint8 (H, W) -> uint8 (size, size), 256 by default. "original": the original project's
    pixels (scikit-image 0.13.1's bilinear resize without anti-aliasing, then its float -> uint8
    truncation; see original_resize.py), which exist at 256 only; "area": OpenCV's area average,
    the right filter for a 4x reduction (the mean of each 4x4 block, rounded), which sees every
    pixel where "original" samples 4 of 16."""
    check_resize(method, size)
    if method == "original":
        return resize_original(image)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def check_resize(method: str, size: int = STORED_SIZE) -> None:
    """ValueError unless `method` can make stored images of `size` (original: 256 only)."""
    if method not in RESIZE_METHODS:
        raise ValueError(f"unknown resize {method!r}; choose from {', '.join(RESIZE_METHODS)}")
    if method == "original" and size != STORED_SIZE:
        raise ValueError(f"resize 'original' is the original project's {STORED_SIZE} px pixels; "
                         f"stored images of {size} px need resize 'area'")


def default_resize(stored_size: int) -> str:
    """--resize's default: the original's pixels at 256, area at any other stored size."""
    return DEFAULT_RESIZE if stored_size == STORED_SIZE else "area"


def load_stored(path: str | os.PathLike, resize: str = DEFAULT_RESIZE,
                size: int = STORED_SIZE) -> np.ndarray:
    """Read one X-ray of any size and return its stored (size, size) form, (256, 256) by default."""
    return resize_stored(read_xray(path, max(MIN_SIDE, size)), resize, size)


def load_stored_sized(path: str | os.PathLike, resize: str = DEFAULT_RESIZE,
                      size: int = STORED_SIZE) -> tuple[np.ndarray, tuple[int, int]]:
    """The stored (size, size) form and the original (width, height), which the boxes map back
    to."""
    image = read_xray(path, max(MIN_SIDE, size))
    return resize_stored(image, resize, size), (image.shape[1], image.shape[0])


def check_images_exist(paths: Sequence[str | os.PathLike], source: str | os.PathLike,
                       lines: Sequence[int] | None = None, hint: str = "") -> None:
    """Every listed image must exist before any work starts. The error names the first missing image
    and where it is listed: `source` line N (lines: the list's line numbers) or entry N."""
    missing = [i for i, path in enumerate(paths) if not os.path.isfile(path)]
    if missing:
        i = missing[0]
        where = f"line {lines[i]}" if lines is not None else f"entry {i + 1}"
        more = f" (and {len(missing) - 1} more of {len(paths)})" if len(missing) > 1 else ""
        raise InputError(f"{paths[i]}: image not found (listed in {source} {where}){more}{hint}")


def index_images(folder: str | os.PathLike, wanted: set[str] | None = None) -> dict[str, str]:
    """{file name: path} of every file beneath `folder`, at any depth (the Kaggle layout
    images_001/images/*.png, NIH's tarballs extracted side by side): one os.scandir walk. A wanted
    name (all names when wanted is None) found twice is an error naming both paths. Hidden
    entries are skipped; a folder reached twice through links is walked once."""
    index: dict[str, str] = {}
    stack, seen = [os.fspath(folder)], set()
    while stack:
        top = stack.pop()
        key = (os.stat(top).st_dev, os.stat(top).st_ino)
        if key in seen:
            continue
        seen.add(key)
        with os.scandir(top) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    stack.append(entry.path)
                elif wanted is None or entry.name in wanted:
                    if entry.name in index:
                        first, second = sorted([index[entry.name], entry.path])
                        raise InputError(f"{first}: {entry.name} is also at {second}; "
                                         f"IMAGES must hold each image once")
                    index[entry.name] = entry.path
    return index


def image_paths(images: str | os.PathLike, names: Sequence[str]) -> list[str]:
    """The path of each listed name: IMAGES/name where it exists (a flat folder: no walk),
    else where one walk of IMAGES finds it beneath (a nested release). A name not found keeps
    IMAGES/name, for check_images_exist to report."""
    flat = [os.path.join(images, name) for name in names]
    missing = [i for i, path in enumerate(flat) if not os.path.isfile(path)]
    if not missing or not os.path.isdir(images):
        return flat
    index = index_images(images, {os.path.basename(names[i]) for i in missing})
    for i in missing:
        flat[i] = index.get(os.path.basename(names[i]), flat[i])
    return flat


def center_crop(image: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """(256, 256) -> (224, 224): the crop that localization maps back with CROP_OFFSET; any
    stored (n, n) -> its centre (size, size), offset (n - size) // 2 (32 for 448 of 512)."""
    offset = (image.shape[0] - size) // 2
    return image[offset:offset + size, offset:offset + size]


def random_crop_flip(image: np.ndarray, rng: np.random.Generator,
                     size: int = CROP_SIZE) -> np.ndarray:
    """The original's training augmentation: a random 224 crop (`size`), then a horizontal flip
    half the time."""
    top, left = rng.integers(0, image.shape[0] - size + 1, size=2)
    crop = image[top:top + size, left:left + size]
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def normalize(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) grayscale -> float (B, 3, H, W): the gray channel tiled 3 times,
    ImageNet-normalised."""
    x = batch.unsqueeze(1).float().div_(255.0)  # (B, 1, H, W)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std  # broadcasts to (B, 3, H, W)
