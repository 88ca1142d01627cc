"""The GPU path proven in one run: the chain on the device, training speed, Grad-CAM, a projection.

    python3 benchmarks/gpu_check.py --device cuda --compile [--json FILE]  # < 8 min, H100/H200
    python3 benchmarks/gpu_check.py --device cpu --tiny     # the same code on a CPU, about 1 min

Its parts, in this order (--parts picks some):
  chain         preprocessing.py -> train.py (2 short epochs) -> denseNet_localization.py -> the
                bundle's `python3 inference.py` in a fresh folder, all on --device: both box files
                in the exact format and equal line for line (gpu_chain.py)
  gradcam       the maps of all 8 classes on the device against fp32 on the CPU (max difference),
                in strict fp32 and as localization runs; Grad-CAM time / plain forward, batch 64
  localization  localize.iter_localize end to end, images/s after the first batch (the
                DataLoader's start-up reported apart)
  loader        the workers' part of train.py's data path alone, at 0..N workers
  torchrun      train.py's epoch plain and under `torchrun --nproc_per_node 1`: within 3%
  training      batch 64, 224 crops: fp32 NCHW strict (TF32 off) and, on CUDA, as `--amp off`
                runs it (cuDNN's default TF32); train.py's default (mixed precision on CUDA,
                channels_last), its speed-up judged against both; with --compile the default
                under torch.compile, last; each fed by tensors already on the device and by
                train.py's data path (uint8 memory map -> DataLoader workers -> pinned copy ->
                normalise on the device); peak GPU memory
and then the projection: minutes of the original recipe on the NIH release at the measured rates.
Prints one table and writes one JSON (after every part, so a run stopped early keeps what it did).
All data come from sample/; no network. Exit status 1 when a part failed (its error is in the JSON).
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import tempfile
import time
import traceback
from pathlib import Path

from timing import machine, set_threads

import numpy as np  # noqa: E402
import torch  # noqa: E402

from chexnet import images, train_data  # noqa: E402
from chexnet.constants import EPOCHS, LOCALIZATION_BATCH_SIZE, REPEATS  # noqa: E402
from chexnet.utils import run_cli, select_device, write_text_atomic  # noqa: E402
import gpu_chain  # noqa: E402
import gpu_speed  # noqa: E402
import torchrun_speed  # noqa: E402

NIH_IMAGES = 112_120  # rows of Data_Entry_2017(_v2020).csv
NIH_WITH_FINDING = 46_649  # of them with at least one of the 8 findings (counted in the 2020 table)
# Sizes: training batch, untimed warm-up steps and timed steps per feed; Grad-CAM batch, images
# compared with the CPU, timed repetitions; images localized end to end.
SIZES = {
    "full": {"batch": 64, "warm": 3, "steps": 40, "cam_batch": 64, "compared": 8, "reps": 10,
             "localized": 512, "loader_batches": 40},
    "tiny": {"batch": 2, "warm": 1, "steps": 1, "cam_batch": 2, "compared": 1, "reps": 1,
             "localized": 3, "loader_batches": 3},
}
# torch.compile comes last of training; torchrun (train.py plain vs torchrun --nproc_per_node 1,
# torchrun_speed.py) runs with --tiny only when --parts names it (two more trainings)
PARTS = ("chain", "gradcam", "localization", "loader", "training", "torchrun")
AMP_OFF_TF32 = "NCHW --amp off (cuDNN TF32)"  # fp32 as train.py --amp off runs it on CUDA
TARGETS = {"mixed_over_fp32": 2.5, "data_path_overhead": 1.05, "gradcam_over_forward": 1.3,
           "map_difference": 1e-3, "projected_minutes": 20.0}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", type=str, default="auto",
                   help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--tiny", action="store_true",
                   help="tiny sizes (batch 2, 1 timed step, 2 test images): the code path in "
                        "about a minute on a CPU (default: full sizes, batch 64)")
    p.add_argument("--compile", action="store_true",
                   help="also time train.py's default under torch.compile (default: off)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader processes (default: train.py's, the usable CPUs up to 16; "
                        "1 with --tiny)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of this process (default: torch's own; 1 with --tiny)")
    p.add_argument("--parts", type=str, nargs="+", default=None, choices=PARTS,
                   help=f"parts to run, in this order (default: {' '.join(PARTS)}, without "
                        "torchrun under --tiny; the projection needs gradcam and training)")
    p.add_argument("--train-share", type=float, default=0.7,
                   help="training share of the NIH release in the projection (default: 0.7, "
                        "CheXNet's 70/10/20 split)")
    p.add_argument("--valid-share", type=float, default=0.1,
                   help="validation share (every image, findings or not) in the projection "
                        "(default: 0.1)")
    p.add_argument("--json", type=str, default="output/gpu_check.json",
                   help="the JSON to write (default: output/gpu_check.json)")
    p.add_argument("--work", type=str, default=None,
                   help="folder for the chain's files, kept (default: a temporary folder, removed)")
    return p


def training_part(args, device, folder: Path, report: dict, save) -> None:
    """Each variant in turn (saved as it comes: torch.compile, last, may outlast a time limit)."""
    size = SIZES[args.size]
    batch, steps = size["batch"], size["steps"]
    dataset = gpu_speed.training_data(folder, batch, size["warm"] + steps)
    strict = {"name": "NCHW fp32", "amp": "off", "channels_last": False, "compile": False,
              "tf32": False}
    default = {**strict, "name": "train.py default", "amp": "auto", "channels_last": True,
               "tf32": None}
    variants = [strict, default]
    if device.type == "cuda":  # --amp off as PyTorch runs it: cuDNN convolutions in TF32
        variants.insert(1, {**strict, "name": AMP_OFF_TF32, "tf32": None})
    if args.compile:
        variants.append({**default, "name": "train.py default + torch.compile", "compile": True})
    results = report["training"] = {"batch": batch, "steps": steps, "workers": args.workers,
                                    "variants": []}
    results["loader_alone_images_per_s"] = {  # the data path with no step: can it feed the device?
        str(w): gpu_speed.loader_alone(dataset, device, batch, w)
        for w in sorted({0, args.workers})}
    for variant in variants:
        try:
            results["variants"].append(gpu_speed.training_variant(
                dataset, device, batch, args.workers, variant, size["warm"]))
            save()
        except Exception as err:  # noqa: BLE001 (torch.compile may fail; the rest still counts)
            if not variant["compile"]:
                raise
            results["variants"].append({**variant, "error": f"{type(err).__name__}: {err}"[:500]})


def loader_part(args, folder: Path, report: dict) -> None:
    """The workers' part of train.py's data path alone, at 0, 1, 2, ... --workers processes."""
    size = SIZES[args.size]
    dataset = gpu_speed.training_data(folder, size["batch"], size["loader_batches"], "loader.npy")
    counts = sorted({0, 1, *range(2, args.workers + 1, 2), args.workers})
    report["loader"] = {"batch": size["batch"], "crops_and_batches_images_per_s": {
        str(w): gpu_speed.crops_and_batches(dataset, size["batch"], w) for w in counts}}


def gradcam_part(args, device, report: dict) -> None:
    size = SIZES[args.size]
    stored = gpu_speed.stored_images(size["cam_batch"])
    crops = torch.from_numpy(np.stack([images.center_crop(x) for x in stored]))  # (B, 224, 224)
    report["gradcam"] = {**gpu_speed.gradcam_against_cpu(crops[:size["compared"]], device),
                         **gpu_speed.gradcam_speed(crops, device, size["reps"])}


def localization_part(args, device, report: dict) -> None:
    count = SIZES[args.size]["localized"]
    batch = min(LOCALIZATION_BATCH_SIZE, count)  # denseNet_localization.py's default batch
    report["localization"] = gpu_speed.localization_speed(device, count, batch,
                                                          args.workers)


def projection(args, report: dict) -> dict:
    """Minutes of the original recipe on the NIH release at the measured rates."""
    default = next(v for v in report["training"]["variants"] if v["name"] == "train.py default")
    repeats = REPEATS  # train.py's --repeats default: the original's 4 copies per image
    train_images = round(NIH_WITH_FINDING * args.train_share)
    valid_images = round(NIH_IMAGES * args.valid_share)
    train_min = EPOCHS * repeats * train_images / default["data_path_images_per_s"] / 60
    valid_min = EPOCHS * valid_images / report["gradcam"]["forward_images_per_s"] / 60
    return {"train_images": train_images, "repeats": repeats, "epochs": EPOCHS,
            "valid_images": valid_images, "train_images_per_s": default["data_path_images_per_s"],
            "valid_images_per_s": report["gradcam"]["forward_images_per_s"],
            "train_minutes": train_min, "valid_minutes": valid_min,
            "minutes": train_min + valid_min}


def main(args) -> None:
    args.size = "tiny" if args.tiny else "full"
    args.parts = args.parts or [p for p in PARTS if not (args.tiny and p == "torchrun")]
    args.workers = args.workers if args.workers is not None else (1 if args.tiny else
                                                                  train_data.default_workers())
    args.threads = args.threads or (1 if args.tiny else None)
    if args.threads:
        set_threads(args.threads)
    device = select_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as train.py sets it
    report = {"check": "gpu_check", "version": 1, "size": args.size,
              "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "device": describe(device), "torch": torch.__version__,
              "args": {k: v for k, v in vars(args).items()}, "seconds": {}, "errors": {},
              "cudnn_tf32_default": torch.backends.cudnn.allow_tf32}
    folder = Path(args.work or tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        run_parts(args, device, folder, report)
    finally:
        if args.work is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(table(report))
    if report["errors"]:
        raise SystemExit(1)


def run_parts(args, device, folder: Path, report: dict) -> None:
    parts = {"chain": lambda: report.__setitem__("chain", gpu_chain.run_chain(
                 folder / "chain", str(device), args.tiny, args.workers, args.threads)),
             "training": lambda: training_part(args, device, folder, report, save),
             "gradcam": lambda: gradcam_part(args, device, report),
             "localization": lambda: localization_part(args, device, report),
             "loader": lambda: loader_part(args, folder, report),
             "torchrun": lambda: report.__setitem__("torchrun", torchrun_speed.compare(
                 folder, str(device), args.tiny, args.workers, args.threads))}
    def save() -> None:
        variants = report.get("training", {}).get("variants", [])
        measured = {v["name"] for v in variants if "error" not in v}
        if "gradcam" in report and "train.py default" in measured:
            report["projection"] = projection(args, report)
        report["targets"] = targets(report)
        write_text_atomic(args.json, json.dumps(report, indent=1, default=str) + "\n")

    for name in args.parts:
        print(f"gpu_check: {name} ...", flush=True)
        start = time.perf_counter()
        try:
            parts[name]()
        except Exception as err:  # noqa: BLE001 (one failed part must not hide the others' figures)
            report["errors"][name] = "".join(traceback.format_exception_only(err)).strip()[-3000:]
            traceback.print_exc()
        report["seconds"][name] = round(time.perf_counter() - start, 1)
        save()


def describe(device: torch.device) -> str:
    if device.type != "cuda":
        return str(device)
    return f"{device} ({torch.cuda.get_device_name(device)}, bf16 {torch.cuda.is_bf16_supported()})"


def targets(report: dict) -> list[dict]:
    """The issue's targets against what was measured (None where the part did not run)."""
    rows = []

    def add(what, value, target, met):
        rows.append({"what": what, "value": value, "target": target,
                     "met": None if value is None else bool(met(value))})

    variants = {v["name"]: v for v in report.get("training", {}).get("variants", [])
                if "error" not in v}
    fp32, default = variants.get("NCHW fp32"), variants.get("train.py default")
    # Two fp32 baselines: strict (TF32 off) and `--amp off` as PyTorch runs it (cuDNN TF32 on by
    # default); on the CPU there is no TF32 and the two are one computation.
    amp_off = variants.get(AMP_OFF_TF32, fp32 if report["device"] == "cpu" else None)
    for label, base in (("NCHW fp32 strict (TF32 off)", fp32),
                        ("NCHW --amp off (cuDNN TF32)", amp_off)):
        add(f"train.py default / {label}, in memory",
            default and base and default["in_memory_images_per_s"]
            / base["in_memory_images_per_s"],
            f">= {TARGETS['mixed_over_fp32']}", lambda v: v >= TARGETS["mixed_over_fp32"])
    add("data path time / in memory (train.py default)",
        default and default["data_path_time_over_in_memory"],
        f"<= {TARGETS['data_path_overhead']}", lambda v: v <= TARGETS["data_path_overhead"])
    cam = report.get("gradcam", {})
    add("Grad-CAM 8 classes time / plain forward", cam.get("gradcam_time_over_forward"),
        f"<= {TARGETS['gradcam_over_forward']}", lambda v: v <= TARGETS["gradcam_over_forward"])
    for name in ("fp32", "as_localization"):
        add(f"max map difference to the CPU ({name})", cam.get(f"{name}_max_map_difference"),
            f"<= {TARGETS['map_difference']}", lambda v: v <= TARGETS["map_difference"])
    add("original recipe on the NIH release, minutes", report.get("projection", {}).get("minutes"),
        f"< {TARGETS['projected_minutes']}", lambda v: v < TARGETS["projected_minutes"])
    if "torchrun" in report["args"]["parts"]:  # a row where the part was asked for
        add("train.py epoch under torchrun --nproc_per_node 1 / plain",
            report.get("torchrun", {}).get("torchrun_over_plain"), f"<= {torchrun_speed.TARGET}",
            lambda v: v <= torchrun_speed.TARGET)
    chain = report.get("chain", {})
    add("bundle's box file == denseNet_localization's", chain.get("bundle_equals_localization"),
        "equal", bool)
    return rows


