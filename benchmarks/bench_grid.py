"""The known-truth benchmark's grid: every CAM method x every box rule, each with its controls,
scored from the heatmaps that denseNet_localization.py --save-heatmaps wrote (one localization run
per CAM method; the box rules run here on the saved maps), and the table over several seeds.

Per (cam, rule), Wang et al.'s accuracy at IoU > T of the heatmap boxes alone (no average box),
and of three controls built from the same boxes: at random positions (chance), x/y swapped and the
crop offset dropped (wrong geometry). The size-taking rule (peaks) sizes its boxes with the
validation images' average box, as calibration would; the others take no size from any table.
Per cam: the pointing game (and with each map transposed, its wrong-geometry control), the IoU of
the map above half its maximum, and seconds per image of its localization run. These count an
(image, truth class) pair whose class the classifier left inactive as a miss (no map), the end to
end figure; `mapped` is the share of pairs that have a map, their ceiling. Where the maps of every
class were also made (localization with --thresholds -1), the pointing game of each truth class's
own map, the classifier's decision aside: Zhang et al.'s protocol (`pointing_truth_classes`).
The row PER_CLASS takes, for each class, the rule whose boxes scored best on the validation
images' maps (pick_rules: chosen without the test images, as calibrate.py --method auto chooses),
PER_CLASS_TUNED the best rule and parameter there, PER_CLASS_SCALED the best rule, parameter and
rectangle scale (calibration.RECT_SCALES, as calibrate.py searches it).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from chexnet import boxes, scoring
from chexnet.boxfile import Box
from chexnet.calibration import PARAM_GRIDS, RECT_SCALES
from chexnet.heatmap_file import read_heatmaps
from chexnet.utils import InputError

RANDOM_DRAWS = 20  # random placements averaged for the chance control

# The CAM variants the benchmark localizes with: name -> (--cam, --layer; None: the method's own,
# --tta). denseblock2 ends at 28x28 (8 px of the 224 crop), denseblock3 at 14x14, the default layer
# and denseblock4 at 7x7; '+' fuses layers (LayerCAM's multi-layer maps, gradcam.py); '-flip'
# averages each map with its mirrored crop's, flipped back (--tta flip); layercam-shortcut fuses
# db2 + db3 with db2's gradient along the dense block's identity shortcut (gradcam.py).
DENSEBLOCK2, DENSEBLOCK3 = "features.denseblock2", "features.denseblock3"
DENSEBLOCK4 = "features.denseblock4"
CAM_VARIANTS = {
    "gradcam": ("gradcam", None, "none"), "gradcam++": ("gradcam++", None, "none"),
    "layercam": ("layercam", None, "none"), "cam": ("cam", None, "none"),
    "layercam@db3": ("layercam", DENSEBLOCK3, "none"),
    "layercam@db3+db4": ("layercam", f"{DENSEBLOCK3},{DENSEBLOCK4}", "none"),
    "gradcam@db3+db4": ("gradcam", f"{DENSEBLOCK3},{DENSEBLOCK4}", "none"),
    "layercam@db2": ("layercam", DENSEBLOCK2, "none"),
    "layercam@db2+db3": ("layercam", f"{DENSEBLOCK2},{DENSEBLOCK3}", "none"),
    "layercam@db2+db3+db4": ("layercam", f"{DENSEBLOCK2},{DENSEBLOCK3},{DENSEBLOCK4}", "none"),
    "layercam-shortcut": ("layercam-shortcut", None, "none"),  # db2 + db3 along the shortcut
    "gradcam-flip": ("gradcam", None, "flip"),
    "layercam@db3-flip": ("layercam", DENSEBLOCK3, "flip"),
    "layercam@db2+db3-flip": ("layercam", f"{DENSEBLOCK2},{DENSEBLOCK3}", "flip"),
}
SHOWN_T = ("0.1", "0.25", "0.5")
# The grid's rows chosen per class on the validation maps: each class's best rule at its default
# parameter, its best rule and parameter (calibration.PARAM_GRIDS, calibrate.py's grid), and its
# best rule, parameter and rectangle scale.
PER_CLASS, PER_CLASS_TUNED, PER_CLASS_SCALED = "per-class", "per-class-tuned", "per-class-scaled"
PICKED_ROWS = ((PER_CLASS, False, False), (PER_CLASS_TUNED, True, False),
               (PER_CLASS_SCALED, True, True))  # (row, tune the parameter, scale the rectangles)
PICK_T = "0.25"  # pick_rules' objective: accuracy at IoU > 0.25 (then the mean IoU)
SHORT = {"Pneumonia": "Pnia", "Pneumothorax": "Pnth"}  # their first four letters are the same


def short(label: str) -> str:
    """A class's column name in the table: its first four letters (Pneumonia/-thorax apart)."""
    return SHORT.get(label, label[:4])


