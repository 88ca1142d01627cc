"""Any chest X-ray a user has (issue 15): any size, DICOM, one image or a folder, boxes in its
pixels.

Real pixels throughout: DICOMs written with pydicom from a sample PNG, a 2500x2048 PNG and a JPEG
made from sample images, localized by a random-init DenseNet-121 through the real engine and CLI.
"""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model import build_model
from chexnet import boxes, localize, preprocessed
from chexnet.boxfile import Box, read_box_file
from chexnet.constants import AVERAGE_BOXES, CLASS_NAMES
from chexnet.images import load_stored_sized, read_xray, resize_stored
from chexnet.utils import InputError

pytest.importorskip("pydicom")
from test_xray_files import DX_FOR_PRESENTATION, write_dicom  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "00009745_000.png"  # spans 0..255, so the DICOM encodings below decode to its exact pixels
BIG = (2048, 2500)  # width, height: neither square nor a multiple of 1024 in height


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_model(len(CLASS_NAMES), weights="none").eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, random_checkpoint) -> Path:
    """net's weights; thresholds.npy 0 beside it: every class active."""
    return random_checkpoint(tmp_path_factory.mktemp("run") / "model", epoch=1,
                             thresholds=[0.5] * 8, resize="area")


SAMPLE = ROOT / "sample"


