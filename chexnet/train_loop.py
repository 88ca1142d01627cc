"""train.py's epoch and validation loops, for one process or each rank under torchrun.

Under torchrun each rank trains on its part of every global batch (train_data.EpochBatches) and
DistributedDataParallel averages the gradients over the ranks; each part's loss is scaled by its
share of the global batch, so the average is the gradient of the global batch's mean loss.
Validation deals the one-process batches out to the ranks and gathers their probabilities, so
AUROCs and thresholds are those of one process validating the same weights.
"""
from __future__ import annotations

import math
import sys
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from chexnet import distributed, metrics
from chexnet.constants import CLASS_NAMES
from chexnet.train_data import bce_loss, to_input


def train_one_epoch(model, loader, optimizer, scaler, weights, device, autocast,
                    epoch: int, rate: Callable[[int], float]) -> float:
    """One pass over the training batches, step i at rate(i); returns the mean training loss
    (over every rank's images)."""
    model.train()
    total, count = torch.zeros((), device=device), 0
    scales = loader.batch_sampler.loss_scales()  # 1.0 each in one process
    bar = tqdm(loader, desc=f"epoch {epoch} train", file=sys.stderr, leave=False,
               dynamic_ncols=True, disable=not distributed.is_main())
    for step, (images, targets) in enumerate(bar):
        distributed.maybe_kill(epoch, step)
        x, y = to_input(images, device), targets.to(device, non_blocking=True)
        with autocast():
            logits = model(x)  # (B, 8)
        loss = bce_loss(logits, y, weights)
        for group in optimizer.param_groups:
            group["lr"] = rate(step)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss * scales[step]).backward()
        scaler.step(optimizer)
        scaler.update()
        n = len(y) if scales[step] > 0 else 0  # a stand-in image of an empty part counts 0
        total += loss.detach() * n
        count += n
        if step % 10 == 0:  # .item() syncs the GPU: only now and then
            bar.set_postfix(loss=f"{total.item() / max(count, 1):.4f}")
    total, count = _sum_over_ranks(total, count)
    mean = total / max(count, 1)
    if not math.isfinite(mean):
        raise FloatingPointError(f"epoch {epoch}: training loss is {mean}; "
                                 "lower --lr or try --amp off")
    return mean


def _sum_over_ranks(total: torch.Tensor, count: int) -> tuple[float, int]:
    if distributed.world_size() == 1:
        return total.item(), count
    pairs = distributed.all_gather_objects((total.item(), count))
    return sum(t for t, _ in pairs), sum(c for _, c in pairs)


@torch.no_grad()
def validate(model, loader, device, class_names=CLASS_NAMES) -> dict:
    """Centre-crop validation: unweighted BCE, per-class and mean AUROC, and the raw
    probabilities. Under torchrun `loader` holds this rank's batches (batch b on rank b % world)
    and every rank gets the results of all of them, in one-process order."""
    model.eval()
    batches = []  # per batch: probs (B, C), labels (B, C), its loss * B
    for images, targets in tqdm(loader, desc="validate", file=sys.stderr, leave=False,
                                dynamic_ncols=True, disable=not distributed.is_main()):
        # fp32 even under a caller's autocast: AUROC, the best epoch and the thresholds come from
        # the probabilities localization computes (fp32), so no image near a threshold flips.
        with torch.autocast(device.type, enabled=False):
            logits = model(to_input(images, device)).float()  # (B, C)
        loss = bce_loss(logits, targets.to(device), None).item() * len(targets)
        batches.append((torch.sigmoid(logits).cpu().numpy(), targets.numpy(), loss))
    batches = interleave(distributed.all_gather_objects(batches))
    loss_sum = 0.0
    for _, _, loss in batches:  # summed in batch order, as one process does
        loss_sum += loss
    probs = np.concatenate([p for p, _, _ in batches])
    labels = np.concatenate([y for _, y, _ in batches])
    aurocs = metrics.per_class_auroc(labels, probs)
    return {"valid_loss": loss_sum / len(labels), "auroc": dict(zip(class_names, aurocs)),
            "mean_auroc": metrics.mean_auroc(aurocs), "probs": probs, "labels": labels}


def interleave(parts: list[list]) -> list:
    """Per-rank lists of batches (rank r's k-th is batch k * world + r) -> all, in batch order."""
    return [part[k] for k in range(max(map(len, parts))) for part in parts if k < len(part)]


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Rank 0's batch-norm running statistics to every rank (each rank's last forward updated
    its own): validation then uses the weights and statistics rank 0 saves."""
    if distributed.world_size() > 1:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, 0)


def report(record: dict, epochs: int) -> None:
    print(f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f}, valid loss "
          f"{record['valid_loss']:.4f}, mean AUROC {metrics.format_auroc(record['mean_auroc'])} "
          f"({record['seconds']:.0f} s)")
    for name, value in record["auroc"].items():
        print(f"  AUROC {name:<13} {metrics.format_auroc(value)}")


def score(record: dict) -> float:
    """Higher is better: mean AUROC, or minus the validation loss when no AUROC is defined."""
    return record["mean_auroc"] if record["mean_auroc"] is not None else -record["valid_loss"]
