"""Reading X-rays from disk into the stored 256x256 uint8 grayscale form."""
from __future__ import annotations

import os

import cv2
import numpy as np

from common import InputError
from constants import ORIGINAL_SIZE, STORED_SIZE


def read_xray(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to a uint8 (H, W) grayscale array.

    RGB and RGBA files (a few in the NIH release) keep their first (red) channel, as the
    original did; 16-bit files are scaled to 8 bits. Errors name the file.
    """
    if not os.path.isfile(path):
        raise InputError(f"{path}: image not found")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: empty file")
    image = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"{path}: cannot decode (not an image, or truncated)")
    if image.ndim == 3:
        image = image[:, :, 2]  # OpenCV orders channels B, G, R(, A): index 2 is red, the first in the file
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise InputError(f"{path}: unsupported pixel type {image.dtype}")
    return np.ascontiguousarray(image)


def resize_stored(image: np.ndarray) -> np.ndarray:
    """(H, W) -> (256, 256) uint8 by area averaging, the right filter for a 4x downscale."""
    return cv2.resize(image, (STORED_SIZE, STORED_SIZE), interpolation=cv2.INTER_AREA)


def load_stored(path: str | os.PathLike, require_original_size: bool = True) -> np.ndarray:
    """Read one X-ray and return its stored (256, 256) form; refuse a size the box frame cannot map."""
    image = read_xray(path)
    if require_original_size and image.shape != (ORIGINAL_SIZE, ORIGINAL_SIZE):
        raise InputError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, expected "
                         f"{ORIGINAL_SIZE}x{ORIGINAL_SIZE} (the NIH release size)")
    return resize_stored(image)
