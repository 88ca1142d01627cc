"""The box file, the project's output contract with its users and the grading platform.

Per image, a header line `[image_path] [number_of_detection]`, then that many lines
`[disease] [x] [y] [width] [height]`, coordinates in pixels of the 1024x1024 image, '%.1f'.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from chexnet.utils import InputError, atomic_path


@dataclass(frozen=True)
class Box:
    label: str
    x: float
    y: float
    w: float
    h: float

    def line(self) -> str:
        return f"{self.label} {self.x:.1f} {self.y:.1f} {self.w:.1f} {self.h:.1f}"


@dataclass
class ImageBoxes:
    image_path: str
    boxes: list[Box] = field(default_factory=list)


def format_box_file(entries: Iterable[ImageBoxes]) -> str:
    lines = []
    for entry in entries:
        lines.append(f"{entry.image_path} {len(entry.boxes)}")
        lines.extend(box.line() for box in entry.boxes)
    return "".join(line + "\n" for line in lines)


def write_box_file(path: str | os.PathLike, entries: Iterable[ImageBoxes]) -> None:
    """Write the whole file through a temporary name: readers never see half of it."""
    text = format_box_file(entries)
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_box_file(path: str | os.PathLike) -> list[ImageBoxes]:
    """Parse a box file (ours or the original's); a malformed line is an InputError naming it."""
    lines = Path(path).read_text().splitlines()
    entries: list[ImageBoxes] = []
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        entry, count = _parse_header(path, i, lines[i])
        for j in range(i + 1, i + 1 + count):
            if j >= len(lines) or not lines[j].strip():
                raise InputError(f"{path}:{i + 1}: header says {count} boxes, found {j - i - 1}")
            entry.boxes.append(_parse_box(path, j, lines[j]))
        entries.append(entry)
        i += 1 + count
    return entries


def _parse_header(path, index: int, line: str) -> tuple[ImageBoxes, int]:
    if _looks_like_box(line):  # 'Mass 1 2 3 4' would read as image 'Mass 1 2 3' with 4 boxes
        raise InputError(f"{path}:{index + 1}: a box line where '[image_path] "
                         "[number_of_detection]' was expected (the count of the header above is "
                         f"smaller than its box lines): {line!r}")
    parts = line.rsplit(None, 1)
    if len(parts) != 2 or not parts[1].isdigit():
        raise InputError(f"{path}:{index + 1}: expected '[image_path] [number_of_detection]', "
                         f"got {line!r}")
    return ImageBoxes(parts[0]), int(parts[1])


def _looks_like_box(line: str) -> bool:
    """Five fields, the last four numbers: a box line, never an image header."""
    parts = line.split()
    if len(parts) != 5:
        return False
    try:
        [float(v) for v in parts[1:]]
    except ValueError:
        return False
    return True


def _parse_box(path, index: int, line: str) -> Box:
    parts = line.split()
    try:
        if len(parts) != 5:
            raise ValueError
        x, y, w, h = (float(v) for v in parts[1:])
    except ValueError:
        raise InputError(
            f"{path}:{index + 1}: expected '[disease] [x] [y] [width] [height]', "
            f"got {line!r}") from None
    return Box(parts[0], x, y, w, h)
