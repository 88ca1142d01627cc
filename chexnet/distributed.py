"""Several processes under torchrun: the process group, each rank's share, and gathering to rank 0.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE (docs/several_gpus.md); without them every function
here is the one-process case (rank 0 of 1) and touches no process group, so a plain
`python3 train.py` runs the same code path as before. NCCL joins the GPUs, gloo the CPUs.
Rank r computes on GPU LOCAL_RANK of those CUDA_VISIBLE_DEVICES shows (never set here).
"""
from __future__ import annotations

import os
import signal
import sys
import traceback
from datetime import timedelta
from typing import Callable, Iterator, Sequence

import torch
import torch.distributed as dist

from chexnet.utils import InputError

# Test hook: "RANK:EPOCH:STEP" makes that rank SIGKILL itself before that training step of a
# group's first start (TORCHELASTIC_RESTART_COUNT 0); tests/test_distributed.py uses it.
KILL_HOOK = "CHEXNET_TEST_KILL_AT"


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def restarted() -> bool:
    """True in a group that torchrun --max-restarts started again after a worker died."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def init(device: torch.device) -> torch.device:
    """Join torchrun's group (NCCL on CUDA, gloo on the CPU); return this rank's device: GPU
    LOCAL_RANK when `device` is CUDA (whatever cuda:N asked). One process: `device`, no group."""
    if not under_torchrun():
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK {local}: only {torch.cuda.device_count()} GPUs are "
                             "visible (CUDA_VISIBLE_DEVICES); lower --nproc_per_node")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if dist.is_initialized():  # joined already (calibrate.py --cam auto: maps per candidate)
        return device
    # CPU threads: torchrun sets OMP_NUM_THREADS=1 per process unless the user set it
    quiet_other_ranks()
    backend = "nccl" if device.type == "cuda" else "gloo"
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        timeout = timedelta(minutes=30)
        store, rank_, world = next(dist.rendezvous("env://", timeout=timeout))
        # a group restarted by torchrun meets in the same store: its own prefix keeps it from
        # reading the dead group's addresses (seen here: gloo's connect refused at restart)
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend, store=dist.PrefixStore(f"chexnet/{attempt}", store),
                                rank=rank_, world_size=world, timeout=timeout)
    except (RuntimeError, ValueError) as err:  # DistNetworkError is a RuntimeError
        first = (str(err).strip().splitlines() or ["?"])[0]
        raise InputError(f"cannot form the {backend} process group of rank "
                         f"{os.environ['RANK']} of {os.environ['WORLD_SIZE']} at {where}: "
                         f"{first}") from None
    return device


def quiet_other_ranks() -> None:
    """Under torchrun, ranks other than 0 print nothing from here on: an error every rank meets
    (a bad option, a missing file) is printed once, by rank 0; an unexpected exception's
    traceback still reaches the real stderr. Call it first thing in a command's main."""
    if not under_torchrun() or int(os.environ["RANK"]) == 0 or sys.stdout is _SINK[0]:
        return
    _SINK[0] = sys.stdout = sys.stderr = open(os.devnull, "w")

    def hook(kind, value, tb):
        traceback.print_exception(kind, value, tb, file=sys.__stderr__)
    sys.excepthook = hook


_SINK = [None]  # the devnull file quiet_other_ranks opened


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def maybe_kill(epoch: int, step: int) -> None:
    """The KILL_HOOK test hook (a no-op unless the variable names this rank, epoch and step)."""
    at = os.environ.get(KILL_HOOK)
    if at and not restarted() and at == f"{rank()}:{epoch}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def share(length: int, parts: int, index: int) -> tuple[int, int]:
    """[start, stop) of part `index` of `length` items cut into `parts` contiguous parts, the
    first length % parts of them one longer (np.array_split's cut)."""
    base, extra = divmod(length, parts)
    start = index * base + min(index, extra)
    return start, start + base + (index < extra)


def all_gather_objects(value) -> list:
    """Every rank's value, in rank order (pickled over the wire by torch; nothing on disk)."""
    if not dist.is_initialized():
        return [value]
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def gather_objects(value) -> list | None:
    """Every rank's value on rank 0, in rank order; None on the others."""
    if not dist.is_initialized():
        return [value]
    values = [None] * world_size() if is_main() else None
    dist.gather_object(value, values, dst=0)
    return values


def batch_shares(n: int, batch_size: int) -> list[list[tuple[int, int]]]:
    """Per rank, the [start, stop) item ranges of the batches it computes: the batches of
    batch_size items a one-process run makes, dealt out in turn (batch b to rank b % world), so
    every batch is the same batch as in one process and the arithmetic on it is the same."""
    starts = list(range(0, n, batch_size))
    return [[(s, min(n, s + batch_size)) for s in starts[r::world_size()]]
            for r in range(world_size())]


def gathered(compute: Callable[[list], Iterator], items: Sequence, batch_size: int
             ) -> Iterator | None:
    """compute(items) shared out by batches (batch_shares): rank 0 gets an iterator over all the
    results in item order, the other ranks compute and send their share and get None. A rank's
    InputError stops every rank; rank 0 raises it (the first in item order), the others exit 2."""
    if not dist.is_initialized():
        return compute(list(items))
    shares = batch_shares(len(items), batch_size)
    mine = shares[rank()]
    results = compute([items[i] for s, e in mine for i in range(s, e)])
    # rank 0 has the most batches (they are dealt from it): one round per batch of its share
    chunks = _rounds(results, [e - s for s, e in mine], len(shares[0]))
    if is_main():
        return chunks
    for _ in chunks:
        pass
    return None


def _rounds(results: Iterator, sizes: list[int], rounds: int) -> Iterator:
    """Round k: every rank's k-th batch of results to rank 0, which yields them in rank order
    (batch k * world + r: item order)."""
    for k in range(rounds):
        chunk, error = [], None
        try:
            for _ in range(sizes[k] if k < len(sizes) else 0):
                chunk.append(next(results))
        except InputError as err:
            error = str(err)
        errors = [e for e in all_gather_objects(error) if e is not None]
        if errors:
            if is_main():
                raise InputError(errors[0])
            sys.exit(2)
        parts = gather_objects(chunk)
        if parts is not None:
            for part in parts:
                yield from part
