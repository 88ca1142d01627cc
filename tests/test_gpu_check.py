"""benchmarks/gpu_check.py --device cpu --tiny: the GPU check's code runs every day on the CPU, so
it cannot rot between GPU runs; its chain's box files (denseNet_localization's and the unzipped
bundle's) are equal, and its JSON has every part."""
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu_check")
    threads = torch.get_num_threads()
    args = gpu_check.get_args_parser().parse_args(["--device", "cpu", "--tiny", "--json",
                                                   str(folder / "check.json"), "--work",
                                                   str(folder / "work")])
    try:
        gpu_check.main(args)  # in this process: one torch start-up fewer than a subprocess
    finally:
        torch.set_num_threads(threads)
    return json.loads((folder / "check.json").read_text()), folder / "work"


def test_every_part_ran_and_the_json_holds_its_figures(report):
    data, _ = report
    assert data["errors"] == {} and data["size"] == "tiny" and data["device"] == "cpu"
    assert {"chain", "training", "gradcam", "localization", "loader", "projection",
            "targets"} <= set(data)
    assert set(data["loader"]["crops_and_batches_images_per_s"]) == {"0", "1"}
    variants = {v["name"]: v for v in data["training"]["variants"]}
    assert set(variants) == {"NCHW fp32", "train.py default"}
    for v in variants.values():
        assert v["precision"] == "fp32" and v["peak_memory_mib"] is None  # the CPU: no autocast
        assert v["cudnn_tf32"] is None
        assert v["in_memory_images_per_s"] > 0 and v["data_path_images_per_s"] > 0
    assert set(data["training"]["loader_alone_images_per_s"]) == {"0", "1"}
    cam = data["gradcam"]
    assert cam["fp32_max_map_difference"] == 0 and cam["as_localization_max_map_difference"] == 0
    assert cam["gradcam_time_over_forward"] > 0 and data["localization"]["images_per_s"] > 0
    local = data["localization"]  # 3 batches of 1: the rate leaves out the start-up, told apart
    assert local["batch"] == 1 and local["start_up_and_first_batch_s"] > 0
    assert local["images_per_s_with_start_up"] > 0
    speedups = [t for t in data["targets"] if t["what"].startswith("train.py default / ")]
    assert [t["what"] for t in speedups] == [
        "train.py default / NCHW fp32 strict (TF32 off), in memory",
        "train.py default / NCHW --amp off (cuDNN TF32), in memory"]
    assert speedups[0]["value"] == speedups[1]["value"]  # the CPU has no TF32: one baseline
    projection = data["projection"]
    assert projection["train_images"] == round(46_649 * 0.7) and projection["epochs"] == 10
    total = projection["train_minutes"] + projection["valid_minutes"]
    assert projection["minutes"] == pytest.approx(total) and projection["repeats"] == 4
    assert [t["met"] is None for t in data["targets"]] == [False] * len(data["targets"])


def test_the_chain_wrote_equal_box_files_in_the_exact_format(report):
    data, work = report
    chain = data["chain"]
    assert chain["bundle_equals_localization"] is True and chain["format_errors"] == []
    assert chain["train_device"] == chain["bundle_device"] == "cpu"
    assert chain["train_precision"] == "fp32" and chain["first_difference"] is None
    assert chain["boxes"] >= 2 * 8  # threshold 0: every class active on both test images
    local = (work / "chain" / "local" / "bounding_box.txt").read_bytes()
    assert local == (work / "chain" / "fresh" / "bounding_box.txt").read_bytes()


def test_box_file_format_check_finds_a_broken_line():
    good = ["images/a.png 1", "Mass 1.0 2.0 3.0 4.0"]
    check = gpu_check.gpu_chain.box_file_format_errors
    assert check(good, ["images/a.png"]) == []
    assert check(["images/a.png 1", "Mass 1 2 3 4"], ["images/a.png"])  # not %.1f
    assert check(good, ["images/b.png"])


def test_sync_waits_for_the_device_it_is_given(monkeypatch):
    """timing.sync passes its device on: synchronize() alone would wait for the current device."""
    import timing
    seen = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: seen.append(device))
    for device in ("cpu", torch.device("cpu"), "cuda:1", torch.device("cuda", 0), "cuda"):
        timing.sync(device)
    assert seen == [torch.device("cuda", 1), torch.device("cuda", 0), torch.device("cuda")]
