"""Readers for the NIH tables and the image lists, with errors that name the file and row.

The CSVs are read with the standard library. Both the 2017 label table (a trailing empty
column) and its 2020 revision work, as does the box table's split header `Bbox [x,y,w,h],,,`.
"""
from __future__ import annotations

import csv
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chexnet.utils import InputError
from chexnet.constants import ALL_FINDINGS, BOX_TABLE_ALIASES, CLASS_NAMES, CLASS_SETS, NO_FINDING


@dataclass(frozen=True)
class LabelRow:
    labels: tuple[str, ...]  # findings of the image; () for 'No Finding'
    patient_id: str


@dataclass(frozen=True)
class TruthBox:
    image: str
    label: str  # in CLASS_NAMES spelling ('Infiltrate' already mapped to 'Infiltration')
    x: float
    y: float
    w: float
    h: float


def read_image_list_lines(path: str | os.PathLike) -> list[tuple[int, str]]:
    """[(line number, image name)] of a list file, one name a line (numbered from 1).

    Blank lines, CRLF, a byte-order mark and labels after the name are tolerated; an empty
    list is an error.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file (expected one image name a line)") from None
    entries = [(number, line.split()[0]) for number, line in enumerate(text.splitlines(), start=1)
               if line.strip()]
    if not entries:
        raise InputError(f"{path}: the list is empty")
    return entries


def read_image_list(path: str | os.PathLike) -> list[str]:
    """One image name a line; blank lines, CRLF and labels after the name are tolerated."""
    return [name for _, name in read_image_list_lines(path)]


def _read_csv(path: str | os.PathLike) -> list[list[str]]:
    """All rows of a CSV file, plain or gzip-compressed (.gz, as the NIH tables are often kept)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, EOFError) as err:  # gzip: BadGzipFile is an OSError; a truncated one, EOFError
        raise InputError(f"{path}: cannot read ({getattr(err, 'strerror', None) or err})") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: not a readable CSV file ({err})") from None
    if not rows:
        raise InputError(f"{path}: empty file")
    return rows


def _require_columns(path, header: list[str], wanted: tuple[str, ...]) -> list[int]:
    missing = [name for name in wanted if name not in header]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}; "
                         f"header is {','.join(header)}")
    return [header.index(name) for name in wanted]


def read_data_entry(path: str | os.PathLike) -> dict[str, LabelRow]:
    """Data_Entry_2017.csv -> {image name: LabelRow}. Unknown finding names are errors."""
    rows = _read_csv(path)
    i_name, i_labels, i_patient = _require_columns(path, rows[0], ("Image Index", "Finding Labels",
                                                                   "Patient ID"))
    table: dict[str, LabelRow] = {}
    for row_number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(i_name, i_labels, i_patient):
            raise InputError(f"{path}: row {row_number}: too few columns")
        labels = tuple(l for l in row[i_labels].split("|") if l and l != NO_FINDING)
        unknown = [l for l in labels if l not in ALL_FINDINGS]
        if unknown:
            raise InputError(f"{path}: row {row_number}: unknown finding(s) {', '.join(unknown)}")
        table[row[i_name]] = LabelRow(labels, row[i_patient])
    return table


def read_bbox_list(path: str | os.PathLike) -> list[TruthBox]:
    """BBox_List_2017.csv -> boxes; its header 'Bbox [x,y,w,h],,,' spans the four numbers."""
    rows = _read_csv(path)
    i_name, i_label = _require_columns(path, rows[0], ("Image Index", "Finding Label"))
    if not any(cell.startswith("Bbox [x") for cell in rows[0]):
        raise InputError(f"{path}: missing column Bbox [x,y,w,h]; header is {','.join(rows[0])}")
    i_x = next(i for i, cell in enumerate(rows[0]) if cell.startswith("Bbox [x"))
    boxes = []
    for row_number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < max(i_name, i_label, i_x + 3) + 1:
            raise InputError(f"{path}: row {row_number}: too few columns "
                             f"(expected image, label, x, y, w, h)")
        label = BOX_TABLE_ALIASES.get(row[i_label], row[i_label])
        if label not in CLASS_NAMES:
            raise InputError(f"{path}: row {row_number}: unknown box label {row[i_label]!r}")
        try:
            x, y, w, h = (float(v) for v in row[i_x:i_x + 4])
        except ValueError:
            raise InputError(f"{path}: row {row_number}: box needs four numbers x,y,w,h") from None
        boxes.append(TruthBox(row[i_name], label, x, y, w, h))
    return boxes


def class_set(names, source: str) -> tuple[str, ...]:
    """The class names of a model or folder, checked: one of CLASS_SETS (the 8 or the 14)."""
    names = tuple(names)
    if names not in CLASS_SETS.values():
        raise InputError(f"{source}: class names {list(names)} are neither the original's 8 nor "
                         f"ChestX-ray14's 14 (in their usual order)")
    return names


def label_matrix(names: list[str], table: dict[str, LabelRow], list_path: str | os.PathLike,
                 class_names=CLASS_NAMES, line_numbers: list[int] | None = None) -> np.ndarray:
    """uint8 (len(names), len(class_names)) 0/1 labels; a name absent from the table is an error.

    line_numbers (from read_image_list_lines) make the error name the list file's real line;
    without them the name's position in the list is given.
    """
    y = np.zeros((len(names), len(class_names)), dtype=np.uint8)
    for i, name in enumerate(names):
        if name not in table:
            line = line_numbers[i] if line_numbers is not None else i + 1
            raise InputError(f"{list_path}: line {line}: {name} is not in the label table")
        for label in table[name].labels:
            if label in class_names:
                y[i, class_names.index(label)] = 1
    return y


def average_boxes(boxes: list[TruthBox]) -> np.ndarray:
    """float (8, 4) per-class mean (x, y, w, h) of the boxes; NaN rows for a class with none."""
    table = np.full((len(CLASS_NAMES), 4), np.nan)
    for k, name in enumerate(CLASS_NAMES):
        mine = [(b.x, b.y, b.w, b.h) for b in boxes if b.label == name]
        if mine:
            table[k] = np.mean(mine, axis=0)
    return table


def boxes_by_image(boxes: list[TruthBox]) -> dict[str, list[TruthBox]]:
    """{image name: its boxes, in table order}."""
    grouped: dict[str, list[TruthBox]] = {}
    for box in boxes:
        grouped.setdefault(box.image, []).append(box)
    return grouped


def read_truth_by_image(path: str | os.PathLike) -> dict[str, list[TruthBox]]:
    """BBox_List (.csv or .csv.gz) -> {image name: its truth boxes, in table order}."""
    return boxes_by_image(read_bbox_list(path))
