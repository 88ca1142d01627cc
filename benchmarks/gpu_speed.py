"""gpu_check's measurements: training steps (by precision and layout, fed by train.py's data path or
by tensors already on the device), the loader alone, Grad-CAM against the CPU, localization.

Every part uses the project's own code (chexnet.train_data's amp_setup, to_input, dataset,
batches and loader options, gradcam.GradCAM, localize.iter_localize), on real sample X-rays. The
network has random (seeded) weights: the work per image is that of a trained one.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from timing import SAMPLE_IMAGES, real_pngs, sync

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from chexnet import images, localize, train_data  # noqa: E402
from chexnet.constants import ADAM_BETAS, AVERAGE_BOXES, CLASS_NAMES, LEARNING_RATE  # noqa: E402
from gradcam import GradCAM  # noqa: E402
from model import build_model  # noqa: E402



def sample_paths() -> list[str]:
    return real_pngs([str(SAMPLE_IMAGES)])


def stored_images(count: int) -> np.ndarray:
    """uint8 (count, 256, 256): the sample's X-rays, repeated."""
    stored = np.stack([images.load_stored(p) for p in sample_paths()])
    return stored[np.arange(count) % len(stored)]


def seeded_model(device: torch.device, layout=torch.contiguous_format) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(len(CLASS_NAMES), weights="none").to(device, memory_format=layout)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


class Stepper:
    """train.py's step (autocast forward, fp32 BCE, scaled backward, Adam) on a prepared batch."""

    def __init__(self, device: torch.device, layout, amp: str, compiled: bool):
        self.model = seeded_model(device, layout).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE,
                                          betas=ADAM_BETAS)
        self.autocast, self.scaler, self.precision = train_data.amp_setup(device, amp)
        self.forward = torch.compile(self.model) if compiled else self.model

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with self.autocast():
            logits = self.forward(x)
        loss = train_data.bce_loss(logits, y, None)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()


def feed(loader, device, layout):
    """(x, y) on the device from the loader's uint8 batches, as train.py makes them."""
    for crops, targets in loader:
        x = train_data.to_input(crops, device).contiguous(memory_format=layout)
        yield x, targets.to(device, non_blocking=True)


def timed_images_per_s(batches, step, device, warm_steps: int) -> tuple[float, float]:
    """(images/s over the batches after the first warm_steps, seconds of those untimed steps: the
    cudnn.benchmark search, torch.compile, the loader's start)."""
    start, count, warm = time.perf_counter(), 0, None
    for i, (x, y) in enumerate(batches):
        step(x, y)
        if i + 1 == warm_steps:
            sync(device)
            warm = time.perf_counter() - start
            start = time.perf_counter()
        elif i + 1 > warm_steps:
            count += len(y)
    sync(device)
    return count / (time.perf_counter() - start), warm


def training_data(folder: Path, batch: int, steps: int, name: str = "train_X.npy"
                  ) -> train_data.TrainingCrops:
    """A uint8 memory map of `steps` batches and random labels, as train.py reads it."""
    count = steps * batch
    path = folder / name
    np.save(path, stored_images(count), allow_pickle=False)
    labels = np.random.default_rng(0).integers(0, 2, size=(count, len(CLASS_NAMES)), dtype=np.uint8)
    return train_data.TrainingCrops(path, labels, np.arange(count), True, seed=0)


def train_loader(dataset, batch: int, device, workers: int) -> DataLoader:
    batches = train_data.EpochBatches(len(dataset), batch, seed=0)
    options = train_data.loader_options(device.type, workers)
    return DataLoader(dataset, batch_sampler=batches, **options)


def training_variant(dataset, device, batch: int, workers: int, variant: dict,
                     warm_steps: int) -> dict:
    """One variant's images/s fed by tensors already on the device and by train.py's data path."""
    layout = torch.channels_last if variant["channels_last"] else torch.contiguous_format
    with cuda_tf32(variant["tf32"]):
        stepper = Stepper(device, layout, variant["amp"], variant["compile"])
        ready = list(feed(train_loader(dataset, batch, device, 0), device, layout))
        in_memory, warm = timed_images_per_s(ready, stepper.step, device, warm_steps)
        del ready
        reset_peak(device)  # the peak of train.py's situation: batches arrive one at a time
        loader = feed(train_loader(dataset, batch, device, workers), device, layout)
        data_path, _ = timed_images_per_s(loader, stepper.step, device, warm_steps)
    return {**variant, "precision": stepper.precision, "in_memory_images_per_s": in_memory,
            "data_path_images_per_s": data_path,
            "data_path_time_over_in_memory": in_memory / data_path,
            "warm_up_s": warm, "peak_memory_mib": peak_mib(device)}


