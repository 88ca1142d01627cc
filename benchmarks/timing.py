"""What every benchmark shares: the real PNGs, thread settings, repeated timing, the printed table.

Nothing runs on import. Timings are wall-clock (time.perf_counter); each method is run `reps`
times, interleaved with the others so that a burst of load from elsewhere hits all of them,
and reported as median and min-max. Ratios are of medians.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SAMPLE_IMAGES = ROOT / "sample" / "images"
# present on the project's machines, not in clones
SHARED_IMAGES = ROOT.parent / "shared" / "nih" / "images"
DEFAULT_FOLDERS = [str(SAMPLE_IMAGES), str(SHARED_IMAGES)]


def real_pngs(folders: list[str], limit: int | None = None) -> list[str]:
    """PNG paths from the folders that exist, each file name once (the sample repeats shared
    names)."""
    seen: dict[str, str] = {}
    for folder in folders:
        if os.path.isdir(folder):
            for name in sorted(os.listdir(folder)):
                if name.endswith(".png") and name not in seen:
                    seen[name] = os.path.join(folder, name)
    paths = list(seen.values())
    if not paths:
        raise SystemExit(f"no PNGs in {', '.join(folders)}")
    return paths[:limit] if limit else paths


def set_threads(threads: int) -> int:
    """The same intra-op thread count for torch and OpenCV in this process; returns it."""
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    return threads


def machine() -> str:
    """One line: CPU, cores, load, library versions and torch threads."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, load {load:.1f}, Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def sync(device) -> None:
    import torch

    if getattr(device, "type", device) == "cuda":
        torch.cuda.synchronize()


def time_once(fn: Callable[[], object], device="cpu") -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


class Timings:
    """Seconds per unit (image, heatmap, step) of each named method, over repetitions."""

    def __init__(self, unit: str):
        self.unit = unit
        self.samples: dict[str, list[float]] = {}
        self.notes: dict[str, str] = {}

    def add(self, name: str, seconds: float, units: int = 1) -> None:
        self.samples.setdefault(name, []).append(seconds / units)

    def run(self, name: str, fn: Callable[[], object], units: int = 1, device="cpu") -> float:
        seconds = time_once(fn, device)
        self.add(name, seconds, units)
        return seconds

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def table(self, baseline: str | None = None, title: str = "") -> str:
        """Median, min-max (ms per unit), runs, and the ratio median(baseline) / median(method)."""
        width = max(len(n) for n in self.samples)
        lines = [title] if title else []
        head = f"  {'method':<{width}}  {'median':>9}  {'min-max':>17}  runs"
        if baseline:
            head += f"  speed vs {baseline}"
        lines.append(head + f"   (ms per {self.unit})")
        for name, values in self.samples.items():
            med, low, high = 1e3 * self.median(name), 1e3 * min(values), 1e3 * max(values)
            line = f"  {name:<{width}}  {med:9.2f}  {low:8.2f}-{high:<8.2f}  {len(values):4d}"
            if baseline and baseline in self.samples:
                line += f"  {self.median(baseline) / self.median(name):8.2f}x"
            if name in self.notes:
                line += f"  ({self.notes[name]})"
            lines.append(line)
        return "\n".join(lines)


def ratio_line(label: str, value: float, target: str, met: bool) -> str:
    return f"  {label}: {value:.2f}x (target {target}: {'met' if met else 'MISSED'})"


def bench_model(path: str | None, seed: int = 0):
    """The network in eval mode: a checkpoint of ours (or the original's .pkl) when given, else
    DenseNet-121 with random weights (seeded). Timings do not depend on the weights."""
    import torch

    from model import build_model, load_checkpoint, model_from_checkpoint

    if path:
        return model_from_checkpoint(load_checkpoint(path), path).eval()
    torch.manual_seed(seed)
    return build_model(weights="none").eval()


def stored_crops(paths: list[str]):
    """uint8 (N, 224, 224) centre crops of the stored images (what the network sees)."""
    import numpy as np
    import torch

    from chexnet import images
    from chexnet.images import load_stored

    return torch.from_numpy(np.stack([images.center_crop(load_stored(p)) for p in paths]))
