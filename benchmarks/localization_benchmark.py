"""Localization with a known truth: the whole real chain on planted findings, against chance and wrong geometry.

    python3 benchmarks/localization_benchmark.py [--work DIR] [--quick] [--seeds 0 1 2] [--cams ...]

1. benchmarks/synthetic.py writes a ChestX-ray14-shaped dataset: real X-ray backgrounds with
   planted findings of the eight box classes whose boxes are known.
2. preprocessing.py, then train.py from random weights (image-level labels only) on the CPU:
   a warm-up at input 112, then 224 from its features (PRESETS says why).
3. denseNet_localization.py on test.txt, once per CAM method (--cams; --method peaks, box sizes
   from the validation images' boxes, as calibration would), each saving its heatmaps
   (--save-heatmaps); every box rule of boxes.METHODS then runs on those maps in this process
   (bench_grid: the method x rule table with its controls, the pointing game, time per image).
   The same on valid.txt gives the validation maps on which bench_grid.pick_rules chooses each
   class's rule: the grid's row "per-class", scored on the test images. --truth-class-cams
   localize test.txt once more with every class active (--thresholds -1), for the pointing game of
   each truth class's own map whatever the classifier decided (Zhang et al.'s protocol).
4. evaluate.py scores each box file (and its heatmaps) against the test images' planted boxes;
   for Grad-CAM + peaks, the original's chain, the same evaluator
   (its functions, in this process) then scores controls built from the same predictions:
   - heatmap boxes only: the box file minus the class's average box, which the original format
     writes first for every detected class whatever the heatmap says;
   - chance: those boxes placed at random positions (mean of several draws), and the average box alone;
   - wrong geometry: those boxes with x and y swapped, and with the +16 crop offset dropped
     ((x224 + 16) * 4 computed as x224 * 4, i.e. 64 px up and left in the 1024 image);
   - the planted boxes themselves (must score 1.0).
A correct chain localizes far above chance; the wrong geometries must fall to chance or below.
The figures go to stdout as a table and to WORK/benchmark.json. --seeds runs the whole chain once
per seed (WORK/seed_S) and reports the grid's mean and range over them; --seed S runs one.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python3 benchmarks/...`: the project modules live one up
    sys.path.insert(0, str(ROOT))

from chexnet import boxes  # noqa: E402
from chexnet import nih, scoring  # noqa: E402
from benchmarks import bench_grid, synthetic  # noqa: E402
from gradcam import DEFAULT_CAM  # noqa: E402
from benchmarks.bench_grid import CAM_VARIANTS  # noqa: E402
from chexnet.boxfile import Box, read_box_file  # noqa: E402
from chexnet.utils import InputError, run_cli, select_device, write_text_atomic  # noqa: E402
from chexnet.train_data import AMP_MODES  # noqa: E402
from chexnet.constants import CLASS_NAMES, CROP_OFFSET, RESCALE_FACTOR  # noqa: E402
from chexnet.model_dir import BEST, METRICS_LOG, read_metrics_log  # noqa: E402
from chexnet.nih import average_boxes, read_bbox_list, read_image_list  # noqa: E402

# Sizes for 2 CPU cores (docs/benchmark_eight_findings.md has the measured time), and a smoke
# version for the test suite. The model is trained from random weights, so a CPU gets only a few
# thousand image passes. The recipe that detects all eight findings in that time is progressive
# resizing: warm_epochs at input size warm_size (112: stored 128, about 3x cheaper a pass than
# 224), then `epochs` at 224 from those weights (train.py --weights PATH: the features; the head
# starts afresh), both with --loss-weight wang (positives weigh (P+N)/P: each class is positive
# in 3/16 of the images). The one-stage recipe of before, 10 epochs of 256 images at 224, left Mass
# at valid AUROC 0.31 on seed 0; 8 epochs of 512 at 224 (about the same time as this recipe)
# reached 0.74, this recipe 0.97 (the doc's "Training that detects"). The preset trains on 1024
# images in bf16 autocast (train.py --amp bf16: about twice as fast as fp32 on a CPU with AVX-512
# BF16 or AMX; --amp off elsewhere); 512 in fp32 (--n-train 512 --amp off, the tables before
# 2026-12-07) left Mass at 0.92 on seed 1. warm_epochs 0 trains in one stage at 224, as before.
# fine_size (0: none) adds a last stage, fine_epochs at that input size (448: 56x56 maps at
# denseblock2) from the final model, its head kept (train.py --keep-head).
FINE = {"fine_size": 0, "fine_epochs": 1, "fine_lr": 1e-4}
PRESETS = {
    "full": {"n_train": 1024, "n_valid": 64, "n_test": 48,
             "warm_size": 112, "warm_epochs": 16, "warm_lr": 1e-3,
             "input_size": 224, "epochs": 4, "lr": 5e-4, "warmup_epochs": 0.5,
             "repeats": 1, "batch_size": 16, "lr_schedule": "cosine", "loss_weight": "wang",
             "resize": "original", "amp": "bf16", **FINE},
    "quick": {"n_train": 8, "n_valid": 8, "n_test": 4,
              "warm_size": 112, "warm_epochs": 1, "warm_lr": 1e-3,
              "input_size": 224, "epochs": 1, "lr": 1e-3, "warmup_epochs": 0.0,
              "repeats": 1, "batch_size": 4, "lr_schedule": "cosine", "loss_weight": "wang",
              "resize": "original", "amp": "auto", **FINE},
    # for a GPU: the same recipe on thousands of images (our estimate from the CPU's step cost,
    # not a measurement: a few seconds of training per epoch on one H100-class GPU)
    "gpu": {"n_train": 4096, "n_valid": 512, "n_test": 512,
            "warm_size": 112, "warm_epochs": 16, "warm_lr": 1e-3,
            "input_size": 224, "epochs": 4, "lr": 5e-4, "warmup_epochs": 0.5,
            "repeats": 1, "batch_size": 64, "lr_schedule": "cosine", "loss_weight": "wang",
            "resize": "original", "amp": "auto", **FINE},
}
CLASSES = tuple(synthetic.PLANTED_CLASSES)
# The variants whose maps of every class are also made (a localization run more each): the
# original's and the recommended (docs/localization.md).
TRUTH_CLASS_CAMS = (DEFAULT_CAM, "layercam-shortcut")
SHOWN_T = ("0.1", "0.25", "0.5")  # Wang et al.'s IoU thresholds shown in the table
AVERAGE_TOLERANCE = 0.051  # the box file writes '%.1f': a box within this of the average box is it
SHIFT = CROP_OFFSET * RESCALE_FACTOR  # 64 px: the crop offset in the 1024 image


# ---------------------------------------------------------------- running the real scripts

def run_stage(name: str, cmd: list[str], work: Path, timings: dict[str, float]) -> None:
    """Run one script, its output streamed to WORK/logs/NAME.log; a failure raises with the log's tail."""
    log = work / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        returncode = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT).returncode
    timings[name] = round(time.perf_counter() - start, 1)
    if returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").replace("\r", "\n").splitlines()[-15:])
        raise RuntimeError(f"{name} failed (exit {returncode}); the end of {log}:\n{tail}")
    print(f"[{name}] done in {timings[name]:.0f} s (log: {log})", flush=True)


