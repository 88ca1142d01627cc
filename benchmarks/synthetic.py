"""A ChestX-ray14-shaped dataset with synthetic findings whose class, size and position are known.

    python3 benchmarks/synthetic.py OUT_DIR [--n-train N --n-valid N --n-test N --seed S]
    python3 benchmarks/synthetic.py OUT_DIR --sheet SHEET.png   # also a contact sheet per class

Real X-rays (sample/images) are the backgrounds, each varied by a random flip, a small
rotation/scale/shift and a brightness change, so there are many more distinct backgrounds
than files. Into them we plant the eight box findings of the NIH release (PLANTED_CLASSES),
each a box of its class drawn from the release's real box table, in its real place and size
(mirrored with a flipped background), and rendered as benchmarks/findings.py says: far stronger
than real findings, so that a DenseNet-121 trained from scratch on a CPU for minutes can learn
them, but each with the look of its radiology (docs/benchmark_eight_findings.md).

An image has none ('No Finding'), one, two or three different findings (MULTIPLICITIES), never
overlapping, each wholly inside the part of the image that the network's 224 centre crop sees
(1024 px 64..960). The recorded box is the finding's extent: its weight reaches the box's sides.

OUT_DIR/
  images/90000001_000.png ...  1024x1024 uint8 gray
  Data_Entry_2017.csv          the NIH label table's columns (2020 revision)
  BBox_List_2017.csv           the planted box of EVERY finding of EVERY image (train too: training
                               never reads it; preprocessing keeps the validation images' boxes)
  train.txt valid.txt test.txt one image name a line

Everything follows from --seed: image i draws from numpy's generator seeded with (seed, i).
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python3 benchmarks/synthetic.py`: the project modules live one up
    sys.path.insert(0, str(ROOT))

from chexnet.utils import InputError, atomic_path, run_cli, write_text_atomic  # noqa: E402
from chexnet.constants import CROP_OFFSET, NO_FINDING, ORIGINAL_SIZE, RESCALE_FACTOR  # noqa: E402
from chexnet.images import read_xray  # noqa: E402
from benchmarks import findings  # noqa: E402


PLANTED_CLASSES = findings.LOOKS  # the 8 box classes, in the box table's order

# Findings per image, in a cycle of 16 that every split walks through in its own shuffled order:
# 2 'No Finding', 6 with one finding, 6 with two, 2 with three: 24 findings, each class 3 times
# (positive in 3/16 of the images). The release has 1.12 boxes per box image (984 on 880); we
# plant more per image so that each class gets enough positives to be learnt in minutes.
MULTIPLICITIES = (0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3)
PASSES = sum(MULTIPLICITIES) // len(PLANTED_CLASSES)  # shuffled passes over the classes that fill one cycle's 24 slots

# The part of the 1024 image inside the 224 centre crop of the 256 stored image: 64..960.
FIELD = (CROP_OFFSET * RESCALE_FACTOR, ORIGINAL_SIZE - CROP_OFFSET * RESCALE_FACTOR)
FIRST_PATIENT = 90000001  # NIH patient ids stop at 30805: these names cannot collide with real ones
SPLITS = ("train", "valid", "test")
DATA_ENTRY_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
                     "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"


@dataclass(frozen=True)
class Planted:
    label: str
    x: int  # top-left corner and size of the finding's extent, whole pixels of the 1024 frame
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class Record:
    name: str
    split: str
    findings: tuple[Planted, ...]
    age: int
    gender: str


# ---------------------------------------------------------------- drawing

def load_backgrounds(folder: str | Path) -> list[np.ndarray]:
    """Every PNG of the folder as a uint8 (1024, 1024) gray image; other sizes are refused."""
    paths = sorted(Path(folder).glob("*.png"))
    if not paths:
        raise InputError(f"{folder}: no .png images to use as backgrounds")
    images = [read_xray(p) for p in paths]
    for path, image in zip(paths, images):
        if image.shape != (ORIGINAL_SIZE, ORIGINAL_SIZE):
            raise InputError(f"{path}: background is {image.shape[1]}x{image.shape[0]}, "
                             f"expected {ORIGINAL_SIZE}x{ORIGINAL_SIZE}")
    return images


def vary_background(base: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """A new background from a real one: flip, rotate +-5 deg, scale 0.95-1.1, shift +-40 px,
    gain/offset; and whether it was flipped left-right (the boxes follow)."""
    flipped = bool(rng.random() < 0.5)
    image = base[:, ::-1] if flipped else base
    centre = (ORIGINAL_SIZE / 2, ORIGINAL_SIZE / 2)
    matrix = cv2.getRotationMatrix2D(centre, rng.uniform(-5, 5), rng.uniform(0.95, 1.1))
    matrix[:, 2] += rng.uniform(-40, 40, size=2)
    warped = cv2.warpAffine(np.ascontiguousarray(image), matrix, (ORIGINAL_SIZE, ORIGINAL_SIZE),
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    gain, offset = rng.uniform(0.85, 1.15), rng.uniform(-15, 15)
    return np.clip(warped.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8), flipped


def plant(image: np.ndarray, finding: Planted, rng: np.random.Generator) -> None:
    """Render one finding into the uint8 (1024, 1024) image, in place, inside its (integer) box."""
    look = PLANTED_CLASSES[finding.label]
    x, y, w, h = finding.x, finding.y, finding.w, finding.h
    lateral_left = x + w / 2 < findings.MIDLINE  # its chest wall is on the image's left
    weight = look.draw(w, h, lateral_left, rng) * look.strength  # (h, w)
    patch = image[y:y + h, x:x + w].astype(np.float32)
    if look.flatten:  # markings gone: the patch's own blur where the weight is
        smooth = cv2.GaussianBlur(patch, (0, 0), 12.0, borderType=cv2.BORDER_REFLECT)
        keep = np.clip(weight / look.strength, 0, 1)
        patch = patch * (1 - keep) + smooth * keep
    if look.bright:
        patch += weight * (255 - patch)  # a share of the way to white: brighter than any background
    else:  # a negative weight (a pleural line) brightens
        patch *= 1 - weight
    image[y:y + h, x:x + w] = np.clip(np.rint(patch), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- sampling

def draw_box(label: str, rng: np.random.Generator, flipped: bool = False) -> Planted:
    """A real box of the class (its size and place), mirrored if the background was, jittered,
    then moved (not resized, unless larger than the field) wholly inside FIELD."""
    table = findings.real_boxes()[label]
    x, y, w, h = table[int(rng.integers(len(table)))]
    if flipped:
        x = ORIGINAL_SIZE - x - w
    span = FIELD[1] - FIELD[0]
    w, h = min(int(round(w)), span), min(int(round(h)), span)
    x = int(round(x + rng.uniform(-findings.JITTER, findings.JITTER)))
    y = int(round(y + rng.uniform(-findings.JITTER, findings.JITTER)))
    x, y = min(max(x, FIELD[0]), FIELD[1] - w), min(max(y, FIELD[0]), FIELD[1] - h)
    return Planted(label, x, y, w, h)


def place_findings(labels: tuple[str, ...], rng: np.random.Generator, flipped: bool = False,
                   tries: int = 200, restarts: int = 50) -> tuple[Planted, ...]:
    """Each label's real box (draw_box), redrawn until it stays apart from those already placed;
    when one cannot be placed (a wide heart box leaves no room), all are drawn again."""
    for _ in range(restarts):
        placed: list[Planted] = []
        for label in labels:
            for _ in range(tries):
                candidate = draw_box(label, rng, flipped)
                if not any(_overlap(candidate, other) for other in placed):
                    placed.append(candidate)
                    break
            else:
                break
        if len(placed) == len(labels):
            return tuple(placed)
    raise RuntimeError(f"cannot place {labels} apart in {restarts} x {tries} tries")


def _overlap(a: Planted, b: Planted, margin: int = 8) -> bool:
    return (a.x < b.x + b.w + margin and b.x < a.x + a.w + margin
            and a.y < b.y + b.h + margin and b.y < a.y + a.h + margin)


def cycle(rng: np.random.Generator) -> list[tuple[str, ...]]:
    """One cycle of MULTIPLICITIES, shuffled, its slots filled by PASSES shuffled passes over
    the classes, redrawn until no image has a class twice."""
    classes = list(PLANTED_CLASSES)
    while True:
        order = [classes[i] for _ in range(PASSES) for i in rng.permutation(len(classes))]
        sizes = [MULTIPLICITIES[i] for i in rng.permutation(len(MULTIPLICITIES))]
        groups, start = [], 0
        for n in sizes:
            groups.append(tuple(sorted(order[start:start + n])))
            start += n
        if all(len(set(g)) == len(g) for g in groups):
            return groups


def split_compositions(n: int, rng: np.random.Generator) -> list[tuple[str, ...]]:
    """n finding combinations: cycle() repeated."""
    out: list[tuple[str, ...]] = []
    while len(out) < n:
        out.extend(cycle(rng))
    return out[:n]


def image_name(index: int) -> str:
    return f"{FIRST_PATIENT + index}_000.png"


def make_image(index: int, labels: tuple[str, ...], seed: int, backgrounds: list[np.ndarray]
               ) -> tuple[tuple[Planted, ...], np.ndarray, np.random.Generator]:
    """Image `index`: its findings, its uint8 (1024, 1024) pixels, and its generator (for the
    table's extras)."""
    rng = np.random.default_rng([seed, index])
    # The background first, with a fixed number of draws: the same index gives the same background
    # whatever its labels (the tests compare an image with its finding-free twin).
    image, flipped = vary_background(backgrounds[int(rng.integers(len(backgrounds)))], rng)
    placed = place_findings(labels, rng, flipped)
    for finding in placed:
        plant(image, finding, rng)
    return placed, image, rng


# ---------------------------------------------------------------- writing

def write_png(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"{path}: PNG encoding failed")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())


