"""Tune box sizes and the box method's parameter on the validation images that have true boxes.

    python3 tools/calibrate.py PREPROCESSED_DIR [--model model/best.pt] [--method peaks]
        [--out MODEL_DIR]

1. Heatmaps: for every validation image of valid_boxes.csv, the model's 8 probabilities and the
   maps (--cam, default Grad-CAM) of all 8 classes, from the preprocessed valid_X.npy (the same
   256 -> 224 centre crop that localization takes from the PNGs, 512 -> 448 for a checkpoint of
   train.py --input-size 448, whose folder must be of that size; no PNG is decoded again). They
   are saved as OUT/heatmaps.npz (np.savez, no pickle): key "IMAGE/CLASS" -> float32
   (224, 224), and "IMAGE/probabilities" -> float32 (8,). `--heatmaps OUT/heatmaps.npz` re-runs
   the tuning from that file without the network.
2. A class is active on an image when its probability exceeds its threshold (thresholds.npy beside
   the model, as denseNet_localization.py decides). Per class, a grid search over the width and
   height multipliers of the class's average box (SCALES; each scaled about the box's centre, width
   on x = columns, height on y = rows) and the method's parameter (PARAM_GRIDS: the peaks method's
   keep fraction, the threshold method's fraction of the map's maximum, the percentile method's
   percentile, the otsu method's multiple of Otsu's threshold), and for the three size-free
   methods a multiplier of their rectangles (RECT_SCALES, about each rectangle's centre, clipped to
   the crop; peaks' boxes take the average box's size). The objective is the
   original project's score from evaluate.py (mean of the shares of predicted boxes with IoU > 0.25
   and IoU > 0.5), of the class's own lines (its average box, then its heatmap boxes) on the images
   where it is active; ties go to the higher mean IoU of those boxes, then to the earlier grid
   point (the defaults come first). A class with no true box, or no active image, keeps the
   defaults. --method auto runs that search for every box method and gives each class the method
   that scores best (peaks, the original's, wins a tie; a class kept at its defaults gets peaks).
3. OUT/box_sizes.json (calibrated.write_box_sizes): the tuned average boxes, the tuned parameter
   per class for --method (with --method auto, each class's method too), and a record of the
   calibration (with the --cam and --layer of its maps). denseNet_localization.py reads it from
   beside its --model when no --bbox-list is given, and then makes its maps with that CAM and
   layer unless told otherwise.
The score before (the original's table, the method's default) and after is printed per class on the
same images, with evaluate.py's full scoring (all classes together, first 10 boxes per image).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root: chexnet/, model.py

from chexnet import (boxes, calibrated, distributed, localize, model_dir,  # noqa: E402
                    preprocessed)
from chexnet.calibration import (AUTO_CANDIDATES, Choice, Heatmaps, active,  # noqa: E402
                                 compute_heatmaps, full_report, load_heatmaps, pick_cam,
                                 save_heatmaps, split_rows, tune, tuned_table)
from chexnet.constants import (AVERAGE_BOXES, CLASS_NAMES, DEFAULT_TARGET_LAYER,  # noqa: E402
                               ORIGINAL_SIZE)
from chexnet.nih import TruthBox, boxes_by_image  # noqa: E402
from chexnet.scoring import ORIGINAL_TOP_K, OVERALL  # noqa: E402
from chexnet.utils import InputError, run_cli, select_device  # noqa: E402
from chexnet.cam_base import split_layers  # noqa: E402
from gradcam import DEFAULT_CAM, FINAL_FEATURES, METHODS as CAM_METHODS  # noqa: E402
from model import load_checkpoint, model_from_checkpoint  # noqa: E402

OPTIMISM = ("note: the parameters were tuned on these same images, so 'after' is optimistic; "
            "use --holdout to see them on images the search did not use")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("preprocessed", type=str,
                   help="preprocessed folder (valid_X.npy, valid_boxes.csv)")
    p.add_argument("--model", type=str, default=model_dir.DEFAULT_MODEL,
                   help=f"checkpoint (default: {model_dir.DEFAULT_MODEL})")
    p.add_argument("--out", type=str, default=None,
                   help="folder for box_sizes.json and heatmaps.npz (default: the folder of "
                        "--model, "
                        "where denseNet_localization.py looks)")
    p.add_argument("--method", type=str, default="peaks",
                   choices=sorted(boxes.METHODS) + [boxes.PER_CLASS],
                   help="box method whose parameter is tuned; auto: every method for each class, "
                        "which keeps the best (recorded in box_sizes.json, used by localization) "
                        "(default: peaks)")
    p.add_argument("--thresholds", type=str, default=None,
                   help="a .npy of 8 probabilities or one number (default: thresholds.npy beside "
                        "--model, "
                        "else the checkpoint's)")
    p.add_argument("--heatmaps", type=str, default=None,
                   help="a heatmaps.npz of an earlier run: tune from it without the network "
                        "(default: None, "
                        "compute and save OUT/heatmaps.npz)")
    p.add_argument("--holdout", type=float, default=0.0,
                   help="fraction of the images kept out of the search and scored separately "
                        "(default: 0)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the --holdout split (default: 0)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="images per forward pass (default: 16)")
    p.add_argument("--device", type=str, default="auto",
                   help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--cam", type=str, default=None, choices=list(CAM_METHODS) + ["auto"],
                   help="class activation map: gradcam (the original's), gradcam++, layercam, "
                        "layercam-shortcut or cam; auto: tune each of calibration.AUTO_CANDIDATES"
                        " on the tuning images and keep the best (default: the one --heatmaps "
                        "recorded, else gradcam)")
    p.add_argument("--layer", type=str, default=None,
                   help=f"target layer, or several joined by commas (fused maps) (default: "
                        f"the method's: {DEFAULT_TARGET_LAYER}; {FINAL_FEATURES} for cam)")
    return p


def format_comparison(title: str, before: dict, after: dict, choices: list[Choice],
                      parameter: str, show_rule: bool = False) -> str:
    """Per class: truth boxes, then before -> after of the predicted boxes, the score and their
    mean IoU; the tuned sizes, parameter (show_rule: with the rule the class got) and rectangle
    scale."""
    lines = [title, f"{'class':<14}{'truth':>6}{'boxes':>10}{'score':>15}{'mean IoU':>15}"
             f"{'w x':>7}{'h x':>7}{parameter:>17}{'rect x':>7}  note"]
    cell = lambda v: "-" if v is None else f"{v:.3f}"
    for name in CLASS_NAMES + (OVERALL,):
        b, a = before["classes"][name]["original"], after["classes"][name]["original"]
        c = choices[CLASS_NAMES.index(name)] if name in CLASS_NAMES else None
        tuned = ""
        if c is not None:
            value = f"{c.method} {c.param:g}" if show_rule else f"{c.param:g}"
            tuned = f"{c.scale_w:>7g}{c.scale_h:>7g}{value:>17}{c.rect_scale:>7g}  {c.note}"
        lines.append(f"{name:<14}{before['classes'][name]['truth_boxes']:>6}{b['boxes']:>4} ->"
                     f"{a['boxes']:>4}"
                     f"{cell(b['score']):>6} ->{cell(a['score']):>6}{cell(b['mean_iou']):>6} ->"
                     f"{cell(a['mean_iou']):>6}{tuned}")
    return "\n".join(lines)



# ---------------------------------------------------------------- command line

def truth_of_valid(folder: str, sizes: dict[str, tuple[int, int]] | None = None
                   ) -> dict[str, list[TruthBox]]:
    """valid_boxes.csv grouped by image (read_valid_boxes turns a bad file into an InputError),
    in the 1024 frame where calibration places its boxes: an image of W x H px scales by 1024 / W,
    1024 / H (sizes: image -> (W, H); None or absent: already 1024x1024)."""
    rows = preprocessed.read_valid_boxes(folder)
    sizes = sizes or {}
    scaled = []
    for r in rows:
        w, h = sizes.get(r["image"], (ORIGINAL_SIZE, ORIGINAL_SIZE))
        sx, sy = ORIGINAL_SIZE / w, ORIGINAL_SIZE / h
        scaled.append(TruthBox(r["image"], r["label"], r["x"] * sx, r["y"] * sy,
                               r["w"] * sx, r["h"] * sy))
    return boxes_by_image(scaled)


def box_class_columns(checkpoint: dict, source: str) -> list[int]:
    """The checkpoint's output column of each of the 8 box classes, by name (any class order)."""
    columns = localize.box_columns(checkpoint["class_names"])
    missing = sorted(set(CLASS_NAMES) - {CLASS_NAMES[k] for _, k in columns})
    if missing:
        raise InputError(f"{source}: has no output for {', '.join(missing)}; calibrate.py tunes "
                         f"all 8 box classes")
    return [j for j, _ in columns]


