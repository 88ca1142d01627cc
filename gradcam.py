"""Class activation maps for a multi-label classifier: one forward, one batched backward for all
wanted classes. Methods (METHODS, `--cam`): gradcam (the original's, the default), gradcam++,
layercam and cam (the classic class activation map from the classifier's weights).

    with make_cam("gradcam", model) as cam:            # or GradCAM(model), LayerCAM(model), ...
        # x (B, 3, H, W) -> (B, C), (B, K, H, W) in [0, 1]
        logits, maps = cam.compute(x, class_indices)

Or in two steps, when the classes depend on the predictions (localization picks the active ones):

        logits = cam.forward(x)
        maps = cam.maps(class_indices)

BaseCAM does the hooking: a forward hook on each target layer swaps its output for a leaf copy
that requires grad; the gradients of the class LOGITS with respect to those copies come from one
batched backward. A method is one small `combine(activation, grads, classes)` giving the raw
low-resolution maps (pytorch-grad-cam's shape); the base resizes and min-max normalises them.
Several layers ("features.denseblock3,features.denseblock4", LayerCAM's multi-layer fusion): each
layer's map is made, resized and normalised on its own, and their mean, normalised again, is the
map; a coarse deep layer then says where, a finer one sharpens the outline. For
Grad-CAM, after min-max normalisation this is the original's map (it used post-sigmoid gradients,
which only rescale each map by sigmoid'(logit), a positive number), without the underflow of a
saturated sigmoid.

Test-time flip (`tta="flip"`): the crop and its left-right mirror go through one forward and one
batched backward as a batch of 2B; each mirror's map is flipped back and averaged with its crop's
(then min-max again). The logits returned are the crop's own, so probabilities (and the classes
found active) do not change; only the maps do.

map_size: the maps' side (None: the input's). Localization passes 224 at every --input-size, so a
448 input's 14 x 14 map is upsampled straight to 224 x 224 on the same crop (chexnet/geometry.py).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from chexnet.constants import DEFAULT_TARGET_LAYER
from chexnet.utils import InputError

FINAL_FEATURES = "features.norm5"  # DenseNet's last feature map, before the head's ReLU + pool
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
        # layer name -> (B, ch, h, w) leaf that requires grad, in self.layers' order
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

    def _hook_of(self, name: str):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor | None:
            if not self._armed:
                return None  # the model called directly inside `with`: leave its output alone
            if name in self._activations:
                raise RuntimeError(f"layer {name!r} ran twice in one forward pass; "
                                   "hook another layer")
            # The first hooked layer's output becomes a leaf that requires grad (the weights do
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
        # per layer (K, B, ch, h, w), or None for a method that needs no backward
        grads = (self._gradients(classes, wanted) if self.needs_gradients
                 else [None] * len(self.layers))
        self._logits = None  # the graph is spent
        maps = []
        for name, grad in zip(self.layers, grads):
            activation = self._activations[name].detach().float()
            cam = self.combine(activation, None if grad is None else grad.float(), classes)
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
        """activation (B, ch, h, w), grads (K, B, ch, h, w) float32 -> raw maps (B, K, h, w)."""
        raise NotImplementedError

    def compute(self, x: torch.Tensor, class_indices: Sequence[int] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward + one backward: logits (B, C) and maps (B, K, H, W); all C classes by
        default."""
        logits = self.forward(x)
        classes = range(logits.shape[1]) if class_indices is None else class_indices
        return logits, self.maps(classes)

    def _gradients(self, classes: list[int], wanted=None) -> tuple[torch.Tensor, ...]:
        """d logit[b, k] / d activation[b] for every wanted class k, one (K, B, ch, h, w) per
        layer. wanted (B, K) bool: only those pairs (the others stay zero), in rounds: round r
        takes each image's r-th wanted class (in eval mode no image's logit depends on another
        image), so as many rounds as an image wants classes at most; else round k is class k."""
        logits = self._logits
        act = tuple(self._activations[name] for name in self.layers)
        rows = logits.shape[0]  # B, or 2B with the mirrors of tta flip
        picks = [[k] * rows for k in range(len(classes))]  # round -> class index per image
        if wanted is not None:
            mask = torch.as_tensor(wanted, dtype=torch.bool).cpu()
            mask = torch.cat([mask, mask]) if rows == 2 * mask.shape[0] else mask
            per_image = [m.nonzero().flatten().tolist() for m in mask]
            rounds = max((len(p) for p in per_image), default=0)
            if rounds == 0:
                return tuple(a.new_zeros((len(classes),) + tuple(a.shape)) for a in act)
            picks = [[p[r] if r < len(p) else -1 for p in per_image] for r in range(rounds)]
        eye = torch.zeros((len(picks),) + tuple(logits.shape), dtype=logits.dtype,
                          device=logits.device)
        for r, pick in enumerate(picks):
            for b, k in enumerate(pick):
                if k >= 0:
                    eye[r, b, classes[k]] = 1.0  # round r selects class k of image b: (R, B, C)
        grads = self._backward(logits, act, eye)
        if wanted is None:
            return grads
        spread = []
        for g in grads:  # (R, B, ...) -> (K, B, ...), each pair's gradient in its class's row
            full = g.new_zeros((len(classes),) + tuple(g.shape[1:]))
            for r, pick in enumerate(picks):
                for b, k in enumerate(pick):
                    if k >= 0:
                        full[k, b] = g[r, b]
            spread.append(full)
        return tuple(spread)

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


