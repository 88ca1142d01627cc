"""Build the grading bundle that inference.py runs: python3 tools/build_bundle.py deepQ.zip.

(`python3 inference.py --build-bundle deepQ.zip` runs this script.) The zip holds:
- inference.py, denseNet_localization.py and the project modules they import when loaded (model.py,
  gradcam.py and chexnet/...), found by walking their module-level import statements, so the list
  never goes stale; imports inside functions load optional parts (pictures) the grader never runs;
- checkpoint.pt: the checkpoint as localization needs it (weights, class names, input size, epoch,
  metrics, args, thresholds; no optimizer or resume state), weights_only-loadable: a 448
  checkpoint's bundle localizes at 448;
- thresholds.npy and box_sizes.json, under the names localization looks for beside a checkpoint (a
  calibrated box_sizes.json travels whole: the bundle's run makes its maps with the CAM and layer
  it was calibrated on, as denseNet_localization.py does beside the same checkpoint);
- manifest.json: format and version, creation time, the versions it was built with, class names,
  where model, thresholds and box sizes came from, the run's files, the sha256 of every other file.
Written atomically, then checked with `python3 inference.py --check-bundle` before this returns.
"""
from __future__ import annotations

import argparse
import ast
import datetime
import hashlib
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import scipy
import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project root: chexnet/, model.py

from chexnet import calibrated, model_dir  # noqa: E402
from chexnet.geometry import geometry  # noqa: E402
from chexnet.utils import InputError, atomic_path, run_cli  # noqa: E402
from model import (load_checkpoint, model_from_checkpoint, new_checkpoint,  # noqa: E402
                   save_checkpoint)

