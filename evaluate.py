"""Score a box file against the ground-truth box table (BBox_List_2017.csv).

    python3 evaluate.py BOX_TXT BBOX_LIST [--out DIR] [--plots DIR]

Images are matched by file name alone (`../images/X.png` in the box file is `X.png` in the
table). Only images of the box file that the table has boxes for are evaluated: the table
annotates 880 of 112,120 images, so an image absent from it has unknown truth, not "no
finding". Box-file images absent from the table, and table images absent from the box file,
are counted and printed, never dropped silently. Class names are compared after mapping the
table's `Infiltrate` to `Infiltration` (BOX_TABLE_ALIASES); a box file may use either.

Three metrics, each per class and overall:

1. The original project's score (its iou.py). Per evaluated image, take the first
   ORIGINAL_TOP_K predicted boxes in file order; each gets the IoU with the truth box of the
   same image and class (0 when there is none; the best IoU when there are several). The
   figures are pooled over these predicted boxes: `iou>0.25` and `iou>0.5` are the shares of
   boxes above each cut, `score` is their mean, `mean_iou` the boxes' mean IoU. A class's
   figures pool the boxes that predict that class; `overall` pools all boxes, so it is a
   box-weighted mean of the classes, not the mean of the class figures.

2. Wang et al.'s localization accuracy (ChestX-ray8, CVPR 2017, Table 4). For every truth box
   of an evaluated image: a hit at threshold T when some predicted box of its class on that
   image (all of them, not only the first ORIGINAL_TOP_K) has IoU > T (one table), or
   IoBB > T (another; IoBB = intersection / predicted box area, Wang's measure). Accuracy is
   hits / truth boxes, pooled over the class's truth boxes (overall: all truth boxes).
   AFP, the average number of false positives per evaluated image at T: a predicted box is a
   false positive when its overlap (same measure) with every truth box of its class on its
   image is <= T, which includes every box whose class has no truth box there. A class's
   AFP counts that class's false positives, so the class AFPs add up to the overall AFP.

3. Mean IoU, per truth box: the best IoU among the predicted boxes of its class on its image
   (0 when there is none), averaged over the class's truth boxes (overall: all truth boxes).

A figure whose denominator is empty (no predicted box, or no truth box, of a class) is None.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

from boxfile import Box, ImageBoxes, read_box_file
from common import InputError, run_cli, write_text_atomic
from constants import BOX_TABLE_ALIASES, CLASS_NAMES
from tables import TruthBox, boxes_by_image, read_bbox_list

# Thresholds of Wang et al.'s Table 4 (ChestX-ray8), for both IoU and IoBB.
WANG_THRESHOLDS = (0.1, 0.25, 0.5, 0.75, 0.9)
# The original scorer (iou.py) looked at the first 10 boxes of each image, with IoU cuts 0.25 and 0.5.
ORIGINAL_TOP_K = 10
ORIGINAL_IOU_CUTS = (0.25, 0.5)
OVERALL = "overall"
# Wang et al.'s Table 4 (IoBB accuracy), drawn beside ours; the file names its source.
WANG_TABLE = Path(__file__).resolve().parent / "docs" / "wang2017_localization_table4.csv"


class XYWH(Protocol):
    x: float
    y: float
    w: float
    h: float


# ---------------------------------------------------------------- geometry

def intersection(a: XYWH, b: XYWH) -> float:
    """Area shared by two (x, y, w, h) boxes; 0 when they only touch or are apart."""
    dx = min(a.x + a.w, b.x + b.w) - max(a.x, b.x)
    dy = min(a.y + a.h, b.y + b.h) - max(a.y, b.y)
    return dx * dy if dx > 0 and dy > 0 else 0.0


def iou(a: XYWH, b: XYWH) -> float:
    """Intersection over union; 0 for two empty boxes (nothing to overlap)."""
    inter = intersection(a, b)
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


def iobb(pred: XYWH, truth: XYWH) -> float:
    """Intersection over the predicted box's area (Wang et al.); 0 for an empty predicted box."""
    area = pred.w * pred.h
    return intersection(pred, truth) / area if area > 0 else 0.0


