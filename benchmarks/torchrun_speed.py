"""gpu_check.py's torchrun part: train.py plain and under `torchrun --nproc_per_node 1`, timed.

The same command line twice on the chain's preprocessed folder (sample/, every pass a new crop):
`python3 train.py ...` and `python3 -m torch.distributed.run --standalone --nproc_per_node 1
train.py ...` (one process in a gloo/NCCL group of 1, the model in DistributedDataParallel). The
figure is each run's last epoch (the first warms cuDNN up) from its metrics.jsonl; the target is a
torchrun epoch within 3% of the plain one (docs/several_gpus.md).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import gpu_chain

SIZES = {"tiny": ["--batch-size", "4", "--repeats", "1", "--epochs", "2"],
         "full": ["--batch-size", "64", "--repeats", "64", "--epochs", "3"]}
TARGET = 1.03  # torchrun's epoch over the plain one, at most


def last_epoch_seconds(out: Path) -> float:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["seconds"]


def compare(work: Path, device: str, tiny: bool, workers: int, threads: int | None) -> dict:
    """{plain_epoch_s, torchrun_epoch_s, torchrun_over_plain, ...}; work/chain/prepared is made
    by the chain part, else here."""
    work.mkdir(parents=True, exist_ok=True)
    prepared = work / "chain" / "prepared"
    env = {} if threads is None else {"OMP_NUM_THREADS": str(threads)}
    if not (prepared / "meta.json").is_file():
        prepared = work / "prepared"
        gpu_chain.write_lists(work, tiny)
        gpu_chain.run_command(work, gpu_chain.ROOT / "preprocessing.py",
                              str(gpu_chain.SAMPLE / "images"),
                              str(gpu_chain.SAMPLE / "Data_Entry_2017.csv"),
                              str(gpu_chain.SAMPLE / "BBox_List_2017.csv"), "train.txt",
                              "valid.txt", str(prepared), "--quiet", env=env)
    options = [str(prepared), "--device", device, "--workers", str(workers), "--weights", "none",
               "--no-plots", *SIZES["tiny" if tiny else "full"]]
    train = str(gpu_chain.ROOT / "train.py")
    gpu_chain.run_command(work, train, *options, "--out", "plain", env=env)
    gpu_chain.run_command(work, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "1", train, *options, "--out", "torchrun", env=env)
    plain, ddp = last_epoch_seconds(work / "plain"), last_epoch_seconds(work / "torchrun")
    return {"options": options[1:], "python": sys.executable, "plain_epoch_s": plain,
            "torchrun_epoch_s": ddp, "torchrun_over_plain": ddp / plain, "target": TARGET}
