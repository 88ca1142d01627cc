"""Train DenseNet-121 on a preprocessed folder: python3 train.py PREPROCESSED_DIR [--out model].

The original recipe is the default: images with none of the 8 findings dropped, a random 224 crop of
the 256 image + horizontal flip (on the fly, from the uint8 memory map), the gray channel tiled 3
times, ImageNet normalisation; Adam lr 2e-4 betas (0.9, 0.999), batch 64, 10 epochs, BCE on logits.
Every epoch validates on the centre crop and prints per-class and mean AUROC. Writes the model
folder (chexnet/model_dir.py): last.pt, best.pt (best mean AUROC; lowest validation loss when no
class has a defined AUROC), thresholds.npy (Youden's J of the best epoch), metrics.jsonl, and unless
--no-plots training_curves.png and roc_curves.png. --resume (model, optimizer, scaler and torch RNG)
gives on the CPU the same metrics as an uninterrupted run with the same --seed. Under torchrun
(docs/several_gpus.md) each process trains on its part of every global batch; rank 0 writes.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from chexnet import distributed, metrics, model_dir, preprocessed
from chexnet.constants import (ADAM_BETAS, BATCH_SIZE, CLASS_NAMES, CROP_SIZE, EPOCHS,
                               LEARNING_RATE, REPEATS)
from chexnet.geometry import INPUT_SIZES
from chexnet.train_data import (AMP_MODES, LR_SCHEDULES, EpochBatches, amp_setup,
                                default_workers, learning_rate, loader_options, loss_weights,
                                make_datasets, refuse_cuda_only,
                                to_input)  # noqa: F401 (train.to_input: callers' and tests')
from chexnet.train_loop import broadcast_buffers, report, score, train_one_epoch, validate
from chexnet.utils import InputError, remove_stale_temporaries, run_cli, select_device
from model import build_model, load_checkpoint, load_weights, new_checkpoint, save_checkpoint

LOSS_WEIGHTS = ("none", "chexnet", "wang")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", type=str, help="preprocessed folder written by preprocessing.py")
    p.add_argument("--out", type=str, default="model",
                   help="folder for last.pt, best.pt, thresholds.npy, metrics.jsonl "
                        "(default: model)")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"total epochs (default: {EPOCHS})")
    p.add_argument("--repeats", type=int, default=REPEATS,
                   help="passes over every training image per epoch, each with its own random "
                        f"crop and flip; the original's 4 augmented copies (default: {REPEATS})")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help="global batch size; under torchrun each of N processes takes 1/N of "
                        f"every batch (default: {BATCH_SIZE})")
    p.add_argument("--lr", type=float, default=LEARNING_RATE,
                   help=f"Adam learning rate, betas {ADAM_BETAS} (default: {LEARNING_RATE})")
    p.add_argument("--lr-schedule", type=str, default="constant", choices=LR_SCHEDULES,
                   help="constant (the original's) or cosine: per step from --lr down to 0 at the "
                        "last step (default: constant)")
    p.add_argument("--warmup-epochs", type=float, default=0.0,
                   help="linear warm-up of the rate over this many epochs (default: 0, none)")
    p.add_argument("--loss-weight", type=str, default="none", choices=LOSS_WEIGHTS,
                   help="per-class weights of the BCE terms from training-set counts, P positives "
                        "and N negatives of the class: 'chexnet' weighs a positive N/(P+N) and a "
                        "negative P/(P+N) (the CheXNet paper; the original computed it and never "
                        "used it); 'wang' weighs a positive (P+N)/P and a negative (P+N)/N "
                        "(Wang et al. 2017, counts "
                        "floored at 1); 'none' weighs all 1 (default: none)")
    p.add_argument("--keep-no-finding", action="store_true",
                   help="keep training images with none of the 8 findings (default: dropped, as "
                        "the original)")
    p.add_argument("--weights", type=str, default="imagenet",
                   help="initial weights: imagenet (torchvision; random init with a warning when "
                        "they cannot be loaded), none (random), or PATH to a DenseNet-121 state "
                        "dict (default: imagenet)")
    p.add_argument("--keep-head", action="store_true",
                   help="with --weights PATH of the same classes: its classifier too, a fine-tune "
                        "(e.g. at a larger --input-size) (default: the head starts afresh)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt: model, optimizer, epoch, RNG "
                        "(default: start afresh)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of init, batch order and augmentation (default: 0)")
    p.add_argument("--device", type=str, default="auto",
                   help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--amp", type=str, default="auto", choices=AMP_MODES,
                   help="mixed precision. CUDA: auto = bf16 where native, else fp16 with a "
                        "gradient scaler. CPU: auto and off = fp32, bf16 = bf16 autocast, fp16 is "
                        "refused. off = fp32 everywhere (default: auto)")
    p.add_argument("--no-plots", dest="plots", action="store_false",
                   help="do not draw training_curves.png and roc_curves.png into --out "
                        "(default: draw them after each epoch, outside the timed part)")
    p.add_argument("--sync-bn", action="store_true", help="under torchrun on GPUs: batch-norm "
                   "statistics over the global batch (SyncBatchNorm; CUDA only) (default: off)")
    p.add_argument("--input-size", type=int, default=None, choices=INPUT_SIZES,
                   help="side of the crops, recorded in the checkpoints; the folder's own (its "
                        "preprocessing.py --input-size) or an error (default: the folder's: 224)")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="data-loading processes, kept between epochs; 0 = in the main process "
                        f"(default: the usable CPUs, at most 16: {default_workers()} here)")
    return p


def plain_args(args) -> dict:
    """argparse values as str/int/float/bool/None only: the checkpoint loads with weights_only."""
    return {k: v if v is None or isinstance(v, (str, int, float, bool)) else str(v)
            for k, v in vars(args).items()}


def make_checkpoint(run: Run, args, epoch: int, record: dict, thresholds, extra: dict) -> dict:
    """model.py's checkpoint dict, plus `extra` (the optimizer and --resume state for last.pt)."""
    return {**new_checkpoint(run.model.state_dict(), epoch=epoch, metrics=record,
                             args=plain_args(args), thresholds=thresholds, resize=run.resize,
                             class_names=run.class_names, input_size=run.input_size),
            **extra}


