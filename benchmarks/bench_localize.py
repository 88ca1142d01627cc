"""Box extraction and localization end to end, against the original way and a plain forward pass.

    python3 benchmarks/bench_localize.py [--images-count 32] [--threads 2] [--active all typical]

1. Box extraction per heatmap: boxes.peak_boxes against original_way.original_boxes on the Grad-CAM
   maps of real images (all 8 classes); the boxes must be the same.
2. End to end (decode, forward, heatmaps, boxes, box file written) with localize.iter_localize,
   batch --batch-size, against a plain forward pass (inference_mode) over the same images already
   decoded, and against the original way (original_load, per-image Grad-CAM with hooks on all
   modules, the original's boxes, text written) on --original-images images. Active classes:
   'all' = all 8 in every image (the worst case); 'typical' = thresholds at each class's 69th
   percentile of these images' probabilities, so about 2.5 classes per image are active, as in the
   original's published box file (1,111 active classes over 440 images).
"""
from __future__ import annotations

import argparse
import os
import tempfile

from timing import (DEFAULT_FOLDERS, Timings, bench_model, machine, ratio_line, real_pngs,
                    set_threads, stored_crops)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision.transforms.functional as TF  # noqa: E402

from chexnet import boxes  # noqa: E402
from chexnet import localize  # noqa: E402
from chexnet import images  # noqa: E402
from chexnet.boxfile import Box, ImageBoxes, write_box_file  # noqa: E402
from chexnet.utils import run_cli, write_text_atomic  # noqa: E402
from chexnet.constants import (AVERAGE_BOXES, CLASS_NAMES, DEFAULT_TARGET_LAYER,  # noqa: E402
                               IMAGENET_MEAN, IMAGENET_STD)
from gradcam import GradCAM  # noqa: E402
from original_way import OriginalGradCAM, original_boxes, original_load  # noqa: E402