def heatmap_boxes(saved, rule: str | dict[str, tuple], average: dict[str, np.ndarray], classes,
                  located: dict | None = None) -> dict[str, list[Box]]:
    """image name -> the boxes `rule` makes from each saved map of a planted class (no average
    box); rule: one of boxes.METHODS at its default parameter, or {class: (rule, parameter;
    None: the rule's default[, rectangle scale])}. located: a cache of each map's anchors by
    (map, rule, parameter), kept by the caller across calls (the scales share them)."""
    preds: dict[str, list[Box]] = {}
    located = {} if located is None else located
    for i, (image, label, heatmap) in enumerate(zip(saved.images, saved.labels, saved.maps)):
        preds.setdefault(scoring.image_key(image), [])
        if label in classes:
            size = (float(average[label][2]), float(average[label][3]))
            method, param, *scale = rule[label] if isinstance(rule, dict) else (rule, None)
            m = boxes.METHODS[method]
            if (i, method, param) not in located:
                located[i, method, param] = m.locate(heatmap, m.default if param is None else param)
            anchors = located[i, method, param]
            preds[scoring.image_key(image)] += [
                Box(label, *xywh) for xywh in boxes.heatmap_boxes(method, anchors, size, *scale)]
    return preds


def pick_rules(saved, truth: dict, names: list[str], average: dict, classes, score,
               tune: bool = False, scale: bool = False) -> dict[str, tuple]:
    """{class: (rule, parameter[, rectangle scale])}: per class, the rule of boxes.METHODS (at
    its default parameter, None; tune: at each parameter of calibration.PARAM_GRIDS too; scale:
    and for a size-free rule at each of calibration.RECT_SCALES) whose heatmap boxes on these (the
    validation) images reach the highest accuracy at IoU > PICK_T, then the highest mean IoU; a
    tie goes to the earlier candidate, peaks (the original's) and the defaults first, and a class
    with no box or no map there keeps peaks."""
    order = list(boxes.METHODS)  # peaks, the original's, first
    candidates = [(r, p) for r in order for p in (PARAM_GRIDS[r] if tune else (None,))]
    if scale:
        candidates = [(r, p, s) for r, p in candidates
                      for s in (RECT_SCALES if r in boxes.SIZE_FREE else (1.0,))]
    keys, located = [], {}
    for candidate in candidates:
        heat = heatmap_boxes(saved, dict.fromkeys(classes, candidate), average, classes, located)
        heat.update({n: [] for n in names if n not in heat})
        figures = score(heat, {n: truth[n] for n in names if n in truth})
        keys.append({c: (figures[c]["acc_iou"][PICK_T] or 0.0, figures[c]["mean_iou"] or 0.0)
                     for c in classes})
    best = {c: max(range(len(candidates)), key=lambda i: (keys[i][c], -i)) for c in classes}
    return {c: candidates[i] for c, i in best.items()}


def map_figures(saved, truth: dict, names: list[str], every=None) -> dict:
    """Pointing game, its transposed-map control, the map IoU and the share of pairs with a map,
    overall and per class; with `every` (the maps of every class), also the pointing game of the
    truth classes' own maps and its transposed control."""
    def class_figures(heatmaps, scored):
        """score_maps' per-class figures of the maps, and of the maps transposed."""
        maps = {(scoring.image_key(i), l): m
                for i, l, m in zip(heatmaps.images, heatmaps.labels, heatmaps.maps)}
        plain = scoring.score_maps(maps, scored)["classes"]
        transposed = scoring.score_maps({k: m.T for k, m in maps.items()}, scored)["classes"]
        return plain, transposed
    scored = {k: v for k, v in truth.items() if k in names}
    plain, transposed = class_figures(saved, scored)
    out = {c: {"pointing": plain[c]["pointing"], "pointing_transposed": transposed[c]["pointing"],
               "map_iou": plain[c]["map_iou"], "pairs": plain[c]["pairs"],
               "mapped": plain[c]["with_map"] / plain[c]["pairs"] if plain[c]["pairs"] else None}
           for c in plain}
    if every is not None:
        plain, transposed = class_figures(every, scored)
        for c, figures in out.items():
            figures.update(pointing_truth_classes=plain[c]["pointing"],
                           pointing_truth_classes_transposed=transposed[c]["pointing"])
    return out


def check_same_model(saved, every, path: Path) -> None:
    """Raise unless the every-class maps come from the model and CAM of `saved`: the same cam and
    layer, and the same probability for each (image, class) pair both hold."""
    probs = {(i, l): p for i, l, p in zip(every.images, every.labels, every.probs)}
    mine = [(probs.get((i, l)), p) for i, l, p in zip(saved.images, saved.labels, saved.probs)]
    if ((every.cam, every.layer) != (saved.cam, saved.layer)
            or any(q is None or not np.isclose(q, p, atol=1e-5) for q, p in mine)):
        raise InputError(f"{path}: not the maps of the model and CAM that made the test maps "
                         f"(an earlier run's?); run the benchmark again")