class GradCAM(BaseCAM):
    """Selvaraju et al. 2017: channel weights = spatially averaged gradients; ReLU of the sum."""

    def combine(self, activation, grads, classes):
        weights = grads.mean(dim=(-2, -1))  # (K, B, ch)
        return torch.relu(torch.einsum("kbc,bchw->bkhw", weights, activation))


class GradCAMPlusPlus(BaseCAM):
    """Chattopadhyay et al. 2018, eq. 19 with exp(logit) (pytorch-grad-cam's form): per-pixel
    alpha = g^2 / (2 g^2 + sum_ij(A) g^3), channel weight = sum_ij alpha relu(g)."""

    def combine(self, activation, grads, classes):
        g2 = grads * grads
        total = activation.sum(dim=(-2, -1))[None, :, :, None, None]  # (1, B, ch, 1, 1)
        alpha = g2 / (2 * g2 + total * g2 * grads + 1e-6)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        weights = (alpha * torch.relu(grads)).sum(dim=(-2, -1))  # (K, B, ch)
        return torch.relu(torch.einsum("kbc,bchw->bkhw", weights, activation))


class LayerCAM(BaseCAM):
    """Jiang et al. 2021: each position weighted by its own positive gradient; ReLU of the sum."""

    def combine(self, activation, grads, classes):
        return torch.relu(torch.einsum("kbchw,bchw->bkhw", torch.relu(grads), activation))


class CAM(BaseCAM):
    """Zhou et al. 2016: M_k = sum_c w_kc relu(F)_c on the final features (norm5; torchvision
    applies its ReLU in place after it, the hook keeps the pre-ReLU copy). Exact for DenseNet's
    global average pool + linear head: the mean of M_k over positions is logit_k - bias_k. No
    backward; no ReLU on the map (the paper's formula), so min-max puts its lowest value at 0."""

    default_layer = FINAL_FEATURES
    needs_gradients = False

    def __init__(self, model: nn.Module, target_layer: str | None = None, batched: bool = True,
                 tta: str = "none", map_size: int | None = None):
        if target_layer not in (None, FINAL_FEATURES):
            raise InputError(f"the cam method uses the final features ({FINAL_FEATURES}) and "
                             f"the classifier's weights; it takes no other layer (got "
                             f"{target_layer!r})")
        head = getattr(model, "classifier", None)
        if not isinstance(head, nn.Linear):
            raise InputError("the cam method needs a model whose `classifier` is one nn.Linear")
        super().__init__(model, target_layer, batched, tta, map_size)
        self._head = head

    def combine(self, activation, grads, classes):
        weights = self._head.weight.detach().float()[classes]  # (K, ch)
        return torch.einsum("kc,bchw->bkhw", weights, torch.relu(activation))


METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "layercam": LayerCAM, "cam": CAM,
}
DEFAULT_CAM = "gradcam"  # the original's


def make_cam(name: str, model: nn.Module, target_layer: str | None = None,
             tta: str = "none", map_size: int | None = None) -> BaseCAM:
    """The CAM method `name` of METHODS on `model` (target_layer None: the method's default;
    tta: "none" or "flip", see the module's docstring; map_size None: maps of the input's size)."""
    if name not in METHODS:
        raise InputError(f"unknown CAM method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name](model, target_layer, tta=tta, map_size=map_size)


def split_layers(target_layer: str) -> list[str]:
    """'a,b' -> ['a', 'b']: the layers whose maps are fused (one name: one layer)."""
    layers = [name.strip() for name in target_layer.split(",")]
    if len(set(layers)) != len(layers):
        raise InputError(f"layer list {target_layer!r} names a layer twice")
    return layers


def normalize_maps(cam: torch.Tensor) -> torch.Tensor:
    """Min-max each (H, W) map of (B, K, H, W) to [0, 1]; a flat map (all zero) becomes all zero."""
    flat = cam.flatten(2)
    low = flat.min(dim=2).values[..., None, None]
    span = flat.max(dim=2).values[..., None, None] - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (cam - low) / safe, torch.zeros_like(cam))
