"""train.py's data: crops of the preprocessed arrays, the seeded batch order, the batch on the
device, mixed precision, the loss and its weights.

Reproducible by construction: the batch order of epoch e is a permutation drawn from (seed, e) and
each pass's crop/flip from (seed, e, repeat, image) (--repeats passes per image per epoch), so a run
does not depend on the number of data workers.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from chexnet import preprocessed
from chexnet.constants import CROP_SIZE
from chexnet.distributed import share
from chexnet.images import center_crop, normalize, random_crop_flip
from chexnet.utils import InputError, usable_cpus

AMP_MODES = ("auto", "bf16", "fp16", "off")  # train.py --amp (amp_setup says what each does)

# Most loading processes train.py starts by default: one core turns about 5,000 images/s into
# crops and batches of 64 (benchmarks/README.md), so 16 keep far ahead of one GPU's DenseNet-121
# steps; beyond that they only cost memory and start-up.
MAX_DEFAULT_WORKERS = 16


class TrainingCrops(Dataset):
    """Rows of a (N, 256, 256) uint8 .npy as uint8 (224, 224) crops + float32 (8,) labels
    (crop_size S of a (N, S * 256 / 224, ...) .npy at --input-size S).

    Train items are keyed (row, epoch, repeat) and get a random crop/flip seeded by (seed, epoch,
    repeat, row): each of an image's REPEATS passes in an epoch has its own crop; eval items are
    keyed by row and get the centre crop. The memory map is opened lazily in each worker (pickling
    an np.memmap would copy the whole array into every worker).
    """

    def __init__(self, images_path: Path, labels: np.ndarray, rows: np.ndarray, train: bool,
                 seed: int, crop_size: int = CROP_SIZE):
        self.images_path, self.rows, self.train, self.seed = images_path, rows, train, seed
        self.crop_size = crop_size
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
            i, epoch, repeat = key
            rng = np.random.default_rng([self.seed, epoch, repeat, i])
            crop = random_crop_flip(self._images[self.rows[i]], rng, self.crop_size)
        else:
            i = key
            crop = center_crop(self._images[self.rows[i]], self.crop_size)
        # uint8 (224, 224) (crop_size), (8,)
        return torch.from_numpy(np.ascontiguousarray(crop)), self.labels[i]


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int,
                  repeats: int = 1) -> list[list[tuple[int, int, int]]]:
    """Shuffled batches of (item, epoch, repeat) keys: every item `repeats` times, all shuffled
    together. A last batch of one item joins the previous batch (BatchNorm cannot train on one).

    The original made 4 random crop+flip copies of every image once and trained 10 epochs over all
    of them (40 passes per image); repeats=4 gives its step count, with a fresh crop each pass."""
    order = np.random.default_rng([seed, epoch]).permutation(n * repeats).tolist()
    keys = [(k % n, epoch, k // n) for k in order]
    batches = [keys[s:s + batch_size] for s in range(0, len(keys), batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2].extend(batches.pop())
    return batches


class EpochBatches(Sampler):
    """epoch_batches() of the epoch last given to set_epoch(): one DataLoader (and so one set of
    persistent workers) serves every epoch, with the same batches as a loader made per epoch.

    Under torchrun, rank `rank` of `world` takes its contiguous part of every global batch
    (distributed.share): the global batches, their order and crops stay the one-process ones."""

    def __init__(self, n: int, batch_size: int, seed: int, repeats: int = 1, rank: int = 0,
                 world: int = 1):
        self.n, self.batch_size, self.seed, self.repeats = n, batch_size, seed, repeats
        self.rank, self.world = rank, world
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.parts())

    def batches(self) -> list[list[tuple[int, int, int]]]:
        return [part for part, _ in self.parts()]

    def loss_scales(self) -> list[float]:
        """Per step, this part's share of its global batch times world (1.0 in one process):
        DDP's mean over ranks of the scaled losses' gradients is the global batch's."""
        return [scale for _, scale in self.parts()]

    def parts(self) -> list[tuple[list[tuple[int, int, int]], float]]:
        """(this rank's keys, loss scale) per global batch. A part left empty by a short last
        batch takes the batch's last key with scale 0: every rank steps, it adds nothing."""
        out = []
        for batch in epoch_batches(self.n, self.batch_size, self.seed, self.epoch, self.repeats):
            start, stop = share(len(batch), self.world, self.rank)
            part = batch[start:stop]
            out.append((part, len(part) * self.world / len(batch)) if part else
                       ([batch[-1]], 0.0))
        return out


