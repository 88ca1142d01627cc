"""--input-size S: 224 is exactly the original's geometry; 448 stores 512 images, crops 448, gives
14x14 maps at denseblock4, and its boxes land where the finding is (maps delivered at 224)."""
import json
import os
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import calibrate
import preprocessing
import train
from chexnet import calibration, images, localize, preprocessed
from chexnet.boxfile import read_box_file
from chexnet.constants import AVERAGE_BOXES, CLASS_NAMES, CROP_OFFSET, STORED_SIZE
from chexnet.geometry import INPUT_SIZES, MAP_SIZE, Geometry, geometry
from chexnet.utils import InputError
from model import build_model, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["00001933_000.png", "00008386_000.png"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread on this shared machine: oversubscribed OpenMP threads spin (see test_train)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_224_is_the_original_geometry(sample_dir, tmp_path, random_checkpoint):
    g = geometry(None)
    assert g == Geometry(224) and (g.stored_size, g.crop_offset) == (STORED_SIZE, CROP_OFFSET)
    assert (Geometry(448).stored_size, Geometry(448).crop_offset) == (512, 32)
    # the crop is the same share of the image at every size: [64, 960) of a 1024 image
    for size in INPUT_SIZES:
        s = Geometry(size)
        assert s.crop_offset * 1024 / s.stored_size == 64 == 1024 - 1024 * (
            s.crop_offset + size) / s.stored_size
    stored = images.load_stored(sample_dir / "images" / NAMES[0])
    assert stored.shape == (256, 256)
    assert np.array_equal(images.center_crop(stored), stored[16:240, 16:240])
    crops = localize.FileCrops([str(sample_dir / "images" / NAMES[0])], "original")
    assert np.array_equal(crops[0][0].numpy(), stored[16:240, 16:240])
    # a checkpoint without input_size (older writers, bare state dicts) reads as 224
    path = random_checkpoint(tmp_path / "model")
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["input_size"]
    save_checkpoint(path, checkpoint)
    assert load_checkpoint(path)["input_size"] == 224
    assert localize.resolve_input(None, load_checkpoint(path), str(path)) == ("original", 224)


@pytest.mark.parametrize("size", [0, 56, 300, 336, 1120, "448"])
def test_other_sizes_are_one_line_errors(size):
    with pytest.raises(InputError, match=r"ckpt: input size .* not supported; choose from "
                                         r"112, 224, 448, 672, 896"):
        geometry(size, "ckpt")


def test_original_resize_exists_at_256_only(sample_dir):
    with pytest.raises(ValueError, match="need resize 'area'"):
        images.load_stored(sample_dir / "images" / NAMES[0], "original", 512)
    assert images.load_stored(sample_dir / "images" / NAMES[0], "area", 512).shape == (512, 512)
    assert images.default_resize(256) == "original" and images.default_resize(512) == "area"


def test_densenet_at_448_gives_14x14_at_denseblock4_and_56x56_at_denseblock2():
    model = build_model(len(CLASS_NAMES), weights="none").eval()
    shapes = {}
    hooks = [getattr(model.features, name).register_forward_hook(
        lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[-2:])))
        for name in ("denseblock2", "denseblock4")]
    with torch.no_grad():
        for side in (224, 448):
            assert model(torch.zeros(1, 3, side, side)).shape == (1, 8)
            assert shapes == {"denseblock2": (side // 8, side // 8),
                              "denseblock4": (side // 32, side // 32)}
    for hook in hooks:
        hook.remove()


class Brightness(nn.Module):
    """features: a 1x1 conv copying the input's first channel, then a 4x4 mean pool (a coarser
    grid, as DenseNet's); head: global mean -> linear. Grad-CAM at features.pool is then the
    brightness pooled, so the map peaks where the image is brightest."""

    def __init__(self):
        super().__init__()
        conv = nn.Conv2d(3, 4, 1, bias=False)
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[:, 0] = 1.0
        self.features = nn.Sequential(OrderedDict(conv=conv, pool=nn.AvgPool2d(4)))
        self.classifier = nn.Linear(4, len(CLASS_NAMES))
        with torch.no_grad():
            self.classifier.weight.fill_(0.5)

    def forward(self, x):
        return self.classifier(self.features(x).mean(dim=(-2, -1)))


@pytest.mark.parametrize("size", [224, 448])
def test_a_bright_spot_is_boxed_where_it_is_at_224_and_448(tmp_path, size):
    """A bright blob at (x 700, y 300) of a dark 1024 image: the peaks rule's box is centred on it
    in the 1024 frame, and the map is 224 x 224 at either input size."""
    x0, y0 = 700, 300
    yy, xx = np.mgrid[:1024, :1024]
    blob = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 24.0 ** 2))
    path = tmp_path / "spot.png"
    cv2.imwrite(str(path), (20 + 230 * blob).astype(np.uint8))
    sizes = np.array(AVERAGE_BOXES)
    result, = localize.iter_localize(Brightness(), [str(path)], np.full(8, -1.0), sizes,
                                     torch.device("cpu"), target_layer="features.pool",
                                     resize="area", input_size=size)
    assert all(m.shape == (MAP_SIZE, MAP_SIZE) for m in result.heatmaps.values())
    heat = [b for b in result.boxes if b.label == "Nodule"][1:]  # after the average box
    assert len(heat) == 1
    box = heat[0]
    assert (box.w, box.h) == (68.0, 68.0)  # Nodule's 71.9 x 70.4, in whole crop pixels
    assert abs(box.x + box.w / 2 - x0) <= 8 and abs(box.y + box.h / 2 - y0) <= 8


def _tiny_folder(sample_dir: Path, tmp_path: Path, size: int) -> Path:
    """preprocessing.py --input-size size on 4 train + 2 valid sample images."""
    lists = []
    for split, count in (("train", 4), ("valid", 2)):
        names = (sample_dir / f"{split}.txt").read_text().split()[:count]
        lists.append(tmp_path / f"{split}.txt")
        lists[-1].write_text("".join(n + "\n" for n in names))
    out = tmp_path / f"prepared{size}"
    preprocessing.main(preprocessing.get_args_parser().parse_args([
        str(sample_dir / "images"), str(sample_dir / "Data_Entry_2017.csv"),
        str(sample_dir / "BBox_List_2017.csv"), *map(str, lists), str(out), "--quiet",
        "--workers", "1", "--input-size", str(size)]))
    return out


@pytest.fixture(scope="module")
def folder448(tmp_path_factory) -> Path:
    return _tiny_folder(ROOT / "sample", tmp_path_factory.mktemp("tiny"), 448)


def test_calibration_crops_448_of_512_and_gives_224_maps():
    """calibration.compute_heatmaps on stored 512 arrays: the bright spot's map peaks where it
    is, on the 224 map of the 448 crop: stored (x 350, y 150) -> crop (318, 118) -> map
    (158.75, 58.75), pixel centres."""
    yy, xx = np.mgrid[:512, :512]
    stored = (20 + 230 * np.exp(-((xx - 350) ** 2 + (yy - 150) ** 2) / (2 * 12.0 ** 2)))
    hm = calibration.compute_heatmaps(Brightness(), stored.astype(np.uint8)[None], ["a.png"],
                                      torch.device("cpu"), 1, "features.pool")
    assert hm.maps.shape == (1, 8, 224, 224)
    row, col = np.unravel_index(hm.maps[0, 0].argmax(), (224, 224))
    assert abs(row - 58.75) <= 1 and abs(col - 158.75) <= 1


def test_calibrate_refuses_a_checkpoint_of_another_size(folder448, tmp_path, random_checkpoint):
    model = random_checkpoint(tmp_path / "model")  # 224
    with pytest.raises(InputError, match=r"trained at input size 224, but .* holds images for "
                                         r"448; calibrate on a folder of preprocessing.py "
                                         r"--input-size 224"):
        calibrate.main(calibrate.get_args_parser().parse_args(
            [str(folder448), "--model", str(model), "--device", "cpu"]))
    assert not (tmp_path / "model" / "box_sizes.json").exists()


def test_preprocessing_at_448_stores_512_and_train_refuses_another_size(sample_dir, tmp_path,
                                                                        folder448):
    out = tmp_path / "copy"
    out.mkdir()
    for f in folder448.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["image_size"], meta["input_size"], meta["resize"]) == (512, 448, "area")
    data = preprocessed.load_prepared(out)
    assert data.train.images.shape == (4, 512, 512) and data.geometry == Geometry(448)
    assert np.array_equal(data.valid.images[0], images.load_stored(
        sample_dir / "images" / data.valid.names[0], "area", 512))
    model = tmp_path / "model"
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), str(out), "--out", str(model),
                           "--input-size", "224", "--weights", "none", "--device", "cpu"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 2 and not model.exists()
    assert done.stderr.strip().splitlines() == [
        f"error: {out / 'meta.json'}: the folder was made for input size 448, not --input-size "
        f"224; run preprocessing.py again with --input-size 224"]
    # a folder whose arrays are not its meta.json's size is refused
    meta["input_size"] = 224
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="image_size 512 does not fit input_size 224"):
        preprocessed.load_prepared(out)
    with pytest.raises(InputError,
                       match="--resize original --input-size 448: .*need resize 'area'"):
        preprocessing.main(preprocessing.get_args_parser().parse_args([
            str(sample_dir / "images"), str(sample_dir / "Data_Entry_2017.csv"),
            str(sample_dir / "BBox_List_2017.csv"), str(tmp_path / "train.txt"),
            str(tmp_path / "valid.txt"), str(tmp_path / "x"), "--input-size", "448",
            "--resize", "original"]))