def write_subset(bbox_list: Path, names: list[str], out: Path) -> None:
    """The rows of the box table whose image is in `names` (same header), e.g. the test images' truth."""
    lines = bbox_list.read_text().splitlines()
    keep = set(names)
    write_text_atomic(out, "\n".join([lines[0]] + [l for l in lines[1:] if l.split(",")[0] in keep]) + "\n")


@dataclass
class Layout:
    """Where everything lives under WORK."""
    work: Path

    def __post_init__(self):
        self.data, self.prep, self.model = self.work / "data", self.work / "preprocessed", self.work / "model"
        self.warm_prep, self.warm_model = self.work / "preprocessed_warm", self.work / "model_warm"
        self.fine_prep, self.fine_model = self.work / "preprocessed_fine", self.work / "model_fine"
        self.bbox_valid, self.bbox_test = self.work / "bbox_valid.csv", self.work / "bbox_test.csv"

    def boxes(self, cam: str) -> Path:
        return self.work / f"boxes_{cam}.txt"

    def evaluation(self, cam: str) -> Path:
        return self.work / f"evaluation_{cam}"

    def heatmaps(self, cam: str) -> Path:
        return self.work / f"heatmaps_{cam}.npz"

    def valid_heatmaps(self, cam: str) -> Path:
        return self.work / f"heatmaps_valid_{cam}.npz"

    def every_class_heatmaps(self, cam: str) -> Path:
        return self.work / f"heatmaps_every_class_{cam}.npz"


