"""evaluate.py: geometry on hand-made boxes, every metric on a tiny case worked out by hand,
the Infiltrate/Infiltration mapping, bad input, and the CLI on the original project's real output."""
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

import evaluate as ev
from chexnet.boxfile import Box
from chexnet.utils import InputError
from chexnet.nih import TruthBox
from chexnet import nih, scoring

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
ORIGINAL_BOXES = SHARED / "reference" / "original_bounding_box.txt"
FULL_BBOX_LIST = SHARED / "nih" / "BBox_List_2017.csv.gz"
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"


def b(x, y, w, h, label="Mass"):
    return Box(label, x, y, w, h)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- geometry

def test_identical_boxes():
    assert scoring.iou(b(10, 20, 30, 40), b(10, 20, 30, 40)) == 1.0
    assert scoring.iobb(b(10, 20, 30, 40), b(10, 20, 30, 40)) == 1.0


def test_half_overlap():
    # Two 10x10 squares shifted by 5 in x share a 5x10 strip: intersection 50, union 100+100-50.
    pred, truth = b(0, 0, 10, 10), b(5, 0, 10, 10)
    assert scoring.intersection(pred, truth) == 50
    assert scoring.iou(pred, truth) == pytest.approx(50 / 150)
    assert scoring.iobb(pred, truth) == pytest.approx(50 / 100)
    # Shift in y instead: same numbers, so x and y are treated alike.
    assert scoring.iou(b(0, 0, 10, 10), b(0, 5, 10, 10)) == pytest.approx(1 / 3)


def test_disjoint_and_touching_boxes_do_not_overlap():
    assert scoring.iou(b(0, 0, 10, 10), b(20, 20, 5, 5)) == 0.0
    assert scoring.iobb(b(0, 0, 10, 10), b(20, 20, 5, 5)) == 0.0
    # Sharing only an edge (x=10) is no overlap.
    assert scoring.iou(b(0, 0, 10, 10), b(10, 0, 10, 10)) == 0.0
    # Apart in x but overlapping in y: still disjoint (a negative dx must not pair with dy).
    assert scoring.intersection(b(0, 0, 10, 10), b(30, 0, 10, 10)) == 0.0


def test_containment():
    small, big = b(2, 2, 4, 4), b(0, 0, 10, 10)
    # Intersection is the small box (16); union is the big one (100).
    assert scoring.iou(small, big) == pytest.approx(0.16)
    assert scoring.iou(big, small) == pytest.approx(0.16)
    # IoBB divides by the PREDICTED box: a small prediction inside the truth scores 1, a big one 0.16.
    assert scoring.iobb(small, big) == 1.0
    assert scoring.iobb(big, small) == pytest.approx(0.16)


def test_empty_boxes_score_zero():
    assert scoring.iou(b(5, 5, 0, 0), b(5, 5, 0, 0)) == 0.0
    assert scoring.iobb(b(5, 5, 0, 10), b(0, 0, 10, 10)) == 0.0


# ---------------------------------------------------------------- a tiny case worked out by hand

TINY_TRUTH = BBOX_HEADER + (
    "a.png,Mass,100,100,100,100\n"
    "a.png,Infiltrate,500,500,200,200\n"
    "b.png,Nodule,0,0,40,40\n"
    "c.png,Effusion,0,0,100,100\n"  # c is not in the box file
)
TINY_BOXES = (
    "../images/a.png 3\n"
    "Mass 100.0 100.0 100.0 100.0\n"  # the truth itself: IoU 1, IoBB 1
    "Infiltration 500.0 500.0 100.0 200.0\n"  # left half of the truth: IoU 20000/40000 = 0.5, IoBB 1
    "Nodule 0.0 0.0 10.0 10.0\n"  # no Nodule truth on a: 0, false positive
    "../images/b.png 2\n"
    "Nodule 10.0 10.0 40.0 40.0\n"  # 30x30 = 900 shared: IoU 900/2300, IoBB 900/1600
    "Mass 0.0 0.0 5.0 5.0\n"  # no Mass truth on b: 0, false positive
    "elsewhere/d.png 1\n"  # d is not in the truth table: not scored
    "Mass 0.0 0.0 1.0 1.0\n"
)
NODULE_IOU, NODULE_IOBB = 900 / 2300, 900 / 1600


@pytest.fixture
def tiny(tmp_path):
    return write(tmp_path / "boxes.txt", TINY_BOXES), write(tmp_path / "bbox.csv", TINY_TRUTH)


def run_main(box_txt, bbox_list, out=None):
    return ev.main(ev.get_args_parser().parse_args([str(box_txt), str(bbox_list)] +
                                                   ([] if out is None else ["--out", str(out)])))


def test_tiny_image_counts(tiny):
    report = run_main(*tiny)
    assert report["images"] == {"box_file": 3, "evaluated": 2, "box_file_not_in_truth": 1,
                                "truth_not_in_box_file": 1}
    assert report["box_file_images_not_in_truth"] == ["d.png"]
    assert report["truth_images_not_in_box_file"] == ["c.png"]


