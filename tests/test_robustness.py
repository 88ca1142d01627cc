"""Robustness (issue 7): bad input, interruptions and untrusted files. tests/README.md maps every
case to the test that proves it; the cases already proven elsewhere are only referenced there.

The real sample PNGs are used throughout; the stage scripts run as the user runs them (a
subprocess) where the exit status and stderr are the point.
"""
import ast
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from chexnet import model_dir
from chexnet import preprocessed
import preprocessing
from chexnet.boxfile import read_box_file
from chexnet.utils import InputError
from chexnet.images import load_stored
from chexnet.nih import read_bbox_list

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = ("meta.json", "train_X.npy", "train_y.npy", "valid_X.npy", "valid_y.npy",
           "valid_boxes.csv")
TRAIN = ["00000100_000.png", "00000404_000.png", "00000574_000.png", "00000920_000.png",
         "00001933_000.png", "00004001_000.png", "00008386_000.png", "00013125_000.png"]
VALID = ["00001369_000.png", "00026911_000.png", "00002578_000.png"]


def script(name, *argv, **kw):
    return subprocess.run([sys.executable, str(ROOT / name), *map(str, argv)], capture_output=True,
                          text=True, cwd=kw.pop("cwd", ROOT), timeout=300, **kw)


def assert_one_line_error(result, *fragments):
    """What the user sees: exit status 2 and one stderr line 'error: ...' naming the file, last,
    after the progress bar if any; no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:] and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert str(fragment) in errors[0], (fragment, errors[0])


def write_lists(folder, train, valid):
    for split, names in (("train", train), ("valid", valid)):
        (folder / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return folder / "train.txt", folder / "valid.txt"


def linked_images(sample_dir, folder, names):
    """An image folder of symlinks to the (read-only) sample PNGs, for a test to add files to."""
    folder.mkdir()
    for name in names:
        (folder / name).symlink_to(sample_dir / "images" / name)
    return folder


# ------------------------------------------------------------ bad images, through preprocessing.py

def _bad_bytes(sample_dir, kind):
    good = (sample_dir / "images" / "00000404_000.png").read_bytes()
    if kind == "truncated":
        return good[:len(good) // 3]  # a whole PNG header, a third of the pixels
    if kind == "empty":
        return b""
    if kind == "not an image":
        return b"Image Index,Finding Labels\n" * 100  # a CSV saved under a .png name
    ok, data = cv2.imencode(".png", np.zeros((200, 600), np.uint8))
    return data.tobytes()  # "too small": a valid PNG of 600x200


@pytest.mark.parametrize("kind, message", [
    ("truncated", "cannot decode"),
    ("empty", "empty file"),
    ("not an image", "cannot decode"),
    ("too small", "image is 600x200 px; need at least 256 px on each side"),
])
def test_bad_image_is_one_line_error_and_writes_nothing(sample_dir, tmp_path, kind, message):
    images = linked_images(sample_dir, tmp_path / "images",
                           ["00000100_000.png", "00026911_000.png"])
    bad = images / "00000404_000.png"
    bad.write_bytes(_bad_bytes(sample_dir, kind))
    train_txt, valid_txt = write_lists(tmp_path, ["00000100_000.png", "00000404_000.png"],
                                       ["00026911_000.png"])
    out = tmp_path / "prep"
    result = script("preprocessing.py", images, sample_dir / "Data_Entry_2017.csv",
                    sample_dir / "BBox_List_2017.csv", train_txt, valid_txt, out, "--workers", "1")
    assert_one_line_error(result, f"{bad}: {message}")
    assert not out.exists() or list(out.iterdir()) == []  # nothing half-written, no temporary


def test_jpeg_and_16bit_png_are_read_with_the_right_values(sample_dir, tmp_path):
    """Read, not refused: a 16-bit PNG gives the 8-bit values exactly; a JPEG (here under a .jpg
    name the label table lists) gives the PNG's values up to its compression error."""
    images = linked_images(sample_dir, tmp_path / "images", ["00000100_000.png"])
    gray404 = cv2.imread(str(sample_dir / "images" / "00000404_000.png"), cv2.IMREAD_UNCHANGED)
    gray574 = cv2.imread(str(sample_dir / "images" / "00000574_000.png"), cv2.IMREAD_UNCHANGED)
    # v -> v * 257: exact
    cv2.imwrite(str(images / "00000404_000.png"), gray404.astype(np.uint16) * 257)
    cv2.imwrite(str(images / "00000574_000.jpg"), gray574, [cv2.IMWRITE_JPEG_QUALITY, 95])
    table = tmp_path / "Data_Entry_2017.csv"
    text = (sample_dir / "Data_Entry_2017.csv").read_text()
    row = next(line for line in text.splitlines() if line.startswith("00000574_000.png"))
    table.write_text(text + row.replace(".png", ".jpg", 1) + "\n")
    train_txt, valid_txt = write_lists(tmp_path, ["00000404_000.png", "00000574_000.jpg"],
                                       ["00000100_000.png"])
    out = tmp_path / "prep"
    preprocessing.main(preprocessing.get_args_parser().parse_args(
        [str(images), str(table), str(sample_dir / "BBox_List_2017.csv"), str(train_txt),
         str(valid_txt), str(out), "--workers", "1", "--quiet"]))
    data = preprocessed.load_prepared(out)
    assert np.array_equal(data.train.images[0],
                          load_stored(sample_dir / "images" / "00000404_000.png"))
    diff = (data.train.images[1].astype(int)
            - load_stored(sample_dir / "images" / "00000574_000.png"))
    assert np.abs(diff).max() <= 3 and np.abs(diff).mean() < 0.5
    # 574's row: Mass, Nodule, Pneumothorax
    assert data.train.labels[1].tolist() == [0, 0, 0, 0, 1, 1, 0, 1]


