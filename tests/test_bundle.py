"""The grading bundle: built from a random-init checkpoint, unzipped outside the project, run with
no arguments; it must write what denseNet_localization.py writes, and refuse a bundle that was
changed."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import build_bundle as bundle
import denseNet_localization
import inference
from chexnet import localize
from model import load_checkpoint, new_checkpoint
from chexnet.boxfile import read_box_file
from chexnet.utils import InputError
from chexnet.constants import CLASS_NAMES
from chexnet import calibrated, model_dir

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample"
NAMES = ["00001933_000.png", "00008386_000.png"]  # two real NIH PNGs: the run stays a few seconds
# Classes 0, 2, 4, 7 active on every image (p > 0), the others never (p > 1 is impossible).
THRESHOLDS = np.array([0, 1, 0, 1, 0, 1, 1, 0], dtype=np.float32)
DATA = {"manifest.json", "checkpoint.pt", model_dir.THRESHOLDS, model_dir.BOX_SIZES}


@pytest.fixture(scope="module")
def built(tmp_path_factory, random_checkpoint):
    """(zip path, model folder): model/best.pt with an optimizer state, thresholds.npy beside it."""
    folder = tmp_path_factory.mktemp("build")
    head = torch.nn.Linear(1024, len(CLASS_NAMES))  # the optimizer state of the classifier's 2
    optimizer = torch.optim.Adam(head.parameters())
    random_checkpoint(folder / "model", thresholds_npy=THRESHOLDS, epoch=3,
                      optimizer=optimizer.state_dict(), metrics={"mean_auroc": 0.5},
                      args={"lr": 1e-3}, resize="area")
    out = folder / "deepQ.zip"
    bundle.main(bundle.get_args_parser().parse_args([
        str(out), "--model", str(folder / "model" / "best.pt"),
        "--bbox-list", str(SAMPLE / "BBox_List_2017.csv")]))
    return out, folder / "model"


def _unzip(zip_path: Path, dest: Path, sample_dir: Path, names=NAMES) -> Path:
    """An empty folder outside the project holding the unzipped bundle, images/ and test.txt."""
    dest.mkdir()
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(dest)
    (dest / "images").mkdir()
    for name in names:
        shutil.copy(sample_dir / "images" / name, dest / "images" / name)
    (dest / "test.txt").write_text("".join(n + "\n" for n in names))
    return dest


def _run(folder: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """python3 inference.py in `folder`, with neither the project nor PYTHONPATH on the path."""
    clean = {k: v for k, v in os.environ.items()
             if k != "PYTHONPATH" and not k.startswith("CHEXNET_")}
    return subprocess.run([sys.executable, "inference.py", *args], cwd=folder, env={**clean, **env},
                          capture_output=True, text=True, timeout=300)


def test_bundle_holds_exactly_inference_its_modules_and_data(built):
    zip_path, _ = built
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("manifest.json"))
    modules = set(bundle.project_modules())
    assert {"inference.py", "denseNet_localization.py", "model.py", "gradcam.py",
            "chexnet/__init__.py", "chexnet/localize.py", "chexnet/boxes.py", "chexnet/boxfile.py",
            "chexnet/images.py", "chexnet/nih.py", "chexnet/utils.py", "chexnet/constants.py",
            "chexnet/model_dir.py"} <= modules
    # What the grader never runs stays home: training, the builder, the other tools, the pictures.
    assert {"train.py", "preprocessing.py", "tools/build_bundle.py", "tools/evaluate.py",
            "chexnet/train_data.py", "chexnet/metrics.py", "chexnet/scoring.py",
            "chexnet/calibration.py", "chexnet/drawing.py",
            "chexnet/localization_figures.py"}.isdisjoint(modules)
    assert names == modules | DATA
    assert all(n.count("/") == 0 or n.startswith("chexnet/") for n in names)
    assert not any(n.endswith(".pyc") for n in names)
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert manifest["format"] == inference.BUNDLE_FORMAT
    assert manifest["class_names"] == list(CLASS_NAMES)
    assert manifest["built_with"]["torch"] == torch.__version__
    assert manifest["built_with"]["numpy"] == np.__version__
    assert manifest["modules"] == sorted(modules)
    inference.verify_zip(zip_path)  # every sha256 as listed


def test_bundled_checkpoint_thresholds_and_sizes(built, tmp_path, sample_dir):
    zip_path, model_folder = built
    folder = _unzip(zip_path, tmp_path / "b", sample_dir, names=[])
    ckpt = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)
    original = load_checkpoint(model_folder / "best.pt")
    assert ckpt["optimizer"] is None and set(ckpt) == set(new_checkpoint({}))  # no resume state
    assert ckpt["epoch"] == 3 and ckpt["thresholds"] == THRESHOLDS.tolist()
    assert all(torch.equal(ckpt["model"][k], v) for k, v in original["model"].items())
    assert np.array_equal(np.load(folder / "thresholds.npy", allow_pickle=False), THRESHOLDS)
    sizes, _ = calibrated.resolve_box_sizes(sample_dir / "BBox_List_2017.csv", None)
    assert np.array_equal(calibrated.read_box_sizes(folder / "box_sizes.json"), sizes)  # not rounded


def test_unzipped_bundle_without_arguments_equals_the_local_run(built, tmp_path, sample_dir,
                                                                monkeypatch):
    zip_path, model_folder = built
    folder = _unzip(zip_path, tmp_path / "platform", sample_dir)
    proc = _run(folder, CHEXNET_WORKERS="0")  # no arguments; no decoding processes on the 2-core CI
    assert proc.returncode == 0, proc.stderr
    assert "on cpu" in proc.stderr or "on cuda" in proc.stderr
    ours = (folder / "bounding_box.txt").read_text().splitlines()

    monkeypatch.chdir(folder)  # same relative paths, so the same image paths in the file
    denseNet_localization.main(denseNet_localization.get_args_parser().parse_args([
        "test.txt", "images", "--model", str(model_folder / "best.pt"), "--out", "reference.txt",
        "--workers", "0", "--bbox-list", str(sample_dir / "BBox_List_2017.csv")]))
    reference = (folder / "reference.txt").read_text().splitlines()
    assert ours == reference
    entries = read_box_file(folder / "bounding_box.txt")
    assert [e.image_path for e in entries] == [f"images/{n}" for n in NAMES]
    labels = {b.label for e in entries for b in e.boxes}
    assert labels == {CLASS_NAMES[k] for k in np.flatnonzero(THRESHOLDS == 0)}
    assert not any(n.endswith(".tmp") for n in os.listdir(folder))


@pytest.mark.parametrize("victim", ["chexnet/localize.py", "checkpoint.pt", "box_sizes.json",
                                    "inference.py", "denseNet_localization.py"])
def test_a_changed_byte_is_refused_before_anything_runs(built, tmp_path, sample_dir, victim):
    folder = _unzip(built[0], tmp_path / "b", sample_dir, names=NAMES[:1])
    path = folder / victim
    data = bytearray(path.read_bytes())
    if victim.endswith(".py"):
        data += b"\nraise SystemExit(7)\n"  # would exit 7 if the module ran before the check
    else:
        data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    proc = _run(folder)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert victim in lines[0] and "sha256" in lines[0]
    assert not (folder / "bounding_box.txt").exists()


@pytest.mark.parametrize("name", ["../evil.py", "/tmp/evil.py", "chexnet/../../evil.py",
                                  "a/b/evil.py", "..", "C:evil.py", "chexnet//evil.py"])
def test_a_manifest_listing_a_path_outside_the_folder_is_refused(built, tmp_path, sample_dir, name):
    folder = _unzip(built[0], tmp_path / "b", sample_dir, names=[])
    evil = b"print('evil')\n"
    (tmp_path / "evil.py").write_bytes(evil)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256(evil).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    proc = _run(folder)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a plain file name" in lines[0] and repr(name) in lines[0]


@pytest.mark.parametrize("victim", ["chexnet/localize.py", "model.py", "chexnet"])
def test_a_symlink_leading_outside_the_folder_is_refused(built, tmp_path, sample_dir, victim):
    """The file (or the package folder) is replaced by a link to a copy outside the bundle: the
    same bytes, so only where it lies gives it away."""
    folder = _unzip(built[0], tmp_path / "b", sample_dir, names=NAMES[:1])
    outside = tmp_path / "outside" / victim
    outside.parent.mkdir(parents=True)
    (folder / victim).rename(outside)
    (folder / victim).symlink_to(outside, target_is_directory=outside.is_dir())
    proc = _run(folder)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "points outside the bundle folder" in lines[0] and victim in lines[0]
    assert not (folder / "bounding_box.txt").exists()
    assert not list((tmp_path / "outside").rglob("__pycache__"))  # the copy was never imported


def test_missing_or_unlisted_files_are_refused(built, tmp_path, sample_dir, monkeypatch):
    folder = _unzip(built[0], tmp_path / "b", sample_dir, names=[])
    (folder / "box_sizes.json").unlink()
    with pytest.raises(inference.BundleError, match="missing box_sizes.json"):
        inference.verify_folder(folder)
    # Listed nowhere, box_sizes.json would let the run fall back to other sizes quietly: refused.
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["files"]["box_sizes.json"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    inference.verify_folder(folder)
    monkeypatch.setattr(inference, "HERE", folder)  # as if inference.py ran from there
    with pytest.raises(inference.BundleError, match="does not list box_sizes.json"):
        inference.localization_argv(inference.get_args_parser({}).parse_args([]))
    # A zip with a file the manifest does not list.
    extra = tmp_path / "extra.zip"
    shutil.copy(built[0], extra)
    with zipfile.ZipFile(extra, "a") as zf:
        zf.writestr("sample/x.png", b"x")
    with pytest.raises(inference.BundleError, match="does not list"):
        inference.verify_zip(extra)


def test_bundle_refuses_project_options(built, tmp_path, sample_dir):
    folder = _unzip(built[0], tmp_path / "b", sample_dir, names=[])
    proc = _run(folder, "--model", "other.pt")
    assert proc.returncode == 2 and "--model: this is a bundle" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_option_beats_environment_beats_default():
    env = {"CHEXNET_TEST_LIST": "env.txt", "CHEXNET_OUT": "env_out.txt", "CHEXNET_WORKERS": "2",
           "CHEXNET_BATCH_SIZE": "5"}
    args = inference.get_args_parser(env).parse_args(["--out", "opt.txt", "--batch-size", "7"])
    assert (args.test_list, args.images, args.out) == ("env.txt", "images", "opt.txt")
    assert (args.workers, args.batch_size, args.device) == (2, 7, "auto")
    args = inference.get_args_parser({}).parse_args([])
    assert (args.test_list, args.images, args.out) == ("test.txt", "images", "bounding_box.txt")
    assert (args.workers, args.batch_size) == (None, None)


def test_project_mode_passes_options_to_the_local_run(tmp_path):
    args = inference.get_args_parser({"CHEXNET_IMAGES": "imgs"}).parse_args(
        ["--test-list=-odd.txt", "--model", "m.pt", "--batch-size", "3", "--out=-out.txt"])
    local = denseNet_localization.get_args_parser().parse_args(inference.localization_argv(args))
    assert (local.test_txt, local.images, local.model, local.batch_size) == (
        "-odd.txt", "imgs", "m.pt", 3)
    assert local.out == "-out.txt" and local.device == "auto"
    assert local.thresholds is None and local.workers == denseNet_localization.DEFAULT_WORKERS


def test_build_failure_leaves_no_zip(tmp_path):
    out = tmp_path / "deepQ.zip"
    with pytest.raises(InputError, match="not found"):
        bundle.build_bundle(out, tmp_path / "missing.pt")
    assert list(tmp_path.iterdir()) == []


def test_module_walk_follows_load_time_imports_of_ours(tmp_path):
    (tmp_path / "a.py").write_text(
        "import os\nimport b\nfrom d.x import y\n\ndef f():\n    import c\n")
    (tmp_path / "b.py").write_text(
        "import numpy as np\ntry:\n    from chexnet import p, q\nexcept ImportError:\n    pass\n")
    (tmp_path / "c.py").write_text("")
    (tmp_path / "d.py").write_text("from e import z\n")
    (tmp_path / "e.py").write_text("import a\nimport chexnet.r\n")
    (tmp_path / "chexnet").mkdir()
    for name in ("__init__", "p", "q", "r", "unused"):
        (tmp_path / "chexnet" / f"{name}.py").write_text("")
    # c.py is imported inside a function only (an optional part): it stays out.
    assert bundle.project_modules(("a.py",), tmp_path) == [
        "a.py", "b.py", "chexnet/__init__.py", "chexnet/p.py", "chexnet/q.py", "chexnet/r.py",
        "d.py", "e.py"]
    (tmp_path / "c.py").write_text("import importlib\nimportlib.import_module('unused')\n")
    (tmp_path / "b.py").write_text("import c\n")
    with pytest.raises(InputError, match="dynamic import"):
        bundle.project_modules(("a.py",), tmp_path)


def test_the_bundle_runs_from_an_installed_zip_without_the_builders_modules(built):
    """The builder verifies its zip through inference.py --check-bundle, a separate process."""
    proc = subprocess.run([sys.executable, str(ROOT / "inference.py"), "--check-bundle",
                           str(built[0])], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr


def test_a_calibrated_box_file_travels_whole_and_picks_its_method(built, tmp_path):
    """box_sizes.json from calibrate.py (sizes, method, per-class parameters) goes into the bundle
    byte for byte, and the run uses the method it was tuned for unless --method says otherwise."""
    _, model_folder = built
    model = tmp_path / "model"
    shutil.copytree(model_folder, model)
    sizes = np.array(calibrated.resolve_box_sizes(None, None)[0]) * 1.1
    params = np.linspace(0.3, 0.8, len(CLASS_NAMES))
    calibrated.write_box_sizes(model / model_dir.BOX_SIZES, sizes, "threshold", params)
    assert calibrated.calibrated_method(None, model / "best.pt") == "threshold"
    assert calibrated.calibrated_method(str(SAMPLE / "BBox_List_2017.csv"),
                                       model / "best.pt") is None
    # no rounding
    np.testing.assert_array_equal(calibrated.read_box_sizes(model / model_dir.BOX_SIZES), sizes)
    out = tmp_path / "calibrated.zip"
    bundle.build_bundle(out, model / "best.pt")
    with zipfile.ZipFile(out) as zf:
        assert zf.read(model_dir.BOX_SIZES) == (model / model_dir.BOX_SIZES).read_bytes()
    # a rule per class travels the same way; a parameter outside its rule's range stops the
    # build here, not on the grading platform
    rules = ["threshold", "peaks", "percentile", "otsu"] * 2
    calibrated.write_box_sizes(model / model_dir.BOX_SIZES, sizes, "auto",
                               np.array([0.5, 0.9, 95.0, 1.2] * 2), methods=rules)
    bundle.build_bundle(out, model / "best.pt")
    with zipfile.ZipFile(out) as zf:
        assert zf.read(model_dir.BOX_SIZES) == (model / model_dir.BOX_SIZES).read_bytes()
    calibrated.write_box_sizes(model / model_dir.BOX_SIZES, sizes, "auto",
                               np.array([0.5, 0.9, 95.0, 1.2] * 2)[::-1], methods=rules)
    with pytest.raises(InputError, match="'params' must be 8 numbers"):
        bundle.build_bundle(tmp_path / "refused.zip", model / "best.pt")
    assert not (tmp_path / "refused.zip").exists()


def test_a_bundle_calibrated_on_another_cam_localizes_as_the_project_does(built, tmp_path, sample_dir,
                                                                          monkeypatch):
    """box_sizes.json calibrated on layercam at denseblock3: the unzipped bundle, run with no
    arguments, makes the maps the project's denseNet_localization.py makes beside the same file."""
    _, model_folder = built
    model = tmp_path / "model"
    shutil.copytree(model_folder, model)
    sizes, _ = calibrated.resolve_box_sizes(str(SAMPLE / "BBox_List_2017.csv"), None)
    calibrated.write_box_sizes(model / model_dir.BOX_SIZES, sizes, "peaks", np.full(len(CLASS_NAMES), 0.9),
                              calibration={"cam": "layercam", "layer": "features.denseblock3"})
    out = tmp_path / "layercam.zip"
    manifest = bundle.build_bundle(out, model / "best.pt")
    assert manifest["cam"] == {"method": "layercam", "layer": "features.denseblock3",
                               "source": model_dir.BOX_SIZES}
    folder = _unzip(out, tmp_path / "platform", sample_dir)
    proc = _run(folder, CHEXNET_WORKERS="0")
    assert proc.returncode == 0, proc.stderr
    assert "maps layercam at features.denseblock3" in proc.stderr
    monkeypatch.chdir(folder)
    denseNet_localization.main(denseNet_localization.get_args_parser().parse_args([
        "test.txt", "images", "--model", str(model / "best.pt"), "--out", "reference.txt", "--workers", "0"]))
    assert (folder / "bounding_box.txt").read_text() == (folder / "reference.txt").read_text()
    denseNet_localization.main(denseNet_localization.get_args_parser().parse_args([
        "test.txt", "images", "--model", str(model / "best.pt"), "--out", "gradcam.txt", "--workers", "0",
        "--cam", "gradcam"]))
    assert (folder / "gradcam.txt").read_text() != (folder / "reference.txt").read_text()  # the CAM mattered


def test_the_bundles_images_may_nest_as_kaggle_ships_them(built, tmp_path, sample_dir):
    """images/images_001/images/NAME.png: found by the walk, and the box file names that path."""
    folder = _unzip(built[0], tmp_path / "platform", sample_dir)
    for k, name in enumerate(NAMES):
        nested = folder / "images" / f"images_{k + 1:03d}" / "images"
        nested.mkdir(parents=True)
        (folder / "images" / name).rename(nested / name)
    proc = _run(folder, CHEXNET_WORKERS="0")
    assert proc.returncode == 0, proc.stderr
    entries = read_box_file(folder / "bounding_box.txt")
    assert [e.image_path for e in entries] == [
        os.path.join("images", f"images_{k + 1:03d}", "images", n) for k, n in enumerate(NAMES)]
