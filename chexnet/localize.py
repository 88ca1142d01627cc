"""The localization engine of denseNet_localization.py (and so of the bundle) and calibrate.py.

It loads nothing by itself: callers resolve the model, thresholds and box sizes
(chexnet.model_dir, chexnet.calibrated) and pass them in. Per batch: decode + crop in DataLoader
workers (overlapping the network), normalise on the device, one forward, the classes with
prob > threshold, one batched Grad-CAM backward for the classes active anywhere in the batch,
then boxes in a background thread while the next batch runs through the network.

At the checkpoint's input size S (geometry.py) each image is resized to S * 256 / 224 and its
centre S crop goes through the network; the maps come back at 224 x 224 on that crop at every S,
so the boxes follow the same rules and the same mapping to the image's pixels.
"""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from chexnet import boxes
from chexnet import images
from chexnet.boxfile import Box
from chexnet.utils import InputError
from chexnet.constants import CLASS_NAMES, CLASS_SETS, CROP_SIZE, ORIGINAL_SIZE
from chexnet.geometry import MAP_SIZE, geometry
from chexnet.cam_base import BaseCAM
from gradcam import DEFAULT_CAM, make_cam


@dataclass
class ImageResult:
    image_path: str
    probs: np.ndarray  # float32 (C,): sigmoid of the logits
    # active box class's model column -> float32 (224, 224)
    heatmaps: dict[int, np.ndarray] = field(default_factory=dict)
    # per active class: average box, then heatmap boxes
    boxes: list[Box] = field(default_factory=list)
    size: tuple[int, int] = (ORIGINAL_SIZE, ORIGINAL_SIZE)  # (width, height): the boxes' frame


class FileCrops(Dataset):
    """Path -> (uint8 (224, 224) centre crop, int64 (2,) original width and height, error or '').
    Errors travel as text: the main process raises them as one-line InputErrors (a worker's
    exception would carry its traceback). input_size S: the image resized to S * 256 / 224, its
    (S, S) centre crop."""

    def __init__(self, paths: Sequence[str], resize: str, input_size: int = CROP_SIZE):
        self.paths, self.resize = list(paths), resize
        self.geometry = geometry(input_size)
        images.check_resize(resize, self.geometry.stored_size)  # before any worker decodes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        try:
            stored, size = images.load_stored_sized(self.paths[index], self.resize,
                                                    self.geometry.stored_size)
        except InputError as err:
            side = self.geometry.input_size
            blank = torch.zeros((side, side), dtype=torch.uint8)
            return blank, torch.zeros(2, dtype=torch.int64), str(err)
        crop = np.ascontiguousarray(images.center_crop(stored, self.geometry.input_size))
        return torch.from_numpy(crop), torch.tensor(size, dtype=torch.int64), ""


def box_columns(class_names: Sequence[str]) -> list[tuple[int, int]]:
    """[(model column, box class)] for the model's classes that the box table knows, by name, in
    box-class order (constants.CLASS_NAMES): a box class index k is CLASS_NAMES[k], its row of the
    box sizes and of the method's parameters. Any order of the model's classes is boxed correctly;
    the others (a 14-class model's 6) get probabilities only."""
    names = list(class_names)
    return [(names.index(name), k) for k, name in enumerate(CLASS_NAMES) if name in names]


def iter_localize(model: torch.nn.Module, image_paths: Sequence[str], thresholds: np.ndarray,
                  box_sizes: np.ndarray, device: torch.device, batch_size: int = 16,
                  target_layer: str | None = None, workers: int = 0,
                  method: str | Sequence[str] = "peaks",
                  method_params: np.ndarray | None = None, rect_scales: np.ndarray | None = None,
                  resize: str = images.DEFAULT_RESIZE, cam_method: str = DEFAULT_CAM,
                  class_names: Sequence[str] | None = None, average_box: bool = True,
                  tta: str = "none", input_size: int = CROP_SIZE) -> Iterator[ImageResult]:
    """Yield one ImageResult per path, in input order. The model is moved to `device`.

    thresholds: (C,) probabilities, one per model output; class_names: (C,) the model's classes,
    the checkpoint's (None: the usual order of 8 or 14, constants.CLASS_SETS); box_sizes: (8, 4)
    average boxes (x, y, w, h) in 1024 px per box class whose w, h size the heatmap boxes;
    method: the box rule (boxes.METHODS), or one per box class (calibrate.py --method auto);
    method_params: (8,) the box method's parameter per box class (None: its default; see
    calibrated.resolve_box_params); rect_scales: (8,) each box class's rectangle scale
    (boxes.heatmap_boxes; None: all 1); resize: how each image becomes 256x256, as the model's
    training images did (images.resize_stored); cam_method: a name of gradcam.METHODS, hooked at
    target_layer (None: the method's default); average_box False: heatmap boxes only, no class
    opening with its average box. tta: "flip" averages each map with its mirror's (gradcam.py).
    input_size: the crops' side, the checkpoint's (its "input_size"); the maps are 224 x 224 at
    any.
    ImageResult.heatmaps is keyed by model column. While the generator is open the model
    carries the CAM hook.
    """
    thresholds = np.asarray(thresholds, dtype=np.float32)
    box_sizes = np.asarray(box_sizes, dtype=np.float64)
    methods = boxes.per_class(method)  # a ValueError names the known rules
    if class_names is None:
        class_names = CLASS_SETS.get(len(thresholds), CLASS_NAMES)
    if len(class_names) != len(thresholds):
        raise InputError(f"{len(class_names)} class names but {len(thresholds)} thresholds")
    columns = box_columns(class_names)
    paths = list(image_paths)
    loader = DataLoader(FileCrops(paths, resize, input_size), batch_size=batch_size, shuffle=False,
                        num_workers=workers, pin_memory=device.type == "cuda")
    model.to(device)
    start, pending = 0, None
    with make_cam(cam_method, model, target_layer, tta, MAP_SIZE) as cam, \
            ThreadPoolExecutor(max_workers=1) as pool:
        for crops, sizes, errors in loader:
            for message in errors:
                if message:
                    raise InputError(message)
            batch_paths = paths[start:start + len(crops)]
            start += len(crops)
            probs, maps, active = _network(cam, crops.to(device, non_blocking=True), thresholds,
                                           columns)
            job = pool.submit(_results, batch_paths, probs, maps, active, thresholds, box_sizes,
                              methods, method_params, [tuple(s) for s in sizes.tolist()],
                              average_box, rect_scales)
            if pending is not None:
                # boxes of the previous batch, made during this batch's pass
                yield from pending.result()
            pending = job
        if pending is not None:
            yield from pending.result()