def run_pipeline(at: Layout, p: dict, seed: int, device: str, timings: dict[str, float],
                 cams: list[str], reuse: bool = False,
                 truth_class_cams: tuple[str, ...] = ()) -> list[str]:
    """Every stage, each a real script in a subprocess; returns the CAM variants that ran.
    reuse: keep WORK's data, preprocessed folder and model when its best.pt exists.
    truth_class_cams: these also localize the test images with every class active (--thresholds
    -1), for the pointing game of each truth class's own map."""
    py, d = sys.executable, at.data
    trained = not (reuse and (at.model / BEST).is_file())
    if trained:
        train_model(at, p, seed, device, timings)
    model = at.fine_model if p.get("fine_size") else at.model  # the last stage's
    if p.get("fine_size") and not (reuse and (model / BEST).is_file()):
        fine_tune(at, p, seed, device, timings)
        trained = True
    if trained:  # maps an earlier model made (of variants this run skips) must not be scored
        for stale in at.work.glob("heatmaps_*.npz"):
            stale.unlink()
    write_subset(d / "BBox_List_2017.csv", read_image_list(d / "valid.txt"), at.bbox_valid)
    write_subset(d / "BBox_List_2017.csv", read_image_list(d / "test.txt"), at.bbox_test)
    for cam in cams:
        cmd = localize_cmd(at, model, cam, "test.txt", at.boxes(cam), at.heatmaps(cam), device)
        if cam == DEFAULT_CAM:  # pictures: the contact sheet and a few images, planted boxes in red
            cmd += ["--plots", str(at.work / "plots_peaks"), "--truth", str(at.bbox_test),
                    "--plot-images", "6", "--sheet-cell", "160"]
        run_stage(f"localize_{cam}", cmd, at.work, timings)
        evaluate = [py, "tools/evaluate.py", str(at.boxes(cam)), str(at.bbox_test),
                    "--out", str(at.evaluation(cam)), "--heatmaps", str(at.heatmaps(cam))]
        run_stage(f"evaluate_{cam}", evaluate, at.work, timings)
        # the validation images' maps, on which bench_grid.pick_rules chooses the per-class rules
        run_stage(f"localize_valid_{cam}", localize_cmd(
            at, model, cam, "valid.txt", at.work / f"boxes_valid_{cam}.txt", at.valid_heatmaps(cam),
            device), at.work, timings)
        every_class = at.every_class_heatmaps(cam)
        every_class.unlink(missing_ok=True)  # made by an earlier run, perhaps another model
        if cam in truth_class_cams:  # every class's map: the pointing game of the truth classes
            run_stage(f"localize_every_class_{cam}", localize_cmd(
                at, model, cam, "test.txt", at.work / f"boxes_every_class_{cam}.txt",
                every_class, device) + ["--thresholds", "-1"], at.work, timings)
    return cams


