"""The default resize gives the original project's pixels: against pixels written by the real 2018
stack (Python 3.6, numpy 1.13.3, scikit-image 0.13.1: `resize(img, (256, 256))`, stored / 255, then
train.py's `np.uint8(x * 255 * 255)`), and against a restatement of those two lines with today's
scikit-image, which differs only in last-ulp ties (see chexnet/original_resize.py). The recorded
pixels' recipe, with OpenBLAS's Haswell kernel: tests/data/make_original_resize_skimage013.py."""
from pathlib import Path

import numpy as np
import pytest
from skimage.transform import resize

from chexnet.images import read_xray, resize_stored
from chexnet.original_resize import resize_original

RECORDED = Path(__file__).parent / "data" / "original_resize_skimage013.npz"  # 3 gray, 2 RGBA


def restated(image: np.ndarray) -> np.ndarray:
    """The original's two lines with today's scikit-image (no anti-aliasing, as 0.13.1 had none)."""
    resized = resize(image, (256, 256), order=1, mode="constant", cval=0, clip=True,
                     preserve_range=False, anti_aliasing=False)
    return np.uint8(resized / 255 * 255 * 255)


def test_equal_to_the_real_2018_pixels(sample_dir):
    with np.load(RECORDED, allow_pickle=False) as recorded:
        for name in recorded.files:  # the RGBA ones through the red channel, as at test time
            image = read_xray(sample_dir / "images" / f"{name}.png")
            assert np.array_equal(resize_stored(image), recorded[name]), name


def test_within_one_grey_level_of_todays_restatement_where_the_mean_is_whole(sample_dir):
    for name in ("00000100_000.png", "00009745_000.png", "00002578_000.png"):  # RGBA, gray, RGBA
        image = read_xray(sample_dir / "images" / name)
        ours, theirs = resize_original(image).astype(int), restated(image).astype(int)
        assert np.abs(ours - theirs).max() <= 1
        # A difference only where the central 2x2 mean is a whole number (the truncation's ties).
        centre = image.reshape(256, 4, 256, 4)[:, 1:3, :, 1:3].astype(int).sum(axis=(1, 3))
        assert ((centre % 4 == 0) | (ours == theirs)).all()
        assert (ours == theirs).mean() > 0.85


def test_any_shape_and_not_the_area_average():
    rng = np.random.default_rng(0)
    for shape in ((2500, 2048), (300, 257)):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        ours, theirs = resize_original(image).astype(int), restated(image).astype(int)
        assert ours.shape == (256, 256) and np.abs(ours - theirs).max() <= 1
        assert (ours == theirs).mean() > 0.98
    edge = np.zeros((1024, 1024), np.uint8)
    edge[:, 513:] = 255  # a sharp edge inside a 4x4 block: sampling and averaging part ways
    assert resize_stored(edge, "original")[0, 128] != resize_stored(edge, "area")[0, 128]


def test_refuses_what_it_cannot_restate():
    with pytest.raises(ValueError, match="uint8"):
        resize_original(np.zeros((1024, 1024), np.float32))
