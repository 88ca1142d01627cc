"""Small helpers every script shares: one error type for bad input, atomic writes, device choice."""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:  # the type only: torch loads inside select_device, when a script needs it
    import torch


class InputError(Exception):
    """Bad input the user can fix. Its message is one line that names the file (and row)."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, on error delete it.

    A crash or Ctrl-C never leaves a half-written file under the final name.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual file mode
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success move its files into `path` (created if
    absent), on error delete it: a run that fails half-way leaves none of its files in `path`."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        if not final.exists():
            os.chmod(tmp, 0o777 & ~_current_umask())  # mkdtemp makes 0700; the usual folder mode
            os.replace(tmp, final)
        else:  # a folder already there keeps its other files; ours replace theirs of the same name
            for entry in sorted(tmp.iterdir()):
                os.replace(entry, final / entry.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temporaries(folder: str | os.PathLike, final_names) -> None:
    """Delete the temporaries atomic_path left for these names when a run was killed (SIGKILL
    skips its clean-up). Call it before writing into a folder that an earlier run may have used."""
    for name in final_names:
        for stale in Path(folder).glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def usable_cpus() -> int:
    """CPUs this process may use: its affinity (as a batch scheduler sets it), not all the machine
    has."""
    return (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1))


def select_device(requested: str = "auto") -> "torch.device":
    """'auto' is the first visible CUDA GPU, else the CPU.

    GPU choice belongs to the user's CUDA_VISIBLE_DEVICES, which we never set or override:
    when it is unset, CUDA numbers the GPUs from 0 and 'cuda' is GPU 0.
    """
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {requested}: no CUDA GPU is visible (CUDA_VISIBLE_DEVICES="
                         f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    return device


def run_cli(main: Callable[[], None]) -> None:
    """Run a script's main; turn InputError into one 'error:' line on stderr and exit status 2."""
    try:
        main()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
