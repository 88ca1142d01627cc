"""Several processes on the CPU with gloo: the data split, DDP's gradients, torchrun training with a
killed worker, and a 2-process localization byte-identical to one process."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import denseNet_localization
import train
from chexnet import distributed, preprocessed, train_data, train_loop
from chexnet.constants import CLASS_NAMES
from chexnet.images import load_stored
from chexnet.nih import label_matrix, read_data_entry, read_image_list
from chexnet.utils import InputError
from model import ARCH, FORMAT, VERSION, build_model, load_checkpoint, model_from_checkpoint
from model import save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def test_each_rank_takes_its_part_of_every_global_batch():
    for n, batch, world in ((9, 4, 2), (6, 4, 4), (12, 4, 2)):
        one = train_data.EpochBatches(n, batch, seed=1, repeats=2)
        ranks = [train_data.EpochBatches(n, batch, seed=1, repeats=2, rank=r, world=world)
                 for r in range(world)]
        for sampler in (one, *ranks):
            sampler.set_epoch(3)
        assert one.loss_scales() == [1.0] * len(one)
        assert all(len(s) == len(one) for s in ranks)  # every rank steps every global step
        for step, batch_keys in enumerate(one.batches()):
            parts = [s.parts()[step] for s in ranks]
            real = [keys for keys, scale in parts if scale > 0]
            assert [k for keys in real for k in keys] == batch_keys  # the union, in order, once
            assert sum(scale for _, scale in parts) == pytest.approx(world)
            for keys, scale in parts:
                assert scale == pytest.approx(len(keys) * world / len(batch_keys)) or (
                    scale == 0.0 and keys == [batch_keys[-1]])  # an empty part's stand-in
    short = train_data.EpochBatches(6, 4, seed=0, rank=3, world=4)  # last global batch: 2 keys
    assert short.loss_scales() == [1.0, 0.0]


def test_batches_dealt_out_in_turn_come_back_in_order(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    shares = distributed.batch_shares(11, 2)  # batches [0,2) [2,4) ... [10,11)
    assert shares == [[(0, 2), (6, 8)], [(2, 4), (8, 10)], [(4, 6), (10, 11)]]
    parts = [[list(range(s, e)) for s, e in share] for share in shares]
    assert [i for b in train_loop.interleave(parts) for i in b] == list(range(11))


def _ddp_step(rank: int, port: int, out: str, batch: torch.Tensor, labels: torch.Tensor) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    net, keys = _one_step_model(), train_data.EpochBatches(len(batch), len(batch), 0, 1, rank, 2)
    (part, scale), = keys.parts()
    rows = [i for i, _, _ in part]
    ddp = train.wrap(net, torch.device("cpu"), False)
    logits = ddp(batch[rows])
    (train_data.bce_loss(logits, labels[rows], None) * scale).backward()
    if rank == 0:
        torch.save({k: p.grad for k, p in net.named_parameters()}, out)
    dist.destroy_process_group()


def _one_step_model() -> torch.nn.Module:
    """A small conv net with batch norm (DenseNet-121's parts; the whole would take a minute
    here), in eval mode: no per-rank statistics."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(8, 8)).eval()


def test_ddp_gradients_equal_one_process_on_the_same_global_batch(tmp_path):
    gen = torch.Generator().manual_seed(0)
    batch = torch.randn(5, 3, 32, 32, generator=gen)  # 5 images: parts of 3 and 2, scaled
    labels = (torch.rand(5, 8, generator=gen) > 0.5).float()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "grads.pt")
    # fork: the children start with this process's imports (spawn re-imports them: a minute here)
    mp.start_processes(_ddp_step, args=(port, out, batch, labels), nprocs=2, join=True,
                       start_method="fork")
    net = _one_step_model()
    train_data.bce_loss(net(batch), labels, None).backward()
    ddp_grads = torch.load(out, weights_only=True)
    worst = max((ddp_grads[k] - p.grad).abs().max().item() for k, p in net.named_parameters())
    assert worst < 1e-6 and max(p.grad.abs().max().item() for p in net.parameters()) > 1e-3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """2 train, 4 valid real sample images: with --batch-size 2, one image per rank per step and
    two validation batches, one per rank."""
    sample, folder = ROOT / "sample", tmp_path_factory.mktemp("prepared")
    table = read_data_entry(sample / "Data_Entry_2017.csv")
    names = {"train": read_image_list(sample / "train.txt")[:2],
             "valid": read_image_list(sample / "valid.txt")[:4]}
    for split, split_names in names.items():
        x_name, y_name = preprocessed.array_names(split)
        images = np.stack([load_stored(sample / "images" / n) for n in split_names])
        np.save(folder / x_name, images, allow_pickle=False)
        np.save(folder / y_name, label_matrix(split_names, table, split), allow_pickle=False)
    meta = {"format": preprocessed.FORMAT, "version": preprocessed.VERSION,
            "class_names": list(CLASS_NAMES), "image_size": 256, "sources": {},
            "train_images": names["train"], "valid_images": names["valid"]}
    (folder / preprocessed.META).write_text(json.dumps(meta))
    return folder