LR_SCHEDULES = ("constant", "cosine")  # constant: the original's Adam at one rate throughout


def learning_rate(base: float, schedule: str, step: int, total: int, warmup: int) -> float:
    """The rate of optimizer step `step` (0-based) of `total`: a linear warm-up over the first
    `warmup` steps (none by default), then `base` (constant) or a cosine decay from `base` to 0
    at `total` (cosine). A function of the step alone, so --resume needs no scheduler state."""
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def default_workers() -> int:
    """train.py's --workers default: one loading process per usable CPU, at most 16."""
    return min(MAX_DEFAULT_WORKERS, usable_cpus())


def loader_options(device_type: str, workers: int) -> dict:
    """DataLoader keywords of train.py: pinned batches for a CUDA copy that overlaps compute, and
    workers kept alive between epochs (their start costs about a second an epoch)."""
    return {"num_workers": workers, "pin_memory": device_type == "cuda",
            "persistent_workers": workers > 0}


def to_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, S, S) -> normalised float (B, 3, S, S) on the device, channels_last (S = 224)."""
    x = normalize(images.to(device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last)


def refuse_cuda_only(device_type: str, sync_bn: bool, amp: str) -> None:
    """One line for train.py's options that need CUDA, on another device."""
    if device_type == "cuda":
        return
    if sync_bn:
        raise InputError("--sync-bn: PyTorch has SyncBatchNorm on CUDA only; drop it on the CPU")
    if amp == "fp16":
        raise InputError("--amp fp16: needs CUDA; on the CPU use --amp bf16 (or auto/off: fp32)")


def amp_setup(device: torch.device, mode: str):
    """(autocast context factory, GradScaler, name): one code path for CPU, CUDA fp32, bf16,
    fp16. On CUDA "auto" is bf16 where the card has it natively, else fp16 with the scaler. On
    the CPU only an explicit "bf16" turns autocast on ("auto" stays fp32, as the original
    trained); fp16 there is refused."""
    refuse_cuda_only(device.type, False, mode)
    dtype = None
    if device.type == "cuda" and mode != "off":
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        dtype = torch.bfloat16 if mode == "bf16" or (mode == "auto" and native) else torch.float16
    elif device.type == "cpu" and mode == "bf16":
        dtype = torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if dtype is None:
        return nullcontext, scaler, "fp32"
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler, str(dtype).split(".")[-1]


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
    """Mean BCE over (B, C) logits in fp32; each term weighted by its class's pos/neg weight if
    given."""
    terms = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets,
                                                           reduction="none")
    if weights is not None:
        w_pos, w_neg = weights
        terms = terms * (targets * w_pos + (1 - targets) * w_neg)
    return terms.mean()


def make_datasets(data: preprocessed.Prepared, keep_no_finding: bool, seed: int
                  ) -> tuple[TrainingCrops, TrainingCrops]:
    """Training rows (those with a finding unless --keep-no-finding) and all validation rows,
    cropped at the folder's input size (meta.json; 224 for a folder made by default)."""
    train_y, valid_y = np.asarray(data.train.labels), np.asarray(data.valid.labels)
    rows = np.arange(len(train_y)) if keep_no_finding else np.flatnonzero(train_y.sum(axis=1) > 0)
    print(f"train: {len(rows)} of {len(train_y)} images"
          + ("" if keep_no_finding else " (those with none of the 8 findings dropped)")
          + f"; valid: {len(valid_y)} images")
    if len(rows) < 2:
        hint = ("" if keep_no_finding
                else " (images without findings were dropped; --keep-no-finding keeps them)")
        raise InputError(f"{data.folder}: {len(rows)} training image(s); "
                         f"training needs at least 2{hint}")
    if len(valid_y) == 0:
        raise InputError(f"{data.folder}: no validation images")
    x_train, _ = preprocessed.array_names("train")
    x_valid, _ = preprocessed.array_names("valid")
    size = data.geometry.input_size
    return (TrainingCrops(data.folder / x_train, train_y, rows, True, seed, size),
            TrainingCrops(data.folder / x_valid, valid_y, np.arange(len(valid_y)), False, seed,
                          size))
