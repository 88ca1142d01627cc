"""calibrate.py: the grid search finds a known best size, heatmaps.npz round-trips without pickle,
and end to end on the real sample its box_sizes.json changes what denseNet_localization.py
writes."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chexnet import boxes
import calibrate
import evaluate
from chexnet import localize
from chexnet.boxfile import read_box_file
from chexnet.utils import InputError
from chexnet.constants import AVERAGE_BOXES, CLASS_NAMES, DEFAULT_TARGET_LAYER
from chexnet.nih import TruthBox
from chexnet import calibrated, model_dir
from chexnet import calibration, scoring

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample"
MASS = CLASS_NAMES.index("Mass")


def blob(row: float, col: float, sigma: float = 8.0) -> np.ndarray:
    rr, cc = np.mgrid[0:224, 0:224]
    return np.exp(-((rr - row) ** 2 + (cc - col) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def truth_at(image: str, xywh) -> dict:
    return {image: [TruthBox(image, "Mass", *xywh)]}


def test_search_finds_the_known_size_width_and_height_apart():
    # One peak at (row 30, col 35); the true box is the peak's box at 1.5 x the average width and
    # 0.75 x its height: a search that swapped rows and columns would pick 0.75 x 1.5.
    base = np.array(AVERAGE_BOXES[MASS])
    truth_xywh = boxes.box_at((30, 35), (base[2] * 1.5, base[3] * 0.75))
    choice = calibration.search_class(MASS, {"a.png": blob(30, 35)}, truth_at("a.png", truth_xywh),
                                      base, "peaks")
    assert (choice.scale_w, choice.scale_h) == (1.5, 0.75)
    # one blob: every keep fraction ties, the default is kept
    assert choice.param == boxes.METHODS["peaks"].default
    # the average box (first line) misses, the heatmap box is exact: half the lines above both cuts
    assert choice.score == 0.5 and choice.mean_iou == pytest.approx(0.5)


def test_search_finds_the_known_threshold_fraction():
    heatmap = blob(100, 120, sigma=12)
    truth_xywh = boxes.METHODS["threshold"](heatmap, (1, 1), 0.3)[0]
    choice = calibration.search_class(MASS, {"a.png": heatmap}, truth_at("a.png", truth_xywh),
                                    np.array(AVERAGE_BOXES[MASS]), "threshold")
    assert choice.param == 0.3


def test_search_scores_the_lines_localization_writes():
    """The search's fast path (locate once, place per size) scores what boxes.class_boxes writes."""
    heatmaps = {"a.png": np.maximum(blob(60, 60), 0.95 * blob(150, 170)), "b.png": blob(100, 100)}
    truth = {"a.png": [TruthBox("a.png", "Mass", 300, 250, 200, 180)], "b.png": []}
    for method in boxes.METHODS:
        choice = calibration.search_class(MASS, heatmaps, truth, np.array(AVERAGE_BOXES[MASS]),
                                          method)
        default = calibration.Choice(1, 1, 0.5, None, None)
        table = calibration.tuned_table([choice if k == MASS else default
                                         for k in range(len(CLASS_NAMES))])
        preds = {n: boxes.class_boxes(MASS, m, table, method, choice.param, choice.rect_scale)
                 for n, m in heatmaps.items()}
        got = scoring.score_boxes(preds, truth)["classes"]["Mass"]["original"]
        assert (got["score"], got["mean_iou"]) == pytest.approx((choice.score, choice.mean_iou))


def test_scaled_row_keeps_the_centre():
    x, y, w, h = calibration.scaled_row(np.array([100.0, 200.0, 40.0, 60.0]), 1.5, 0.5)
    assert (x + w / 2, y + h / 2, w, h) == (120.0, 230.0, 60.0, 30.0)
    assert calibration.scaled_row(np.array(AVERAGE_BOXES[0]), 1.0, 1.0).tolist() == list(
        AVERAGE_BOXES[0])


def test_heatmaps_round_trip_without_pickle(tmp_path):
    rng = np.random.default_rng(0)
    hm = calibration.Heatmaps(["x.png", "y.png"], rng.random((2, 8)).astype(np.float32),
                            rng.random((2, 8, 224, 224)).astype(np.float32))
    path = tmp_path / "heatmaps.npz"
    calibration.save_heatmaps(path, hm)
    with np.load(path, allow_pickle=False) as data:
        assert data["y.png/Mass"].dtype == np.float32  # as computed: float16 would make ties
        assert np.array_equal(data["y.png/Mass"], hm.maps[1, MASS])
    back = calibration.load_heatmaps(path)
    assert back.images == hm.images and np.array_equal(back.maps, hm.maps)
    assert np.array_equal(back.probs, hm.probs) and (back.cam, back.layer) == (None, None)
    made = calibration.Heatmaps(hm.images, hm.probs, hm.maps, "layercam", "features.denseblock3")
    calibration.save_heatmaps(path, made)  # the maps' CAM and layer travel with them
    back = calibration.load_heatmaps(path)
    assert (back.cam, back.layer) == ("layercam", "features.denseblock3") and back.images == hm.images
    with np.load(path) as data:
        partial = {k: data[k] for k in data.files if k != "x.png/Nodule"}
    np.savez(tmp_path / "partial.npz", **partial)
    with pytest.raises(InputError, match="x.png/Nodule"):
        calibration.load_heatmaps(tmp_path / "partial.npz")


