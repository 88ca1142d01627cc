"""The original's resize, to the pixel: scikit-image 0.13.1's `resize(img, (256, 256))`, then
train.py's `np.uint8(x * 255 * 255)` of the stored `resized / 255`.

0.13.1's resize is bilinear (order 1), mode 'constant', clip, no anti-aliasing (that option came
later), on img_as_float's `uint8 / 255`. It samples output pixel (r, c) at the input point that an
affine map *estimated by SVD from three corners* gives; for an exact 4x reduction that is (4r + 1.5,
4c + 1.5), the mean of the block's central 2x2 pixels, but off by about 1e-13. Where that mean is a
whole number (28% of the pixels of an X-ray), the final truncation turns the noise into v or v - 1.
So the numbers depend on the estimated matrix: for 1024 -> 256 we keep the one that numpy 1.13.3
(OpenBLAS, AVX2 kernel) and scikit-image 0.13.1 computed, recorded bit for bit; other sizes estimate
it with today's LAPACK, which can differ from 2018's in those last-ulp ties only.
tests/test_original_resize.py compares with pixels that the real 2018 stack wrote (Python 3.6, numpy
1.13.3, scikit-image 0.13.1).

Only the 4 * 256 * 256 samples are computed: about 4x faster than 0.13.1 itself, measured in one
run (5 interleaved passes over 20 sample images, one thread, load 5.6 on 2 shared cores): 0.13.1 in
Python 3.6 22.6 ms per 1024 image, this 5.4 ms (benchmarks/README.md, section 1).
"""
from __future__ import annotations

import functools
import math

import numpy as np

STORED = (256, 256)
# 0.13.1's estimated inverse map for 1024x1024 -> 256x256 (x = column, y = row), recorded from
# numpy 1.13.3's bundled OpenBLAS with its AVX2 kernel (a 2018 GPU server's CPU).
_RECORDED = {((1024, 1024), STORED): np.array([float.fromhex(v) for v in (
    "0x1.ffffffffffffep+1", "-0x1.bb67ae8584ca8p-51", "0x1.8000000000300p+0",
    "-0x1.bb67ae8584ca8p-54", "0x1.ffffffffffffep+1", "0x1.8000000000200p+0",
    "0x0.0p+0", "0x0.0p+0", "0x1.0000000000000p+0")]).reshape(3, 3)}
_AS_FLOAT = np.arange(256, dtype=np.float64) / 255  # img_as_float of a uint8, bit for bit


def resize_original(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W) -> uint8 (256, 256): the pixels the original network saw (any H, W)."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W) image, got {image.dtype} {image.shape}")
    taps, weights = _plan(image.shape, _inverse_map(image.shape).tobytes())
    values = [_AS_FLOAT.take(image.ravel().take(flat)) for flat, _ in taps]
    for v, (_, outside) in zip(values, taps):
        if outside is not None:
            v[outside] = 0.0  # mode 'constant', cval 0
    one_dc, dc, one_dr, dr = weights
    out = (one_dr * (one_dc * values[0] + dc * values[1])
           + dr * (one_dc * values[2] + dc * values[3]))
    low, high = _AS_FLOAT[image.min()], _AS_FLOAT[image.max()]
    # clip keeps cval outside the range
    keep_zero = (out == 0.0) if not low <= 0.0 <= high else None
    np.clip(out, low, high, out=out)
    if keep_zero is not None:
        out[keep_zero] = 0.0
    stored = out / 255  # preprocessing.py stored resized / 255 ...
    # ... train.py: np.uint8(x*255*255)
    return (stored * 255 * 255).astype(np.uint8).reshape(STORED)


def _inverse_map(shape: tuple[int, int]) -> np.ndarray:
    """The 3x3 map from output (x, y) to input (x, y) that 0.13.1 estimated for this shape."""
    recorded = _RECORDED.get((tuple(shape), STORED))
    return recorded if recorded is not None else _estimate(shape)


def _estimate(shape: tuple[int, int]) -> np.ndarray:
    """0.13.1's AffineTransform.estimate from the three corners (normalised DLT, SVD)."""
    rows, cols = STORED
    src = np.array([[0, 0], [0, rows - 1], [cols - 1, rows - 1]], dtype=np.float64)
    dst = np.empty_like(src)
    dst[:, 0] = shape[1] / cols * (src[:, 0] + 0.5) - 0.5
    dst[:, 1] = shape[0] / rows * (src[:, 1] + 0.5) - 0.5
    src_m, s = _normalise(src)
    dst_m, d = _normalise(dst)
    a = np.zeros((6, 9))
    a[:3, 0], a[:3, 1], a[:3, 2] = s[:, 0], s[:, 1], 1
    a[:3, 6], a[:3, 7], a[:3, 8] = -d[:, 0] * s[:, 0], -d[:, 0] * s[:, 1], d[:, 0]
    a[3:, 3], a[3:, 4], a[3:, 5] = s[:, 0], s[:, 1], 1
    a[3:, 6], a[3:, 7], a[3:, 8] = -d[:, 1] * s[:, 0], -d[:, 1] * s[:, 1], d[:, 1]
    keep = [0, 1, 2, 3, 4, 5, 8]  # an affine map: no perspective terms
    _, _, v = np.linalg.svd(a[:, keep])
    h = np.zeros((3, 3))
    h.flat[keep] = -v[-1, :-1] / v[-1, -1]
    h[2, 2] = 1
    return np.linalg.inv(dst_m) @ (h @ src_m)


def _normalise(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hartley's normalisation: centroid at 0, mean distance sqrt(2)."""
    centre = points.mean(axis=0)
    scale = math.sqrt(2) / math.sqrt(np.sum((points - centre) ** 2) / len(points))
    m = np.array([[scale, 0, -scale * centre[0]], [0, scale, -scale * centre[1]], [0, 0, 1]])
    moved = (m @ np.vstack([points.T, np.ones(len(points))])).T
    return m, moved[:, :2] / moved[:, 2:]


@functools.lru_cache(maxsize=16)
def _plan(shape: tuple[int, int], map_bytes: bytes):
    """Per output pixel: the four input pixels (flat index, outside-mask) and the bilinear weights,
    in 0.13.1's order of operations (columns first, then rows). Cached per input shape."""
    h = np.frombuffer(map_bytes, dtype=np.float64).reshape(3, 3)
    y_out = np.arange(STORED[0], dtype=np.float64)[:, None]
    x_out = np.arange(STORED[1], dtype=np.float64)[None, :]
    z = h[2, 0] * x_out + h[2, 1] * y_out + h[2, 2]
    c = (h[0, 0] * x_out + h[0, 1] * y_out + h[0, 2]) / z
    r = (h[1, 0] * x_out + h[1, 1] * y_out + h[1, 2]) / z
    r0, c0 = np.floor(r), np.floor(c)
    rows, cols = shape
    taps = []
    for rr, cc in ((r0, c0), (r0, np.ceil(c)), (np.ceil(r), c0), (np.ceil(r), np.ceil(c))):
        rr, cc = rr.astype(np.intp), cc.astype(np.intp)
        inside = (rr >= 0) & (rr < rows) & (cc >= 0) & (cc < cols)
        flat = (np.clip(rr, 0, rows - 1) * cols + np.clip(cc, 0, cols - 1)).ravel()
        taps.append((flat, None if inside.all() else ~inside.ravel()))
    dc, dr = (c - c0).ravel(), (r - r0).ravel()
    return taps, (1 - dc, dc, 1 - dr, dr)