# ---------------------------------------------------------------- inputs

def image_key(path: str) -> str:
    """The file name that links a box-file path to the table's 'Image Index'."""
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def load_truth(path: str | os.PathLike) -> dict[str, list[TruthBox]]:
    """BBox_List (.csv or .csv.gz) -> {image name: its truth boxes}."""
    return boxes_by_image(read_bbox_list(path))


def predictions_by_image(path: str | os.PathLike, entries: Iterable[ImageBoxes]) -> dict[str, list[Box]]:
    """{image name: boxes in file order}, labels in CLASS_NAMES spelling; bad entries are InputErrors."""
    preds: dict[str, list[Box]] = {}
    for entry in entries:
        key = image_key(entry.image_path)
        if key in preds:
            raise InputError(f"{path}: image {key} appears more than once")
        preds[key] = [_checked_box(path, key, n, box) for n, box in enumerate(entry.boxes, start=1)]
    return preds


def _checked_box(path, key: str, n: int, box: Box) -> Box:
    label = BOX_TABLE_ALIASES.get(box.label, box.label)
    where = f"{path}: image {key}, box {n}"
    if label not in CLASS_NAMES:
        raise InputError(f"{where}: unknown class {box.label!r}; expected one of {', '.join(CLASS_NAMES)}")
    if not all(math.isfinite(v) for v in (box.x, box.y, box.w, box.h)) or box.w < 0 or box.h < 0:
        raise InputError(f"{where}: x, y must be finite and width, height finite and >= 0, "
                         f"got {box.x} {box.y} {box.w} {box.h}")
    return Box(label, box.x, box.y, box.w, box.h)


# ---------------------------------------------------------------- metrics

@dataclass
class Tally:
    """Running sums of one class (or of all classes) over the evaluated images."""
    pred_boxes: int = 0  # predicted boxes scored by the original's metric (first ORIGINAL_TOP_K)
    pred_iou_sum: float = 0.0
    pred_above: tuple[int, ...] = (0,) * len(ORIGINAL_IOU_CUTS)
    truth_boxes: int = 0
    truth_iou_sum: float = 0.0
    hits_iou: tuple[int, ...] = (0,) * len(WANG_THRESHOLDS)
    hits_iobb: tuple[int, ...] = (0,) * len(WANG_THRESHOLDS)
    fp_iou: tuple[int, ...] = (0,) * len(WANG_THRESHOLDS)
    fp_iobb: tuple[int, ...] = (0,) * len(WANG_THRESHOLDS)

    def add_scored_prediction(self, best_iou: float) -> None:
        self.pred_boxes += 1
        self.pred_iou_sum += best_iou
        self.pred_above = _count_if(self.pred_above, ORIGINAL_IOU_CUTS, lambda c: best_iou > c)

    def add_prediction(self, best_iou: float, best_iobb: float) -> None:
        self.fp_iou = _count_if(self.fp_iou, WANG_THRESHOLDS, lambda t: best_iou <= t)
        self.fp_iobb = _count_if(self.fp_iobb, WANG_THRESHOLDS, lambda t: best_iobb <= t)

    def add_truth(self, best_iou: float, best_iobb: float) -> None:
        self.truth_boxes += 1
        self.truth_iou_sum += best_iou
        self.hits_iou = _count_if(self.hits_iou, WANG_THRESHOLDS, lambda t: best_iou > t)
        self.hits_iobb = _count_if(self.hits_iobb, WANG_THRESHOLDS, lambda t: best_iobb > t)

    def summary(self, images: int) -> dict:
        n, m = self.pred_boxes, self.truth_boxes
        by_t = lambda counts, d: {f"{t:g}": _ratio(c, d) for t, c in zip(WANG_THRESHOLDS, counts)}
        shares = [_ratio(count, n) for count in self.pred_above]
        original = {"boxes": n, **{f"iou>{cut:g}": v for cut, v in zip(ORIGINAL_IOU_CUTS, shares)},
                    "score": None if n == 0 else sum(shares) / len(shares),
                    "mean_iou": _ratio(self.pred_iou_sum, n)}
        return {"original": original, "truth_boxes": m, "mean_iou": _ratio(self.truth_iou_sum, m),
                "acc_iou": by_t(self.hits_iou, m), "acc_iobb": by_t(self.hits_iobb, m),
                "afp_iou": by_t(self.fp_iou, images), "afp_iobb": by_t(self.fp_iobb, images)}


