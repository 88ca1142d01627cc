"""chexnet.xray_files and images.read_xray: DICOM files written with pydicom from a real NIH PNG."""

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")  # requirements.txt installs it; the GPU machine may lack it
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid  # noqa: E402

from chexnet.images import read_xray  # noqa: E402
from chexnet.utils import InputError  # noqa: E402
from chexnet.xray_files import _pydicom_tools, image_files, is_dicom, read_dicom  # noqa: E402

SAMPLE = str(Path(__file__).resolve().parents[1] / "sample" / "images" / "00009745_000.png")
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
PYDICOM3 = int(pydicom.__version__.split(".")[0]) >= 3


@pytest.fixture(scope="module")
def png():
    image = cv2.imread(SAMPLE, cv2.IMREAD_UNCHANGED)
    assert image.shape == (1024, 1024) and image.dtype == np.uint8
    assert image.min() == 0 and image.max() == 255  # the exactness arguments below rely on this
    return image


def write_dicom(
    path,
    pixels,
    *,
    bits_stored=None,
    photometric="MONOCHROME2",
    sop_class=SECONDARY_CAPTURE,
    transfer_syntax=ExplicitVRLittleEndian,
    pixel_data=None,
    frames=1,
    samples=1,
    **attrs,
):
    """Write a valid Part 10 file (preamble, DICM, file meta) the way the installed pydicom wants."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX" if sop_class == DX_FOR_PRESENTATION else "OT"
    ds.PatientID = "TEST"
    ds.Rows, ds.Columns = pixels.shape[-2:] if samples == 1 else pixels.shape[-3:-1]
    ds.SamplesPerPixel = samples
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in attrs.items():
        setattr(ds, key, value)
    if pixel_data is None:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    elif pixel_data is not False:  # encapsulated (compressed) frames
        ds.PixelData = pixel_data
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    if PYDICOM3:
        pydicom.dcmwrite(os.fspath(path), ds, enforce_file_format=True)
    else:  # pydicom 2.x takes the encoding from the dataset flags
        ds.is_little_endian = True
        ds.is_implicit_VR = transfer_syntax == ImplicitVRLittleEndian
        pydicom.dcmwrite(os.fspath(path), ds, write_like_original=False)
    return path


# ----------------------------------------------------------------------------- DICOM decoding


def test_monochrome2_8bit_is_exact(tmp_path, png):
    path = write_dicom(tmp_path / "a.dcm", png)
    assert is_dicom(path)
    out = read_xray(path)
    assert out.dtype == np.uint8 and out.shape == png.shape and out.flags.c_contiguous
    np.testing.assert_array_equal(out, png)


def test_implicit_vr_dx_is_exact(tmp_path, png):
    path = write_dicom(tmp_path / "dx.dcm", png, sop_class=DX_FOR_PRESENTATION, transfer_syntax=ImplicitVRLittleEndian)
    np.testing.assert_array_equal(read_dicom(path), png)


def test_monochrome1_is_inverted_back(tmp_path, png):
    path = write_dicom(tmp_path / "m1.dcm", 255 - png, photometric="MONOCHROME1")
    np.testing.assert_array_equal(read_xray(path), png)


def test_12bit_rescale_min_max_is_exact(tmp_path, png):
    # stored = png*16 (0..4080), HU-like = stored - 1024; min-max of -1024..3056 maps back to png*255/255.
    stored = png.astype(np.uint16) * 16
    path = write_dicom(
        tmp_path / "r.dcm",
        stored,
        bits_stored=12,
        sop_class=DX_FOR_PRESENTATION,
        RescaleSlope=1,
        RescaleIntercept=-1024,
        RescaleType="US",
    )
    out = read_xray(path)
    assert np.abs(out.astype(int) - png).max() <= 1
    np.testing.assert_array_equal(out, png)  # exact: the sample spans 0..255, so min-max is the inverse map


def test_12bit_without_rescale_uses_min_max(tmp_path, png):
    path = write_dicom(tmp_path / "r12.dcm", png.astype(np.uint16) * 16 + 7, bits_stored=12)
    np.testing.assert_array_equal(read_xray(path), png)


def test_window_covering_full_range(tmp_path, png):
    # LINEAR window (PS3.3 C.11.2.1.2): c - 0.5 -/+ (w - 1)/2 must hit -1024 and 3056 -> w = 4081, c = 1016.5
    stored = png.astype(np.uint16) * 16
    path = write_dicom(
        tmp_path / "w.dcm",
        stored,
        bits_stored=12,
        RescaleSlope=1,
        RescaleIntercept=-1024,
        WindowCenter=1016.5,
        WindowWidth=4081,
    )
    out = read_xray(path)
    assert np.abs(out.astype(int) - png).max() <= 1
    np.testing.assert_array_equal(out, png)


def test_narrow_window_clips_then_monochrome1_inverts(tmp_path, png):
    # 8-bit MONOCHROME1 with a window over 64..191: values outside clip; inversion comes after windowing.
    path = write_dicom(tmp_path / "wn.dcm", 255 - png, photometric="MONOCHROME1", WindowCenter=128, WindowWidth=128)
    out = read_xray(path).astype(float)
    x = (255 - png).astype(float)
    expected = 255 - np.clip(((x - 127.5) / 127 + 0.5) * 255, 0, 255)
    assert np.abs(out - expected).max() <= 0.5 + 1e-9


def test_voi_lut_sequence(tmp_path, png):
    # 12-bit stored png*16 with an identity VOI LUT saturating at 4080, and a descriptor claiming 16-bit output:
    # scaling by the table's actual range (0..4080) gives the PNG back exactly; 2**16-1 would give a dark image.
    stored = png.astype(np.uint16) * 16
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])  # LUT Descriptor (US/SS ambiguous: say US)
    item.add_new(0x00283006, "US", [min(i, 4080) for i in range(4096)])  # LUT Data (US/OW ambiguous: say US)
    path = write_dicom(tmp_path / "lut.dcm", stored, bits_stored=12, VOILUTSequence=Sequence([item]))
    np.testing.assert_array_equal(read_xray(path), png)


def test_signed_16bit(tmp_path, png):
    stored = png.astype(np.int16) * 100 - 12000
    path = write_dicom(tmp_path / "s.dcm", stored, bits_stored=16)
    np.testing.assert_array_equal(read_xray(path), png)


def test_rgb_dicom_keeps_red(tmp_path, png):
    rgb = np.stack([png, png // 2, 255 - png], axis=-1)
    path = write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB", samples=3)
    np.testing.assert_array_equal(read_xray(path), png)


def test_dicom_without_extension_detected_by_magic(tmp_path, png):
    path = write_dicom(tmp_path / "IM000001", png)
    assert is_dicom(path)
    assert not is_dicom(SAMPLE)
    np.testing.assert_array_equal(read_xray(path), png)


def write_raw_dicom(path, pixels, implicit=True):
    """A DICOM data set alone: no 128-byte preamble, no DICM, no file meta (older exports)."""
    ds = pydicom.dcmread(os.fspath(write_dicom(Path(f"{path}.full"), pixels)))
    os.remove(f"{path}.full")
    del ds.file_meta
    ds.preamble = None
    if PYDICOM3:
        pydicom.dcmwrite(os.fspath(path), ds, implicit_vr=implicit, little_endian=True)
    else:
        ds.is_implicit_VR, ds.is_little_endian = implicit, True
        pydicom.dcmwrite(os.fspath(path), ds, write_like_original=True)
    with open(path, "rb") as f:
        assert f.read(4) == b"\x08\x00\x16\x00"  # it opens with its first element, SOPClassUID
    return Path(path)


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit VR", "explicit VR"])
def test_dicom_without_preamble_magic_or_extension(tmp_path, png, implicit):
    """OpenCV cannot decode it and nothing marks it as DICOM: pydicom's force=True reads it."""
    path = write_raw_dicom(tmp_path / "IM0002", png, implicit)
    assert not is_dicom(path) and cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is None
    np.testing.assert_array_equal(read_xray(path), png)
    (tmp_path / "notes").write_bytes(b"a file that is neither an image nor DICOM " * 20)
    with pytest.raises(InputError) as excinfo:
        read_xray(tmp_path / "notes")
    assert_one_line_naming(excinfo, tmp_path / "notes", "cannot decode (not an image, or truncated)")


