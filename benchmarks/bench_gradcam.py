"""Grad-CAM of all 8 classes at one layer, four ways, beside a plain forward pass, in one run.

    python3 benchmarks/bench_gradcam.py [--batches 1 16] [--threads 2] [--model CKPT]

The original way, a per-class loop, the grad-cam package and ours (gradcam.GradCAM), on the same
real images:
  forward       model(x) under torch.inference_mode(): the floor
  ours          gradcam.GradCAM: one forward + one batched backward (is_grads_batched) for the 8
                classes
  loop          hooks on the target layer only, one forward, then one backward per class (the batch
                at once), weights requiring grad as in most Grad-CAM code
  grad-cam pkg  pytorch_grad_cam.GradCAM on the same layer, one call (forward + backward) per class
  original      benchmarks/original_way.py: hooks on every module, one image at a time, one full
                backward per class (per image: its cost does not depend on the batch, so it runs
                at batch 1)
All maps are compared after min-max normalisation (max difference must be under 1e-4).
Without --model the weights are random (seeded): the work per image is the same.
"""
from __future__ import annotations

import argparse

from timing import (DEFAULT_FOLDERS, Timings, bench_model, machine, ratio_line, real_pngs,
                    set_threads, stored_crops)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from chexnet import images  # noqa: E402
from chexnet.utils import run_cli  # noqa: E402
from chexnet.constants import DEFAULT_TARGET_LAYER  # noqa: E402
from chexnet.cam_base import normalize_maps  # noqa: E402
from gradcam import GradCAM  # noqa: E402
from original_way import OriginalGradCAM  # noqa: E402

FAST = ("forward", "ours")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=str, nargs="+", default=DEFAULT_FOLDERS,
                   help="folders of real PNGs (default: sample/images and ../shared/nih/images "
                        "when present)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16],
                   help="batch sizes (default: 1 16)")
    p.add_argument("--layer", type=str, default=DEFAULT_TARGET_LAYER,
                   help=f"target layer (default: {DEFAULT_TARGET_LAYER})")
    p.add_argument("--threads", type=int, default=1,
                   help="torch and OpenCV threads; 1 is steadiest on a shared machine (default: 1)")
    p.add_argument("--reps", type=int, default=6,
                   help="runs of forward and ours per batch size (default: 6)")
    p.add_argument("--slow-reps", type=int, default=3,
                   help="runs of the slow methods at batch 1 (default: 3)")
    p.add_argument("--slow-reps-large", type=int, default=2,
                   help="runs of the per-class loop and the package at batches above 1 "
                        "(default: 2)")
    p.add_argument("--model", type=str, default=None,
                   help="checkpoint to use (default: random weights)")
    return p


def forward(model, x, layer):
    with torch.inference_mode():
        return model(x)


def ours(model, x, layer):
    with GradCAM(model, layer) as cam:
        return cam.compute(x)[1]  # (B, 8, 224, 224)


def loop(model, x, layer):
    """Target-layer hooks, one backward per class over the batch: (B, 8, 224, 224) in [0, 1]."""
    store = {}

    def hook(module, inputs, output):
        store["act"] = output
        output.register_hook(lambda grad: store.__setitem__("grad", grad))

    handle = dict(model.named_modules())[layer].register_forward_hook(hook)
    try:
        logits = model(x)
        cams = []
        for k in range(logits.shape[1]):
            model.zero_grad(set_to_none=True)
            logits[:, k].sum().backward(retain_graph=True)
            weights = store["grad"].mean(dim=(2, 3))  # (B, ch)
            cams.append(torch.relu(torch.einsum("bc,bchw->bhw", weights, store["act"].detach())))
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    cam = F.interpolate(torch.stack(cams, 1), size=x.shape[-2:], mode="bilinear",
                        align_corners=False)
    return normalize_maps(cam)


def package(model, x, layer):
    from pytorch_grad_cam import GradCAM as PackageCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    maps = []
    with PackageCAM(model=model, target_layers=[dict(model.named_modules())[layer]]) as cam:
        for k in range(8):
            # (B, H, W)
            maps.append(cam(input_tensor=x, targets=[ClassifierOutputTarget(k)] * len(x)))
    model.zero_grad(set_to_none=True)
    return torch.from_numpy(np.stack(maps, 1))


def original(model, x, layer):
    cam = OriginalGradCAM(model, layer)
    try:
        return torch.from_numpy(np.stack([cam.image_maps(image, range(8))[1] for image in x]))
    finally:
        cam.release()
        model.zero_grad(set_to_none=True)


METHODS = {"forward": forward, "ours": ours, "loop": loop, "grad-cam pkg": package,
           "original": original}


def max_differences(model, x, layer) -> dict[str, float]:
    """Max |map - ours| over all images and classes, every map min-max normalised again."""
    def norm(m):
        return normalize_maps(torch.nan_to_num(m.float(), nan=0.0))
    reference = norm(ours(model, x, layer))
    return {name: float((norm(METHODS[name](model, x, layer)) - reference).abs().max())
            for name in ("loop", "grad-cam pkg", "original")}


def bench_batch(model, x, args, batch: int) -> Timings:
    t = Timings("image")
    slow = args.slow_reps if batch == 1 else args.slow_reps_large
    names = [n for n in METHODS if batch == 1 or n != "original"]
    for name in names:
        METHODS[name](model, x, args.layer)  # warm-up
    for rep in range(max(args.reps, slow)):
        for name in names:
            if rep < (args.reps if name in FAST else slow):
                t.run(name, lambda: METHODS[name](model, x, args.layer), units=batch)
    return t


def main(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    model = bench_model(args.model)
    paths = real_pngs(args.images, max(args.batches))
    crops = stored_crops(paths)
    print(f"machine: {machine()}; layer {args.layer}; all 8 classes; "
          f"{'weights ' + args.model if args.model else 'random weights'}")
    diffs = max_differences(model, images.normalize(crops[:2]), args.layer)
    print("max map difference to ours after normalisation (2 images x 8 classes): "
          + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
          + f" ({'all under 1e-4' if max(diffs.values()) < 1e-4 else 'OVER 1e-4'})")
    for batch in args.batches:
        x = images.normalize(crops[:batch])
        t = bench_batch(model, x, args, batch)
        print(t.table("forward", f"batch {batch}: Grad-CAM of 8 classes ({len(x)} real images)"))
        f, o = t.median("forward"), t.median("ours")
        print(ratio_line("ours time / plain forward", o / f, "<= 1.3", o / f <= 1.3))
        for other in ("loop", "grad-cam pkg", "original"):
            if other in t.samples:
                r = t.median(other) / o
                print(ratio_line(f"ours speed-up over {other}", r, ">= 10", r >= 10))


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