def localize_cmd(at: Layout, model: Path, cam: str, image_list: str, out: Path, heatmaps: Path,
                 device: str) -> list[str]:
    """denseNet_localization.py on DATA/image_list with the model folder's best.pt and the CAM
    variant `cam`, saving its maps."""
    method, layer, tta = CAM_VARIANTS[cam]
    cmd = [sys.executable, "denseNet_localization.py", str(at.data / image_list),
           str(at.data / "images"), "--model", str(model / BEST), "--bbox-list",
           str(at.bbox_valid), "--out", str(out), "--device", device, "--method", "peaks",
           "--cam", method, "--tta", tta, "--save-heatmaps", str(heatmaps)]
    return cmd + (["--layer", layer] if layer else [])


def train_model(at: Layout, p: dict, seed: int, device: str, timings: dict[str, float]) -> None:
    """The planted data set, preprocessing.py and train.py from random weights: with warm_epochs,
    first at input size warm_size, then at input_size (224; 448 for finer maps) from those
    weights. Localization follows the checkpoint's input size."""
    py, d = sys.executable, at.data
    run_stage("synthetic", [py, "benchmarks/synthetic.py", str(d), "--n-train", str(p["n_train"]),
                            "--n-valid", str(p["n_valid"]), "--n-test", str(p["n_test"]), "--seed", str(seed)],
              at.work, timings)
    tables = preprocessing_inputs(at)
    final = p.get("input_size", 224)  # 'original' pixels exist at 224 (stored 256) only
    run_stage("preprocessing", [py, "preprocessing.py", *tables, str(at.prep), "--quiet",
                                "--resize", p["resize"] if final == 224 else "area",
                                "--input-size", str(final)], at.work, timings)
    common = training_options(p, seed, device)
    weights = "none"
    if p["warm_epochs"]:  # the smaller input has no 'original' pixels (256 only): area
        run_stage("preprocessing_warm", [py, "preprocessing.py", *tables, str(at.warm_prep),
                                         "--quiet", "--resize", "area", "--input-size",
                                         str(p["warm_size"])], at.work, timings)
        run_stage("train_warm", [py, "train.py", str(at.warm_prep), "--out", str(at.warm_model),
                                 "--weights", "none", "--epochs", str(p["warm_epochs"]),
                                 "--lr", str(p["warm_lr"]), "--warmup-epochs", "1", *common],
                  at.work, timings)
        weights = str(at.warm_model / BEST)
    run_stage("train", [py, "train.py", str(at.prep), "--out", str(at.model), "--weights", weights,
                        "--epochs", str(p["epochs"]), "--lr", str(p["lr"]),
                        "--warmup-epochs", str(p["warmup_epochs"]), *common], at.work, timings)


def preset_precision(amp: str, device_type: str) -> str:
    """A preset's "bf16" where the hardware runs it natively: on CUDA train.py's auto (bf16
    where native, else fp16 with a scaler); on a CPU without AVX-512 BF16 or AMX, fp32 (auto)."""
    if amp != "bf16":
        return amp
    if device_type == "cuda":
        return "auto"
    import torch
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own
    return "bf16" if any(getattr(torch.cpu, n, lambda: False)() for n in probes) else "auto"


def preprocessing_inputs(at: Layout) -> list[str]:
    """preprocessing.py's five positional inputs for the planted data set."""
    d = at.data
    return [str(d / "images"), str(d / "Data_Entry_2017.csv"), str(d / "BBox_List_2017.csv"),
            str(d / "train.txt"), str(d / "valid.txt")]


def training_options(p: dict, seed: int, device: str) -> list[str]:
    """train.py's options every stage shares. --keep-no-finding: 'No Finding' images are every
    class's cleanest negatives."""
    return ["--repeats", str(p["repeats"]), "--batch-size", str(p["batch_size"]),
            "--lr-schedule", p["lr_schedule"], "--loss-weight", p["loss_weight"],
            "--seed", str(seed), "--device", device, "--keep-no-finding",
            "--amp", p.get("amp", "auto")]  # auto: fp32 on the CPU; settings of old runs lack it


