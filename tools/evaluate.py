"""Score a box file against the ground-truth box table (BBox_List_2017.csv).

    python3 tools/evaluate.py BOX_TXT BBOX_LIST [--images LIST...] [--out DIR] [--plots DIR]

Images are matched by file name alone (`../images/X.png` in the box file is `X.png` in the
table). Only images of the box file that the table has boxes for are evaluated: the table
annotates 880 of 112,120 images, so an image absent from it has unknown truth, not "no
finding". Box-file images absent from the table, and table images absent from the box file,
are counted and printed, never dropped silently. Class names are compared after mapping the
table's `Infiltrate` to `Infiltration` (BOX_TABLE_ALIASES); a box file may use either.
--images LIST... keeps only the images of those lists on both sides (the test split's box images,
say), and prints how many images with truth boxes each list holds.

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

With --heatmaps FILE.npz (denseNet_localization.py --save-heatmaps), the maps themselves are scored,
with no box size from anywhere (scoring.score_maps), per (image, class) pair that has a truth box:
the pointing game (the map's maximum within 15 pixels of the 224 crop, 60 px of the 1024 image, of
a truth box of its class) and the IoU of the map's pixels at >= --map-fraction of its maximum with
the union of the class's truth boxes. A pair whose class was not active has no map: a miss. The
maps live in the 1024 frame: a W x H image's truth boxes are scaled by 1024 / W, 1024 / H, with the
(width, height) that --save-heatmaps stores per image (an older file without it: 1024x1024).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root: chexnet/, model.py

from chexnet import nih  # noqa: E402
from chexnet.boxfile import read_box_file  # noqa: E402
from chexnet.heatmap_file import read_heatmaps  # noqa: E402
from chexnet.scoring import (MAP_IOU_FRACTION, ORIGINAL_IOU_CUTS, image_key,  # noqa: E402
                             predictions_by_image, score_boxes, score_maps)
from chexnet.utils import InputError, run_cli, write_text_atomic  # noqa: E402

# Wang et al.'s Table 4 (IoBB accuracy), drawn beside ours; the file names its source.
WANG_TABLE = Path(__file__).resolve().parents[1] / "docs" / "wang2017_localization_table4.csv"

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
    lines += _table(f"original score (first {report['top_k']} boxes of each image, "
                    "pooled per predicted box)",
                    ["boxes"] + [c.replace("iou", "IoU") for c in cuts] + ["score", "meanIoU"],
                    [(n, [s["original"][k] for k in ["boxes", *cuts, "score", "mean_iou"]])
                     for n, s in classes.items()])
    for key, what in (("acc_iou", "IoU > T"), ("acc_iobb", "IoBB > T")):
        extra = ["meanIoU"] if key == "acc_iou" else []
        lines += _table(f"Wang et al. localization accuracy, {what} (pooled per truth box)",
                        ["truth"] + ts + extra,
                        [(n, [s["truth_boxes"]] + [s[key][t] for t in ts]
                          + ([s["mean_iou"]] if extra else []))
                         for n, s in classes.items()])
    for key, what in (("afp_iou", "IoU <= T"), ("afp_iobb", "IoBB <= T")):
        lines += _table(f"average false positives per evaluated image ({what} with every truth "
                        "box of its class)",
                        ts, [(n, [s[key][t] for t in ts]) for n, s in classes.items()])
    if "maps" in report:
        maps = report["maps"]
        lines += _table(f"heatmaps, no box prior: pointing game ({maps['tolerance_crop_px']} px of "
                        f"the 224 crop) and IoU of the map >= {maps['fraction']:g} x max",
                        ["pairs", "mapped", "point", "point|m", "mapIoU", "IoU|m"],
                        [(n, [s[k] for k in ("pairs", "with_map", "pointing", "pointing_with_map",
                                             "map_iou", "map_iou_with_map")])
                         for n, s in maps["classes"].items()])
    return "\n".join(lines) + "\n"


def maps_report(path: str, truth: dict, images: set[str], fraction: float) -> dict:
    """score_maps of a --save-heatmaps file over `images` (the box file's: an image with no active
    class has no map but is scored); an (image, class) pair twice is an InputError."""
    saved = read_heatmaps(path)
    maps, sizes = {}, {}
    for image, label, heatmap, size in zip(saved.images, saved.labels, saved.maps, saved.sizes):
        key = (image_key(image), label)
        if key in maps:
            raise InputError(f"{path}: {label} of image {key[0]} appears more than once")
        if sizes.setdefault(key[0], size) != size:
            raise InputError(f"{path}: image {key[0]} has two sizes, {sizes[key[0]]} and {size}")
        maps[key] = heatmap
    report = score_maps(maps, {k: v for k, v in truth.items() if k in images}, fraction,
                        sizes=sizes)
    return {"heatmaps": str(path), "cam": saved.cam, "layer": saved.layer, **report}


def write_outputs(report: dict, out_dir: str | os.PathLike) -> list[Path]:
    """evaluation.csv and evaluation.json in out_dir, each written atomically."""
    out = Path(out_dir)
    paths = [out / "evaluation.csv", out / "evaluation.json"]
    write_text_atomic(paths[0], format_csv(report))
    write_text_atomic(paths[1], json.dumps(report, indent=1) + "\n")
    return paths


# ---------------------------------------------------------------- command line

def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Score a box file against BBox_List_2017.csv: the "
                                     "original project's IoU score, Wang et al.'s accuracy "
                                     "(IoU and IoBB), mean IoU.")
    parser.add_argument("box_txt", type=str,
                        help="box file (ours or the original's); images matched by file name")
    parser.add_argument("bbox_list", type=str,
                        help="ground-truth table BBox_List_2017.csv (or .csv.gz)")
    parser.add_argument("--images", type=str, nargs="+", default=None, metavar="LIST",
                        help="score only the images of these lists (e.g. the test list), and say "
                             "how many images with truth boxes each holds (default: None, every "
                             "image)")
    parser.add_argument("--out", type=str, default=None,
                        help="folder for evaluation.csv and evaluation.json, and the figures "
                             "unless --plots names another folder (default: None, print only)")
    parser.add_argument("--plots", type=str, default=None,
                        help="folder for localization_iobb.png (beside Wang et al.'s Table 4) and "
                             "localization_iou.png (default: None, --out when given, else no "
                             "figures)")
    parser.add_argument("--heatmaps", type=str, default=None,
                        help="a denseNet_localization.py --save-heatmaps .npz: also score its maps "
                             "(pointing game, IoU of the thresholded map) (default: None)")
    parser.add_argument("--map-fraction", type=float, default=MAP_IOU_FRACTION,
                        help=f"with --heatmaps: a map pixel is on at >= this share of the map's "
                             f"maximum (default: {MAP_IOU_FRACTION})")
    return parser


def write_figures(report: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Per-class accuracy at each threshold as grouped bars, IoBB beside Wang et al.'s Table 4."""
    from chexnet import evaluation_figures  # matplotlib loads only when figures are asked for

    return evaluation_figures.evaluation_figures(out_dir, report, WANG_TABLE)