def _train(data_dir: Path, out: Path, *torchrun_options: str, **env) -> subprocess.CompletedProcess:
    command = [*TORCHRUN, *torchrun_options, str(ROOT / "train.py"), str(data_dir), "--out",
               str(out), "--weights", "none", "--batch-size", "2", "--repeats", "1", "--epochs",
               "3", "--device", "cpu", "--keep-no-finding", "--workers", "0", "--no-plots"]
    return subprocess.run(command, capture_output=True, text=True, timeout=400, env=_env(**env))


def _records(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_process_training_survives_a_killed_worker(data_dir, tmp_path, capsys):
    whole = _train(data_dir, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = _train(data_dir, tmp_path / "killed", "--max-restarts", "1",
                    **{distributed.KILL_HOOK: "1:2:0"})  # rank 1, epoch 2, its first step
    assert killed.returncode == 0, killed.stderr[-2000:]
    # the group was restarted and went on from last.pt (torchrun names whichever worker it saw
    # fail first: rank 1, killed, or rank 0, whose peer vanished)
    assert "exitcode" in killed.stderr and "resuming from" in killed.stdout
    records = _records(tmp_path / "whole")
    assert [r["epoch"] for r in records] == [1, 2, 3] and {r["world_size"] for r in records} == {2}
    assert _records(tmp_path / "killed") == records  # losses and AUROCs
    thresholds = (tmp_path / "whole" / "thresholds.npy").read_bytes()
    assert (tmp_path / "killed" / "thresholds.npy").read_bytes() == thresholds
    assert whole.stdout.count("done: best epoch") == 1  # rank 0 alone prints
    # one process loads the checkpoint (no module. prefix) and validates it to the same numbers
    best = load_checkpoint(tmp_path / "whole" / "best.pt")
    assert not any(k.startswith("module.") for k in best["model"])
    torch.set_num_threads(1)
    _, valid_set = train_data.make_datasets(preprocessed.load_prepared(data_dir), True, 0)
    loader = torch.utils.data.DataLoader(valid_set, batch_size=2)
    result = train_loop.validate(model_from_checkpoint(best), loader, torch.device("cpu"))
    record = records[best["epoch"] - 1]
    assert result["valid_loss"] == record["valid_loss"] and result["auroc"] == record["auroc"]
    youden = train.metrics.youden_thresholds(result["labels"], result["probs"])
    assert youden.tobytes() == np.load(tmp_path / "whole" / "thresholds.npy").tobytes()
    # --resume in one process goes on from the 2-process last.pt, with a warning
    train.main(train.get_args_parser().parse_args(
        [str(data_dir), "--out", str(tmp_path / "whole"), "--weights", "none", "--batch-size",
         "2", "--repeats", "1", "--epochs", "4", "--device", "cpu", "--keep-no-finding",
         "--workers", "0", "--no-plots", "--resume"]))
    assert "resuming a run of 2 processes on 1" in capsys.readouterr().err
    assert [r["world_size"] for r in _records(tmp_path / "whole")] == [2, 2, 2, 1]


def test_options_that_cannot_run_say_so_in_one_line(data_dir, tmp_path, monkeypatch):
    args = train.get_args_parser().parse_args([str(data_dir), "--device", "cpu", "--sync-bn"])
    with pytest.raises(InputError, match="--sync-bn: PyTorch has SyncBatchNorm on CUDA only"):
        train.check_args(args)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    args = train.get_args_parser().parse_args([str(data_dir), "--batch-size", "6"])
    with pytest.raises(InputError, match="--batch-size 6 does not divide among 4 processes"):
        train.check_args(args)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(InputError, match=r"cannot form the gloo process group .*MASTER_ADDR"):
        distributed.init(torch.device("cpu"))
    assert not dist.is_initialized()


def test_two_process_localization_is_byte_identical_to_one(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "model" / "best.pt", {
        "format": FORMAT, "version": VERSION, "arch": ARCH, "class_names": list(CLASS_NAMES),
        "model": build_model(8, "none").state_dict(), "input_size": 224, "epoch": 1,
        "optimizer": None, "metrics": {}, "args": {}, "thresholds": [0.5] * 8})
    np.save(tmp_path / "model" / "thresholds.npy", np.zeros(8, np.float32))  # all active
    names = read_image_list(ROOT / "sample" / "test.txt")[:5]
    (tmp_path / "five.txt").write_text("\n".join(names) + "\n")  # 3 batches: ranks 0, 1, 0

    def options(tag: str) -> list[str]:
        return [str(tmp_path / "five.txt"), str(ROOT / "sample" / "images"), "--model",
                str(tmp_path / "model" / "best.pt"), "--out", str(tmp_path / f"{tag}.txt"),
                "--probs", str(tmp_path / f"{tag}.csv"), "--save-heatmaps",
                str(tmp_path / f"{tag}.npz"), "--batch-size", "2", "--workers", "0",
                "--device", "cpu"]
    torch.set_num_threads(1)
    denseNet_localization.main(denseNet_localization.get_args_parser().parse_args(options("one")))
    two = subprocess.run([*TORCHRUN, str(ROOT / "denseNet_localization.py"), *options("two")],
                         capture_output=True, text=True, timeout=300, env=_env())
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("wrote") == 2 and "5 images" in two.stdout
    assert two.stdout.rstrip().endswith("on 2 processes")
    for suffix in ("txt", "csv", "npz"):
        one, two = (tmp_path / f"one.{suffix}").read_bytes(), (tmp_path / f"two.{suffix}")
        assert two.read_bytes() == one, suffix
