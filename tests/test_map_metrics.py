"""Metrics with no box prior (pointing game, thresholded map's IoU); the --save-heatmaps file."""
import cv2
import numpy as np
import pytest

import evaluate
from chexnet import scoring
from chexnet.boxfile import read_box_file
from chexnet.images import load_stored_sized, read_xray
from chexnet.heatmap_file import SavedHeatmaps, read_heatmaps, write_heatmaps
from chexnet.nih import TruthBox
from chexnet.utils import InputError


def peak_map(row, col):
    m = np.zeros((224, 224), dtype=np.float32)
    m[row, col] = 1.0
    return m


def box_around(row, col, half=20):  # crop (row, col) -> a truth box centred there, 1024 px
    cx, cy = (col + 16.5) * 4, (row + 16.5) * 4
    return TruthBox("a.png", "Nodule", cx - half * 4, cy - half * 4, 2 * half * 4, 2 * half * 4)


def test_peak_is_x_from_columns_and_y_from_rows():
    assert scoring.map_peak_xy(peak_map(10, 200)) == ((200 + 16.5) * 4, (10 + 16.5) * 4)


def test_pointing_tolerance_is_15_crop_pixels():
    t = box_around(100, 100, half=5)  # box spans crop columns 95.5..105.5 (pixel centres)
    x, y = scoring.map_peak_xy(peak_map(100, 105 + 15))
    assert scoring.points_at(x, y, [t])
    x, y = scoring.map_peak_xy(peak_map(100, 105 + 17))
    assert not scoring.points_at(x, y, [t])
    x, y = scoring.map_peak_xy(peak_map(105 + 17, 100))  # swapped axes miss too
    assert not scoring.points_at(x, y, [t])


def test_map_iou_of_an_exact_map_is_one_and_of_a_disjoint_one_zero():
    m = np.zeros((224, 224), dtype=np.float32)
    m[40:80, 100:150] = 1.0  # rows y 40..80, columns x 100..150 of the crop
    exact = TruthBox("a.png", "Mass", (100 + 16) * 4, (40 + 16) * 4, 50 * 4, 40 * 4)
    assert scoring.map_mask_iou(m, [exact]) == pytest.approx(1.0)
    swapped = TruthBox("a.png", "Mass", (40 + 16) * 4, (100 + 16) * 4, 40 * 4, 50 * 4)
    assert scoring.map_mask_iou(m, [swapped]) == 0.0
    assert scoring.map_mask_iou(np.zeros((224, 224)), [exact]) == 0.0


def test_score_maps_counts_a_missing_map_as_a_miss():
    truth = {"a.png": [box_around(50, 60)], "b.png": [box_around(150, 30)]}
    maps = {("a.png", "Nodule"): peak_map(50, 60)}
    report = scoring.score_maps(maps, truth)["classes"]
    assert report["Nodule"]["pairs"] == 2 and report["Nodule"]["with_map"] == 1
    assert report["Nodule"]["pointing"] == 0.5 and report["Nodule"]["pointing_with_map"] == 1.0
    assert report["overall"]["pairs"] == 2 and report["Mass"]["pointing"] is None


def test_heatmap_file_round_trip_without_pickle(tmp_path):
    maps = np.random.default_rng(0).random((3, 224, 224)).astype(np.float32)
    saved = SavedHeatmaps(["im/a.png", "im/a.png", "im/b.png"], ["Mass", "Nodule", "Mass"],
                          np.array([0.9, 0.8, 0.7]), maps, "layercam", "features.x",
                          [(1024, 1024), (1024, 1024), (2048, 2500)])
    path = tmp_path / "hm.npz"
    write_heatmaps(path, saved)
    with np.load(path, allow_pickle=False) as data:
        assert data["heatmap"].dtype == np.float32 and data["size"].tolist()[2] == [2048, 2500]
        older = {k: data[k] for k in data.files if k != "size"}
    back = read_heatmaps(path)
    assert back.images == saved.images and back.labels == saved.labels and back.cam == "layercam"
    assert back.sizes == saved.sizes
    np.testing.assert_array_equal(back.maps, maps)
    np.savez(tmp_path / "older.npz", **older)  # written before sizes were kept: the NIH frame
    assert read_heatmaps(tmp_path / "older.npz").sizes == [(1024, 1024)] * 3
    np.savez(tmp_path / "bad_size.npz", **older, size=np.array([[1024, 1024]] * 2))
    with pytest.raises(InputError, match="size must be .3, 2. whole"):
        read_heatmaps(tmp_path / "bad_size.npz")
    np.savez(tmp_path / "bad.npz", heatmap=maps)
    with pytest.raises(InputError, match="not a --save-heatmaps file"):
        read_heatmaps(tmp_path / "bad.npz")


