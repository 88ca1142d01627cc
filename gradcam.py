"""Class activation maps for a multi-label classifier: one forward, one batched backward for all
wanted classes. Methods (METHODS, `--cam`): gradcam (the original's, the default), gradcam++,
layercam, layercam-shortcut (LayerCAM fused over dense blocks, the finer blocks' gradients along
DenseNet's identity shortcut: about the deepest block's cost) and cam (the classic class activation
map from the classifier's weights). The hooking and the batched backward are chexnet/cam_base.py's.

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

import torch
import torch.nn.functional as F
from torch import nn

from chexnet.cam_base import BaseCAM
from chexnet.utils import InputError

FINAL_FEATURES = "features.norm5"  # DenseNet's last feature map, before the head's ReLU + pool


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
        # a round at a time: one round's ReLU'd copy alive, not all (R, B, ch, h, w) of them
        return torch.relu(torch.stack(
            [torch.einsum("bchw,bchw->bhw", torch.relu(g), activation) for g in grads], 1))


class ShortcutLayerCAM(LayerCAM):
    """LayerCAM fused over consecutive dense blocks at about the cost of the deepest one's map.
    A DenseNet block's output begins with its input, unchanged (the concatenation); a finer block's
    gradient is taken along that identity shortcut alone: the next block's output gradient on its
    input channels, back through the transition between them. Only the deepest block's gradient
    crosses the later layers; the finer blocks' skip the next block's own layers. An approximation
    of LayerCAM's gradient, measured on the benchmark (docs/benchmark_eight_findings.md).

    The transition (batch norm, ReLU, 1x1 conv, 2x2 average pool; in eval mode) is linear in the
    gradient once its ReLU's mask is known, so its backward is written out: no graph is kept from
    the finer blocks on, and the conv's transpose runs at the pooled size (it commutes with the
    pool's backward), a quarter of the positions."""

    default_layer = "features.denseblock2,features.denseblock3"

    def __init__(self, model: nn.Module, target_layer: str | None = None, batched: bool = True,
                 tta: str = "none", map_size: int | None = None):
        super().__init__(model, target_layer, batched, tta, map_size)
        numbers = [name.removeprefix("features.denseblock") for name in self.layers]
        first = int(numbers[0]) if numbers[0].isdigit() else 0
        if len(numbers) < 2 or numbers != [str(n) for n in range(first, first + len(numbers))]:
            raise InputError(f"layercam-shortcut fuses consecutive dense blocks, finest first "
                             f"(e.g. {self.default_layer}); got {self.target_layer!r}")
        modules = dict(model.named_modules())
        self._transitions = [modules.get(f"features.transition{n}") for n in numbers[:-1]]
        if not all(map(_is_transition, self._transitions)):
            raise InputError("layercam-shortcut needs torchvision's DenseNet transitions (norm, "
                             "relu, 1x1 conv, 2x2 average pool) between the blocks it fuses")

    def _is_leaf(self, name: str) -> bool:
        return name == self.layers[-1]  # the deepest block; the finer ones' outputs off the graph

    def _backward(self, logits, act, eye):
        grads = list(super()._backward(logits, act[-1:], eye))  # the deepest block's, (R, B, ...)
        for i in reversed(range(len(act) - 1)):  # down the shortcuts, one transition each
            transition = self._transitions[i]
            shortcut = grads[0][:, :, :transition.conv.out_channels]  # on the next block's input
            grads.insert(0, _transition_backward(transition, act[i], shortcut))
        return tuple(grads)


def _is_transition(module: nn.Module | None) -> bool:
    conv, pool, norm = (getattr(module, name, None) for name in ("conv", "pool", "norm"))
    return (isinstance(norm, nn.BatchNorm2d) and norm.affine and norm.track_running_stats
            and isinstance(getattr(module, "relu", None), nn.ReLU)
            and isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.bias is None
            and conv.stride == (1, 1) and conv.padding == (0, 0) and conv.groups == 1
            and conv.dilation == (1, 1) and isinstance(pool, nn.AvgPool2d)
            and pool.divisor_override is None
            and pool.kernel_size == 2 and pool.stride == 2 and pool.padding == 0
            and not pool.ceil_mode)


def _transition_backward(transition: nn.Module, x: torch.Tensor, grad: torch.Tensor
                         ) -> torch.Tensor:
    """d/dx of sum(grad * transition(x)) in eval mode: x (B, ch, H, W), grad (R, B, out, H/2,
    W/2) -> (R, B, ch, H, W). The pool spreads each gradient over its 2x2 cell (a quarter each;
    the odd last row or column it drops gets none), the 1x1 conv's transpose maps it back to the
    input channels, the ReLU passes it where its input was positive, the norm scales it."""
    norm, weight = transition.norm, transition.conv.weight.float()  # (out, ch, 1, 1)
    scale = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).float()[:, None, None]
    shift = norm.bias.float()[:, None, None] - norm.running_mean.float()[:, None, None] * scale
    factor = (x.float() * scale + shift > 0) * scale  # (B, ch, H, W): the ReLU's mask, the norm
    rounds, batch = grad.shape[:2]
    back = F.conv2d(grad.float().flatten(0, 1), weight.transpose(0, 1).contiguous() / 4)
    h, w = back.shape[-2:]
    if x.shape[-2:] == (2 * h, 2 * w):  # each cell's gradient over its 2x2 positions, broadcast
        cells = factor.reshape(batch, -1, h, 2, w, 2)
        back = back.unflatten(0, (rounds, batch))[..., None, :, None] * cells
        return back.view(rounds, batch, -1, 2 * h, 2 * w)
    back = F.interpolate(back, scale_factor=2, mode="nearest")  # (R B, ch, 2 h, 2 w)
    back = F.pad(back, (0, x.shape[-1] - 2 * w, 0, x.shape[-2] - 2 * h))
    return back.unflatten(0, (rounds, batch)) * factor


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
    "layercam-shortcut": ShortcutLayerCAM,
}
DEFAULT_CAM = "gradcam"  # the original's


def make_cam(name: str, model: nn.Module, target_layer: str | None = None,
             tta: str = "none", map_size: int | None = None) -> BaseCAM:
    """The CAM method `name` of METHODS on `model` (target_layer None: the method's default;
    tta: "none" or "flip", see the module's docstring; map_size None: maps of the input's size)."""
    if name not in METHODS:
        raise InputError(f"unknown CAM method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name](model, target_layer, tta=tta, map_size=map_size)