def read_metrics(path: Path, upto: int) -> list[dict]:
    """Records of epochs 1..upto: on resume, lines of epochs after the last checkpoint go."""
    if not path.is_file():
        return []
    return [r for r in model_dir.read_metrics_log(path) if r["epoch"] <= upto]


RECIPE = ("batch_size", "lr", "loss_weight", "keep_no_finding", "seed", "repeats",
          "lr_schedule", "warmup_epochs", "amp")


def resume(out: Path, args, model, optimizer, scaler) -> tuple[int, dict | None, list[dict]]:
    """Restore last.pt; return (last completed epoch, best-so-far, metric records)."""
    path = out / model_dir.LAST
    if not path.is_file():
        raise InputError(f"{path}: not found; nothing to --resume (run without --resume to start)")
    ckpt = load_checkpoint(path)
    if "optimizer" not in ckpt or "rng" not in ckpt or ckpt.get("epoch") is None:
        raise InputError(f"{path}: not a training checkpoint of train.py "
                         "(no optimizer/epoch state)")
    defaults = get_args_parser()  # what a checkpoint older than an option ran with
    for key in RECIPE + (("epochs",) if args.lr_schedule == "cosine" else ()):
        used = ckpt["args"].get(key, defaults.get_default(key))
        if used != getattr(args, key):
            print(f"warning: --resume with {key}={getattr(args, key)!r}, the run used "
                  f"{used!r}; results will differ from an uninterrupted run", file=sys.stderr)
    preprocessed.warn_if_resized_otherwise(args.data, ckpt["resize"], path)
    if ckpt["input_size"] != args.input_size:
        raise InputError(f"{path}: trained at input size {ckpt['input_size']}, but {args.data} "
                         f"holds images for {args.input_size}; --resume needs the run's folder")
    load_weights(model, ckpt["model"], str(path))
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if ckpt.get("world_size", 1) != distributed.world_size():
        print(f"warning: resuming a run of {ckpt.get('world_size', 1)} processes on "
              f"{distributed.world_size()}: per-process batch-norm statistics differ, so results "
              "will differ from an uninterrupted run", file=sys.stderr)
    print(f"resuming from {path} after epoch {ckpt['epoch']}")
    return ckpt["epoch"], ckpt.get("best"), read_metrics(out / model_dir.METRICS_LOG, ckpt["epoch"])