def restrict_to_lists(preds: dict, truth: dict, paths: list[str]) -> tuple[dict, dict, dict]:
    """Predictions and truth of the images of these lists only, and per list: its images, those
    with truth boxes, and their boxes (printed: a test list's box images are what is scored)."""
    keep, counts = set(), {}
    for path in paths:
        names = {image_key(name) for name in nih.read_image_list(path)}
        keep |= names
        with_boxes = names & set(truth)
        counts[str(path)] = {"images": len(names), "box_images": len(with_boxes),
                             "boxes": sum(len(truth[n]) for n in with_boxes)}
        print(f"{path}: {len(names)} images, {len(with_boxes)} of them with truth boxes "
              f"({counts[str(path)]['boxes']} boxes)")
    return ({k: v for k, v in preds.items() if k in keep},
            {k: v for k, v in truth.items() if k in keep}, counts)


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
    truth = nih.read_truth_by_image(args.bbox_list)
    lists = None
    if args.images is not None:
        preds, truth, lists = restrict_to_lists(preds, truth, args.images)
    report = score_boxes(preds, truth)
    report = {"box_file": str(args.box_txt), "bbox_list": str(args.bbox_list),
              **({} if lists is None else {"image_lists": lists}), **report}
    if args.heatmaps is not None:
        if not 0.0 < args.map_fraction <= 1.0:
            raise InputError(f"--map-fraction {args.map_fraction}: must be in (0, 1]")
        report["maps"] = maps_report(args.heatmaps, truth, set(preds), args.map_fraction)
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
