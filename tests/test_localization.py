"""localize.py and denseNet_localization.py on real sample PNGs with a random-init DenseNet-121."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from chexnet import localize
from model import build_model
from chexnet.boxfile import read_box_file
from chexnet.utils import InputError
from chexnet.constants import AVERAGE_BOXES, CLASS_NAMES
from chexnet import calibrated, model_dir

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["00001933_000.png", "00008386_000.png", "00013125_000.png"]
HEADER = re.compile(r"^\S+ \d+$")
BOX_LINE = re.compile(r"^\w+ -?\d+\.\d -?\d+\.\d \d+\.\d \d+\.\d$")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_model(len(CLASS_NAMES), weights="none").eval()


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory, random_checkpoint) -> Path:
    """model/best.pt (net's weights) + model/thresholds.npy (0: every class active), the layout
    train.py writes."""
    return random_checkpoint(tmp_path_factory.mktemp("run") / "model", epoch=1,
                             thresholds=[0.5] * 8, resize="area").parent


def _paths(sample_dir, names=NAMES):
    return [os.path.join(str(sample_dir / "images"), n) for n in names]


def test_iter_localize_order_heatmaps_and_box_order(net, sample_dir):
    paths = _paths(sample_dir)
    with torch.no_grad():  # the caller's no_grad must not break Grad-CAM
        probs = torch.sigmoid(net(_batch(paths))).numpy()
    # Per class, the middle probability: each class active on some images and not on others.
    thresholds = np.sort(probs, axis=0)[1] - 1e-6
    table = np.array(AVERAGE_BOXES)
    results = list(localize.iter_localize(net, paths, thresholds, table, torch.device("cpu"),
                                          batch_size=2))
    assert [r.image_path for r in results] == paths
    for r, p in zip(results, probs):
        assert np.allclose(r.probs, p, atol=1e-5)
        active = [k for k in range(8) if r.probs[k] > thresholds[k]]
        assert sorted(r.heatmaps) == active and len(active) >= 1
        for heatmap in r.heatmaps.values():
            assert heatmap.shape == (224, 224) and heatmap.dtype == np.float32
            assert heatmap.min() >= 0 and heatmap.max() <= 1
        labels = [b.label for b in r.boxes]
        # Class order; each active class opens with its average box, the original's order.
        assert labels == sorted(labels, key=CLASS_NAMES.index)
        assert sorted(set(labels), key=CLASS_NAMES.index) == [CLASS_NAMES[k] for k in active]
        for k in active:
            first = next(b for b in r.boxes if b.label == CLASS_NAMES[k])
            assert (first.x, first.y, first.w, first.h) == AVERAGE_BOXES[k]
    # One batch of 3 gives the same as batches of 2 + 1.
    again = list(localize.iter_localize(net, paths, thresholds, table, torch.device("cpu"),
                                        batch_size=3))
    for a, b in zip(results, again):
        assert a.boxes == b.boxes and sorted(a.heatmaps) == sorted(b.heatmaps)
        assert all(np.abs(a.heatmaps[k] - b.heatmaps[k]).max() < 1e-4 for k in a.heatmaps)
    assert not net.features.denseblock4.denselayer16.conv2._forward_hooks  # hook gone after the run


def _batch(paths):
    from chexnet import images
    crops = np.stack([images.center_crop(images.load_stored(p)) for p in paths])
    return images.normalize(torch.from_numpy(crops))


def test_undecodable_image_is_one_line_error(net, sample_dir, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    paths = [str(bad)] + _paths(sample_dir, NAMES[:1])  # fails before any forward pass
    for workers in (0, 1):
        with pytest.raises(InputError, match=r"broken.png: cannot decode") as err:
            list(localize.iter_localize(net, paths, np.full(8, 2.0), np.array(AVERAGE_BOXES),
                                        torch.device("cpu"), batch_size=1, workers=workers))
        assert "\n" not in str(err.value)


def test_thresholds_resolution(tmp_path):
    ckpt_path = tmp_path / "best.pt"
    with pytest.raises(InputError, match="no thresholds"):
        model_dir.resolve_thresholds(None, ckpt_path, {"thresholds": None})
    values, source = model_dir.resolve_thresholds(None, ckpt_path, {"thresholds": [0.25] * 8})
    assert values.tolist() == [0.25] * 8 and "best.pt" in source
    np.save(tmp_path / "thresholds.npy", np.arange(8, dtype=np.float32) / 10)
    values, source = model_dir.resolve_thresholds(None, ckpt_path, {"thresholds": [0.25] * 8})
    assert np.allclose(values, np.arange(8) / 10) and source.endswith("thresholds.npy")
    # as applied
    assert model_dir.resolve_thresholds("0.3", ckpt_path, {})[0].tolist() == [np.float32(0.3)] * 8
    np.save(tmp_path / "seven.npy", np.zeros(7))
    with pytest.raises(InputError, match="expected 8 thresholds"):
        model_dir.resolve_thresholds(str(tmp_path / "seven.npy"), ckpt_path, {})
    with pytest.raises(InputError, match="expected 8 thresholds"):
        model_dir.resolve_thresholds(None, tmp_path / "elsewhere" / "best.pt",
                                     {"thresholds": [0.5] * 3})
    with pytest.raises(InputError, match="not a number"):
        model_dir.resolve_thresholds("nothere.npy", ckpt_path, {})


def test_box_sizes_resolution(sample_dir, tmp_path):
    ckpt_path = tmp_path / "best.pt"
    table, source = calibrated.resolve_box_sizes(None, ckpt_path)
    assert np.array_equal(table, np.array(AVERAGE_BOXES)) and "original" in source
    sizes = np.array(AVERAGE_BOXES) + 1.0
    calibrated.write_box_sizes(tmp_path / "box_sizes.json", sizes)
    table, source = calibrated.resolve_box_sizes(None, ckpt_path)
    assert np.allclose(table, sizes) and source.endswith("box_sizes.json")
    # The box table wins over box_sizes.json. The sample's table has one Atelectasis box, one
    # 'Infiltrate' box (= Infiltration), three Cardiomegaly boxes, and no Effusion or Pneumothorax
    # box.
    sample_names = {p.name for p in (sample_dir / "images").iterdir()}
    full = (sample_dir / "BBox_List_2017.csv").read_text().splitlines()
    partial = tmp_path / "BBox_List_2017.csv"  # the sample images' 12 rows of the complete table
    rows = [r for r in full[1:] if r.split(",")[0] in sample_names]
    partial.write_text("\n".join([full[0]] + rows) + "\n")
    table, source = calibrated.resolve_box_sizes(partial, ckpt_path)
    assert np.allclose(table[0], [731.428571428571, 753.100529100529, 119.195767195767,
                                  93.189417989418])
    assert np.allclose(table[3], [555.885714285714, 235.140740740741, 206.967195767196,
                                  313.159788359788])
    assert np.isclose(table[1, 2], (456.194708994709 + 662.078306878307 + 553.718518518519) / 3)
    assert np.array_equal(table[[2, 7]], np.array(AVERAGE_BOXES)[[2, 7]])
    assert "12 boxes" in source and "Effusion, Pneumothorax" in source
    (tmp_path / "box_sizes.json").write_text(json.dumps({"class_names": ["A"],
                                                         "boxes": [[1, 2, 3, 4]]}))
    with pytest.raises(InputError, match="class_names"):
        calibrated.resolve_box_sizes(None, ckpt_path)


def _cli(args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "denseNet_localization.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_cli_end_to_end_exact_format(checkpoint_dir, sample_dir, tmp_path):
    """From the folder that holds model/: defaults find best.pt and thresholds.npy, write
    ./bounding_box.txt."""
    run_dir = checkpoint_dir.parent
    test_txt = tmp_path / "test.txt"
    test_txt.write_text("\r\n".join(NAMES) + "\r\n\r\n")  # CRLF and a blank line are tolerated
    images_dir = str(sample_dir / "images")
    done = _cli([str(test_txt), images_dir, "--workers", "1", "--batch-size", "2"], cwd=run_dir)
    assert done.returncode == 0, done.stderr
    assert "wrote bounding_box.txt: 3 images, 24 active classes" in done.stdout
    out = run_dir / "bounding_box.txt"
    lines = out.read_text().splitlines()
    entries = read_box_file(out)
    assert [e.image_path for e in entries] == [os.path.join(images_dir, n) for n in NAMES]
    i = 0
    for entry in entries:
        assert HEADER.match(lines[i]) and lines[i] == f"{entry.image_path} {len(entry.boxes)}"
        for box in entry.boxes:
            i += 1
            assert BOX_LINE.match(lines[i]), lines[i]
            assert box.label in CLASS_NAMES
            assert 0 <= box.x and box.x + box.w <= 1024 + 1e-6
            assert 0 <= box.y and box.y + box.h <= 1024 + 1e-6
        i += 1
        # Threshold 0: all 8 classes active, each opening with the original's average box.
        firsts = [next(b for b in entry.boxes if b.label == name) for name in CLASS_NAMES]
        assert [b.line() for b in firsts] == [
            f"{name} {x:.1f} {y:.1f} {w:.1f} {h:.1f}"
            for name, (x, y, w, h) in zip(CLASS_NAMES, AVERAGE_BOXES)]
    assert i == len(lines)


def test_cli_missing_image_fails_before_work(checkpoint_dir, sample_dir, tmp_path):
    test_txt = tmp_path / "test.txt"
    test_txt.write_text(f"{NAMES[0]}\nmissing_000.png\n")
    out = tmp_path / "boxes.txt"
    done = _cli([str(test_txt), str(sample_dir / "images"),
                 "--model", str(checkpoint_dir / "best.pt"), "--out", str(out)], cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {sample_dir / 'images' / 'missing_000.png'}: image not found "
        f"(listed in {test_txt} entry 2)"]
    assert not out.exists() and not list(tmp_path.glob(".boxes.txt*"))


def test_main_refuses_missing_model_and_bad_thresholds(checkpoint_dir, sample_dir, tmp_path,
                                                       monkeypatch):
    import denseNet_localization as cli
    monkeypatch.chdir(tmp_path)  # no model/ here
    test_txt = tmp_path / "test.txt"
    test_txt.write_text(f"{NAMES[0]}\n")
    base = [str(test_txt), str(sample_dir / "images")]
    with pytest.raises(InputError, match="model/best.pt: checkpoint file not found"):
        cli.main(cli.get_args_parser().parse_args(base))
    np.save(tmp_path / "t.npy", np.zeros(5))
    with pytest.raises(InputError, match="expected 8 thresholds"):
        cli.main(cli.get_args_parser().parse_args(
            base + ["--model", str(checkpoint_dir / "best.pt"),
                    "--thresholds", str(tmp_path / "t.npy")]))
    with pytest.raises(InputError, match="unknown Grad-CAM layer .features.nope."):
        cli.main(cli.get_args_parser().parse_args(
            base + ["--model", str(checkpoint_dir / "best.pt"), "--layer", "features.nope"]))
    assert not (tmp_path / "bounding_box.txt").exists()
