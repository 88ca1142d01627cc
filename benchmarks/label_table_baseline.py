"""Write a baseline's probabilities that come from the label table alone, no pixel seen.

Each finding's rate among training images of the same view (PA/AP), sex and age decade. A
model compared with it shows what the
image adds (tools/auroc.py --compare); the view is a known shortcut of ChestX-ray14 (AP films
are taken of patients too ill to stand).

    python3 benchmarks/label_table_baseline.py TEST_PROBS_CSV DATA_ENTRY OUT_CSV [--smoothing 20]

The test images are those of TEST_PROBS_CSV (a model's probabilities, ours or a peer's); the
baseline learns from every other image of the label table whose patient has no test image, so
no patient is on both sides. Rates are smoothed toward the class's overall rate with --smoothing
pseudo-images per cell. OUT_CSV is in denseNet_localization.py --probs format (image,<classes>).
"""
from __future__ import annotations

import argparse
import csv
import gzip
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root: chexnet/

from chexnet.probs import read_probs_csv, write_probs_csv  # noqa: E402
from chexnet.utils import InputError, run_cli  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("test_probs", type=str, help="a probabilities CSV: its images are the test set")
    p.add_argument("data_entry", type=str, help="label table Data_Entry_2017.csv (or .csv.gz)")
    p.add_argument("out_csv", type=str, help="the baseline's probabilities CSV to write")
    p.add_argument("--smoothing", type=float, default=20.0,
                   help="pseudo-images at the overall rate added to each cell (default: 20)")
    return p


COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position", "Patient Gender",
           "Patient Age")


def read_table(path: str) -> tuple[list[list[str]], list[int]]:
    """(the label table's rows after the header, the index of each of COLUMNS)."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: cannot read as a CSV file ({err})") from None
    missing = [c for c in COLUMNS if not rows or c not in rows[0]]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    return rows[1:], [rows[0].index(c) for c in COLUMNS]


def cell_of(row: list[str], cols: list[int]) -> tuple[str, str, int]:
    view, sex, age = (row[i] for i in cols[3:])
    return view, sex, min(int(age) // 10, 9)


def rate(cell: np.ndarray | None, overall: np.ndarray, k: float) -> np.ndarray:
    """A cell's smoothed rates; a cell no training image fell in gets the overall rates."""
    if cell is None or cell[-1] + k == 0:
        return overall
    return (cell[:-1] + k * overall) / (cell[-1] + k)


def main(args: argparse.Namespace) -> None:
    if args.smoothing < 0:
        raise InputError(f"--smoothing must be >= 0, got {args.smoothing}")
    names, classes, _ = read_probs_csv(args.test_probs)
    rows, cols = read_table(args.data_entry)
    by_name = {row[cols[0]]: row for row in rows}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise InputError(f"{args.test_probs}: {len(missing)} image(s) not in {args.data_entry}, "
                         f"e.g. {missing[0]}")
    test_patients = {by_name[n][cols[2]] for n in names}
    counts: dict[tuple, np.ndarray] = defaultdict(lambda: np.zeros(len(classes) + 1))
    for row in rows:
        if row[cols[2]] in test_patients:
            continue
        found = row[cols[1]].split("|")
        counts[cell_of(row, cols)] += [*(c in found for c in classes), 1]
    if not counts:
        raise InputError(f"{args.data_entry}: no image outside the patients of "
                         f"{args.test_probs} to learn from")
    total = sum(counts.values())
    overall = total[:-1] / total[-1]
    k = args.smoothing
    probs = [rate(counts.get(cell_of(by_name[n], cols)), overall, k) for n in names]
    write_probs_csv(args.out_csv, names, classes, np.asarray(probs))
    print(f"wrote {args.out_csv}: {len(names)} test images, learnt from {int(total[-1])} images "
          f"of {len(counts)} view x sex x age-decade cells")


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
