"""Train DenseNet-121 on a preprocessed folder: python3 train.py PREPROCESSED_DIR [--out model].

The original recipe is the default: images with none of the 8 findings dropped, a random 224
crop of the 256 image + horizontal flip (on the fly, from the uint8 memory map), the gray
channel tiled 3 times, ImageNet normalisation; Adam lr 2e-4 betas (0.9, 0.999), batch 64,
10 epochs, BCE on logits. Every epoch validates on the centre crop and prints per-class and
mean AUROC. Writes into --out: last.pt, best.pt (best mean AUROC; lowest validation loss when
no class has a defined AUROC), thresholds.npy (float32 (8,), Youden's J of the best epoch)
and metrics.jsonl (one JSON object per epoch); unless --no-plots, training_curves.png (loss
and AUROC per epoch, redrawn after each epoch) and roc_curves.png (validation ROC per class at
the best epoch, its threshold marked).

Reproducible: the batch order of epoch e is a permutation drawn from (seed, e) and each
image's crop/flip from (seed, e, image), so results do not depend on --workers, and
--resume (which restores model, optimizer, scaler and torch RNG) gives on the CPU the same
metrics as an uninterrupted run with the same --seed.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import metrics
import prepared
import transforms
from common import InputError, atomic_path, remove_stale_temporaries, run_cli, select_device, usable_cpus
from constants import ADAM_BETAS, BATCH_SIZE, CLASS_NAMES, EPOCHS, LEARNING_RATE
from metrics_log import read_metrics_log, write_metrics_log
from model import build_model, load_checkpoint, load_weights, new_checkpoint, save_checkpoint

LOSS_WEIGHTS = ("none", "chexnet", "wang")
AMP_MODES = ("auto", "bf16", "fp16", "off")
# What train.py writes into --out (the pictures come from plots.training_figures).
OUTPUT_FILES = ("best.pt", "last.pt", "thresholds.npy", "metrics.jsonl", "training_curves.png", "roc_curves.png")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=str, help="preprocessed folder written by preprocessing.py")
    p.add_argument("--out", type=str, default="model",
                   help="folder for last.pt, best.pt, thresholds.npy, metrics.jsonl (default: model)")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"total epochs (default: {EPOCHS})")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"batch size (default: {BATCH_SIZE})")
    p.add_argument("--lr", type=float, default=LEARNING_RATE,
                   help=f"Adam learning rate, betas {ADAM_BETAS} (default: {LEARNING_RATE})")
    p.add_argument("--loss-weight", type=str, default="none", choices=LOSS_WEIGHTS,
                   help="per-class weights of the BCE terms from training-set counts, P positives and "
                        "N negatives of the class: 'chexnet' weighs a positive N/(P+N) and a negative "
                        "P/(P+N) (the CheXNet paper; the original computed it and never used it); 'wang' "
                        "weighs a positive (P+N)/P and a negative (P+N)/N (Wang et al. 2017, counts "
                        "floored at 1); 'none' weighs all 1 (default: none)")
    p.add_argument("--keep-no-finding", action="store_true",
                   help="keep training images with none of the 8 findings (default: dropped, as the original)")
    p.add_argument("--weights", type=str, default="imagenet",
                   help="initial weights: imagenet (torchvision; random init with a warning when they "
                        "cannot be loaded), none (random), or PATH to a DenseNet-121 state dict (default: imagenet)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt: model, optimizer, epoch, RNG (default: start afresh)")
    p.add_argument("--seed", type=int, default=0, help="seed of init, batch order and augmentation (default: 0)")
    p.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--amp", type=str, default="auto", choices=AMP_MODES,
                   help="mixed precision on CUDA: auto = bf16 where supported, else fp16 with a gradient "
                        "scaler; off = fp32. Ignored on the CPU (default: auto)")
    p.add_argument("--no-plots", dest="plots", action="store_false",
                   help="do not draw training_curves.png and roc_curves.png into --out (default: draw them "
                        "after each epoch, outside the timed part)")
    p.add_argument("--workers", type=int, default=min(4, usable_cpus()),
                   help="data-loading processes, 0 = in the main process (default: min(4, usable CPUs))")
    return p


class CropDataset(Dataset):
    """Rows of a (N, 256, 256) uint8 .npy as uint8 (224, 224) crops + float32 (8,) labels.

    Train items are keyed (row, epoch) and get a random crop/flip seeded by (seed, epoch, row);
    eval items are keyed by row and get the centre crop. The memory map is opened lazily in each
    worker (pickling an np.memmap would copy the whole array into every worker).
    """

    def __init__(self, images_path: Path, labels: np.ndarray, rows: np.ndarray, train: bool, seed: int):
        self.images_path, self.rows, self.train, self.seed = images_path, rows, train, seed
        self.labels = torch.from_numpy(labels[rows].astype(np.float32))  # (n, 8)
        self._images = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}

    def __getitem__(self, key):
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r", allow_pickle=False)
        if self.train:
            i, epoch = key
            rng = np.random.default_rng([self.seed, epoch, i])
            crop = transforms.random_crop_flip(self._images[self.rows[i]], rng)
        else:
            i = key
            crop = transforms.center_crop(self._images[self.rows[i]])
        return torch.from_numpy(np.ascontiguousarray(crop)), self.labels[i]  # uint8 (224, 224), (8,)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """Shuffled batches of (item, epoch) keys; every item is used. A last batch of one item joins
    the previous batch, since BatchNorm cannot train on a batch of one."""
    order = np.random.default_rng([seed, epoch]).permutation(n).tolist()
    batches = [[(i, epoch) for i in order[s:s + batch_size]] for s in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2].extend(batches.pop())
    return batches


def loss_weights(labels: np.ndarray, mode: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(positive weight, negative weight), each float32 (C,), from 0/1 training labels (N, C)."""
    if mode == "none":
        return None
    pos = labels.sum(axis=0).astype(np.float64)
    neg = len(labels) - pos
    if mode == "chexnet":
        w_pos, w_neg = neg / len(labels), pos / len(labels)
    else:  # wang
        w_pos, w_neg = len(labels) / np.maximum(pos, 1), len(labels) / np.maximum(neg, 1)
    return torch.tensor(w_pos, dtype=torch.float32), torch.tensor(w_neg, dtype=torch.float32)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor, weights) -> torch.Tensor:
    """Mean BCE over (B, C) logits in fp32; each term weighted by its class's pos/neg weight if given."""
    terms = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    if weights is not None:
        w_pos, w_neg = weights
        terms = terms * (targets * w_pos + (1 - targets) * w_neg)
    return terms.mean()


