"""Box sizes that never see the test images, and scores on a list's images only."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import evaluate
from chexnet import calibrated, nih
from chexnet.boxfile import Box, ImageBoxes, write_box_file
from chexnet.boxfile import read_box_file
from chexnet.constants import AVERAGE_BOXES, CLASS_NAMES
from chexnet.utils import InputError

ROOT = Path(__file__).resolve().parent.parent


def test_sizes_from_listed_images_only(shared_nih):
    table_path = shared_nih / "BBox_List_2017.csv.gz"
    truth = nih.read_bbox_list(table_path)
    images = sorted({b.image for b in truth})
    train = set(images[::2])  # half of the 880 box images stand for train + valid
    everything, said = calibrated.resolve_box_sizes(table_path, None)
    assert said.startswith("mean of 984 boxes in ")
    np.testing.assert_allclose(everything, AVERAGE_BOXES, atol=0.05)  # the original's all-984 table
    sizes, said = calibrated.resolve_box_sizes(table_path, None, {"train.txt": train})
    kept = [b for b in truth if b.image in train]
    assert said.startswith(f"mean of {len(kept)} boxes of the images of train.txt")
    np.testing.assert_allclose(sizes, nih.average_boxes(kept))
    assert not np.allclose(sizes, everything)


def test_evaluate_scores_only_the_listed_images(sample_dir, tmp_path, capsys):
    truth = nih.read_truth_by_image(sample_dir / "BBox_List_2017.csv")
    test = nih.read_image_list(sample_dir / "test.txt")
    valid = nih.read_image_list(sample_dir / "valid.txt")
    entries = [ImageBoxes(f"../images/{name}", [Box(b.label, b.x, b.y, b.w, b.h) for b in truth.get(name, [])])
               for name in test + valid]  # perfect boxes
    write_box_file(tmp_path / "bb.txt", entries)
    args = evaluate.get_args_parser().parse_args(
        [str(tmp_path / "bb.txt"), str(sample_dir / "BBox_List_2017.csv"), "--images",
         str(sample_dir / "test.txt")])
    report = evaluate.main(args)
    in_test = [n for n in test if n in truth]
    assert report["images"]["evaluated"] == len(in_test)
    assert report["images"]["truth_not_in_box_file"] == 0  # the other lists' truth is out of scope
    counts = report["image_lists"][str(sample_dir / "test.txt")]
    assert counts == {"images": len(test), "box_images": len(in_test),
                      "boxes": sum(len(truth[n]) for n in in_test)}
    assert f"{len(in_test)} of them with truth boxes" in capsys.readouterr().out
    assert report["classes"]["overall"]["truth_boxes"] == counts["boxes"]


def test_size_images_needs_a_box_table(sample_dir, tmp_path):
    import denseNet_localization
    from chexnet.utils import InputError

    args = denseNet_localization.get_args_parser().parse_args(
        [str(sample_dir / "test.txt"), str(sample_dir / "images"), "--model", str(tmp_path / "none.pt"),
         "--size-images", str(sample_dir / "train.txt")])
    with pytest.raises(InputError, match="--size-images needs --bbox-list"):
        denseNet_localization.main(args)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, random_checkpoint) -> Path:
    """A random-init 8-class checkpoint with thresholds 0: every class active, every class boxed."""
    return random_checkpoint(tmp_path_factory.mktemp("leak"))


def test_lists_without_boxes_of_a_class_are_an_error_not_a_silent_fallback(sample_dir, tmp_path,
                                                                           model_path):
    """The sample's train + valid box images hold no Effusion and no Pneumothorax box: sizes from
    them alone do not exist for those classes, and falling back to the whole table would put the
    test images' boxes back in. One line naming the lists and the classes, status 2, no file."""
    lists = [str(sample_dir / "train.txt"), str(sample_dir / "valid.txt")]
    out = tmp_path / "bb.txt"
    done = subprocess.run(
        [sys.executable, str(ROOT / "denseNet_localization.py"), str(sample_dir / "test.txt"),
         str(sample_dir / "images"), "--model", str(model_path), "--out", str(out), "--workers", "0",
         "--bbox-list", str(sample_dir / "BBox_List_2017.csv"), "--size-images", *lists],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"--size-images {' '.join(lists)}: no box of Effusion, Pneumothorax in" in done.stderr
    assert "--size-fallback all" in done.stderr
    assert not out.exists()


def test_size_fallback_all_is_asked_for_and_named_not_leak_free(sample_dir, tmp_path, model_path, capsys):
    import denseNet_localization

    (tmp_path / "one.txt").write_text("00001933_000.png\n")
    table = sample_dir / "BBox_List_2017.csv"
    lists = [str(sample_dir / "train.txt"), str(sample_dir / "valid.txt")]
    denseNet_localization.main(denseNet_localization.get_args_parser().parse_args(
        [str(tmp_path / "one.txt"), str(sample_dir / "images"), "--model", str(model_path), "--out",
         str(tmp_path / "bb.txt"), "--workers", "0", "--bbox-list", str(table), "--size-images", *lists,
         "--size-fallback", "all"]))
    assert "(for Effusion, Pneumothorax: the mean of every box of the table, test images included: " \
           "NOT leak-free)" in capsys.readouterr().err
    truth = nih.read_bbox_list(table)
    listed = set(nih.read_image_list(lists[0])) | set(nih.read_image_list(lists[1]))
    expected = nih.average_boxes([b for b in truth if b.image in listed])
    everything = nih.average_boxes(truth)
    (entry,) = read_box_file(tmp_path / "bb.txt")
    opening = {}
    for box in entry.boxes:  # each class's first line is its average box
        opening.setdefault(box.label, box)
    for k, name in enumerate(CLASS_NAMES):
        x, y, w, h = everything[k] if name in ("Effusion", "Pneumothorax") else expected[k]
        assert opening[name].line() == f"{name} {x:.1f} {y:.1f} {w:.1f} {h:.1f}"


def test_size_fallback_needs_size_images(sample_dir, tmp_path):
    import denseNet_localization
    from chexnet.utils import InputError

    args = denseNet_localization.get_args_parser().parse_args(
        [str(sample_dir / "test.txt"), str(sample_dir / "images"), "--bbox-list",
         str(sample_dir / "BBox_List_2017.csv"), "--size-fallback", "all"])
    with pytest.raises(InputError, match="--size-fallback applies to --size-images only"):
        denseNet_localization.main(args)


def test_no_average_box_with_a_size_free_rule_takes_no_size_from_any_table(sample_dir, tmp_path, model_path,
                                                                          capsys):
    """--method threshold --no-average-box: the heatmap boxes alone, the same whichever table (or none)
    would size the average boxes; without --no-average-box each class opens with its average box."""
    import denseNet_localization

    (tmp_path / "one.txt").write_text("00001933_000.png\n")

    def boxes(out, *extra):
        denseNet_localization.main(denseNet_localization.get_args_parser().parse_args(
            [str(tmp_path / "one.txt"), str(sample_dir / "images"), "--model", str(model_path), "--out",
             str(tmp_path / out), "--workers", "0", "--method", "threshold", *extra]))
        return read_box_file(tmp_path / out)[0].boxes

    full = boxes("full.txt")
    alone = boxes("alone.txt", "--no-average-box")
    assert "box sizes from none (--no-average-box" in capsys.readouterr().err
    other_table = boxes("other.txt", "--no-average-box", "--bbox-list", str(sample_dir / "BBox_List_2017.csv"))
    assert [b.line() for b in other_table] == [b.line() for b in alone]
    seen, expected = set(), []
    for box in full:  # drop each class's first line, its average box (constants.AVERAGE_BOXES here)
        if box.label in seen:
            expected.append(box.line())
        else:
            seen.add(box.label)
            x, y, w, h = AVERAGE_BOXES[CLASS_NAMES.index(box.label)]
            assert box.line() == f"{box.label} {x:.1f} {y:.1f} {w:.1f} {h:.1f}"
    assert [b.line() for b in alone] == expected and len(alone) >= len(seen)  # every class has a region


def test_readme_study_box_split_on_the_real_tables(shared_nih, tmp_path):
    """README's "A study": with train and validation lists that hold no box image (NIH's official
    split, as widely reported), --size-images has nothing to average: an error naming all 8 classes.
    The leak-free alternative draws the patients in two halves (tools/split.py), averages the sizes
    over one half's box images and scores only the other's: every class has boxes in the half."""
    import split

    entry, table = shared_nih / "Data_Entry_2017_v2020.csv.gz", shared_nih / "BBox_List_2017.csv.gz"
    truth = nih.read_bbox_list(table)
    box_images = {b.image for b in truth}
    labels = nih.read_data_entry(entry)
    no_boxes = {n for n in labels if n not in box_images}  # what official train + valid hold
    with pytest.raises(InputError, match=f"no box of {', '.join(CLASS_NAMES)} in "):
        calibrated.resolve_box_sizes(table, None, {"train.txt": no_boxes, "valid.txt": set()})

    assert split.main(split.get_args_parser().parse_args(
        [str(entry), str(tmp_path), "--valid-fraction", "0", "--test-fraction", "0.5", "--seed", "0"])) == 0
    sizes_half, scored_half = (set(nih.read_image_list(tmp_path / f"{n}.txt")) for n in ("train", "test"))
    assert not {labels[n].patient_id for n in sizes_half} & {labels[n].patient_id for n in scored_half}
    assert len(box_images & sizes_half) + len(box_images & scored_half) == len(box_images) == 880
    sizes, said = calibrated.resolve_box_sizes(table, None, {"train.txt": sizes_half})  # no error, no fallback
    kept = [b for b in truth if b.image in sizes_half]
    np.testing.assert_array_equal(sizes, nih.average_boxes(kept))
    assert "NOT leak-free" not in said and f"({len(box_images & sizes_half)} images)" in said
