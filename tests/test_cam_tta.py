"""Test-time flip of the maps (gradcam.py, tta="flip"): one batched pass for a crop and its mirror,
the mirror's map flipped back and averaged; the logits stay the crop's own."""
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from chexnet import boxes
from chexnet.utils import InputError
from chexnet.cam_base import normalize_maps
from gradcam import METHODS, make_cam

CLASSES = [1, 5, 6]


def _counting_grad(calls):
    grad = torch.autograd.grad
    return lambda *a, **k: calls.append(1) or grad(*a, **k)


@pytest.mark.parametrize("name,layer", [("gradcam", None), ("layercam", None), ("cam", None),
                                        ("layercam", "features.denseblock2,features.denseblock3"),
                                        ("layercam-shortcut", None)])
def test_flip_is_the_mean_of_the_map_and_its_mirrors_in_one_pass(densenet, random_crops, name,
                                                                  layer):
    with make_cam(name, densenet, layer) as cam:
        logits, plain = cam.compute(random_crops, CLASSES)
    with make_cam(name, densenet, layer) as cam:
        mirrored = cam.compute(random_crops.flip(-1), CLASSES)[1].flip(-1)
    calls, grad = [], torch.autograd.grad
    with make_cam(name, densenet, layer, tta="flip") as cam:
        torch.autograd.grad = _counting_grad(calls)
        try:
            tta_logits, tta = cam.compute(random_crops, CLASSES)
        finally:
            torch.autograd.grad = grad
    assert tta.shape == plain.shape == (2, len(CLASSES), *random_crops.shape[-2:])
    assert len(calls) == {"cam": 0}.get(name, 1)  # crop and mirror in one batched backward
    np.testing.assert_allclose(tta_logits.numpy(), logits.numpy(), atol=1e-5)
    want = normalize_maps((plain + mirrored) / 2)
    np.testing.assert_allclose(tta.numpy(), want.numpy(), atol=1e-5)


@pytest.mark.parametrize("name", ["gradcam", "layercam"])
def test_a_symmetric_input_gets_a_symmetric_map(densenet, random_crops, name):
    symmetric = (random_crops + random_crops.flip(-1)) / 2
    with make_cam(name, densenet) as cam:
        plain = cam.compute(symmetric, CLASSES)[1]
    with make_cam(name, densenet, tta="flip") as cam:
        tta = cam.compute(symmetric, CLASSES)[1]
    assert (plain - plain.flip(-1)).abs().max() > 0.05  # the random network is not symmetric
    np.testing.assert_allclose(tta.numpy(), tta.flip(-1).numpy(), atol=1e-5)


class PooledLinear(nn.Module):
    """features -> global mean -> linear: Grad-CAM's map is then relu(sum_c w_kc A_c), here the
    input's first channel (a 1x1 conv copies it into every feature channel)."""

    def __init__(self):
        super().__init__()
        conv = nn.Conv2d(3, 4, 1, bias=False)
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[:, 0] = 1.0
        self.features = nn.Sequential(OrderedDict(conv=conv))
        self.classifier = nn.Linear(4, 2)
        with torch.no_grad():
            self.classifier.weight.fill_(0.5)

    def forward(self, x):
        return self.classifier(self.features(x).mean(dim=(-2, -1)))


def test_a_peak_stays_where_it_is_under_flip():
    """A blob at (row 60, col 150) of a 224 crop: the map's peak stays there (not at the mirror
    column 73), and the peaks rule's box is centred on it."""
    row, col = 60, 150
    yy, xx = np.mgrid[:224, :224]
    blob = np.exp(-((yy - row) ** 2 + (xx - col) ** 2) / (2 * 6.0 ** 2)).astype(np.float32)
    x = torch.zeros(1, 3, 224, 224)
    x[0, 0] = torch.from_numpy(blob)
    with make_cam("gradcam", PooledLinear(), "features.conv", tta="flip") as cam:
        heatmap = cam.compute(x, [0])[1][0, 0].numpy()
    assert np.unravel_index(heatmap.argmax(), heatmap.shape) == (row, col)
    assert heatmap[row, 223 - col] < 0.05
    (bx, by, bw, bh), = boxes.METHODS["peaks"](heatmap.astype(np.float64), (160.0, 120.0))
    # the box is in the 1024 frame: crop pixel (row, col) -> ((col + 16) * 4, (row + 16) * 4)
    assert abs(bx + bw / 2 - (col + 16) * 4) <= 4 and abs(by + bh / 2 - (row + 16) * 4) <= 4


def test_unknown_tta_is_refused(densenet):
    assert set(METHODS) >= {"gradcam", "layercam"}
    with pytest.raises(InputError, match="choose from none, flip"):
        make_cam("gradcam", densenet, tta="rot90")