# ---------------------------------------------------------------- tables and box files

def test_unknown_label_in_the_box_table_names_the_row(tmp_path):
    boxes = tmp_path / "BBox_List_2017.csv"
    boxes.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                     "a.png,Mass,1,2,3,4\nb.png,Infiltrate,1,2,3,4\nc.png,Tumour,1,2,3,4\n")
    with pytest.raises(InputError, match=r"BBox_List_2017.csv: row 4: unknown box label 'Tumour'$"):
        read_bbox_list(boxes)


@pytest.mark.parametrize("text, line, message", [
    ("a.png 2\nMass 1.0 2.0 3.0 4.0\n", 1, "header says 2 boxes, found 1"),
    ("a.png 2\nMass 1.0 2.0 3.0 4.0\nb.png 0\n", 3, "expected '[disease]"),
    ("a.png 1\nMass 1.0 2.0 3.0 4.0\nMass 5.0 6.0 7.0 8.0\n", 3, "a box line where"),
    # integer coordinates: 'Mass 5 6 7 0' once read as an image 'Mass 5 6 7' with 0 boxes
    ("a.png 1\nMass 1 2 3 4\nMass 5 6 7 0\nb.png 0\n", 3, "a box line where"),
])
def test_box_file_count_mismatch_names_the_line(tmp_path, text, line, message):
    path = tmp_path / "bounding_box.txt"
    path.write_text(text)
    with pytest.raises(InputError, match=re.escape(f"{path}:{line}: {message}")):
        read_box_file(path)


