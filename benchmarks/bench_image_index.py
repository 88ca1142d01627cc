"""Time the walk that finds a nested release's images, on 112,120 empty files.

chexnet.images.index_images on a tree shaped like the Kaggle copy of ChestX-ray14
(images_001/images ... images_012/images), of empty files.

    python3 benchmarks/bench_image_index.py [--files 112120] [--reps 3] [--dir /tmp]

Builds the tree in a temporary folder (deleted afterwards), then times, --reps times each: the
walk alone (index of every file), the walk for a list of every name (wanted names), and
image_paths for the whole list on the nested tree; and image_paths on a flat folder, where no
walk happens (one stat per name). Prints the median and the range in seconds.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root: chexnet/

from chexnet.images import image_paths, index_images  # noqa: E402
from chexnet.utils import run_cli  # noqa: E402

KAGGLE_PARTS = 12  # images_001 .. images_012, each with an images/ folder inside


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=112120,
                   help="empty files in the tree (default: 112120, the release)")
    p.add_argument("--reps", type=int, default=3, help="timed runs of each (default: 3)")
    p.add_argument("--dir", type=str, default=None,
                   help="where the temporary tree goes (default: the system's temp folder)")
    return p


def make_trees(root: Path, files: int) -> tuple[Path, Path, list[str]]:
    names = [f"{i // 100:08d}_{i % 100:03d}.png" for i in range(files)]
    nested, flat = root / "kaggle", root / "flat"
    flat.mkdir()
    per_part = -(-files // KAGGLE_PARTS)
    for k in range(KAGGLE_PARTS):
        folder = nested / f"images_{k + 1:03d}" / "images"
        folder.mkdir(parents=True)
        for name in names[k * per_part:(k + 1) * per_part]:
            open(folder / name, "wb").close()
            open(flat / name, "wb").close()
    return nested, flat, names


def timed(label: str, fn, reps: int) -> None:
    seconds = []
    for _ in range(reps):
        tick = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - tick)
    print(f"{label:<48} median {statistics.median(seconds):6.2f} s "
          f"(min {min(seconds):.2f}, max {max(seconds):.2f})")


def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="chexnet-index.", dir=args.dir))
    try:
        tick = time.perf_counter()
        nested, flat, names = make_trees(root, args.files)
        print(f"{args.files} empty files in {KAGGLE_PARTS} folders (and a flat copy) made in "
              f"{time.perf_counter() - tick:.1f} s under {root}")
        wanted = set(names)
        assert len(index_images(nested)) == args.files
        timed("index_images (every file)", lambda: index_images(nested), args.reps)
        timed("index_images (every name wanted)", lambda: index_images(nested, wanted), args.reps)
        timed("image_paths, nested tree (stat + walk)", lambda: image_paths(nested, names),
              args.reps)
        timed("image_paths, flat folder (stat only, no walk)", lambda: image_paths(flat, names),
              args.reps)
    finally:
        shutil.rmtree(root)
        print(f"removed {root}")


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
