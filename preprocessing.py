"""Turn the NIH release into the preprocessed folder that train.py reads (see preprocessed.py).

    python3 preprocessing.py IMAGES DATA_ENTRY BBOX_LIST TRAIN_TXT VALID_TXT OUT_DIR [--workers N]

Everything is checked before anything is written: the tables, the lists (duplicates, names
absent from the label table, empty lists) and the presence of every image. Images are then
decoded by a pool of worker processes, each writing its run of rows (list order) of the uint8
.npy through a short-lived memory map, so no pixels travel between processes and peak memory
does not grow with the number of images. Arrays are written under temporary names and renamed
at the end; meta.json comes last, so a folder with meta.json is complete and a failed run
leaves no such folder behind. Images of any size (at least 256 px a side) are resized to 256x256;
meta.json keeps each one's original (width, height), which maps boxes back to its pixels.
--input-size 448 stores 512x512 images instead, for a network that sees 448 crops (geometry.py).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from chexnet import preprocessed
from chexnet.utils import (InputError, atomic_path, remove_stale_temporaries, run_cli, usable_cpus,
                           write_text_atomic)
from chexnet.constants import CLASS_SETS, CROP_SIZE
from chexnet.geometry import INPUT_SIZES, geometry
from chexnet.images import (DEFAULT_RESIZE, RESIZE_METHODS, check_images_exist, check_resize,
                            default_resize, image_paths)
from chexnet.preprocessed import DEFAULT_CHUNK, store_images
from chexnet.nih import (LabelRow, TruthBox, label_matrix, read_bbox_list, read_data_entry,
                         read_image_list_lines)

# PNG decoding scales with cores; beyond ~16 processes the disk is the limit.
DEFAULT_WORKERS = min(usable_cpus(), 16)


@dataclass
class SplitPlan:
    """One list, validated: names in list order, their label matrix and their image paths."""
    name: str  # 'train' or 'valid'
    list_path: str
    names: list[str]
    lines: list[int]  # line number in the list file of each name
    labels: np.ndarray  # uint8 (N, C)
    paths: list[str]
    sizes: list[list[int]] | None = None  # [width, height] of each image, once decoded


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("images", type=str,
                        help="folder of the NIH PNGs (IMAGES), flat or nested at any depth "
                             "(Kaggle's images_001/images/...)")
    parser.add_argument("data_entry", type=str,
                        help="label table, Data_Entry_2017.csv or its 2020 revision")
    parser.add_argument("bbox_list", type=str, help="box table, BBox_List_2017.csv")
    parser.add_argument("train_txt", type=str, help="training list, one image name a line")
    parser.add_argument("valid_txt", type=str, help="validation list, one image name a line")
    parser.add_argument("out_dir", type=str,
                        help="output folder (the contract is in preprocessed.py)")
    parser.add_argument("--classes", type=int, default=8, choices=sorted(CLASS_SETS),
                        help="8, the original's box classes, or 14, all ChestX-ray14 findings in "
                             "CheXNet's order; later stages read them from meta.json (default: 8)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help="decoding processes; 1 decodes in this process "
                             f"(default: the usable CPUs, at most 16: {DEFAULT_WORKERS} here)")
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK,
                        help=f"images per task handed to a worker (default: {DEFAULT_CHUNK})")
    parser.add_argument("--resize", type=str, default=None, choices=RESIZE_METHODS,
                        help="1024 -> 256: original (the original project's pixels: bilinear "
                             "without "
                             "anti-aliasing, then its truncation; 256 only) or area (OpenCV's "
                             f"area average, every pixel counted) (default: {DEFAULT_RESIZE}; "
                             "area with another --input-size)")
    parser.add_argument("--input-size", type=int, default=CROP_SIZE, choices=INPUT_SIZES,
                        help="side of the crops the network will see: images are stored at "
                             "input size * 256 / 224 (512 for 448); train.py and localization "
                             f"follow the folder (default: {CROP_SIZE}, the original's)")
    parser.add_argument("--quiet", action="store_true", default=False,
                        help="no progress bar and no summary; warnings and errors still show "
                             "(default: off)")
    return parser


# ---------------------------------------------------------------- validation (writes nothing)

def plan_split(split: str, list_path: str, images: str, table: dict[str, LabelRow],
               class_names=CLASS_SETS[8]) -> SplitPlan:
    """Read and check one list: duplicates and unknown names are errors naming the line."""
    entries = read_image_list_lines(list_path)
    first_line: dict[str, int] = {}
    for line, name in entries:
        if name in first_line:
            raise InputError(f"{list_path}: line {line}: {name} repeats line {first_line[name]}")
        first_line[name] = line
    names = [name for _, name in entries]
    lines = [line for line, _ in entries]
    labels = label_matrix(names, table, list_path, class_names, line_numbers=lines)
    paths = image_paths(images, names)  # IMAGES/name, else found beneath IMAGES
    return SplitPlan(split, list_path, names, lines, labels, paths)


def warn_leaks(train: SplitPlan, valid: SplitPlan, table: dict[str, LabelRow]) -> None:
    """The split leaks when an image, or a patient, is in both lists: warn, the user decides."""
    both = sorted(set(train.names) & set(valid.names))
    if both:
        warn(f"{len(both)} image(s) are in both {train.list_path} and {valid.list_path} "
             f"(the split leaks), e.g. {', '.join(both[:3])}")
    patients = sorted({table[n].patient_id for n in train.names}
                      & {table[n].patient_id for n in valid.names})
    if patients:
        warn(f"{len(patients)} patient(s) have images in both {train.list_path} and "
             f"{valid.list_path} "
             f"(the split leaks by patient), e.g. patient {', '.join(patients[:3])}")


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def write_images(plan: SplitPlan, path: Path, args: argparse.Namespace) -> None:
    progress = tqdm(total=len(plan.paths), desc=f"{plan.name} images", unit="img",
                    disable=args.quiet,
                    file=sys.stderr, dynamic_ncols=True)
    with progress:
        plan.sizes = [[0, 0]] * len(plan.paths)
        for done in store_images(plan.paths, path, args.workers, args.chunk, args.resize,
                                 plan.sizes, geometry(args.input_size).stored_size):
            progress.update(done)


def write_boxes(path: Path, boxes: list[TruthBox], names: list[str]) -> int:
    """valid_boxes.csv: the boxes of the listed images, in list order, then table order."""
    order = {name: i for i, name in enumerate(names)}
    mine = sorted((b for b in boxes if b.image in order), key=lambda b: order[b.image])
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(preprocessed.VALID_BOXES_HEADER)
        out.writerows((b.image, b.label, repr(b.x), repr(b.y), repr(b.w), repr(b.h)) for b in mine)
    return len(mine)


# ---------------------------------------------------------------- the folder

def write_folder(out_dir: Path, train: SplitPlan, valid: SplitPlan, boxes: list[TruthBox],
                 args: argparse.Namespace) -> int:
    """Write arrays and boxes under temporary names, rename them together, then meta.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # left by a killed run
    remove_stale_temporaries(out_dir, [*preprocessed.array_names("train"),
                                       *preprocessed.array_names("valid"),
                                       preprocessed.VALID_BOXES, preprocessed.META])
    with contextlib.ExitStack() as stack:
        temp = {name: stack.enter_context(atomic_path(out_dir / name))
                for name in (*preprocessed.array_names("train"), *preprocessed.array_names("valid"),
                             preprocessed.VALID_BOXES)}
        for plan in (train, valid):
            x_name, y_name = preprocessed.array_names(plan.name)
            # a file object: np.save would add .npy to a temp name
            with open(temp[y_name], "wb") as f:
                np.save(f, plan.labels, allow_pickle=False)
            write_images(plan, temp[x_name], args)
        box_count = write_boxes(temp[preprocessed.VALID_BOXES], boxes, valid.names)
        # An older complete folder loses its meta.json before any of its files is replaced:
        # a crash during the renames below leaves an incomplete folder, never a mixed one.
        (out_dir / preprocessed.META).unlink(missing_ok=True)
    write_text_atomic(out_dir / preprocessed.META,
                      json.dumps(make_meta(train, valid, args), indent=1) + "\n")
    return box_count


