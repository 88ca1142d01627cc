"""Image tensors for the network: crops of the stored 256 image and ImageNet normalisation.

The crops work on uint8 arrays (cheap, in the data workers); normalisation works on a
uint8 batch already on the device, so only bytes cross the PCIe bus.
"""
from __future__ import annotations

import numpy as np
import torch

from constants import CROP_OFFSET, CROP_SIZE, IMAGENET_MEAN, IMAGENET_STD


def center_crop(image: np.ndarray) -> np.ndarray:
    """(256, 256) -> (224, 224): the crop that localization maps back with CROP_OFFSET."""
    return image[CROP_OFFSET:CROP_OFFSET + CROP_SIZE, CROP_OFFSET:CROP_OFFSET + CROP_SIZE]


def random_crop_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The original's training augmentation: a random 224 crop, then a horizontal flip half the time."""
    top, left = rng.integers(0, image.shape[0] - CROP_SIZE + 1, size=2)
    crop = image[top:top + CROP_SIZE, left:left + CROP_SIZE]
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def normalize(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) grayscale -> float (B, 3, H, W): the gray channel tiled 3 times, ImageNet-normalised."""
    x = batch.unsqueeze(1).float().div_(255.0)  # (B, 1, H, W)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std  # broadcasts to (B, 3, H, W)
