"""Draw the boxes of a box file (ours or the original project's) on their X-rays.

    python3 tools/draw_boxes.py BOX_TXT [--images DIR] [--bbox-list CSV] [--out DIR]

For every image of the box file, writes <out>/<name>_boxes.png: the X-ray with its predicted
boxes in blue and, given --bbox-list, the ground-truth boxes of that image in red. The image
paths of the box file are used as written (relative to the current folder), unless --images
names the folder that holds the images (the original's file says ../images/NAME.png).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root: chexnet/, model.py

from chexnet.boxfile import ImageBoxes, read_box_file  # noqa: E402
from chexnet.constants import ORIGINAL_SIZE  # noqa: E402
from chexnet.images import check_images_exist, image_paths, read_xray  # noqa: E402
from chexnet.nih import TruthBox, read_truth_by_image  # noqa: E402
from chexnet.utils import InputError, run_cli  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Draw a box file's boxes (blue) and, optionally, "
                                                 "the true boxes (red) on the X-rays.")
    parser.add_argument("box_txt", type=Path,
                        help="box file: '[image_path] [n]' then n '[class] x y w h' lines")
    parser.add_argument("--images", type=Path, default=None,
                        help="folder holding the images (at any depth beneath it), replacing "
                             "the folder of each path in the box file "
                             "(default: None, use the paths as written, relative to the current "
                             "folder)")
    parser.add_argument("--bbox-list", type=Path, default=None,
                        help="ground-truth table (BBox_List_2017.csv) whose boxes are drawn in red "
                             "(default: None, no truth boxes)")
    parser.add_argument("--out", type=Path, default=Path("output/boxes"),
                        help="folder for the <name>_boxes.png pictures (default: output/boxes)")
    parser.add_argument("--size", type=int, default=ORIGINAL_SIZE,
                        help=f"width of each picture in pixels; the height keeps the image's "
                             f"aspect "
                             f"(default: {ORIGINAL_SIZE}, one pixel per pixel of a 1024x1024 "
                             f"X-ray)")
    return parser


def image_path_list(entries: list[ImageBoxes], images: Path | None) -> list[Path]:
    """The box file's paths, or with --images each name found in that folder (at any depth)."""
    if images is None:
        return [Path(e.image_path) for e in entries]
    return [Path(p) for p in image_paths(images, [Path(e.image_path).name for e in entries])]


def main(args: argparse.Namespace) -> None:
    from chexnet import localization_figures  # matplotlib loads only when the script runs

    if args.size < 16:
        raise InputError(f"--size {args.size}: must be at least 16 pixels")
    if not args.box_txt.is_file():
        raise InputError(f"{args.box_txt}: box file not found")
    entries = read_box_file(args.box_txt)
    hint = "" if args.images is not None else " (use --images DIR to name the folder of the images)"
    paths = image_path_list(entries, args.images)
    check_images_exist(paths, args.box_txt, hint=hint)
    truth: dict[str, list[TruthBox]] | None = None
    if args.bbox_list is not None:
        truth = read_truth_by_image(args.bbox_list)
    for entry, path in tqdm(list(zip(entries, paths)), desc="drawing", unit="image"):
        name = Path(entry.image_path).name
        image = read_xray(path)  # any size: the box file is in its own pixels
        localization_figures.boxes_figure(image, entry.boxes,
                                          truth.get(name, []) if truth is not None else None, None,
                                          args.out / f"{Path(name).stem}_boxes.png", title=name,
                                          size=args.size, frame=(image.shape[1], image.shape[0]))
    print(f"wrote {len(entries)} picture(s) into {args.out}")


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
