"""Patient-disjoint train/valid/test splits of the label table, their summary, and checks of lists.

Every image of a patient lands in exactly one list. A random split draws patients (not images) with
numpy's default_rng(seed) over the patient ids in sorted order, so a seed gives the same lists on
any machine. The official split takes NIH's test_list.txt as the test list and draws the validation
patients from train_val_list.txt.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from chexnet.constants import ALL_FINDINGS, NO_FINDING
from chexnet.nih import LabelRow
from chexnet.utils import InputError

LIST_NAMES = ("train", "valid", "test")


def patients_of(names: list[str], table: dict[str, LabelRow]) -> dict[str, list[str]]:
    """{patient id: its images among `names`, in the given order}; every name must be in the
    table."""
    grouped: dict[str, list[str]] = {}
    for name in names:
        grouped.setdefault(table[name].patient_id, []).append(name)
    return grouped


def _draw(patients: list[str], fractions: tuple[float, ...], seed: int) -> list[list[str]]:
    """Sorted patient ids, shuffled by the seed, cut into len(fractions) + 1 groups: one per
    fraction (round(f * patients) each), then the rest."""
    ordered = sorted(patients)
    shuffled = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    groups, start = [], 0
    for fraction in fractions:
        count = int(round(fraction * len(patients)))
        groups.append(shuffled[start:start + count])
        start += count
    return groups + [shuffled[start:]]


def _images(patients: list[str], by_patient: dict[str, list[str]],
            order: dict[str, int]) -> list[str]:
    """The images of these patients, in label-table order."""
    return sorted((name for p in patients for name in by_patient[p]), key=order.__getitem__)


def random_split(table: dict[str, LabelRow], valid_fraction: float, test_fraction: float,
                 seed: int) -> dict[str, list[str]]:
    """{'train', 'valid', 'test': image names}: patients drawn at random, fractions of patients."""
    by_patient = patients_of(list(table), table)
    order = {name: i for i, name in enumerate(table)}
    test, valid, train = _draw(list(by_patient), (test_fraction, valid_fraction), seed)
    return {"train": _images(train, by_patient, order), "valid": _images(valid, by_patient, order),
            "test": _images(test, by_patient, order)}


def official_split(table: dict[str, LabelRow], train_val: tuple[str, list[tuple[int, str]]],
                   test: tuple[str, list[tuple[int, str]]], valid_fraction: float,
                   seed: int) -> dict[str, list[str]]:
    """NIH's test list as the test list; valid = valid_fraction of train_val's patients.

    train_val and test are (path, [(line number, name)]) as nih.read_image_list_lines reads them.
    A name listed twice in either, a name absent from the table, or a patient in both lists, is an
    InputError naming the file (and the line of a duplicate).
    """
    (tv_path, tv_names), (test_path, test_names) = ((path, unique_names(path, entries))
                                                    for path, entries in (train_val, test))
    for path, names in ((tv_path, tv_names), (test_path, test_names)):
        missing = [n for n in names if n not in table]
        if missing:
            raise InputError(f"{path}: {len(missing)} image(s) not in the label table, "
                             f"e.g. {missing[0]}")
    by_patient = patients_of(tv_names, table)
    shared = set(by_patient) & set(patients_of(test_names, table))
    if shared:
        raise InputError(f"{test_path}: {len(shared)} patient(s) also in {tv_path}, "
                         f"e.g. {min(shared)}")
    order = {name: i for i, name in enumerate(table)}
    valid, train = _draw(list(by_patient), (valid_fraction,), seed)
    return {"train": _images(train, by_patient, order), "valid": _images(valid, by_patient, order),
            "test": sorted(test_names, key=order.__getitem__)}


def unique_names(path: str | os.PathLike, entries: list[tuple[int, str]]) -> list[str]:
    """The names of a list's (line number, name) entries; a name listed twice is an InputError
    naming the file and both lines (an image belongs in a list once; a duplicate would count twice
    in training or in the test AUROC)."""
    first: dict[str, int] = {}
    for number, name in entries:
        if name in first:
            repeats = len(entries) - len({n for _, n in entries})
            raise InputError(f"{path}:{number}: {name} is listed again (first on line "
                             f"{first[name]}); {repeats} duplicate line(s) in all: remove them")
        first[name] = number
    return list(first)


# ---------------------------------------------------------------- summary and checks

SUMMARY_COLUMNS = ("list", "images", "patients") + ALL_FINDINGS + (NO_FINDING,)


def summary_rows(lists: dict[str, list[str]], table: dict[str, LabelRow]) -> list[dict]:
    """Per list: images, patients, and positives per finding (images with it; 'No Finding' too).
    Names absent from the table are left out of the counts."""
    rows = []
    for list_name, names in lists.items():
        known = [n for n in names if n in table]
        row = {"list": list_name, "images": len(known),
               "patients": len({table[n].patient_id for n in known})}
        row.update({finding: 0 for finding in ALL_FINDINGS + (NO_FINDING,)})
        for name in known:
            for finding in table[name].labels or (NO_FINDING,):
                row[finding] += 1
        rows.append(row)
    return rows


def format_summary(rows: list[dict]) -> str:
    """A text table: one line per column of SUMMARY_COLUMNS, one column per list."""
    width = max(12, *(len(r["list"]) + 2 for r in rows))
    lines = [f"{'':<20}" + "".join(r["list"].rjust(width) for r in rows)]
    for column in SUMMARY_COLUMNS[1:]:
        lines.append(f"{column:<20}" + "".join(str(r[column]).rjust(width) for r in rows))
    return "\n".join(lines) + "\n"


def format_summary_csv(rows: list[dict]) -> str:
    lines = [",".join(SUMMARY_COLUMNS)]
    lines += [",".join(str(r[c]) for c in SUMMARY_COLUMNS) for r in rows]
    return "\n".join(lines) + "\n"


@dataclass
class ListCheck:
    path: str
    images: int  # lines naming an image
    duplicates: int  # names listed more than once
    missing: list[str]  # names absent from the label table
    patients: set[str]


def check_list(path: str | os.PathLike, names: list[str], table: dict[str, LabelRow]) -> ListCheck:
    missing = [n for n in names if n not in table]
    return ListCheck(str(path), len(names), len(names) - len(set(names)), missing,
                     {table[n].patient_id for n in names if n in table})


def overlaps(checks: list[ListCheck]) -> list[tuple[str, str, set[str]]]:
    """(list a, list b, shared patients) for every pair of lists that shares a patient."""
    found = []
    for i, a in enumerate(checks):
        for b in checks[i + 1:]:
            shared = a.patients & b.patients
            if shared:
                found.append((a.path, b.path, shared))
    return found