def test_broken_preprocessed_arrays_are_one_line_errors(sample_dir, tmp_path):
    out = tmp_path / "prep"
    preprocessing.main(preprocessing.get_args_parser().parse_args(
        [str(sample_dir / "images"), str(sample_dir / "Data_Entry_2017.csv"),
         str(sample_dir / "BBox_List_2017.csv"),
         *map(str, write_lists(tmp_path, TRAIN[:2], VALID[:1])), str(out), "--workers", "1",
         "--quiet"]))
    y = out / "train_y.npy"
    good = y.read_bytes()
    y.write_bytes(good[:-5])  # truncated
    with pytest.raises(InputError, match=rf"^{re.escape(str(y))}: not a readable uint8 .npy array"):
        preprocessed.load_prepared(out)
    y.write_bytes(good)
    (out / "valid_boxes.csv").write_text(
        "image,label,x,y,w,h\n00026911_000.png,Infiltration,1,2,three,4\n")
    with pytest.raises(InputError, match=r"valid_boxes.csv: row 2: expected image,label,x,y,w,h"):
        preprocessed.read_valid_boxes(out)
    meta = json.loads((out / "meta.json").read_text())
    del meta["valid_images"]
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"meta.json: missing valid_images"):
        preprocessed.load_prepared(out)


# ---------------------------------------------------------------- untrusted files