def test_evaluate_scores_heatmaps(tmp_path):
    (tmp_path / "boxes.txt").write_text("im/a.png 0\nim/b.png 0\n")
    (tmp_path / "truth.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                                        "a.png,Nodule,200,200,100,100\n"
                                        "b.png,Mass,300,300,200,200\n")
    heatmap = peak_map(46 - 16, 46 - 16)  # (46 + 0.5) * 4 = 186: within 60 px of the box at 200
    write_heatmaps(tmp_path / "hm.npz", SavedHeatmaps(["im/a.png"], ["Nodule"], [0.9],
                                                      heatmap[None], "gradcam", "l",
                                                      [(1024, 1024)]))
    args = evaluate.get_args_parser().parse_args([str(tmp_path / "boxes.txt"),
                                                  str(tmp_path / "truth.csv"),
                                                  "--heatmaps", str(tmp_path / "hm.npz")])
    maps = evaluate.main(args)["maps"]["classes"]
    assert maps["Nodule"]["pointing"] == 1.0 and maps["Mass"]["pointing"] == 0.0
    assert maps["overall"]["pairs"] == 2


def test_heatmaps_of_a_non_1024_image_score_in_its_own_pixels(sample_dir, tmp_path,
                                                              random_checkpoint):
    """A 2048x2500 PNG and a 1024 one with the same 256 stored pixels give the same maps; with the
    same true boxes, each in its own image's pixels, evaluate --heatmaps scores them alike."""
    import denseNet_localization
    folder, images = tmp_path / "model", tmp_path / "images"
    random_checkpoint(folder, None, thresholds_npy=None, epoch=1, thresholds=[0.0] * 8,
                      resize="area")
    images.mkdir()
    big = cv2.resize(read_xray(sample_dir / "images" / "00008386_000.png"), (2048, 2500),
                     interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(images / "big.png"), big)
    stored = load_stored_sized(images / "big.png", "area")[0]  # nearest x4: area gives it back
    cv2.imwrite(str(images / "same.png"),
                cv2.resize(stored, (1024, 1024), interpolation=cv2.INTER_NEAREST))
    out, npz = tmp_path / "boxes.txt", tmp_path / "hm.npz"
    denseNet_localization.main(denseNet_localization.get_args_parser().parse_args(
        [str(images), "--model", str(folder / "best.pt"), "--thresholds", "0", "--out", str(out),
         "--save-heatmaps", str(npz), "--workers", "0", "--device", "cpu"]))
    assert read_heatmaps(npz).sizes[-1] == (1024, 1024) and (2048, 2500) in read_heatmaps(npz).sizes
    # truth: the 1024 image's Nodule boxes, in each image's own pixels (the box file's frames)
    rows = ["Image Index,Finding Label,Bbox [x,y,w,h],,,"]
    for entry in read_box_file(out):
        name = entry.image_path.rsplit("/", 1)[-1]
        nodule = [b for b in entry.boxes if b.label == "Nodule"][1:]  # its peaks, not the average
        rows += [f"{name},Nodule,{b.x},{b.y},{b.w},{b.h}" for b in nodule]
    (tmp_path / "truth.csv").write_text("\n".join(rows) + "\n")
    report = {}
    for name in ("big.png", "same.png"):
        (tmp_path / "one.txt").write_text(f"images/{name} 0\n")
        report[name] = evaluate.main(evaluate.get_args_parser().parse_args(
            [str(tmp_path / "one.txt"), str(tmp_path / "truth.csv"), "--heatmaps", str(npz)])
        )["maps"]["classes"]["Nodule"]
    assert report["same.png"]["pointing"] == 1.0 and report["same.png"]["map_iou"] > 0.01
    # rel 0.1: the box file's 0.1 px rounding can move a scaled truth edge by one 256-grid cell
    assert report["big.png"] == pytest.approx(report["same.png"], rel=0.1), report
