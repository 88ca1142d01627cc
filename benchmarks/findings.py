"""How each of the eight box findings is planted: where and how large (the real NIH box table),
and what it looks like (a weight in [0, 1] over its box, following its radiology).

Sizes and positions: a box of the class drawn at random from sample/BBox_List_2017.csv, the
release's complete box table (984 boxes on 880 images; 'Infiltrate' read as 'Infiltration'),
mirrored left-right when the background was, moved by up to JITTER px and then into the field the
network sees. A drawn box keeps its real width, height and place, so each class's size
distribution and its anatomy (the heart box central, effusions basal and lateral, pneumothoraces
apical) are the release's own.

Looks (docs/benchmark_eight_findings.md shows a contact sheet): every weight reaches the four
sides of its box, so the recorded box is the finding's extent; textures come from the image's
own generator.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from chexnet.constants import ORIGINAL_SIZE
from chexnet.nih import read_bbox_list

BOX_TABLE = Path(__file__).resolve().parent.parent / "sample" / "BBox_List_2017.csv"
JITTER = 24  # px of the 1024 frame: boxes move a little, as the backgrounds do (+-40 px)
MIDLINE = ORIGINAL_SIZE / 2


@lru_cache(maxsize=None)
def real_boxes() -> dict[str, np.ndarray]:
    """Class -> float (n, 4) x, y, w, h of the release's boxes of that class (1024 frame)."""
    table: dict[str, list] = {}
    for b in read_bbox_list(BOX_TABLE):
        table.setdefault(b.label, []).append((b.x, b.y, b.w, b.h))
    return {c: np.array(v, dtype=np.float64) for c, v in table.items()}


