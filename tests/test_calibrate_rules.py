"""calibrate.py --method auto: each class gets the box rule that scores best on its validation
maps, box_sizes.json records the rules, and localization draws each class with its own."""
import json

import numpy as np
import pytest

from chexnet import boxes, calibrated, calibration, model_dir
from chexnet.constants import AVERAGE_BOXES, CLASS_NAMES
from chexnet.nih import TruthBox
from chexnet.utils import InputError

MASS = CLASS_NAMES.index("Mass")
ROWS, COLS = np.mgrid[0:224, 0:224]


def _blob(row: float, col: float, sigma: float) -> np.ndarray:
    return np.exp(-((ROWS - row) ** 2 + (COLS - col) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def _mass(image: str, xywh) -> list[TruthBox]:
    return [TruthBox(image, "Mass", *xywh)]


def test_a_peak_of_the_average_shape_chooses_peaks():
    """A broad blob, its true box the average box stretched 2 x 0.5 at the blob's centre: peaks
    places exactly that box, while a round blob's threshold regions are square."""
    base = np.array(AVERAGE_BOXES[MASS])
    truth_xywh = boxes.box_at((110, 100), (base[2] * 2.0, base[3] * 0.5))
    choice = calibration.search_rules(MASS, {"a.png": _blob(110, 100, 30)},
                                      {"a.png": _mass("a.png", truth_xywh)}, base)
    assert (choice.method, choice.scale_w, choice.scale_h) == ("peaks", 2.0, 0.5)
    threshold = calibration.search_class(MASS, {"a.png": _blob(110, 100, 30)},
                                         {"a.png": _mass("a.png", truth_xywh)}, base, "threshold")
    assert choice.score > threshold.score


def test_two_plateaus_of_two_sizes_choose_a_region_rule():
    """Two flat regions, a small and a large one, each a true box: a region rule boxes both
    exactly, while peaks gives both one size."""
    heatmap = np.zeros((224, 224), np.float32)
    heatmap[20:45, 20:45] = 1.0  # 100 x 100 px
    heatmap[80:200, 60:210] = 0.8  # 600 x 480 px
    truth = [boxes.crop_rect_to_original(20, 20, 45, 45),
             boxes.crop_rect_to_original(60, 80, 210, 200)]
    choice = calibration.search_rules(MASS, {"a.png": heatmap},
                                      {"a.png": [TruthBox("a.png", "Mass", *t) for t in truth]},
                                      np.array(AVERAGE_BOXES[MASS]))
    assert choice.method in boxes.SIZE_FREE
    peaks = calibration.search_class(MASS, {"a.png": heatmap},
                                     {"a.png": [TruthBox("a.png", "Mass", *t) for t in truth]},
                                     np.array(AVERAGE_BOXES[MASS]), "peaks")
    assert choice.score > peaks.score


def test_tune_auto_keeps_peaks_where_it_cannot_search():
    """A class with no truth or no active image keeps the original's rule and parameter."""
    maps = np.zeros((1, len(CLASS_NAMES), 224, 224), np.float32)
    maps[0, MASS] = _blob(110, 100, 30)
    hm = calibration.Heatmaps(["a.png"], np.ones((1, len(CLASS_NAMES)), np.float32), maps)
    act = np.zeros((1, len(CLASS_NAMES)), bool)
    act[0, MASS] = True
    base = AVERAGE_BOXES[MASS]
    truth = {"a.png": _mass("a.png", boxes.box_at((110, 100), (base[2] * 2.0, base[3] * 0.5)))}
    choices = calibration.tune(hm, [0], act, truth, boxes.PER_CLASS)
    assert choices[MASS].method == "peaks" and choices[MASS].score is not None
    assert all(c.method == "peaks" and c.param == boxes.METHODS["peaks"].default
               for k, c in enumerate(choices) if k != MASS)


def test_box_sizes_json_round_trips_the_rules_and_their_ranges(tmp_path):
    path = tmp_path / model_dir.BOX_SIZES
    rules = ["threshold", "peaks", "percentile", "otsu", "peaks", "threshold", "peaks", "peaks"]
    params = [0.4, 0.9, 97.0, 1.4, 0.8, 0.3, 0.9, 0.9]  # each in its own rule's range
    calibrated.write_box_sizes(path, np.array(AVERAGE_BOXES), method=boxes.PER_CLASS,
                              params=np.array(params), methods=rules)
    data = json.loads(path.read_text())
    assert data["methods"] == rules and data["parameter"][2] == "percentile"
    assert calibrated.read_box_methods(path) == tuple(rules)
    assert calibrated.read_box_params(path, boxes.PER_CLASS).tolist() == params
    assert calibrated.read_box_params(path, "peaks") is None  # tuned per class, not for peaks
    # a file of one rule: that rule for all, its parameters read in its own range (the
    # percentile's are percentages, not fractions)
    calibrated.write_box_sizes(path, np.array(AVERAGE_BOXES), method="percentile",
                              params=np.full(8, 95.0))
    assert calibrated.read_box_methods(path) == ("percentile",) * 8
    assert calibrated.read_box_params(path, "percentile").tolist() == [95.0] * 8
    data = json.loads(path.read_text())
    data["params"][0] = 1.5  # a fraction above 1 for peaks
    path.write_text(json.dumps({**data, "method": "peaks", "parameter": "keep_fraction"}))
    with pytest.raises(InputError, match=r"box_sizes.json: 'params' must be 8 numbers.*peaks"):
        calibrated.read_box_params(path, "peaks")
    path.write_text(json.dumps({**data, "method": boxes.PER_CLASS, "methods": ["peaks"] * 7}))
    with pytest.raises(InputError, match="box_sizes.json: box rules must be"):
        calibrated.read_box_methods(path)
    for methods in (None, "peaks"):  # missing, or one name where a list of 8 belongs
        path.write_text(json.dumps({**data, "method": boxes.PER_CLASS, "methods": methods}))
        with pytest.raises(InputError, match='needs "methods", a list of 8 box rules'):
            calibrated.check_box_rules(path)


def test_localization_asks_for_a_per_class_file(tmp_path):
    model = tmp_path / "best.pt"
    with pytest.raises(InputError, match="--method auto: .*there is none beside"):
        calibrated.resolve_box_methods(None, model, boxes.PER_CLASS)
    calibrated.write_box_sizes(tmp_path / model_dir.BOX_SIZES, np.array(AVERAGE_BOXES),
                              method="peaks", params=np.full(8, 0.9))
    with pytest.raises(InputError, match="was tuned for peaks"):
        calibrated.resolve_box_methods(None, model, boxes.PER_CLASS)
    with pytest.raises(InputError, match="--bbox-list replaces it"):
        calibrated.resolve_box_methods("BBox_List_2017.csv", model, boxes.PER_CLASS)
    assert calibrated.resolve_box_methods(None, model, "otsu") == ("otsu",) * 8


def test_cam_auto_with_rules_per_class_keeps_the_maps_that_localize():
    """--cam auto --method auto: each candidate's maps are tuned with a rule per class, and the
    maps whose tuned boxes score best win (here the second candidate's, whose blob sits on the
    truth; the first's sits elsewhere)."""
    base = AVERAGE_BOXES[MASS]
    truth = {"a.png": _mass("a.png", boxes.box_at((110, 100), (base[2], base[3])))}

    def maps_at(row, col):
        maps = np.zeros((1, len(CLASS_NAMES), 224, 224), np.float32)
        maps[0, MASS] = _blob(row, col, 10)
        return maps
    made = {"gradcam": maps_at(30, 200), "layercam": maps_at(110, 100)}
    hm, tried = calibration.pick_cam(
        lambda cam, layer: calibration.Heatmaps(["a.png"], np.ones((1, 8), np.float32),
                                                made[cam], cam, layer),
        [("gradcam", None), ("layercam", None)], [0], np.full(8, 0.5), truth, boxes.PER_CLASS)
    assert hm.cam == "layercam" and [t["cam"] for t in tried] == ["gradcam", "layercam"]
    assert tried[1]["score"] > tried[0]["score"]


def test_a_region_larger_than_its_box_is_scaled_down_to_it():
    """A flat region 100 x 75 crop px whose true box is its central 60 x 45: every threshold draws
    the whole region (IoU 0.36); the search's rectangle scale 0.6 draws the box itself."""
    heatmap = np.zeros((224, 224), np.float32)
    heatmap[60:135, 40:140] = 1.0
    truth = {"a.png": _mass("a.png", boxes.crop_rect_to_original(60, 75, 120, 120))}
    base = np.array(AVERAGE_BOXES[MASS])
    found = calibration.search_class(MASS, {"a.png": heatmap}, truth, base, "threshold")
    assert found.rect_scale == 0.6  # the score counts the average box's line too: below 1
    heatmap_box = boxes.class_boxes(MASS, heatmap, base[None].repeat(8, 0), "threshold",
                                    found.param, found.rect_scale)[1]
    assert (heatmap_box.x, heatmap_box.y, heatmap_box.w, heatmap_box.h) == tuple(
        (t.x, t.y, t.w, t.h) for t in truth["a.png"])[0]
    unscaled = calibration.search_class(MASS, {"a.png": heatmap}, truth, base, "threshold",
                                        rect_scales=(1.0,))
    assert unscaled.rect_scale == 1.0 and unscaled.score < found.score
    # peaks searches no rectangle scale: its sizes are the average box's (scale_w, scale_h)
    assert calibration.search_class(MASS, {"a.png": heatmap}, truth, base,
                                    "peaks").rect_scale == 1.0


def test_box_sizes_json_round_trips_the_rectangle_scales(tmp_path):
    path = tmp_path / model_dir.BOX_SIZES
    scales = [1.0, 0.6, 1.25, 1.0, 0.8, 1.4, 1.0, 0.9]
    calibrated.write_box_sizes(path, np.array(AVERAGE_BOXES), method="threshold",
                              params=np.full(8, 0.5), rect_scales=np.array(scales))
    assert calibrated.read_rect_scales(path, "threshold").tolist() == scales
    assert calibrated.read_rect_scales(path, "otsu") is None  # tuned for another rule
    calibrated.check_box_rules(path)
    # all 1: nothing written, and localization reads None (the rectangles as the map draws them)
    calibrated.write_box_sizes(path, np.array(AVERAGE_BOXES), method="threshold",
                              params=np.full(8, 0.5), rect_scales=np.ones(8))
    assert "rect_scales" not in json.loads(path.read_text())
    assert calibrated.read_rect_scales(path, "threshold") is None
    data = json.loads(path.read_text())
    for bad in ([1.0] * 7, [0.0] + [1.0] * 7, ["wide"] * 8, 1.0):
        path.write_text(json.dumps({**data, "rect_scales": bad}))
        with pytest.raises(InputError, match="box_sizes.json: 'rect_scales' must be 8 positive"):
            calibrated.check_box_rules(path)