def data_entry_text(records: list[Record]) -> str:
    lines = [DATA_ENTRY_HEADER]
    for r in records:
        labels = "|".join(sorted(f.label for f in r.findings)) or NO_FINDING
        patient = r.name.split("_")[0]
        lines.append(f"{r.name},{labels},0,{patient},{r.age},{r.gender},PA,{ORIGINAL_SIZE},{ORIGINAL_SIZE},0.143,0.143")
    return "\n".join(lines) + "\n"


def bbox_text(records: list[Record]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for r in records:
        for f in r.findings:
            writer.writerow([r.name, f.label, f.x, f.y, f.w, f.h])
    return BBOX_HEADER + "\n" + buf.getvalue()


def generate(out_dir: str | Path, sizes: dict[str, int], seed: int, backgrounds_dir: str | Path) -> list[Record]:
    """Write the whole dataset (see the module docstring) and return its records."""
    out = Path(out_dir)
    backgrounds = load_backgrounds(backgrounds_dir)
    layout_rng = np.random.default_rng([seed, 2 ** 31])  # apart from every image's (seed, index)
    plan = [(split, labels) for split in SPLITS for labels in split_compositions(sizes[split], layout_rng)]
    records = []
    for index, (split, labels) in enumerate(tqdm(plan, desc="synthetic images", unit="img", file=sys.stderr)):
        findings, image, rng = make_image(index, labels, seed, backgrounds)
        name = image_name(index)
        write_png(out / "images" / name, image)
        records.append(Record(name, split, findings, int(rng.integers(20, 80)), "MF"[int(rng.integers(2))]))
    write_text_atomic(out / "Data_Entry_2017.csv", data_entry_text(records))
    write_text_atomic(out / "BBox_List_2017.csv", bbox_text(records))
    for split in SPLITS:
        write_text_atomic(out / f"{split}.txt", "".join(r.name + "\n" for r in records if r.split == split))
    return records


def summary(records: list[Record]) -> str:
    """One line per split: images, 'No Finding' images, and findings per class."""
    lines = []
    for split in SPLITS:
        mine = [r for r in records if r.split == split]
        counts = {c: sum(1 for r in mine for f in r.findings if f.label == c) for c in PLANTED_CLASSES}
        none = sum(1 for r in mine if not r.findings)
        lines.append(f"{split}: {len(mine)} images, {none} {NO_FINDING}, "
                     + ", ".join(f"{c} {n}" for c, n in counts.items()))
    return "\n".join(lines)


def contact_sheet(out_dir: str | Path, records: list[Record], path: str | Path,
                  per_class: int = 3, cell: int = 200) -> np.ndarray:
    """One row per class: `per_class` examples, each the whole image (the planted box in red)
    and a close-up of the box with a quarter of its size around it (no outline), written to
    `path` as PNG; returns the uint8 (rows, cols, 3) sheet."""
    rows = []
    for label in PLANTED_CLASSES:
        found = [(r.name, f) for r in records for f in r.findings if f.label == label][:per_class]
        cells = []
        for name, f in found:
            image = read_xray(Path(out_dir) / "images" / name)
            whole = cv2.cvtColor(cv2.resize(image, (cell, cell), interpolation=cv2.INTER_AREA),
                                 cv2.COLOR_GRAY2BGR)
            k = cell / ORIGINAL_SIZE
            cv2.rectangle(whole, (int(f.x * k), int(f.y * k)),
                          (int((f.x + f.w) * k), int((f.y + f.h) * k)), (0, 0, 255), 1)
            m = max(f.w, f.h) // 4
            crop = image[max(f.y - m, 0):f.y + f.h + m, max(f.x - m, 0):f.x + f.w + m]
            zoom = cv2.resize(crop, (cell, cell), interpolation=cv2.INTER_AREA)
            cells += [whole, cv2.cvtColor(zoom, cv2.COLOR_GRAY2BGR)]
        cells += [np.zeros((cell, cell, 3), np.uint8)] * (2 * per_class - len(cells))
        row = np.concatenate(cells, axis=1)
        cv2.putText(row, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 255), 1,
                    cv2.LINE_AA)
        rows.append(row)
    sheet = np.concatenate(rows, axis=0)
    write_png(Path(path), sheet)
    return sheet


