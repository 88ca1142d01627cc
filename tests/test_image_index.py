"""IMAGES as users hold the release: PNGs anywhere beneath it (the Kaggle layout), one walk."""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import denseNet_localization
import draw_boxes
import preprocessing
from chexnet.boxfile import ImageBoxes, write_box_file
from chexnet.images import image_paths, index_images
from chexnet.preprocessed import load_prepared
from chexnet.utils import InputError


def kaggle_tree(sample_dir: Path, root: Path) -> dict[str, Path]:
    """The sample's images spread as Kaggle ships the release: images_00K/images/NAME.png."""
    placed = {}
    for k, name in enumerate(sorted(os.listdir(sample_dir / "images"))):
        folder = root / f"images_{k % 3 + 1:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_dir / "images" / name, folder / name)
        placed[name] = folder / name
    return placed


def test_index_finds_every_file_at_any_depth_and_skips_hidden(tmp_path):
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "x.png").write_bytes(b"1")
    (tmp_path / "y.png").write_bytes(b"2")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "z.png").write_bytes(b"3")
    assert index_images(tmp_path) == {"x.png": str(tmp_path / "a" / "b" / "c" / "x.png"),
                                      "y.png": str(tmp_path / "y.png")}
    assert index_images(tmp_path, {"y.png"}) == {"y.png": str(tmp_path / "y.png")}


def test_a_name_found_twice_names_both_paths(tmp_path):
    for part in ("images_001", "images_002"):
        (tmp_path / part).mkdir()
        (tmp_path / part / "x.png").write_bytes(b"1")
    with pytest.raises(InputError, match=r"images_001/x.png: x.png is also at .*images_002/x.png"):
        index_images(tmp_path)
    assert image_paths(tmp_path, []) == []  # nothing wanted: no walk, no error
    index_images(tmp_path, {"other.png"})  # a duplicate nobody asked for is not an error


def test_flat_folders_need_no_walk(sample_dir, monkeypatch):
    monkeypatch.setattr("chexnet.images.index_images", lambda *a: pytest.fail("walked"))
    names = ["00000100_000.png", "00001933_000.png"]
    assert image_paths(sample_dir / "images", names) == [
        os.path.join(sample_dir / "images", n) for n in names]


def test_nested_release_preprocesses_to_the_same_arrays(sample_dir, tmp_path):
    kaggle_tree(sample_dir, tmp_path / "kaggle")
    tables = [sample_dir / f for f in ("Data_Entry_2017.csv", "BBox_List_2017.csv",
                                       "train.txt", "valid.txt")]
    for images, out in ((sample_dir / "images", "flat"), (tmp_path / "kaggle", "nested")):
        preprocessing.main(preprocessing.get_args_parser().parse_args(
            [str(images), *map(str, tables), str(tmp_path / out), "--quiet", "--workers", "1"]))
    flat, nested = load_prepared(tmp_path / "flat"), load_prepared(tmp_path / "nested")
    for a, b in ((flat.train, nested.train), (flat.valid, nested.valid)):
        assert a.names == b.names and np.array_equal(a.images, b.images)
        assert np.array_equal(a.labels, b.labels)


def test_missing_image_of_a_nested_folder_is_still_the_one_line_error(sample_dir, tmp_path):
    kaggle_tree(sample_dir, tmp_path / "kaggle")
    (tmp_path / "list.txt").write_text("00000100_000.png\n99999999_000.png\n")
    with pytest.raises(InputError,
                       match=r"99999999_000.png: image not found \(listed in .*entry 2"):
        denseNet_localization.input_paths(str(tmp_path / "list.txt"), str(tmp_path / "kaggle"))


def test_localization_and_draw_boxes_use_each_images_real_path(sample_dir, tmp_path):
    placed = kaggle_tree(sample_dir, tmp_path / "kaggle")
    names = ["00001933_000.png", "00000100_000.png"]
    (tmp_path / "list.txt").write_text("".join(f"{n}\n" for n in names))
    paths, _ = denseNet_localization.input_paths(str(tmp_path / "list.txt"),
                                                 str(tmp_path / "kaggle"))
    assert paths == [str(placed[n]) for n in names]  # the box file writes these paths
    boxes = tmp_path / "boxes.txt"
    write_box_file(boxes, [ImageBoxes(f"../images/{n}", []) for n in names])
    draw_boxes.main(draw_boxes.get_args_parser().parse_args(
        [str(boxes), "--images", str(tmp_path / "kaggle"), "--out", str(tmp_path / "pics"),
         "--size", "32"]))
    assert sorted(os.listdir(tmp_path / "pics")) == sorted(
        f"{Path(n).stem}_boxes.png" for n in names)