def draw_plots(out: Path, roc: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> None:
    """training_curves.png from metrics.jsonl; roc_curves.png too when roc = (labels, probs,
    thresholds) of a new best epoch ((N, 8), (N, 8), (8,)). A second or so per epoch."""
    from chexnet import training_figures  # matplotlib loads only when pictures are drawn

    training_figures.training_figures(out, out / model_dir.METRICS_LOG,
                                      *(roc or (None, None, None)))


@dataclass
class Run:
    """Everything a training run wires together (setup builds it from the arguments)."""
    device: torch.device
    model: torch.nn.Module  # the plain model: its state dict is the checkpoints'
    net: torch.nn.Module  # what the training steps run: DistributedDataParallel(model) or model
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: Callable
    train_loader: DataLoader  # batches of train_loader.batch_sampler's epoch (EpochBatches)
    valid_loader: DataLoader
    weights: tuple[torch.Tensor, torch.Tensor] | None
    resize: str  # how the preprocessed images were resized (meta.json), recorded in checkpoints
    class_names: tuple[str, ...] = CLASS_NAMES  # meta.json's: the original's 8 or all 14
    input_size: int = CROP_SIZE  # the crops' side, the folder's (meta.json), in checkpoints


def check_args(args) -> None:
    """One line for options that cannot run, before any process group forms."""
    if args.batch_size < 2:
        raise InputError(f"--batch-size {args.batch_size}: must be at least 2 "
                         "(BatchNorm needs 2 images)")
    if args.epochs < 1 or args.repeats < 1 or args.warmup_epochs < 0:
        raise InputError(f"--epochs {args.epochs}, --repeats {args.repeats}, --warmup-epochs "
                         f"{args.warmup_epochs}: epochs and repeats at least 1, warm-up at least 0")
    world = int(os.environ.get("WORLD_SIZE", "1")) if distributed.under_torchrun() else 1
    if args.batch_size % world:
        raise InputError(f"--batch-size {args.batch_size} does not divide among {world} "
                         f"processes: give a multiple of {world}")
    refuse_cuda_only(select_device(args.device).type, args.sync_bn, args.amp)


def wrap(model: torch.nn.Module, device: torch.device, sync_bn: bool) -> torch.nn.Module:
    """The module the training steps run: DistributedDataParallel under torchrun, else `model`
    itself. --sync-bn: batch-norm statistics over all ranks (CUDA only in PyTorch)."""
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if not torch.distributed.is_initialized():
        return model
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def setup(args) -> Run:
    """Device (and under torchrun the process group), model, optimizer, scaler, autocast,
    datasets and loss weights."""
    check_args(args)
    device = distributed.init(select_device(args.device))
    torch.manual_seed(args.seed)  # the head's (and, with --weights none, all) initial weights
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    data = preprocessed.load_prepared(args.data)
    args.input_size = input_size = data.input_size(args.input_size)  # the folder's: checked
    train_set, valid_set = make_datasets(data, args.keep_no_finding, args.seed)
    class_names = tuple(data.meta["class_names"])
    model = build_model(len(class_names), "none" if args.resume else args.weights, args.keep_head)
    model = model.to(device, memory_format=torch.channels_last)
    net = wrap(model, device, args.sync_bn)
    model = net.module if isinstance(net, DistributedDataParallel) else net
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=ADAM_BETAS)
    autocast, scaler, precision = amp_setup(device, args.amp)
    print(f"device {device}, precision {precision}, {args.workers} data workers"
          + (f" per process, {distributed.world_size()} processes"
             if distributed.world_size() > 1 else ""))
    weights = loss_weights(train_set.labels.numpy(), args.loss_weight)
    weights = None if weights is None else tuple(w.to(device) for w in weights)
    loader_kw = loader_options(device.type, args.workers)
    batches = EpochBatches(len(train_set), args.batch_size, args.seed, args.repeats,
                           distributed.rank(), distributed.world_size())
    train_loader = DataLoader(train_set, batch_sampler=batches, **loader_kw)
    valid_batches = [list(range(s, e)) for s, e in
                     distributed.batch_shares(len(valid_set), args.batch_size)[distributed.rank()]]
    valid_loader = DataLoader(valid_set, batch_sampler=valid_batches, **loader_kw)
    return Run(device, model, net, optimizer, scaler, autocast, train_loader, valid_loader,
               weights, data.resize, class_names, input_size)


