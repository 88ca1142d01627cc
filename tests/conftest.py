"""Shared fixtures: the bundled real sample, ../shared/nih where present, random-weight
checkpoints written as train.py writes them, and a random torchvision DenseNet-121 with tiny
inputs for the CAM tests."""
import functools
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))  # the other commands: evaluate, calibrate, draw_boxes, build_bundle

SAMPLE = ROOT / "sample"
SHARED_NIH = ROOT.parent / "shared" / "nih"


@pytest.fixture
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture
def shared_nih() -> Path:
    if not (SHARED_NIH / "images").is_dir():
        pytest.skip("../shared/nih is not present")
    return SHARED_NIH


@functools.lru_cache(maxsize=None)
def random_state(num_classes: int) -> dict:
    """The state dict of DenseNet-121 with a num_classes head, random weights from seed 0 (built
    once per size: callers must not change its tensors)."""
    import torch

    from model import build_model
    torch.manual_seed(0)
    return build_model(num_classes, weights="none").state_dict()


def write_checkpoint(folder: Path, class_names=None, thresholds_npy=0.0, state=None,
                     **fields) -> Path:
    """folder/best.pt: random_state's network for class_names (default the 8 box classes), or
    state, as model.new_checkpoint writes it with fields (epoch, thresholds, resize, optimizer,
    ...); and folder/thresholds.npy: thresholds_npy for every class (a number or one per class;
    the default 0 makes every class active), None for no file. Returns the checkpoint's path."""
    import numpy as np

    from chexnet.constants import CLASS_NAMES
    from model import new_checkpoint, save_checkpoint
    names = list(CLASS_NAMES if class_names is None else class_names)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = new_checkpoint(random_state(len(names)) if state is None else state,
                                class_names=names, **fields)
    save_checkpoint(folder / "best.pt", checkpoint)
    if thresholds_npy is not None:
        values = np.broadcast_to(np.asarray(thresholds_npy, np.float32), (len(names),))
        np.save(folder / "thresholds.npy", np.array(values))
    return folder / "best.pt"


@pytest.fixture(scope="session")
def random_checkpoint():
    """write_checkpoint, for tests and fixtures of any scope; each passes its own folder."""
    return write_checkpoint


@pytest.fixture(scope="module")
def densenet():
    """torchvision's DenseNet-121 (its module names) with 8 outputs, random weights from seed 0,
    in eval mode; one per test module: a test that changes its mode puts it back."""
    import torch
    import torchvision
    torch.manual_seed(0)
    return torchvision.models.densenet121(num_classes=8).eval()


@pytest.fixture(scope="module")
def random_crops():
    """(2, 3, 96, 96) noise from seed 1: tiny, as DenseNet is convolutional up to its
    pooling (3x3 final features); the tests read the size from the tensor."""
    import torch
    return torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
