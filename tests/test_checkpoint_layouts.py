"""Weights users already have: arnoweng/CheXNet's model.pth.tar layout loads whole and exactly, or
not at all."""
import re

import pytest
import torch
from torch import nn
from torchvision.models import densenet121

from model import load_checkpoint, model_from_checkpoint
from chexnet.constants import ALL_FINDINGS
from chexnet.utils import InputError


class ArnowengDenseNet121(nn.Module):
    """arnoweng/CheXNet's model class: torchvision DenseNet-121, head Linear then Sigmoid."""

    def __init__(self, out_size: int):
        super().__init__()
        self.densenet121 = densenet121(weights=None)
        self.densenet121.classifier = nn.Sequential(nn.Linear(1024, out_size), nn.Sigmoid())

    def forward(self, x):
        return self.densenet121(x)


def legacy_names(state: dict) -> dict:
    """Today's keys -> PyTorch 0.3's ('norm1' -> 'norm.1'), without the later
    num_batches_tracked."""
    return {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v
            for k, v in state.items() if not k.endswith("num_batches_tracked")}


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    net = nn.DataParallel(ArnowengDenseNet121(14))
    for module in net.modules():  # non-trivial batch-norm statistics, so that a skipped one shows
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture(scope="module")
def checkpoint_path(source, tmp_path_factory):
    path = tmp_path_factory.mktemp("arnoweng") / "model.pth.tar"
    state = legacy_names(source.state_dict())
    assert "module.densenet121.features.denseblock1.denselayer1.norm.1.weight" in state
    assert "module.densenet121.classifier.0.weight" in state
    torch.save({"epoch": 7, "arch": "DenseNet121", "state_dict": state, "best_loss": 0.15}, path)
    return path


def test_arnoweng_checkpoint_gives_the_source_logits(source, checkpoint_path):
    checkpoint = load_checkpoint(checkpoint_path)
    assert checkpoint["class_names"] == list(ALL_FINDINGS)
    ours = model_from_checkpoint(checkpoint, str(checkpoint_path))
    captured = {}
    head = source.module.densenet121.classifier[0]
    handle = head.register_forward_hook(lambda m, i, out: captured.update(logits=out))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        probabilities = source(x)
        logits = ours(x)
    handle.remove()
    torch.testing.assert_close(logits, captured["logits"], rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.sigmoid(logits), probabilities, rtol=0, atol=1e-6)


def test_missing_or_unexpected_keys_are_errors(checkpoint_path, tmp_path):
    full = torch.load(checkpoint_path, weights_only=True)
    missing = dict(full, state_dict={k: v for k, v in full["state_dict"].items()
                                     if "denseblock3.denselayer2.conv.1" not in k})
    extra = dict(full, state_dict={**full["state_dict"],
                                   "module.densenet121.extra.weight": torch.zeros(3)})
    for name, checkpoint, word in (("missing", missing, "Missing"), ("extra", extra, "Unexpected")):
        path = tmp_path / f"{name}.pth.tar"
        torch.save(checkpoint, path)
        with pytest.raises(InputError, match=word) as err:
            load_checkpoint(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_code_in_the_file_is_refused(tmp_path):
    path = tmp_path / "model.pth.tar"
    torch.save({"state_dict": {}, "model": ArnowengDenseNet121(14)}, path)  # a pickled module
    with pytest.raises(InputError, match="refused"):
        load_checkpoint(path)
