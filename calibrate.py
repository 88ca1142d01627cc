"""Tune box sizes and the box method's parameter on the validation images that have true boxes.

    python3 calibrate.py PREPROCESSED_DIR [--model model/best.pt] [--method peaks] [--out MODEL_DIR]

1. Heatmaps: for every validation image of valid_boxes.csv, the model's 8 probabilities and the
   Grad-CAM maps of all 8 classes, from the preprocessed valid_X.npy (the same 256 -> 224 centre crop
   that localization takes from the PNGs; no PNG is decoded again). They are saved as
   OUT/heatmaps.npz (np.savez, no pickle): key "IMAGE/CLASS" -> float16 (224, 224), and
   "IMAGE/probabilities" -> float32 (8,). `--heatmaps OUT/heatmaps.npz` re-runs the tuning from
   that file without the network.
2. A class is active on an image when its probability exceeds its threshold (thresholds.npy beside
   the model, as denseNet_localization.py decides). Per class, a grid search over the width and
   height multipliers of the class's average box (SCALES; each scaled about the box's centre, width
   on x = columns, height on y = rows) and the method's parameter (PARAM_GRIDS: the peaks method's
   keep fraction, or the threshold method's fraction of the map's maximum). The objective is the
   original project's score from evaluate.py (mean of the shares of predicted boxes with IoU > 0.25
   and IoU > 0.5), of the class's own lines (its average box, then its heatmap boxes) on the images
   where it is active; ties go to the higher mean IoU of those boxes, then to the earlier grid
   point (the defaults come first). A class with no true box, or no active image, keeps the
   defaults.
3. OUT/box_sizes.json (localize.write_box_sizes): the tuned average boxes, the tuned parameter per
   class for --method, and a record of the calibration. denseNet_localization.py reads it from
   beside its --model when no --bbox-list is given.
The score before (the original's table, the method's default) and after is printed per class on the
same images, with evaluate.py's full scoring (all classes together, first 10 boxes per image).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import boxes
import evaluate
import localize
import model as model_lib
import prepared
import transforms
from boxfile import Box
from common import InputError, atomic_path, run_cli, select_device
from constants import (AVERAGE_BOXES, CLASS_NAMES, CROP_SIZE, DEFAULT_TARGET_LAYER, PEAK_KEEP_FRACTION,
                       THRESHOLD_FRACTION)
from gradcam import GradCAM
from tables import TruthBox, boxes_by_image

HEATMAPS_FILE = "heatmaps.npz"
PROBS_KEY = "probabilities"  # heatmaps.npz: "IMAGE/probabilities" beside "IMAGE/CLASS"
# Multipliers of the average box's width and height, searched independently (9 x 9). 1.0 first: a
# tie keeps the table's size.
SCALES = (1.0, 0.5, 0.625, 0.75, 0.875, 1.25, 1.5, 1.75, 2.0)
# The method parameter's grid, its default first: a tie keeps the default.
PARAM_GRIDS = {
    "peaks": (PEAK_KEEP_FRACTION, 0.5, 0.6, 0.7, 0.8, 0.95),
    "threshold": (THRESHOLD_FRACTION, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9),
}
OPTIMISM = ("note: the parameters were tuned on these same images, so 'after' is optimistic; "
            "use --holdout to see them on images the search did not use")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("preprocessed", type=str, help="preprocessed folder (valid_X.npy, valid_boxes.csv)")
    p.add_argument("--model", type=str, default="model/best.pt", help="checkpoint (default: model/best.pt)")
    p.add_argument("--out", type=str, default=None,
                   help="folder for box_sizes.json and heatmaps.npz (default: the folder of --model, "
                        "where denseNet_localization.py looks)")
    p.add_argument("--method", type=str, default="peaks", choices=sorted(boxes.METHODS),
                   help="box method whose parameter is tuned (default: peaks)")
    p.add_argument("--thresholds", type=str, default=None,
                   help="a .npy of 8 probabilities or one number (default: thresholds.npy beside --model, "
                        "else the checkpoint's)")
    p.add_argument("--heatmaps", type=str, default=None,
                   help="a heatmaps.npz of an earlier run: tune from it without the network (default: None, "
                        "compute and save OUT/heatmaps.npz)")
    p.add_argument("--holdout", type=float, default=0.0,
                   help="fraction of the images kept out of the search and scored separately (default: 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --holdout split (default: 0)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16)")
    p.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--layer", type=str, default=DEFAULT_TARGET_LAYER,
                   help=f"Grad-CAM target layer (default: {DEFAULT_TARGET_LAYER})")
    return p


# ---------------------------------------------------------------- heatmaps

@dataclass
class Heatmaps:
    images: list[str]
    probs: np.ndarray  # float32 (N, C)
    maps: np.ndarray  # float16 (N, C, 224, 224), classes in CLASS_NAMES order


def compute_heatmaps(net: torch.nn.Module, stored: np.ndarray, names: list[str], device: torch.device,
                     batch_size: int, layer: str) -> Heatmaps:
    """uint8 (N, 256, 256) stored images -> probabilities and all classes' maps of their centre crops."""
    probs, maps = [], []
    net.to(device)
    with GradCAM(net, layer) as cam:
        for start in tqdm(range(0, len(names), batch_size), unit="batch", file=sys.stderr, desc="heatmaps"):
            crops = np.stack([transforms.center_crop(im) for im in stored[start:start + batch_size]])
            x = transforms.normalize(torch.from_numpy(crops).to(device))
            logits, batch_maps = cam.compute(x)
            probs.append(torch.sigmoid(logits.float()).cpu().numpy())
            maps.append(batch_maps.cpu().numpy().astype(np.float16))
    return Heatmaps(list(names), np.concatenate(probs), np.concatenate(maps))


