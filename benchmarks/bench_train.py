"""Training steps: train.py's data path against tensors in memory, and by layout and precision.

    python3 benchmarks/bench_train.py [--steps 3] [--batch-size 16] [--device cpu] [--amp off]
    python3 benchmarks/bench_train.py --device cuda --amp both --batch-size 64 --steps 20
    python3 benchmarks/bench_train.py --amp both --threads 2 --workers 0 --skip-data-path

A temporary uint8 (N, 256, 256) .npy is made from real PNGs (repeated to fill the steps). Timed:
  data path     train_data.TrainingCrops over the memory map (random crop/flip per image),
                DataLoader with --workers processes and pinned memory on CUDA,
                train_data.to_input, forward, BCE, backward, Adam step: what train.py does in an
                epoch
  in memory     the same steps on the same batches, already cropped, normalised and on the device
Each run starts after the loader's first batch (worker start-up, paid once an epoch, is left out);
the first step after that is reported apart (its one-off fork cost, once an epoch in train.py) and
the others are compared with the same steps in memory. Then, in memory: the model and input in
NCHW against channels_last, and with --amp both fp32 against train_data.amp_setup's mixed
precision (on CUDA bf16 where supported, cudnn.benchmark on; on the CPU train.py --amp bf16).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from timing import (DEFAULT_FOLDERS, Timings, machine, ratio_line, real_pngs, set_threads, sync,
                    time_once)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from chexnet import train_data  # noqa: E402
from chexnet.utils import run_cli, select_device  # noqa: E402
from chexnet.constants import ADAM_BETAS, LEARNING_RATE  # noqa: E402
from chexnet.images import load_stored  # noqa: E402
from model import build_model  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=str, nargs="+", default=DEFAULT_FOLDERS,
                   help="folders of real PNGs (default: sample/images and ../shared/nih/images "
                        "when present)")
    p.add_argument("--batch-size", type=int, default=16, help="images per step (default: 16)")
    p.add_argument("--steps", type=int, default=3,
                   help="timed steps per run, after the first step (timed apart) (default: 3)")
    p.add_argument("--reps", type=int, default=3, help="runs of each variant (default: 3)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, train_data.default_workers()],
                   help="DataLoader process counts to time, 0 = in the main process (default: 0 "
                        "and train.py's default, the usable CPUs up to 16)")
    p.add_argument("--device", type=str, default="cpu",
                   help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--amp", type=str, default="off", choices=["off", "on", "both"],
                   help="off = fp32, on = train.py's mixed precision (CUDA: --amp auto, the "
                        "CPU: --amp bf16), both = time each (default: off)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch and OpenCV threads; 1 is steadiest on a shared machine (default: 1)")
    p.add_argument("--skip-layout", action="store_true",
                   help="skip NCHW vs channels_last (default: run it)")
    p.add_argument("--skip-data-path", action="store_true",
                   help="skip the data path against in-memory tensors (default: run it)")
    return p


class Stepper:
    """One model + Adam + loss; step(x, y) is train.py's step on an already prepared batch."""

    def __init__(self, device, layout, amp_mode: str):
        torch.manual_seed(0)
        self.model = build_model(weights="none").to(device, memory_format=layout).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE,
                                          betas=ADAM_BETAS)
        self.autocast, self.scaler, self.precision = train_data.amp_setup(device, amp_mode)

    def step(self, x, y) -> None:
        with self.autocast():
            logits = self.model(x)
        loss = train_data.bce_loss(logits, y, None)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()


def make_memmap(folder: Path, paths: list[str], count: int) -> tuple[Path, np.ndarray]:
    stored = np.stack([load_stored(p) for p in paths])
    images = stored[np.arange(count) % len(stored)]  # (count, 256, 256) uint8
    path = folder / "train_X.npy"
    np.save(path, images, allow_pickle=False)
    labels = np.random.default_rng(0).integers(0, 2, size=(count, 8)).astype(np.uint8)
    return path, labels


def data_path_run(stepper, dataset, batches, device, workers) -> tuple[float, float]:
    """(seconds of the first step, seconds of the other steps) once the loader's first batch is in;
    stepper None: loading alone. The first step after the workers are forked pays a one-off cost
    (copy-on-write faults on the model and optimizer pages), once an epoch in train.py."""
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    marks = []
    for images, targets in loader:
        sync(device)
        marks.append(time.perf_counter())
        x, y = train_data.to_input(images, device), targets.to(device, non_blocking=True)
        if stepper is not None:
            stepper.step(x, y)
    sync(device)
    marks.append(time.perf_counter())
    # marks[0]: the first batch arrived (start-up excluded)
    return marks[1] - marks[0], marks[-1] - marks[1]


