"""Our CAM methods (gradcam.METHODS) against the grad-cam package's, on the same real images.

    python3 benchmarks/bench_cam_methods.py [--batch 4] [--threads 2] [--model CKPT]

Per method: the largest map difference after min-max normalisation, and the time per image for all
8 classes. Needs requirements-bench.txt (grad-cam); not run in CI. The package has no classic CAM:
`cam` is timed only (its exactness is tests/test_cam_methods.py's). Ours: one forward and one
batched backward for the 8 classes; the package: one call (forward + backward) per class.
"""
from __future__ import annotations

import argparse

from timing import (DEFAULT_FOLDERS, Timings, bench_model, machine, real_pngs, set_threads,
                    stored_crops)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from chexnet import images  # noqa: E402
from chexnet.utils import run_cli  # noqa: E402
from gradcam import METHODS, make_cam, normalize_maps  # noqa: E402

PACKAGE = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "layercam": "LayerCAM"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=str, nargs="+", default=DEFAULT_FOLDERS,
                   help="folders of real PNGs (default: sample/images and ../shared/nih/images)")
    p.add_argument("--batch", type=int, default=4, help="images per call (default: 4)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--reps", type=int, default=3, help="timed runs per method (default: 3)")
    p.add_argument("--model", type=str, default=None, help="checkpoint (default: random weights)")
    return p


def ours(name: str, model, x) -> torch.Tensor:
    with make_cam(name, model) as cam:
        return cam.compute(x)[1]  # (B, 8, 224, 224)


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
    t = Timings("image")
    for name in METHODS:
        ours(name, model, x)  # warm-up
        for _ in range(args.reps):
            t.run(f"ours {name}", lambda: ours(name, model, x), units=len(x))
        if name in PACKAGE:
            diff = difference(ours(name, model, x), package(name, model, x))
            print(f"{name}: max map difference to grad-cam's {PACKAGE[name]}: {diff:.1e}")
            for _ in range(args.reps):
                t.run(f"pkg {name}", lambda: package(name, model, x), units=len(x))
    print(t.table("ours gradcam", "CAM of 8 classes, time per image"))


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
