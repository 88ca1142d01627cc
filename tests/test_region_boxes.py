"""Box rules whose extent comes from the map alone: percentile and Otsu regions, their grids."""
import numpy as np
import pytest

from chexnet import boxes
from chexnet.calibration import PARAM_GRIDS


def blob(row, col, sigma=6.0):
    r, c = np.mgrid[0:224, 0:224]
    return np.exp(-((r - row) ** 2 + (c - col) ** 2) / (2 * sigma ** 2))


def test_every_rule_has_a_calibration_grid_starting_at_its_default():
    for name, method in boxes.METHODS.items():
        assert PARAM_GRIDS[name][0] == method.default
    assert set(boxes.SIZE_FREE) <= set(boxes.METHODS)


def test_otsu_level_splits_two_populations():
    data = np.concatenate([np.full(900, 0.1), np.full(100, 0.8)])
    assert 0.1 < boxes.otsu_level(data) <= 0.8


@pytest.mark.parametrize("name", ["percentile", "otsu"])
def test_box_size_comes_from_the_map_not_the_table(name):
    heatmap = blob(60, 150)  # row 60 (y), column 150 (x); a disc about 2 sigma across
    (a,) = boxes.METHODS[name](heatmap, (999.0, 999.0))  # the table's size is ignored
    (b,) = boxes.METHODS[name](heatmap, (1.0, 1.0))
    assert a == b
    x, y, w, h = a
    assert abs((x + w / 2) - (150 + 16.5) * 4) < 8 and abs((y + h / 2) - (60 + 16.5) * 4) < 8
    assert 20 < w < 300 and abs(w - h) < 1e-9


def test_percentile_area_follows_the_percentile():
    heatmap = blob(100, 100, sigma=30)
    areas = []
    for p in (80.0, 95.0, 99.0):
        (left, top, right, bottom), = boxes.percentile_rects(heatmap, p)
        areas.append((right - left) * (bottom - top))
    assert areas[0] > areas[1] > areas[2]
    assert abs(areas[1] - 0.05 * 224 * 224) < 0.35 * 0.05 * 224 * 224  # a disc inside its square


def test_two_blobs_give_two_regions_strongest_first():
    heatmap = np.maximum(blob(50, 50), 0.7 * blob(170, 170))
    rects = boxes.otsu_rects(heatmap)
    assert len(rects) == 2 and rects[0][0] < 100 < rects[1][0]


@pytest.mark.parametrize("name", ["percentile", "otsu"])
def test_flat_and_bad_maps(name):
    assert boxes.METHODS[name](np.zeros((224, 224)), (10.0, 10.0)) == []
    assert boxes.METHODS[name](np.full((224, 224), 0.3), (10.0, 10.0)) == []
    with pytest.raises(ValueError):
        boxes.METHODS[name](np.full((224, 224), 2.0), (10.0, 10.0))


def test_bad_parameters():
    with pytest.raises(ValueError):
        boxes.percentile_rects(blob(10, 10), 100.0)
    with pytest.raises(ValueError):
        boxes.otsu_rects(blob(10, 10), 0.0)


def test_sparse_map_never_boxes_its_zero_background():
    heatmap = np.zeros((224, 224))
    heatmap[100:104, 30:34] = 1.0  # 16 of 50176 pixels: the 95th percentile is 0
    assert boxes.percentile_rects(heatmap, 95.0) == [(30, 100, 34, 104)]