def _network(cam: BaseCAM, crops: torch.Tensor, thresholds: np.ndarray,
             columns: list[tuple[int, int]]
             ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """uint8 (B, S, S) on the device -> probs (B, C), maps (B, K, 224, 224), and the K (model
    column, box class) pairs of `columns` active on some image of the batch, in that order.

    Heatmaps (and so boxes) only for the box classes, found by name (box_columns): a 14-class
    model's other 6 findings have no box in BBox_List_2017 and get probabilities only."""
    probs = class_probabilities(cam, crops)
    if probs.shape[1] != len(thresholds):
        raise InputError(f"the model has {probs.shape[1]} outputs but there are {len(thresholds)} "
                         f"thresholds")
    active = [(j, k) for j, k in columns if (probs[:, j] > thresholds[j]).any()]
    wanted_columns = [j for j, _ in active]
    wanted = probs[:, wanted_columns] > thresholds[wanted_columns]  # (B, K)
    # only each image's own active classes: a shorter backward; the other maps are never read
    maps = cam.maps(wanted_columns, wanted).cpu().numpy()
    return probs, maps, active


def class_probabilities(cam: BaseCAM, crops: torch.Tensor) -> np.ndarray:
    """uint8 (B, S, S) crops on the device -> float32 (B, C) sigmoid probabilities, with the
    Grad-CAM graph kept for cam.maps(): normalise, one forward pass, sigmoid in fp32."""
    logits = cam.forward(images.normalize(crops))
    return torch.sigmoid(logits.float()).cpu().numpy()


def _results(paths: list[str], probs: np.ndarray, maps: np.ndarray,
             active: list[tuple[int, int]], thresholds: np.ndarray, box_sizes: np.ndarray,
             methods: Sequence[str], method_params: np.ndarray | None = None,
             sizes: list[tuple[int, int]] | None = None,
             average_box: bool = True, rect_scales: np.ndarray | None = None
             ) -> list[ImageResult]:
    """Per image: the heatmaps of its own active classes (by model column) and their box lines, in
    box-class order, labelled with the class's name, in the image's own pixels (sizes: (width,
    height) per image; None: 1024x1024); methods: each box class's rule."""
    results = []
    for b, path in enumerate(paths):
        if not np.isfinite(probs[b]).all():
            raise InputError(f"{path}: the model gives NaN/inf probabilities "
                             f"(a broken checkpoint?)")
        size = (ORIGINAL_SIZE, ORIGINAL_SIZE) if sizes is None else sizes[b]
        result = ImageResult(path, probs[b], size=size)
        for i, (j, k) in enumerate(active):
            if probs[b, j] > thresholds[j]:
                result.heatmaps[j] = maps[b, i].copy()
                try:
                    param = None if method_params is None else float(method_params[k])
                    scale = 1.0 if rect_scales is None else float(rect_scales[k])
                    lines = boxes.class_boxes(k, maps[b, i], box_sizes, methods[k], param, scale)
                except ValueError as err:
                    raise InputError(f"{path}: {CLASS_NAMES[k]}: {err}") from None
                lines = lines if average_box else lines[1:]
                result.boxes += [boxes.to_image(box, size) for box in lines]
        results.append(result)
    return results


def resolve_input(requested: str | None, checkpoint: dict, model_path: str) -> tuple[str, int]:
    """(resize, input size): the checkpoint's resize unless --resize says otherwise (then a
    warning: the model did not see images resized that way in training), and its input size (224
    for a checkpoint without one); a resize that cannot make its stored size is an error."""
    trained = checkpoint["resize"]
    if requested is not None and requested != trained:
        print(f"warning: --resize {requested}, but {model_path} was trained on images resized with "
              f"{trained!r}", file=sys.stderr)
    resize = requested or trained
    sizes = geometry(checkpoint.get("input_size"), model_path)
    try:
        images.check_resize(resize, sizes.stored_size)
    except ValueError as err:
        raise InputError(f"{model_path}: input size {sizes.input_size}: {err}") from None
    return resize, sizes.input_size


def findings_line(result: ImageResult, thresholds, class_names) -> str:
    """`path WxH: Class 0.830, Class 0.610`: the classes above threshold (all of the model's, 8 or
    14), in the model's class order."""
    found = [f"{name} {result.probs[k]:.3f}" for k, name in enumerate(class_names)
             if result.probs[k] > thresholds[k]]
    width, height = result.size
    return (f"{result.image_path} {width}x{height}: "
            + (", ".join(found) if found else "no class above its threshold"))
