"""The user's own X-ray files: DICOM decoding and the image files of a folder.

chexnet.images.read_xray calls read_dicom for a DICOM file (a .dcm/.dicom name, or the DICM magic
at byte 128) and OpenCV for PNG/JPEG/TIFF; a file OpenCV cannot decode goes to read_undecodable
(a DICOM without preamble and magic, or the 'cannot decode' line). pydicom is optional: it is
imported only inside read_dicom and read_undecodable, so nothing else needs it (the grading bundle
does not ship it). Every user-fixable problem is an InputError with one line that names the file.
"""
from __future__ import annotations

import os

import numpy as np

from chexnet.utils import InputError

DICOM_EXTENSIONS = (".dcm", ".dicom")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff") + DICOM_EXTENSIONS
_DICOM_MAGIC_OFFSET = 128  # Part 10 files: a 128-byte preamble, then b"DICM"

_LIBJPEG = "pip install pylibjpeg pylibjpeg-libjpeg"
_OPENJPEG = "pip install pylibjpeg pylibjpeg-openjpeg"
# What to install for each compressed transfer syntax (keyed by UID).
_DECODER_HINTS = {
    "1.2.840.10008.1.2.4.50": f"pip install pillow (or {_LIBJPEG[12:]})",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": f"{_LIBJPEG} (or pillow / python-gdcm)",  # JPEG Extended
    "1.2.840.10008.1.2.4.57": f"{_LIBJPEG} (or python-gdcm)",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": f"{_LIBJPEG} (or python-gdcm)",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": f"{_LIBJPEG} (or pyjpegls / python-gdcm)",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": f"{_LIBJPEG} (or pyjpegls / python-gdcm)",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": f"{_OPENJPEG} (or python-gdcm)",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": f"{_OPENJPEG} (or python-gdcm)",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": _OPENJPEG,  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202": _OPENJPEG,  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203": _OPENJPEG,  # HTJ2K
    "1.2.840.10008.1.2.5": "pip install pylibjpeg pylibjpeg-rle",  # RLE Lossless
}
_DEFAULT_HINT = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or python-gdcm)"


def check_file(path: str | os.PathLike) -> None:
    """Refuse a missing path or an empty file before any decoder sees it."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: image not found")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: empty file")


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception message on one line; a heading ending in ':' gives way to its details."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):  # pydicom 3: "...plugins:" + one a plugin
        lines = lines[1:]
    line = "; ".join(lines) if lines else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def has_dicom_magic(path: str | os.PathLike) -> bool:
    """True when bytes 128..131 are b'DICM' (a DICOM Part 10 file, whatever its name)."""
    try:
        with open(path, "rb") as f:
            f.seek(_DICOM_MAGIC_OFFSET)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom(path: str | os.PathLike) -> bool:
    """True for a .dcm/.dicom name, or any file carrying the DICM magic at byte 128."""
    return os.fspath(path).lower().endswith(DICOM_EXTENSIONS) or has_dicom_magic(path)


def is_image_file(path: str | os.PathLike) -> bool:
    """An image by its extension, or a DICOM by its magic: not a list of names."""
    return os.fspath(path).lower().endswith(IMAGE_EXTENSIONS) or has_dicom_magic(path)


def read_undecodable(path: str | os.PathLike) -> np.ndarray:
    """A file OpenCV could not decode: read_dicom's pixels when it is a DICOM without the 128-byte
    preamble and DICM magic (older exports, often named IM0001 without an extension), which
    pydicom's dcmread(force=True) finds image attributes in; else the one-line 'cannot decode'."""
    try:  # optional dependency, imported only here and in _open_dataset
        import pydicom
    except ImportError:
        raise InputError(f"{path}: cannot decode (not an image, or truncated; a DICOM file needs "
                         f"pydicom: pip install pydicom)") from None
    try:
        ds = pydicom.dcmread(os.fspath(path), force=True, stop_before_pixels=True)
        dicom = "Rows" in ds  # force=True "parses" anything: only image attributes make an image
    except Exception:  # pydicom cannot parse it either (its errors vary): not DICOM
        dicom = False
    if not dicom:
        raise InputError(f"{path}: cannot decode (not an image, or truncated)")
    return read_dicom(path)


def _pydicom_tools():
    """(modality_lut, voi_lut, color_lut, convert_color_space, is_v3) for pydicom 3.x or 2.x."""
    try:  # pydicom >= 3.0
        from pydicom.pixels import (apply_color_lut, apply_modality_lut, apply_voi_lut,
                                    convert_color_space)
        return apply_modality_lut, apply_voi_lut, apply_color_lut, convert_color_space, True
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import (apply_color_lut, apply_modality_lut,
                                                      apply_voi_lut, convert_color_space)
        return apply_modality_lut, apply_voi_lut, apply_color_lut, convert_color_space, False


