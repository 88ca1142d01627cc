"""The scripts' pictures: evaluate.py --plots and denseNet_localization.py --plots write valid
PNGs of the stated sizes, and a true box lands on its pixels. (train.py's: tests/test_train.py.)"""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import denseNet_localization
import evaluate
from model import ARCH, FORMAT, VERSION, build_model, save_checkpoint
from chexnet import drawing, evaluation_figures, localization_figures, training_figures
from chexnet.constants import CLASS_NAMES
from chexnet.nih import read_bbox_list
from chexnet import scoring

# both have a true box in sample/BBox_List_2017.csv
NAMES = ["00013125_000.png", "00008386_000.png"]


def shape(path) -> tuple[int, ...]:
    picture = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert picture is not None, f"{path} is not a readable image"
    return picture.shape


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # oversubscribed threads spin on a shared 2-core machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random-init best.pt whose thresholds are all 0: every class active, 8 heatmaps per
    image."""
    torch.manual_seed(0)
    net = build_model(len(CLASS_NAMES), weights="none")
    path = tmp_path_factory.mktemp("model") / "best.pt"
    save_checkpoint(path, {
        "format": FORMAT, "version": VERSION, "arch": ARCH,
        "model": net.state_dict(), "class_names": list(CLASS_NAMES), "input_size": 224, "epoch": 1,
        "optimizer": None, "metrics": {}, "args": {}, "thresholds": [0.0] * 8})
    return path


# --truth: red boxes only, not sizes
@pytest.mark.parametrize("truth_option", ["--bbox-list", "--truth"])
def test_localization_plots(checkpoint, sample_dir, tmp_path, truth_option):
    test_txt = tmp_path / "test.txt"
    test_txt.write_text("\n".join(NAMES) + "\n")
    pictures = tmp_path / "pictures"
    bbox_list = sample_dir / "BBox_List_2017.csv"
    args = denseNet_localization.get_args_parser().parse_args(
        [str(test_txt), str(sample_dir / "images"), "--model", str(checkpoint),
         truth_option, str(bbox_list),
         "--out", str(tmp_path / "boxes.txt"), "--workers", "0", "--plots", str(pictures),
         "--plot-images", "1", "--sheet-cell", "64"])
    denseNet_localization.main(args)
    stem = Path(NAMES[0]).stem
    expected = {f"{stem}_boxes.png", f"{stem}_probs.png", "contact_sheet.png",
                *(f"{stem}_heatmap_{name}.png" for name in CLASS_NAMES)}
    assert {p.name for p in pictures.iterdir()} == expected  # only the first image: --plot-images 1
    assert shape(pictures / f"{stem}_boxes.png") == (512, 512, 3)
    assert shape(pictures / f"{stem}_probs.png") == (380, 600, 3)
    assert shape(pictures / f"{stem}_heatmap_Mass.png") == (512, 512 + drawing.COLORBAR_PX, 3)
    # Both images in every class row (all classes active), 64 px cells.
    assert shape(pictures / "contact_sheet.png") == (
        8 * 64, localization_figures.SHEET_LABEL_PX + 2 * 64 + drawing.COLORBAR_PX, 3)
    # The true Cardiomegaly box of the first image, red, on its own pixels (512 / 1024 = 0.5).
    truth = next(b for b in read_bbox_list(bbox_list) if b.image == NAMES[0])
    rgb = cv2.imread(str(pictures / f"{stem}_boxes.png"), cv2.IMREAD_COLOR)[:, :, ::-1].astype(int)
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)
    rows, cols = np.nonzero(red)
    drawn = (cols.min(), rows.min(), cols.max(), rows.max())
    named = (truth.x / 2, truth.y / 2, (truth.x + truth.w) / 2, (truth.y + truth.h) / 2)
    assert np.allclose(drawn, named, atol=3), (drawn, named)


def test_localization_plots_refuse_a_negative_count(checkpoint, sample_dir, tmp_path):
    test_txt = tmp_path / "test.txt"
    test_txt.write_text(NAMES[0] + "\n")
    args = denseNet_localization.get_args_parser().parse_args(
        [str(test_txt), str(sample_dir / "images"), "--model", str(checkpoint),
         "--plots", str(tmp_path), "--plot-images", "-1", "--out", str(tmp_path / "boxes.txt")])
    with pytest.raises(denseNet_localization.InputError, match="--plot-images must be >= 0"):
        denseNet_localization.main(args)


def _box_file(path: Path, sample_dir: Path) -> Path:
    """Two images' boxes: one exactly on the true Cardiomegaly box, one far from the true Nodule."""
    truth = {b.image: b for b in read_bbox_list(sample_dir / "BBox_List_2017.csv")}
    t = truth[NAMES[0]]
    path.write_text(f"../images/{NAMES[0]} 1\n"
                    f"Cardiomegaly {t.x:.1f} {t.y:.1f} {t.w:.1f} {t.h:.1f}\n"
                    f"../images/{NAMES[1]} 1\nNodule 10.0 10.0 50.0 50.0\n")
    return path


@pytest.mark.parametrize("where", ["--plots", "--out"])
def test_evaluation_figures(sample_dir, tmp_path, where):
    box_txt = _box_file(tmp_path / "boxes.txt", sample_dir)
    folder = tmp_path / "figures"
    evaluate.main(evaluate.get_args_parser().parse_args(
        [str(box_txt), str(sample_dir / "BBox_List_2017.csv"), where, str(folder)]))
    rows = len(scoring.WANG_THRESHOLDS)
    for name in ("localization_iobb.png", "localization_iou.png"):
        assert shape(folder / name) == (260 * rows, 1200, 3)
    if where == "--out":
        assert json.loads((folder / "evaluation.json").read_text())["classes"]["Cardiomegaly"]
    else:
        assert not (folder / "evaluation.json").exists()