# ----------------------------------------------------------------------------- DICOM errors


def assert_one_line_naming(excinfo, path, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith(f"{path}:"), message
    for fragment in fragments:
        assert fragment in message, message


def test_no_pixel_data(tmp_path, png):
    path = write_dicom(tmp_path / "nopix.dcm", png, pixel_data=False)
    with pytest.raises(InputError) as excinfo:
        read_xray(path)
    assert_one_line_naming(excinfo, path, "no pixel data")


def test_multi_frame_refused(tmp_path, png):
    path = write_dicom(tmp_path / "mf.dcm", np.stack([png, png]), frames=2)
    with pytest.raises(InputError) as excinfo:
        read_xray(path)
    assert_one_line_naming(excinfo, path, "multi-frame", "2 frames")


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80"])
def test_undecodable_compressed_transfer_syntax(tmp_path, png, uid):
    # Fake encapsulated data: either no decoder is installed, or the installed one (Pillow for J2K) fails.
    path = write_dicom(tmp_path / "c.dcm", png, transfer_syntax=uid, pixel_data=encapsulate([b"\xff" * 64]))
    with pytest.raises(InputError) as excinfo:
        read_xray(path)
    name = pydicom.uid.UID(uid).name
    assert_one_line_naming(excinfo, path, uid, name, "pip install")


def test_not_really_dicom(tmp_path):
    path = tmp_path / "fake.dcm"
    path.write_bytes(b"this is not a dicom file at all" * 10)
    with pytest.raises(InputError) as excinfo:
        read_xray(path)
    assert_one_line_naming(excinfo, path)


def test_truncated_dicom(tmp_path, png):
    path = write_dicom(tmp_path / "t.dcm", png)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as excinfo:
        read_xray(path)
    assert_one_line_naming(excinfo, path)


def test_missing_pydicom_message(tmp_path, png, monkeypatch):
    import builtins

    path = write_dicom(tmp_path / "a.dcm", png)
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "pydicom" or name.startswith("pydicom."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(InputError) as excinfo:
        read_xray(path)
    assert_one_line_naming(excinfo, path, "pip install pydicom")


# ----------------------------------------------------------------------------- raster path


def test_small_image_refused(tmp_path, png):
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), png[:200, :300])
    with pytest.raises(InputError) as excinfo:
        read_xray(small)
    assert_one_line_naming(excinfo, small, "300x200")
    small_dcm = write_dicom(tmp_path / "small.dcm", png[:255, :])
    with pytest.raises(InputError) as excinfo:
        read_xray(small_dcm)
    assert_one_line_naming(excinfo, small_dcm, "1024x255")


