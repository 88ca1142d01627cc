"""train.py's per-epoch log, metrics.jsonl: one JSON object a line (epoch, train_loss, valid_loss,
auroc {class: float | null}, mean_auroc, seconds). Written by train.py, read by --resume, the
training pictures and the benchmark. No heavy imports: the plots (and so the bundle) use it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from common import InputError, write_text_atomic


def write_metrics_log(path: Path, records: list[dict]) -> None:
    """The whole log, rewritten atomically (a few lines per epoch: cheap, and never half a line)."""
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def read_metrics_log(path: str | os.PathLike) -> list[dict]:
    """train.py's metrics.jsonl: one JSON object per epoch; a bad line is an InputError naming it."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "epoch" not in record:
                raise ValueError("no 'epoch' key")
        except ValueError as err:
            raise InputError(f"{path}:{number}: not a metrics record ({err})") from None
        records.append(record)
    if not records:
        raise InputError(f"{path}: no epochs recorded")
    return records
