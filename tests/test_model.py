"""model.py: logits shape, checkpoint round trips (ours and the original's .pkl), refusal of
checkpoints that would run code, and clear errors for checkpoints of another shape."""
import os
import pickle

import pytest
import torch

import model as M
from chexnet.utils import InputError
from chexnet.constants import ALL_FINDINGS, CLASS_NAMES


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Oversubscribed OpenMP threads spin on this shared 2-core machine: one thread is far faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return M.build_model(weights="none").eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def _ckpt(model, **extra):
    return {"format": M.FORMAT, "version": M.VERSION, "arch": M.ARCH, "model": model.state_dict(),
            "class_names": list(CLASS_NAMES), "input_size": 224, "epoch": 3, "optimizer": None,
            "metrics": {"mean_auroc": 0.5}, "args": {"lr": 2e-4}, "thresholds": [0.5] * 8, **extra}


def test_logits_shape_and_torchvision_names(net, x):
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, 8)
    assert not ((out >= 0) & (out <= 1)).all()  # logits, not probabilities (no sigmoid head)
    names = dict(net.named_modules())
    assert "features.denseblock4.denselayer16.conv2" in names and "features.norm5" in names
    assert M.build_model(num_classes=3, weights="none").classifier.out_features == 3


def test_checkpoint_round_trip(net, x, tmp_path):
    path = tmp_path / "c.pt"
    M.save_checkpoint(path, _ckpt(net))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind
    ckpt = M.load_checkpoint(path)
    assert ckpt["epoch"] == 3 and ckpt["thresholds"] == [0.5] * 8
    loaded = M.model_from_checkpoint(ckpt)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def _legacy_state(model):
    """Our keys in the original project's naming: DataParallel(DenseNet121) of PyTorch 0.2."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue  # PyTorch 0.2 BatchNorm had no counter
        for part in ("norm1", "norm2", "relu1", "relu2", "conv1", "conv2"):
            key = key.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        key = key.replace("classifier.", "classifier.0.")
        state["module.densenet121." + key] = value
    return state


def test_legacy_pkl_round_trip(net, x, tmp_path):
    state = _legacy_state(net)
    assert "module.densenet121.features.denseblock1.denselayer1.norm.1.weight" in state
    assert "module.densenet121.features.denseblock4.denselayer16.conv.2.weight" in state
    assert "module.densenet121.classifier.0.weight" in state
    path = tmp_path / "DenseNet121_aug4_pretrain_noWeight_2_0.80.pkl"
    torch.save(state, path, _use_new_zipfile_serialization=False)  # the pre-1.6 file layout
    ckpt = M.load_checkpoint(path)
    assert ckpt["class_names"] == list(CLASS_NAMES) and ckpt["epoch"] is None and ckpt["thresholds"] is None
    loaded = M.model_from_checkpoint(ckpt)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_prefix_helper_strips_compile_and_parallel():
    keys = M.normalize_keys({"module._orig_mod.features.conv0.weight": 1, "_orig_mod.classifier.bias": 2})
    assert keys == {"features.conv0.weight": 1, "classifier.bias": 2}


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": _RunsCode(marker)}, path)
    with pytest.raises(InputError, match="evil.pt"):
        M.load_checkpoint(path)
    assert not marker.exists()
    plain = tmp_path / "evil.pkl"  # a bare pickle (not a torch zip file) too
    plain.write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(InputError, match="evil.pkl"):
        M.load_checkpoint(plain)
    assert not marker.exists()


def test_wrong_classes_or_arch_is_input_error(tmp_path):
    other = M.build_model(num_classes=14, weights="none")
    ckpt = _ckpt(other, class_names=[f"c{i}" for i in range(14)])
    with pytest.raises(InputError, match="14 classes"):
        M.model_from_checkpoint(ckpt)
    ckpt = _ckpt(other)  # 8 names but a 14-output head
    with pytest.raises(InputError, match="do not fit"):
        M.model_from_checkpoint(ckpt)
    with pytest.raises(InputError, match="resnet50"):
        M.model_from_checkpoint(_ckpt(other, arch="resnet50"))
    path = tmp_path / "bare14.pt"
    torch.save(other.state_dict(), path)  # 14 outputs: CheXNet's classes, in ChestX-ray14 order
    assert M.load_checkpoint(path)["class_names"] == list(ALL_FINDINGS)
    torch.save(M.build_model(num_classes=5, weights="none").state_dict(), path)
    with pytest.raises(InputError, match="5 outputs"):
        M.load_checkpoint(path)


def test_unreadable_or_missing_file(tmp_path):
    bad = tmp_path / "half.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputError, match="half.pt"):
        M.load_checkpoint(bad)
    with pytest.raises(InputError, match="not found"):
        M.load_checkpoint(tmp_path / "absent.pt")


def test_weights_path_loads_features(net, tmp_path):
    path = tmp_path / "features.pth"
    torch.save(_legacy_state(net), path)
    fresh = M.build_model(weights=str(path))
    assert torch.equal(fresh.features.conv0.weight, net.features.conv0.weight)
    assert torch.equal(fresh.features.denseblock4.denselayer16.conv2.weight,
                       net.features.denseblock4.denselayer16.conv2.weight)


def test_keep_head_loads_the_classifier_of_a_checkpoint_of_the_same_classes(net, tmp_path):
    """train.py --keep-head (a fine-tune, e.g. 224 -> 448): the whole model, head included;
    without it the head starts afresh; a checkpoint of other classes or no PATH is refused."""
    path = tmp_path / "best.pt"
    M.save_checkpoint(path, _ckpt(net))
    torch.manual_seed(5)  # a head drawn afresh differs from the checkpoint's
    assert not torch.equal(M.build_model(weights=str(path)).classifier.weight,
                           net.classifier.weight)
    kept = M.build_model(weights=str(path), keep_head=True)
    assert all(torch.equal(a, b) for a, b in zip(kept.state_dict().values(),
                                                 net.state_dict().values()))
    with pytest.raises(InputError, match="best.pt: weights do not fit DenseNet-121 with 14"):
        M.build_model(14, weights=str(path), keep_head=True)
    for name in ("imagenet", "none"):
        with pytest.raises(InputError, match="--keep-head needs --weights PATH"):
            M.build_model(weights=name, keep_head=True)


def test_imagenet_unavailable_warns_once_and_continues(monkeypatch, capsys):
    def offline(self, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(type(M.DenseNet121_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    model = M.build_model(weights="imagenet")
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "RANDOM" in err and "--weights" in err
    assert model.classifier.out_features == 8