def _decoder_available(uid) -> bool:
    """Whether the installed pydicom has a working (dependencies present) decoder for `uid`."""
    try:  # pydicom >= 3.0
        from pydicom.pixels import get_decoder
    except ImportError:  # pydicom 2.x: a list of handler modules
        import pydicom.config
        return any(h.supports_transfer_syntax(uid) and h.is_available()
                   for h in pydicom.config.pixel_data_handlers)
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:  # a transfer syntax pydicom has no decoder class for at all
        return False


def _frame_count(ds) -> int:
    """NumberOfFrames (IS, may be absent or empty) as an int; 1 for single-frame images."""
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Round float64 grey levels already on a 0..255 scale and store them as uint8."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _scale_to_255(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linear map [low, high] -> [0, 255] in float64 (all zeros when the range is empty)."""
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        return np.zeros(values.shape, dtype=np.float64)
    return (values - low) * (255.0 / (high - low))


def read_dicom(path: str | os.PathLike) -> np.ndarray:
    """Decode a single-frame DICOM radiograph to uint8 (H, W), bright = dense (as MONOCHROME2):
    the Modality LUT (Rescale Slope/Intercept), then the VOI LUT or the window when present, else
    the pixel range stretched to 8 bits; MONOCHROME1 inverted last; colour keeps its red channel."""
    check_file(path)
    ds = _open_dataset(path)
    stored = _decode(ds, path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    # A 3-D array that is not colour is a volume (NumberOfFrames missing but several frames' data).
    if stored.ndim == 3 and samples == 1 or stored.ndim not in (2, 3):
        raise InputError(f"{path}: DICOM pixel data has shape {stored.shape}; "
                         f"expected a single 2-D image")
    if stored.ndim == 3 or photometric == "PALETTE COLOR":
        return _color_red(ds, stored, photometric)
    display = np.clip(_gray_display(ds, stored), 0.0, 255.0)
    if photometric == "MONOCHROME1":  # dense (bone) is stored low: invert after windowing
        display = 255.0 - display
    return np.ascontiguousarray(_to_uint8(display))


def _open_dataset(path: str | os.PathLike):
    """The parsed dataset, refused without pixel data or with more than one frame."""
    try:  # optional dependency: only DICOM users need it
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise InputError(f"{path}: reading DICOM files needs pydicom: "
                         f"pip install pydicom") from None
    try:  # files without the 128-byte preamble + DICM (older exports) need force=True
        try:
            ds = pydicom.dcmread(os.fspath(path))
        except InvalidDicomError:
            ds = pydicom.dcmread(os.fspath(path), force=True)
            if "Rows" not in ds:  # force=True "parses" anything: no image module, not DICOM
                raise InputError(f"{path}: not a DICOM file (no DICM header and no image "
                                 f"attributes)") from None
            _set_transfer_syntax(ds)
    except InputError:
        raise
    except Exception as exc:  # truncated / corrupt files raise a variety of errors in pydicom
        raise InputError(f"{path}: cannot read DICOM file: {_one_line(exc)}") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise InputError(f"{path}: DICOM file has no pixel data (not an image object)")
    frames = _frame_count(ds)  # CT/MR/tomosynthesis stacks and cine loops: refused before decoding
    if frames > 1:
        raise InputError(f"{path}: multi-frame DICOM ({frames} frames); "
                         f"expected a single 2-D radiograph")
    return ds


def _set_transfer_syntax(ds) -> None:
    """A data set without file meta (no preamble, no DICM) has no Transfer Syntax UID, which
    pydicom needs to decode pixels: give it the encoding pydicom detected while parsing (such
    files are uncompressed: encapsulated pixel data needs file meta to say how)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", None) or (ds.is_implicit_VR,
                                                                  ds.is_little_endian)
    ds.file_meta = meta if meta is not None else FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                      ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _decode(ds, path: str | os.PathLike) -> np.ndarray:
    """The stored values; a compressed transfer syntax without a decoder names what to install."""
    file_meta = getattr(ds, "file_meta", None)
    tsuid = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    try:
        return ds.pixel_array
    except Exception as exc:
        if tsuid is None or not tsuid.is_compressed:
            raise InputError(f"{path}: cannot decode DICOM pixel data: {_one_line(exc)}") from None
        name = f"{tsuid} ({tsuid.name})"
        hint = _DECODER_HINTS.get(str(tsuid), _DEFAULT_HINT)
        if not _decoder_available(tsuid):
            raise InputError(f"{path}: no installed decoder for transfer syntax {name}; "
                             f"{hint}") from None
        raise InputError(f"{path}: cannot decode transfer syntax {name}: {_one_line(exc, 120)}; "
                         f"the data may be corrupt, or another decoder may help: {hint}") from None


def _color_red(ds, stored: np.ndarray, photometric: str) -> np.ndarray:
    """Colour keeps its red channel, like the PNG/JPEG path (an X-ray in colour has R = G = B)."""
    _, _, color_lut, convert_color_space, is_v3 = _pydicom_tools()
    bits = int(ds.get("BitsStored", 8) or 8)
    if photometric == "PALETTE COLOR":
        stored = color_lut(stored, ds)  # palette indices -> RGB
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])  # entries are 8 or 16 bit
    elif photometric.startswith("YBR") and not is_v3:
        stored = convert_color_space(stored, photometric, "RGB")  # pydicom 3 already gives RGB
    red = stored[:, :, 0]
    if red.dtype == np.uint8 and bits <= 8:
        return np.ascontiguousarray(red)
    # More than 8 bits a sample: scale the nominal full range, as the 16-bit PNG path does.
    return _to_uint8(_scale_to_255(red.astype(np.float64), 0.0, float(2**bits - 1)))


def _gray_display(ds, stored: np.ndarray) -> np.ndarray:
    """Grey stored values -> float64 display values on 0..255 (before the MONOCHROME1 inversion)."""
    modality_lut, voi_lut = _pydicom_tools()[:2]
    if stored.dtype.kind == "f":  # NaN/inf would poison the min-max range below
        stored = np.nan_to_num(stored, nan=0.0, posinf=0.0, neginf=0.0)
    values = np.asarray(modality_lut(stored, ds), dtype=np.float64)  # stored -> physical units
    slope, intercept = ds.get("RescaleSlope", 1) or 1, ds.get("RescaleIntercept", 0) or 0
    has_modality = ("ModalityLUTSequence" in ds or float(slope) != 1.0
                    or float(intercept) != 0.0)
    if ds.get("VOILUTSequence"):  # the modality output indexes a lookup table (integers)
        descriptor = [int(v) for v in ds.VOILUTSequence[0].LUTDescriptor]
        entries, first = descriptor[0] or 65536, descriptor[1]
        index = np.arange(first, first + entries, dtype=np.int64)
        table = np.asarray(voi_lut(index, ds), dtype=np.float64)
        mapped = np.asarray(voi_lut(np.rint(values).astype(np.int64), ds), dtype=np.float64)
        # the table's actual output range: LUT Descriptor bit depths are often overstated
        return _scale_to_255(mapped, float(table.min()), float(table.max()))
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        windowed = np.asarray(voi_lut(values, ds, prefer_lut=False), dtype=np.float64)
        # pydicom maps the window onto a range it derives from BitsStored/rescale: probe its ends
        with np.errstate(over="ignore", invalid="ignore"):
            ends = voi_lut(np.array([-np.inf, np.inf]), ds, prefer_lut=False)
        ends = np.asarray(ends, dtype=np.float64)
        return _scale_to_255(windowed, float(ends[0]), float(ends[1]))
    if (not has_modality and ds.get("PixelRepresentation", 0) == 0
            and int(ds.get("BitsStored", 8) or 8) <= 8):
        return values  # unsigned data of at most 8 bits is already on the 0..255 scale
    # No display transform given: stretch the pixel range (10-16 bit, signed, float) to 8 bits,
    # leaving out the Pixel Padding Value (background outside the collimated field).
    padding = ds.get("PixelPaddingValue")
    real = stored != padding if isinstance(padding, int) else None
    in_range = values[real] if real is not None and real.any() else values
    return _scale_to_255(values, float(in_range.min()), float(in_range.max()))


def image_files(folder: str | os.PathLike) -> list[str]:
    """Sorted paths of the image files directly in `folder` (by extension, or the DICM magic)."""
    if not os.path.isdir(folder):
        raise InputError(f"{folder}: folder not found")
    names = sorted(os.listdir(folder))
    if not names:
        raise InputError(f"{folder}: empty folder")
    found = []
    for name in names:
        full = os.path.join(os.fspath(folder), name)
        # Hidden files (macOS "._x.png" resource forks) and DICOMDIR indexes are not images.
        if name.startswith(".") or name.upper() == "DICOMDIR" or not os.path.isfile(full):
            continue
        if is_image_file(full):  # known extensions; anything else ("IM0001", "1.2.3.4") by magic
            found.append(full)
    if not found:
        raise InputError(f"{folder}: no image files ({' '.join(IMAGE_EXTENSIONS)} or DICOM) "
                         f"in the folder")
    return found
