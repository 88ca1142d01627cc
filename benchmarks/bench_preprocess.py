"""Decode + resize to 256: the original way against ours, on the same real PNGs, in one run.

    python3 benchmarks/bench_preprocess.py [--reps 5] [--images sample/images ../shared/nih/images]

Per image, one core (OpenCV's threads set to 1, as in preprocessing.py's workers):
  original   imageio decode + skimage.transform.resize to float64 (+ /255), the original's path as
             it ran (order 1, no anti-aliasing: scikit-image 0.13.1 had none)
  ours       images.load_stored: OpenCV decode + the original's resize restated (the default)
  ours area  images.load_stored(resize="area"): OpenCV decode + INTER_AREA (--resize area)
  decode     cv2.imread alone (the floor: PNG decoding)
Then preprocessed.store_images over the list repeated --scale-images long with 1 and 2 workers
(the speed-up from a second process), and a check that the arrays of 1 and 2 workers and of a
plain single-process loop are equal, pixel for pixel. Peak memory: benchmarks/preprocess_memory.py.
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

from timing import DEFAULT_FOLDERS, Timings, machine, ratio_line, real_pngs, set_threads

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from chexnet import preprocessed  # noqa: E402
from chexnet.utils import run_cli  # noqa: E402
from chexnet.images import load_stored  # noqa: E402
from original_way import original_load  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=str, nargs="+", default=DEFAULT_FOLDERS,
                   help="folders of real 1024x1024 PNGs, each name used once (default: "
                        "sample/images and ../shared/nih/images when present)")
    p.add_argument("--reps", type=int, default=5,
                   help="passes over the images per method (default: 5)")
    p.add_argument("--scale-images", type=int, default=300,
                   help="length of the list (the PNGs repeated) for the 1- vs 2-worker runs "
                        "(default: 300)")
    p.add_argument("--workers", type=int, default=2, help="workers to compare with 1 (default: 2)")
    return p


def per_image(paths: list[str], reps: int) -> Timings:
    t = Timings("image")
    methods = {"original (imageio+skimage, float64)": original_load,
               "ours (cv2 + original resize, uint8)": load_stored,
               "ours --resize area (cv2 + INTER_AREA)": lambda p: load_stored(p, "area"),
               "decode alone (cv2.imread)": lambda p: cv2.imread(p, cv2.IMREAD_UNCHANGED)}
    for fn in methods.values():
        fn(paths[0])  # warm-up: imports, page cache
    for _ in range(reps):
        for name, fn in methods.items():
            t.run(name, lambda: [fn(p) for p in paths], units=len(paths))
    return t


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (the pool's workers)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def scaling(paths: list[str], reps: int, workers: int
            ) -> tuple[Timings, Timings, dict[int, np.ndarray]]:
    """Wall time and CPU time per image of preprocessed.store_images (decode, resize, write the
    .npy) with 1 and `workers` processes."""
    wall, cpu = Timings("image"), Timings("image")
    arrays = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(reps):
            for w in (1, workers):
                name, out = f"store_images, {w} worker(s)", Path(tmp) / f"w{w}.npy"
                before = cpu_seconds()
                wall.run(name, lambda: sum(preprocessed.store_images(
                    paths, out, w, preprocessed.DEFAULT_CHUNK)), units=len(paths))
                cpu.add(name, cpu_seconds() - before, len(paths))
                arrays[w] = np.load(out, allow_pickle=False)
    return wall, cpu, arrays


def _burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def available_speedup(workers: int, n: int = 4_000_000) -> float:
    """The speed-up the machine offers now: `workers` CPU-bound processes vs one doing all the work.

    A control for the 2-worker figure: on a machine that other jobs keep busy it is well under
    `workers`, and no code can scale better than it.
    """
    start = time.perf_counter()
    for _ in range(workers):
        _burn(n)
    serial = time.perf_counter() - start
    with multiprocessing.Pool(workers) as pool:
        pool.map(_burn, [0] * workers)  # start-up outside the timing
        start = time.perf_counter()
        pool.map(_burn, [n] * workers, chunksize=1)
        return serial / (time.perf_counter() - start)


def main(args: argparse.Namespace) -> None:
    set_threads(1)  # one core per process: the per-core comparison, as preprocessing's workers do
    paths = real_pngs(args.images)
    print(f"machine: {machine()}; OpenCV threads 1")
    colour = sum(1 for p in paths if cv2.imread(p, cv2.IMREAD_UNCHANGED).ndim == 3)
    print(f"{len(paths)} real PNGs ({colour} RGB/RGBA)")
    t = per_image(paths, args.reps)
    print(t.table("original (imageio+skimage, float64)", "decode + resize to 256, one core"))
    decode = t.median("decode alone (cv2.imread)")
    for name in ("ours (cv2 + original resize, uint8)", "ours --resize area (cv2 + INTER_AREA)"):
        ratio = t.median(name) / decode
        print(ratio_line(f"{name.split(' (')[0]} / decode alone", ratio, "<= 1.15", ratio <= 1.15))
    print(f"  stored bytes per image: original float64 {256 * 256 * 8:,}, "
          f"ours uint8 {256 * 256:,} (8x less)")

    long_list = [paths[i % len(paths)] for i in range(args.scale_images)]
    s, cpu, arrays = scaling(long_list, max(2, args.reps // 2), args.workers)
    one, more = "store_images, 1 worker(s)", f"store_images, {args.workers} worker(s)"
    print(s.table(one, f"preprocessed.store_images over {len(long_list)} images, wall time"))
    print(cpu.table(one, "the same runs, CPU time (all processes): the work a worker adds"))
    speedup = s.median(one) / s.median(more)
    print(ratio_line(f"{args.workers} workers vs 1", speedup, ">= 1.8 with 2", speedup >= 1.8))
    control = available_speedup(args.workers)
    print(f"  control: {args.workers} CPU-bound processes vs 1 on this machine right now: "
          f"{control:.2f}x (the most any code could scale; under {args.workers * 0.9:.1f} means "
          f"the cores are busy elsewhere)")
    plain = np.stack([load_stored(p) for p in long_list])
    same = all(np.array_equal(a, plain) for a in arrays.values())
    print(f"  arrays of 1 and {args.workers} workers equal a single-process loop pixel for pixel: "
          f"{same}")
    if not same:
        raise SystemExit("arrays differ")


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
