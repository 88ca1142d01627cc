"""The threshold box method: regions above a fraction of the map's maximum, their rectangles in 1024 px
through the same (coord + 16) * 4 mapping as the peaks method; rows are y, columns x."""
import numpy as np
import pytest

from chexnet import boxes
from chexnet.constants import AVERAGE_BOXES, CLASS_NAMES, THRESHOLD_FRACTION


def blob(row: float, col: float, sigma_row: float = 8.0, sigma_col: float = 8.0) -> np.ndarray:
    rr, cc = np.mgrid[0:224, 0:224]
    return np.exp(-((rr - row) ** 2 / (2 * sigma_row ** 2) + (cc - col) ** 2 / (2 * sigma_col ** 2)))


def test_crop_rectangle_mapping():
    assert boxes.crop_rect_to_original(0, 0, 224, 224) == (64.0, 64.0, 896.0, 896.0)
    # columns 10..30 are x, rows 100..105 are y
    assert boxes.crop_rect_to_original(10, 100, 30, 105) == ((10 + 16) * 4, (100 + 16) * 4, 80.0, 20.0)


@pytest.mark.parametrize("row, col", [(60, 150), (170, 40)])
def test_blob_gives_rectangle_around_its_place_in_1024(row, col):
    (box,) = boxes.METHODS["threshold"](blob(row, col), (100.0, 100.0))
    x, y, w, h = box
    assert x < (col + 16) * 4 < x + w and y < (row + 16) * 4 < y + h
    assert abs(x + w / 2 - (col + 16) * 4) <= 4 and abs(y + h / 2 - (row + 16) * 4) <= 4
    # at half the maximum a Gaussian spans its FWHM, 2.355 sigma = 18.8 crop pixels: 19 pixels (76 px)
    assert (w, h) == (76.0, 76.0)


def test_elongated_blob_wide_in_x_gives_a_wide_box():
    (box,) = boxes.METHODS["threshold"](blob(50, 120, sigma_row=4, sigma_col=20), (100.0, 100.0))
    x, y, w, h = box
    assert w > 3 * h  # columns are x: the long axis of the blob is the box's width
    assert abs(x + w / 2 - (120 + 16) * 4) <= 4 and abs(y + h / 2 - (50 + 16) * 4) <= 4


def test_two_regions_strongest_first_and_fraction_sets_the_extent():
    heatmap = np.maximum(0.7 * blob(40, 40), blob(180, 170))
    found = boxes.METHODS["threshold"](heatmap, (100.0, 100.0))
    assert len(found) == 2
    assert found[0][0] > found[1][0]  # the stronger blob (col 170) first
    assert len(boxes.METHODS["threshold"](heatmap, (100.0, 100.0), 0.8)) == 1  # 0.7 < 0.8: the weak one goes
    tight = boxes.METHODS["threshold"](heatmap, (1.0, 1.0), 0.9)[0]
    loose = boxes.METHODS["threshold"](heatmap, (1.0, 1.0), 0.6)[0]
    assert tight[2] < loose[2] and tight[3] < loose[3]
    assert boxes.METHODS["threshold"](heatmap, (5.0, 5.0)) == boxes.METHODS["threshold"](heatmap, (5.0, 5.0), THRESHOLD_FRACTION)


def test_regions_at_the_crop_edge_stay_inside_the_image():
    found = boxes.METHODS["threshold"](blob(0, 223, sigma_row=30, sigma_col=30), (100.0, 100.0))
    (x, y, w, h), = found
    assert x + w == (224 + 16) * 4 and y == 16 * 4 and w > 0 and h > 0
    pixel = np.zeros((224, 224))
    pixel[223, 0] = 0.3
    assert boxes.METHODS["threshold"](pixel, (100.0, 100.0)) == [(64.0, (223 + 16) * 4, 4.0, 4.0)]


def test_flat_maps_give_no_box_and_bad_input_is_an_error():
    assert boxes.METHODS["threshold"](np.zeros((224, 224)), (100, 100)) == []
    assert boxes.METHODS["threshold"](np.full((224, 224), 0.4), (100, 100)) == []
    bad = blob(60, 60)
    bad[10, 20] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        boxes.METHODS["threshold"](bad, (100, 100))
    for fraction in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            boxes.METHODS["threshold"](blob(60, 60), (100, 100), fraction)


def test_class_boxes_average_box_first_for_threshold_too_with_its_parameter():
    table = np.array(AVERAGE_BOXES)
    heatmap = np.maximum(0.7 * blob(40, 40), blob(180, 170))
    lines = boxes.class_boxes(4, heatmap, table, "threshold", 0.6)
    assert (lines[0].x, lines[0].y, lines[0].w, lines[0].h) == AVERAGE_BOXES[4]
    assert [b.label for b in lines] == [CLASS_NAMES[4]] * 3
    assert len(boxes.class_boxes(4, heatmap, table, "threshold", 0.8)) == 2


def test_peaks_keep_fraction_is_its_parameter():
    heatmap = np.maximum(blob(50, 50), 0.8 * blob(170, 180))
    assert len(boxes.METHODS["peaks"](heatmap, (80.0, 80.0))) == 1  # default 0.9 drops the 0.8 peak
    assert len(boxes.METHODS["peaks"](heatmap, (80.0, 80.0), 0.7)) == 2
    assert boxes.METHODS["peaks"].parameter == "keep_fraction"
    assert boxes.METHODS["threshold"].parameter == "fraction"


def test_a_scaled_rectangle_keeps_its_centre_and_stays_in_the_crop():
    rect = (40, 60, 140, 135)  # 100 x 75 crop px, centre (90, 97.5)
    assert boxes.scale_rect(rect, 1.0) is rect  # exactly the map's rectangle
    assert boxes.scale_rect(rect, 0.6) == (60.0, 75.0, 120.0, 120.0)
    left, top, right, bottom = boxes.scale_rect(rect, 1.4)
    assert (right - left, bottom - top) == pytest.approx((140.0, 105.0))
    assert ((left + right) / 2, (top + bottom) / 2) == pytest.approx((90.0, 97.5))
    # at the crop's edge the rectangle is clipped, never outside what the network saw
    assert boxes.scale_rect((0, 200, 50, 224), 2.0) == (0.0, 188.0, 75.0, 224.0)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="rectangle scale"):
            boxes.scale_rect(rect, bad)


def test_the_rectangle_scale_sizes_the_heatmap_boxes_of_size_free_rules_only():
    heatmap = np.zeros((224, 224))
    heatmap[60:135, 40:140] = 1.0
    table = np.array(AVERAGE_BOXES)
    mass = CLASS_NAMES.index("Mass")
    plain = boxes.class_boxes(mass, heatmap, table, "threshold")
    scaled = boxes.class_boxes(mass, heatmap, table, "threshold", rect_scale=0.6)
    assert scaled[0] == plain[0]  # the average box line is the table's either way
    assert (scaled[1].x, scaled[1].y, scaled[1].w, scaled[1].h) == (304.0, 364.0, 240.0, 180.0)
    assert (plain[1].w, plain[1].h) == (400.0, 300.0)
    # peaks' boxes take the average box's size: the rectangle scale does not apply
    assert boxes.class_boxes(mass, blob(100, 100), table, "peaks", rect_scale=0.6) == \
        boxes.class_boxes(mass, blob(100, 100), table, "peaks")