def make_meta(train: SplitPlan, valid: SplitPlan, args: argparse.Namespace) -> dict:
    # input_size only where it is not 224: a default folder stays byte for byte as before the key
    sizes = {"image_size": geometry(args.input_size).stored_size} | (
        {"input_size": args.input_size} if args.input_size != CROP_SIZE else {})
    return {"format": preprocessed.FORMAT, "version": preprocessed.VERSION,
            "class_names": list(CLASS_SETS[args.classes]),
            **sizes, "resize": args.resize, "train_images": train.names,
            "valid_images": valid.names,
            "train_sizes": train.sizes, "valid_sizes": valid.sizes,
            "sources": {"images": args.images, "data_entry": args.data_entry,
                        "bbox_list": args.bbox_list,
                        "train_list": args.train_txt, "valid_list": args.valid_txt}}


def print_summary(train: SplitPlan, valid: SplitPlan, box_count: int, out_dir: Path, seconds: float,
                  class_names=CLASS_SETS[8]) -> None:
    total = len(train.names) + len(valid.names)
    print(f"wrote {out_dir}: {len(train.names)} train + {len(valid.names)} valid images, "
          f"{box_count} validation boxes, in {seconds:.1f} s "
          f"({total / max(seconds, 1e-9):.1f} images/s)")
    width = max(len(c) for c in class_names)
    print(f"  {'positives':<{width}}  train  valid")
    for k, name in enumerate(class_names):
        print(f"  {name:<{width}}  {int(train.labels[:, k].sum()):5d}  "
              f"{int(valid.labels[:, k].sum()):5d}")
    print(f"  {f'none of the {len(class_names)}':<{width}}  "
          f"{int((train.labels.sum(1) == 0).sum()):5d}  "
          f"{int((valid.labels.sum(1) == 0).sum()):5d}")


def main(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    if args.workers < 1:
        raise InputError(f"--workers {args.workers}: must be at least 1")
    if args.chunk < 1:
        raise InputError(f"--chunk {args.chunk}: must be at least 1")
    if not os.path.isdir(args.images):
        raise InputError(f"{args.images}: image folder not found")
    stored = geometry(args.input_size).stored_size
    args.resize = args.resize or default_resize(stored)
    try:
        check_resize(args.resize, stored)
    except ValueError as err:
        raise InputError(f"--resize {args.resize} --input-size {args.input_size}: {err}") from None
    table = read_data_entry(args.data_entry)
    boxes = read_bbox_list(args.bbox_list)
    classes = CLASS_SETS[args.classes]
    train = plan_split("train", args.train_txt, args.images, table, classes)
    valid = plan_split("valid", args.valid_txt, args.images, table, classes)
    check_images_exist(train.paths, train.list_path, train.lines)
    check_images_exist(valid.paths, valid.list_path, valid.lines)
    warn_leaks(train, valid, table)
    out_dir = Path(args.out_dir)
    box_count = write_folder(out_dir, train, valid, boxes, args)
    if not args.quiet:
        print_summary(train, valid, box_count, out_dir, time.perf_counter() - start, classes)


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
