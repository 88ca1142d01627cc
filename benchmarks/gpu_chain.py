"""gpu_check's first part: the four commands chained on one device, the bundle in a fresh folder.

preprocessing.py -> train.py (2 short epochs, random init, offline) -> denseNet_localization.py ->
inference.py --build-bundle, then the unzipped bundle's `python3 inference.py` (no arguments; the
device from $CHEXNET_DEVICE) in a folder holding only the bundle, images/ and test.txt. Both box
files use threshold 0 for every class, so every heatmap and every box of every image is compared.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from timing import ROOT

from chexnet import model_dir  # noqa: E402
from chexnet.constants import CLASS_NAMES  # noqa: E402

SAMPLE = ROOT / "sample"
HEADER = re.compile(r"^\S+ \d+$")
BOX = re.compile(r"^(%s) -?\d+\.\d -?\d+\.\d \d+\.\d \d+\.\d$" % "|".join(CLASS_NAMES))
TIMEOUT_S = 600


def write_lists(work: Path, tiny: bool) -> dict[str, list[str]]:
    """train/valid/test lists from sample/ (tiny: 4/2/2 images), written into work/."""
    lists = {}
    for split, size in {"train": 4, "valid": 2, "test": 2}.items():
        size = size if tiny else None
        names = (SAMPLE / f"{split}.txt").read_text().split()[:size]
        (work / f"{split}.txt").write_text("".join(n + "\n" for n in names))
        lists[split] = names
    return lists


def run_command(cwd: Path, script: str | Path, *args: str, env: dict | None = None
                ) -> tuple[str, float]:
    """Run a project script with this Python: (stdout + stderr, seconds). A failure stops the check.
    Neither PYTHONPATH nor a $CHEXNET_ variable of the caller reaches it."""
    clean = {k: v for k, v in os.environ.items()
             if k != "PYTHONPATH" and not k.startswith("CHEXNET_")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=TIMEOUT_S, env={**clean, **(env or {})})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(script).name} {' '.join(args)} failed ({proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr, seconds


def box_file_format_errors(lines: list[str], expected_images: list[str]) -> list[str]:
    """Lines that break `[image_path] [count]` + count `[disease] [x] [y] [w] [h]` lines."""
    errors, i, images = [], 0, []
    while i < len(lines):
        if not HEADER.match(lines[i]):
            return errors + [f"line {i + 1}: not an image header: {lines[i]!r}"]
        path, count = lines[i].rsplit(" ", 1)
        images.append(path)
        body = range(i + 1, min(i + 1 + int(count), len(lines)))
        errors += [f"line {j + 1}: {lines[j]!r}" for j in body if not BOX.match(lines[j])]
        i += 1 + int(count)
    if images != expected_images:
        errors.append(f"images {images} != {expected_images}")
    return errors


def copy_images(names: list[str], folder: Path) -> None:
    (folder / "images").mkdir(parents=True)
    for name in names:
        shutil.copy(SAMPLE / "images" / name, folder / "images" / name)
    (folder / "test.txt").write_text("".join(n + "\n" for n in names))


def train_options(tiny: bool) -> list[str]:
    """2 short epochs from random weights at batch 8 (tiny: 4), one pass per image (--repeats 1)."""
    return ["--epochs", "2", "--batch-size", "4" if tiny else "8", "--weights", "none",
            "--no-plots", "--repeats", "1"]


def run_chain(work: Path, device: str, tiny: bool, workers: int,
              threads: int | None = None) -> dict:
    """The chain on `device`; returns what it saw (seconds per stage, precision, box-file checks).
    threads: OMP_NUM_THREADS of the commands (None: torch's default)."""
    env = {} if threads is None else {"OMP_NUM_THREADS": str(threads)}
    command = lambda cwd, script, *a, env=env: run_command(cwd, script, *a, env=env)  # noqa: E731
    work.mkdir(parents=True, exist_ok=True)
    lists, seconds = write_lists(work, tiny), {}
    tables = [str(SAMPLE / "Data_Entry_2017.csv"), str(SAMPLE / "BBox_List_2017.csv")]
    out, seconds["preprocessing"] = command(work, ROOT / "preprocessing.py", str(SAMPLE / "images"),
                                            *tables, "train.txt", "valid.txt", "prepared",
                                            "--quiet")
    out, seconds["train"] = command(work, ROOT / "train.py", "prepared", "--device", device,
                                    "--workers", str(workers), *train_options(tiny))
    found = re.search(r"device (\S+), precision (\S+),", out)
    local = work / "local"
    copy_images(lists["test"], local)
    _, seconds["localization"] = command(
        local, ROOT / "denseNet_localization.py", "test.txt", "images", "--model",
        f"../{model_dir.DEFAULT_MODEL}", "--thresholds", "0", "--device", device,
        "--workers", str(workers))
    _, seconds["build_bundle"] = command(work, ROOT / "inference.py", "--build-bundle", "deepQ.zip",
                                         "--model", model_dir.DEFAULT_MODEL, "--thresholds", "0")
    fresh = work / "fresh"
    copy_images(lists["test"], fresh)
    with zipfile.ZipFile(work / "deepQ.zip") as zf:
        zf.extractall(fresh)
    bundle_log, seconds["bundle_run"] = command(fresh, "inference.py", env={
        **env, "CHEXNET_DEVICE": device, "CHEXNET_WORKERS": str(workers)})
    ours = (local / "bounding_box.txt").read_text().splitlines()
    theirs = (fresh / "bounding_box.txt").read_text().splitlines()
    expected = [f"images/{n}" for n in lists["test"]]
    return {"device": device, "train_device": found and found.group(1),
            "train_precision": found and found.group(2),
            "bundle_device": (re.search(r" on (\S+?),", bundle_log) or [None, None])[1],
            "images": {k: len(v) for k, v in lists.items()}, "seconds": seconds,
            "box_lines": len(ours), "boxes": sum(1 for ln in ours if BOX.match(ln)),
            "format_errors": box_file_format_errors(ours, expected)
            + box_file_format_errors(theirs, expected),
            "bundle_equals_localization": ours == theirs,
            "first_difference": next((f"line {i + 1}: {a!r} vs {b!r}" for i, (a, b) in
                                      enumerate(zip(ours, theirs)) if a != b),
                                     None if len(ours) == len(theirs) else "lengths differ")}