def _grid(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates u (1, w) and v (h, 1) in (0, 1) across and down the box."""
    u = (np.arange(w, dtype=np.float32) + 0.5) / w
    v = (np.arange(h, dtype=np.float32) + 0.5) / h
    return u[None, :], v[:, None]


def _soft(d: np.ndarray, width: float) -> np.ndarray:
    """0 -> 1 cosine ramp of a signed inside-distance d (box units): 1 once d >= width."""
    ramp = np.clip(d / width, 0, 1) if width > 0 else (d > 0).astype(np.float32)
    return (0.5 - 0.5 * np.cos(np.pi * ramp)).astype(np.float32)


def ellipse(w: int, h: int, edge: float, power: float = 2.0) -> np.ndarray:
    """The (super)ellipse that fills the box, 1 inside, a soft rim over `edge` of the radius
    (edge 0: a hard edge anti-aliased over one pixel)."""
    u, v = _grid(w, h)
    r = (np.abs(2 * u - 1) ** power + np.abs(2 * v - 1) ** power) ** (1 / power)
    if edge <= 0:
        return np.clip((1 - r) * min(w, h) / 2 + 0.5, 0, 1).astype(np.float32)
    return _soft(1 - r, edge)


def _noise(w: int, h: int, cell: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise in [0, 1]: uniform values on a grid of `cell` px, bicubically upsampled."""
    gw, gh = max(2, int(round(w / cell)) + 1), max(2, int(round(h / cell)) + 1)
    coarse = rng.random((gh, gw)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)


def _lateral(u: np.ndarray, lateral_left: bool) -> np.ndarray:
    """0 at the box's side nearer the midline, 1 at its side nearer the chest wall."""
    return 1 - u if lateral_left else u


# ---------------------------------------------------------------- the eight looks
# Each: (w, h, lateral_left, rng) -> float32 (h, w) weight in [0, 1].

def nodule(w, h, lateral_left, rng):
    """A small, sharply marginated round opacity."""
    return ellipse(w, h, 0.0)


def mass(w, h, lateral_left, rng):
    """A larger opacity (> 3 cm) with a soft, slightly lobulated margin."""
    return ellipse(w, h, 0.35) * (0.85 + 0.15 * _noise(w, h, max(w, h) / 3, rng))


def pneumothorax(w, h, lateral_left, rng):
    """Air between lung and chest wall, apical and lateral: the box minus the collapsed lung (an
    ellipse about the box's medial lower corner), darkened, its lung markings gone (Look.flatten),
    bounded by a thin bright visceral pleural line (that line is negative weight: brighter)."""
    u, v = _grid(w, h)
    s = _lateral(u, lateral_left)
    r = np.sqrt((s / 0.8) ** 2 + ((1 - v) / 0.8) ** 2)  # 1 on the lung's edge
    air = _soft(r - 1, 0.06) * _soft(v, 0.03) * _soft(1 - s, 0.03)
    line = np.exp(-((r - 1) * min(w, h) / 3.0) ** 2)  # ~3 px wide in the 1024 frame
    return (air - 0.35 * line).astype(np.float32)


def cardiomegaly(w, h, lateral_left, rng):
    """The cardiac silhouette widened: a round top, a broad flat base on the diaphragm."""
    u, v = _grid(w, h)
    top = ellipse(w, h, 0.25)
    base = ellipse(w, h, 0.25, power=4.0)  # squarer: the heart sits wide on the diaphragm
    return np.where(v < 0.5, top, base).astype(np.float32)


def effusion(w, h, lateral_left, rng):
    """Fluid at the base of one hemithorax: dense below a meniscus that climbs the chest wall
    (its top at the lateral edge, 60 % down the box at the medial one), denser downwards."""
    u, v = _grid(w, h)
    s = _lateral(u, lateral_left)
    meniscus = 0.6 * (1 - s) ** 2  # concave upwards
    body = _soft(v - meniscus, 0.12) * (0.6 + 0.4 * v)
    return (body * _soft(s, 0.1) * _soft(1 - s, 0.02) * _soft(1 - v, 0.04)).astype(np.float32)


def atelectasis(w, h, lateral_left, rng):
    """Collapse: either a plate-like band across the box (discoid atelectasis), or a wedge
    whose apex points to the hilum and whose margins bow inwards (volume loss)."""
    u, v = _grid(w, h)
    if rng.random() < 0.5:  # band from one corner to the other, 40 % of the box high
        t = 0.4
        slope = u if rng.random() < 0.5 else 1 - u
        centre = t / 2 + (1 - t) * slope
        return _soft(t / 2 - np.abs(v - centre), 0.15)
    s = _lateral(u, lateral_left)
    half = 0.12 + 0.38 * s ** 1.6  # concave margins (volume loss), a blunt apex at the hilum
    return (_soft(half - np.abs(v - 0.5), 0.12) * _soft(1 - s, 0.05)).astype(np.float32)


def infiltration(w, h, lateral_left, rng):
    """Patchy, ill-defined opacities scattered over a region, no sharp margin."""
    patches = np.clip((_noise(w, h, 40.0, rng) - 0.25) / 0.4, 0, 1)
    return (ellipse(w, h, 0.4, power=3.0) * (0.15 + 0.85 * patches)).astype(np.float32)


def pneumonia(w, h, lateral_left, rng):
    """Lobar consolidation: a dense, nearly homogeneous opacity filling a lobe, one sharp
    border (the fissure, at the top), the others ill-defined, with dark air bronchograms."""
    u, v = _grid(w, h)
    body = ellipse(w, h, 0.3, power=3.0)
    flat = _soft(1 - np.abs(2 * u - 1) ** 3, 0.3) * _soft(v, 0.04)  # the fissure: a flat top
    body = np.where(v < 0.5, flat, body)
    body = body * (0.85 + 0.15 * _noise(w, h, 40.0, rng))
    lines = np.zeros((h, w), np.float32)
    hilum = (int(w * (0.9 if lateral_left else 0.1)), int(h * 0.25))
    for _ in range(3):  # air-filled bronchi branching from the hilar side, outwards and down
        mid = (int(rng.uniform(0.35, 0.65) * w), int(rng.uniform(0.4, 0.6) * h))
        end = (int(rng.uniform(0.15, 0.85) * w), int(rng.uniform(0.7, 0.9) * h))
        for a, b in ((hilum, mid), (mid, end)):
            cv2.line(lines, a, b, 1.0, thickness=max(2, w // 90), lineType=cv2.LINE_AA)
    lines = cv2.GaussianBlur(lines, (0, 0), max(1.5, w / 120))
    return (body * (1 - 0.35 * np.clip(lines / max(lines.max(), 1e-6), 0, 1))).astype(np.float32)


@dataclass(frozen=True)
class Look:
    draw: Callable  # (w, h, lateral_left, rng) -> weight (h, w) in [0, 1]
    strength: float  # bright: share of the way to white at weight 1; dark: share removed
    bright: bool = True
    flatten: bool = False  # the region's own texture (lung markings) smoothed away first


LOOKS = {
    "Atelectasis": Look(atelectasis, 0.6),
    "Cardiomegaly": Look(cardiomegaly, 0.4),
    "Effusion": Look(effusion, 0.65),
    "Infiltration": Look(infiltration, 0.6),
    "Mass": Look(mass, 0.6),
    "Nodule": Look(nodule, 0.85),
    "Pneumonia": Look(pneumonia, 0.65),
    "Pneumothorax": Look(pneumothorax, 0.55, bright=False, flatten=True),
}
