"""Draw the boxes of a box file (ours or the original project's) on their X-rays.

    python3 draw_boxes.py BOX_TXT [--images DIR] [--bbox-list CSV] [--out DIR]

For every image of the box file, writes <out>/<name>_boxes.png: the X-ray with its predicted
boxes in blue and, given --bbox-list, the ground-truth boxes of that image in red. The image
paths of the box file are used as written (relative to the current folder), unless --images
names the folder that holds the images (the original's file says ../images/NAME.png).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from boxfile import ImageBoxes, read_box_file
from common import InputError, run_cli
from constants import ORIGINAL_SIZE
from images import read_xray
from tables import TruthBox, boxes_by_image, read_bbox_list


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Draw a box file's boxes (blue) and, optionally, "
                                                 "the true boxes (red) on the X-rays.")
    parser.add_argument("box_txt", type=Path, help="box file: '[image_path] [n]' then n '[class] x y w h' lines")
    parser.add_argument("--images", type=Path, default=None,
                        help="folder holding the images, replacing the folder of each path in the box file "
                             "(default: None, use the paths as written, relative to the current folder)")
    parser.add_argument("--bbox-list", type=Path, default=None,
                        help="ground-truth table (BBox_List_2017.csv) whose boxes are drawn in red "
                             "(default: None, no truth boxes)")
    parser.add_argument("--out", type=Path, default=Path("output/boxes"),
                        help="folder for the <name>_boxes.png pictures (default: output/boxes)")
    parser.add_argument("--size", type=int, default=ORIGINAL_SIZE,
                        help=f"width and height of each picture in pixels (default: {ORIGINAL_SIZE}, "
                             "one pixel per X-ray pixel)")
    return parser


def image_path(entry: ImageBoxes, images: Path | None) -> Path:
    return images / Path(entry.image_path).name if images is not None else Path(entry.image_path)


def check_images(box_txt: Path, entries: list[ImageBoxes], images: Path | None) -> None:
    """Fail before drawing anything when an image is missing, naming it and where it was looked for."""
    for entry in entries:
        path = image_path(entry, images)
        if not path.is_file():
            hint = "" if images is not None else " (use --images DIR to name the folder of the images)"
            raise InputError(f"{box_txt}: {entry.image_path}: image not found at {path}{hint}")


def main(args: argparse.Namespace) -> None:
    import plots  # matplotlib loads only when the script runs

    if args.size < 16:
        raise InputError(f"--size {args.size}: must be at least 16 pixels")
    if not args.box_txt.is_file():
        raise InputError(f"{args.box_txt}: box file not found")
    entries = read_box_file(args.box_txt)
    check_images(args.box_txt, entries, args.images)
    truth: dict[str, list[TruthBox]] | None = None
    if args.bbox_list is not None:
        truth = boxes_by_image(read_bbox_list(args.bbox_list))
    for entry in tqdm(entries, desc="drawing", unit="image"):
        path = image_path(entry, args.images)
        name = Path(entry.image_path).name
        image = read_xray(path)
        if image.shape != (ORIGINAL_SIZE, ORIGINAL_SIZE):
            raise InputError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, expected "
                             f"{ORIGINAL_SIZE}x{ORIGINAL_SIZE} (the frame of the box file)")
        plots.boxes_figure(image, entry.boxes, truth.get(name, []) if truth is not None else None, None,
                           args.out / f"{Path(name).stem}_boxes.png", title=name, size=args.size)
    print(f"wrote {len(entries)} picture(s) into {args.out}")


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