def in_memory(dataset, batches, device, layout):
    """The same batches, cropped, normalised and on the device: [(x, y)]."""
    out = []
    for keys in batches:
        items = [dataset[k] for k in keys]
        x = train_data.to_input(torch.stack([i[0] for i in items]), device)
        x = x.contiguous(memory_format=layout)
        out.append((x, torch.stack([i[1] for i in items]).to(device)))
    return out


def memory_run(stepper, prepared) -> None:
    for x, y in prepared[1:]:
        stepper.step(x, y)


def bench_data_path(args, device, dataset, amp_mode) -> Timings:
    t = Timings("step")
    stepper = Stepper(device, torch.channels_last, amp_mode)
    steps = args.steps + 1
    batches = train_data.epoch_batches(steps * args.batch_size, args.batch_size, 0, 1)
    prepared = in_memory(dataset, batches, device, torch.channels_last)
    memory_run(stepper, prepared[:2])  # warm-up
    for _ in range(args.reps):
        t.add("in memory", time_once(lambda: memory_run(stepper, prepared), device), args.steps)
        for workers in args.workers:
            first, rest = data_path_run(stepper, dataset, batches, device, workers)
            t.add(f"data path ({workers} workers)", rest, args.steps)
            t.add(f"  its first step ({workers} workers)", first)
    for workers in args.workers:  # the loading work itself, without the steps it would overlap with
        for _ in range(args.reps):
            first, rest = data_path_run(None, dataset, batches, device, workers)
            t.add(f"loading alone ({workers} workers)", first + rest, args.steps + 1)
    return t


def bench_variants(args, device, dataset, variants: dict) -> Timings:
    """In-memory steps of each (layout, amp mode) variant, interleaved."""
    t = Timings("step")
    batches = train_data.epoch_batches((args.steps + 1) * args.batch_size, args.batch_size, 0, 1)
    ready = {}
    for name, (layout, amp_mode) in variants.items():
        stepper = Stepper(device, layout, amp_mode)
        prepared = in_memory(dataset, batches, device, layout)
        memory_run(stepper, prepared[:2])  # warm-up (and cudnn.benchmark's search)
        ready[name] = (stepper, prepared)
    for _ in range(args.reps):
        for name, (stepper, prepared) in ready.items():
            t.run(name, lambda: memory_run(stepper, prepared), args.steps, device)
    return t


def main(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    device = select_device(args.device)
    if args.steps < 1:
        raise SystemExit("--steps must be at least 1")
    if args.skip_data_path and args.skip_layout and args.amp != "both":
        raise SystemExit("nothing to time: --skip-data-path and --skip-layout leave only "
                         "--amp both's comparison")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    mixed = "auto" if device.type == "cuda" else "bf16"  # train.py's mixed precision there
    amp_modes = {"off": ["off"], "on": [mixed], "both": ["off", mixed]}[args.amp]
    paths = real_pngs(args.images)
    print(f"machine: {machine()}; device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f"; batch {args.batch_size}, {args.steps} timed steps a run")
    with tempfile.TemporaryDirectory() as folder:
        npy, labels = make_memmap(Path(folder), paths, (args.steps + 1) * args.batch_size)
        dataset = train_data.TrainingCrops(npy, labels, np.arange(len(labels)), True, 0)
        if not args.skip_data_path:
            data_path_table(args, device, dataset, amp_modes[-1])
        variants = {} if args.skip_layout else {
            "NCHW": (torch.contiguous_format, amp_modes[0]),
            "channels_last": (torch.channels_last, amp_modes[0])}
        if args.amp == "both":  # fp32 beside it, with the same layout
            variants.setdefault("channels_last", (torch.channels_last, "off"))
            precision = train_data.amp_setup(device, mixed)[2]
            variants[f"channels_last + {precision}"] = (torch.channels_last, mixed)
        if variants:
            v = bench_variants(args, device, dataset, variants)
            print(v.table(next(iter(v.samples)), "in-memory step time by layout and precision"))
            for name in v.samples:
                print(f"  {name}: {args.batch_size / v.median(name):.1f} images/s")
            if args.amp == "both":
                speedup = v.median("channels_last") / v.median(f"channels_last + {precision}")
                print(f"  channels_last fp32 time / channels_last + {precision}: {speedup:.2f}x")


def data_path_table(args, device, dataset, amp_mode: str) -> None:
    t = bench_data_path(args, device, dataset, amp_mode)
    precision = train_data.amp_setup(device, amp_mode)[2]
    print(t.table("in memory", "train.py's data path vs in-memory tensors "
                               f"({precision}, channels_last)"))
    for workers in args.workers:
        over = t.median(f"data path ({workers} workers)") / t.median("in memory")
        print(ratio_line(f"data path ({workers} workers) time / in memory", over, "<= 1.10",
                         over <= 1.10))


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
