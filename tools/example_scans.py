"""Write a folder of X-ray files of several formats and sizes made from the bundled sample images.

    python3 tools/example_scans.py OUT_DIR [--images sample/images]

What a user's own folder may hold, from real NIH pixels: a 12-bit MONOCHROME1 DICOM with a rescale
and a window (2048 wide, 2500 high), an 8-bit MONOCHROME2 DICOM without an extension (1024), a
1024 PNG, a 16-bit PNG (1500x1500) and a JPEG (1600x1200). `denseNet_localization.py OUT_DIR` then
localizes them all in one command (README: "Any image, one image or a folder"). Needs pydicom.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from chexnet.images import read_xray  # noqa: E402
from chexnet.utils import atomic_path, run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("00009745_000.png", "00008386_000.png", "00013125_000.png", "00001933_000.png",
           "00026911_000.png")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out_dir", type=Path, help="folder to write the example files into")
    p.add_argument("--images", type=Path, default=ROOT / "sample" / "images",
                   help="folder of the NIH PNGs they are made from (default: sample/images)")
    return p


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2",
                bits_stored: int | None = None, **attrs) -> None:
    """An uncompressed single-frame Part 10 file (Digital X-Ray, for presentation)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.preamble = meta, b"\0" * 128
    ds.SOPClassUID, ds.SOPInstanceUID = (meta.MediaStorageSOPClassUID,
                                         meta.MediaStorageSOPInstanceUID)
    ds.Modality, ds.PatientID = "DX", "EXAMPLE"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    with atomic_path(path) as tmp:
        pydicom.dcmwrite(str(tmp), ds, enforce_file_format=True)


def write_image(path: Path, pixels: np.ndarray, *params: int) -> None:
    """PNG or JPEG by the name's extension, written atomically."""
    ok, data = cv2.imencode(path.suffix, pixels, list(params))
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())


def main(args: argparse.Namespace) -> None:
    gray = [read_xray(args.images / name) for name in SOURCES]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tall = cv2.resize(gray[0], (2048, 2500), interpolation=cv2.INTER_CUBIC)
    stored = (255 - tall).astype(np.uint16) * 16  # 12 bits, dense = low (MONOCHROME1)
    write_dicom(args.out_dir / "chest_2048x2500.dcm", stored, "MONOCHROME1", bits_stored=12,
                RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=1016.5, WindowWidth=4081)
    write_dicom(args.out_dir / "IM0001", gray[1])
    write_image(args.out_dir / SOURCES[2], gray[2])
    square16 = cv2.resize(gray[3], (1500, 1500),
                          interpolation=cv2.INTER_CUBIC).astype(np.uint16) * 257
    write_image(args.out_dir / "chest_1500_16bit.png", square16)
    wide = cv2.resize(gray[4], (1600, 1200), interpolation=cv2.INTER_AREA)
    write_image(args.out_dir / "chest_1600x1200.jpg", wide, cv2.IMWRITE_JPEG_QUALITY, 92)
    print(f"wrote 5 files into {args.out_dir}")


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