def heatmaps_for(args: argparse.Namespace, checkpoint: dict, data: preprocessed.Prepared,
                 names: list[str], out: Path, columns: list[int]) -> Heatmaps | None:
    """From --heatmaps, or computed with the model and saved as OUT/heatmaps.npz. Under
    torchrun every rank computes its share and rank 0 alone gets them all (None elsewhere)."""
    if args.heatmaps is not None:
        hm = load_heatmaps(args.heatmaps)
        missing = [n for n in names if n not in hm.images]
        if missing:
            raise InputError(f"{args.heatmaps}: no heatmaps for {len(missing)} validation images, "
                             f"the first: {missing[0]}")
        layer = None if args.layer is None else ",".join(split_layers(args.layer))
        for asked, made, option in ((args.cam, hm.cam, "--cam"), (layer, hm.layer, "--layer")):
            if asked is not None and made is not None and asked != made:
                raise InputError(f"{args.heatmaps}: its maps were made with {made!r}, not "
                                 f"{option} {asked!r}; drop {option} or compute the maps again")
        args.cam, args.layer = args.cam or hm.cam, args.layer or hm.layer  # the record says these
        rows = [hm.images.index(n) for n in names]
        return Heatmaps(names, hm.probs[rows], hm.maps[rows], hm.cam, hm.layer)
    net = model_from_checkpoint(checkpoint, source=args.model)
    index = {n: i for i, n in enumerate(data.valid.names)}
    stored = np.stack([data.valid.images[index[n]] for n in names])
    hm = sharded_heatmaps(net, stored, names, distributed.init(select_device(args.device)), args,
                          columns)
    if hm is None:  # another process under torchrun: its maps went to rank 0, which goes on
        return None
    save_heatmaps(out / model_dir.HEATMAPS, hm)
    world = distributed.world_size()
    print(f"wrote {out / model_dir.HEATMAPS}: {len(names)} images x {len(CLASS_NAMES)} classes"
          + (f" on {world} processes" if world > 1 else ""))
    return hm


