"""README's "A study, end to end" on the bundled sample, with all 14 findings: official-format split,
preprocessing --classes 14, training, test-set AUROC with intervals, localization with boxes that take
no size from the truth (and sizes from training + validation refused where they hold no box of a class),
scores on the test split's box images, pictures, the bundle. The numbers mean nothing here;
every file must be produced and well-formed, and the 14 class names must travel from meta.json on."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from chexnet.boxfile import read_box_file
from chexnet.constants import ALL_FINDINGS, CLASS_NAMES
from chexnet.probs import read_probs_csv

ROOT = Path(__file__).resolve().parent.parent


def run(cwd: Path, script: str, *args, stream: str = "stdout") -> str:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    done = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{script}: {done.stderr[-3000:]}"
    return getattr(done, stream)


def test_study_end_to_end_with_14_findings(sample_dir, tmp_path):
    entry, bbox, images = sample_dir / "Data_Entry_2017.csv", sample_dir / "BBox_List_2017.csv", sample_dir / "images"
    # NIH's two lists, in their format, stand in for train_val_list.txt and test_list.txt.
    (tmp_path / "train_val_list.txt").write_text((sample_dir / "train.txt").read_text()
                                                 + (sample_dir / "valid.txt").read_text())
    (tmp_path / "test_list.txt").write_text((sample_dir / "test.txt").read_text())
    run(tmp_path, "tools/split.py", entry, "splits", "--official", "train_val_list.txt", "test_list.txt",
        "--valid-fraction", "0.3", "--seed", "0")
    assert run(tmp_path, "tools/split.py", entry, "--check", *(f"splits/{n}.txt" for n in ("train", "valid", "test")))
    run(tmp_path, "preprocessing.py", images, entry, bbox, "splits/train.txt", "splits/valid.txt", "prepared",
        "--classes", "14")
    assert json.loads((tmp_path / "prepared" / "meta.json").read_text())["class_names"] == list(ALL_FINDINGS)
    assert np.load(tmp_path / "prepared" / "train_y.npy").shape[1] == 14

    run(tmp_path, "train.py", "prepared", "--out", "model", "--epochs", "1", "--weights", "none",
        "--batch-size", "8", "--workers", "0")
    checkpoint = torch.load(tmp_path / "model" / "best.pt", weights_only=True)
    assert checkpoint["class_names"] == list(ALL_FINDINGS)
    assert np.load(tmp_path / "model" / "thresholds.npy").shape == (14,)
    assert (tmp_path / "model" / "roc_curves.png").is_file()

    # Sizes from the training and validation boxes: these lists hold no Effusion and no Pneumothorax box,
    # so there is no leak-free size for them: refused, nothing written (README: box sizes and the split).
    refused = subprocess.run([sys.executable, str(ROOT / "denseNet_localization.py"), "splits/test.txt", images,
                              "--model", "model/best.pt", "--bbox-list", bbox, "--size-images", "splits/train.txt",
                              "splits/valid.txt", "--out", "refused.txt"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 2 and "no box of Effusion, Pneumothorax" in refused.stderr
    assert not (tmp_path / "refused.txt").exists()
    # README's step 4: boxes that take no size from any table, the maps, the probabilities.
    err = run(tmp_path, "denseNet_localization.py", "splits/test.txt", images, "--model", "model/best.pt",
              "--method", "threshold", "--no-average-box", "--save-heatmaps", "heatmaps.npz",
              "--probs", "test_probs.csv", "--out", "bounding_box.txt", "--plots", "plots", "--truth", bbox,
              "--plot-images", "2", "--workers", "0", stream="stderr")
    assert "box sizes from none (--no-average-box" in err
    names, classes, probs = read_probs_csv(tmp_path / "test_probs.csv")
    assert names == (tmp_path / "splits" / "test.txt").read_text().split() and classes == list(ALL_FINDINGS)
    assert probs.shape == (len(names), 14)
    entries = read_box_file(tmp_path / "bounding_box.txt")
    assert len(entries) == len(names)
    assert {b.label for e in entries for b in e.boxes} <= set(CLASS_NAMES)  # boxes: the 8 box classes only
    assert (tmp_path / "plots" / "contact_sheet.png").is_file()

    out = run(tmp_path, "tools/auroc.py", "test_probs.csv", entry, "--model", "model/best.pt",
              "--bootstrap", "100", "--out", "auroc")
    assert "thresholds from model/thresholds.npy" in out
    rows = list(csv.DictReader((tmp_path / "auroc" / "auroc.csv").open()))
    assert [r["class"] for r in rows] == list(ALL_FINDINGS) + ["mean"]
    assert (tmp_path / "auroc" / "roc.png").is_file()

    out = run(tmp_path, "tools/evaluate.py", "bounding_box.txt", bbox, "--images", "splits/test.txt",
              "--heatmaps", "heatmaps.npz", "--out", "evaluation")
    assert "of them with truth boxes" in out
    report = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert report["images"]["evaluated"] == report["image_lists"]["splits/test.txt"]["box_images"]
    assert report["maps"]["heatmaps"] == "heatmaps.npz"

    run(tmp_path, "inference.py", "--build-bundle", "deepQ.zip", "--model", "model/best.pt")
    run(tmp_path, "inference.py", "--check-bundle", "deepQ.zip")