def _count_if(counts: tuple[int, ...], cuts: tuple[float, ...], test) -> tuple[int, ...]:
    return tuple(c + (1 if test(cut) else 0) for c, cut in zip(counts, cuts))


def _ratio(num: float, den: int) -> float | None:
    return num / den if den else None


def _best(measure, box: XYWH, others: list) -> float:
    return max((measure(box, o) for o in others), default=0.0)


def score_image(preds: list[Box], truths: list[TruthBox], tallies: dict[str, Tally]) -> None:
    """Add one image's predicted and truth boxes to its classes' tallies and to OVERALL's."""
    truth_of = defaultdict(list)
    for t in truths:
        truth_of[t.label].append(t)
    for box in preds[:ORIGINAL_TOP_K]:
        best = _best(iou, box, truth_of[box.label])
        for name in (box.label, OVERALL):
            tallies[name].add_scored_prediction(best)
    for box in preds:
        best_iou, best_iobb = _best(iou, box, truth_of[box.label]), _best(iobb, box, truth_of[box.label])
        for name in (box.label, OVERALL):
            tallies[name].add_prediction(best_iou, best_iobb)
    for t in truths:
        mine = [b for b in preds if b.label == t.label]
        best_iou = max((iou(b, t) for b in mine), default=0.0)
        best_iobb = max((iobb(b, t) for b in mine), default=0.0)
        for name in (t.label, OVERALL):
            tallies[name].add_truth(best_iou, best_iobb)


def evaluate(preds: dict[str, list[Box]], truth: dict[str, list[TruthBox]]) -> dict:
    """All three metrics (see the module docstring) as a JSON-ready dict."""
    evaluated = [key for key in preds if key in truth]
    tallies = {name: Tally() for name in CLASS_NAMES + (OVERALL,)}
    for key in evaluated:
        score_image(preds[key], truth[key], tallies)
    return {
        "images": {"box_file": len(preds), "evaluated": len(evaluated),
                   "box_file_not_in_truth": sum(1 for key in preds if key not in truth),
                   "truth_not_in_box_file": sum(1 for key in truth if key not in preds)},
        "box_file_images_not_in_truth": sorted(key for key in preds if key not in truth),
        "truth_images_not_in_box_file": sorted(key for key in truth if key not in preds),
        "top_k": ORIGINAL_TOP_K,
        "thresholds": list(WANG_THRESHOLDS),
        "classes": {name: tallies[name].summary(len(evaluated)) for name in CLASS_NAMES + (OVERALL,)},
    }


# ---------------------------------------------------------------- outputs

def flat_rows(report: dict) -> list[dict]:
    """One flat row per class and one for overall: the CSV's rows (None stays an empty cell)."""
    rows = []
    for name, s in report["classes"].items():
        row = {"class": name, "pred_boxes": s["original"]["boxes"]}
        row.update({f"orig_{k}": v for k, v in s["original"].items() if k != "boxes"})
        row.update({"truth_boxes": s["truth_boxes"], "mean_iou": s["mean_iou"]})
        for table in ("acc_iou", "acc_iobb", "afp_iou", "afp_iobb"):
            row.update({f"{table}_{t}": v for t, v in s[table].items()})
        rows.append(row)
    return rows


def format_csv(report: dict) -> str:
    rows = flat_rows(report)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else (f"{v:.6f}" if isinstance(v, float) else v)
                         for k, v in row.items()})
    return buf.getvalue()


def _cell(value, width: int = 7) -> str:
    if value is None:
        return "-".rjust(width)
    return (f"{value:.3f}" if isinstance(value, float) else str(value)).rjust(width)


def _table(title: str, header: list[str], rows: list[tuple[str, list]]) -> list[str]:
    lines = ["", title, f"{'class':<14}" + "".join(h.rjust(9) for h in header)]
    lines += [f"{name:<14}" + "".join(_cell(v, 9) for v in values) for name, values in rows]
    return lines