def run_epoch(run: Run, args, epoch: int) -> tuple[dict, dict]:
    """Train one epoch and validate: (the metrics.jsonl record, validate()'s result)."""
    start = time.perf_counter()
    run.train_loader.batch_sampler.set_epoch(epoch)
    steps = len(run.train_loader.batch_sampler)  # the same every epoch
    done = (epoch - 1) * steps

    def rate(step: int) -> float:
        return learning_rate(args.lr, args.lr_schedule, done + step, args.epochs * steps,
                             round(args.warmup_epochs * steps))
    train_loss = train_one_epoch(run.net, run.train_loader, run.optimizer, run.scaler,
                                 run.weights, run.device, run.autocast, epoch, rate)
    broadcast_buffers(run.model)
    result = validate(run.model, run.valid_loader, run.device, run.class_names)
    record = {"epoch": epoch, "train_loss": train_loss, "valid_loss": result["valid_loss"],
              "auroc": result["auroc"], "mean_auroc": result["mean_auroc"],
              "seconds": round(time.perf_counter() - start, 3),
              "world_size": distributed.world_size()}
    return record, result


def save_epoch(run: Run, args, out: Path, records: list[dict], result: dict,
               best: dict | None) -> dict:
    """Rank 0's files of an epoch: metrics.jsonl, best.pt and thresholds.npy when it improved,
    last.pt, the pictures. Returns the best-so-far (every rank computes it alike)."""
    record, epoch = records[-1], records[-1]["epoch"]
    improved = best is None or score(record) > best["score"]
    if improved:
        best = {"epoch": epoch, "score": score(record)}
    if not distributed.is_main():
        return best
    model_dir.write_metrics_log(out / model_dir.METRICS_LOG, records)
    report(record, args.epochs)
    thresholds = None
    if improved:
        thresholds = metrics.youden_thresholds(result["labels"], result["probs"])
        model_dir.save_thresholds(out / model_dir.THRESHOLDS, thresholds)
        save_checkpoint(out / model_dir.BEST, make_checkpoint(run, args, epoch, record,
                                                              thresholds, {"optimizer": None}))
        print(f"  best so far: saved {out / model_dir.BEST} and {out / model_dir.THRESHOLDS}")
    save_checkpoint(out / model_dir.LAST, make_checkpoint(run, args, epoch, record, None, {
        "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(),
        "best": best, "world_size": distributed.world_size(),
        "rng": {"torch": torch.get_rng_state()}}))
    if args.plots:
        draw_plots(out, (result["labels"], result["probs"], thresholds) if improved else None)
    return best


def main(args) -> None:
    distributed.quiet_other_ranks()
    out = Path(args.out)
    if distributed.restarted() and (out / model_dir.LAST).is_file():
        args.resume = True  # torchrun --max-restarts started the group again: go on from last.pt
    run = setup(args)
    if distributed.is_main():  # a killed save leaves ~85 MB temporaries
        remove_stale_temporaries(out, model_dir.TRAINING_OUTPUTS)
    done, best, records = 0, None, []
    if args.resume:
        done, best, records = resume(out, args, run.model, run.optimizer, run.scaler)
    if done >= args.epochs:
        print(f"{out / model_dir.LAST} has {done} epochs already; raise --epochs to train more")
        return distributed.close()
    for epoch in range(done + 1, args.epochs + 1):
        record, result = run_epoch(run, args, epoch)
        records.append(record)
        best = save_epoch(run, args, out, records, result, best)
        distributed.barrier()  # last.pt of this epoch is complete before any rank goes on
    print(f"done: best epoch {best['epoch']} ({out / model_dir.BEST})")
    distributed.close()


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