def sharded_heatmaps(net, stored: np.ndarray, names: list[str], device, args, columns
                     ) -> Heatmaps | None:
    """compute_heatmaps; under torchrun the one-process batches are dealt out (batch b to rank
    b mod N) and gathered on rank 0 in image order (None on the other ranks): the same maps."""
    shares = distributed.batch_shares(len(names), args.batch_size)
    rows = [i for s, e in shares[distributed.rank()] for i in range(s, e)]
    hm = None if not rows else compute_heatmaps(
        net, stored[rows], [names[i] for i in rows], device, args.batch_size, args.layer,
        args.cam or DEFAULT_CAM, columns)
    parts = [p for p in distributed.gather_objects(hm and (hm.probs, hm.maps)) or [] if p]
    if not distributed.is_main():
        return None
    order = np.argsort([i for share in shares for s, e in share for i in range(s, e)])
    return Heatmaps(list(names), np.concatenate([p for p, _ in parts])[order],
                    np.concatenate([m for _, m in parts])[order], hm.cam, hm.layer)


def auto_cam(args, checkpoint, data, names, out, columns, rows, thresholds, truth
             ) -> tuple[Heatmaps | None, list[dict] | None]:
    """--cam auto: the winner of calibration.pick_cam, its maps saved; args.cam/layer set to it.
    Under torchrun every rank computes its share of each candidate's maps, in the candidates'
    order; rank 0 tunes and picks, the others get (None, None)."""
    if args.heatmaps is not None or args.layer is not None:
        raise InputError("--cam auto computes its own maps at each candidate's layer: drop "
                         "--heatmaps and --layer")

    def make_maps(cam: str, layer: str | None) -> Heatmaps | None:
        args.cam, args.layer = cam, layer
        return heatmaps_for(args, checkpoint, data, names, out, columns)
    first = make_maps(*AUTO_CANDIDATES[0])  # joins torchrun's group, if any
    if first is None:  # another rank: its share of every other candidate, then done
        for cam, layer in AUTO_CANDIDATES[1:]:
            make_maps(cam, layer)
        return None, None
    made = iter([first])
    hm, tried = pick_cam(lambda cam, layer: next(made, None) or make_maps(cam, layer),
                         AUTO_CANDIDATES, rows, thresholds, truth, args.method)
    for t in tried:
        print(f"--cam auto: {t['cam']} at {t['layer']}: score {t['score']}, "
              f"mean IoU {t['mean_iou']}", file=sys.stderr)
    save_heatmaps(out / model_dir.HEATMAPS, hm)  # the winner's, as a plain run leaves its own
    args.cam, args.layer = hm.cam, hm.layer
    print(f"--cam auto: chose {hm.cam} at {hm.layer}", file=sys.stderr)
    return hm, tried