def format_report(report: dict) -> str:
    """The human-readable tables that the CLI prints."""
    im, classes, ts = report["images"], report["classes"], [f"{t:g}" for t in report["thresholds"]]
    lines = [f"images: {im['box_file']} in the box file, {im['evaluated']} evaluated; "
             f"{im['box_file_not_in_truth']} box-file images have no truth boxes (not scored); "
             f"{im['truth_not_in_box_file']} truth-table images are not in the box file"]
    cuts = [f"iou>{c:g}" for c in ORIGINAL_IOU_CUTS]
    lines += _table(f"original score (first {report['top_k']} boxes of each image, pooled per predicted box)",
                    ["boxes"] + [c.replace("iou", "IoU") for c in cuts] + ["score", "meanIoU"],
                    [(n, [s["original"][k] for k in ["boxes", *cuts, "score", "mean_iou"]])
                     for n, s in classes.items()])
    for key, what in (("acc_iou", "IoU > T"), ("acc_iobb", "IoBB > T")):
        extra = ["meanIoU"] if key == "acc_iou" else []
        lines += _table(f"Wang et al. localization accuracy, {what} (pooled per truth box)",
                        ["truth"] + ts + extra,
                        [(n, [s["truth_boxes"]] + [s[key][t] for t in ts] + ([s["mean_iou"]] if extra else []))
                         for n, s in classes.items()])
    for key, what in (("afp_iou", "IoU <= T"), ("afp_iobb", "IoBB <= T")):
        lines += _table(f"average false positives per evaluated image ({what} with every truth box of its class)",
                        ts, [(n, [s[key][t] for t in ts]) for n, s in classes.items()])
    return "\n".join(lines) + "\n"


def write_outputs(report: dict, out_dir: str | os.PathLike) -> list[Path]:
    """evaluation.csv and evaluation.json in out_dir, each written atomically."""
    out = Path(out_dir)
    paths = [out / "evaluation.csv", out / "evaluation.json"]
    write_text_atomic(paths[0], format_csv(report))
    write_text_atomic(paths[1], json.dumps(report, indent=1) + "\n")
    return paths


# ---------------------------------------------------------------- command line

def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Score a box file against BBox_List_2017.csv: the original "
                                     "project's IoU score, Wang et al.'s accuracy (IoU and IoBB), mean IoU.")
    parser.add_argument("box_txt", type=str, help="box file (ours or the original's); images matched by file name")
    parser.add_argument("bbox_list", type=str, help="ground-truth table BBox_List_2017.csv (or .csv.gz)")
    parser.add_argument("--out", type=str, default=None,
                        help="folder for evaluation.csv and evaluation.json, and the figures unless --plots "
                             "names another folder (default: None, print only)")
    parser.add_argument("--plots", type=str, default=None,
                        help="folder for localization_iobb.png (beside Wang et al.'s Table 4) and "
                             "localization_iou.png (default: None, --out when given, else no figures)")
    return parser


def write_figures(report: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Per-class accuracy at each threshold as grouped bars, IoBB beside Wang et al.'s Table 4."""
    import plots  # matplotlib loads only when figures are asked for

    return plots.evaluation_figures(out_dir, report, WANG_TABLE)


def main(args: argparse.Namespace) -> dict:
    if not Path(args.box_txt).is_file():
        raise InputError(f"{args.box_txt}: no such box file")
    if not Path(args.bbox_list).is_file():
        raise InputError(f"{args.bbox_list}: no such box table")
    try:
        entries = read_box_file(args.box_txt)
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{args.box_txt}: cannot read as a text box file ({err})") from None
    preds = predictions_by_image(args.box_txt, entries)
    report = evaluate(preds, load_truth(args.bbox_list))
    report = {"box_file": str(args.box_txt), "bbox_list": str(args.bbox_list), **report}
    print(format_report(report), end="")
    if args.out is not None:
        for path in write_outputs(report, args.out):
            print(f"wrote {path}")
    figures = args.plots if args.plots is not None else args.out
    if figures is not None:
        for path in write_figures(report, figures):
            print(f"wrote {path}")
    return report


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