ENTRIES = ("inference.py", "denseNet_localization.py")
PACKAGE = "chexnet"
CHECKPOINT = "checkpoint.pt"
_DYNAMIC_IMPORTS = {"import_module", "__import__"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("zip", type=str, help="bundle to write, e.g. deepQ.zip")
    p.add_argument("--model", type=str, default=model_dir.DEFAULT_MODEL,
                   help=f"checkpoint to bundle (default: {model_dir.DEFAULT_MODEL})")
    p.add_argument("--thresholds", type=str, default=None,
                   help="a .npy of 8 probabilities or one number (default: thresholds.npy beside "
                        "--model, else the checkpoint's own)")
    sizes = p.add_mutually_exclusive_group()
    sizes.add_argument("--bbox-list", type=str, default=None,
                       help="BBox_List_2017.csv whose per-class mean boxes size the boxes "
                            "(default: box_sizes.json beside --model, else the original's table)")
    sizes.add_argument("--box-sizes", type=str, default=None,
                       help="a box_sizes.json to bundle as it is (default: as --bbox-list)")
    return p


# ---------------------------------------------------------------- which modules travel

def project_modules(entries: tuple[str, ...] = ENTRIES, root: Path = ROOT) -> list[str]:
    """Paths (relative to root, '/'-separated) of the entries and the project modules they import at
    load time, directly or not: root-level modules and modules of the package, with its __init__.

    Imports inside functions are not followed: they load optional parts (matplotlib pictures) that a
    run of the entries without those options never imports. Relative and dynamic imports cannot be
    followed: they are refused.
    """
    found: set[str] = set()
    todo = list(entries)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        for module in _load_time_imports(root / name):
            todo += _module_files(module, root)
    return sorted(found)


def _module_files(module: str, root: Path) -> list[str]:
    """'chexnet.boxes' -> ['chexnet/__init__.py', 'chexnet/boxes.py']; 'model' -> ['model.py'];
    a module that is not ours (numpy, os) -> []."""
    parts = module.split(".")
    if parts[0] == PACKAGE:
        files = [f"{PACKAGE}/__init__.py"]
        if len(parts) > 1 and (root / PACKAGE / f"{parts[1]}.py").is_file():
            files.append(f"{PACKAGE}/{parts[1]}.py")
        return files
    return [f"{parts[0]}.py"] if (root / f"{parts[0]}.py").is_file() else []


def _load_time_imports(path: Path) -> list[str]:
    """Modules a file imports outside function and class bodies ('from chexnet import a' gives
    'chexnet.a'); a dynamic import anywhere in it is an InputError."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", None)) in _DYNAMIC_IMPORTS):
            raise InputError(f"{path}:{node.lineno}: a dynamic import, which the bundle's module "
                             f"walk cannot follow")
    names: list[str] = []
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise InputError(f"{path}:{node.lineno}: a relative import; the module walk "
                                 f"follows absolute imports only")
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:  # if/try/with blocks at module level run at load time too
            todo += [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)]
    return names


# ---------------------------------------------------------------- the bundle

def build_bundle(out: str | Path, model_path: str | Path, thresholds_spec: str | None = None,
                 bbox_list: str | None = None, box_sizes_path: str | None = None) -> dict:
    """Write the bundle zip `out` (atomically) and return its manifest. Thresholds and box sizes are
    resolved exactly as denseNet_localization.py resolves them for the same options."""
    checkpoint = load_checkpoint(model_path)
    model_from_checkpoint(checkpoint, source=str(model_path))  # fail here, not on the platform
    geometry(checkpoint["input_size"], str(model_path))
    thresholds, thresholds_from = model_dir.resolve_thresholds(thresholds_spec, model_path,
                                                               checkpoint)
    if box_sizes_path is None:  # calibrated: sizes, box method and its per-class parameters
        box_sizes_path = calibrated.calibrated_box_file(bbox_list, model_path)
    if box_sizes_path is not None:
        sizes, sizes_from = calibrated.read_box_sizes(box_sizes_path), str(box_sizes_path)
        calibrated.check_box_rules(box_sizes_path)  # fail here, not on the platform
    else:
        sizes, sizes_from = calibrated.resolve_box_sizes(bbox_list, model_path)
    created = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    modules = project_modules()
    with tempfile.TemporaryDirectory(prefix="chexnet-bundle.") as tmp:
        stage = Path(tmp)
        for name in modules:
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / name, stage / name)
        save_checkpoint(stage / CHECKPOINT, _inference_checkpoint(checkpoint, thresholds))
        model_dir.save_thresholds(stage / model_dir.THRESHOLDS, thresholds)
        if box_sizes_path is not None:
            shutil.copyfile(box_sizes_path, stage / model_dir.BOX_SIZES)
        else:
            calibrated.write_box_sizes(stage / model_dir.BOX_SIZES, sizes)
        _check_stage(stage, thresholds, sizes)
        # the maps the bundle's run will make: box_sizes.json's calibrated CAM, as in the project
        cam, layer, cam_from, _ = calibrated.resolve_cam(None, None, None, stage / CHECKPOINT)
        files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
        manifest = {
            "format": "chexnet-bundle", "version": 2, "created": created.isoformat(),
            "entry": ENTRIES[0], "built_with": build_versions(),
            "class_names": list(checkpoint["class_names"]),
            "model": {"source": str(model_path), "source_sha256": _sha256(Path(model_path)),
                      "epoch": checkpoint.get("epoch")},
            "thresholds": {"source": thresholds_from, "values": thresholds.tolist()},
            "box_sizes": {"source": sizes_from}, "modules": modules,
            "cam": {"method": cam, "layer": layer,
                    "source": model_dir.BOX_SIZES if cam_from != "the default" else cam_from},
            "run": {"checkpoint": CHECKPOINT, "thresholds": model_dir.THRESHOLDS,
                    "box_sizes": model_dir.BOX_SIZES},
            "files": {name: _sha256(stage / name) for name in files}}
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n",
                                             encoding="utf-8")
        _write_zip(out, stage, files + ["manifest.json"], created)
    check = subprocess.run([sys.executable, str(ROOT / "inference.py"), "--check-bundle", str(out)],
                           capture_output=True, text=True)
    if check.returncode != 0:
        Path(out).unlink(missing_ok=True)
        raise InputError(f"{out}: the written bundle fails its own check: {check.stderr.strip()}")
    return manifest


def _inference_checkpoint(checkpoint: dict, thresholds: np.ndarray) -> dict:
    """The weights and their record, without the optimizer state and train.py's --resume keys
    (scaler, rng, best), which would double the bundle's size; the bundle's thresholds inside
    too."""
    return new_checkpoint(checkpoint["model"], epoch=checkpoint.get("epoch"),
                          metrics=checkpoint.get("metrics"), args=checkpoint.get("args"),
                          thresholds=thresholds, resize=checkpoint["resize"],
                          class_names=checkpoint["class_names"],
                          input_size=checkpoint["input_size"])  # localization crops as trained


def _check_stage(stage: Path, thresholds: np.ndarray, sizes: np.ndarray) -> None:
    """What the bundle will read back is what was resolved here, bit for bit."""
    back = model_dir.load_thresholds(stage / model_dir.THRESHOLDS, len(thresholds))
    read_sizes = calibrated.read_box_sizes(stage / model_dir.BOX_SIZES)
    if (not np.array_equal(back, thresholds)
            or not np.array_equal(read_sizes, np.asarray(sizes, float))):
        raise InputError("bundle: thresholds or box sizes do not read back unchanged (a bug)")
    torch.load(stage / CHECKPOINT, map_location="cpu", weights_only=True)


def _write_zip(out: str | Path, stage: Path, names: list[str], created: datetime.datetime) -> None:
    """The staged files under their relative names, in order, with the creation time and mode
    0644."""
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in names:
            info = zipfile.ZipInfo(name, date_time=created.timetuple()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with open(stage / name, "rb") as src, zf.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_versions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__,
            "opencv": cv2.__version__, "scipy": scipy.__version__}


def main(args: argparse.Namespace) -> None:
    manifest = build_bundle(args.zip, args.model, args.thresholds, args.bbox_list, args.box_sizes)
    size_mb = Path(args.zip).stat().st_size / 1e6
    print(f"wrote {args.zip}: {len(manifest['files']) + 1} files, {size_mb:.1f} MB; "
          f"model {args.model} (epoch {manifest['model']['epoch']}), "
          f"thresholds from {manifest['thresholds']['source']}, "
          f"box sizes from {manifest['box_sizes']['source']}, "
          f"maps {manifest['cam']['method']} (from {manifest['cam']['source']}); "
          f"modules: {' '.join(manifest['modules'])}")


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
