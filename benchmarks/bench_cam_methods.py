"""Time per image of every CAM variant of the known-truth benchmark, and agreement with grad-cam.

    python3 benchmarks/bench_cam_methods.py [--batch 4] [--threads 2] [--model CKPT] [--package]

Every variant of bench_grid.CAM_VARIANTS (a method at its default layer, at denseblock3, or fused
over two layers) makes the maps of all 8 classes for the same real images, the variants
interleaved run by run so that load from elsewhere hits them alike; the table gives each one's
median time and its ratio to gradcam. --package (needs requirements-bench.txt's grad-cam; not in
CI) adds the package's GradCAM, GradCAMPlusPlus and LayerCAM: the largest map difference after
min-max normalisation and their times (one call, forward + backward, per class). The package has
no classic CAM: its exactness is tests/test_cam_methods.py's. --profile: where each variant's time
goes (the forward with its hooks, the one batched backward, the maps' arithmetic, the resize to
the input and min-max), beside a plain forward without gradients.
"""
from __future__ import annotations

import argparse
import time

from timing import (DEFAULT_FOLDERS, Timings, bench_model, machine, real_pngs, set_threads,
                    stored_crops)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from chexnet import images  # noqa: E402
from chexnet.utils import run_cli  # noqa: E402
from bench_grid import CAM_VARIANTS  # noqa: E402
from chexnet.cam_base import normalize_maps  # noqa: E402
from gradcam import METHODS, make_cam  # noqa: E402

PACKAGE = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "layercam": "LayerCAM"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=str, nargs="+", default=DEFAULT_FOLDERS,
                   help="folders of real PNGs (default: sample/images and ../shared/nih/images)")
    p.add_argument("--batch", type=int, default=4, help="images per call (default: 4)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--reps", type=int, default=3, help="timed runs per method (default: 3)")
    p.add_argument("--model", type=str, default=None, help="checkpoint (default: random weights)")
    p.add_argument("--package", action="store_true",
                   help="compare with the grad-cam package too (default: off)")
    p.add_argument("--profile", action="store_true",
                   help="only the breakdown of each variant's time by stage (default: off)")
    p.add_argument("--variants", type=str, nargs="+", default=list(CAM_VARIANTS),
                   choices=list(CAM_VARIANTS), help="variants to run (default: all)")
    return p


def ours(variant: str, model, x) -> torch.Tensor:
    method, layer, tta = CAM_VARIANTS[variant]
    with make_cam(method, model, layer, tta) as cam:
        return cam.compute(x)[1]  # (B, 8, 224, 224)


def stages(variant: str, model, x) -> dict[str, float]:
    """Seconds per image of each stage of cam.compute(x) for all 8 classes, as maps() runs them."""
    method, layer, tta = CAM_VARIANTS[variant]
    out, classes = {}, list(range(8))
    with make_cam(method, model, layer, tta) as cam:
        tick = time.perf_counter()
        cam.forward(x)
        out["forward"], tick = time.perf_counter() - tick, time.perf_counter()
        grads = (cam._gradients(classes)[0] if cam.needs_gradients  # round k: class k
                 else [None] * len(cam.layers))
        out["backward"], tick = time.perf_counter() - tick, time.perf_counter()
        raw = [cam.combine(cam._activations[name].detach().float(),
                           None if g is None else g.float(), classes)
               for name, g in zip(cam.layers, grads)]
        out["combine"], tick = time.perf_counter() - tick, time.perf_counter()
        maps = [normalize_maps(torch.nn.functional.interpolate(
            r, size=x.shape[-2:], mode="bilinear", align_corners=False)) for r in raw]
        torch.stack(maps).mean(dim=0)
        out["resize+minmax"] = time.perf_counter() - tick
        cam._logits, cam._activations = None, {}
    return {k: v / len(x) for k, v in out.items()}


def profile(args, model, x) -> None:
    """Median over --reps of each stage, per image, and each stage's share of the variant."""
    with torch.no_grad():
        plain = []
        for _ in range(args.reps):
            tick = time.perf_counter()
            model(x)
            plain.append((time.perf_counter() - tick) / len(x))
    print(f"plain forward, no gradients: {1000 * np.median(plain):.0f} ms/image")
    runs = {v: [] for v in args.variants}
    for v in args.variants:
        stages(v, model, x)  # warm-up
    for _ in range(args.reps):
        for v in args.variants:  # interleaved, as the timing table
            runs[v].append(stages(v, model, x))
    for v, rs in runs.items():
        med = {k: float(np.median([r[k] for r in rs])) for k in rs[0]}
        total = sum(med.values())
        parts = ", ".join(f"{k} {1000 * t:.0f} ({100 * t / total:.0f}%)" for k, t in med.items())
        print(f"{v}: {1000 * total:.0f} ms/image = {parts}")


def package(name: str, model, x) -> torch.Tensor:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = dict(model.named_modules())[METHODS[name].default_layer]
    maps = []
    with getattr(pytorch_grad_cam, PACKAGE[name])(model=model, target_layers=[layer]) as cam:
        for k in range(8):
            maps.append(cam(input_tensor=x, targets=[ClassifierOutputTarget(k)] * len(x)))
    model.zero_grad(set_to_none=True)
    return torch.from_numpy(np.stack(maps, 1))


def difference(a: torch.Tensor, b: torch.Tensor) -> float:
    norm = lambda m: normalize_maps(torch.nan_to_num(m.float(), nan=0.0))
    return float((norm(a) - norm(b)).abs().max())


def main(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    model = bench_model(args.model)
    x = images.normalize(stored_crops(real_pngs(args.images, args.batch)))
    print(f"machine: {machine()}; batch {len(x)}; all 8 classes; "
          f"{'weights ' + args.model if args.model else 'random weights'}")
    if args.profile:
        return profile(args, model, x)
    t = Timings("image")
    for variant in args.variants:
        ours(variant, model, x)  # warm-up
    if args.package:
        for name in PACKAGE:
            diff = difference(ours(name, model, x), package(name, model, x))
            print(f"{name}: max map difference to grad-cam's {PACKAGE[name]}: {diff:.1e}")
    for _ in range(args.reps):
        for variant in args.variants:
            t.run(variant, lambda: ours(variant, model, x), units=len(x))
        for name in PACKAGE if args.package else ():
            t.run(f"package {name}", lambda: package(name, model, x), units=len(x))
    print(t.table("gradcam", "CAM of 8 classes, time per image"))


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