def to_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, 224, 224) -> normalised float (B, 3, 224, 224) on the device, channels_last."""
    x = transforms.normalize(images.to(device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last)


def train_one_epoch(model, loader, optimizer, scaler, weights, device, autocast, epoch: int) -> float:
    """One pass over the training batches; returns the mean training loss."""
    model.train()
    total, count = torch.zeros((), device=device), 0
    bar = tqdm(loader, desc=f"epoch {epoch} train", file=sys.stderr, leave=False, dynamic_ncols=True)
    for step, (images, targets) in enumerate(bar):
        x, y = to_input(images, device), targets.to(device, non_blocking=True)
        with autocast():
            logits = model(x)  # (B, 8)
        loss = bce_loss(logits, y, weights)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += loss.detach() * len(y)
        count += len(y)
        if step % 10 == 0:  # .item() syncs the GPU: only now and then
            bar.set_postfix(loss=f"{total.item() / count:.4f}")
    mean = total.item() / max(count, 1)
    if not math.isfinite(mean):
        raise FloatingPointError(f"epoch {epoch}: training loss is {mean}; lower --lr or try --amp off")
    return mean


@torch.no_grad()
def evaluate(model, loader, device, autocast, class_names=CLASS_NAMES) -> dict:
    """Centre-crop validation: unweighted BCE, per-class and mean AUROC, and the raw probabilities."""
    model.eval()
    probs, labels, loss_sum = [], [], 0.0
    for images, targets in tqdm(loader, desc="validate", file=sys.stderr, leave=False, dynamic_ncols=True):
        with autocast():
            logits = model(to_input(images, device)).float()  # (B, 8)
        loss_sum += bce_loss(logits, targets.to(device), None).item() * len(targets)
        probs.append(torch.sigmoid(logits).cpu().numpy())
        labels.append(targets.numpy())
    probs, labels = np.concatenate(probs), np.concatenate(labels)
    aurocs = metrics.per_class_auroc(labels, probs)
    return {"valid_loss": loss_sum / len(labels), "auroc": dict(zip(class_names, aurocs)),
            "mean_auroc": metrics.mean_auroc(aurocs), "probs": probs, "labels": labels}


def amp_setup(device: torch.device, mode: str):
    """(autocast context factory, GradScaler, name): one code path for CPU, CUDA fp32, bf16, fp16."""
    dtype = None
    if device.type == "cuda" and mode != "off":
        bf16 = mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported())
        dtype = torch.bfloat16 if bf16 else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if dtype is None:
        return nullcontext, scaler, "fp32"
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler, str(dtype).split(".")[-1]


def make_datasets(data: prepared.Prepared, args) -> tuple[CropDataset, CropDataset]:
    """Training rows (those with a finding unless --keep-no-finding) and all validation rows."""
    train_y, valid_y = np.asarray(data.train.labels), np.asarray(data.valid.labels)
    rows = np.arange(len(train_y)) if args.keep_no_finding else np.flatnonzero(train_y.sum(axis=1) > 0)
    print(f"train: {len(rows)} of {len(train_y)} images"
          + ("" if args.keep_no_finding else " (those with none of the 8 findings dropped)")
          + f"; valid: {len(valid_y)} images")
    if len(rows) < 2:
        hint = "" if args.keep_no_finding else " (images without findings were dropped; --keep-no-finding keeps them)"
        raise InputError(f"{data.folder}: {len(rows)} training image(s); training needs at least 2{hint}")
    if len(valid_y) == 0:
        raise InputError(f"{data.folder}: no validation images")
    x_train, _ = prepared.array_names("train")
    x_valid, _ = prepared.array_names("valid")
    return (CropDataset(data.folder / x_train, train_y, rows, True, args.seed),
            CropDataset(data.folder / x_valid, valid_y, np.arange(len(valid_y)), False, args.seed))


def plain_args(args) -> dict:
    """argparse values as str/int/float/bool/None only, so the checkpoint loads with weights_only."""
    return {k: v if v is None or isinstance(v, (str, int, float, bool)) else str(v) for k, v in vars(args).items()}


def make_checkpoint(model, args, epoch: int, record: dict, thresholds, extra: dict) -> dict:
    """model.py's checkpoint dict, plus `extra` (the optimizer and --resume state for last.pt)."""
    return {**new_checkpoint(model.state_dict(), epoch=epoch, metrics=record, args=plain_args(args),
                             thresholds=thresholds), **extra}