def test_tiny_original_score(tiny):
    classes = run_main(*tiny)["classes"]
    # The 5 scored boxes of a and b (d is not evaluated) have IoUs 1, 0.5, 0, 900/2300, 0.
    overall = classes["overall"]["original"]
    assert overall["boxes"] == 5
    assert overall["iou>0.25"] == pytest.approx(3 / 5)
    assert overall["iou>0.5"] == pytest.approx(1 / 5)  # 0.5 itself is not > 0.5
    assert overall["score"] == pytest.approx((3 / 5 + 1 / 5) / 2)
    assert overall["mean_iou"] == pytest.approx((1 + 0.5 + NODULE_IOU) / 5)
    # Per class, the class's predicted boxes: Mass IoUs 1 and 0, Nodule 0 and 900/2300.
    assert classes["Mass"]["original"]["score"] == pytest.approx(0.5)
    assert classes["Nodule"]["original"]["iou>0.25"] == pytest.approx(0.5)
    assert classes["Nodule"]["original"]["iou>0.5"] == 0.0
    assert classes["Infiltration"]["original"]["score"] == pytest.approx(0.5)
    # A class nobody predicted has no figure, not a zero.
    assert classes["Effusion"]["original"] == {"boxes": 0, "mean_iou": None, "iou>0.25": None,
                                               "iou>0.5": None, "score": None}


def test_tiny_wang_accuracy(tiny):
    s = run_main(*tiny)["classes"]["overall"]
    # Truth boxes of a and b (c is not evaluated): best IoU 1 (Mass), 0.5 (Infiltrate), 900/2300 (Nodule);
    # best IoBB 1, 1, 900/1600.
    assert s["truth_boxes"] == 3
    assert s["acc_iou"] == pytest.approx({"0.1": 1, "0.25": 1, "0.5": 1 / 3, "0.75": 1 / 3, "0.9": 1 / 3})
    assert s["acc_iobb"] == pytest.approx({"0.1": 1, "0.25": 1, "0.5": 1, "0.75": 2 / 3, "0.9": 2 / 3})
    assert s["mean_iou"] == pytest.approx((1 + 0.5 + NODULE_IOU) / 3)


def test_tiny_false_positives(tiny):
    classes = run_main(*tiny)["classes"]
    # Per predicted box, best IoU with its class's truth: 1, 0.5, 0, 900/2300, 0 (IoBB 1, 1, 0, 0.5625, 0);
    # a false positive at T is <= T. Two evaluated images.
    assert classes["overall"]["afp_iou"] == pytest.approx(
        {"0.1": 2 / 2, "0.25": 2 / 2, "0.5": 4 / 2, "0.75": 4 / 2, "0.9": 4 / 2})
    assert classes["overall"]["afp_iobb"] == pytest.approx(
        {"0.1": 2 / 2, "0.25": 2 / 2, "0.5": 2 / 2, "0.75": 3 / 2, "0.9": 3 / 2})
    # The Mass box on b is Mass's only false positive at 0.1; the classes add up to overall.
    assert classes["Mass"]["afp_iou"]["0.1"] == pytest.approx(1 / 2)
    for t in ("0.1", "0.5", "0.9"):
        assert sum(classes[c]["afp_iou"][t] for c in scoring.CLASS_NAMES) == pytest.approx(classes["overall"]["afp_iou"][t])


def test_infiltrate_in_the_table_matches_infiltration_in_the_box_file(tiny):
    classes = run_main(*tiny)["classes"]
    assert classes["Infiltration"]["truth_boxes"] == 1
    assert classes["Infiltration"]["acc_iou"]["0.25"] == 1.0
    assert classes["Infiltration"]["mean_iou"] == pytest.approx(0.5)


def test_infiltrate_spelling_in_a_box_file_is_accepted_too(tmp_path):
    boxes = write(tmp_path / "boxes.txt", "a.png 1\nInfiltrate 500 500 200 200\n")
    truth = write(tmp_path / "bbox.csv", TINY_TRUTH)
    assert run_main(boxes, truth)["classes"]["Infiltration"]["acc_iou"]["0.9"] == 1.0


def test_only_the_first_10_boxes_count_for_the_original_score_all_for_wang():
    preds = [b(0, 0, 1, 1, "Atelectasis")] * 10 + [b(0, 0, 100, 100, "Cardiomegaly")]
    truth = [TruthBox("e.png", "Cardiomegaly", 0, 0, 100, 100)]
    s = scoring.score_boxes({"e.png": preds}, {"e.png": truth})["classes"]["overall"]
    assert s["original"]["boxes"] == 10 and s["original"]["score"] == 0.0
    assert s["acc_iou"]["0.9"] == 1.0


