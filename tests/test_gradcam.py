"""Grad-CAM: the one-forward/one-batched-backward maps equal a plain per-class loop, at every layer we offer."""
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from chexnet import images
from chexnet.constants import DEFAULT_TARGET_LAYER
from chexnet.utils import InputError
from chexnet.cam_base import normalize_maps
from gradcam import GradCAM

BLOCK3_LAYER = "features.denseblock3.denselayer24.conv2"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return torchvision.models.densenet121(num_classes=8).eval()  # random init, torchvision names


@pytest.fixture(scope="module")
def batch():
    names = ["00001933_000.png", "00008386_000.png"]
    crops = [images.center_crop(images.load_stored(f"sample/images/{n}")) for n in names]
    return images.normalize(torch.from_numpy(np.stack(crops)))  # (2, 3, 224, 224)


def _reference_map(activation: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """Textbook Grad-CAM of one image and class, in float64: (ch, h, w) x2 -> (224, 224) in [0, 1]."""
    weights = grad.mean(axis=(1, 2))
    cam = np.maximum((weights[:, None, None] * activation).sum(axis=0), 0)
    cam = cv2.resize(cam, (224, 224), interpolation=cv2.INTER_LINEAR)  # half-pixel centres, like torch
    span = cam.max() - cam.min()
    return (cam - cam.min()) / span if span > 0 else np.zeros_like(cam)


def _loop_with_module_hooks(model, x, layer, classes):
    """One forward and one backward per class, a hook on the layer's output (the per-class loop).

    Only the hooked module's own parameters require grad, so each backward stops there (a shorter test)."""
    module = dict(model.named_modules())[layer]
    own = {id(p) for p in module.parameters()}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(id(p) in own)
    store = {}

    def keep(m, i, out):
        store["a"] = out.detach().clone()
        out.register_hook(lambda grad: store.__setitem__("g", grad.detach()))

    handle = module.register_forward_hook(keep)
    maps = np.zeros((x.shape[0], len(classes), 224, 224))
    try:
        for j, k in enumerate(classes):
            model(x)[:, k].sum().backward()
            for b in range(x.shape[0]):
                maps[b, j] = _reference_map(store["a"][b].double().numpy(), store["g"][b].double().numpy())
    finally:
        handle.remove()
        for p, flag in flags:
            p.grad = None
            p.requires_grad_(flag)
    return maps


def _loop_at_norm5(model, x, classes):
    """norm5 without hooks: split torchvision's forward by hand (norm5, then ReLU, pool, classifier)."""
    maps = np.zeros((x.shape[0], len(classes), 224, 224))
    with torch.no_grad():
        act = model.features(x)  # the output of norm5, before the in-place ReLU
    for j, k in enumerate(classes):
        a = act.clone().requires_grad_(True)
        logits = model.classifier(torch.flatten(F.adaptive_avg_pool2d(F.relu(a), 1), 1))
        (grad,) = torch.autograd.grad(logits[:, k].sum(), a)
        for b in range(x.shape[0]):
            maps[b, j] = _reference_map(a[b].detach().double().numpy(), grad[b].double().numpy())
    return maps


@pytest.mark.parametrize("layer, classes", [
    (DEFAULT_TARGET_LAYER, [0, 1, 3, 5, 7]),
    ("features.norm5", [1, 2, 5, 6]),
    (BLOCK3_LAYER, [2, 3, 6]),
])
def test_batched_maps_equal_per_class_loop(model, batch, layer, classes):
    if layer == "features.norm5":
        expected = _loop_at_norm5(model, batch, classes)
    else:
        expected = _loop_with_module_hooks(model, batch, layer, classes)
    with GradCAM(model, layer) as cam:
        logits, maps = cam.compute(batch, classes)
    assert logits.shape == (2, 8) and maps.shape == (2, len(classes), 224, 224)
    assert maps.dtype == torch.float32
    assert np.abs(maps.numpy() - expected).max() < 1e-4
    assert (expected.max(axis=(2, 3)) == 1).sum() >= 2  # some maps are not all zero: the check has teeth
    assert torch.allclose(logits, model(batch), atol=1e-5)  # hooks changed nothing in the forward


def test_per_class_fallback_equals_batched(model, batch):
    with GradCAM(model, "features.norm5") as cam:
        _, batched = cam.compute(batch, [1, 2, 5])
    with GradCAM(model, "features.norm5", batched=False) as cam:
        _, looped = cam.compute(batch, [1, 2, 5])
    assert torch.allclose(batched, looped, atol=1e-6)


def test_batch_equals_single_images(model, batch):
    with GradCAM(model) as cam:
        logits, maps = cam.compute(batch, [1, 2])
        for b in range(batch.shape[0]):
            one_logits, one_maps = cam.compute(batch[b:b + 1], [1, 2])
            assert torch.allclose(one_logits[0], logits[b], atol=1e-4)
            assert (one_maps[0] - maps[b]).abs().max() < 1e-4


def test_two_step_api_and_defaults(model, batch):
    with GradCAM(model) as cam:
        logits = cam.forward(batch)
        maps = cam.maps([3])
        _, all_maps = cam.compute(batch)  # every class by default
        empty = (cam.forward(batch), cam.maps([]))[1]
    assert maps.shape == (2, 1, 224, 224) and all_maps.shape == (2, 8, 224, 224)
    assert torch.allclose(maps[:, 0], all_maps[:, 3], atol=1e-6)
    assert empty.shape == (2, 0, 224, 224)
    assert maps.min() >= 0 and maps.max() <= 1


def test_hooks_removed_and_model_left_as_found(model, batch):
    model.train()
    model.features.conv0.weight.requires_grad_(False)
    layer = dict(model.named_modules())["features.norm5"]
    try:
        with GradCAM(model, "features.norm5") as cam:
            assert len(layer._forward_hooks) == 1 and not model.training
            cam.compute(batch[:1], [0])
        assert len(layer._forward_hooks) == 0
        assert model.training
        flags = [p.requires_grad for p in model.parameters()]
        assert flags[0] is False and all(flags[1:])
    finally:
        model.features.conv0.weight.requires_grad_(True)
        model.eval()
    with pytest.raises(RuntimeError, match="with"):
        cam.forward(batch[:1])


def test_zero_map_stays_zero_and_no_nan():
    cam = torch.zeros(1, 2, 224, 224)
    cam[0, 1, 10:20, 30:40] = 3.0
    out = normalize_maps(cam)
    assert torch.equal(out[0, 0], torch.zeros(224, 224))
    assert out[0, 1].max() == 1 and out[0, 1].min() == 0 and not torch.isnan(out).any()


def test_all_zero_activation_gives_zero_map(model, batch):
    """A layer whose activation is all zero (weights zeroed) gives zero maps, not NaN."""
    conv = model.features.denseblock4.denselayer16.conv2
    saved = conv.weight.detach().clone()
    with torch.no_grad():
        conv.weight.zero_()
    try:
        with GradCAM(model) as cam:
            _, maps = cam.compute(batch[:1], [0, 1])
    finally:
        with torch.no_grad():
            conv.weight.copy_(saved)
    assert torch.equal(maps, torch.zeros_like(maps))


def test_unknown_layer_lists_valid_names(model):
    with pytest.raises(InputError, match="norm5"):
        GradCAM(model, "features.denseblock9")


def _rss_mib() -> float:
    """This process's resident memory (Linux /proc), in MiB."""
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status")


def test_memory_stays_flat_over_100_uses():
    """pytorch-grad-cam's check: 100 rounds of `with GradCAM(...)` leave no hook, graph or map behind."""
    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None, num_classes=8).eval()
    x = torch.randn(2, 3, 64, 64)
    for i in range(100):
        with GradCAM(model, DEFAULT_TARGET_LAYER) as cam:
            logits, maps = cam.compute(x, [0, 3, 5])
        assert maps.shape == (2, 3, 64, 64) and cam._activations == {} and cam._logits is None
        if i == 9:  # after the allocator's warm-up
            start = _rss_mib()
    assert _rss_mib() - start < 40, f"memory grew from {start:.0f} MiB to {_rss_mib():.0f} MiB"
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.requires_grad for p in model.parameters()) and not model.training
