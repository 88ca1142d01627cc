"""Write a copy of a probabilities CSV with every probability rounded to --digits decimals.

    python3 benchmarks/rounded_probs.py PROBS_CSV OUT_CSV [--digits 2]

A degraded copy of one model, not another model: compared with the original (tools/auroc.py
--compare) it shows what a coarse export costs (rounding makes ties, and a tie counts one half),
and how small a difference the paired tests resolve. OUT_CSV is in our format (image,<classes>).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root: chexnet/

from chexnet.probs import read_probs_csv, write_probs_csv  # noqa: E402
from chexnet.utils import InputError, run_cli  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("probs_csv", type=str, help="probabilities CSV, ours or a peer's")
    p.add_argument("out_csv", type=str, help="the rounded copy to write")
    p.add_argument("--digits", type=int, default=2, help="decimals kept (default: 2)")
    return p


def main(args: argparse.Namespace) -> None:
    if not 0 <= args.digits <= 6:
        raise InputError(f"--digits must be 0 to 6 (the CSV keeps 6), got {args.digits}")
    names, classes, probs = read_probs_csv(args.probs_csv)
    write_probs_csv(args.out_csv, names, classes, np.round(probs, args.digits))
    print(f"wrote {args.out_csv}: {len(names)} images, {len(classes)} classes, probabilities "
          f"rounded to {args.digits} decimals")


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