def save_thresholds(path: Path, thresholds: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # np.save(name) would append '.npy'
        np.save(f, thresholds.astype(np.float32), allow_pickle=False)


def read_metrics(path: Path, upto: int) -> list[dict]:
    """Records of epochs 1..upto: lines of epochs after the last checkpoint are dropped on resume."""
    if not path.is_file():
        return []
    return [r for r in read_metrics_log(path) if r["epoch"] <= upto]


RECIPE = ("batch_size", "lr", "loss_weight", "keep_no_finding", "seed")


def resume(out: Path, args, model, optimizer, scaler) -> tuple[int, dict | None, list[dict]]:
    """Restore last.pt; return (last completed epoch, best-so-far, metric records)."""
    path = out / "last.pt"
    if not path.is_file():
        raise InputError(f"{path}: not found; nothing to --resume (run without --resume to start)")
    ckpt = load_checkpoint(path)
    if "optimizer" not in ckpt or "rng" not in ckpt or ckpt.get("epoch") is None:
        raise InputError(f"{path}: not a training checkpoint of train.py (no optimizer/epoch state)")
    for key in RECIPE:
        if ckpt["args"].get(key) != getattr(args, key):
            print(f"warning: --resume with {key}={getattr(args, key)!r}, the run used "
                  f"{ckpt['args'].get(key)!r}; results will differ from an uninterrupted run", file=sys.stderr)
    load_weights(model, ckpt["model"], str(path))
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    print(f"resuming from {path} after epoch {ckpt['epoch']}")
    return ckpt["epoch"], ckpt.get("best"), read_metrics(out / "metrics.jsonl", ckpt["epoch"])


def draw_plots(out: Path, roc: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> None:
    """training_curves.png from metrics.jsonl; roc_curves.png too when roc = (labels, probs, thresholds)
    of a new best epoch ((N, 8), (N, 8), (8,)). A second or so per epoch."""
    import plots  # matplotlib loads only when pictures are drawn

    plots.training_figures(out, out / "metrics.jsonl", *(roc or (None, None, None)))


def report(record: dict, epochs: int) -> None:
    print(f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f}, valid loss "
          f"{record['valid_loss']:.4f}, mean AUROC {metrics.format_auroc(record['mean_auroc'])} "
          f"({record['seconds']:.0f} s)")
    for name, value in record["auroc"].items():
        print(f"  AUROC {name:<13} {metrics.format_auroc(value)}")


def score(record: dict) -> float:
    """Higher is better: mean AUROC, or minus the validation loss when no AUROC is defined."""
    return record["mean_auroc"] if record["mean_auroc"] is not None else -record["valid_loss"]


def setup(args):
    """Device, model, optimizer, scaler, autocast, loaders and loss weights."""
    if args.batch_size < 2:
        raise InputError(f"--batch-size {args.batch_size}: must be at least 2 (BatchNorm needs 2 images)")
    if args.epochs < 1:
        raise InputError(f"--epochs {args.epochs}: must be at least 1")
    device = select_device(args.device)
    torch.manual_seed(args.seed)  # the head's (and, with --weights none, all) initial weights
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    data = prepared.load_prepared(args.data)
    train_set, valid_set = make_datasets(data, args)
    model = build_model(len(CLASS_NAMES), "none" if args.resume else args.weights)
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=ADAM_BETAS)
    autocast, scaler, precision = amp_setup(device, args.amp)
    print(f"device {device}, precision {precision}, {args.workers} data workers")
    weights = loss_weights(train_set.labels.numpy(), args.loss_weight)
    weights = None if weights is None else tuple(w.to(device) for w in weights)
    loader_kw = {"num_workers": args.workers, "pin_memory": device.type == "cuda"}
    valid_loader = DataLoader(valid_set, batch_size=args.batch_size, shuffle=False, **loader_kw)
    return device, model, optimizer, scaler, autocast, train_set, valid_loader, weights, loader_kw