SIZES = np.array(AVERAGE_BOXES, dtype=np.float64)  # (8, 4) x, y, w, h in 1024 px


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=str, nargs="+", default=DEFAULT_FOLDERS,
                   help="folders of real PNGs (default: sample/images and ../shared/nih/images "
                        "when present)")
    p.add_argument("--images-count", type=int, default=32,
                   help="images localized per run (default: 32)")
    p.add_argument("--heatmap-images", type=int, default=8,
                   help="images whose 8 maps time the boxes (default: 8)")
    p.add_argument("--original-images", type=int, default=3,
                   help="images run the original way (default: 3)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="images per forward pass (default: 16)")
    p.add_argument("--workers", type=int, default=1,
                   help="decoding processes of localize (default: 1)")
    p.add_argument("--active", type=str, nargs="+", default=["all", "typical"],
                   choices=["all", "typical"],
                   help="which classes are active (default: all typical)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch and OpenCV threads; 1 is steadiest on a shared machine (default: 1)")
    p.add_argument("--reps", type=int, default=3, help="runs of each method (default: 3)")
    p.add_argument("--model", type=str, default=None,
                   help="checkpoint to use (default: random weights)")
    return p


def heatmaps(model, crops: torch.Tensor) -> np.ndarray:
    with GradCAM(model) as cam:
        return cam.compute(images.normalize(crops))[1].numpy()  # (B, 8, 224, 224)


def bench_boxes(maps: np.ndarray, reps: int) -> Timings:
    flat = [(m, int(k)) for image in maps for k, m in enumerate(image)]
    peaks = boxes.METHODS["peaks"]
    same = all(peaks(m, SIZES[k, 2:]) == original_boxes(m, SIZES[k, 2:]) for m, k in flat)
    found = sum(len(peaks(m, SIZES[k, 2:])) for m, k in flat)
    t = Timings("heatmap")
    for _ in range(reps):
        t.run("original boxes", lambda: [original_boxes(m, SIZES[k, 2:]) for m, k in flat],
              len(flat))
        t.run("boxes.peak_boxes", lambda: [peaks(m, SIZES[k, 2:]) for m, k in flat], len(flat))
    t.notes["boxes.peak_boxes"] = (f"{found} boxes from {len(flat)} maps, the same as the "
                                   f"original's: {same}")
    return t


def ours_end_to_end(model, paths, thresholds, args, out: str) -> None:
    results = localize.iter_localize(model, paths, thresholds, SIZES, torch.device("cpu"),
                                     batch_size=args.batch_size, workers=args.workers)
    write_box_file(out, [ImageBoxes(r.image_path, r.boxes) for r in results])


def original_end_to_end(model, paths, thresholds, out: str) -> None:
    """Decode all, then per image: forward, one backward per active class, boxes; then the text."""
    stored = [original_load(p) * 255 for p in paths]  # the localization script kept [0, 1] floats
    cam = OriginalGradCAM(model, DEFAULT_TARGET_LAYER)
    entries = []
    try:
        for path, image in zip(paths, stored):
            pil = TF.to_pil_image(np.uint8(image * 255)[:, :, None].repeat(3, axis=2))
            x = TF.normalize(TF.to_tensor(TF.center_crop(pil, 224)), IMAGENET_MEAN, IMAGENET_STD)
            probs = cam.forward(x)
            active = np.flatnonzero(probs > thresholds)
            maps = cam.maps(active)
            lines = []
            for k, m in zip(active, maps):
                lines.append(Box(CLASS_NAMES[k], *SIZES[k]))
                if not np.isnan(m).any():
                    lines += [Box(CLASS_NAMES[k], *b) for b in original_boxes(m, SIZES[k, 2:])]
            entries.append(ImageBoxes(path, lines))
    finally:
        cam.release()
    write_text_atomic(out, "".join(f"{e.image_path} {len(e.boxes)}\n"
                                   + "".join(b.line() + "\n" for b in e.boxes) for e in entries))


def plain_forward(model, x: torch.Tensor, batch: int) -> None:
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            model(x[start:start + batch])


def thresholds_for(mode: str, probs: np.ndarray) -> np.ndarray:
    if mode == "all":
        return np.full(len(CLASS_NAMES), -1.0)
    # per class: about 31% of images active, 2.5 classes per image
    return np.quantile(probs, 0.69, axis=0)


def bench_end_to_end(model, paths, x, probs, mode, args, folder) -> Timings:
    thresholds = thresholds_for(mode, probs)
    few = paths[:args.original_images]
    t = Timings("image")
    ours_end_to_end(model, paths[:args.batch_size], thresholds, args,
                    os.path.join(folder, "warm.txt"))
    ours_txt, orig_txt = os.path.join(folder, "ours.txt"), os.path.join(folder, "orig.txt")
    for rep in range(args.reps):
        t.run("plain forward", lambda: plain_forward(model, x, args.batch_size), len(paths))
        t.run("ours end to end",
              lambda: ours_end_to_end(model, paths, thresholds, args, ours_txt), len(paths))
        if rep < max(1, args.reps - 1):
            t.run("original end to end",
                  lambda: original_end_to_end(model, few, thresholds, orig_txt), len(few))
    active = (probs > thresholds).sum() / len(probs)
    t.notes["ours end to end"] = f"{active:.1f} active classes per image"
    few_active = (probs[:len(few)] > thresholds).sum() / len(few)
    t.notes["original end to end"] = (f"on the first {len(few)} images, {few_active:.1f} active "
                                      f"classes per image")
    return t


def main(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    model = bench_model(args.model)
    paths = real_pngs(args.images, args.images_count)
    crops = stored_crops(paths)
    print(f"machine: {machine()}; {len(paths)} real images, batch {args.batch_size}, "
          f"{args.workers} decoding worker(s); "
          f"{'weights ' + args.model if args.model else 'random weights'}")
    t = bench_boxes(heatmaps(model, crops[:args.heatmap_images]), args.reps)
    print(t.table("original boxes", "box extraction"))
    x = images.normalize(crops)
    with torch.inference_mode():
        probs = torch.sigmoid(model(x)).numpy()
    with tempfile.TemporaryDirectory() as folder:
        for mode in args.active:
            e = bench_end_to_end(model, paths, x, probs, mode, args, folder)
            print(e.table("original end to end",
                          f"localization end to end, active classes: {mode}"))
            r = e.median("plain forward") / e.median("ours end to end")
            print(ratio_line("ours throughput / plain forward", r, ">= 0.6", r >= 0.6))


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
