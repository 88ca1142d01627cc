"""How tests/data/original_resize_skimage013.npz was made: the pixels the original project's network
saw, written by the 2018 stack itself, for tests/test_original_resize.py.

The original (thtang/CheXNet-with-localization; its requirements pin scikit-image 0.13.1) stored
`skimage.transform.resize(img, (256, 256)) / 255`, and its train.py fed `np.uint8(x * 255 * 255)`.
Two steps, in two Pythons:

1. In the project's environment, decode the sample PNGs as the pipeline does (read_xray: the red
   channel of the RGBA ones) into a raw .npz of uint8 (1024, 1024) arrays:

       .venv/bin/python tests/data/make_original_resize_skimage013.py dump /tmp/raw.npz

2. In Python 3.6 with numpy 1.13.3 and scikit-image 0.13.1 (their 2018 wheels; numpy's bundles
   OpenBLAS), with OpenBLAS's AVX2 (Haswell) kernel:

       OPENBLAS_CORETYPE=Haswell py36/bin/python tests/data/make_original_resize_skimage013.py \\
           resize /tmp/raw.npz tests/data/original_resize_skimage013.npz

The kernel matters. resize estimates its affine map by SVD, and the last-ulp noise of that estimate
decides the final truncation wherever a block's central 2x2 mean is a whole number: the Haswell
kernel reproduces the recorded pixels exactly; another (OPENBLAS_CORETYPE=Prescott) differs by 1 grey
level on about 9% of the pixels. chexnet/original_resize.py keeps the Haswell estimate for 1024x1024.
This file runs under Python 3.6 (no newer syntax) and is not a test.
"""
import sys
import warnings

import numpy as np

# 3 gray and 2 RGBA sample images (00000100_000 and 00004934_000 carry 4 channels)
NAMES = ("00009745_000", "00001933_000", "00013125_000", "00000100_000", "00004934_000")


def dump(out):
    """The decoded images, by the project's own reader (run in the project's environment)."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root))
    from chexnet.images import read_xray
    np.savez(out, **{n: read_xray(root / "sample" / "images" / (n + ".png")) for n in NAMES})


def resize(raw, out):
    """The original's two lines, with scikit-image 0.13.1 (run in the Python 3.6 environment)."""
    import skimage
    from skimage.transform import resize as skimage_resize
    assert skimage.__version__ == "0.13.1" and np.__version__ == "1.13.3", "the 2018 stack only"
    warnings.simplefilter("ignore")  # 0.13.1 warns that mode's default will change
    pixels = {}
    with np.load(raw, allow_pickle=False) as images:
        for name in images.files:
            x = np.array(skimage_resize(images[name], (256, 256))) / 255  # preprocessing.py
            pixels[name] = np.uint8(x * 255 * 255)  # train.py
    np.savez_compressed(out, **pixels)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "dump":
        dump(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "resize":
        resize(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
