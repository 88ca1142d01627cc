"""Property tests (hypothesis) for the box code: whatever the heatmap, every box method returns
boxes inside the 1024x1024 image with a positive size, or a ValueError that says what is wrong;
and the box file reads back exactly what was written.

Heatmaps are drawn as a kind (zeros, constant, one pixel, random, blobs, tiny/huge scale) plus
a seed, and built with numpy: a 224x224 array drawn element by element would be slow to shrink.
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from chexnet import boxes
from chexnet.boxfile import Box, ImageBoxes, format_box_file, read_box_file, write_box_file
from chexnet.utils import InputError
from chexnet.constants import AVERAGE_BOXES, CLASS_NAMES, CROP_SIZE, ORIGINAL_SIZE

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
KINDS = ("zeros", "constant", "pixel", "uniform", "blobs", "steps", "scaled")


def make_heatmap(kind: str, seed: int, value: float) -> np.ndarray:
    """float32 (224, 224) in [0, 1] of the given kind; `value` sets its level or scale."""
    rng = np.random.default_rng(seed)
    shape = (CROP_SIZE, CROP_SIZE)
    if kind == "zeros":
        return np.zeros(shape, np.float32)
    if kind == "constant":
        return np.full(shape, value, np.float32)
    if kind == "pixel":  # one hot pixel anywhere, edges and corners included
        heatmap = np.zeros(shape, np.float32)
        heatmap[rng.integers(0, CROP_SIZE), rng.integers(0, CROP_SIZE)] = max(value, 1e-6)
        return heatmap
    if kind == "uniform":
        return rng.random(shape, dtype=np.float32)
    if kind == "blobs":  # a few Gaussians of random size, the shape Grad-CAM gives, min-max scaled
        rr, cc = np.mgrid[0:CROP_SIZE, 0:CROP_SIZE]
        heatmap = np.zeros(shape)
        for _ in range(rng.integers(1, 5)):
            r, c = rng.uniform(-10, CROP_SIZE + 10, 2)
            sigma = rng.uniform(1, 60)
            heatmap = np.maximum(heatmap, rng.uniform(0.5, 1) * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * sigma ** 2)))
        return (heatmap / heatmap.max()).astype(np.float32)
    if kind == "steps":  # few distinct levels: plateaus, ties between maxima
        return (rng.integers(0, 3, shape) / 2).astype(np.float32)
    return (rng.random(shape) * value).astype(np.float32)  # "scaled": all values small (or up to 1)


heatmaps = st.builds(make_heatmap, st.sampled_from(KINDS), st.integers(0, 2 ** 32 - 1),
                     st.one_of(st.floats(0, 1), st.sampled_from([1e-30, 1e-7, 1e-3, 1.0])))
# Box sizes (w, h) in 1024 px: the original's average boxes, tiny ones (under one crop pixel), and
# ones wider than the crop.
sizes = st.one_of(st.sampled_from([tuple(b[2:]) for b in AVERAGE_BOXES]),
                  st.tuples(st.floats(0.5, 1024), st.floats(0.5, 1024)))


def assert_inside(found, label):
    for x, y, w, h in found:
        assert all(math.isfinite(v) for v in (x, y, w, h)), (label, (x, y, w, h))
        assert w > 0 and h > 0, (label, (x, y, w, h))
        assert 0 <= x and x + w <= ORIGINAL_SIZE and 0 <= y and y + h <= ORIGINAL_SIZE, (label, (x, y, w, h))


@pytest.mark.parametrize("method", sorted(boxes.METHODS))
@SETTINGS
@given(heatmap=heatmaps, size=sizes)
def test_any_heatmap_gives_boxes_inside_the_image(method, heatmap, size):
    found = boxes.METHODS[method](heatmap, size)
    assert isinstance(found, list)
    assert_inside(found, method)


@pytest.mark.parametrize("method", sorted(boxes.METHODS))
@SETTINGS
@given(heatmap=heatmaps, class_index=st.integers(0, len(CLASS_NAMES) - 1))
def test_class_boxes_open_with_the_average_box_then_boxes_inside(method, heatmap, class_index):
    table = np.array(AVERAGE_BOXES)
    lines = boxes.class_boxes(class_index, heatmap, table, method)
    assert lines[0] == Box(CLASS_NAMES[class_index], *AVERAGE_BOXES[class_index])
    assert all(b.label == CLASS_NAMES[class_index] for b in lines)
    assert_inside([(b.x, b.y, b.w, b.h) for b in lines[1:]], method)


@pytest.mark.parametrize("method", sorted(boxes.METHODS))
@SETTINGS
@given(heatmap=heatmaps, bad=st.sampled_from([np.nan, np.inf, -np.inf]),
       where=st.tuples(st.integers(0, CROP_SIZE - 1), st.integers(0, CROP_SIZE - 1)))
def test_nan_or_inf_anywhere_is_a_value_error(method, heatmap, bad, where):
    heatmap = heatmap.copy()
    heatmap[where] = bad
    with pytest.raises(ValueError, match="NaN"):
        boxes.METHODS[method](heatmap, (100.0, 100.0))


@pytest.mark.parametrize("method", sorted(boxes.METHODS))
@SETTINGS
@given(seed=st.integers(0, 2 ** 32 - 1), low=st.floats(-1e6, 1), high=st.floats(0, 1e6))
def test_values_outside_0_1_are_a_value_error(method, seed, low, high):
    """Not a min-max normalised map: a ValueError, never an IndexError or a box off the image."""
    assume(low < 0 or high > 1)
    heatmap = np.random.default_rng(seed).uniform(0, 1, (CROP_SIZE, CROP_SIZE))
    heatmap[0, 0], heatmap[-1, -1] = low, high
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        boxes.METHODS[method](heatmap, (100.0, 100.0))


@pytest.mark.parametrize("method", sorted(boxes.METHODS))
def test_negative_weights_cannot_throw_a_centre_off_the_map(method):
    """A blob whose values nearly cancel out put its centre of mass at row 422: an IndexError before."""
    heatmap = -np.random.default_rng(0).random((CROP_SIZE, CROP_SIZE))
    diamond = np.add.outer(np.abs(np.arange(CROP_SIZE) - 100), np.abs(np.arange(CROP_SIZE) - 100)) <= 5
    heatmap[100, 100] = 0
    heatmap[100, 100] = -heatmap[diamond].sum() + 0.01
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        boxes.METHODS[method](heatmap, (100.0, 100.0))


@pytest.mark.parametrize("method", sorted(boxes.METHODS))
@pytest.mark.parametrize("shape", [(224,), (223, 224), (224, 224, 1), (0, 0)])
def test_wrong_shape_is_a_value_error(method, shape):
    with pytest.raises(ValueError, match="224"):
        boxes.METHODS[method](np.zeros(shape), (100.0, 100.0))


# ---------------------------------------------------------------- the box file

coordinate = st.floats(-2048, 2048, allow_nan=False).map(lambda v: round(v, 1))
box = st.builds(Box, st.sampled_from(CLASS_NAMES + ("Infiltrate",)), coordinate, coordinate,
                coordinate.map(abs), coordinate.map(abs))
image_path = st.from_regex(r"[A-Za-z0-9_./-]{1,30}\.png", fullmatch=True).filter(lambda p: not p.strip("./") == "")
entries = st.lists(st.builds(ImageBoxes, image_path, st.lists(box, max_size=12)), max_size=8)


@SETTINGS
@given(entries=entries)
def test_box_file_round_trip(tmp_path, entries):
    path = tmp_path / "bounding_box.txt"
    write_box_file(path, entries)
    assert read_box_file(path) == entries
    assert path.read_text() == format_box_file(entries)
    assert [p.name for p in tmp_path.iterdir()] == ["bounding_box.txt"]  # no temporary left


@SETTINGS
@given(entries=entries.filter(lambda e: any(entry.boxes for entry in e)), data=st.data())
def test_a_count_that_does_not_match_its_lines_is_an_input_error_naming_the_line(tmp_path, entries, data):
    lines = format_box_file(entries).splitlines()
    headers = [i for i, line in enumerate(lines) if not line.split()[0] in CLASS_NAMES + ("Infiltrate",)]
    with_boxes = [i for i, e in zip(headers, entries) if e.boxes]
    i = data.draw(st.sampled_from(with_boxes), label="header line index")
    name, count = lines[i].rsplit(None, 1)
    delta = data.draw(st.sampled_from([-1, 1, 5]), label="count change")
    lines[i] = f"{name} {int(count) + delta}"
    path = tmp_path / "boxes.txt"
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(InputError, match=rf"^{path}:\d+: ") as err:
        read_box_file(path)
    assert "\n" not in str(err.value)
    line_number = int(str(err.value)[len(str(path)) + 1:].split(":")[0])
    assert 1 <= line_number <= len(lines) + 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1, width=32), min_size=2, max_size=30), st.data())
def test_youden_threshold_selects_exactly_the_cut_in_float32(values, data):
    """For float32 probabilities with neighbours one ulp apart, 'p > t' (both float32) selects exactly
    the images of the best cut ('p >= cut') that Youden's J chose."""
    from sklearn.metrics import roc_curve

    from chexnet import metrics

    base = np.array(values, dtype=np.float32)
    steps = np.nextafter(base, np.float32(1))  # adjacent float32 values
    probs = np.concatenate([base, steps])[:, None]
    labels = np.array(data.draw(st.lists(st.integers(0, 1), min_size=len(probs), max_size=len(probs))))
    if labels.min() == labels.max():
        return
    t = metrics.youden_thresholds(labels[:, None], probs)[0]
    fpr, tpr, cuts = roc_curve(labels, probs[:, 0].astype(np.float64), drop_intermediate=False)
    best = int(np.argmax(tpr - fpr))
    chosen = probs[:, 0] >= cuts[best] if np.isfinite(cuts[best]) else np.zeros(len(probs), bool)
    assert np.array_equal(probs[:, 0] > t, chosen)
