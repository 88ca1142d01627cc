"""The probabilities file of denseNet_localization.py --probs, read by tools/auroc.py.

    image,<class 1>,...,<class C>
    00000003_000.png,0.123456,...

One row per image of the list, in list order, the image's name as the list gives it; every class
of the model, '%.6f'. The class names come from the checkpoint, so the file says what it holds.
"""
from __future__ import annotations

import csv
import io
import os

import numpy as np

from chexnet.utils import InputError, write_text_atomic

FIRST_COLUMN = "image"


def write_probs_csv(path: str | os.PathLike, names: list[str], class_names, probs) -> None:
    """names (N,), class_names (C,), probs float (N, C) -> the CSV, written atomically."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(names), len(class_names)):
        raise ValueError(f"probabilities {probs.shape} for {len(names)} images, "
                         f"{len(class_names)} classes")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([FIRST_COLUMN, *class_names])
    for name, row in zip(names, probs):
        writer.writerow([name, *(f"{p:.6f}" for p in row)])
    write_text_atomic(path, buf.getvalue())


def read_probs_csv(path: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
    """(image names, class names, float64 (N, C) probabilities); bad rows name the file and row."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: cannot read as a CSV file ({err})") from None
    if not rows or rows[0][:1] != [FIRST_COLUMN] or len(rows[0]) < 2:
        raise InputError(f"{path}: expected a header '{FIRST_COLUMN},<class names>'")
    class_names, names, values = rows[0][1:], [], []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(class_names) + 1:
            raise InputError(f"{path}: row {number}: {len(row)} columns, "
                             f"expected {len(class_names) + 1}")
        try:
            probs = [float(cell) for cell in row[1:]]
        except ValueError:
            raise InputError(f"{path}: row {number}: probabilities must be numbers") from None
        if not all(0.0 <= p <= 1.0 for p in probs):
            raise InputError(f"{path}: row {number}: probabilities must lie in [0, 1]")
        names.append(row[0])
        values.append(probs)
    if not names:
        raise InputError(f"{path}: no image rows")
    if len(set(names)) != len(names):
        raise InputError(f"{path}: an image is listed twice")
    return names, class_names, np.asarray(values, dtype=np.float64)
