"""Peak memory of preprocessing.py against the number of images: it must stay flat.

    python3 benchmarks/preprocess_memory.py [--sizes 50 400] [--workers 1 2] [--images sample/images]

For each size N it builds, in a temporary folder, N distinct image names (symbolic links that
cycle through the real PNGs of --images), a label table for them (labels copied from the
sample's table, one patient per name, as many rows for every N) and 90/10 train/valid lists; then it runs the real CLI
in a child process and reads that child's peak resident set size from os.wait4 (on Linux the
largest of the child and the pool workers it waited for). It prints one line per run and the
ratio of the largest N's peak to the smallest N's, per worker count.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chexnet.utils import InputError, run_cli  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 400],
                        help="numbers of images to preprocess (default: 50 400)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker counts to run each size with (default: 1 2)")
    parser.add_argument("--images", type=str, default=str(ROOT / "sample" / "images"),
                        help="folder of real 1024x1024 PNGs to cycle through (default: sample/images)")
    parser.add_argument("--data-entry", type=str, default=str(ROOT / "sample" / "Data_Entry_2017.csv"),
                        help="label table holding those PNGs (default: sample/Data_Entry_2017.csv)")
    return parser


def make_dataset(folder: Path, count: int, table_rows: int, sources: list[Path],
                 source_rows: dict[str, list[str]], header: list[str]) -> list[Path]:
    """N listed, symlinked images; a label table of table_rows rows (the same for every N, as the
    real 112,120-row table is); lists and an empty box table. Returns the 5 input paths."""
    images = folder / "images"
    images.mkdir()
    names = []
    with open(folder / "Data_Entry.csv", "w", newline="") as f:
        table = csv.writer(f)
        table.writerow(header)
        for i in range(max(count, table_rows)):
            source = sources[i % len(sources)]
            name = f"{90000000 + i:08d}_000.png"
            row = list(source_rows[source.name])
            row[0], row[3] = name, str(90000000 + i)  # distinct image and patient: no split leak
            table.writerow(row)
            if i < count:
                (images / name).symlink_to(source.resolve())
                names.append(name)
    cut = max(1, count * 9 // 10)
    (folder / "train.txt").write_text("".join(n + "\n" for n in names[:cut]))
    (folder / "valid.txt").write_text("".join(n + "\n" for n in names[cut:] or names[-1:]))
    (folder / "BBox_List.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
    return [images, folder / "Data_Entry.csv", folder / "BBox_List.csv", folder / "train.txt", folder / "valid.txt"]


def measure(inputs: list[Path], out: Path, workers: int) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one preprocessing.py run in a child process."""
    command = [sys.executable, str(ROOT / "preprocessing.py"), *map(str, inputs), str(out),
               "--workers", str(workers), "--quiet"]
    start = time.perf_counter()
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    stderr = child.stderr.read()
    if child.returncode != 0:
        raise InputError(f"preprocessing.py failed (exit {child.returncode}): {stderr.strip()}")
    return usage.ru_maxrss / 1024, seconds  # Linux reports ru_maxrss in KiB


def main(args: argparse.Namespace) -> None:
    if sys.platform != "linux":
        raise InputError("this benchmark reads ru_maxrss as Linux reports it (KiB); run it on Linux")
    with open(args.data_entry, newline="") as f:
        rows = list(csv.reader(f))
    source_rows = {row[0]: row for row in rows[1:] if row}
    sources = sorted(p for p in Path(args.images).glob("*.png") if p.name in source_rows)
    if not sources:
        raise InputError(f"{args.images}: no PNG listed in {args.data_entry}")
    print(f"{len(sources)} real PNGs from {args.images} cycled; python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs")
    peaks: dict[int, dict[int, float]] = {}
    with tempfile.TemporaryDirectory(prefix="preprocess_memory.") as tmp:
        for count in args.sizes:
            folder = Path(tmp) / f"n{count}"
            folder.mkdir()
            inputs = make_dataset(folder, count, max(args.sizes), sources, source_rows, rows[0])
            for workers in args.workers:
                peak, seconds = measure(inputs, folder / f"out_w{workers}", workers)
                peaks.setdefault(workers, {})[count] = peak
                print(f"N={count:6d} images  workers={workers}  peak RSS {peak:7.1f} MiB  "
                      f"{seconds:6.1f} s  ({count / seconds:.0f} images/s)", flush=True)
    small, large = min(args.sizes), max(args.sizes)
    for workers, by_count in peaks.items():
        print(f"workers={workers}: peak RSS at N={large} / at N={small} = {by_count[large] / by_count[small]:.3f} "
              f"(the stored arrays grow {large / small:.0f}x: {large * 64 / 1024:.1f} MiB vs {small * 64 / 1024:.1f} MiB)")


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