def fine_tune(at: Layout, p: dict, seed: int, device: str, timings: dict[str, float]) -> None:
    """The last stage: fine_epochs at input fine_size from the final model, its head kept."""
    py = sys.executable
    run_stage("preprocessing_fine", [py, "preprocessing.py", *preprocessing_inputs(at),
                                     str(at.fine_prep), "--quiet", "--resize", "area",
                                     "--input-size", str(p["fine_size"])], at.work, timings)
    run_stage("train_fine", [py, "train.py", str(at.fine_prep), "--out", str(at.fine_model),
                             "--weights", str(at.model / BEST), "--keep-head",
                             "--epochs", str(p["fine_epochs"]), "--lr", str(p["fine_lr"]),
                             *training_options(p, seed, device)], at.work, timings)


# ---------------------------------------------------------------- controls built from the predictions

Preds = dict[str, list[Box]]  # image name -> boxes, as evaluate.predictions_by_image returns them


def load_preds(path: Path) -> Preds:
    return scoring.predictions_by_image(path, read_box_file(path))


def each_box(preds: Preds, change: Callable[[Box], Box]) -> Preds:
    return {name: [change(b) for b in boxes] for name, boxes in preds.items()}


def swap_xy(b: Box) -> Box:
    return Box(b.label, b.y, b.x, b.h, b.w)


def drop_crop_offset(b: Box) -> Box:
    return Box(b.label, b.x - SHIFT, b.y - SHIFT, b.w, b.h)


def heatmap_only(preds: Preds, average: dict[str, np.ndarray]) -> tuple[Preds, int]:
    """The predictions minus every box equal to its class's average box; and how many went."""
    out, removed = {}, 0
    for name, image_boxes in preds.items():
        keep = [b for b in image_boxes if b.label not in average
                or np.abs(np.array([b.x, b.y, b.w, b.h]) - average[b.label]).max() > AVERAGE_TOLERANCE]
        removed += len(image_boxes) - len(keep)
        out[name] = keep
    return out, removed


def average_only(preds: Preds, average: dict[str, np.ndarray]) -> Preds:
    """One box per class that the pipeline detected in an image: the class's average box."""
    return {name: [Box(label, *average[label]) for label in dict.fromkeys(b.label for b in boxes)
                   if label in average] for name, boxes in preds.items()}


def random_positions(preds: Preds, rng: np.random.Generator) -> Preds:
    """The same boxes (class, size) at uniformly random places inside the network's field of view."""
    lo, hi = synthetic.FIELD

    def move(b: Box) -> Box:
        w, h = min(b.w, hi - lo), min(b.h, hi - lo)
        return Box(b.label, rng.uniform(lo, hi - w), rng.uniform(lo, hi - h), w, h)
    return each_box(preds, move)


def planted(truth: dict) -> Preds:
    return {name: [Box(t.label, t.x, t.y, t.w, t.h) for t in boxes] for name, boxes in truth.items()}


# ---------------------------------------------------------------- scoring

def figures(classes: dict) -> dict:
    """The evaluator's per-class report cut to what the benchmark shows, for CLASSES and overall."""
    return {c: {"truth_boxes": classes[c]["truth_boxes"], "acc_iou": dict(classes[c]["acc_iou"]),
                "acc_iobb": dict(classes[c]["acc_iobb"]), "mean_iou": classes[c]["mean_iou"]}
            for c in CLASSES + (scoring.OVERALL,)}


def score(preds: Preds, truth: dict) -> dict:
    return figures(scoring.score_boxes(preds, truth)["classes"])


