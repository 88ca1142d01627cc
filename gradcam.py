"""Grad-CAM for a multi-label classifier: one forward, one batched backward for all wanted classes.

    with GradCAM(model) as cam:
        logits, maps = cam.compute(x, class_indices)   # x (B, 3, H, W) -> (B, C), (B, K, H, W) in [0, 1]

Or in two steps, when the classes depend on the predictions (localization picks the active ones):

        logits = cam.forward(x)
        maps = cam.maps(class_indices)

A forward hook on the one target layer swaps its output for a leaf copy that requires grad; the
gradient of each class LOGIT with respect to that copy gives the channel weights. After min-max
normalisation this is the original's map (it used post-sigmoid gradients, which only rescale each
map by sigmoid'(logit), a positive number), without the underflow of a saturated sigmoid.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from chexnet.constants import DEFAULT_TARGET_LAYER
from chexnet.utils import InputError


class GradCAM:
    """Context manager: hooks `target_layer` on enter; on exit removes the hook and restores the
    model's training mode and its parameters' requires_grad flags."""

    def __init__(self, model: nn.Module, target_layer: str = DEFAULT_TARGET_LAYER, batched: bool = True):
        modules = dict(model.named_modules())
        if target_layer not in modules or not target_layer:
            examples = ", ".join(n for n in modules if n.endswith(("conv2", "norm5")))
            examples = ", ".join(examples.split(", ")[-3:])
            raise InputError(f"unknown Grad-CAM layer {target_layer!r}; the model's layers include "
                             f"{examples} (any name of model.named_modules())")
        self.model = model
        self.target_layer = target_layer
        self.batched = batched  # False: one backward per class (the fallback; same maps)
        self._layer = modules[target_layer]
        self._handle = None
        self._armed = False  # capture only inside forward()
        self._activation: torch.Tensor | None = None  # (B, ch, h, w) leaf that requires grad
        self._logits: torch.Tensor | None = None  # (B, C)
        self._input_size: tuple[int, int] | None = None

    def __enter__(self) -> "GradCAM":
        self._was_training = self.model.training
        # Gradients are needed for the activation only: no graph (and no memory) for the layers before it.
        self._flags = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in self._flags:
            p.requires_grad_(False)
        self.model.eval()  # batch norm on running statistics: each image's map is its own
        self._handle = self._layer.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
        self._handle = None
        for p, flag in self._flags:
            p.requires_grad_(flag)
        self.model.train(self._was_training)
        self._activation = self._logits = None

    def _hook(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        if not self._armed:
            return None  # the model called directly inside `with`: leave its output alone
        if self._activation is not None:
            raise RuntimeError(f"layer {self.target_layer!r} ran twice in one forward pass; hook another layer")
        # A detached copy: the next op may be in place (torchvision's ReLU after norm5), and the
        # model continues from a clone of the leaf, so that op never touches what we keep.
        self._activation = output.detach().clone().requires_grad_(True)
        return self._activation.clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x float (B, 3, H, W) -> logits (B, C); keeps the graph for maps()."""
        if self._handle is None:
            raise RuntimeError("use GradCAM inside a `with` block")
        self._activation, self._armed = None, True
        try:
            with torch.enable_grad():
                self._logits = self.model(x)
        finally:
            self._armed = False
        if self._activation is None:
            raise RuntimeError(f"layer {self.target_layer!r} did not run in the forward pass")
        self._input_size = (x.shape[-2], x.shape[-1])
        return self._logits.detach()

    def maps(self, class_indices: Sequence[int]) -> torch.Tensor:
        """Maps of the last forward's images for `class_indices`: float32 (B, K, H, W) in [0, 1]."""
        if self._logits is None:
            raise RuntimeError("call forward(x) before maps()")
        classes = [int(k) for k in class_indices]
        if not classes:
            batch = self._logits.shape[0]
            return self._logits.new_zeros((batch, 0) + self._input_size, dtype=torch.float32)
        grads = self._gradients(classes)  # (K, B, ch, h, w)
        self._logits = None  # the graph is spent
        return _cam(self._activation.detach(), grads, self._input_size)

    def compute(self, x: torch.Tensor, class_indices: Sequence[int] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward + one backward: logits (B, C) and maps (B, K, H, W); all C classes by default."""
        logits = self.forward(x)
        classes = range(logits.shape[1]) if class_indices is None else class_indices
        return logits, self.maps(classes)

    def _gradients(self, classes: list[int]) -> torch.Tensor:
        """d logit[b, k] / d activation[b] for every wanted class k: (K, B, ch, h, w)."""
        logits, act = self._logits, self._activation
        eye = torch.zeros((len(classes),) + tuple(logits.shape), dtype=logits.dtype, device=logits.device)
        for i, k in enumerate(classes):
            eye[i, :, k] = 1.0  # row i selects class k of every image: (K, B, C)
        if self.batched:
            try:
                (grads,) = torch.autograd.grad(logits, act, grad_outputs=eye, is_grads_batched=True,
                                               retain_graph=True)
                return grads
            except RuntimeError as err:  # an op without a vmap rule: same maps, one backward per class
                warnings.warn(f"batched backward failed at {self.target_layer!r} ({err}); "
                              f"falling back to one backward per class")
                self.batched = False
        grads = [torch.autograd.grad(logits, act, grad_outputs=g, retain_graph=True)[0] for g in eye]
        return torch.stack(grads)


def _cam(activation: torch.Tensor, grads: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """activation (B, ch, h, w), grads (K, B, ch, h, w) -> float32 (B, K, H, W) in [0, 1]."""
    weights = grads.float().mean(dim=(-2, -1))  # (K, B, ch): spatially averaged gradients
    cam = torch.relu(torch.einsum("kbc,bchw->bkhw", weights, activation.float()))  # (B, K, h, w)
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)  # rows y, columns x
    return normalize_maps(cam)


def normalize_maps(cam: torch.Tensor) -> torch.Tensor:
    """Min-max each (H, W) map of (B, K, H, W) to [0, 1]; a flat map (all zero) becomes all zero."""
    flat = cam.flatten(2)
    low = flat.min(dim=2).values[..., None, None]
    span = flat.max(dim=2).values[..., None, None] - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (cam - low) / safe, torch.zeros_like(cam))