def loader_alone(dataset, device, batch: int, workers: int) -> float:
    """Images/s of the data path with no step: memmap rows, crop/flip, collate, copy, normalise."""
    count, start = 0, None
    for i, (x, y) in enumerate(feed(train_loader(dataset, batch, device, workers), device,
                                    torch.channels_last)):
        if i == 0:
            sync(device)
            start = time.perf_counter()  # the workers' start-up is once a run (persistent workers)
        else:
            count += len(y)
    sync(device)
    return count / (time.perf_counter() - start)


def crops_and_batches(dataset, batch: int, workers: int) -> float:
    """Images/s of the workers' part alone (memmap rows, seeded crop/flip, collate into uint8
    batches), without the copy to a device: the ceiling of per-sample Python in the loader."""
    count, start = 0, None
    for i, (crops, _) in enumerate(train_loader(dataset, batch, torch.device("cpu"), workers)):
        if i == 0:
            start = time.perf_counter()  # after the workers' start
        else:
            count += len(crops)
    return count / (time.perf_counter() - start)


@contextmanager
def cuda_tf32(allowed: bool | None):
    """cuDNN's and cuBLAS's TF32 switches set for the block (None: as they are), restored after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if allowed is not None:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def gradcam_maps(model, crops: torch.Tensor, device) -> tuple[np.ndarray, np.ndarray]:
    """Logits (B, 8) and the maps of all 8 classes (B, 8, 224, 224) of uint8 crops, on `device`."""
    model.to(device)
    with GradCAM(model) as cam:
        logits, maps = cam.compute(images.normalize(crops.to(device)))
    return logits.float().cpu().numpy(), maps.cpu().numpy()


def gradcam_against_cpu(crops: torch.Tensor, device) -> dict:
    """Max differences of the device's maps (and logits) to fp32 CPU maps of the same images:
    strict fp32 (TF32 off) and as localization runs (PyTorch's defaults: cuDNN convolutions may
    use TF32)."""
    model = seeded_model(torch.device("cpu")).eval()
    ref_logits, ref_maps = gradcam_maps(model, crops, torch.device("cpu"))
    out = {"images": len(crops)}
    for name, tf32 in (("fp32", False), ("as_localization", None)):
        with cuda_tf32(tf32):
            logits, maps = gradcam_maps(model, crops, device)
        out[f"{name}_max_map_difference"] = float(np.abs(maps - ref_maps).max())
        out[f"{name}_max_logit_difference"] = float(np.abs(logits - ref_logits).max())
    tf32 = "on" if torch.backends.cudnn.allow_tf32 else "off"
    out["localization_precision"] = f"fp32 (cuDNN TF32 {tf32})" if device.type == "cuda" else "fp32"
    return out


def gradcam_speed(crops: torch.Tensor, device, reps: int) -> dict:
    """Grad-CAM of all 8 classes against a plain forward at batch len(crops), as localization
    runs it."""
    model = seeded_model(device).eval()
    x = images.normalize(crops.to(device))

    def forward():
        with torch.inference_mode():
            model(x)

    def gradcam():
        with GradCAM(model) as cam:
            cam.compute(x)

    times = {}
    for name, fn in (("forward", forward), ("gradcam", gradcam)):
        fn()  # warm-up
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(device)
        times[name] = (time.perf_counter() - start) / reps
    return {"batch": len(crops), "forward_images_per_s": len(crops) / times["forward"],
            "gradcam_images_per_s": len(crops) / times["gradcam"],
            "gradcam_time_over_forward": times["gradcam"] / times["forward"]}


def localization_speed(device, count: int, batch: int, workers: int) -> dict:
    """localize.iter_localize end to end (decode, crop, forward, Grad-CAM, boxes), every class
    active."""
    model = seeded_model(device).eval()
    files = sample_paths()
    paths = [files[i % len(files)] for i in range(count)]
    thresholds, sizes = np.zeros(len(CLASS_NAMES), np.float32), np.array(AVERAGE_BOXES)
    run = lambda p: sum(len(r.boxes) for r in localize.iter_localize(  # noqa: E731
        model, p, thresholds, sizes, device, batch_size=batch, workers=workers))
    run(paths[:batch])  # warm-up
    start = time.perf_counter()
    n_boxes = run(paths)
    seconds = time.perf_counter() - start
    return {"images": count, "batch": batch, "workers": workers, "active_classes_per_image": 8,
            "boxes": n_boxes, "images_per_s": count / seconds}