def mean_figures(runs: list[dict]) -> dict:
    """The element-wise mean of several figures() dicts (a None anywhere stays None)."""
    def mean(values):
        return None if any(v is None for v in values) else float(np.mean(values))
    out = {}
    for c, first in runs[0].items():
        out[c] = {"truth_boxes": first["truth_boxes"], "mean_iou": mean([r[c]["mean_iou"] for r in runs])}
        for key in ("acc_iou", "acc_iobb"):
            out[c][key] = {t: mean([r[c][key][t] for r in runs]) for t in first[key]}
    return out


CONTROLS = {"score": score, "mean": mean_figures, "random": random_positions, "each": each_box,
            "swap": swap_xy, "shift": drop_crop_offset}


def score_all(at: Layout, cams: list[str], seed: int) -> dict:
    """The original chain's rows (Grad-CAM + peaks as written), chance, the oracle, and the grid."""
    test_names = read_image_list(at.data / "test.txt")
    truth = nih.read_truth_by_image(at.bbox_test)
    table = average_boxes(read_bbox_list(at.bbox_valid))  # (8, 4), the sizes the localizer used
    average = {c: table[CLASS_NAMES.index(c)] for c in CLASSES}
    base = cams[0] if DEFAULT_CAM not in cams else DEFAULT_CAM
    preds = load_preds(at.boxes(base))
    cli = json.loads((at.evaluation(base) / "evaluation.json").read_text())
    as_written = score(preds, truth)
    if json.loads(json.dumps(as_written)) != figures(cli["classes"]):
        raise RuntimeError(f"{at.boxes(base)}: in-process scores differ from evaluate.py's "
                           f"evaluation.json")
    heat, removed = heatmap_only(preds, average)
    rows = {f"{base} + peaks: box file as written": as_written,
            f"{base} + peaks: heatmap boxes only": score(heat, truth),
            "chance: class average box": score(average_only(preds, average), truth),
            "planted boxes (oracle)": score(planted(truth), truth)}
    valid_truth, valid_names = (nih.read_truth_by_image(at.bbox_valid),
                                read_image_list(at.data / "valid.txt"))
    grid = {cam: bench_grid.score_grid(
        at.heatmaps(cam), truth, test_names, average, CLASSES, seed, CONTROLS,
        (at.valid_heatmaps(cam), valid_truth, valid_names) if at.valid_heatmaps(cam).is_file()
        else None, at.every_class_heatmaps(cam) if at.every_class_heatmaps(cam).is_file()
        else None) for cam in cams}
    logs = at.work / "logs"
    seconds = {cam: bench_grid.seconds_per_image(logs / f"localize_{cam}.log", len(test_names))
               for cam in cams}
    return {"test_images": len(test_names), "test_images_with_findings": len(truth),
            "average_boxes": {c: [round(float(v), 1) for v in average[c]] for c in CLASSES},
            "average_boxes_removed": {base: removed}, "rows": rows, "grid": grid,
            "seconds_per_image": seconds}


def training_log(at: Layout) -> list[dict]:
    """train.py's metrics.jsonl, one dict per epoch: the warm-up stage's first (stage "warm"),
    then the final model's (stage "final")."""
    epochs = []
    for stage, folder in (("warm", at.warm_model), ("final", at.model), ("fine", at.fine_model)):
        path = folder / METRICS_LOG
        epochs += [{**e, "stage": stage} for e in (read_metrics_log(path) if path.is_file() else [])]
    return epochs


# ---------------------------------------------------------------- report

def _cell(v) -> str:
    return "    -" if v is None else f"{v:5.2f}"