def main(args) -> None:
    device, model, optimizer, scaler, autocast, train_set, valid_loader, weights, loader_kw = setup(args)
    out = Path(args.out)
    remove_stale_temporaries(out, OUTPUT_FILES)  # a run killed while saving leaves ~85 MB temporaries
    done, best, records = 0, None, []
    if args.resume:
        done, best, records = resume(out, args, model, optimizer, scaler)
    if done >= args.epochs:
        print(f"{out / 'last.pt'} has {done} epochs already; raise --epochs to train more")
        return
    for epoch in range(done + 1, args.epochs + 1):
        start = time.perf_counter()
        batches = epoch_batches(len(train_set), args.batch_size, args.seed, epoch)
        loader = DataLoader(train_set, batch_sampler=batches, **loader_kw)
        train_loss = train_one_epoch(model, loader, optimizer, scaler, weights, device, autocast, epoch)
        result = evaluate(model, valid_loader, device, autocast)
        record = {"epoch": epoch, "train_loss": train_loss, "valid_loss": result["valid_loss"],
                  "auroc": result["auroc"], "mean_auroc": result["mean_auroc"],
                  "seconds": round(time.perf_counter() - start, 3)}
        records.append(record)
        write_metrics_log(out / "metrics.jsonl", records)
        report(record, args.epochs)
        improved = best is None or score(record) > best["score"]
        if improved:
            best = {"epoch": epoch, "score": score(record)}
            thresholds = metrics.youden_thresholds(result["labels"], result["probs"])
            save_thresholds(out / "thresholds.npy", thresholds)
            save_checkpoint(out / "best.pt", make_checkpoint(model, args, epoch, record, thresholds,
                                                             {"optimizer": None}))
            print(f"  best so far: saved {out / 'best.pt'} and {out / 'thresholds.npy'}")
        save_checkpoint(out / "last.pt", make_checkpoint(model, args, epoch, record, None, {
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "best": best,
            "rng": {"torch": torch.get_rng_state()}}))
        if args.plots:
            draw_plots(out, (result["labels"], result["probs"], thresholds) if improved else None)
    print(f"done: best epoch {best['epoch']} ({out / 'best.pt'})")


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