def seconds_per_image(log: Path, images: int) -> float | None:
    """From denseNet_localization.py's last line: 'in S s (R images/s)' (network + boxes only)."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    found = re.findall(r"in ([0-9.]+) s \(", text)
    return float(found[-1]) / images if found and images else None


def score_grid(heatmaps: Path, truth: dict, names: list[str], average: dict, classes, seed: int,
               controls, valid: tuple[Path, dict, list[str]] | None = None,
               every_class: Path | None = None) -> dict:
    """{rule: {"heat", "random", "swapped", "no_offset": figures}} and the map figures, one cam.
    valid: (the validation images' heatmaps, their truth, their names): then also the rows of
    PICKED_ROWS, with what pick_rules chose there ("per_class_rules"). every_class: heatmaps of
    the same images with every class active, for the truth classes' pointing game."""
    saved = read_heatmaps(heatmaps)
    score, rng = controls["score"], np.random.default_rng(seed)
    rules: dict[str, str | dict] = {rule: rule for rule in sorted(boxes.METHODS)}
    picked = {}
    if valid is not None:
        valid_maps = read_heatmaps(valid[0])
        for name, tune, scale in PICKED_ROWS:
            picked[name] = pick_rules(valid_maps, valid[1], valid[2], average, classes, score,
                                      tune, scale)
            rules[name] = picked[name]
    grid = {}
    for name, rule in rules.items():
        heat = heatmap_boxes(saved, rule, average, classes)
        heat.update({n: [] for n in names if n not in heat})  # an image with no active class
        grid[name] = {
            "heat": score(heat, truth),
            "random": controls["mean"]([score(controls["random"](heat, rng), truth)
                                        for _ in range(RANDOM_DRAWS)]),
            "swapped": score(controls["each"](heat, controls["swap"]), truth),
            "no_offset": score(controls["each"](heat, controls["shift"]), truth),
        }
    every = read_heatmaps(every_class) if every_class is not None else None
    if every is not None:
        check_same_model(saved, every, every_class)
    result = {"rules": grid, "maps": map_figures(saved, truth, names, every)}
    if picked:
        # {row: {class: [rule, parameter or None(, rectangle scale)]}}, as benchmark.json holds it
        result["per_class_rules"] = {row: {c: list(rule) for c, rule in chosen.items()}
                                     for row, chosen in picked.items()}
    return result


# ---------------------------------------------------------------- the table, over seeds

def cells(seed_result: dict, cam: str, rule: str, classes) -> dict[str, float | None]:
    """The table's numbers for one seed, cam and rule."""
    g = seed_result["grid"][cam]["rules"][rule]
    ov = scoring.OVERALL
    out = {f"IoU>{t}": g["heat"][ov]["acc_iou"][t] for t in SHOWN_T}
    out.update({f"{short(c)}>.25": g["heat"][c]["acc_iou"]["0.25"] for c in classes})
    out["mIoU"] = g["heat"][ov]["mean_iou"]
    out.update({f"{k}>.25": g[key][ov]["acc_iou"]["0.25"]
                for k, key in (("rand", "random"), ("swap", "swapped"), ("noofs", "no_offset"))})
    maps = seed_result["grid"][cam]["maps"][ov]
    out.update({"point": maps["pointing"], "pt-T": maps["pointing_transposed"],
                "mapped": maps.get("mapped"), "pt-truth": maps.get("pointing_truth_classes"),
                "mapIoU": maps["map_iou"], "s/img": seed_result["seconds_per_image"].get(cam)})
    return out


def summarize(per_seed: list[dict], classes) -> dict:
    """{"cam / rule": {column: {"mean", "min", "max"}}} over the seeds (None where any is None)."""
    table = {}
    first = per_seed[0]
    for cam in first["grid"]:
        # the rows of every seed (a seed scored before the validation maps has no per-class rows)
        shared = set.intersection(*(set(r["grid"][cam]["rules"]) for r in per_seed))
        for rule in [r for r in first["grid"][cam]["rules"] if r in shared]:
            runs = [cells(r, cam, rule, classes) for r in per_seed]
            table[f"{cam} / {rule}"] = {
                k: (None if any(r[k] is None for r in runs) else
                    {"mean": float(np.mean([r[k] for r in runs])),
                     "min": float(min(r[k] for r in runs)), "max": float(max(r[k] for r in runs))})
                for k in runs[0]}
    return table


def format_summary(table: dict, seeds: list[int], markdown: bool = False) -> str:
    """One row per cam / rule: means, and [min-max] of the headline columns (all of them are in
    the JSON)."""
    columns = list(next(iter(table.values())))
    ranged = ({"IoU>0.1", "IoU>0.25", "IoU>0.5", "Nodu>.25", "point", "pt-truth"}
              if len(seeds) > 1 else set())

    def fmt(k, v):
        if v is None:
            return "-"
        digits = 3 if k == "s/img" else 2
        text = f"{v['mean']:.{digits}f}"
        return text + (f" [{v['min']:.2f}-{v['max']:.2f}]" if k in ranged else "")
    rows = [[name] + [fmt(k, v[k]) for k in columns] for name, v in table.items()]
    head = ["cam / box rule"] + columns
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [head] + rows) + "\n"