class RunsCode:
    """Unpickling this runs `touch MARKER`: the classic malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_localization_cli_refuses_a_checkpoint_that_runs_code(sample_dir, tmp_path):
    import torch

    marker, evil = tmp_path / "pwned", tmp_path / "best.pt"
    torch.save({"format": "chexnet-checkpoint", "version": 1, "model": RunsCode(marker)}, evil)
    test_txt = tmp_path / "test.txt"
    test_txt.write_text("00001933_000.png\n")
    out = tmp_path / "bounding_box.txt"
    result = script("denseNet_localization.py", test_txt, sample_dir / "images", "--model", evil,
                    "--out", out, "--thresholds", "0.5", "--device", "cpu", "--workers", "0",
                    cwd=tmp_path)
    assert_one_line_error(result, f"{evil}: refused")
    assert not marker.exists() and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "test.txt"]


def test_localization_refuses_another_architecture(sample_dir, tmp_path):
    import torch

    import denseNet_localization

    ckpt = tmp_path / "resnet.pt"
    torch.save({"format": "chexnet-checkpoint", "version": 1, "arch": "resnet50", "model": {},
                "class_names": ["A", "B"], "thresholds": None}, ckpt)
    test_txt = tmp_path / "test.txt"
    test_txt.write_text("00001933_000.png\n")
    out = tmp_path / "bounding_box.txt"
    args = denseNet_localization.get_args_parser().parse_args(
        [str(test_txt), str(sample_dir / "images"), "--model", str(ckpt), "--out", str(out),
         "--device", "cpu"])
    with pytest.raises(InputError,
                       match=rf"^{re.escape(str(ckpt))}: architecture 'resnet50' is not supported"):
        denseNet_localization.main(args)
    assert not out.exists()


def test_pickled_numpy_files_are_refused_without_running_code(sample_dir, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "thresholds.npy"
    np.save(evil, np.array([RunsCode(marker)] * 8, dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=rf"^{re.escape(str(evil))}: cannot read thresholds"):
        model_dir.load_thresholds(evil)
    out = tmp_path / "prep"
    preprocessing.main(preprocessing.get_args_parser().parse_args(
        [str(sample_dir / "images"), str(sample_dir / "Data_Entry_2017.csv"),
         str(sample_dir / "BBox_List_2017.csv"),
         *map(str, write_lists(tmp_path, TRAIN[:2], VALID[:1])), str(out), "--workers", "1",
         "--quiet"]))
    np.save(out / "valid_y.npy", np.array([RunsCode(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"valid_y.npy: not a readable uint8 .npy array"):
        preprocessed.load_prepared(out)
    assert not marker.exists()


def project_sources():
    """The project's code: the root's modules, the package and the other commands (benchmarks and
    tests are not the pipeline)."""
    sources = sorted(ROOT.glob("*.py")) + sorted((ROOT / "chexnet").glob("*.py")) \
        + sorted((ROOT / "tools").glob("*.py"))
    assert len(sources) > 20 and any(p.parent.name == "chexnet" for p in sources)
    return sources


def calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def keyword(call, name):
    value = next((k.value for k in call.keywords if k.arg == name), None)
    return None if value is None else ast.literal_eval(value)


def test_no_pickle_anywhere_and_every_load_is_weights_only():
    problems = []
    for path in project_sources():
        tree = ast.parse(path.read_text())
        for call, name in calls(tree):
            where = f"{path.relative_to(ROOT)}:{call.lineno}: {ast.unparse(call)[:80]}"
            if name == "torch.load" and keyword(call, "weights_only") is not True:
                problems.append(f"{where}: torch.load without weights_only=True")
            if name in ("np.load", "np.save", "numpy.load", "numpy.save") \
                    and keyword(call, "allow_pickle") is not False:
                problems.append(f"{where}: without allow_pickle=False")
            if re.match(r"(pickle|cPickle|dill|joblib|marshal|shelve)\.|.*read_pickle|.*to_pickle",
                        name):
                problems.append(f"{where}: pickle")
    assert problems == []


# Functions that write a file the caller handed them, always a temporary name or a private
# temporary folder; each was read: (module, function) -> who makes the write atomic.
WRITES_TO_A_TEMPORARY = {
    ("preprocessing.py", "write_boxes"): "write_folder passes atomic_path's temporary name",
    ("chexnet/distributed.py", "quiet_other_ranks"): "opens os.devnull: no file is written",
}
ATOMIC = re.compile(r"atomic_path|write_text_atomic|TemporaryDirectory|mkdtemp")


def write_calls(function):
    for call, name in calls(function):
        mode = call.args[1] if name == "open" and len(call.args) > 1 else next(
            (k.value for k in call.keywords if k.arg == "mode"), None)
        if name == "open" and isinstance(mode, ast.Constant) \
                and re.search(r"[wax+]", str(mode.value)):
            yield call
        elif re.search(r"(\.write_text|\.write_bytes|^np\.save|^torch\.save|\.savefig|^cv2\.imwrite"
                       r"|\.tofile)$", name):
            yield call
        elif name.endswith("ZipFile") and len(call.args) > 1 \
                and getattr(call.args[1], "value", "r") != "r":
            yield call


def test_every_output_is_written_through_a_temporary_name():
    problems = []
    for path in project_sources():
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            writes = [c for c in write_calls(function)
                      if not any(c in list(ast.walk(inner)) for inner in function.body
                                 if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)))]
            key = (path.relative_to(ROOT).as_posix(), function.name)
            if writes and not ATOMIC.search(ast.unparse(function)) \
                    and key not in WRITES_TO_A_TEMPORARY:
                problems += [f"{path.relative_to(ROOT)}:{c.lineno} in {function.name}: "
                             f"{ast.unparse(c)[:80]}" for c in writes]
    assert problems == [], ("writes outside chexnet.utils.atomic_path (add to "
                            "WRITES_TO_A_TEMPORARY only after reading them)")


# ---------------------------------------------------------------- interruptions

# preprocessing.py as the user runs it, with each decode slowed and runs of 2 images (--chunk 2),
# so that a kill lands while the arrays are half written.
SLOW_PREPROCESSING = """
import signal, sys, time
# Ctrl-C raises KeyboardInterrupt even where the suite runs with SIGINT ignored (a background job
# of a non-interactive shell starts so, and Python then installs no handler of its own)
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, sys.argv[1])
import preprocessing
from chexnet import preprocessed
from chexnet.utils import run_cli
decode = preprocessed._decode
preprocessed._decode = lambda path, *rest: (time.sleep(0.15), decode(path, *rest))[1]
run_cli(lambda: preprocessing.main(preprocessing.get_args_parser().parse_args(sys.argv[2:])))
"""


def prep_argv(sample_dir, tmp_path, out, train=TRAIN, valid=VALID):
    lists = tmp_path / f"lists-{len(train)}"
    lists.mkdir(exist_ok=True)
    return [str(sample_dir / "images"), str(sample_dir / "Data_Entry_2017.csv"),
            str(sample_dir / "BBox_List_2017.csv"), *map(str, write_lists(lists, train, valid)),
            str(out)]


def start_slow(argv):
    return subprocess.Popen([sys.executable, "-c", SLOW_PREPROCESSING, str(ROOT), *argv,
                             "--workers", "1", "--chunk", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_half_written_images(process, out, timeout=120.0):
    """Until a temporary train_X holds pixels (a window was written) while the run goes on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        for temp in out.glob(".train_X.npy.*.tmp"):
            data = temp.read_bytes()
            if np.frombuffer(data[128:], np.uint8).any():
                return
        time.sleep(0.02)
    raise AssertionError("preprocessing never started writing")


