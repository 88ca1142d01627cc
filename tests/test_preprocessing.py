"""preprocessing.py on the real sample: the folder contract, workers, errors, atomic output."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import preprocessing
from chexnet.utils import InputError
from chexnet.images import load_stored
from chexnet.preprocessed import load_prepared, read_valid_boxes, store_images
from chexnet.nih import read_data_entry

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = ("meta.json", "train_X.npy", "train_y.npy", "valid_X.npy", "valid_y.npy",
           "valid_boxes.csv")


def cli(*argv):
    return subprocess.run([sys.executable, str(ROOT / "preprocessing.py"), *map(str, argv)],
                          capture_output=True, text=True, cwd=ROOT)


def inputs(sample_dir, train=None, valid=None, tmp_path=None):
    """The six positional arguments; train/valid replace the lists with the given names."""
    lists = []
    for split, names in (("train", train), ("valid", valid)):
        if names is None:
            lists.append(sample_dir / f"{split}.txt")
        else:
            lists.append(tmp_path / f"{split}.txt")
            lists[-1].write_text("".join(f"{n}\n" for n in names))
    return [sample_dir / "images", sample_dir / "Data_Entry_2017.csv",
            sample_dir / "BBox_List_2017.csv", *lists]


def run_main(argv):
    preprocessing.main(preprocessing.get_args_parser().parse_args([*map(str, argv), "--quiet"]))


def test_cli_end_to_end_writes_a_folder_load_prepared_accepts(sample_dir, tmp_path):
    out = tmp_path / "prep"
    result = cli(*inputs(sample_dir), out, "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "19 train + 8 valid images" in result.stdout
    data = load_prepared(out)
    train_names = (sample_dir / "train.txt").read_text().split()
    assert data.train.names == train_names and data.train.images.shape == (19, 256, 256)
    assert data.valid.images.shape == (8, 256, 256)
    for split in (data.train, data.valid):  # every row is the image of its name, list order kept
        for i, name in enumerate(split.names):
            assert np.array_equal(split.images[i], load_stored(sample_dir / "images" / name))
    table = read_data_entry(sample_dir / "Data_Entry_2017.csv")
    # 00000100_000: Atelectasis|Effusion|Infiltration
    assert data.train.labels[0].tolist() == [1, 0, 1, 1, 0, 0, 0, 0]
    known = data.meta["class_names"]
    assert data.train.labels.sum() == sum(len([l for l in table[n].labels if l in known])
                                          for n in train_names)
    boxes = read_valid_boxes(out)
    assert len(boxes) == 6 and {b["image"] for b in boxes} <= set(data.valid.names)
    assert {"image": "00026911_000.png", "label": "Infiltration"}.items() <= boxes[4].items()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sources"]["bbox_list"].endswith("BBox_List_2017.csv") and meta["image_size"] == 256
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # no temporary left


def test_workers_1_and_2_write_identical_arrays(sample_dir, tmp_path):
    run_main([*inputs(sample_dir), tmp_path / "one", "--workers", "1"])
    run_main([*inputs(sample_dir), tmp_path / "two", "--workers", "2", "--chunk", "3"])
    for name in OUTPUTS:
        one, two = (tmp_path / "one" / name).read_bytes(), (tmp_path / "two" / name).read_bytes()
        assert one == two, name


def test_runs_written_in_any_order_fill_their_own_rows(sample_dir, tmp_path):
    names = sorted(p.name for p in (sample_dir / "images").iterdir())[:7]
    paths = [str(sample_dir / "images" / n) for n in names]
    out = tmp_path / "x.npy"
    done = list(store_images(paths, out, workers=2, chunk=3))  # runs of 3, 3, 1
    assert sorted(done) == [1, 3, 3]
    stored = np.load(out, allow_pickle=False)
    assert stored.dtype == np.uint8
    assert np.array_equal(stored, np.stack([load_stored(p) for p in paths]))


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def assert_nothing_written(out):
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_missing_image_is_an_error_before_any_output(sample_dir, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(sample_dir / "images", images)
    (images / "00000574_000.png").unlink()
    argv = inputs(sample_dir)
    out = tmp_path / "prep"
    result = cli(images, *argv[1:], out)
    assert_one_line_error(result, f"{images / '00000574_000.png'}: image not found",
                          "train.txt line 3")
    assert_nothing_written(out)


def test_name_absent_from_table_names_list_and_line(sample_dir, tmp_path):
    out = tmp_path / "prep"
    result = cli(*inputs(sample_dir, valid=["00010022_000.png", "99999999_000.png"],
                         tmp_path=tmp_path), out)
    assert_one_line_error(result, "valid.txt: line 2: 99999999_000.png is not in the label table")
    assert_nothing_written(out)


def test_empty_list(sample_dir, tmp_path):
    out = tmp_path / "prep"
    result = cli(*inputs(sample_dir, train=[], tmp_path=tmp_path), out)
    assert_one_line_error(result, "train.txt: the list is empty")
    assert_nothing_written(out)


def test_table_without_expected_columns(sample_dir, tmp_path):
    table = tmp_path / "Data_Entry_2017.csv"
    table.write_text((sample_dir / "Data_Entry_2017.csv").read_text().replace("Image Index",
                                                                              "Image", 1))
    argv = inputs(sample_dir)
    out = tmp_path / "prep"
    result = cli(argv[0], table, *argv[2:], out)
    assert_one_line_error(result, f"{table}: missing column(s) Image Index")
    assert_nothing_written(out)


def test_duplicate_in_a_list_names_the_line(sample_dir, tmp_path):
    names = ["00000100_000.png", "00000404_000.png", "00000100_000.png"]
    with pytest.raises(InputError, match=r"train.txt: line 3: 00000100_000.png repeats line 1$"):
        run_main([*inputs(sample_dir, train=names, tmp_path=tmp_path), tmp_path / "prep"])


def test_crlf_and_blank_lines_in_lists(sample_dir, tmp_path):
    train = tmp_path / "train.txt"
    train.write_bytes(b"00000100_000.png 1 0 1\r\n\r\n00000404_000.png\r\n")
    argv = inputs(sample_dir)
    run_main([*argv[:3], train, argv[4], tmp_path / "prep"])
    assert load_prepared(tmp_path / "prep").train.names == ["00000100_000.png", "00000404_000.png"]


def test_split_leaks_are_warnings(sample_dir, tmp_path, capsys):
    argv = inputs(sample_dir, train=["00000100_000.png", "00001369_000.png"],
                  valid=["00001369_000.png", "00002578_000.png"], tmp_path=tmp_path)
    run_main([*argv, tmp_path / "prep"])
    err = capsys.readouterr().err
    assert "warning: 1 image(s) are in both" in err and "00001369_000.png" in err
    assert load_prepared(tmp_path / "prep").valid.names == ["00001369_000.png", "00002578_000.png"]
    # every sample image is its own patient: give 00002578_000 the patient of 00000100_000
    table = tmp_path / "Data_Entry_2017.csv"
    table.write_text((sample_dir / "Data_Entry_2017.csv").read_text().replace(
        "00002578_000.png,Nodule,0,2578,", "00002578_000.png,Nodule,0,100,"))
    argv = inputs(sample_dir, train=["00000100_000.png"], valid=["00002578_000.png"],
                  tmp_path=tmp_path)
    run_main([argv[0], table, *argv[2:], tmp_path / "prep2"])
    err = capsys.readouterr().err
    assert "image(s) are in both" not in err
    assert "warning: 1 patient(s) have images in both" in err and "patient 100" in err


def test_decode_error_aborts_and_keeps_the_previous_folder(sample_dir, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(sample_dir / "images", images)
    argv = [images, *inputs(sample_dir)[1:]]
    out = tmp_path / "prep"
    run_main([*argv, out])
    before = {name: (out / name).read_bytes() for name in OUTPUTS}
    bad = images / "00004001_000.png"  # 8th of train.txt: the pool is well under way
    bad.write_bytes(bad.read_bytes()[:30_000])
    result = cli(*argv, out, "--workers", "2", "--chunk", "2")
    assert result.returncode == 2
    assert f"error: {bad}: cannot decode" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # no temporary left behind
    assert all((out / name).read_bytes() == data for name, data in before.items())


def test_rerun_after_a_killed_run_removes_its_temporaries(sample_dir, tmp_path):
    out = tmp_path / "prep"
    out.mkdir()
    (out / ".train_X.npy.k1ll3d.tmp").write_bytes(b"\x93NUMPY half")  # what SIGKILL leaves behind
    (out / "notes.txt").write_text("the user's own file")
    run_main([*inputs(sample_dir, train=["00000100_000.png"], valid=["00026911_000.png"],
                      tmp_path=tmp_path), out])
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUTS, "notes.txt"])
    assert load_prepared(out).valid.names == ["00026911_000.png"]