def test_several_truth_boxes_of_a_class_use_the_best():
    truth = [TruthBox("f.png", "Mass", 0, 0, 10, 10), TruthBox("f.png", "Mass", 500, 500, 50, 50)]
    s = scoring.score_boxes({"f.png": [b(500, 500, 50, 50)]}, {"f.png": truth})["classes"]["Mass"]
    assert s["original"]["mean_iou"] == 1.0
    assert s["truth_boxes"] == 2 and s["acc_iou"]["0.5"] == 0.5  # the first truth box is missed
    assert s["afp_iou"]["0.9"] == 0.0


def test_gz_table_reads_like_the_plain_one(tiny, tmp_path):
    boxes, plain = tiny
    packed = tmp_path / "bbox.csv.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert run_main(boxes, packed)["classes"] == run_main(boxes, plain)["classes"]


def test_bad_gz_table_names_the_gz_file(tmp_path):
    packed = tmp_path / "bbox.csv.gz"
    packed.write_bytes(gzip.compress((BBOX_HEADER + "a.png,Mass,1,2,3\n").encode()))
    with pytest.raises(InputError, match=r"bbox\.csv\.gz: row 2"):
        nih.read_truth_by_image(packed)


def test_outputs_are_written(tiny, tmp_path):
    run_main(*tiny, out=tmp_path / "out")
    report = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert report["classes"]["overall"]["original"]["boxes"] == 5
    lines = (tmp_path / "out" / "evaluation.csv").read_text().splitlines()
    assert len(lines) == 1 + 9  # header, 8 classes, overall
    assert lines[-1].startswith("overall,5,")
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("text, message", [
    ("a.png 2\nMass 1 2 3 4\n", r"boxes\.txt:1: header says 2 boxes"),
    ("a.png 1\nMass 1 2 3\n", r"boxes\.txt:2: expected"),
    ("a.png 1\nTumour 1 2 3 4\n", r"image a\.png, box 1: unknown class 'Tumour'"),
    ("a.png 1\nMass 1 2 -3 4\n", r"image a\.png, box 1: .*>= 0"),
    ("a.png 1\nMass 1 2 nan 4\n", r"image a\.png, box 1"),
    ("x/a.png 0\ny/a.png 0\n", r"image a\.png appears more than once"),
])
def test_bad_box_file_is_an_input_error(tmp_path, text, message):
    boxes = write(tmp_path / "boxes.txt", text)
    with pytest.raises(InputError, match=message):
        run_main(boxes, write(tmp_path / "bbox.csv", TINY_TRUTH))


def test_unreadable_box_file_is_an_input_error(tmp_path):
    boxes = tmp_path / "boxes.txt"
    boxes.write_bytes(b"\xff\xfe\x00 not text")
    with pytest.raises(InputError, match=r"boxes\.txt: cannot read as a text box file"):
        run_main(boxes, write(tmp_path / "bbox.csv", TINY_TRUTH))
    with pytest.raises(InputError, match=r"missing\.txt: no such box file"):
        run_main(tmp_path / "missing.txt", tmp_path / "bbox.csv")


def test_cli_malformed_box_file_exits_2_with_one_line(tmp_path):
    boxes = write(tmp_path / "boxes.txt", "a.png 1\nMass 1 2 three 4\n")
    truth = write(tmp_path / "bbox.csv", TINY_TRUTH)
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "evaluate.py"), str(boxes), str(truth)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "boxes.txt:2" in proc.stderr
    assert proc.stdout == ""


# ---------------------------------------------------------------- the original project's real output

def test_cli_on_the_original_output(tmp_path):
    if not (ORIGINAL_BOXES.is_file() and FULL_BBOX_LIST.is_file()):
        pytest.skip("../shared (reference output and BBox_List_2017.csv.gz) is not present")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "evaluate.py"), str(ORIGINAL_BOXES), str(FULL_BBOX_LIST),
                           "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "original score" in proc.stdout and "IoBB > T" in proc.stdout
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["images"] == {"box_file": 440, "evaluated": 440, "box_file_not_in_truth": 0,
                                "truth_not_in_box_file": 440}
    s = report["classes"]["overall"]
    # Regression values, checked against an independent re-computation (numpy, from the raw files).
    assert s["original"]["boxes"] == 2055 and s["truth_boxes"] == 500
    assert round(s["original"]["iou>0.25"], 3) == 0.074
    assert round(s["original"]["iou>0.5"], 3) == 0.040
    assert round(s["original"]["score"], 3) == 0.057
    assert round(s["acc_iou"]["0.25"], 3) == 0.212
    assert round(s["acc_iobb"]["0.1"], 3) == 0.348
    assert round(s["mean_iou"], 3) == 0.143
    assert round(s["afp_iobb"]["0.1"], 3) == 4.061
    # Infiltration is scored (the original scorer gave it 0 for the Infiltrate spelling).
    assert round(report["classes"]["Infiltration"]["acc_iou"]["0.1"], 3) == 0.362
