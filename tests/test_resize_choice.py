"""The resize choice travels: preprocessing.py --resize area -> meta.json -> train.py's checkpoints
-> denseNet_localization.py, which resizes as the model's training images were (issue 11), on the
sample's real PNGs with a tiny model (1 epoch, 4 images, random weights)."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import denseNet_localization
import train
from chexnet.images import load_stored
from chexnet.nih import read_image_list
from model import load_checkpoint
from test_robustness import script, write_lists

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample"
TEST_IMAGE = "00009745_000.png"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: oversubscribed threads spin
    yield
    torch.set_num_threads(threads)


def preprocess(tmp: Path, out: str, *resize: str) -> Path:
    lists = tmp / "lists"
    lists.mkdir(exist_ok=True)
    train_txt, valid_txt = write_lists(lists, read_image_list(SAMPLE / "train.txt")[:4],
                                       read_image_list(SAMPLE / "valid.txt")[:2])
    result = script("preprocessing.py", SAMPLE / "images", SAMPLE / "Data_Entry_2017.csv",
                    SAMPLE / "BBox_List_2017.csv", train_txt, valid_txt, tmp / out,
                    "--workers", "1", "--quiet", *resize)
    assert result.returncode == 0, result.stderr
    return tmp / out


def train_args(data: Path, out: Path, *extra: str):
    return train.get_args_parser().parse_args(
        [str(data), "--out", str(out), "--weights", "none", "--epochs", "1", "--repeats", "1",
         "--batch-size", "2", "--workers", "0", "--device", "cpu", "--keep-no-finding",
         "--no-plots", *extra])


@pytest.fixture(scope="module")
def area_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resize")
    data = preprocess(tmp, "prep_area", "--resize", "area")
    train.main(train_args(data, tmp / "model"))
    return tmp, data


def test_meta_and_checkpoints_record_area(area_run):
    tmp, data = area_run
    meta = json.loads((data / "meta.json").read_text())
    assert meta["resize"] == "area"
    names = meta["train_images"]
    stored = np.load(data / "train_X.npy")
    assert np.array_equal(stored[0], load_stored(SAMPLE / "images" / names[0], "area"))
    assert not np.array_equal(stored[0], load_stored(SAMPLE / "images" / names[0], "original"))
    for name in ("best.pt", "last.pt"):
        assert load_checkpoint(tmp / "model" / name)["resize"] == "area"


def localize_probs(tmp: Path, out: str, *extra: str) -> np.ndarray:
    (tmp / "test.txt").write_text(TEST_IMAGE + "\n")
    denseNet_localization.main(denseNet_localization.get_args_parser().parse_args(
        [str(tmp / "test.txt"), str(SAMPLE / "images"), "--model", str(tmp / "model" / "best.pt"),
         "--out", str(tmp / f"{out}.txt"), "--probs", str(tmp / f"{out}.csv"), "--workers", "0",
         "--device", "cpu", "--thresholds", "0.5", *extra]))
    with open(tmp / f"{out}.csv", newline="") as f:
        row = next(csv.DictReader(f))
    return np.array([float(v) for k, v in row.items() if k != "image"])


def test_localization_resizes_as_the_checkpoint_says(area_run, capsys):
    tmp, _ = area_run
    default = localize_probs(tmp, "default")
    err = capsys.readouterr().err
    assert "resize area" in err and "warning" not in err
    explicit = localize_probs(tmp, "area", "--resize", "area")
    assert "warning" not in capsys.readouterr().err
    np.testing.assert_array_equal(default, explicit)
    other = localize_probs(tmp, "original", "--resize", "original")  # the user overrides it
    err = capsys.readouterr().err
    assert (f"warning: --resize original, but {tmp / 'model' / 'best.pt'} was trained on images "
            f"resized with 'area'") in err
    assert np.abs(other - default).max() > 1e-6  # other pixels: other probabilities


def test_resume_on_a_folder_resized_otherwise_warns(area_run, capsys):
    tmp, _ = area_run
    original = preprocess(tmp, "prep_original")  # the default resize: original
    assert json.loads((original / "meta.json").read_text())["resize"] == "original"
    train.main(train_args(original, tmp / "model", "--epochs", "2", "--resume"))
    err = capsys.readouterr().err
    assert (f"warning: {original}: resized with 'original', but {tmp / 'model' / 'last.pt'} was "
            f"trained on images resized with 'area'") in err
