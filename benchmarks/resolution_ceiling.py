"""What the map's resolution alone allows: each box rule on a perfect map seen through a CAM grid.

    python3 benchmarks/resolution_ceiling.py [--boxes 100] [--grids 7 14 28]

Each box rule runs on a PERFECT map of each planted box, seen through a g x g CAM grid
(7 = denseblock4, 14 = denseblock3, 28 = denseblock2).
For every box that benchmarks/synthetic.py would plant (its sizes and positions, seeded), the ideal
map is the box's indicator on the 224 crop, averaged into g x g cells (what a CAM layer of that
size can at best say), resized back to 224 bilinearly (as gradcam.py does) and min-max normalised.
Each rule of chexnet/boxes.py then makes boxes (peaks with the box's own true size: its best
case), and the best IoU with the planted box is kept. No network, no training: an upper bound on
what any CAM method at that layer can reach with that rule, and a CPU-cheap one.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import synthetic  # noqa: E402
from chexnet import boxes, scoring  # noqa: E402
from chexnet.boxfile import Box  # noqa: E402
from chexnet.constants import CROP_OFFSET, CROP_SIZE, RESCALE_FACTOR  # noqa: E402
from chexnet.utils import run_cli  # noqa: E402
from chexnet.cam_base import normalize_maps  # noqa: E402

CUTS = (0.1, 0.25, 0.5)


def ideal_map(box: synthetic.Planted, grid: int) -> np.ndarray:
    """The box's indicator on the crop, pooled to grid x grid, back to 224: float (224, 224)."""
    mask = torch.zeros((1, 1, CROP_SIZE, CROP_SIZE))
    left, top = box.x / RESCALE_FACTOR - CROP_OFFSET, box.y / RESCALE_FACTOR - CROP_OFFSET
    right, bottom = left + box.w / RESCALE_FACTOR, top + box.h / RESCALE_FACTOR
    mask[..., max(int(top), 0):int(np.ceil(bottom)), max(int(left), 0):int(np.ceil(right))] = 1.0
    pooled = F.adaptive_avg_pool2d(mask, grid)
    up = F.interpolate(pooled, size=(CROP_SIZE, CROP_SIZE), mode="bilinear", align_corners=False)
    return normalize_maps(up)[0, 0].numpy().astype(np.float64)


def best_iou(box: synthetic.Planted, heatmap: np.ndarray, rule: str) -> float:
    """The best IoU with the planted box of the boxes `rule` makes from the map (0 if none)."""
    found = boxes.METHODS[rule](heatmap, (float(box.w), float(box.h)))
    return max((scoring.iou(Box(box.label, *xywh), box) for xywh in found), default=0.0)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--boxes", type=int, default=100, help="planted boxes per class (default: 100)")
    p.add_argument("--grids", type=int, nargs="+", default=[7, 14, 28],
                   help="CAM grid sizes (default: 7 14 28)")
    p.add_argument("--seed", type=int, default=0, help="seed of the boxes (default: 0)")
    return p


def main(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    planted = {c: [synthetic.place_findings((c,), rng)[0] for _ in range(args.boxes)]
               for c in synthetic.PLANTED_CLASSES}
    result = {}
    print(f"{args.boxes} planted boxes per class; share with IoU > {' / '.join(map(str, CUTS))}, "
          f"mean IoU, of the best box each rule makes from a perfect map at the CAM grid's "
          f"resolution")
    for grid in args.grids:
        for rule in sorted(boxes.METHODS):
            row = {}
            for label, found in planted.items():
                ious = np.array([best_iou(b, ideal_map(b, grid), rule) for b in found])
                row[label] = [float((ious > t).mean()) for t in CUTS] + [float(ious.mean())]
            result[f"{grid}x{grid} {rule}"] = row
            print(f"{grid:>2}x{grid:<2} {rule:<11}" + "  ".join(
                f"{label} " + " / ".join(f"{v:.2f}" for v in values)
                for label, values in row.items()), flush=True)
    return result


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
