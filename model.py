"""The network and its checkpoints: DenseNet-121 with an N-class logit head, saved as plain dicts.

Nothing runs on import. A checkpoint is a dict that rebuilds the model by itself:

    {"format": "chexnet-checkpoint", "version": 1, "arch": "densenet121",
     "model": state_dict, "class_names": [...], "input_size": 224,
     "epoch": completed epochs | None, "optimizer": state | None, "metrics": {...},
     "args": {...plain str/int/float/bool/None...}, "thresholds": [N floats] | None,
     "resize": "original" | "area"}   # how the training images went from 1024 to 256

"input_size" is the side of the crops it was trained on (train.py --input-size, 224 by default;
chexnet/geometry.py): localization resizes and crops as it says. A file without it reads as 224.

train.py adds "scaler", "rng" and "best" for --resume. Files are written atomically and read
with torch.load(weights_only=True) only. Two layouts that users already have load too: the original
project's .pkl (a bare state dict of torch.nn.DataParallel(DenseNet121(8)) in PyTorch-0.2 key names)
and arnoweng/CheXNet's model.pth.tar (a dict whose 'state_dict' holds DataParallel(DenseNet121(14))
in the same old names, head 'module.densenet121.classifier.0.*'). Either loads whole or not at all:
a missing or unexpected key is an error, never a partial load.
"""
from __future__ import annotations

import os
import pickle
import re
import sys
from pathlib import Path

import torch
from torch import nn
from torchvision.models import DenseNet121_Weights, densenet121

from chexnet.utils import InputError, atomic_path
from chexnet.constants import ALL_FINDINGS, CLASS_NAMES, CROP_SIZE

FORMAT = "chexnet-checkpoint"
VERSION = 1
ARCH = "densenet121"
FEATURES = 1024  # width of DenseNet-121's pooled features, the classifier's input

# Prefixes that wrappers add to every key: DataParallel/DDP ("module."), torch.compile
# ("_orig_mod."), and the original project's wrapper class ("densenet121.").
_PREFIXES = ("module.", "_orig_mod.", "densenet121.")
# PyTorch <= 0.3 named a dense layer's modules "norm.1", "conv.2"; torchvision now says "norm1",
# "conv2".
_LEGACY_LAYER = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")
# The original head was Sequential(Linear, Sigmoid): "classifier.0.weight" is our
# "classifier.weight".
_LEGACY_HEAD = re.compile(r"^classifier\.0\.")
# The class order of a bare state dict, told by its head's width: the original's 8, CheXNet's 14.
_CLASSES_BY_WIDTH = {len(CLASS_NAMES): CLASS_NAMES, len(ALL_FINDINGS): ALL_FINDINGS}


def build_model(num_classes: int = len(CLASS_NAMES), weights: str = "imagenet",
                keep_head: bool = False) -> nn.Module:
    """torchvision DenseNet-121 whose classifier is Linear(1024, num_classes); it returns logits.

    weights: "imagenet" (torchvision's IMAGENET1K_V1 features; random init with one warning when
    they cannot be loaded), "none" (random init), or a PATH to a DenseNet-121 state dict or a
    checkpoint of ours, whose `features.*` tensors are loaded (the head stays random; keep_head:
    the whole state, head included, which must then be of num_classes outputs).
    """
    if keep_head and weights in ("imagenet", "none"):
        raise InputError(f"--keep-head needs --weights PATH (a model of these classes), not "
                         f"{weights!r}")
    model = densenet121(weights=None)
    model.classifier = nn.Linear(FEATURES, num_classes)
    if weights == "imagenet":
        state = _imagenet_state()
        if state is not None:
            _load_features(model, state, "ImageNet weights")
    elif weights != "none":
        state = _load_file(weights)
        if isinstance(state, dict) and state.get("format") == FORMAT:
            state = state["model"]
        elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]  # arnoweng/CheXNet's model.pth.tar
        if keep_head:
            load_weights(model, normalize_keys(state), str(weights))
        else:
            _load_features(model, state, str(weights))
    return model


def _imagenet_state() -> dict | None:
    """torchvision's ImageNet state dict (download or hub cache), or None with one warning."""
    spec = DenseNet121_Weights.IMAGENET1K_V1
    try:
        return spec.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as err:  # OSError covers URLError: offline, no cache
        cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(spec.url)
        print("warning: ImageNet weights for DenseNet-121 could not be loaded "
              f"({type(err).__name__}: {err}); training starts from RANDOM initialisation. "
              f"To use them, download {spec.url} to {cache}, or pass --weights PATH "
              f"(a DenseNet-121 state dict), or --weights none to silence this warning.",
              file=sys.stderr)
        return None


def _load_features(model: nn.Module, state: dict, source: str) -> None:
    """Load the `features.*` tensors of any DenseNet-121 state dict into model.features,
    strictly."""
    state = normalize_keys(state)
    features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    if not features:
        raise InputError(f"{source}: no 'features.*' tensors; not a DenseNet-121 state dict")
    try:
        model.features.load_state_dict(features, strict=True)
    except RuntimeError as err:
        raise InputError(f"{source}: not DenseNet-121 features ({_first_line(err)})") from None


