"""Heatmap -> boxes: rows are y, columns are x, and the crop maps back to 1024 as (coord + 16) * 4."""
import numpy as np
import pytest

from chexnet import boxes
from chexnet.constants import AVERAGE_BOXES, CLASS_NAMES


def gaussian(row: float, col: float, sigma: float = 8.0) -> np.ndarray:
    rr, cc = np.mgrid[0:224, 0:224]
    return np.exp(-((rr - row) ** 2 + (cc - col) ** 2) / (2 * sigma ** 2)).astype(np.float32)


@pytest.mark.parametrize("row, col", [(60, 150), (170, 40), (100.5, 30)])
def test_single_peak_gives_box_centred_on_it_in_1024_space(row, col):
    size = (72.0, 100.0)  # 18 x 25 crop pixels: no clipping at these positions
    (box,) = boxes.METHODS["peaks"](gaussian(row, col), size)
    x, y, w, h = box
    assert (w, h) == (72.0, 100.0)
    # The integer box maths may shift the centre by up to one crop pixel (4 px at 1024) on each axis.
    assert abs((x + w / 2) - (col + 16) * 4) <= 4
    assert abs((y + h / 2) - (row + 16) * 4) <= 4


def test_peak_centre_is_row_col():
    (centre,) = boxes.find_peaks(gaussian(60, 150))
    assert centre == pytest.approx((60, 150), abs=0.01)


def test_box_maths_matches_the_original_integers():
    # Mass: 168.7 x 189.8 px -> int(42.175) = 42 x int(47.45) = 47 crop pixels.
    # centre (row 100.7, col 50.2): top = int(100.7 - 23.5) = 77, left = int(50.2 - 21) = 29.
    assert boxes.box_at((100.7, 50.2), AVERAGE_BOXES[4][2:]) == ((29 + 16) * 4, (77 + 16) * 4, 42 * 4, 47 * 4)


def test_boxes_are_clipped_to_the_crop():
    # Cardiomegaly (119 x 95 crop px) at the bottom-right corner: clipped on the right and bottom.
    x, y, w, h = boxes.box_at((220.0, 215.0), AVERAGE_BOXES[1][2:])
    assert (x, y) == ((int(215 - 119 / 2) + 16) * 4, (int(220 - 95 / 2) + 16) * 4)
    assert x + w == (224 + 16) * 4 and y + h == (224 + 16) * 4
    # ...and at the top-left corner: clipped at 0 (16 * 4 = 64 in the original).
    assert boxes.box_at((3.0, 2.0), AVERAGE_BOXES[1][2:]) == (64.0, 64.0, 119 * 4, 95 * 4)


def test_two_separate_peaks_give_two_boxes_weak_one_dropped():
    heatmap = np.maximum(gaussian(50, 50), gaussian(170, 180))
    found = boxes.find_peaks(heatmap)
    assert sorted((round(r), round(c)) for r, c in found) == [(50, 50), (170, 180)]
    weak = np.maximum(gaussian(50, 50), 0.8 * gaussian(170, 180))  # under 0.9 of the max: dropped
    assert [(round(r), round(c)) for r, c in boxes.find_peaks(weak)] == [(50, 50)]


def test_flat_maps_give_no_peaks():
    assert boxes.METHODS["peaks"](np.zeros((224, 224)), (100, 100)) == []
    assert boxes.METHODS["peaks"](np.full((224, 224), 0.7), (100, 100)) == []


def test_bad_heatmaps_are_errors():
    nan_map = gaussian(60, 60)
    nan_map[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        boxes.METHODS["peaks"](nan_map, (100, 100))
    with pytest.raises(ValueError, match="224"):
        boxes.METHODS["peaks"](np.zeros((7, 7)), (100, 100))


def test_class_boxes_average_box_first_then_peaks():
    table = np.array(AVERAGE_BOXES)
    lines = boxes.class_boxes(5, gaussian(60, 150), table)
    assert [b.label for b in lines] == ["Nodule", "Nodule"]
    assert (lines[0].x, lines[0].y, lines[0].w, lines[0].h) == AVERAGE_BOXES[5]
    assert lines[0].line() == "Nodule 502.4 458.7 71.9 70.4"
    # Nodule 71.9 x 70.4 -> 17 x 17 crop pixels, centred on (row 60, col 150).
    assert (lines[1].x, lines[1].y, lines[1].w, lines[1].h) == ((141 + 16) * 4, (51 + 16) * 4, 68, 68)
    assert boxes.class_boxes(0, np.zeros((224, 224)), table)[0].label == CLASS_NAMES[0]
    with pytest.raises(ValueError, match="peaks"):
        boxes.class_boxes(0, np.zeros((224, 224)), table, method="nope")