# ---------------------------------------------------------------- command line

def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write a ChestX-ray14-shaped dataset of real X-ray backgrounds "
                                     "with planted synthetic findings of known class, size and position.")
    parser.add_argument("out_dir", type=str, help="output folder (images/, the two NIH tables, the three lists)")
    parser.add_argument("--n-train", type=int, default=320, help="training images (default: 320)")
    parser.add_argument("--n-valid", type=int, default=64, help="validation images (default: 64)")
    parser.add_argument("--n-test", type=int, default=64, help="test images (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything drawn (default: 0)")
    parser.add_argument("--backgrounds", type=str, default=str(ROOT / "sample" / "images"),
                        help="folder of real 1024x1024 X-ray PNGs (default: the project's sample/images)")
    parser.add_argument("--sheet", type=str, default=None,
                        help="also write a contact sheet PNG: per class 3 examples, the whole "
                             "image with its box and a close-up (default: none)")
    parser.add_argument("--sheet-cell", type=int, default=200,
                        help="the contact sheet's cell size in px (default: 200)")
    return parser


def main(args: argparse.Namespace) -> list[Record]:
    sizes = {"train": args.n_train, "valid": args.n_valid, "test": args.n_test}
    for split, n in sizes.items():
        if n < 1:
            raise InputError(f"--n-{split} {n}: need at least 1 image")
    records = generate(args.out_dir, sizes, args.seed, args.backgrounds)
    print(f"wrote {len(records)} images to {args.out_dir}\n{summary(records)}")
    if args.sheet:
        contact_sheet(args.out_dir, records, args.sheet, cell=args.sheet_cell)
        print(f"wrote {args.sheet}")
    return records


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
