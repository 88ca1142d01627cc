"""Write patient-disjoint train.txt, valid.txt and test.txt from the label table, or check lists.

    python3 tools/split.py DATA_ENTRY OUT_DIR [--official TRAIN_VAL_LIST TEST_LIST]
                           [--valid-fraction F] [--test-fraction F] [--seed S]
    python3 tools/split.py DATA_ENTRY --check LIST [LIST ...]

Every image of a patient is in exactly one list. Without --official, patients are drawn at random
(default 70/10/20 of the patients, as CheXNet's re-implementations split). With --official, test.txt
is NIH's test_list.txt and the validation patients are drawn from train_val_list.txt
(--valid-fraction of its patients); a name listed twice in either list is an error naming the file
and the line (both lists alike). OUT_DIR also gets summary.txt (printed too) and summary.csv:
images, patients and positives per finding per list, and split.json, the arguments that rebuild the
lists.
--check reports, for lists made anywhere, duplicates, names absent from the label table and the
patients any two lists share; it exits with status 1 where a patient is shared.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root: chexnet/, model.py

from chexnet import nih, splits  # noqa: E402
from chexnet.utils import InputError, run_cli, write_text_atomic  # noqa: E402

DEFAULT_TEST_FRACTION = 0.2  # with valid 0.1: 70/10/20 of the patients, as CheXNet's peers split


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data_entry", type=str,
                   help="label table Data_Entry_2017.csv (or .csv.gz, or v2020)")
    p.add_argument("out_dir", type=str, nargs="?", default=None,
                   help="folder for train.txt, valid.txt, test.txt and the summary "
                        "(not with --check)")
    p.add_argument("--official", type=str, nargs=2, default=None,
                   metavar=("TRAIN_VAL_LIST", "TEST_LIST"),
                   help="NIH's train_val_list.txt and test_list.txt "
                        "(default: None, a random split)")
    p.add_argument("--valid-fraction", type=float, default=0.1,
                   help="share of the patients in valid.txt; with --official, of train_val_list's "
                        "patients (default: 0.1)")
    p.add_argument("--test-fraction", type=float, default=None,
                   help=f"share of the patients in test.txt, random split only (default: "
                        f"{DEFAULT_TEST_FRACTION})")
    p.add_argument("--seed", type=int, default=0, help="seed of the patient draw (default: 0)")
    p.add_argument("--check", type=str, nargs="+", default=None, metavar="LIST",
                   help="check these lists instead of writing a split (default: None)")
    return p


def _validate(args: argparse.Namespace) -> None:
    if args.official is not None and args.test_fraction is not None:
        raise InputError("--test-fraction does not apply to --official: the test list is NIH's")
    if args.test_fraction is None:
        args.test_fraction = 0.0 if args.official else DEFAULT_TEST_FRACTION
    if args.check is not None:
        if args.out_dir is not None or args.official is not None:
            raise InputError("--check takes lists only: no OUT_DIR, no --official")
        return
    if args.out_dir is None:
        raise InputError("OUT_DIR is required (or --check LIST...)")
    if not 0 <= args.valid_fraction < 1 or not 0 <= args.test_fraction < 1:
        raise InputError(f"--valid-fraction and --test-fraction must be in [0, 1), got "
                         f"{args.valid_fraction}, {args.test_fraction}")
    if args.official is None and args.valid_fraction + args.test_fraction >= 1:
        raise InputError("--valid-fraction + --test-fraction must leave patients for training")


def write_split(args: argparse.Namespace, table: dict) -> dict[str, list[str]]:
    if args.official is None:
        lists = splits.random_split(table, args.valid_fraction, args.test_fraction, args.seed)
    else:
        train_val, test = ((path, nih.read_image_list_lines(path)) for path in args.official)
        lists = splits.official_split(table, train_val, test, args.valid_fraction, args.seed)
    out = Path(args.out_dir)
    for name in splits.LIST_NAMES:
        write_text_atomic(out / f"{name}.txt", "".join(f"{n}\n" for n in lists[name]))
    rows = splits.summary_rows(lists, table)
    text = splits.format_summary(rows)
    write_text_atomic(out / "summary.txt", text)
    write_text_atomic(out / "summary.csv", splits.format_summary_csv(rows))
    record = {"data_entry": args.data_entry, "official": args.official, "seed": args.seed,
              "valid_fraction": args.valid_fraction,
              "test_fraction": None if args.official else args.test_fraction, "unit": "patient"}
    write_text_atomic(out / "split.json", json.dumps(record, indent=1) + "\n")
    print(text, end="")
    print(f"wrote {', '.join(f'{n}.txt' for n in splits.LIST_NAMES)}, summary.txt, summary.csv, "
          f"split.json into {out}")
    return lists


def check(paths: list[str], table: dict) -> int:
    """Print the checks of the lists; 1 where two lists share a patient, else 0."""
    checks, lists = [], {}
    short = [Path(p).name for p in paths]
    labels = short if len(set(short)) == len(short) else paths  # column titles of the summary
    for path, label in zip(paths, labels):
        names = nih.read_image_list(path)
        checks.append(splits.check_list(path, names, table))
        lists[label] = names
        c = checks[-1]
        print(f"{path}: {c.images} images, {len(c.patients)} patients, {c.duplicates} duplicates, "
              f"{len(c.missing)} not in the label table"
              + (f" (e.g. {c.missing[0]})" if c.missing else ""))
    print(splits.format_summary(splits.summary_rows(lists, table)), end="")
    shared = splits.overlaps(checks)
    for a, b, patients in shared:
        print(f"SHARED: {len(patients)} patient(s) in both {a} and {b}, "
              f"e.g. {sorted(patients)[:3]}")
    if not shared:
        print(f"patient-disjoint: no patient is in two of the {len(paths)} lists")
    return 1 if shared else 0


def main(args: argparse.Namespace) -> int:
    _validate(args)
    table = nih.read_data_entry(args.data_entry)
    if args.check is not None:
        return check(args.check, table)
    write_split(args, table)
    return 0


if __name__ == "__main__":
    run_cli(lambda: sys.exit(main(get_args_parser().parse_args())))
