"""The original project's slow methods, re-stated from its description, for the benchmarks only.

None of this is used by the pipeline. Each function does what thtang/CheXNet-with-localization
did, the way it did it, so that a benchmark can time it beside ours on the same images:

- load: imageio decode, first channel of an RGB(A) file, skimage.transform.resize to (256, 256)
  (float64; bilinear without anti-aliasing, as scikit-image 0.13.1 resized), then divided by 255
  once more, as its preprocessing.py did.
- Grad-CAM: the model's output passed through a sigmoid; a forward hook on EVERY module copying its
  output, and a (legacy) backward hook on every module copying its output gradient; the input
  requires grad and so do all weights; one image at a time, one full backward per active class;
  the gradients L2-normalised, averaged per channel, the weighted sum of channels, ReLU, min-max
  normalised at 7x7, then resized to 224 by bilinear interpolation (cv2.resize).
- boxes: max and min filters of size 100, local maxima where the window's span exceeds 0.1, five
  separate binary dilations, labelling (and find_objects, whose result it never used), centres of
  mass, one box of the class's average size per centre whose value exceeds 0.9 of the map's max.
"""
from __future__ import annotations

import warnings

import cv2
import numpy as np
import torch
from scipy import ndimage

from chexnet.constants import CROP_OFFSET, CROP_SIZE, PEAK_CONTRAST, PEAK_DILATIONS, PEAK_KEEP_FRACTION, \
    PEAK_NEIGHBORHOOD, RESCALE_FACTOR, STORED_SIZE


def original_load(path: str) -> np.ndarray:
    """PNG -> float64 (256, 256): imageio + skimage resize, then /255 (the original's values, 0..1/255)."""
    import imageio.v2 as imageio
    import skimage.transform

    image = imageio.imread(path)
    if image.shape != (1024, 1024):
        image = image[:, :, 0]  # RGBA files: the first channel
    # As the original ran it (scikit-image 0.13.1): bilinear, mode 'constant', no anti-aliasing (today's
    # default would low-pass first, 20x slower than what the original paid).
    resized = skimage.transform.resize(image, (STORED_SIZE, STORED_SIZE), order=1, mode="constant",
                                       anti_aliasing=False)  # float64 in [0, 1]
    return np.array(resized) / 255


class OriginalGradCAM:
    """Hooks on all modules (never removed until release()), one backward per class, per image."""

    def __init__(self, model: torch.nn.Module, target_layer: str):
        self.model = model.eval()
        self.target_layer = target_layer
        self.fmaps: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}
        self.handles = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # register_backward_hook is deprecated, as the original's API was
            for name, module in model.named_modules():
                self.handles.append(module.register_forward_hook(self._keep_output(name)))
                self.handles.append(module.register_backward_hook(self._keep_grad(name)))

    def _keep_output(self, name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):  # on CUDA the original copied every output to the host
                self.fmaps[name] = output.detach().to("cpu", copy=True)
        return hook

    def _keep_grad(self, name):
        def hook(module, grad_in, grad_out):
            if grad_out and grad_out[0] is not None:
                self.grads[name] = grad_out[0].detach().to("cpu", copy=True)
        return hook

    def release(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def forward(self, image: torch.Tensor) -> np.ndarray:
        """image (3, 224, 224) -> probabilities (C,); the input requires grad, as the original's did."""
        self.x = image.unsqueeze(0).clone().requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # non-full backward hooks are deprecated
            self.probs = torch.sigmoid(self.model(self.x))  # (1, C): the original's model ended in a Sigmoid
        return self.probs.detach().cpu().numpy()[0]

    def maps(self, classes) -> np.ndarray:
        """Maps float32 (K, 224, 224) of the last forward's image, one full backward per class."""
        maps = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a flat map divides 0 by 0 (NaN), as the original's did
            for k in classes:
                self.model.zero_grad()
                one_hot = torch.zeros_like(self.probs)
                one_hot[0, k] = 1.0
                self.probs.backward(gradient=one_hot, retain_graph=True)
                maps.append(self._generate(self.x.shape[-2:]))
        return np.stack(maps) if maps else np.zeros((0,) + tuple(self.x.shape[-2:]), np.float32)

    def image_maps(self, image: torch.Tensor, classes) -> tuple[np.ndarray, np.ndarray]:
        """image (3, 224, 224) -> (probabilities (C,), maps float32 (K, 224, 224))."""
        probs = self.forward(image)
        return probs, self.maps(classes)

    def _generate(self, size) -> np.ndarray:
        fmap = self.fmaps[self.target_layer][0]  # (ch, h, w)
        grad = self.grads[self.target_layer][0]
        grad = grad / (torch.sqrt(torch.mean(grad ** 2)) + 1e-5)
        weights = grad.mean(dim=(1, 2))  # (ch,)
        cam = torch.zeros(fmap.shape[1:])
        for channel, weight in zip(fmap, weights):  # the original's channel-by-channel loop
            cam += channel * weight
        cam = torch.relu(cam).numpy()
        cam = cam - cam.min()
        cam = cam / cam.max()
        return cv2.resize(cam, (int(size[1]), int(size[0])))


def original_boxes(heatmap: np.ndarray, size_wh: tuple[float, float]) -> list[tuple[float, float, float, float]]:
    """(224, 224) heatmap -> boxes (x, y, w, h) in 1024 px, the original's peak heuristic step by step."""
    data = heatmap
    w_k, h_k = (np.array(size_wh) * (STORED_SIZE / 1024)).astype(int)
    data_max = ndimage.maximum_filter(data, PEAK_NEIGHBORHOOD)
    maxima = data == data_max
    data_min = ndimage.minimum_filter(data, PEAK_NEIGHBORHOOD)
    maxima[(data_max - data_min) <= PEAK_CONTRAST] = False
    for _ in range(PEAK_DILATIONS):
        maxima = ndimage.binary_dilation(maxima)
    labeled, count = ndimage.label(maxima)
    ndimage.find_objects(labeled)  # computed and never used by the original
    centres = np.array(ndimage.center_of_mass(data, labeled, range(1, count + 1)))
    found = []
    for row, col in centres:
        if data[int(row), int(col)] > np.max(data) * PEAK_KEEP_FRACTION:
            top = int(max(row - h_k / 2, 0.0))
            left = int(max(col - w_k / 2, 0.0))
            right = int(min(left + w_k, CROP_SIZE))
            bottom = int(min(top + h_k, CROP_SIZE))
            found.append((float((left + CROP_OFFSET) * RESCALE_FACTOR), float((top + CROP_OFFSET) * RESCALE_FACTOR),
                          float((right - left) * RESCALE_FACTOR), float((bottom - top) * RESCALE_FACTOR)))
    return found