def save_heatmaps(path: str | Path, hm: Heatmaps) -> None:
    arrays = {}
    for i, name in enumerate(hm.images):
        arrays[f"{name}/{PROBS_KEY}"] = hm.probs[i].astype(np.float32)
        for k, cls in enumerate(CLASS_NAMES):
            arrays[f"{name}/{cls}"] = hm.maps[i, k].astype(np.float16)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_heatmaps(path: str | Path) -> Heatmaps:
    """The inverse of save_heatmaps; every image must have its probabilities and all 8 maps."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read as heatmaps.npz ({err})") from None
    names = list(dict.fromkeys(key.rsplit("/", 1)[0] for key in arrays))
    try:
        probs = np.stack([arrays[f"{n}/{PROBS_KEY}"] for n in names]).astype(np.float32)
        maps = np.stack([[arrays[f"{n}/{c}"] for c in CLASS_NAMES] for n in names]).astype(np.float16)
    except KeyError as err:
        raise InputError(f"{path}: missing array {err}; write it with calibrate.py") from None
    if probs.shape[1:] != (len(CLASS_NAMES),) or maps.shape[2:] != (CROP_SIZE, CROP_SIZE):
        raise InputError(f"{path}: expected ({len(CLASS_NAMES)},) probabilities and "
                         f"({CROP_SIZE}, {CROP_SIZE}) maps, got {probs.shape[1:]} and {maps.shape[2:]}")
    if not (np.isfinite(probs).all() and np.isfinite(maps).all()):
        raise InputError(f"{path}: NaN/inf values in the probabilities or maps")
    return Heatmaps(names, probs, maps)


# ---------------------------------------------------------------- search

@dataclass
class Choice:
    scale_w: float
    scale_h: float
    param: float
    score: float | None  # the class's original score on the tuning images (None: no predicted box)
    mean_iou: float | None
    note: str = ""


def scaled_row(box: np.ndarray, scale_w: float, scale_h: float) -> np.ndarray:
    """An (x, y, w, h) box with w, h multiplied, about the same centre."""
    x, y, w, h = (float(v) for v in box)
    if scale_w == 1.0 and scale_h == 1.0:
        return np.array([x, y, w, h])  # exactly the table's numbers, no rounding through the centre
    return np.array([x + w / 2 - w * scale_w / 2, y + h / 2 - h * scale_h / 2, w * scale_w, h * scale_h])


def search_class(class_index: int, maps: dict[str, np.ndarray], truth: dict[str, list[TruthBox]],
                 base_box: np.ndarray, method: str, scales=SCALES, params=None) -> Choice:
    """Best (scale_w, scale_h, param) for one class. maps: image -> its (224, 224) heatmap on the images
    where the class is active; truth: those images' true boxes. Lines as boxes.class_boxes makes them."""
    m = boxes.METHODS[method]
    params = PARAM_GRIDS[method] if params is None else params
    label = CLASS_NAMES[class_index]
    best, best_key = Choice(1.0, 1.0, m.default, None, None), None
    for param in params:
        anchors = {name: m.locate(heatmap, param) for name, heatmap in maps.items()}
        for scale_w in scales:
            for scale_h in scales:
                x, y, w, h = scaled_row(base_box, scale_w, scale_h)
                preds = {name: [Box(label, x, y, w, h)] + [Box(label, *b) for b in m.place(a, (w, h))]
                         for name, a in anchors.items()}
                figures = evaluate.evaluate(preds, truth)["classes"][label]["original"]
                if figures["score"] is None:
                    continue
                key = (figures["score"], figures["mean_iou"])
                if best_key is None or key > best_key:
                    best, best_key = Choice(scale_w, scale_h, param, *key), key
    return best


