"""The probabilities file of denseNet_localization.py --probs, read by tools/auroc.py.

    image,<class 1>,...,<class C>
    00000003_000.png,0.123456,...

One row per image of the list, in list order, the image's name as the list gives it; every class
of the model, '%.6f'. The class names come from the checkpoint, so the file says what it holds.

Peers' files are read too, in the field's most common layout (jrzech/reproduce-chexnet's
pretrained/preds.csv):

    Image Index,prob_Atelectasis,...,prob_Hernia

a first column 'Image Index', then the class columns 'prob_<class>' in any order; other columns
(a peer's truth columns, say) are ignored with a note. Class names are matched as the label table
spells them, with 'Pleural Thickening' and 'Infiltrate' read as aliases.
"""
from __future__ import annotations

import csv
import io
import os
import sys

import numpy as np

from chexnet.constants import ALL_FINDINGS, BOX_TABLE_ALIASES
from chexnet.utils import InputError, write_text_atomic

FIRST_COLUMN = "image"
PEER_FIRST_COLUMN = "Image Index"  # the label table's column name, as peers write it
PEER_PREFIX = "prob_"
# Other spellings of the label table's names: the box table's, and with a space for '_'.
CLASS_ALIASES = {**BOX_TABLE_ALIASES, "Pleural Thickening": "Pleural_Thickening"}


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


def canonical_class(name: str) -> str:
    """A class name as the label table spells it ('Infiltrate' -> 'Infiltration')."""
    return CLASS_ALIASES.get(name.strip(), name.strip())


def class_columns(path, header: list[str]) -> tuple[list[int], list[str]]:
    """(column index of each class, class names as the label table spells them) of a header."""
    if header[:1] == [FIRST_COLUMN] and len(header) >= 2:
        return list(range(1, len(header))), [canonical_class(h) for h in header[1:]]
    if header[:1] != [PEER_FIRST_COLUMN]:
        raise InputError(f"{path}: expected a header '{FIRST_COLUMN},<class names>' or "
                         f"'{PEER_FIRST_COLUMN},{PEER_PREFIX}<class>,...'")
    columns, names, ignored = [], [], []
    for i, cell in enumerate(header[1:], start=1):
        if not cell.startswith(PEER_PREFIX):
            ignored.append(cell)
            continue
        name = canonical_class(cell[len(PEER_PREFIX):])
        if name not in ALL_FINDINGS:
            raise InputError(f"{path}: column {cell!r}: expected {PEER_PREFIX}<class> with a class "
                             f"of the label table ({', '.join(ALL_FINDINGS)})")
        columns.append(i)
        names.append(name)
    if not columns:
        raise InputError(f"{path}: no '{PEER_PREFIX}<class>' column after '{PEER_FIRST_COLUMN}'")
    if ignored:
        print(f"note: {path}: ignored column(s) {', '.join(ignored)} (not {PEER_PREFIX}<class>)",
              file=sys.stderr)
    return columns, names


def read_probs_csv(path: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
    """(image names, class names, float64 (N, C) probabilities); bad rows name the file and row.
    Ours (image,<classes>) or a peer's (Image Index,prob_<class>,...), see the module's notes."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: cannot read as a CSV file ({err})") from None
    columns, class_names = class_columns(path, rows[0] if rows else [])
    repeated = sorted({c for c in class_names if class_names.count(c) > 1})
    if repeated:
        raise InputError(f"{path}: class {repeated[0]} has two columns")
    names, values = [], []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(rows[0]):
            raise InputError(f"{path}: row {number}: {len(row)} columns, "
                             f"expected {len(rows[0])}")
        try:
            probs = [float(row[i]) for i in columns]
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