@pytest.fixture(scope="module")
def png() -> np.ndarray:
    return read_xray(SAMPLE / "images" / SOURCE)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, png) -> Path:
    """A folder mixing DICOM (MONOCHROME2, MONOCHROME1, 12-bit with a rescale, a window, no
    extension), PNG (1024 and 2500x2048) and JPEG (768x640) files."""
    folder = tmp_path_factory.mktemp("mixed")
    stored = png.astype(np.uint16) * 16
    write_dicom(folder / "m2.dcm", png)
    write_dicom(folder / "m1.dcm", 255 - png, photometric="MONOCHROME1")
    write_dicom(folder / "r12.dcm", stored, bits_stored=12, sop_class=DX_FOR_PRESENTATION,
                RescaleSlope=1, RescaleIntercept=-1024, RescaleType="US")
    write_dicom(folder / "win.dcm", stored, bits_stored=12, RescaleSlope=1, RescaleIntercept=-1024,
                WindowCenter=1016.5, WindowWidth=4081)
    write_dicom(folder / "IM0001", png)
    cv2.imwrite(str(folder / SOURCE), png)
    other = read_xray(SAMPLE / "images" / "00008386_000.png")
    cv2.imwrite(str(folder / "big.png"), cv2.resize(other, BIG, interpolation=cv2.INTER_CUBIC))
    small = cv2.resize(read_xray(SAMPLE / "images" / "00013125_000.png"), (640, 768),
                       interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(folder / "chest.jpg"), small, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return folder


def localize_paths(net, paths, resize="original"):
    return list(localize.iter_localize(net, [str(p) for p in paths], np.zeros(8, np.float32),
                                       np.array(AVERAGE_BOXES), torch.device("cpu"), batch_size=4,
                                       resize=resize))


def inside(box: Box, size) -> bool:
    return box.x >= 0 and box.y >= 0 and box.w > 0 and box.h > 0 and \
        box.x + box.w <= size[0] + 1e-6 and box.y + box.h <= size[1] + 1e-6


# ---------------------------------------------------------------- geometry

def test_peak_at_a_known_place_lands_at_the_matching_place_of_any_image():
    row, col = 60, 150  # row != col: a swapped axis would move the box far off
    heatmap = np.zeros((224, 224))
    heatmap[row - 3:row + 4, col - 3:col + 4] = 1.0
    table = np.array(AVERAGE_BOXES)
    nodule = CLASS_NAMES.index("Nodule")
    lines = boxes.class_boxes(nodule, heatmap, table)
    assert [boxes.to_image(b, (1024, 1024)) for b in lines] == lines  # 1024: the very same numbers
    for width, height in [BIG, (640, 768), (3000, 3000)]:
        peak = boxes.to_image(lines[1], (width, height))
        centre_x, centre_y = peak.x + peak.w / 2, peak.y + peak.h / 2
        # the box is whole crop pixels: its centre is within one crop pixel of the peak's
        assert abs(centre_x - (col + 16 + 0.5) * width / 256) <= width / 256
        assert abs(centre_y - (row + 16 + 0.5) * height / 256) <= height / 256
        assert peak.w == pytest.approx(lines[1].w * width / 1024)
        assert peak.h == pytest.approx(lines[1].h * height / 1024)


def test_boxes_scale_with_the_image(net, tmp_path, sample_dir):
    """A 2500x2048 image and a 1024 one with the same 256 pixels: same probabilities and heatmaps,
    and every box of the large one is the 1024 one's scaled by (2048 / 1024, 2500 / 1024)."""
    big = cv2.resize(read_xray(sample_dir / "images" / "00008386_000.png"), BIG,
                     interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(tmp_path / "big.png"), big)
    stored, size = load_stored_sized(tmp_path / "big.png", "area")
    assert size == BIG
    # Nearest 4x upsampling: the area average brings it back to exactly these 256 pixels.
    cv2.imwrite(str(tmp_path / "same.png"),
                cv2.resize(stored, (1024, 1024), interpolation=cv2.INTER_NEAREST))
    assert np.array_equal(load_stored_sized(tmp_path / "same.png", "area")[0], stored)
    large, square = localize_paths(net, [tmp_path / "big.png", tmp_path / "same.png"],
                                   resize="area")
    assert large.size == BIG and square.size == (1024, 1024)
    np.testing.assert_allclose(large.probs, square.probs, atol=1e-5)
    assert len(large.boxes) == len(square.boxes) > 8  # all 8 classes active, with heatmap boxes
    for a, b in zip(large.boxes, square.boxes):
        assert a.label == b.label and inside(a, BIG)
        np.testing.assert_allclose([a.x, a.y, a.w, a.h], [b.x * 2048 / 1024, b.y * 2500 / 1024,
                                                          b.w * 2, b.h * 2500 / 1024])


def test_dicom_and_its_png_source_give_the_same_probabilities(net, mixed):
    names = [SOURCE, "m2.dcm", "m1.dcm", "r12.dcm", "win.dcm", "IM0001"]
    results = localize_paths(net, [mixed / n for n in names])
    for result in results[1:]:
        np.testing.assert_allclose(result.probs, results[0].probs, atol=1e-4)
        assert result.boxes == results[0].boxes and result.size == (1024, 1024)


# ---------------------------------------------------------------- the command

def run(*argv, cwd):
    return subprocess.run([sys.executable, str(ROOT / "denseNet_localization.py"), *map(str, argv),
                           "--workers", "0", "--device", "cpu"],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_a_mixed_folder_in_one_command(checkpoint, mixed, tmp_path):
    out = tmp_path / "boxes.txt"
    result = run(mixed, "--model", checkpoint, "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    files = sorted(p.name for p in mixed.iterdir())
    lines = result.stdout.strip().splitlines()
    per_image = [line for line in lines if not line.startswith("wrote ")]
    assert [line.split(" ", 1)[0] for line in per_image] == [str(mixed / f) for f in files]
    sizes = {"big.png": BIG, "chest.jpg": (640, 768)}
    for line, name in zip(per_image, files):
        width, height = sizes.get(name, (1024, 1024))
        # threshold 0: every class
        assert line.split()[1] == f"{width}x{height}:" and "Atelectasis " in line
    entries = read_box_file(out)
    assert [e.image_path for e in entries] == [str(mixed / f) for f in files]
    for entry, name in zip(entries, files):
        size = sizes.get(name, (1024, 1024))
        assert len(entry.boxes) > 8 and all(inside(b, size) for b in entry.boxes)


def localize_main(*argv):
    """denseNet_localization.py in this process (the subprocess runs above and below show the
    command's exit status and its one error line)."""
    import denseNet_localization
    args = denseNet_localization.get_args_parser().parse_args(
        [*map(str, argv), "--workers", "0", "--device", "cpu"])
    denseNet_localization.main(args)


def test_one_image_and_the_list_form_agree(checkpoint, mixed, tmp_path, capsys):
    plots = tmp_path / "plots"
    localize_main(mixed / "big.png", "--model", checkpoint, "--out", tmp_path / "one.txt",
                  "--plots", plots)
    assert capsys.readouterr().out.startswith(f"{mixed / 'big.png'} 2048x2500: ")
    picture = cv2.imread(str(plots / "big_boxes.png"))
    assert picture.shape[:2] == (round(512 * 2500 / 2048), 512)  # the image's aspect, 512 wide
    assert (plots / "big_heatmap_Nodule.png").is_file() and (plots / "contact_sheet.png").is_file()
    (tmp_path / "list.txt").write_text("big.png\n")
    localize_main(tmp_path / "list.txt", mixed, "--model", checkpoint,
                  "--out", tmp_path / "list_out.txt")
    assert capsys.readouterr().out.startswith("wrote ")  # the list form prints no per-image lines
    assert (tmp_path / "one.txt").read_text() == (tmp_path / "list_out.txt").read_text()


def test_a_listed_dicom_without_preamble_or_extension(checkpoint, png, tmp_path):
    """Named in TEST_TXT, OpenCV cannot decode it and nothing marks it as DICOM: pydicom reads it
    (force=True), and it localizes as its PNG source."""
    from test_xray_files import write_raw_dicom
    images, out = tmp_path / "images", tmp_path / "boxes.txt"
    images.mkdir()
    write_raw_dicom(images / "IM0002", png)
    cv2.imwrite(str(images / SOURCE), png)
    (tmp_path / "list.txt").write_text(f"IM0002\n{SOURCE}\n")
    localize_main(tmp_path / "list.txt", images, "--model", checkpoint, "--out", out)
    dicom, source = read_box_file(out)
    assert dicom.image_path == str(images / "IM0002") and len(dicom.boxes) > 8
    assert dicom.boxes == source.boxes


def _bad(kind, folder: Path, png) -> tuple[Path, str]:
    """One bad input and the words its error must contain."""
    if kind == "no pixel data":
        return write_dicom(folder / "nopix.dcm", png, pixel_data=False), "no pixel data"
    if kind == "compressed":
        from pydicom.encaps import encapsulate
        return write_dicom(folder / "j2k.dcm", png, transfer_syntax="1.2.840.10008.1.2.4.90",
                           pixel_data=encapsulate([b"\xff" * 64])), "1.2.840.10008.1.2.4.90"
    if kind == "multi-frame":
        return write_dicom(folder / "cine.dcm", np.stack([png, png]), frames=2), "multi-frame"
    if kind == "small":
        cv2.imwrite(str(folder / "thumb.png"), png[:200, :300])
        return folder / "thumb.png", "300x200 px; need at least 256"
    return folder, "empty folder"


@pytest.mark.parametrize("kind", ["no pixel data", "compressed", "multi-frame", "small",
                                  "empty folder"])
@pytest.mark.parametrize("alone", [True, False], ids=["alone", "in a folder"])
def test_bad_input_one_line_nothing_written(checkpoint, png, tmp_path, kind, alone):
    if kind == "empty folder" and not alone:
        pytest.skip("an empty folder has no other images")
    folder = tmp_path / "in"
    folder.mkdir()
    if not alone:  # sorted first: localized (and drawn) before the bad one
        cv2.imwrite(str(folder / "a_good.png"), png)
        cv2.imwrite(str(folder / "b_good.png"), png)
    path, words = _bad(kind, folder, png)
    out, plots = tmp_path / "boxes.txt", tmp_path / "plots"
    # --batch-size 1: the engine yields a batch while the next one runs, so the first good image
    # is drawn before the bad one, two batches later, is decoded
    with pytest.raises(InputError) as err:
        localize_main(path if alone else folder, "--model", checkpoint, "--out", out,
                      "--plots", plots, "--batch-size", "1")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}:") and words in message, message
    assert not out.exists() and not plots.exists() and list(tmp_path.glob(".*")) == []


def test_plots_into_a_folder_already_there(checkpoint, png, tmp_path, capsys):
    """A failed run leaves the folder's earlier pictures as they were; a run that succeeds adds its
    own beside them, replacing those of the same name."""
    folder, plots = tmp_path / "in", tmp_path / "plots"
    folder.mkdir(), plots.mkdir()
    cv2.imwrite(str(folder / "a_good.png"), png)
    cv2.imwrite(str(folder / "b_good.png"), png)
    (plots / "a_good_boxes.png").write_bytes(b"old")
    (plots / "notes.txt").write_text("mine")
    _bad("multi-frame", folder, png)
    argv = ["--model", checkpoint, "--out", tmp_path / "boxes.txt", "--plots", plots,
            "--batch-size", "1"]
    with pytest.raises(InputError, match="multi-frame"):
        localize_main(folder, *argv)
    assert sorted(p.name for p in plots.iterdir()) == ["a_good_boxes.png", "notes.txt"]
    assert (plots / "a_good_boxes.png").read_bytes() == b"old"
    (folder / "cine.dcm").unlink()
    capsys.readouterr()
    localize_main(folder, *argv)
    assert f"into {plots}, and {plots / 'contact_sheet.png'} in " in capsys.readouterr().out
    assert (plots / "notes.txt").read_text() == "mine"
    assert cv2.imread(str(plots / "a_good_boxes.png")).shape == (512, 512, 3)
    assert (plots / "contact_sheet.png").is_file() and list(tmp_path.glob(".*")) == []


def test_bad_image_from_the_command_line(checkpoint, png, tmp_path):
    path, words = _bad("multi-frame", tmp_path, png)
    result = run(path, "--model", checkpoint, "--out", tmp_path / "boxes.txt", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: {path}: ") and words in lines[-1], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "boxes.txt").exists()


def test_images_argument_goes_with_a_list_only(checkpoint, mixed, tmp_path):
    with pytest.raises(InputError, match="IMAGES goes with a list"):
        localize_main(mixed, mixed, "--model", checkpoint, "--out", tmp_path / "b.txt")
    (tmp_path / "list.txt").write_text("big.png\n")
    with pytest.raises(InputError, match="a list of names needs IMAGES"):
        localize_main(tmp_path / "list.txt", "--model", checkpoint, "--out", tmp_path / "b.txt")
    assert not (tmp_path / "b.txt").exists()


# ------------------------------------------------------------ the folder contract and calibration

def test_preprocessed_sizes_old_folders_and_bad_values(tmp_path):
    meta = {"train_images": ["a.png", "b.png"]}
    assert preprocessed._sizes(tmp_path / "meta.json", meta, "train", 2) == [(1024, 1024)] * 2
    meta["train_sizes"] = [[2048, 2500], [1024, 1024]]
    assert preprocessed._sizes(tmp_path / "meta.json", meta, "train", 2) == [(2048, 2500),
                                                                             (1024, 1024)]
    for bad in ([[2048, 2500]], [[2048, 0], [1, 1]], [[2048, 2500.5], [1, 1]], "x"):
        meta["train_sizes"] = bad
        with pytest.raises(InputError, match="train_sizes must be 2 .width, height. pairs"):
            preprocessed._sizes(tmp_path / "meta.json", meta, "train", 2)


def test_preprocessing_keeps_each_images_size(sample_dir, tmp_path):
    from test_robustness import linked_images, script, write_lists
    train, valid = ["00000100_000.png", "00026911_000.png"], ["00000404_000.png"]
    images = linked_images(sample_dir, tmp_path / "images", train)
    big = cv2.resize(read_xray(sample_dir / "images" / valid[0]), BIG, interpolation=cv2.INTER_AREA)
    # a listed NIH name holding a 2048-wide, 2500-high image
    cv2.imwrite(str(images / valid[0]), big)
    train_txt, valid_txt = write_lists(tmp_path, train, valid)
    result = script("preprocessing.py", images, sample_dir / "Data_Entry_2017.csv",
                    sample_dir / "BBox_List_2017.csv", train_txt, valid_txt, tmp_path / "prep",
                    "--workers", "1", "--quiet")
    assert result.returncode == 0, result.stderr
    data = preprocessed.load_prepared(tmp_path / "prep")
    assert data.train.sizes == [(1024, 1024)] * 2 and data.valid.sizes == [BIG]
    assert np.array_equal(data.valid.images[0], resize_stored(big))
    assert json.loads((tmp_path / "prep" / "meta.json").read_text())["valid_sizes"] == [list(BIG)]


def test_calibration_truth_in_the_1024_frame(tmp_path):
    import calibrate
    (tmp_path / preprocessed.VALID_BOXES).write_text(
        "image,label,x,y,w,h\nbig.png,Mass,200.0,250.0,100.0,50.0\n"
        "nih.png,Mass,200.0,250.0,100.0,50.0\n")
    truth = calibrate.truth_of_valid(str(tmp_path), {"big.png": (2048, 2500),
                                                     "nih.png": (1024, 1024)})
    big, nih = truth["big.png"][0], truth["nih.png"][0]
    assert (big.x, big.y, big.w, big.h) == pytest.approx(
        (100.0, 250 * 1024 / 2500, 50.0, 50 * 1024 / 2500))
    assert (nih.x, nih.y, nih.w, nih.h) == (200.0, 250.0, 100.0, 50.0)


def test_boxes_drawn_in_the_images_own_frame(tmp_path):
    from chexnet import localization_figures
    from test_plots import blue, bounding_rect, read_rgb
    pred = Box("Nodule", 300.0, 1800.0, 400.0, 200.0)  # 2048 wide, 2500 high: y beyond 1024
    out = tmp_path / "big.png"
    image = np.full((2500, 2048), 128, np.uint8)
    localization_figures.boxes_figure(image, [pred], None, None, out, size=512, frame=(2048, 2500))
    rgb = read_rgb(out)
    assert rgb.shape == (625, 512, 3)
    s = 512 / 2048  # the same scale on both axes: the picture keeps the image's aspect
    expected = (pred.x * s, pred.y * s, (pred.x + pred.w) * s, (pred.y + pred.h) * s)
    assert np.allclose(bounding_rect(blue(rgb)), expected, atol=3.0)
