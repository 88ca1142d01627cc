"""What --input-size costs: a training step and localization per image at 224 and 448, one run.

    python3 benchmarks/bench_input_size.py [--sizes 224 448] [--batch-size 4] [--steps 2]
        [--reps 3] [--localize-images 4] [--device cpu]

Timed, for each input size S, interleaved (so a burst of load from elsewhere hits every size):
  train step    train.py's step (forward, BCE, backward, Adam; channels_last) on a batch of random
                S crops of real PNGs stored at S * 256 / 224, already on the device
  localization  localize.iter_localize end to end (decode, resize, crop, forward, Grad-CAM of all
                8 classes at the default layer, 224 maps, peaks boxes), per image, in this process
Then the ratio of each size's median to the first size's: what the finer input costs. On CUDA the
peak memory of a training step is printed too.
"""
from __future__ import annotations

import argparse

from timing import DEFAULT_FOLDERS, Timings, machine, real_pngs, set_threads, sync, time_once

import numpy as np  # noqa: E402
import torch  # noqa: E402

from chexnet import images, localize, train_data  # noqa: E402
from chexnet.constants import ADAM_BETAS, AVERAGE_BOXES, LEARNING_RATE  # noqa: E402
from chexnet.geometry import INPUT_SIZES, geometry  # noqa: E402
from chexnet.utils import run_cli, select_device  # noqa: E402
from model import build_model  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=str, nargs="+", default=DEFAULT_FOLDERS,
                   help="folders of real PNGs (default: sample/images and ../shared/nih/images "
                        "when present)")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 448], choices=INPUT_SIZES,
                   help="input sizes to compare, the first the baseline (default: 224 448)")
    p.add_argument("--batch-size", type=int, default=4, help="images per step (default: 4)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per run (default: 2)")
    p.add_argument("--reps", type=int, default=3, help="runs of each size (default: 3)")
    p.add_argument("--localize-images", type=int, default=4,
                   help="images per localization run (default: 4)")
    p.add_argument("--device", type=str, default="cpu",
                   help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--amp", action="store_true",
                   help="CUDA: train steps in train_data.amp_setup('auto') mixed precision "
                        "(default: off, fp32)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch and OpenCV threads; 1 is steadiest on a shared machine (default: 1)")
    return p


class Stepper:
    """train.py's step on a prepared batch: one model, Adam, BCE on logits."""

    def __init__(self, device, amp_mode: str):
        torch.manual_seed(0)
        self.model = build_model(weights="none").to(device, memory_format=torch.channels_last)
        self.model.train()
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


def train_batches(paths: list[str], size: int, args, device) -> list[tuple]:
    """args.steps + 1 batches (the first a warm-up) of random S crops, normalised, on the device."""
    stored_size = geometry(size).stored_size
    stored = [images.load_stored(p, images.default_resize(stored_size), stored_size)
              for p in paths]
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(args.steps + 1):
        crops = [images.random_crop_flip(stored[i], rng, size)
                 for i in rng.integers(0, len(stored), args.batch_size)]
        x = train_data.to_input(torch.from_numpy(np.ascontiguousarray(np.stack(crops))), device)
        y = torch.from_numpy(rng.integers(0, 2, (args.batch_size, 8)).astype(np.float32))
        batches.append((x, y.to(device)))
    return batches


def localize_run(net, paths: list[str], size: int, device) -> None:
    """Every box of every image: thresholds -1 make all 8 classes active."""
    results = localize.iter_localize(net, paths, np.full(8, -1.0), np.array(AVERAGE_BOXES),
                                     device, batch_size=len(paths), resize=images.default_resize(
                                         geometry(size).stored_size), input_size=size)
    for _ in results:
        pass


def main(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    device = select_device(args.device)
    if min(args.steps, args.reps, args.batch_size, args.localize_images) < 1:
        raise SystemExit("--steps, --reps, --batch-size and --localize-images must be >= 1")
    paths = real_pngs(args.images)
    print(f"machine: {machine()}; device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f"; train batch {args.batch_size}, {args.steps} timed steps a run, "
          + f"{args.localize_images} images a localization run, {args.reps} runs")
    stepper = Stepper(device, "auto" if args.amp else "off")
    batches = {s: train_batches(paths, s, args, device) for s in args.sizes}
    train, memory = Timings("step"), {}
    for size in args.sizes:  # warm-up, and on CUDA each size's peak memory
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        stepper.step(*batches[size][0])
        sync(device)
        if device.type == "cuda":
            memory[size] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    for _ in range(args.reps):
        for size in args.sizes:
            train.add(f"{size} px", time_once(
                lambda: [stepper.step(x, y) for x, y in batches[size][1:]], device), args.steps)
    torch.manual_seed(0)
    net = build_model(weights="none").eval()
    local, chosen = Timings("image"), paths[:args.localize_images]
    for size in args.sizes:
        localize_run(net, chosen[:1], size, device)  # warm-up
    for _ in range(args.reps):
        for size in args.sizes:
            local.run(f"{size} px", lambda: localize_run(net, chosen, size, device), len(chosen),
                      device)
    print(train.table(title=f"train step, batch {args.batch_size} ({stepper.precision}, "
                            "channels_last)"))
    print(local.table(title="localization end to end, all 8 classes active"))
    base = f"{args.sizes[0]} px"
    for size in args.sizes[1:]:
        name = f"{size} px"
        print(f"  {name} / {base}: train step {train.median(name) / train.median(base):.2f}x, "
              f"localization {local.median(name) / local.median(base):.2f}x"
              + (f"; train-step peak memory {memory[size]:.2f} vs {memory[args.sizes[0]]:.2f} "
                 "GiB" if memory else ""))


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