def active(hm: Heatmaps, thresholds: np.ndarray) -> np.ndarray:
    """bool (N, C): the classes localization would draw on each image."""
    return hm.probs > thresholds[None, :]


def tune(hm: Heatmaps, rows: list[int], act: np.ndarray, truth: dict[str, list[TruthBox]],
         method: str) -> list[Choice]:
    """One Choice per class, searched on the images `rows` of hm."""
    default = boxes.METHODS[method].default
    choices = []
    for k, label in enumerate(tqdm(CLASS_NAMES, unit="class", file=sys.stderr, desc="search")):
        names = [hm.images[i] for i in rows]
        if not any(t.label == label for n in names for t in truth[n]):
            choices.append(Choice(1.0, 1.0, default, None, None, "no true box in the tuning images: defaults kept"))
            continue
        maps = {hm.images[i]: hm.maps[i, k].astype(np.float32) for i in rows if act[i, k]}
        if not maps:
            choices.append(Choice(1.0, 1.0, default, None, None, "not active on any tuning image: defaults kept"))
            continue
        choices.append(search_class(k, maps, {n: truth[n] for n in names}, np.array(AVERAGE_BOXES[k]), method))
    return choices


def tuned_table(choices: list[Choice]) -> np.ndarray:
    base = np.array(AVERAGE_BOXES, dtype=np.float64)
    return np.stack([scaled_row(base[k], c.scale_w, c.scale_h) for k, c in enumerate(choices)])


# ---------------------------------------------------------------- before / after

def full_report(hm: Heatmaps, rows: list[int], act: np.ndarray, truth: dict, table: np.ndarray,
                method: str, params: np.ndarray) -> dict:
    """evaluate.evaluate of the box lines localization would write for the images `rows`."""
    preds = {}
    for i in rows:
        lines = []
        for k in np.flatnonzero(act[i]):
            lines += boxes.class_boxes(int(k), hm.maps[i, k].astype(np.float32), table, method, float(params[k]))
        preds[hm.images[i]] = lines
    return evaluate.evaluate(preds, {hm.images[i]: truth[hm.images[i]] for i in rows})


def format_comparison(title: str, before: dict, after: dict, choices: list[Choice], parameter: str) -> str:
    """Per class: truth boxes, then before -> after of the predicted boxes, the score and their mean IoU."""
    lines = [title, f"{'class':<14}{'truth':>6}{'boxes':>10}{'score':>15}{'mean IoU':>15}{'w x':>7}{'h x':>7}"
             f"{parameter:>15}  note"]
    cell = lambda v: "-" if v is None else f"{v:.3f}"
    for name in CLASS_NAMES + (evaluate.OVERALL,):
        b, a = before["classes"][name]["original"], after["classes"][name]["original"]
        c = choices[CLASS_NAMES.index(name)] if name in CLASS_NAMES else None
        tuned = (f"{c.scale_w:>7g}{c.scale_h:>7g}{c.param:>15g}  {c.note}" if c else "")
        lines.append(f"{name:<14}{before['classes'][name]['truth_boxes']:>6}{b['boxes']:>4} ->{a['boxes']:>4}"
                     f"{cell(b['score']):>6} ->{cell(a['score']):>6}{cell(b['mean_iou']):>6} ->"
                     f"{cell(a['mean_iou']):>6}{tuned}")
    return "\n".join(lines)


def split_rows(n: int, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """(tuning rows, held-out rows): a seeded random `holdout` share of 0..n-1 is held out."""
    if not 0.0 <= holdout < 1.0:
        raise InputError(f"--holdout {holdout}: must be in [0, 1)")
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * holdout))
    if holdout > 0 and (cut == 0 or cut == n):
        raise InputError(f"--holdout {holdout}: {n} images cannot be split into two non-empty parts")
    return sorted(order[cut:].tolist()), sorted(order[:cut].tolist())


