"""Decoding real NIH PNGs (grayscale and RGBA) into the stored 256x256 form."""
import cv2
import numpy as np
import pytest
from PIL import Image

from chexnet.utils import InputError
from chexnet.images import load_stored, read_xray, resize_stored

RGBA_NAME = "00000100_000.png"  # one of the 6 RGBA files of the release


def area_resize(image):
    return cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA)


def test_grayscale_png_is_stored_as_uint8_256(sample_dir):
    path = sample_dir / "images" / "00000404_000.png"
    stored = load_stored(path, "area")
    assert stored.dtype == np.uint8 and stored.shape == (256, 256)
    original = np.asarray(Image.open(path))  # decoded by another library
    assert original.shape == (1024, 1024)
    assert np.array_equal(stored, area_resize(original))
    assert np.array_equal(load_stored(path), resize_stored(original, "original"))  # the default


def test_rgba_png_keeps_the_red_channel(sample_dir):
    path = sample_dir / "images" / RGBA_NAME
    rgba = np.asarray(Image.open(path))  # PIL keeps the file's R, G, B, A order
    assert rgba.shape == (1024, 1024, 4)
    assert np.array_equal(load_stored(path, "area"), area_resize(np.ascontiguousarray(rgba[:, :, 0])))


def test_rgba_with_distinct_channels_picks_red(sample_dir, tmp_path):
    gray = np.asarray(Image.open(sample_dir / "images" / "00000404_000.png"))
    rgba = np.stack([gray, 255 - gray, np.zeros_like(gray), np.full_like(gray, 128)], axis=-1)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    assert np.array_equal(read_xray(path), gray)


def test_16bit_png_is_scaled_to_8bit(sample_dir, tmp_path):
    gray = np.asarray(Image.open(sample_dir / "images" / "00000404_000.png"))
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), gray.astype(np.uint16) * 257)  # 8-bit v -> 16-bit v * 257 exactly
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    assert np.array_equal(read_xray(path), gray)


def test_resize_is_area_average():
    image = np.zeros((1024, 1024), np.uint8)
    image[:4, :4] = 200  # one stored pixel's 4x4 block
    stored = resize_stored(image)
    assert stored[0, 0] == 200 and stored.sum() == 200


@pytest.mark.parametrize("content, message", [
    (None, "image not found"),
    (b"", "empty file"),
    (b"this is not a PNG" * 10, "cannot decode"),
    ("truncated", "cannot decode"),
])
def test_bad_files_name_the_file(sample_dir, tmp_path, content, message):
    path = tmp_path / "bad.png"
    if content == "truncated":
        content = (sample_dir / "images" / "00000404_000.png").read_bytes()[:50_000]
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=f"^{path}: {message}"):
        load_stored(path)


def test_small_image_is_refused_other_sizes_are_resized(tmp_path):
    path = tmp_path / "small.png"
    cv2.imwrite(str(path), np.zeros((200, 600), np.uint8))
    with pytest.raises(InputError, match=r"small.png: image is 600x200 px; need at least 256"):
        load_stored(path)
    cv2.imwrite(str(path), np.zeros((512, 600), np.uint8))
    assert load_stored(path).shape == (256, 256)