def normalize_keys(state: dict) -> dict:
    """Strip wrapper prefixes and rename PyTorch-0.2 keys to today's torchvision names."""
    out = {}
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        key = _LEGACY_HEAD.sub("classifier.", _LEGACY_LAYER.sub(r"\1\2.", key))
        out[key] = value
    return out


def new_checkpoint(state: dict, *, epoch: int | None = None, optimizer: dict | None = None,
                   metrics: dict | None = None, args: dict | None = None,
                   thresholds=None, resize: str = "original", class_names=CLASS_NAMES,
                   input_size: int = CROP_SIZE) -> dict:
    """The checkpoint dict of this format (module docstring) for a model of these classes."""
    return {"format": FORMAT, "version": VERSION, "arch": ARCH, "model": state,
            "class_names": list(class_names), "input_size": input_size, "epoch": epoch,
            "optimizer": optimizer, "metrics": metrics or {}, "args": args or {},
            "thresholds": None if thresholds is None else [float(t) for t in thresholds],
            "resize": resize}


def save_checkpoint(path: str | os.PathLike, checkpoint: dict) -> None:
    """torch.save through a temporary name and a rename: a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint dict, from our format, the original project's .pkl state dict or arnoweng's
    model.pth.tar ({'state_dict': ...}; its other entries, such as the epoch, are not used).

    Always torch.load(weights_only=True): a file that needs to unpickle code is refused.
    """
    obj = _load_file(path, map_location)
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a checkpoint dict, found {type(obj).__name__}")
    if "format" in obj:
        if obj["format"] != FORMAT or obj.get("version") != VERSION:
            raise InputError(f"{path}: format {obj.get('format')!r} v{obj.get('version')}; "
                             f"expected {FORMAT!r} v{VERSION}")
        obj.setdefault("resize", "area")  # written before the choice existed: all used area
        obj.setdefault("input_size", CROP_SIZE)  # every one so far records it; 224 if not
        return obj
    if isinstance(obj.get("state_dict"), dict):
        return _from_state_dict(path, obj["state_dict"])
    return _from_state_dict(path, obj)


def _load_file(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    if not Path(path).is_file():
        raise InputError(f"{path}: checkpoint file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise InputError(f"{path}: refused: loading it would run code or build objects that are "
                         f"not tensors ({_first_line(err)}); only weights_only checkpoints "
                         "load") from None
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise InputError(f"{path}: not a readable PyTorch checkpoint "
                         f"({_first_line(err)})") from None


def _from_state_dict(path: str | os.PathLike, state: dict) -> dict:
    """Wrap a bare state dict (the original's .pkl, arnoweng's 'state_dict', or model.state_dict())
    as a checkpoint of 8 or 14 classes, by the head's width; the weights are checked in full."""
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: neither a {FORMAT} dict nor a state dict of tensors")
    state = normalize_keys(state)
    head = state.get("classifier.weight")
    if head is None or tuple(head.shape[1:]) != (FEATURES,):
        raise InputError(f"{path}: no DenseNet-121 classifier.weight (1024 inputs) in this "
                         "state dict")
    class_names = _CLASSES_BY_WIDTH.get(head.shape[0])
    if class_names is None:
        raise InputError(f"{path}: the classifier has {head.shape[0]} outputs; a bare state dict "
                         f"must have 8 (the original's classes) or 14 (CheXNet's, in ChestX-ray14 "
                         f"order)")
    _add_batch_counters(state)
    load_weights(build_model(len(class_names), weights="none"), state, str(path))  # all or nothing
    return new_checkpoint(state, args={"converted_from": str(path)}, class_names=class_names)


def _add_batch_counters(state: dict) -> None:
    """PyTorch < 0.4 BatchNorm had no num_batches_tracked; add it (unused in eval) so strict
    loading works."""
    for key in [k for k in state if k.endswith(".running_mean")]:
        counter = key[: -len("running_mean")] + "num_batches_tracked"
        state.setdefault(counter, torch.tensor(0, dtype=torch.long))


def model_from_checkpoint(checkpoint: dict, source: str = "checkpoint") -> nn.Module:
    """Rebuild the model a checkpoint describes, load it strictly, return it in eval mode."""
    if checkpoint.get("arch") != ARCH:
        raise InputError(f"{source}: architecture {checkpoint.get('arch')!r} is not supported; "
                         f"only {ARCH!r}")
    names = list(checkpoint["class_names"])
    num_classes = len(names)
    if len(set(names)) != num_classes or not set(names) <= set(ALL_FINDINGS):
        raise InputError(f"{source}: trained for {num_classes} classes {names}, not distinct "
                         f"ChestX-ray14 findings ({', '.join(ALL_FINDINGS)})")
    model = build_model(num_classes, weights="none")
    load_weights(model, checkpoint["model"], source)
    return model.eval()


def load_weights(model: nn.Module, state: dict, source: str) -> None:
    """Load a state dict strictly; a mismatch is one InputError line naming `source`."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(f"{source}: weights do not fit DenseNet-121 with "
                         f"{model.classifier.out_features} classes ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    """The error's text on one line (load_state_dict spreads it over several), at most 300
    characters."""
    text = " ".join(str(err).split())
    return text[:300] if text else type(err).__name__
