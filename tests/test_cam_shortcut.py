"""layercam-shortcut: LayerCAM fused over dense blocks, the finer block's gradient taken along
DenseNet's identity shortcut only. Its gradients must be those of the model whose next block's
own layers read a detached copy of their input, and its backward must skip those layers."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chexnet.utils import InputError
from gradcam import _transition_backward, make_cam

CLASSES = [1, 5, 6]
FINER, DEEPER = "denseblock2", "denseblock3"


def _shortcut_reference(model, x):
    """Per class, d logit / d (denseblock2, denseblock3 outputs), denseblock3's layers fed a
    detached input: the only path from denseblock2 to the logits is the concatenation."""
    h = x
    for name, module in model.features.named_children():
        if name == FINER:
            finer = h = module(h).detach().requires_grad_()
        elif name == DEEPER:
            features = [h.detach()]
            for layer in module.values():
                features.append(layer(features))
            deeper = h = torch.cat([h] + features[1:], 1)
        else:
            h = module(h)
    logits = model.classifier(torch.flatten(F.adaptive_avg_pool2d(F.relu(h), 1), 1))
    grads = [torch.autograd.grad(logits[:, k].sum(), (finer, deeper), retain_graph=True)
             for k in CLASSES]
    return [torch.stack(layer) for layer in zip(*grads)]  # per layer (K, B, ch, h, w)


def test_gradients_follow_the_identity_shortcut_only(densenet, random_crops):
    with make_cam("layercam-shortcut", densenet) as cam:
        assert cam.layers == [f"features.{FINER}", f"features.{DEEPER}"]
        cam.forward(random_crops)
        shortcut, picks = cam._gradients(CLASSES)
        assert picks == [[k] * len(random_crops) for k in range(len(CLASSES))]  # round k: class k
    with make_cam("layercam", densenet, ",".join(cam.layers)) as full_cam:
        full_cam.forward(random_crops)
        full = full_cam._gradients(CLASSES)[0]
    for got, want in zip(shortcut, _shortcut_reference(densenet, random_crops)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(shortcut[1], full[1])  # the deepest block's gradient is exact
    assert not torch.allclose(shortcut[0], full[0], atol=1e-6)  # the finer one approximated


def test_the_backward_skips_the_next_blocks_layers(densenet, random_crops):
    """denseblock3's layers run forward once and never backward; LayerCAM's full fusion
    sends every class back through them."""
    for name, layer, expected in (("layercam-shortcut", None, 0),
                                  ("layercam", f"features.{FINER},features.{DEEPER}", 1)):
        crossed = []
        conv = densenet.features.denseblock3.denselayer1.conv1
        handle = conv.register_full_backward_hook(lambda *a: crossed.append(1))
        try:
            with make_cam(name, densenet, layer) as cam:
                maps = cam.compute(random_crops, CLASSES)[1]
        finally:
            handle.remove()
        assert len(crossed) == expected and maps.amax(dim=(-2, -1)).min() > 0


@pytest.mark.parametrize("layer", ["features.denseblock3",
                                   "features.denseblock2,features.denseblock4",
                                   "features.denseblock3,features.denseblock2",
                                   "features.transition2,features.denseblock3"])
def test_only_consecutive_dense_blocks_finest_first(densenet, layer):
    with pytest.raises(InputError, match="consecutive dense blocks, finest first"):
        make_cam("layercam-shortcut", densenet, layer)


def test_three_blocks_and_the_model_left_as_found(densenet, random_crops):
    layers = "features.denseblock2,features.denseblock3,features.denseblock4"
    with make_cam("layercam-shortcut", densenet, layers) as cam:
        maps = cam.compute(random_crops, CLASSES)[1]
        assert cam._activations == {}  # the graph let go
    assert maps.shape == (2, len(CLASSES), *random_crops.shape[-2:])
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in densenet.modules())


@pytest.mark.parametrize("size", [(12, 10), (13, 11)])
def test_the_written_out_transition_backward_is_autograds(densenet, size):
    """Batch norm statistics of their own, an even size and an odd one (the pool drops the last
    row and column): the written-out backward equals autograd's, round by round."""
    transition = densenet.features.transition2
    torch.manual_seed(3)
    saved = {k: v.clone() for k, v in transition.state_dict().items()}
    try:
        norm = transition.norm
        norm.running_mean.normal_(0, 0.5), norm.running_var.uniform_(0.5, 2)
        norm.weight.data.normal_(0, 1), norm.bias.data.normal_(0, 0.5)  # some scales negative
        x = torch.randn(2, norm.num_features, *size, requires_grad=True)
        out = transition(x)
        assert out.shape[-2:] == (6, 5)
        grad = torch.randn(3, *out.shape)
        want = torch.stack([torch.autograd.grad(out, x, g, retain_graph=True)[0] for g in grad])
        got = _transition_backward(transition, x.detach(), grad)
    finally:
        transition.load_state_dict(saved)
    if size == (13, 11):
        assert not got[..., -1, :].any() and not got[..., -1].any()  # the dropped row, column
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_a_model_without_densenets_transitions_is_refused(densenet):
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Sequential()
            for name in ("denseblock2", "transition2", "denseblock3"):
                self.features.add_module(name, torch.nn.Identity())

    with pytest.raises(InputError, match="needs torchvision's DenseNet transitions"):
        make_cam("layercam-shortcut", Odd())
    saved = densenet.features.transition2.norm
    densenet.features.transition2.norm = torch.nn.BatchNorm2d(saved.num_features, affine=False)
    try:  # no scale to write the backward with: refused when built, not inside maps()
        with pytest.raises(InputError, match="needs torchvision's DenseNet transitions"):
            make_cam("layercam-shortcut", densenet)
    finally:
        densenet.features.transition2.norm = saved


@pytest.mark.parametrize("block", ["2", "3"])  # a finer block, kept off the graph; the deepest
def test_a_fused_block_that_runs_twice_in_one_forward_is_refused(densenet, random_crops, block):
    features = densenet.features
    rerun, after = getattr(features, f"denseblock{block}"), getattr(features, f"transition{block}")
    seen = []
    handles = [rerun.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0])),
               after.register_forward_hook(lambda module, inputs, output: rerun(seen[0]))]
    try:
        with make_cam("layercam-shortcut", densenet) as cam:
            with pytest.raises(RuntimeError, match=f"denseblock{block}' ran twice"):
                cam.forward(random_crops)
    finally:
        for handle in handles:
            handle.remove()