def format_table(result: dict) -> str:
    rows = result["rows"]
    counts = next(iter(rows.values()))
    name_w = max(len(r) for r in rows) + 2
    groups = CLASSES + (scoring.OVERALL,)
    head1 = " " * name_w + "".join(f"{c} ({counts[c]['truth_boxes']})".ljust(19) for c in groups) + "mean IoU"
    head2 = "IoU > T:".ljust(name_w) + "".join(" ".join(t.rjust(5) for t in SHOWN_T).ljust(19) for _ in groups)
    lines = [f"Wang et al. localization accuracy on {result['test_images_with_findings']} test images with "
             f"planted findings (truth boxes per class in brackets)", head1, head2]
    for name, fig in rows.items():
        cells = "".join(" ".join(_cell(fig[c]["acc_iou"][t]) for t in SHOWN_T).ljust(19) for c in groups)
        lines.append(name.ljust(name_w) + cells + _cell(fig[scoring.OVERALL]["mean_iou"]))
    for cam, grid in result.get("grid", {}).items():
        for row, chosen in grid.get("per_class_rules", {}).items():
            lines.append(f"{cam} / {row}: chosen on the validation maps: " + ", ".join(
                f"{bench_grid.short(c)} {r}" + ("" if p is None else f" {p:g}")
                + ("" if not scale or scale[0] == 1.0 else f" x{scale[0]:g}")
                for c, (r, p, *scale) in chosen.items()))
    for epoch in result.get("training", []):
        auroc = ", ".join(f"{c} {_cell(epoch['auroc'].get(c)).strip()}" for c in CLASSES)
        lines.append(f"train {epoch.get('stage', 'final')} epoch {epoch['epoch']}: train loss {epoch['train_loss']:.3f}, "
                     f"valid loss {epoch['valid_loss']:.3f}, valid AUROC {auroc}")
    if result.get("timings"):
        lines.append("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result["timings"].items()))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- command line

def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Known-truth localization benchmark: planted findings, the real "
                                     "scripts end to end, accuracy against chance and against a wrong geometry.")
    parser.add_argument("--work", type=str, default="output/benchmark",
                        help="working folder for the data, model, box files and benchmark.json "
                             "(default: output/benchmark)")
    parser.add_argument("--preset", type=str, default="full", choices=list(PRESETS),
                        help="sizes and training: full (2 CPU cores, minutes), quick (a smoke test), "
                             "gpu (thousands of images, for a GPU) (default: full)")
    parser.add_argument("--quick", action="store_true", help="the same as --preset quick")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of training (default: 0)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="run the chain once per seed (WORK/seed_S) and report mean and range "
                             "(default: None, the one --seed)")
    parser.add_argument("--cams", type=str, nargs="+", default=list(CAM_VARIANTS),
                        choices=list(CAM_VARIANTS),
                        help="CAM variants, a method at its default layer or at the layers named "
                             f"after @ (bench_grid.CAM_VARIANTS) (default: all: "
                             f"{' '.join(CAM_VARIANTS)})")
    parser.add_argument("--truth-class-cams", type=str, nargs="*", default=list(TRUTH_CLASS_CAMS),
                        choices=list(CAM_VARIANTS),
                        help="of --cams, those that also localize the test images with every "
                             "class active, for the pointing game of the truth classes' own maps "
                             f"(Zhang et al.'s protocol) (default: {' '.join(TRUTH_CLASS_CAMS)})")
    parser.add_argument("--reuse-model", action="store_true",
                        help="keep the data and the model that WORK already holds (its "
                             "model/best.pt; with --fine-size also model_fine/best.pt, else that "
                             "stage runs on the kept model): localize and score again (default: "
                             "off)")
    for key, kind in (("n_train", int), ("n_valid", int), ("n_test", int), ("warm_size", int),
                      ("warm_epochs", int), ("warm_lr", float), ("input_size", int),
                      ("epochs", int), ("repeats", int),
                      ("batch_size", int), ("lr", float), ("lr_schedule", str),
                      ("warmup_epochs", float), ("loss_weight", str), ("resize", str),
                      ("fine_size", int), ("fine_epochs", int), ("fine_lr", float)):
        parser.add_argument(f"--{key.replace('_', '-')}", type=kind, default=None,
                            help=f"override the preset's {key} (default: the preset's)")
    parser.add_argument("--amp", type=str, default=None, choices=AMP_MODES,
                        help="train.py --amp of every stage (default: the preset's: full's bf16 "
                             "where the CPU or GPU has it natively, else train.py's auto)")
    parser.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--rescore", action="store_true",
                        help="run no script; score the box files already in --work again, keeping the settings and "
                             "timings recorded in its benchmark.json (default: off)")
    return parser