def test_png_is_exact(png):
    np.testing.assert_array_equal(read_xray(SAMPLE), png)


def test_large_png_and_jpeg(tmp_path, png):
    big = cv2.resize(png, (2048, 2500), interpolation=cv2.INTER_LINEAR)  # 2500 rows x 2048 columns
    big_path = tmp_path / "big.png"
    cv2.imwrite(str(big_path), big)
    out = read_xray(big_path)
    assert out.shape == (2500, 2048)
    np.testing.assert_array_equal(out, big)
    jpg_path = tmp_path / "x.jpg"
    cv2.imwrite(str(jpg_path), png, [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = read_xray(jpg_path)
    assert out.shape == png.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - png).mean() < 2


def test_16bit_png(tmp_path, png):
    path = tmp_path / "x16.png"
    cv2.imwrite(str(path), png.astype(np.uint16) * 257)  # 257 * v maps back exactly to v
    np.testing.assert_array_equal(read_xray(path), png)


def test_rgb_and_rgba_png_keep_red(tmp_path, png):
    bgr = np.dstack([255 - png, png // 2, png])
    cv2.imwrite(str(tmp_path / "rgb.png"), bgr)
    np.testing.assert_array_equal(read_xray(tmp_path / "rgb.png"), png)
    bgra = np.dstack([bgr, np.full_like(png, 200)])
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    np.testing.assert_array_equal(read_xray(tmp_path / "rgba.png"), png)


@pytest.mark.parametrize(
    "content, fragment", [(None, "not found"), (b"", "empty file"), (b"garbage" * 50, "cannot decode")]
)
def test_raster_errors(tmp_path, content, fragment):
    path = tmp_path / "bad.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError) as excinfo:
        read_xray(path)
    assert_one_line_naming(excinfo, path, fragment)


# ----------------------------------------------------------------------------- folders


def test_image_files(tmp_path, png):
    shutil.copy(SAMPLE, tmp_path / "b.png")
    cv2.imwrite(str(tmp_path / "a.JPG"), png)
    write_dicom(tmp_path / "c.dcm", png)
    write_dicom(tmp_path / "IM0001", png)
    write_dicom(tmp_path / "1.2.840.99.5", png)  # UID-like name: its "extension" is .5
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "._b.png").write_bytes(b"AppleDouble")
    (tmp_path / "sub.png").mkdir()
    files = image_files(tmp_path)
    assert [os.path.basename(f) for f in files] == ["1.2.840.99.5", "IM0001", "a.JPG", "b.png", "c.dcm"]
    for f in files:
        assert read_xray(f).shape == (1024, 1024)


def test_image_files_errors(tmp_path):
    with pytest.raises(InputError, match="folder not found"):
        image_files(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="empty folder"):
        image_files(empty)
    (empty / "readme.txt").write_text("x")
    with pytest.raises(InputError, match="no image files"):
        image_files(empty)


# ----------------------------------------------------------------------------- compressed / colour DICOMs that decode


def test_rle_lossless_decodes(tmp_path, png):
    from pydicom.uid import RLELossless

    path = write_dicom(tmp_path / "plain.dcm", png)
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)  # pydicom's own RLE encoder; decoded by its own RLE decoder
    ds.save_as(tmp_path / "rle.dcm")
    np.testing.assert_array_equal(read_xray(tmp_path / "rle.dcm"), png)


def test_jpeg_baseline_decodes_with_pillow(tmp_path, png):
    pytest.importorskip("PIL")
    ok, jpeg = cv2.imencode(".jpg", png, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    path = write_dicom(
        tmp_path / "jpg.dcm",
        png,
        transfer_syntax="1.2.840.10008.1.2.4.50",
        pixel_data=encapsulate([jpeg.tobytes()]),
        LossyImageCompression="01",
    )
    out = read_xray(path)
    assert out.shape == png.shape and np.abs(out.astype(int) - png).mean() < 2


def test_ybr_full_keeps_red(tmp_path, png):


    convert_color_space = _pydicom_tools()[3]
    ybr = convert_color_space(np.stack([png, png, png], axis=-1), "RGB", "YBR_FULL")
    path = write_dicom(tmp_path / "ybr.dcm", ybr, photometric="YBR_FULL", samples=3)
    assert np.abs(read_xray(path).astype(int) - png).max() <= 1


def test_palette_color(tmp_path, png):
    lut = np.arange(256, dtype=np.uint16) * 257  # 16-bit palette entries, red = grey level
    path = write_dicom(
        tmp_path / "pal.dcm",
        png,
        photometric="PALETTE COLOR",
        RedPaletteColorLookupTableDescriptor=[256, 0, 16],
        GreenPaletteColorLookupTableDescriptor=[256, 0, 16],
        BluePaletteColorLookupTableDescriptor=[256, 0, 16],
        RedPaletteColorLookupTableData=lut.tobytes(),
        GreenPaletteColorLookupTableData=lut.tobytes(),
        BluePaletteColorLookupTableData=lut.tobytes(),
    )
    np.testing.assert_array_equal(read_xray(path), png)


def test_pixel_padding_value_excluded_from_min_max(tmp_path, png):
    stored = png.astype(np.uint16) * 16 + 8  # 8..4088
    stored[:, :20] = 4095  # padding strip outside the collimated field
    path = write_dicom(tmp_path / "pad.dcm", stored, bits_stored=12, PixelPaddingValue=4095)
    out = read_xray(path)
    np.testing.assert_array_equal(out[:, 20:], png[:, 20:])  # range taken from real pixels only
    assert (out[:, :20] == 255).all()
