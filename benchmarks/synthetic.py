"""A ChestX-ray14-shaped dataset with synthetic findings whose class, size and position are known.

    python3 benchmarks/synthetic.py OUT_DIR [--n-train N --n-valid N --n-test N --seed S]

Real X-rays (sample/images) are the backgrounds, each varied by a random flip, a small
rotation/scale/shift and a brightness change, so there are many more distinct backgrounds
than files. Into them we plant findings of PLANTED_CLASSES, far stronger than real ones so
that a DenseNet-121 trained from scratch on a CPU for minutes can learn them:

    Nodule        a small bright disc, 60-80 px across (in the 1024 image)
    Mass          a large soft bright opacity, an ellipse of 250-350 px per axis
    Pneumothorax  a large dark ellipse, 200-300 px per axis

An image has none ('No Finding'), one, or two different findings, never overlapping, each
wholly inside the part of the image that the network's 224 centre crop sees (1024 px
64..960). The recorded box is the finding's exact extent (the ellipse's bounding rectangle).

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


@dataclass(frozen=True)
class FindingKind:
    """How one planted class looks: its shape's size range (px, 1024 frame) and its rendering."""
    size: tuple[int, int]  # each axis drawn uniformly from [lo, hi]
    round: bool  # a circle (w == h) rather than an ellipse with independent axes
    strength: float  # bright: share of the way to white at the centre; dark: share of the pixel removed
    bright: bool
    edge: float  # width of the soft rim, as a share of the radius (0 = hard, anti-aliased edge)


PLANTED_CLASSES = {
    "Nodule": FindingKind(size=(60, 80), round=True, strength=0.85, bright=True, edge=0.0),
    "Mass": FindingKind(size=(250, 350), round=False, strength=0.6, bright=True, edge=0.35),
    "Pneumothorax": FindingKind(size=(200, 300), round=False, strength=0.7, bright=False, edge=0.15),
}

# The finding combinations, in a cycle that every split walks through in its own shuffled
# order: a quarter 'No Finding', 3/8 one finding, 3/8 two; each class is positive in 3/8.
COMPOSITIONS = ((), ("Nodule",), ("Mass",), ("Pneumothorax",), ("Mass", "Nodule"),
                ("Nodule", "Pneumothorax"), ("Mass", "Pneumothorax"), ())

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


def vary_background(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A new background from a real one: flip, rotate +-5 deg, scale 0.95-1.1, shift +-40 px, gain/offset."""
    image = base[:, ::-1] if rng.random() < 0.5 else base
    centre = (ORIGINAL_SIZE / 2, ORIGINAL_SIZE / 2)
    matrix = cv2.getRotationMatrix2D(centre, rng.uniform(-5, 5), rng.uniform(0.95, 1.1))
    matrix[:, 2] += rng.uniform(-40, 40, size=2)
    warped = cv2.warpAffine(np.ascontiguousarray(image), matrix, (ORIGINAL_SIZE, ORIGINAL_SIZE),
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    gain, offset = rng.uniform(0.85, 1.15), rng.uniform(-15, 15)
    return np.clip(warped.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


def shape_mask(w: int, h: int, edge: float) -> np.ndarray:
    """float32 (h, w) weight in [0, 1] of the ellipse that fills a w x h box.

    1 inside, falling to 0 at the ellipse over the outer `edge` share of the radius (a cosine
    ramp); edge 0 is a hard edge, anti-aliased over one pixel.
    """
    ys = (np.arange(h, dtype=np.float32) + 0.5 - h / 2) / (h / 2)  # pixel centres, -1..1 across the box
    xs = (np.arange(w, dtype=np.float32) + 0.5 - w / 2) / (w / 2)
    r = np.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2)  # (h, w), 1 on the ellipse
    if edge <= 0:
        return np.clip((1 - r) * min(w, h) / 2 + 0.5, 0, 1)  # ~distance to the rim in pixels, +-0.5
    ramp = np.clip((1 - r) / edge, 0, 1)
    return (0.5 - 0.5 * np.cos(np.pi * ramp)).astype(np.float32)


def plant(image: np.ndarray, finding: Planted) -> None:
    """Render one finding into the uint8 (1024, 1024) image, in place, inside its (integer) box."""
    kind = PLANTED_CLASSES[finding.label]
    x, y, w, h = finding.x, finding.y, finding.w, finding.h
    weight = shape_mask(w, h, kind.edge) * kind.strength  # (h, w)
    patch = image[y:y + h, x:x + w].astype(np.float32)
    if kind.bright:
        patch += weight * (255 - patch)  # a share of the way to white: brighter than any background
    else:
        patch *= 1 - weight
    image[y:y + h, x:x + w] = np.clip(np.rint(patch), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- sampling

def place_findings(labels: tuple[str, ...], rng: np.random.Generator, tries: int = 1000) -> tuple[Planted, ...]:
    """Draw each label's size and a position wholly inside FIELD, apart from the ones already placed."""
    placed: list[Planted] = []
    for label in labels:
        kind = PLANTED_CLASSES[label]
        for _ in range(tries):
            w = int(rng.integers(kind.size[0], kind.size[1] + 1))
            h = w if kind.round else int(rng.integers(kind.size[0], kind.size[1] + 1))
            x = int(rng.integers(FIELD[0], FIELD[1] - w + 1))
            y = int(rng.integers(FIELD[0], FIELD[1] - h + 1))
            candidate = Planted(label, x, y, w, h)
            if not any(_overlap(candidate, other) for other in placed):
                placed.append(candidate)
                break
        else:
            raise RuntimeError(f"cannot place {labels} apart in {tries} tries")  # not for these sizes
    return tuple(placed)


def _overlap(a: Planted, b: Planted, margin: int = 16) -> bool:
    return (a.x < b.x + b.w + margin and b.x < a.x + a.w + margin
            and a.y < b.y + b.h + margin and b.y < a.y + a.h + margin)


def split_compositions(n: int, rng: np.random.Generator) -> list[tuple[str, ...]]:
    """n finding combinations: COMPOSITIONS repeated, each repetition in a shuffled order."""
    out: list[tuple[str, ...]] = []
    while len(out) < n:
        out.extend(COMPOSITIONS[i] for i in rng.permutation(len(COMPOSITIONS)))
    return out[:n]


def image_name(index: int) -> str:
    return f"{FIRST_PATIENT + index}_000.png"


def make_image(index: int, labels: tuple[str, ...], seed: int,
               backgrounds: list[np.ndarray]) -> tuple[tuple[Planted, ...], np.ndarray, np.random.Generator]:
    """Image `index`: its findings, its uint8 (1024, 1024) pixels, and its generator (for the table's extras)."""
    rng = np.random.default_rng([seed, index])
    # The background first, with a fixed number of draws: the same index gives the same background
    # whatever its labels (the tests compare an image with its finding-free twin).
    image = vary_background(backgrounds[int(rng.integers(len(backgrounds)))], rng)
    findings = place_findings(labels, rng)
    for finding in findings:
        plant(image, finding)
    return findings, image, rng


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
    return parser


def main(args: argparse.Namespace) -> list[Record]:
    sizes = {"train": args.n_train, "valid": args.n_valid, "test": args.n_test}
    for split, n in sizes.items():
        if n < 1:
            raise InputError(f"--n-{split} {n}: need at least 1 image")
    records = generate(args.out_dir, sizes, args.seed, args.backgrounds)
    print(f"wrote {len(records)} images to {args.out_dir}\n{summary(records)}")
    return records


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