def run_seed(work: Path, settings: dict, seed: int, args: argparse.Namespace) -> dict:
    """One seed's chain (--rescore: its existing files) scored into WORK/benchmark.json."""
    at, timings = Layout(work.resolve()), {}
    previous = at.work / "benchmark.json"
    old = json.loads(previous.read_text()) if previous.is_file() else None
    if args.rescore:
        cams = [c for c in CAM_VARIANTS if at.heatmaps(c).is_file()]
        if not cams:
            raise InputError(f"{at.work}: no heatmaps_*.npz to rescore; run without --rescore")
        if old:  # the settings and timings are those of the runs that made the files
            settings, timings = old["settings"], old["timings"]
    else:
        reuse = args.reuse_model and (at.model / BEST).is_file()
        if reuse and old:  # the model's settings and the stages that made it; this run's fine
            settings = {**old["settings"], **{k: settings[k] for k in FINE}}  # stage
            timings = dict(old["timings"])
        skipped = sorted(set(args.truth_class_cams) - set(args.cams))
        if skipped:
            print(f"note: --truth-class-cams {' '.join(skipped)} not in --cams: no truth-class "
                  f"pointing game for them", flush=True)
        run_pipeline(at, settings, seed, args.device, timings, list(args.cams), reuse,
                     tuple(args.truth_class_cams))
        # reusing the model: also the variants whose maps earlier runs made with it
        cams = [c for c in CAM_VARIANTS
                if c in args.cams or (reuse and at.heatmaps(c).is_file())]
    result = score_all(at, cams, seed)
    result.update({"settings": settings, "seed": seed, "cams": cams, "rules": sorted(boxes.METHODS),
                   "training": training_log(at), "timings": timings})
    write_text_atomic(at.work / "benchmark.json", json.dumps(result, indent=1) + "\n")
    return result


def main(args: argparse.Namespace) -> dict:
    settings = dict(PRESETS["quick" if args.quick else args.preset])
    settings.update({k: getattr(args, k) for k in settings if getattr(args, k) is not None})
    if args.amp is None and not args.rescore:
        device_type = select_device(args.device).type
        amp = preset_precision(settings["amp"], device_type)
        if amp != settings["amp"] and device_type == "cpu":
            print("note: this CPU has no native bf16 (AVX-512 BF16 or AMX): training in fp32, "
                  "about twice the time of the preset's bf16", flush=True)
        settings["amp"] = amp
    work = Path(args.work)
    if args.seeds is None:
        result = run_seed(work, settings, args.seed, args)
        print(format_table(result), end="")
        summary = bench_grid.summarize([result], CLASSES)
        print(bench_grid.format_summary(summary, [args.seed]), end="")
        print(f"wrote {work / 'benchmark.json'}")
        return result
    per_seed = [run_seed(work / f"seed_{s}", settings, s, args) for s in args.seeds]
    summary = bench_grid.summarize(per_seed, CLASSES)
    result = {"seeds": args.seeds, "settings": settings, "summary": summary,
              "per_seed": {str(s): r["rows"] for s, r in zip(args.seeds, per_seed)}}
    write_text_atomic(work / "benchmark.json", json.dumps(result, indent=1) + "\n")
    for s, r in zip(args.seeds, per_seed):
        print(f"seed {s}:\n{format_table(r)}", end="")
    print(f"mean over seeds {args.seeds} ([min-max] where shown):")
    print(bench_grid.format_summary(summary, args.seeds), end="")
    print(f"wrote {work / 'benchmark.json'}")
    return result


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