def test_holdout_split():
    tune, hold = calibration.split_rows(10, 0.3, seed=1)
    assert len(hold) == 3 and sorted(tune + hold) == list(range(10))
    assert calibration.split_rows(10, 0.0, 0) == (list(range(10)), [])
    with pytest.raises(InputError):
        calibration.split_rows(1, 0.5, 0)


# ---------------------------------------------------------------- end to end on the real sample

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, random_checkpoint) -> Path:
    """preprocessing.py on sample/, and a random-init model/best.pt with zero thresholds (all
    active)."""
    root = tmp_path_factory.mktemp("calibrate")
    done = subprocess.run([sys.executable, str(ROOT / "preprocessing.py"), SAMPLE / "images",
                           SAMPLE / "Data_Entry_2017.csv", SAMPLE / "BBox_List_2017.csv",
                           SAMPLE / "train.txt", SAMPLE / "valid.txt", root / "prep",
                           "--workers", "1", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    random_checkpoint(root / "model", epoch=1, resize="area")
    return root


def _script(name, *args, cwd):
    done = subprocess.run([sys.executable, str(ROOT / name), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def test_end_to_end_box_sizes_json_drives_localization(run_dir):
    model = run_dir / "model" / "best.pt"
    done = _script("tools/calibrate.py", run_dir / "prep", "--model", model, "--device", "cpu",
                   cwd=run_dir)
    assert "6 validation images with true boxes" in done.stderr
    assert "tuned on these same images" in done.stdout  # the optimism warning
    assert "Effusion" in done.stdout
    assert "no true box in the tuning images: defaults kept" in done.stdout
    sizes_path = run_dir / "model" / "box_sizes.json"
    table = calibrated.read_box_sizes(sizes_path)
    params = calibrated.read_box_params(sizes_path, "peaks")
    record = json.loads(sizes_path.read_text())["calibration"]
    assert record["images"] == 6 and set(record["tuning"]) == set(CLASS_NAMES) | {"overall"}
    assert (record["cam"], record["layer"]) == ("gradcam", DEFAULT_TARGET_LAYER)  # the maps it tuned on
    changed = [k for k in range(8) if not np.allclose(table[k], AVERAGE_BOXES[k], atol=1e-3)]
    assert changed, "the search kept every size: the test would prove nothing"
    assert record["choices"]["Effusion"] == {
        "scale_w": 1.0, "scale_h": 1.0, "keep_fraction": 0.9,
        "note": "no true box in the tuning images: defaults kept"}
    assert (run_dir / "model" / "heatmaps.npz").is_file()

    after = _script("denseNet_localization.py", SAMPLE / "valid.txt", SAMPLE / "images",
                    "--model", model, "--out", run_dir / "after.txt", "--workers", "0", cwd=run_dir)
    assert f"box sizes from {sizes_path}" in after.stderr
    assert f"parameters from {sizes_path}" in after.stderr
    assert f"maps gradcam at {DEFAULT_TARGET_LAYER} (from {sizes_path})" in after.stderr
    for entry in read_box_file(run_dir / "after.txt"):
        for k, name in enumerate(CLASS_NAMES):
            lines = [b for b in entry.boxes if b.label == name]
            # written '%.1f'
            assert (lines[0].w, lines[0].h) == pytest.approx(tuple(table[k, 2:]), abs=0.051)
            # peaks' boxes: the tuned size in whole crop pixels, or clipped at the crop
            for b in lines[1:]:
                assert b.w <= int(table[k, 2] / 4) * 4 and b.h <= int(table[k, 3] / 4) * 4
                if 64 < b.x and b.x + b.w < 960:
                    assert b.w == int(table[k, 2] / 4) * 4
    # a tuned class: its opening line is no longer the table's size (test_localization's)
    k = changed[0]
    firsts = [next(b for b in e.boxes if b.label == CLASS_NAMES[k])
              for e in read_box_file(run_dir / "after.txt")]
    assert len(firsts) == 8
    assert all((b.w, b.h) != pytest.approx(AVERAGE_BOXES[k][2:], abs=0.051) for b in firsts)

    # Re-tuning from the saved heatmaps, without the network, gives the same file.
    again = run_dir / "again"
    calibrate.main(calibrate.get_args_parser().parse_args(
        [str(run_dir / "prep"), "--model", str(model),
         "--heatmaps", str(run_dir / "model" / "heatmaps.npz"), "--out", str(again)]))
    assert json.loads((again / "box_sizes.json").read_text()) == json.loads(sizes_path.read_text())
    assert not (again / "heatmaps.npz").exists()
    with pytest.raises(InputError, match="made with 'gradcam', not --cam 'layercam'"):
        calibrate.main(calibrate.get_args_parser().parse_args(
            [str(run_dir / "prep"), "--model", str(model), "--cam", "layercam",
             "--heatmaps", str(run_dir / "model" / "heatmaps.npz"), "--out", str(again)]))
    assert params is not None and params.shape == (8,)


def test_end_to_end_per_class_rules_drive_localization(run_dir):
    """--method auto records a rule per class; localization draws each class with the rule and
    parameter box_sizes.json gives it, and scales the size-free rectangles by its "rect_scales"
    (here set by hand to a mix, so that a localization that used one rule for all, or ignored the
    scales, would write other lines)."""
    import shutil
    from chexnet.heatmap_file import read_heatmaps
    folder = run_dir / "per_class"
    done = _script("tools/calibrate.py", run_dir / "prep", "--model", run_dir / "model" / "best.pt",
                   "--device", "cpu", "--method", "auto", "--out", folder, cwd=run_dir)
    assert "rule, parameter" in done.stdout
    sizes_path = folder / model_dir.BOX_SIZES
    record = json.loads(sizes_path.read_text())
    assert record["method"] == "auto" and len(record["methods"]) == 8
    assert calibrated.read_box_methods(sizes_path) == tuple(
        record["calibration"]["choices"][c]["method"] for c in CLASS_NAMES)
    rules = ["threshold", "peaks", "otsu", "percentile"] * 2
    params = [0.4, 0.8, 1.2, 97.0, 0.6, 0.9, 1.0, 90.0]
    rect_scales = [0.7, 1.0, 1.25, 0.8, 1.4, 1.0, 0.6, 1.1]
    table = calibrated.read_box_sizes(sizes_path)
    calibrated.write_box_sizes(sizes_path, table, method="auto", params=np.array(params),
                              methods=rules, calibration=record["calibration"],
                              rect_scales=np.array(rect_scales))
    for name in (model_dir.BEST, model_dir.THRESHOLDS):
        shutil.copyfile(run_dir / "model" / name, folder / name)
    after = _script("denseNet_localization.py", SAMPLE / "valid.txt", SAMPLE / "images",
                    "--model", folder / model_dir.BEST, "--out", run_dir / "per_class.txt",
                    "--workers", "0", "--save-heatmaps", run_dir / "per_class.npz", cwd=run_dir)
    assert "per-class (Atelectasis threshold, Cardiomegaly peaks" in after.stderr
    assert "(with rectangle scales)" in after.stderr
    saved = read_heatmaps(run_dir / "per_class.npz")
    written = {e.image_path: e.boxes for e in read_box_file(run_dir / "per_class.txt")}
    scaled = 0  # classes whose lines the scales changed: the check below can tell
    for image, label, heatmap, size in zip(saved.images, saved.labels, saved.maps, saved.sizes):
        k = CLASS_NAMES.index(label)
        expected = [boxes.to_image(b, size)
                    for b in boxes.class_boxes(k, heatmap, table, rules[k], params[k],
                                               rect_scales[k])]
        scaled += expected != [boxes.to_image(b, size) for b in
                               boxes.class_boxes(k, heatmap, table, rules[k], params[k])]
        got = [b for b in written[image] if b.label == label]
        assert len(got) == len(expected)
        for g, e in zip(got, expected):  # the file writes '%.1f'
            assert (g.x, g.y, g.w, g.h) == pytest.approx((e.x, e.y, e.w, e.h), abs=0.051)
    assert scaled > 0
    with pytest.raises(subprocess.CalledProcessError):  # a plain model folder has no rules
        subprocess.run([sys.executable, str(ROOT / "denseNet_localization.py"),
                        SAMPLE / "valid.txt", SAMPLE / "images", "--model",
                        run_dir / "model" / "best.pt", "--method", "auto", "--out",
                        run_dir / "never.txt"], cwd=run_dir, capture_output=True, check=True)
    assert not (run_dir / "never.txt").exists()
