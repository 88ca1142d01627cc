"""The user's chain, as the original README runs it: the three CLIs from one working folder, on real
PNGs, with the positional arguments alone (train.py is only shortened and kept offline)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from chexnet.boxfile import read_box_file
from chexnet.constants import CLASS_NAMES

ROOT = Path(__file__).resolve().parent.parent
HEADER = re.compile(r"^\S+ \d+$")
BOX = re.compile(r"^(%s) \d+\.\d \d+\.\d \d+\.\d \d+\.\d$" % "|".join(CLASS_NAMES))


def run(cwd: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    result = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_three_clis_chain_from_one_folder(sample_dir, tmp_path):
    images = sample_dir / "images"
    test_names = (sample_dir / "test.txt").read_text().split()[:3]
    (tmp_path / "test.txt").write_text("\n".join(test_names) + "\n")

    run(tmp_path, "preprocessing.py", str(images), str(sample_dir / "Data_Entry_2017.csv"),
        str(sample_dir / "BBox_List_2017.csv"), str(sample_dir / "train.txt"), str(sample_dir / "valid.txt"),
        "prepared")
    # A trailing slash, as users type it; 1 epoch from random weights keeps the test short and offline.
    run(tmp_path, "train.py", "prepared/", "--epochs", "1", "--weights", "none", "--batch-size", "8")
    assert {"best.pt", "last.pt", "thresholds.npy", "metrics.jsonl"} <= {p.name for p in (tmp_path / "model").iterdir()}
    thresholds = np.load(tmp_path / "model" / "thresholds.npy", allow_pickle=False)
    assert thresholds.shape == (len(CLASS_NAMES),)

    run(tmp_path, "denseNet_localization.py", "test.txt", str(images))  # finds model/ by default

    lines = (tmp_path / "bounding_box.txt").read_text().splitlines()
    entries = read_box_file(tmp_path / "bounding_box.txt")
    assert [e.image_path for e in entries] == [os.path.join(str(images), n) for n in test_names]
    assert all(HEADER.match(line) or BOX.match(line) for line in lines), lines
    assert len(lines) == len(entries) + sum(len(e.boxes) for e in entries)
