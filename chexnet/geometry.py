"""The network's input size and what follows from it (--input-size of preprocessing.py and
train.py; localization reads it from the checkpoint).

At input size S (224 by default, the original's) every image is resized to S * 256 / 224 pixels a
side, stored so, and the network sees the centre S x S crop (train: a random one). The crop covers
the same share of the image at every S: pixels [64, 960) of a 1024 image, since the offset
S / 14 of a stored side of S * 8 / 7 is 1/16 of it. At 448 the stored images are 512, and
DenseNet-121's denseblock4 gives 14 x 14 maps (7 x 7 at 224), denseblock2 56 x 56 (28 x 28).

The maps are still delivered at 224 x 224 on the crop at every S (gradcam.py's map_size): the CAM,
upsampled from its finer grid straight to 224, is the same geometry, so heatmap files, every box
rule, calibration, drawing and the box file's x_1024 = (x_224 + 16) * 4 are unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

from chexnet.constants import CROP_SIZE, ORIGINAL_SIZE, STORED_SIZE
from chexnet.utils import InputError

# Multiples of 224 only: DenseNet-121's stride of 32 then divides S (each feature cell covers
# whole input pixels) and S * 256 / 224 and the crop offset are whole pixels. Up to 896, whose
# stored 1024 is NIH's own size (larger would upsample the X-rays).
# And half of 224, 112 (stored 128, crop offset 8: the same [64, 960)), a warm-up size for training
# from random weights (progressive resizing: a pass costs about a third of 224's on the CPU, and
# train.py --weights PATH then starts the 224 stage from its features). Its denseblock4 grid is
# 3 x 3 (112 / 32 floored), too coarse to localize with.
WARM_UP_SIZE = CROP_SIZE // 2
INPUT_SIZES = (WARM_UP_SIZE,) + tuple(CROP_SIZE * k
                                      for k in range(1, ORIGINAL_SIZE // STORED_SIZE + 1))
MAP_SIZE = CROP_SIZE  # heatmaps are 224 x 224 on the crop at every input size


@dataclass(frozen=True)
class Geometry:
    """The sizes of one input size S: stored side, crop side, crop offset (all in stored pixels)."""
    input_size: int = CROP_SIZE

    @property
    def stored_size(self) -> int:
        return self.input_size * STORED_SIZE // CROP_SIZE  # 256 at 224, 512 at 448

    @property
    def crop_offset(self) -> int:
        return (self.stored_size - self.input_size) // 2  # 16 at 224, 32 at 448


def geometry(input_size: int | None, source: str = "--input-size") -> Geometry:
    """The Geometry of `input_size` (None: 224); any size but INPUT_SIZES is one InputError line
    naming `source` (an option, or a file that recorded it)."""
    size = CROP_SIZE if input_size is None else input_size
    if isinstance(size, bool) or not isinstance(size, int) or size not in INPUT_SIZES:
        raise InputError(f"{source}: input size {size!r} is not supported; choose from "
                         f"{', '.join(map(str, INPUT_SIZES))} (112 or multiples of 224)")
    return Geometry(size)


def input_size_of_stored(stored_size: int) -> int:
    """The input size whose stored side is `stored_size` (256 -> 224, 512 -> 448)."""
    return stored_size * CROP_SIZE // STORED_SIZE