# ---------------------------------------------------------------- command line

def truth_of_valid(folder: str) -> dict[str, list[TruthBox]]:
    """valid_boxes.csv grouped by image (read_valid_boxes already turns a bad file into an InputError)."""
    return boxes_by_image([TruthBox(r["image"], r["label"], r["x"], r["y"], r["w"], r["h"])
                           for r in prepared.read_valid_boxes(folder)])


def heatmaps_for(args: argparse.Namespace, checkpoint: dict, data: prepared.Prepared, names: list[str],
                 out: Path) -> Heatmaps:
    """From --heatmaps, or computed with the model and saved as OUT/heatmaps.npz."""
    if args.heatmaps is not None:
        hm = load_heatmaps(args.heatmaps)
        missing = [n for n in names if n not in hm.images]
        if missing:
            raise InputError(f"{args.heatmaps}: no heatmaps for {len(missing)} validation images, "
                             f"the first: {missing[0]}")
        rows = [hm.images.index(n) for n in names]
        return Heatmaps(names, hm.probs[rows], hm.maps[rows])
    net = model_lib.model_from_checkpoint(checkpoint, source=args.model)
    if args.layer not in dict(net.named_modules()):
        raise InputError(f"--layer {args.layer}: not a layer of the model")
    index = {n: i for i, n in enumerate(data.valid.names)}
    stored = np.stack([data.valid.images[index[n]] for n in names])
    hm = compute_heatmaps(net, stored, names, select_device(args.device), args.batch_size, args.layer)
    save_heatmaps(out / HEATMAPS_FILE, hm)
    print(f"wrote {out / HEATMAPS_FILE}: {len(names)} images x {len(CLASS_NAMES)} classes")
    return hm


def main(args: argparse.Namespace) -> dict:
    if args.batch_size < 1:
        raise InputError(f"--batch-size {args.batch_size}: must be >= 1")
    data = prepared.load_prepared(args.preprocessed)
    truth = truth_of_valid(args.preprocessed)
    names = [n for n in data.valid.names if n in truth]
    if not names:
        raise InputError(f"{args.preprocessed}: no validation image has a true box; nothing to calibrate on")
    tune_rows, hold_rows = split_rows(len(names), args.holdout, args.seed)
    out = Path(args.out) if args.out is not None else Path(args.model).parent
    checkpoint = model_lib.load_checkpoint(args.model)
    thresholds, thresholds_from = localize.resolve_thresholds(args.thresholds, args.model, checkpoint)
    print(f"{len(names)} validation images with true boxes ({len(tune_rows)} tuning, {len(hold_rows)} held out); "
          f"thresholds from {thresholds_from}; method {args.method}", file=sys.stderr)
    hm = heatmaps_for(args, checkpoint, data, names, out)
    act = active(hm, thresholds)
    choices = tune(hm, tune_rows, act, truth, args.method)
    method = boxes.METHODS[args.method]
    table, params = tuned_table(choices), np.array([c.param for c in choices])
    base_table, base_params = np.array(AVERAGE_BOXES, dtype=np.float64), np.full(len(CLASS_NAMES), method.default)
    record = {"method": args.method, "images": len(names), "tuned_on": len(tune_rows), "held_out": len(hold_rows)}
    for part, rows in (("tuning", tune_rows), ("holdout", hold_rows)):
        if not rows:
            continue
        before = full_report(hm, rows, act, truth, base_table, args.method, base_params)
        after = full_report(hm, rows, act, truth, table, args.method, params)
        title = (f"original score on the {len(rows)} {part} images (evaluate.py, first "
                 f"{evaluate.ORIGINAL_TOP_K} boxes per image): before = the original's table and "
                 f"{method.parameter} {method.default:g}; after = tuned")
        print(format_comparison(title, before, after, choices, method.parameter))
        record[part] = {name: {"before": before["classes"][name]["original"]["score"],
                               "after": after["classes"][name]["original"]["score"]}
                        for name in CLASS_NAMES + (evaluate.OVERALL,)}
    if not hold_rows:
        print(OPTIMISM)
    record["choices"] = {name: {"scale_w": c.scale_w, "scale_h": c.scale_h, method.parameter: c.param,
                                "note": c.note} for name, c in zip(CLASS_NAMES, choices)}
    path = out / localize.BOX_SIZES_FILE
    localize.write_box_sizes(path, table, method=args.method, params=params, calibration=record)
    print(f"wrote {path}")
    return record


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
