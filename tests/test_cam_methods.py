"""Each CAM method's batched maps equal a per-class, per-image restatement of its paper's
formula."""
import cv2
import numpy as np
import pytest
import torch

from chexnet.utils import InputError
from gradcam import CAM, FINAL_FEATURES, METHODS, make_cam

CLASSES = [1, 5, 6]


def _finish(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    cam = cv2.resize(cam, size[::-1], interpolation=cv2.INTER_LINEAR)  # cv2 takes (W, H)
    span = cam.max() - cam.min()
    return (cam - cam.min()) / span if span > 0 else np.zeros_like(cam)


def grad_cam(a, g, w):  # Selvaraju et al. 2017, eq. 1-2
    return np.maximum(np.einsum("c,chw->hw", g.mean(axis=(1, 2)), a), 0)


def grad_cam_pp(a, g, w):  # Chattopadhyay et al. 2018, eq. 19 (exp score: powers of the gradient)
    alpha = np.zeros_like(g)
    for c in range(a.shape[0]):
        denominator = 2 * g[c] ** 2 + a[c].sum() * g[c] ** 3 + 1e-6
        alpha[c] = np.where(g[c] != 0, g[c] ** 2 / denominator, 0)
    weights = np.array([(alpha[c] * np.maximum(g[c], 0)).sum() for c in range(a.shape[0])])
    return np.maximum(np.einsum("c,chw->hw", weights, a), 0)


def layer_cam(a, g, w):  # Jiang et al. 2021, eq. 4-5
    return np.maximum((np.maximum(g, 0) * a).sum(axis=0), 0)


def class_cam(a, g, w):  # Zhou et al. 2016: M_c(x, y) = sum_k w_k^c f_k(x, y), f after the ReLU
    return np.einsum("c,chw->hw", w, np.maximum(a, 0))


FORMULAS = {"gradcam": grad_cam, "gradcam++": grad_cam_pp, "layercam": layer_cam, "cam": class_cam}


def _reference(model, x, name):
    """One forward + one backward per class, a hook on the layer; the formula per image, float64."""
    layer = FINAL_FEATURES if name == "cam" else METHODS[name].default_layer
    module = dict(model.named_modules())[layer]
    store = {}

    def keep(m, i, out):
        store["a"] = out.detach().clone()
        out.register_hook(lambda grad: store.__setitem__("g", grad.detach()))

    handle = module.register_forward_hook(keep)
    out = np.zeros((x.shape[0], len(CLASSES), *x.shape[-2:]))
    try:
        for j, k in enumerate(CLASSES):
            model.zero_grad()
            model(x)[:, k].sum().backward()
            w = model.classifier.weight[k].detach().double().numpy()
            for b in range(x.shape[0]):
                a, g = store["a"][b].double().numpy(), store["g"][b].double().numpy()
                out[b, j] = _finish(FORMULAS[name](a, g, w), tuple(x.shape[-2:]))
    finally:
        handle.remove()
    return out


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_batched_maps_equal_the_papers_formula(densenet, random_crops, name):
    # layercam-shortcut is LayerCAM's formula on other gradients: tests/test_cam_shortcut.py
    assert set(FORMULAS) | {"layercam-shortcut"} == set(METHODS)
    with make_cam(name, densenet) as cam:
        logits, maps = cam.compute(random_crops, CLASSES)
    assert maps.shape == (2, len(CLASSES), *random_crops.shape[-2:])
    assert maps.dtype == torch.float32
    np.testing.assert_allclose(maps.numpy(), _reference(densenet, random_crops, name), atol=2e-5)
    np.testing.assert_allclose(logits.numpy(), densenet(random_crops).detach().numpy(), atol=1e-5)


def test_cam_is_exact_for_pool_and_linear_head(densenet, random_crops):
    """The raw CAM's mean over positions is the logit minus the bias (global pool + linear head)."""
    store = {}
    with CAM(densenet) as cam:
        original = cam.combine
        cam.combine = lambda a, g, k: store.setdefault("raw", original(a, g, k))
        logits = cam.forward(random_crops)
        cam.maps(list(range(8)))
    recovered = store["raw"].mean(dim=(-2, -1)) + densenet.classifier.bias.detach()
    np.testing.assert_allclose(recovered.numpy(), logits.numpy(), atol=1e-4)


def test_cam_rejects_another_layer_and_unknown_method(densenet):
    with pytest.raises(InputError, match="final features"):
        make_cam("cam", densenet, "features.denseblock3")
    with pytest.raises(InputError, match="choose from"):
        make_cam("scorecam", densenet)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_model_left_as_found(densenet, random_crops, name):
    densenet.train()
    flags = [p.requires_grad for p in densenet.parameters()]
    with make_cam(name, densenet) as cam:
        cam.compute(random_crops[:1], [0])
    assert densenet.training and [p.requires_grad for p in densenet.parameters()] == flags
    densenet.eval()


FUSED = "features.denseblock3,features.denseblock4.denselayer16.conv2"


@pytest.mark.parametrize("name", ["layercam", "gradcam"])
def test_fused_layers_are_the_mean_of_each_layers_map(densenet, random_crops, name):
    """Two layers in one forward and one backward: the normalised mean of each layer's own map."""
    singles = []
    for layer in FUSED.split(","):
        with make_cam(name, densenet, layer) as cam:
            singles.append(cam.compute(random_crops, CLASSES)[1])
    assert singles[0].shape == singles[1].shape  # both resized to the input
    mean = (singles[0] + singles[1]) / 2
    low = mean.flatten(2).min(dim=2).values[..., None, None]
    high = mean.flatten(2).max(dim=2).values[..., None, None]
    with make_cam(name, densenet, FUSED) as cam:
        calls = []
        grad = torch.autograd.grad
        torch.autograd.grad = lambda *a, **k: calls.append(1) or grad(*a, **k)
        try:
            logits, fused = cam.compute(random_crops, CLASSES)
        finally:
            torch.autograd.grad = grad
        assert cam.target_layer == FUSED and cam.layers == FUSED.split(",")
        assert cam._activations == {}  # maps() let go of the copies that hold the graph
    assert len(calls) == 1  # one batched backward for both layers and all classes
    np.testing.assert_allclose(fused.numpy(), ((mean - low) / (high - low)).numpy(), atol=1e-6)
    assert not torch.allclose(fused, singles[0], atol=1e-2)  # the finer layer changed the map


def test_layer_lists_are_checked(densenet):
    with pytest.raises(InputError, match="names a layer twice"):
        make_cam("layercam", densenet, "features.denseblock3,features.denseblock3")
    with pytest.raises(InputError, match="unknown Grad-CAM layer 'features.nope'"):
        make_cam("layercam", densenet, "features.denseblock3,features.nope")


@pytest.mark.parametrize("name, layer, tta", [
    ("gradcam", None, "none"),
    ("layercam", "features.denseblock2,features.denseblock3", "none"),
    ("gradcam++", "features.denseblock3", "flip"),
    ("layercam-shortcut", None, "flip")])
def test_maps_of_the_wanted_pairs_only_take_fewer_rounds_and_equal_all_maps(
        densenet, name, layer, tta, monkeypatch):
    """maps(classes, wanted): each image's wanted classes as with every map made (float rounding),
    zero maps elsewhere, and a backward of as many rounds as an image wants classes at most."""
    crops = torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    wanted = torch.tensor([[1, 0, 0, 1, 0, 0, 0, 1], [0, 1, 0, 0, 0, 0, 0, 0],
                           [0, 0, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    with make_cam(name, densenet, layer, tta=tta) as cam:
        cam.forward(crops)
        every = cam.maps(range(8))
        rounds = []
        backward = cam._backward
        monkeypatch.setattr(cam, "_backward", lambda *a: rounds.append(len(a[2])) or backward(*a))
        cam.forward(crops)
        some = cam.maps(range(8), wanted.numpy())
    assert rounds == [3]  # image 0 wants three classes; not 8
    with make_cam(name, densenet, layer, tta=tta) as cam:
        cam.forward(crops)
        assert not cam.maps(range(8), np.zeros((4, 8), dtype=bool)).any()  # none wanted
    torch.testing.assert_close(some[wanted], every[wanted], rtol=0, atol=1e-5)
    assert every[wanted].amax(dim=(1, 2)).min() > 0  # real maps were compared
    assert not some[~wanted].any()