def main(args: argparse.Namespace) -> dict:
    distributed.quiet_other_ranks()
    if args.batch_size < 1:
        raise InputError(f"--batch-size {args.batch_size}: must be >= 1")
    data = preprocessed.load_prepared(args.preprocessed)
    truth = truth_of_valid(args.preprocessed, dict(zip(data.valid.names, data.valid.sizes)))
    names = [n for n in data.valid.names if n in truth]
    if not names:
        raise InputError(f"{args.preprocessed}: no validation image has a true box; "
                         f"nothing to calibrate on")
    tune_rows, hold_rows = split_rows(len(names), args.holdout, args.seed)
    out = Path(args.out) if args.out is not None else Path(args.model).parent
    checkpoint = load_checkpoint(args.model)
    if checkpoint["input_size"] != data.geometry.input_size:  # the crops must be the model's
        raise InputError(f"{args.model}: trained at input size {checkpoint['input_size']}, but "
                         f"{args.preprocessed} holds images for {data.geometry.input_size}; "
                         f"calibrate on a folder of preprocessing.py --input-size "
                         f"{checkpoint['input_size']}")
    if checkpoint["resize"] != data.resize:  # localization resizes as the checkpoint says
        print(f"warning: {args.preprocessed} holds images resized with {data.resize!r}, but "
              f"{args.model} was trained on {checkpoint['resize']!r}; heatmaps will differ from "
              f"localization's", file=sys.stderr)
    thresholds, thresholds_from = model_dir.resolve_thresholds(args.thresholds, args.model,
                                                               checkpoint)
    columns = box_class_columns(checkpoint, args.model)
    thresholds = thresholds[columns]  # the 8 box classes', in CLASS_NAMES order
    tried = None
    if args.cam == "auto":
        hm, tried = auto_cam(args, checkpoint, data, names, out, columns, tune_rows, thresholds,
                             truth)
    else:
        hm = heatmaps_for(args, checkpoint, data, names, out, columns)
    if hm is None:  # another process under torchrun: rank 0 has every map and goes on
        distributed.close()
        raise SystemExit(0)
    args.cam = args.cam or DEFAULT_CAM
    print(f"{len(names)} validation images with true boxes ({len(tune_rows)} tuning, "
          f"{len(hold_rows)} held out); "
          f"thresholds from {thresholds_from}; method {args.method}, maps {args.cam}",
          file=sys.stderr)
    act = active(hm, thresholds)
    choices = tune(hm, tune_rows, act, truth, args.method)
    auto = args.method == boxes.PER_CLASS
    method = boxes.METHODS["peaks" if auto else args.method]  # auto: before = the original's
    table, params = tuned_table(choices), np.array([c.param for c in choices])
    rules, rect_scales = [c.method for c in choices], np.array([c.rect_scale for c in choices])
    base_table, base_params = (np.array(AVERAGE_BOXES, dtype=np.float64),
                               np.full(len(CLASS_NAMES), method.default))
    # the maps the search saw: localization takes its --cam and --layer from here by default
    record = {"method": args.method, "cam": args.cam,
              "layer": args.layer or CAM_METHODS[args.cam].default_layer, "images": len(names),
              "tuned_on": len(tune_rows), "held_out": len(hold_rows)}
    if tried is not None:
        record["auto"] = tried  # every candidate's tuned score; the winner is "cam"/"layer"
    for part, rows in (("tuning", tune_rows), ("holdout", hold_rows)):
        if not rows:
            continue
        before = full_report(hm, rows, act, truth, base_table, "peaks" if auto else args.method,
                             base_params)
        after = full_report(hm, rows, act, truth, table, rules, params, rect_scales)
        title = (f"original score on the {len(rows)} {part} images (evaluate.py, first "
                 f"{ORIGINAL_TOP_K} boxes per image): before = the original's table and "
                 f"{'peaks ' if auto else ''}{method.parameter} {method.default:g}; after = "
                 f"tuned{' (the rule of each class too)' if auto else ''}")
        print(format_comparison(title, before, after, choices,
                                "rule, parameter" if auto else method.parameter, auto))
        record[part] = {name: {"before": before["classes"][name]["original"]["score"],
                               "after": after["classes"][name]["original"]["score"]}
                        for name in CLASS_NAMES + (OVERALL,)}
    if not hold_rows:
        print(OPTIMISM)
    record["choices"] = {name: {"scale_w": c.scale_w, "scale_h": c.scale_h,
                                **({"method": c.method} if auto else {}),
                                boxes.METHODS[c.method].parameter: c.param, "note": c.note,
                                **({"rect_scale": c.rect_scale} if c.method in boxes.SIZE_FREE
                                   else {})}
                         for name, c in zip(CLASS_NAMES, choices)}
    path = out / model_dir.BOX_SIZES
    calibrated.write_box_sizes(path, table, method=args.method, params=params, calibration=record,
                              methods=rules if auto else None, rect_scales=rect_scales)
    print(f"wrote {path}")
    return record


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