def kill(process, sig):
    os.killpg(process.pid, sig)  # its own session: the decoder and nothing else
    process.communicate(timeout=60)
    return process.returncode


def folder_bytes(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_preprocessing_killed_half_way_then_rerun_equals_an_uninterrupted_run(sample_dir, tmp_path):
    reference = tmp_path / "reference"
    preprocessing.main(preprocessing.get_args_parser().parse_args(
        [*prep_argv(sample_dir, tmp_path, reference), "--workers", "1", "--quiet"]))

    out = tmp_path / "prep"
    argv = prep_argv(sample_dir, tmp_path, out)
    process = start_slow(argv)
    wait_for_half_written_images(process, out)
    assert kill(process, signal.SIGKILL) == -signal.SIGKILL
    left = sorted(p.name for p in out.iterdir())
    assert left and all(name.startswith(".") and name.endswith(".tmp") for name in left), left
    with pytest.raises(InputError, match="meta.json: not found"):  # nothing that looks whole
        preprocessed.load_prepared(out)

    rerun = script("preprocessing.py", *argv, "--workers", "2")
    assert rerun.returncode == 0, rerun.stderr
    assert folder_bytes(out) == folder_bytes(reference)  # byte for byte, temporaries gone

    # Killed while replacing a complete folder (other lists): the complete folder stays as it was.
    process = start_slow(prep_argv(sample_dir, tmp_path, out, TRAIN[::-1], VALID[:2]))
    wait_for_half_written_images(process, out)
    kill(process, signal.SIGKILL)
    assert {k: v for k, v in folder_bytes(out).items()
            if not k.startswith(".")} == folder_bytes(reference)
    assert preprocessed.load_prepared(out).train.names == TRAIN


def test_preprocessing_ctrl_c_leaves_no_temporary(sample_dir, tmp_path):
    out = tmp_path / "prep"
    process = start_slow(prep_argv(sample_dir, tmp_path, out))
    wait_for_half_written_images(process, out)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err
    assert list(out.iterdir()) == []


KILLED_WRITER = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from chexnet.utils import atomic_path
with atomic_path(sys.argv[2]) as tmp, open(tmp, "wb") as f:
    f.write(b"new " * 1000)
    f.flush()
    print(tmp, flush=True)
    time.sleep(60)
    f.write(b"end")
"""


def test_a_write_killed_midway_never_shows_under_the_final_name(tmp_path):
    final = tmp_path / "last.pt"
    for before in (None, b"the previous complete file"):
        if before is not None:
            final.write_bytes(before)
        process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(ROOT), str(final)],
                                   stdout=subprocess.PIPE, text=True, start_new_session=True)
        temp = Path(process.stdout.readline().strip())
        assert temp.parent == tmp_path and temp.name.startswith(".last.pt.")
        assert temp.stat().st_size == 4000
        kill(process, signal.SIGKILL)
        assert (final.read_bytes() if final.exists() else None) == before
        temp.unlink()


def test_stale_temporaries_of_named_outputs_are_removed_and_nothing_else(tmp_path):
    from chexnet.utils import remove_stale_temporaries

    stale = tmp_path / ".last.pt.k2j3.tmp"
    other = tmp_path / ".notes.txt.k2j3.tmp"
    final = tmp_path / "last.pt"
    for path in (stale, other, final):
        path.write_text("x")
    remove_stale_temporaries(tmp_path, ["last.pt", "best.pt"])
    assert not stale.exists()
    assert other.exists() and final.exists()
