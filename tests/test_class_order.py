"""Classes by name, never by column position: a checkpoint whose 14 class names come in another
order (alphabetical here) must localize, print, save and draw each output under its own name."""
import shutil
from pathlib import Path

import numpy as np
import pytest

import denseNet_localization
from conftest import random_state
from model import load_checkpoint
from chexnet import localize
from chexnet.boxfile import read_box_file
from chexnet.constants import ALL_FINDINGS, CLASS_NAMES
from chexnet.heatmap_file import read_heatmaps
from chexnet.probs import read_probs_csv
from chexnet.utils import InputError

NAMES = ["00001933_000.png", "00008386_000.png"]  # real NIH PNGs
ALPHABETICAL = sorted(ALL_FINDINGS)  # Atelectasis, Cardiomegaly, Consolidation, Edema, Effusion, ...
# Active (threshold 0: sigmoid > 0 always): four box classes and Edema, which has no box; the rest
# never (threshold 1).
ACTIVE = {"Atelectasis", "Effusion", "Mass", "Pneumothorax", "Edema"}


def active(class_names) -> list[float]:
    return [0.0 if name in ACTIVE else 1.0 for name in class_names]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, random_checkpoint):
    """(usual order, alphabetical): one random-init network, its head's rows reordered with the names."""
    root = tmp_path_factory.mktemp("order")
    state = random_state(len(ALL_FINDINGS))
    rows = [ALL_FINDINGS.index(name) for name in ALPHABETICAL]
    permuted = dict(state, **{key: state[key][rows] for key in ("classifier.weight", "classifier.bias")})
    return (random_checkpoint(root / "usual", ALL_FINDINGS, active(ALL_FINDINGS)),
            random_checkpoint(root / "alpha", ALPHABETICAL, active(ALPHABETICAL), permuted))


def _localize(model: Path, images: Path, out: Path, capsys, *extra) -> list[str]:
    """A folder run (so the findings line is printed): the printed lines of the images."""
    denseNet_localization.main(denseNet_localization.get_args_parser().parse_args([
        str(images), "--model", str(model), "--out", str(out / "bb.txt"), "--probs", str(out / "p.csv"),
        "--save-heatmaps", str(out / "maps.npz"), "--workers", "0", *extra]))
    return [line for line in capsys.readouterr().out.splitlines() if "x1024: " in line]


def test_box_columns_are_found_by_name():
    assert localize.box_columns(CLASS_NAMES) == [(k, k) for k in range(8)]
    assert localize.box_columns(ALL_FINDINGS) == [(k, k) for k in range(8)]
    assert localize.box_columns(ALPHABETICAL) == [(ALPHABETICAL.index(n), k) for k, n in enumerate(CLASS_NAMES)]
    assert localize.box_columns(["Edema", "Nodule"]) == [(1, 5)]  # a model without some box classes


def test_permuted_class_names_give_each_output_under_its_own_name(checkpoints, sample_dir, tmp_path, capsys):
    usual, alpha = checkpoints
    images = tmp_path / "images"
    images.mkdir()
    for name in NAMES:
        shutil.copy(sample_dir / "images" / name, images / name)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    printed_usual = _localize(usual, images, tmp_path / "a", capsys)
    printed_alpha = _localize(alpha, images, tmp_path / "b", capsys, "--plots", str(tmp_path / "plots"),
                              "--plot-images", "1", "--sheet-cell", "64")

    # Probabilities: the CSV header is the checkpoint's order; each class's column is its own logit.
    names_a, classes_a, probs_a = read_probs_csv(tmp_path / "a" / "p.csv")
    names_b, classes_b, probs_b = read_probs_csv(tmp_path / "b" / "p.csv")
    assert classes_a == list(ALL_FINDINGS) and classes_b == ALPHABETICAL and names_a == names_b == NAMES
    for c, name in enumerate(ALL_FINDINGS):
        np.testing.assert_allclose(probs_b[:, ALPHABETICAL.index(name)], probs_a[:, c], rtol=0, atol=1e-6)

    # Boxes: the active box classes only, each under its own name, the same boxes in the same order.
    boxes_a, boxes_b = read_box_file(tmp_path / "a" / "bb.txt"), read_box_file(tmp_path / "b" / "bb.txt")
    for a, b in zip(boxes_a, boxes_b, strict=True):
        assert [x.label for x in b.boxes] == [x.label for x in a.boxes]
        assert {x.label for x in b.boxes} == ACTIVE - {"Edema"}
        np.testing.assert_allclose([(x.x, x.y, x.w, x.h) for x in b.boxes],
                                   [(x.x, x.y, x.w, x.h) for x in a.boxes], atol=0.05)

    # The printed line: all the model's classes above threshold (Edema too), each with its own probability.
    assert len(printed_usual) == len(printed_alpha) == len(NAMES)
    for line_a, line_b in zip(printed_usual, printed_alpha):
        found_a = dict(item.rsplit(" ", 1) for item in line_a.split(": ", 1)[1].split(", "))
        found_b = dict(item.rsplit(" ", 1) for item in line_b.split(": ", 1)[1].split(", "))
        assert set(found_b) == ACTIVE and list(found_b) == sorted(ACTIVE)  # the checkpoint's order
        assert found_a == found_b

    # Saved heatmaps: one per active box class, under its name, the same map.
    maps_a, maps_b = read_heatmaps(tmp_path / "a" / "maps.npz"), read_heatmaps(tmp_path / "b" / "maps.npz")
    key = lambda saved: {(i, l): m for i, l, m in zip(saved.images, saved.labels, saved.maps)}  # noqa: E731
    by_a, by_b = key(maps_a), key(maps_b)
    assert set(by_a) == set(by_b) and {label for _, label in by_b} == ACTIVE - {"Edema"}
    for k in by_a:
        np.testing.assert_allclose(by_b[k], by_a[k], atol=1e-4)

    # Pictures: a heatmap per active box class under its own name; the sheet's rows are box classes.
    stem = Path(NAMES[0]).stem
    drawn = {p.name for p in (tmp_path / "plots").glob(f"{stem}_heatmap_*.png")}
    assert drawn == {f"{stem}_heatmap_{name}.png" for name in ACTIVE - {"Edema"}}
    assert (tmp_path / "plots" / "contact_sheet.png").is_file()


def test_calibration_takes_the_box_classes_by_name_or_refuses(checkpoints):
    import calibrate

    _, alpha = checkpoints
    checkpoint = load_checkpoint(alpha)
    assert calibrate.box_class_columns(checkpoint, str(alpha)) == [ALPHABETICAL.index(n) for n in CLASS_NAMES]
    checkpoint["class_names"] = ["Edema", "Nodule"] + ALPHABETICAL[2:]  # no Atelectasis, no Cardiomegaly
    with pytest.raises(InputError, match="has no output for Atelectasis, Cardiomegaly"):
        calibrate.box_class_columns(checkpoint, str(alpha))
