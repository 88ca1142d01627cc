"""train.py end to end on a tiny preprocessed folder built from the real sample PNGs."""
import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from chexnet import preprocessed
import train
from chexnet.utils import InputError
from chexnet.images import load_stored
from model import load_checkpoint, model_from_checkpoint
from chexnet.nih import label_matrix, read_data_entry, read_image_list
from chexnet import train_data
from chexnet.constants import REPEATS

ROOT = Path(__file__).resolve().parent.parent
N_TRAIN, N_VALID = 6, 4


def _write_split(folder: Path, split: str, names: list[str], sample: Path, table: dict) -> None:
    x_name, y_name = preprocessed.array_names(split)
    images = np.stack([load_stored(sample / "images" / n) for n in names])  # uint8 (n, 256, 256)
    np.save(folder / x_name, images, allow_pickle=False)
    np.save(folder / y_name, label_matrix(names, table, split), allow_pickle=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """On this shared 2-core machine other jobs run too, and oversubscribed OpenMP threads spin:
    one thread made a DenseNet forward pass 20x faster here (0.7 s vs 14 s for 4 images)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The preprocessed.py contract with 8 train / 4 valid real images (no preprocessing.py needed)."""
    sample = ROOT / "sample"
    folder = tmp_path_factory.mktemp("prepared")
    table = read_data_entry(sample / "Data_Entry_2017.csv")
    train_names = read_image_list(sample / "train.txt")[:N_TRAIN]
    valid_names = read_image_list(sample / "valid.txt")[:N_VALID]
    _write_split(folder, "train", train_names, sample, table)
    _write_split(folder, "valid", valid_names, sample, table)
    meta = {"format": preprocessed.FORMAT, "version": preprocessed.VERSION, "class_names": list(train.CLASS_NAMES),
            "image_size": 256, "train_images": train_names, "valid_images": valid_names, "sources": {}}
    (folder / preprocessed.META).write_text(json.dumps(meta))
    return folder


def _args(data_dir: Path, out: Path, *extra: str):
    """Parsed exactly as the command line; runs in this process (one oneDNN warm-up, not three)."""
    return train.get_args_parser().parse_args(
        [str(data_dir) + "/", "--out", str(out), "--weights", "none", "--batch-size", "4", "--seed", "3",
         "--device", "cpu", "--keep-no-finding", *extra])


def _records(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


@pytest.fixture(scope="module")
def full_run(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full")
    train.main(_args(data_dir, out, "--epochs", "2", "--workers", "1"))
    return out


def test_outputs(full_run, data_dir):
    names = sorted(p.name for p in full_run.iterdir())
    assert names == ["best.pt", "last.pt", "metrics.jsonl", "roc_curves.png", "thresholds.npy",
                     "training_curves.png"]  # no temporaries left
    for name, shape in (("training_curves.png", (450, 1200, 3)), ("roc_curves.png", (700, 1400, 3))):
        picture = cv2.imread(str(full_run / name), cv2.IMREAD_COLOR)
        assert picture is not None and picture.shape == shape, name
    records = [json.loads(line) for line in (full_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert set(r) == {"epoch", "train_loss", "valid_loss", "auroc", "mean_auroc", "seconds",
                          "world_size"} and r["world_size"] == 1
        assert list(r["auroc"]) == list(train.CLASS_NAMES)
        defined = [a for a in r["auroc"].values() if a is not None]
        assert r["mean_auroc"] == (pytest.approx(np.mean(defined)) if defined else None)
    valid_y = np.load(data_dir / "valid_y.npy")
    undefined = [bool(c.sum() in (0, len(c))) for c in valid_y.T]
    assert any(undefined) and not all(undefined)  # the sample exercises both cases
    assert [a is None for a in records[0]["auroc"].values()] == undefined
    thresholds = np.load(full_run / "thresholds.npy", allow_pickle=False)
    assert thresholds.dtype == np.float32 and thresholds.shape == (8,)
    assert all(t == 0.5 for t, u in zip(thresholds, undefined) if u)
    best = load_checkpoint(full_run / "best.pt")
    assert best["thresholds"] == pytest.approx(thresholds.tolist())
    assert best["args"]["batch_size"] == 4 and best["epoch"] in (1, 2)
    model = model_from_checkpoint(best)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 8)


def test_resume_gives_the_same_metrics(full_run, data_dir, tmp_path):
    # the same run stopped after epoch 1 (workers 0 this time: results must not depend on them)
    train.main(_args(data_dir, tmp_path, "--epochs", "1", "--workers", "0", "--no-plots"))
    assert not list(tmp_path.glob("*.png"))
    with open(tmp_path / "metrics.jsonl", "a") as f:  # a line of an epoch that never checkpointed
        f.write(json.dumps({"epoch": 2, "stale": True}) + "\n")
    torch.manual_seed(12345)  # whatever the process did meanwhile, resume restores its RNG
    train.main(_args(data_dir, tmp_path, "--epochs", "2", "--workers", "0", "--resume"))
    assert _records(tmp_path) == _records(full_run)
    a, b = load_checkpoint(full_run / "last.pt"), load_checkpoint(tmp_path / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["optimizer"]["state"][0]["step"] == b["optimizer"]["state"][0]["step"]


def test_drop_no_finding(data_dir):
    data = preprocessed.load_prepared(data_dir)
    has_finding = np.asarray(data.train.labels).sum(axis=1) > 0
    assert 2 <= has_finding.sum() < N_TRAIN  # the sample has both kinds
    dropped, _ = train_data.make_datasets(data, keep_no_finding=False, seed=0)
    kept, _ = train_data.make_datasets(data, keep_no_finding=True, seed=0)
    assert dropped.rows.tolist() == np.flatnonzero(has_finding).tolist() and len(kept) == N_TRAIN
    image, label = dropped[(0, 1, 0)]
    assert image.dtype == torch.uint8 and image.shape == (224, 224) and label.sum() > 0


def test_errors(data_dir, tmp_path):
    with pytest.raises(InputError, match="last.pt: not found"):
        train.main(_args(data_dir, tmp_path, "--resume"))
    with pytest.raises(InputError, match="--batch-size 1"):
        train.main(_args(data_dir, tmp_path, "--batch-size", "1"))
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), str(tmp_path / "absent")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "meta.json" in result.stderr
    assert not any(tmp_path.iterdir())


def test_epoch_batches_use_every_item_and_never_a_batch_of_one():
    batches = train_data.epoch_batches(9, 4, seed=0, epoch=1)
    assert [len(b) for b in batches] == [4, 5]
    assert sorted(i for b in batches for i, _, _ in b) == list(range(9))
    assert batches == train_data.epoch_batches(9, 4, seed=0, epoch=1)
    assert batches != train_data.epoch_batches(9, 4, seed=0, epoch=2)


def test_repeats_pass_over_every_image_that_many_times_with_their_own_crops(tmp_path):
    """The original's step count: 4 passes per image per epoch, shuffled together, each a new crop."""
    batches = train_data.epoch_batches(5, 4, seed=0, epoch=3, repeats=4)
    keys = [k for b in batches for k in b]
    assert sorted(keys) == [(i, 3, r) for i in range(5) for r in range(4)]
    assert [len(b) for b in batches] == [4, 4, 4, 4, 4]
    npy = tmp_path / "x.npy"
    np.save(npy, np.random.default_rng(0).integers(0, 256, (5, 256, 256), dtype=np.uint8))
    crops = train_data.TrainingCrops(npy, np.zeros((5, 8), np.uint8), np.arange(5), True, seed=0)
    passes = [crops[(2, 3, r)][0] for r in range(4)]
    assert not all(torch.equal(passes[0], p) for p in passes[1:])
    assert torch.equal(passes[1], crops[(2, 3, 1)][0])  # a pass's crop is a function of its key


def test_loss_weights_formulas():
    labels = np.array([[1, 0], [0, 0], [0, 0], [1, 0]], dtype=np.float32)  # class 0: P=2 N=2; class 1: P=0 N=4
    w_pos, w_neg = train_data.loss_weights(labels, "chexnet")
    assert w_pos.tolist() == [0.5, 1.0] and w_neg.tolist() == [0.5, 0.0]
    w_pos, w_neg = train_data.loss_weights(labels, "wang")
    assert w_pos.tolist() == [2.0, 4.0] and w_neg.tolist() == [2.0, 1.0]
    assert train_data.loss_weights(labels, "none") is None
    logits, targets = torch.zeros(4, 2), torch.from_numpy(labels)
    assert train_data.bce_loss(logits, targets, None).item() == pytest.approx(np.log(2))
    weighted = train_data.bce_loss(logits, targets, train_data.loss_weights(labels, "wang")).item()
    assert weighted == pytest.approx(np.log(2) * (2 + 2 + 2 + 2 + 1 + 1 + 1 + 1) / 8)


def test_cpu_runs_in_fp32_without_scaler():
    autocast, scaler, name = train.amp_setup(torch.device("cpu"), "auto")
    assert name == "fp32" and not scaler.is_enabled()
    with autocast():
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32


def test_cpu_bf16_only_when_asked_and_fp16_refused():
    """--amp bf16 on the CPU autocasts a matmul to bf16 (AMX/AVX-512 make it about twice as
    fast); fp16 has no CPU path in train.py and is a clear error, not a silent fp32 run."""
    cpu = torch.device("cpu")
    autocast, scaler, name = train.amp_setup(cpu, "bf16")
    assert name == "bfloat16" and not scaler.is_enabled()
    with autocast():
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.bfloat16
    assert train.amp_setup(cpu, "off")[2] == "fp32"
    with pytest.raises(InputError, match="--amp fp16: needs CUDA"):
        train.amp_setup(cpu, "fp16")


def test_cpu_bf16_training_and_resume_notices_a_change_of_precision(full_run, data_dir,
                                                                     tmp_path, capsys):
    with pytest.raises(InputError, match="--amp fp16: needs CUDA"):  # before any work
        train.main(_args(data_dir, tmp_path, "--amp", "fp16"))
    assert not any(tmp_path.iterdir())
    train.main(_args(data_dir, tmp_path, "--epochs", "1", "--workers", "0", "--no-plots",
                     "--amp", "bf16"))
    assert "precision bfloat16" in capsys.readouterr().out
    bf16, fp32 = _records(tmp_path)[0], _records(full_run)[0]  # the same run but for --amp
    assert np.isfinite(bf16["train_loss"]) and bf16["train_loss"] != fp32["train_loss"]
    train.main(_args(data_dir, tmp_path, "--epochs", "2", "--workers", "0", "--no-plots",
                     "--resume"))  # --amp auto: fp32 on the CPU
    warnings = [l for l in capsys.readouterr().err.splitlines() if l.startswith("warning:")]
    assert warnings == ["warning: --resume with amp='auto', the run used 'bf16'; results will "
                        "differ from an uninterrupted run"]


def test_validation_stays_fp32_inside_a_mixed_precision_context(data_dir):
    """validate() computes AUROC and thresholds from fp32 probabilities even when called under a
    bf16 autocast (as a mixed-precision training step runs): equal to a plain fp32 forward."""
    torch.manual_seed(0)
    model = train.build_model(len(train.CLASS_NAMES), "none").eval()
    data = preprocessed.load_prepared(data_dir)
    crops = torch.from_numpy(np.ascontiguousarray(data.valid.images[:, 16:240, 16:240]))
    targets = torch.from_numpy(np.asarray(data.valid.labels, dtype=np.float32))
    loader = [(crops[:2], targets[:2]), (crops[2:], targets[2:])]
    device = torch.device("cpu")
    with torch.no_grad():
        x = train.to_input(crops, device)
        plain = torch.sigmoid(model(x)).numpy()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = torch.sigmoid(model(x).float()).numpy()
    assert np.abs(mixed - plain).max() > 1e-4  # bf16 really changes them: the test can tell
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = train.validate(model, loader, device)
    assert result["probs"].dtype == np.float32
    np.testing.assert_allclose(result["probs"], plain, rtol=0, atol=1e-6)


def test_learning_rate_schedules():
    rate = train_data.learning_rate
    assert [rate(1e-3, "constant", s, 100, 0) for s in (0, 50, 99)] == [1e-3] * 3  # the original
    assert [rate(1.0, "constant", s, 100, 4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cosine = [rate(1.0, "cosine", s, 100, 10) for s in range(100)]
    assert cosine[9] == 1.0 and cosine[10] == 1.0  # warm-up ends at the base rate
    assert all(a >= b for a, b in zip(cosine[10:], cosine[11:]))  # then it only falls
    assert cosine[55] == pytest.approx(0.5) and cosine[99] == pytest.approx(0.0, abs=1e-3)


def test_cosine_schedule_reaches_the_optimizer(data_dir, tmp_path, capsys):
    train.main(_args(data_dir, tmp_path, "--epochs", "2", "--workers", "0", "--no-plots",
                     "--lr", "0.01", "--lr-schedule", "cosine", "--warmup-epochs", "0.5"))
    last = load_checkpoint(tmp_path / "last.pt")
    steps = len(train_data.epoch_batches(N_TRAIN, 4, 3, 1, REPEATS))  # --keep-no-finding: all
    expected = train_data.learning_rate(0.01, "cosine", 2 * steps - 1, 2 * steps, round(steps / 2))
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(expected)
    assert 0 < expected < 0.01 / 10 and last["args"]["lr_schedule"] == "cosine"
    capsys.readouterr()
    train.main(_args(data_dir, tmp_path, "--epochs", "3", "--workers", "0", "--no-plots",
                     "--lr", "0.01", "--lr-schedule", "cosine", "--warmup-epochs", "0.5",
                     "--resume"))  # the cosine follows --epochs: a longer run is another curve
    warnings = [l for l in capsys.readouterr().err.splitlines() if l.startswith("warning:")]
    assert warnings == ["warning: --resume with epochs=3, the run used 2; results will differ "
                        "from an uninterrupted run"]
    with pytest.raises(InputError, match="--warmup-epochs -1"):
        train.main(_args(data_dir, tmp_path, "--warmup-epochs", "-1"))
