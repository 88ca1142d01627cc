"""The hooking and the batched backward every CAM method of gradcam.py shares (BaseCAM); the
methods, and how maps of several layers and of the mirrored crop are combined, are described there;
the maps' min-max normalisation."""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from chexnet.constants import DEFAULT_TARGET_LAYER
from chexnet.utils import InputError

TTA = ("none", "flip")  # test-time augmentation of the maps


class BaseCAM:
    """Context manager: hooks each target layer on enter; on exit removes the hooks and restores the
    model's training mode and its parameters' requires_grad flags. Subclasses define combine()."""

    default_layer = DEFAULT_TARGET_LAYER
    needs_gradients = True  # False: the map needs no backward pass (classic CAM)

    def __init__(self, model: nn.Module, target_layer: str | None = None, batched: bool = True,
                 tta: str = "none", map_size: int | None = None):
        if tta not in TTA:
            raise InputError(f"unknown test-time augmentation {tta!r}; choose from "
                             f"{', '.join(TTA)}")
        self.tta, self.map_size = tta, map_size
        target_layer = self.default_layer if target_layer is None else target_layer
        self.layers = split_layers(target_layer)
        modules = dict(model.named_modules())
        for name in self.layers:
            if name not in modules or not name:
                examples = ", ".join(n for n in modules if n.endswith(("conv2", "norm5")))
                examples = ", ".join(examples.split(", ")[-3:])
                raise InputError(f"unknown Grad-CAM layer {name!r}; the model's layers include "
                                 f"{examples} (any name of model.named_modules(); several "
                                 f"joined by commas)")
        self.model = model
        self.target_layer = ",".join(self.layers)
        self.batched = batched  # False: one backward per class (the fallback; same maps)
        self._modules = [modules[name] for name in self.layers]
        self._handles: list = []
        self._armed = False  # capture only inside forward()
        # layer name -> (B, ch, h, w) output, in self.layers' order: on the backward's graph
        # (the first a leaf that requires grad), or a detached copy where _is_leaf is False
        self._activations: dict[str, torch.Tensor] = {}
        self._logits: torch.Tensor | None = None  # (B, C)
        self._map_shape: tuple[int, int] | None = None
        self._batch = 0  # images of the last forward (without their mirrors)

    def __enter__(self) -> "BaseCAM":
        self._was_training = self.model.training
        # Gradients are needed for the activation only: no graph (and no memory) for the layers
        # before it.
        self._flags = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in self._flags:
            p.requires_grad_(False)
        self.model.eval()  # batch norm on running statistics: each image's map is its own
        self._handles = [module.register_forward_hook(self._hook_of(name))
                         for name, module in zip(self.layers, self._modules)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for p, flag in self._flags:
            p.requires_grad_(flag)
        self.model.train(self._was_training)
        self._activations, self._logits = {}, None

    def _is_leaf(self, name: str) -> bool:
        """Whether the backward starts at this layer's output. False keeps a detached copy off
        the graph; a subclass that says so finds that layer's gradient itself (its own
        _backward: autograd cannot)."""
        return True

    def _hook_of(self, name: str):
        leaf = self._is_leaf(name)

        def hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor | None:
            if not self._armed:
                return None  # the model called directly inside `with`: leave its output alone
            if name in self._activations:
                raise RuntimeError(f"layer {name!r} ran twice in one forward pass; "
                                   "hook another layer")
            if not leaf:
                self._activations[name] = output.detach().clone()
                return None
            # The first layer on the graph becomes a leaf that requires grad (the weights do
            # not); a later one is already on that graph and stays on it, so the gradients of an
            # earlier layer still flow through it. The model continues from a clone: the next op
            # may be in place (torchvision's ReLU after norm5) and must not touch what we keep.
            kept = output if output.requires_grad else output.detach().clone().requires_grad_()
            self._activations[name] = kept
            return kept.clone()
        return hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x float (B, 3, H, W) -> logits (B, C); keeps the graph for maps()."""
        if not self._handles:
            raise RuntimeError(f"use {type(self).__name__} inside a `with` block")
        self._activations, self._armed = {}, True
        self._batch = x.shape[0]
        if self.tta == "flip":
            x = torch.cat([x, x.flip(-1)])  # (2B, 3, H, W): crops, then their mirrors
        try:
            with torch.enable_grad():
                self._logits = self.model(x)
        finally:
            self._armed = False
        missing = [name for name in self.layers if name not in self._activations]
        if missing:
            raise RuntimeError(f"layer {missing[0]!r} did not run in the forward pass")
        side = self.map_size
        self._map_shape = (x.shape[-2], x.shape[-1]) if side is None else (side, side)
        return self._logits[:self._batch].detach()

    def maps(self, class_indices: Sequence[int], wanted=None) -> torch.Tensor:
        """Maps of the last forward's images for `class_indices`: float32 (B, K, H, W) in [0, 1]
        (H = W = map_size if given). wanted: bool (B, K), the (image, class) pairs whose maps are
        needed (None: all); the others are zero maps, and the backward pass is shorter when each
        image wants fewer classes than K (_gradients)."""
        if self._logits is None:
            raise RuntimeError("call forward(x) before maps()")
        classes = [int(k) for k in class_indices]
        if not classes:
            return self._logits.new_zeros((self._batch, 0) + self._map_shape, dtype=torch.float32)
        if self.needs_gradients:  # per layer (R, B, ch, h, w): round r of image b is picks[r][b]
            grads, picks = self._gradients(classes, wanted)
        else:
            grads, picks = [None] * len(self.layers), None
        self._logits = None  # the graph is spent
        maps = []
        for name, grad in zip(self.layers, grads):
            activation = self._activations[name].detach().float()
            if grad is not None and not len(grad):  # no image wants a map: no backward rounds
                cam = activation.new_zeros((activation.shape[0], 0) + tuple(activation.shape[2:]))
            else:
                cam = self.combine(activation, None if grad is None else grad.float(), classes)
            cam = cam if picks is None else spread_rounds(cam, picks, len(classes))
            cam = F.interpolate(cam, size=self._map_shape, mode="bilinear", align_corners=False)
            maps.append(normalize_maps(cam))  # (B, K, H, W), rows y, columns x
        self._activations = {}  # a later layer's copy holds the forward graph: let it go
        out = maps[0] if len(maps) == 1 else normalize_maps(torch.stack(maps).mean(dim=0))
        if self.tta == "flip":  # each mirror's map flipped back onto its crop's
            b = self._batch
            out = normalize_maps((out[:b] + out[b:].flip(-1)) / 2)
        return out

    def combine(self, activation: torch.Tensor, grads: torch.Tensor | None,
                classes: list[int]) -> torch.Tensor:
        """activation (B, ch, h, w), grads (R, B, ch, h, w) float32 -> raw maps (B, R, h, w).
        A method with gradients combines one backward round per row of grads (which class each
        image's round is, the base sorts out): it must not read `classes`. A method without
        (needs_gradients False) gets grads None and makes the maps of `classes`, (B, K, h, w)."""
        raise NotImplementedError

    def compute(self, x: torch.Tensor, class_indices: Sequence[int] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward + one backward: logits (B, C) and maps (B, K, H, W); all C classes by
        default."""
        logits = self.forward(x)
        classes = range(logits.shape[1]) if class_indices is None else class_indices
        return logits, self.maps(classes)

    def _gradients(self, classes: list[int], wanted=None
                   ) -> tuple[tuple[torch.Tensor, ...], list[list[int]]]:
        """d logit[b, k] / d activation[b] for every wanted class k, in rounds: one (R, B, ch, h,
        w) per layer, and picks: round -> the index into `classes` of each image's class in that
        round (-1: none; its gradient is zero). wanted (B, K) bool: round r takes each image's
        r-th wanted class (in eval mode no image's logit depends on another image), so as many
        rounds as an image wants classes at most; None: round k is class k for every image."""
        logits = self._logits
        act = tuple(self._activations[name] for name in self.layers)
        rows = logits.shape[0]  # B, or 2B with the mirrors of tta flip
        picks = [[k] * rows for k in range(len(classes))]
        if wanted is not None:
            mask = torch.as_tensor(wanted, dtype=torch.bool).cpu()
            mask = torch.cat([mask, mask]) if rows == 2 * mask.shape[0] else mask
            per_image = [m.nonzero().flatten().tolist() for m in mask]
            rounds = max((len(p) for p in per_image), default=0)
            picks = [[p[r] if r < len(p) else -1 for p in per_image] for r in range(rounds)]
        if not picks:
            return tuple(a.new_zeros((0,) + tuple(a.shape)) for a in act), picks
        eye = torch.zeros((len(picks),) + tuple(logits.shape), dtype=logits.dtype,
                          device=logits.device)
        for r, pick in enumerate(picks):
            for b, k in enumerate(pick):
                if k >= 0:
                    eye[r, b, classes[k]] = 1.0  # round r selects class k of image b: (R, B, C)
        return self._backward(logits, act, eye), picks

    def _backward(self, logits: torch.Tensor, act: tuple[torch.Tensor, ...], eye: torch.Tensor
                  ) -> tuple[torch.Tensor, ...]:
        """The gradients of each row of eye (R, B, C) . logits at every layer: (R, B, ch, h, w)
        per layer, in one batched backward (or one backward per row where that fails)."""
        if self.batched:
            try:
                return torch.autograd.grad(logits, act, grad_outputs=eye, is_grads_batched=True,
                                           retain_graph=True)
            except RuntimeError as err:
                # an op without a vmap rule: same maps, one backward per class
                warnings.warn(f"batched backward failed at {self.target_layer!r} ({err}); "
                              f"falling back to one backward per class")
                self.batched = False
        grads = [torch.autograd.grad(logits, act, grad_outputs=g, retain_graph=True)
                 for g in eye]  # R tuples of one gradient per layer
        return tuple(torch.stack(per_layer) for per_layer in zip(*grads))


def split_layers(target_layer: str) -> list[str]:
    """'a,b' -> ['a', 'b']: the layers whose maps are fused (one name: one layer)."""
    layers = [name.strip() for name in target_layer.split(",")]
    if len(set(layers)) != len(layers):
        raise InputError(f"layer list {target_layer!r} names a layer twice")
    return layers


def spread_rounds(cam: torch.Tensor, picks: list[list[int]], k: int) -> torch.Tensor:
    """Raw maps of backward rounds (B, R, h, w) -> each in its class's column, (B, K, h, w);
    the (image, class) pairs no round made are zero."""
    full = cam.new_zeros((cam.shape[0], k) + tuple(cam.shape[2:]))
    pairs = [(b, r, c) for r, pick in enumerate(picks) for b, c in enumerate(pick) if c >= 0]
    if pairs:
        b, r, c = (torch.tensor(column, device=cam.device) for column in zip(*pairs))
        full[b, c] = cam[b, r]
    return full


def normalize_maps(cam: torch.Tensor) -> torch.Tensor:
    """Min-max each (H, W) map of (B, K, H, W) to [0, 1]; a flat map (all zero) becomes all zero."""
    flat = cam.flatten(2)
    low = flat.min(dim=2).values[..., None, None]
    span = flat.max(dim=2).values[..., None, None] - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (cam - low) / safe, torch.zeros_like(cam))
