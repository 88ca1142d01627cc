"""Localize findings in chest X-rays: denseNet_localization.py TEST_TXT IMAGES | IMAGE | FOLDER.

For every image of TEST_TXT (read from IMAGES), or one image file, or every image file of a folder
(PNG, JPEG, TIFF, DICOM; any size of at least 256 px a side): the probabilities of the checkpoint's
classes (8 or 14, by the names it carries), the active classes (probability > the class's
threshold), a heatmap per active box class (--cam, default Grad-CAM, the original's; the 8 classes
of the box table, found by name), then boxes: per active box class in the box table's class order,
the class's average box (unless --no-average-box), then the boxes its heatmap gives (--method
peaks, the original's: one box of the average size per strong peak; or threshold, percentile,
otsu: regions of the map, no size from any table). Writes bounding_box.txt: per image
`[IMAGES/name] [count]`, then `[disease] [x] [y] [width] [height]` lines, '%.1f', in pixels of the
image itself (x = (col + 16) * W / 256: a 1024x1024 image gives the original's numbers). Given an
image or a folder, it also prints one line per image: the classes above threshold, with their
probabilities. The input size is the checkpoint's (train.py --input-size; 448: each image resized to
512, its 448 centre crop); the maps are 224 x 224 on the crop at any size, so the boxes map alike.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from chexnet import boxes, calibrated, distributed, localize, model_dir, nih, xray_files
from chexnet.boxfile import ImageBoxes, write_box_file
from chexnet.constants import CLASS_NAMES, DEFAULT_TARGET_LAYER, LOCALIZATION_BATCH_SIZE
from chexnet.heatmap_file import SavedHeatmaps, write_heatmaps
from chexnet.images import RESIZE_METHODS, check_images_exist, image_paths
from chexnet.probs import write_probs_csv
from chexnet.utils import InputError, atomic_folder, run_cli, select_device, usable_cpus
from chexnet.cam_base import TTA as CAM_TTA
from gradcam import DEFAULT_CAM, FINAL_FEATURES, METHODS as CAM_METHODS
from model import load_checkpoint, model_from_checkpoint

DEFAULT_WORKERS = min(4, usable_cpus())


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("test_txt", type=str,
                   help="list of image names, one a line (TEST_TXT); or one image file (PNG, JPEG, "
                        "TIFF, DICOM), or a folder of them, whose paths the box file then names")
    p.add_argument("images", type=str, nargs="?", default=None,
                   help="with TEST_TXT: folder of the images (IMAGES); output paths are "
                        "IMAGES/name, or where beneath IMAGES it lies (default: None; required "
                        "with a list, refused with an image or a folder)")
    p.add_argument("--model", type=str, default=model_dir.DEFAULT_MODEL,
                   help=f"checkpoint (ours, or the original's .pkl) "
                        f"(default: {model_dir.DEFAULT_MODEL}, "
                        f"where train.py writes)")
    p.add_argument("--thresholds", type=str, default=None,
                   help="a .npy of one probability per class, or one number for every class "
                        "(default: thresholds.npy beside --model, else the checkpoint's own)")
    p.add_argument("--bbox-list", type=str, default=None,
                   help="BBox_List_2017.csv: box sizes = its per-class mean boxes (default: "
                        "box_sizes.json beside --model if present, with the box method's per-class "
                        "parameters that calibrate.py tuned, else the original's table)")
    p.add_argument("--size-images", type=str, nargs="+", default=None, metavar="LIST",
                   help="with --bbox-list: average only the boxes of the images of these lists "
                        "(the training and validation lists: box sizes that never see the test "
                        "images) "
                        "(default: None, every box of the table, test images included, as the "
                        "original averaged all 984)")
    p.add_argument("--size-fallback", type=str, default="none", choices=calibrated.SIZE_FALLBACKS,
                   help="with --size-images, a class with no box among the lists' images: none "
                        "stops with an error; all takes its mean over every box of --bbox-list, "
                        "test images included (NOT leak-free) (default: none)")
    p.add_argument("--out", type=str, default="bounding_box.txt",
                   help="box file to write (default: bounding_box.txt in the working folder)")
    p.add_argument("--probs", type=str, default=None,
                   help="also write this CSV: header image,<class names>, one row per image with "
                        "every class's probability, from the same forward pass (default: None)")
    p.add_argument("--method", type=str, default=None,
                   choices=sorted(boxes.METHODS) + [boxes.PER_CLASS],
                   help="how heatmaps become boxes: peaks, the original's heuristic, or the "
                        "rectangles of the map's regions above a fraction of its maximum "
                        "(threshold), a percentile of its values (percentile) or Otsu's "
                        "threshold (otsu); auto: each class's rule as tools/calibrate.py "
                        "--method auto chose it (box_sizes.json beside --model); each "
                        "active class opens with its average box (default: the method "
                        "box_sizes.json beside --model was calibrated for, else peaks)")
    p.add_argument("--no-average-box", action="store_true",
                   help="heatmap boxes only: no class opens with its average box, whose size "
                        "comes from a box table; with --method threshold, percentile or otsu no "
                        "box then takes any size from the truth (with auto, the classes whose "
                        "rule is peaks still do) (default: off, the original's lines)")
    p.add_argument("--batch-size", type=int, default=LOCALIZATION_BATCH_SIZE,
                   help=f"images per forward pass (default: {LOCALIZATION_BATCH_SIZE})")
    p.add_argument("--device", type=str, default="auto",
                   help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                   help=f"image-decoding processes; 0 decodes in the main process (default: "
                        f"min(4, CPUs) = {DEFAULT_WORKERS})")
    add_cam_options(p)
    p.add_argument("--resize", type=str, default=None, choices=RESIZE_METHODS,
                   help="how each image becomes 256x256 (at the checkpoint's input size S, which "
                        "sets the crop: S * 256 / 224): original or area (see preprocessing.py) "
                        "(default: the checkpoint's, as its training images were resized)")
    p.add_argument("--save-heatmaps", type=str, default=None,
                   help="also write the heatmaps of the active classes to this .npz (float32, no "
                        "pickle; tools/evaluate.py --heatmaps scores them) (default: None)")
    add_picture_options(p)
    return p


def add_cam_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cam", type=str, default=None, choices=list(CAM_METHODS),
                   help="class activation map: gradcam (the original's), gradcam++, layercam, "
                        "layercam-shortcut or cam, see docs/localization.md (default: the CAM "
                        f"box_sizes.json beside --model was calibrated on, else {DEFAULT_CAM})")
    p.add_argument("--layer", type=str, default=None,
                   help="target layer from model.named_modules(), or several joined by commas "
                        "whose normalised maps are averaged (default: box_sizes.json's layer, "
                        f"else {DEFAULT_TARGET_LAYER}; {FINAL_FEATURES} for cam, its only one)")
    p.add_argument("--tta", type=str, default="none", choices=list(CAM_TTA),
                   help="flip: each map averaged with its mirrored crop's (default: none)")


def add_picture_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plots", type=str, default=None,
                   help="folder for pictures: per image the boxes (predicted blue, --truth's true "
                        "boxes red), a heatmap per detected class, the probability chart; and "
                        "contact_sheet.png, one row per class (default: None, no pictures)")
    p.add_argument("--truth", type=str, default=None,
                   help="with --plots: a box table whose boxes are drawn in red (default: "
                        "--bbox-list); e.g. the test images' truth while --bbox-list sizes boxes "
                        "from other images")
    p.add_argument("--plot-images", type=int, default=20,
                   help="with --plots: per-image pictures for the first N images only; the contact "
                        "sheet looks at all of them (default: 20)")
    p.add_argument("--sheet-cell", type=int, default=256,
                   help="with --plots: side in pixels of each contact-sheet picture; 4 per class "
                        "(default: 256)")


def make_plotter(args: argparse.Namespace, run: "Setup", plots_dir: Path | None):
    """LocalizationPlots into plots_dir (None without --plots), with --truth's/--bbox-list's."""
    if args.plots is None or plots_dir is None:  # no pictures, or not rank 0 under torchrun
        return None
    if args.plot_images < 0 or args.sheet_cell < 32:
        raise InputError(f"--plot-images must be >= 0 and --sheet-cell >= 32, got "
                         f"{args.plot_images}, {args.sheet_cell}")
    from chexnet import localization_figures  # matplotlib loads only when pictures are asked for

    truth_path = args.truth or args.bbox_list
    truth = None if truth_path is None else nih.read_truth_by_image(truth_path)
    return localization_figures.LocalizationPlots(plots_dir, run.thresholds, truth,
                                                  max_images=args.plot_images,
                                                  class_names=run.classes, cam=run.cam,
                                                  layer=run.layer)


@dataclass
class Setup:
    """What a run resolved from its options and the model folder (the rules of chexnet.model_dir
    and chexnet.calibrated)."""
    paths: list[str]
    per_image: bool  # an image or a folder: print a findings line per image
    device: torch.device
    net: torch.nn.Module
    classes: list[str]  # the checkpoint's class names: one per output, in its order
    thresholds: np.ndarray  # (C,), one per output
    box_sizes: np.ndarray  # (8, 4) average boxes of the box classes, 1024 px
    methods: tuple[str, ...]  # (8,) the box rule of each box class (one for all unless per class)
    params: np.ndarray | None  # (8,) the box rule's per-class parameter, None: its default
    rect_scales: np.ndarray | None  # (8,) size-free rectangles' scale per class, None: all 1
    resize: str
    cam: str
    layer: str
    input_size: int  # the checkpoint's: images resized to input_size * 256 / 224, crops of it


def resolve(args: argparse.Namespace) -> Setup:
    """Check the options, resolve everything, print one line saying where each part came from."""
    device = distributed.init(select_device(args.device))  # under torchrun: this rank's
    if args.batch_size < 1 or args.workers < 0:
        raise InputError(f"--batch-size must be >= 1 and --workers >= 0, got {args.batch_size}, "
                         f"{args.workers}")
    if args.size_images is not None and args.bbox_list is None:
        raise InputError("--size-images needs --bbox-list (the table whose boxes it selects)")
    if args.size_fallback != "none" and args.size_images is None:
        raise InputError("--size-fallback applies to --size-images only")
    paths, per_image = input_paths(args.test_txt, args.images)
    size_images = None if args.size_images is None else {
        path: set(nih.read_image_list(path)) for path in args.size_images}
    box_sizes, sizes_from = calibrated.resolve_box_sizes(args.bbox_list, args.model, size_images,
                                                        args.size_fallback)
    checkpoint = load_checkpoint(args.model)
    net = model_from_checkpoint(checkpoint, source=args.model)
    thresholds, thresholds_from = model_dir.resolve_thresholds(args.thresholds, args.model,
                                                               checkpoint)
    method = args.method or calibrated.calibrated_method(args.bbox_list, args.model) or "peaks"
    methods = calibrated.resolve_box_methods(args.bbox_list, args.model, method)
    params, params_from = calibrated.resolve_box_params(args.bbox_list, args.model, method)
    rect_scales = calibrated.resolve_rect_scales(args.bbox_list, args.model, method)
    resize, input_size = localize.resolve_input(args.resize, checkpoint, args.model)
    cam, layer, cam_from, warning = calibrated.resolve_cam(args.cam, args.layer, args.bbox_list,
                                                          args.model)
    if warning is not None:
        print(warning, file=sys.stderr)
    if args.no_average_box and set(methods) <= set(boxes.SIZE_FREE):
        sizes_from = "none (--no-average-box: heatmap boxes only, each sized by its map)"
    print(f"{len(paths)} images, model {args.model} on {device}, "
          f"thresholds from {thresholds_from}, "
          f"box sizes from {sizes_from}, {rules_line(method, methods)} parameters from "
          f"{params_from}{'' if rect_scales is None else ' (with rectangle scales)'}, "
          f"resize {resize}, input {input_size} px, maps {cam} at {layer} (from {cam_from})",
          file=sys.stderr)
    return Setup(paths, per_image, device, net, list(checkpoint["class_names"]), thresholds,
                 box_sizes, methods, params, rect_scales, resize, cam, layer, input_size)


def rules_line(method: str, methods: tuple[str, ...]) -> str:
    """'peaks', or for per-class rules 'per-class (Atelectasis threshold, ...)'."""
    if method != boxes.PER_CLASS:
        return method
    return "per-class (" + ", ".join(f"{c} {m}" for c, m in zip(CLASS_NAMES, methods)) + ")"


def main(args: argparse.Namespace) -> None:
    """Localize; --plots draws into a temporary folder beside its folder, moved into place when
    the whole run has succeeded: a bad image in a late batch leaves no pictures behind."""
    if args.plots is None or not distributed.is_main():
        return localize_images(args, None)
    with atomic_folder(args.plots) as staging:
        localize_images(args, staging)


def localize_images(args: argparse.Namespace, plots_dir: Path | None) -> None:
    run = resolve(args)
    plotter, plot_seconds = make_plotter(args, run, plots_dir), 0.0
    start = time.perf_counter()
    results = distributed.gathered(  # under torchrun rank 0 gets every rank's, in list order
        lambda paths: localize.iter_localize(
            run.net, paths, run.thresholds, run.box_sizes, run.device,
            batch_size=args.batch_size, target_layer=run.layer, workers=args.workers,
            method=run.methods, method_params=run.params, rect_scales=run.rect_scales,
            resize=run.resize, cam_method=run.cam,
            class_names=run.classes, average_box=not args.no_average_box, tta=args.tta,
            input_size=run.input_size),
        run.paths, args.batch_size)
    if results is None:  # another rank: its share went to rank 0, which writes
        return distributed.close()
    entries, detections, probs = [], 0, []
    saved = SavedHeatmaps([], [], [], [], run.cam, run.layer)
    for result in tqdm(results, total=len(run.paths), unit="image", file=sys.stderr,
                       desc="localize"):
        entries.append(ImageBoxes(result.image_path, result.boxes))
        probs.append(result.probs)
        detections += len(result.heatmaps)
        if args.save_heatmaps is not None:
            keep_heatmaps(saved, result, run.classes)
        if run.per_image:
            tqdm.write(localize.findings_line(result, run.thresholds, run.classes), file=sys.stdout)
        if plotter is not None:
            tick = time.perf_counter()
            plotter.add(result.image_path, result.probs, result.heatmaps, result.boxes)
            plot_seconds += time.perf_counter() - tick
    write_box_file(args.out, entries)
    if args.save_heatmaps is not None:
        write_heatmaps(args.save_heatmaps, saved)
        print(f"wrote {args.save_heatmaps}: {len(saved.labels)} heatmaps", file=sys.stderr)
    if args.probs is not None:
        names = [os.path.basename(path) for path in run.paths]  # the label table's Image Index
        write_probs_csv(args.probs, names, run.classes, probs)
        print(f"wrote {args.probs}: probabilities of {len(names)} images")
    seconds = time.perf_counter() - start - plot_seconds  # the rate below is localization's alone
    n_boxes = sum(len(e.boxes) for e in entries)
    print(f"wrote {args.out}: {len(entries)} images, {detections} active classes, {n_boxes} boxes "
          f"in {seconds:.1f} s ({len(entries) / seconds:.1f} images/s)"
          + (f" on {distributed.world_size()} processes" if distributed.world_size() > 1 else ""))
    distributed.close()
    if plotter is not None:
        finish_pictures(plotter, args, plot_seconds)


def keep_heatmaps(saved: SavedHeatmaps, result: localize.ImageResult, class_names) -> None:
    """The image's maps, each under its class's name (heatmaps are keyed by model column)."""
    for k, heatmap in result.heatmaps.items():
        saved.images.append(result.image_path)
        saved.labels.append(class_names[k])
        saved.probs.append(float(result.probs[k]))
        saved.maps.append(heatmap.astype("float32"))
        saved.sizes.append(result.size)  # the frame of its truth boxes, for evaluate --heatmaps


def input_paths(source: str, images: str | None) -> tuple[list[str], bool]:
    """(image paths, whether they came from an image or a folder rather than a list of names)."""
    if os.path.isdir(source) or (os.path.isfile(source) and xray_files.is_image_file(source)):
        if images is not None:
            raise InputError(f"{images}: IMAGES goes with a list of names; {source} is an image or "
                             f"a folder, whose own paths are used")
        return (xray_files.image_files(source) if os.path.isdir(source) else [source]), True
    if images is None:
        raise InputError(f"{source}: neither an image nor a folder; a list of names needs IMAGES, "
                         f"the folder they are in")
    names = nih.read_image_list(source)
    paths = image_paths(images, names)  # IMAGES/name as the original, else found beneath
    check_images_exist(paths, source)
    return paths, False


def finish_pictures(plotter, args: argparse.Namespace, plot_seconds: float) -> None:
    tick = time.perf_counter()
    sheet = plotter.finish(cell=args.sheet_cell)
    plot_seconds += time.perf_counter() - tick
    print(f"wrote pictures of {min(plotter.seen, plotter.max_images)} images into {args.plots}"
          + (f", and {Path(args.plots) / sheet.name}" if sheet
             else " (no contact sheet: no detection, no true box)")
          + f" in {plot_seconds:.1f} s")


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
