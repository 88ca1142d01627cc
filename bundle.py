"""Build the grading bundle that inference.py runs: `python3 inference.py --build-bundle deepQ.zip`.

The zip holds, at its root and nothing else:
- inference.py and the project modules it imports, found by walking their import statements
  (project_modules), so the list never goes stale;
- checkpoint.pt: the checkpoint as inference needs it (weights, class names, epoch, metrics, args,
  thresholds; no optimizer or resume state), written by model.save_checkpoint, weights_only-loadable;
- thresholds.npy (float64 (8,)) and box_sizes.json (the per-class boxes in use, full precision),
  under the names localize.py looks for beside a checkpoint;
- manifest.json: bundle format and version, creation time, the versions it was built with, class
  names, where model, thresholds and box sizes came from, and the sha256 of every other file.
Written atomically; the builder checks the zip with inference.py's own verifier before it returns.
"""
from __future__ import annotations

import argparse
import ast
import datetime
import json
import platform
import shutil
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import scipy
import torch
import torchvision

import denseNet_localization
import inference
import localize
import model as model_lib
from common import InputError, atomic_path

ROOT = Path(__file__).resolve().parent
ENTRY = "inference.py"
_DYNAMIC_IMPORTS = {"import_module", "__import__"}


def project_modules(entry: Path, root: Path = ROOT) -> list[str]:
    """File names of root's top-level modules that `entry` imports, directly or not, entry included.

    Every import statement counts, also those inside functions (inference.py imports lazily).
    Relative imports, packages of ours and dynamic imports cannot be followed: they are refused.
    """
    found: set[str] = set()
    todo = [entry.name]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        for module in _imported_names(root / name):
            top = module.split(".")[0]
            if (root / f"{top}.py").is_file():
                todo.append(f"{top}.py")
            elif (root / top / "__init__.py").is_file():
                raise InputError(f"{root / name}: imports the package {top}/; bundles hold top-level modules only")
    return sorted(found)


def _imported_names(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise InputError(f"{path}:{node.lineno}: a relative import; bundles hold top-level modules only")
            names.append(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in _DYNAMIC_IMPORTS:
            raise InputError(f"{path}:{node.lineno}: a dynamic import, which the bundle's module walk cannot follow")
    return names


def build_bundle(out: str | Path, model_path: str | Path, thresholds_spec: str | None = None,
                 bbox_list: str | None = None, box_sizes_path: str | None = None) -> dict:
    """Write the bundle zip `out` (atomically) and return its manifest. Thresholds and box sizes are
    resolved exactly as denseNet_localization.py resolves them for the same options."""
    checkpoint = model_lib.load_checkpoint(model_path)
    model_lib.model_from_checkpoint(checkpoint, source=str(model_path))  # fail here, not on the platform
    thresholds, thresholds_from = localize.resolve_thresholds(thresholds_spec, model_path, checkpoint)
    if box_sizes_path is None:
        box_sizes_path = localize.calibrated_box_file(bbox_list, model_path)  # calibrated: method and params too
    if box_sizes_path is not None:
        sizes, sizes_from = localize.read_box_sizes(box_sizes_path), str(box_sizes_path)
    else:
        sizes, sizes_from = localize.resolve_box_sizes(bbox_list, model_path)
    created = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    with tempfile.TemporaryDirectory(prefix="chexnet-bundle.") as tmp:
        stage = Path(tmp)
        modules = project_modules(ROOT / ENTRY)
        for name in modules:
            shutil.copyfile(ROOT / name, stage / name)
        model_lib.save_checkpoint(stage / inference.CHECKPOINT, _inference_checkpoint(checkpoint, thresholds))
        np.save(stage / localize.THRESHOLDS_FILE, thresholds.astype(np.float64), allow_pickle=False)
        if box_sizes_path is not None:  # as calibrated: sizes, box method and its per-class parameters
            shutil.copyfile(box_sizes_path, stage / localize.BOX_SIZES_FILE)
        else:
            localize.write_box_sizes(stage / localize.BOX_SIZES_FILE, sizes)
        manifest = {
            "format": inference.BUNDLE_FORMAT, "version": inference.BUNDLE_VERSION,
            "created": created.isoformat(), "entry": ENTRY, "built_with": build_versions(),
            "class_names": list(checkpoint["class_names"]),
            "model": {"source": str(model_path), "source_sha256": inference.sha256_file(Path(model_path)),
                      "epoch": checkpoint.get("epoch")},
            "thresholds": {"source": thresholds_from, "values": thresholds.tolist()},
            "box_sizes": {"source": sizes_from}, "modules": modules,
            "files": {p.name: inference.sha256_file(p) for p in sorted(stage.iterdir())}}
        (stage / inference.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        _check_stage(stage, thresholds, sizes)
        _write_zip(out, stage, created)
    try:
        inference.verify_zip(Path(out))
    except inference.BundleError as err:
        raise InputError(f"{out}: the written bundle fails its own check: {err}") from None
    return manifest


def _inference_checkpoint(checkpoint: dict, thresholds: np.ndarray) -> dict:
    """The weights and their record, without the optimizer state and train.py's --resume keys
    (scaler, rng, best), which would double the bundle's size; the bundle's thresholds inside too."""
    return model_lib.new_checkpoint(checkpoint["model"], epoch=checkpoint.get("epoch"),
                                    metrics=checkpoint.get("metrics"), args=checkpoint.get("args"),
                                    thresholds=thresholds)


def _check_stage(stage: Path, thresholds: np.ndarray, sizes: np.ndarray) -> None:
    """What the bundle will read back is what was resolved here, bit for bit."""
    inference.verify_folder(stage)
    back = localize.load_thresholds(stage / localize.THRESHOLDS_FILE)
    if not np.array_equal(back, thresholds) or not np.array_equal(localize.read_box_sizes(
            stage / localize.BOX_SIZES_FILE), np.asarray(sizes, dtype=np.float64)):
        raise InputError("bundle: thresholds or box sizes do not read back unchanged (a bug)")
    torch.load(stage / inference.CHECKPOINT, map_location="cpu", weights_only=True)


def _write_zip(out: str | Path, stage: Path, created: datetime.datetime) -> None:
    """Every staged file at the zip's root, sorted, with the creation time and mode 0644."""
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(stage.iterdir()):
            info = zipfile.ZipInfo(path.name, date_time=created.timetuple()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with open(path, "rb") as src, zf.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def build_versions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__, "opencv": cv2.__version__,
            "scipy": scipy.__version__}


def main(args: argparse.Namespace) -> None:
    """inference.py --build-bundle ZIP [--model] [--thresholds] [--bbox-list | --box-sizes]."""
    if args.bbox_list is not None and args.box_sizes is not None:
        raise InputError("--bbox-list and --box-sizes both size the boxes; give one")
    model_path = args.model or denseNet_localization.get_args_parser().get_default("model")
    manifest = build_bundle(args.build_bundle, model_path, args.thresholds, args.bbox_list, args.box_sizes)
    size_mb = Path(args.build_bundle).stat().st_size / 1e6
    print(f"wrote {args.build_bundle}: {len(manifest['files']) + 1} files, {size_mb:.1f} MB; model {model_path} "
          f"(epoch {manifest['model']['epoch']}), thresholds from {manifest['thresholds']['source']}, box sizes "
          f"from {manifest['box_sizes']['source']}; modules: {' '.join(manifest['modules'])}")
