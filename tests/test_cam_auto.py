"""calibrate.py --cam auto (calibration.pick_cam): every candidate's maps are tuned on the
validation images, the one whose tuned boxes score best wins, and the record names them all."""
import json

import numpy as np
import pytest

import calibrate
from chexnet import calibration
from chexnet.constants import AVERAGE_BOXES, CLASS_NAMES
from chexnet.nih import TruthBox
from chexnet.utils import InputError

MASS = CLASS_NAMES.index("Mass")


def blob(row: float, col: float, sigma: float = 8.0) -> np.ndarray:
    rr, cc = np.mgrid[0:224, 0:224]
    return np.exp(-((rr - row) ** 2 + (cc - col) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def _maps(peaks: list[tuple[int, int]], cam: str, layer: str) -> calibration.Heatmaps:
    """Mass active on every image (probability 0.9 against thresholds of 0.5), its map one peak."""
    n = len(peaks)
    maps = np.zeros((n, len(CLASS_NAMES), 224, 224), np.float32)
    for i, (row, col) in enumerate(peaks):
        maps[i, MASS] = blob(row, col)
    probs = np.full((n, len(CLASS_NAMES)), 0.1, np.float32)
    probs[:, MASS] = 0.9
    return calibration.Heatmaps([f"{i}.png" for i in range(n)], probs, maps, cam, layer)


def _truth_on(peaks) -> dict:
    """A Mass box of the average size centred on each crop pixel (row, col), in the 1024 frame."""
    w, h = AVERAGE_BOXES[MASS][2], AVERAGE_BOXES[MASS][3]
    return {f"{i}.png": [TruthBox(f"{i}.png", "Mass", (col + 16) * 4 - w / 2,
                                  (row + 16) * 4 - h / 2, w, h)]
            for i, (row, col) in enumerate(peaks)}


def test_the_candidate_whose_maps_find_the_boxes_wins():
    right = [(60, 150), (150, 70)]
    wrong = [(224 - 1 - r, 224 - 1 - c) for r, c in right]  # each peak at the mirrored place
    truth = _truth_on(right)
    made = []

    def make_maps(cam, layer):
        made.append((cam, layer))
        peaks = right if cam == "layercam" else wrong
        return _maps(peaks, cam, layer or f"{cam}-default")

    candidates = [("gradcam", None), ("layercam", "features.denseblock3"), ("gradcam++", None)]
    hm, tried = calibration.pick_cam(make_maps, candidates, [0, 1], np.full(8, 0.5), truth,
                                     "peaks")
    assert made == candidates  # every candidate's maps, in order
    assert (hm.cam, hm.layer) == ("layercam", "features.denseblock3")
    assert [t["cam"] for t in tried] == ["gradcam", "layercam", "gradcam++"]
    scores = [t["score"] for t in tried]
    # the box lines open with the class's average box (a miss here), then the peak's box
    assert scores[1] > max(scores[0], scores[2]) + 0.2, scores


def test_a_tie_keeps_the_earlier_candidate():
    peaks = [(60, 150), (120, 80)]
    truth = _truth_on(peaks)
    hm, tried = calibration.pick_cam(lambda cam, layer: _maps(peaks, cam, str(layer)),
                                     [("gradcam", None), ("layercam", "x")], [0, 1],
                                     np.full(8, 0.5), truth, "peaks")
    assert tried[0]["score"] == tried[1]["score"] and hm.cam == "gradcam"


def test_the_tool_offers_auto_and_refuses_it_with_fixed_maps():
    args = calibrate.get_args_parser().parse_args(["prep", "--cam", "auto"])
    assert args.cam == "auto"
    args.heatmaps = "old.npz"
    with pytest.raises(InputError, match="drop --heatmaps and --layer"):
        calibrate.auto_cam(args, None, None, [], None, [], [], None, {})
    assert ("gradcam", None) == calibration.AUTO_CANDIDATES[0]  # the original's first: ties keep it


def test_auto_under_torchrun_picks_and_records_what_one_process_does(tmp_path, random_checkpoint):
    """Every rank computes its share of each candidate's maps in the same order; rank 0 tunes and
    writes: the same box_sizes.json and heatmaps.npz as one process, printed once."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    sample = root / "sample"
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(root / "preprocessing.py"), sample / "images",
                           sample / "Data_Entry_2017.csv", sample / "BBox_List_2017.csv",
                           sample / "train.txt", sample / "valid.txt", tmp_path / "prep",
                           "--workers", "1", "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    model = random_checkpoint(tmp_path / "model", epoch=1, resize="area")
    runs = {"one": [sys.executable],
            "two": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", "2"]}
    out = {}
    for tag, launcher in runs.items():
        out[tag] = subprocess.run([*launcher, str(root / "tools" / "calibrate.py"),
                                   str(tmp_path / "prep"), "--model", str(model), "--cam", "auto",
                                   "--batch-size", "2", "--device", "cpu", "--out",
                                   str(tmp_path / tag)], capture_output=True, text=True,
                                  timeout=600, env=env)
        assert out[tag].returncode == 0, out[tag].stderr[-2000:]
    record = json.loads((tmp_path / "one" / "box_sizes.json").read_text())
    assert [(t["cam"]) for t in record["calibration"]["auto"]] == [
        c for c, _ in calibration.AUTO_CANDIDATES]
    for name in ("box_sizes.json", "heatmaps.npz"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    assert out["two"].stderr.count("--cam auto: chose") == 1  # rank 0 alone prints
    assert "on 2 processes" in out["two"].stdout