def table(report: dict) -> str:
    """One table: what was measured and the targets."""
    lines = [f"gpu_check on {report['device']} ({report['size']} sizes); {report['machine']}"]
    chain = report.get("chain")
    if chain:
        lines.append(f"  chain: train.py on {chain['train_device']} in {chain['train_precision']}; "
                     f"the bundle on {chain['bundle_device']}; {chain['boxes']} boxes; seconds "
                     + ", ".join(f"{k} {v:.0f}" for k, v in chain["seconds"].items()))
    for v in report.get("training", {}).get("variants", []):
        if "error" in v:
            lines.append(f"  training {v['name']}: {v['error']}")
            continue
        memory = "" if v["peak_memory_mib"] is None else f", peak {v['peak_memory_mib']:.0f} MiB"
        tf32 = {None: "", True: ", cuDNN TF32 on", False: ", TF32 off"}[v.get("cudnn_tf32")]
        lines.append(f"  training {v['name']} ({v['precision']}, "
                     f"{'channels_last' if v['channels_last'] else 'NCHW'}{tf32}): in memory "
                     f"{v['in_memory_images_per_s']:.1f} images/s, data path "
                     f"{v['data_path_images_per_s']:.1f}{memory}")
    for workers, rate in report.get("training", {}).get("loader_alone_images_per_s", {}).items():
        lines.append(f"  data path to the device, no step, {workers} workers: {rate:.0f} images/s")
    rates = report.get("loader", {}).get("crops_and_batches_images_per_s", {})
    if rates:
        lines.append("  crops and batches alone (workers: images/s): "
                     + ", ".join(f"{w}: {r:.0f}" for w, r in rates.items()))
    if "localization" in report:
        loc = report["localization"]
        lines.append(f"  localization end to end, all 8 classes active: "
                     f"{loc['images_per_s']:.1f} images/s after the first batch (start-up and "
                     f"first batch {loc['start_up_and_first_batch_s']:.1f} s; "
                     f"{loc['images_per_s_with_start_up']:.1f} images/s with them)")
    if "projection" in report:
        p = report["projection"]
        lines.append(f"  projection: {p['epochs']} epochs x {p['repeats']} repeats x "
                     f"{p['train_images']} images = {p['train_minutes']:.1f} min training + "
                     f"{p['valid_minutes']:.1f} min validation")
    lines.append(f"  {'target':<60} {'measured':>12} {'aim':>9}  verdict")
    for row in report["targets"]:
        value = row["value"]
        shown = "-" if value is None else str(value) if isinstance(value, bool) else f"{value:.4g}"
        verdict = {None: "not run", True: "met", False: "MISSED"}[row["met"]]
        lines.append(f"  {row['what']:<60} {shown:>12} {row['target']:>9}  {verdict}")
    for part, error in report["errors"].items():
        lines.append(f"  FAILED {part}: {error.splitlines()[-1] if error else ''}")
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