def test_default_folder_has_no_new_key(sample_dir, tmp_path):
    """A folder made without --input-size is byte for byte what it was: no input_size key."""
    meta = json.loads((_tiny_folder(sample_dir, tmp_path, 224) / "meta.json").read_text())
    assert meta["image_size"] == 256 and "input_size" not in meta and meta["resize"] == "original"


def test_train_calibrate_localize_and_bundle_at_448(sample_dir, tmp_path, folder448):
    """train.py at 448 on a tiny folder writes a checkpoint of input_size 448; calibrate.py makes
    224 maps with it; denseNet_localization.py localizes with it at 448, and so does its bundle,
    line for line."""
    data = folder448
    model = tmp_path / "model"
    train.main(train.get_args_parser().parse_args([
        str(data), "--out", str(model), "--weights", "none", "--epochs", "1", "--repeats", "1",
        "--batch-size", "2", "--keep-no-finding", "--device", "cpu", "--workers", "0",
        "--no-plots"]))
    best = load_checkpoint(model / "best.pt")
    assert best["input_size"] == 448 and best["resize"] == "area"
    calibrate.main(calibrate.get_args_parser().parse_args(
        [str(data), "--model", str(model / "best.pt"), "--out", str(tmp_path / "cal"),
         "--device", "cpu", "--thresholds", "0"]))
    assert calibration.load_heatmaps(tmp_path / "cal" / "heatmaps.npz").maps.shape == (
        2, 8, 224, 224)
    test_txt = tmp_path / "test.txt"
    test_txt.write_text("".join(n + "\n" for n in NAMES[:1]))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    boxes = tmp_path / "boxes.txt"
    done = subprocess.run([sys.executable, str(ROOT / "denseNet_localization.py"), str(test_txt),
                           str(sample_dir / "images"), "--model", str(model / "best.pt"),
                           "--thresholds", "0", "--out", str(boxes), "--workers", "0",
                           "--device", "cpu"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resize area, input 448 px" in done.stderr
    entry, = read_box_file(boxes)
    assert {b.label for b in entry.boxes} == set(CLASS_NAMES)  # threshold 0: every class
    zip_path = tmp_path / "deepQ.zip"
    subprocess.run([sys.executable, str(ROOT / "tools" / "build_bundle.py"), str(zip_path),
                    "--model", str(model / "best.pt"), "--thresholds", "0"], check=True,
                   capture_output=True, cwd=ROOT, timeout=300)
    run_dir = tmp_path / "bundle"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(run_dir)
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["input_size"] == 448
    ran = subprocess.run([sys.executable, "inference.py", "--test-list", str(test_txt),
                          "--images", str(sample_dir / "images"), "--out", "out.txt",
                          "--workers", "0", "--device", "cpu"],
                         capture_output=True, text=True, cwd=run_dir, env=env, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert "input 448 px" in ran.stderr
    assert (run_dir / "out.txt").read_text() == boxes.read_text()
