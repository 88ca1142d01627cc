"""Localize findings with one command, python3 inference.py: the grading bundle's entry point.

One script, two modes, chosen by what lies beside it:
- bundle mode: a manifest.json beside this script (an unzipped deepQ.zip). Every file the manifest
  lists is checked (present, sha256 as built, a plain name inside the folder) BEFORE any bundled
  code runs; a mismatch is one `error:` line and exit status 2. Then denseNet_localization.py runs
  the bundle's own checkpoint, thresholds and box sizes; --model/--thresholds/--bbox-list are
  refused.
- project mode: no manifest.json (the project folder): --model (default model/best.pt), thresholds
  and box sizes are found as denseNet_localization.py finds them.
Both modes read the test list and the image folder from the options, else the environment variables
CHEXNET_TEST_LIST / CHEXNET_IMAGES / CHEXNET_OUT, else test.txt, images/ and bounding_box.txt in the
working folder, and run denseNet_localization.py as a child process: the box file is the same, line
for line. This file uses the standard library only, so it can check a bundle before trusting it.

Build a bundle (project folder):
python3 inference.py --build-bundle deepQ.zip [--model model/best.pt] (runs tools/build_bundle.py).
Check one (zip or unzipped folder): python3 inference.py --check-bundle ZIP
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Mapping

HERE = Path(__file__).resolve().parent
MANIFEST = "manifest.json"
BUNDLE_FORMAT = "chexnet-bundle"
BUNDLE_VERSION = 2  # 2: the package's modules in chexnet/, the run's file names in "run"
LOCALIZE = "denseNet_localization.py"
BUILDER = Path("tools") / "build_bundle.py"
# manifest["run"]: the files a run needs, by role (the builder writes them with chexnet.model_dir's
# names).
RUN_FILES = ("checkpoint", "thresholds", "box_sizes")
# The run's options, each with its environment variable: the option beats the variable beats the
# default (None: denseNet_localization.py's own default).
RUN_OPTIONS = {
    "test_list": ("CHEXNET_TEST_LIST", str, "test.txt", "list of image names, one a line"),
    "images": ("CHEXNET_IMAGES", str, "images",
               "folder of the images; the box file names them IMAGES/name"),
    "out": ("CHEXNET_OUT", str, "bounding_box.txt", "box file to write"),
    "device": ("CHEXNET_DEVICE", str, "auto",
               "auto (the GPU if any, else the CPU), cpu, cuda or cuda:N"),
    "batch_size": ("CHEXNET_BATCH_SIZE", int, None, "images per forward pass"),
    "workers": ("CHEXNET_WORKERS", int, None, "image-decoding processes, 0: none"),
}
PROJECT_OPTIONS = ("model", "thresholds", "bbox_list")  # project mode (and --build-bundle) only
_HEX = frozenset("0123456789abcdef")


class BundleError(Exception):
    """A bundle that does not match its manifest, or a wrong option; the message is one line."""


def get_args_parser(environ: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for option, (variable, kind, default, what) in RUN_OPTIONS.items():
        shown = (f"{default} in the working folder" if option in ("test_list", "images", "out")
                 else default)
        shown = shown or f"{LOCALIZE}'s --{option.replace('_', '-')} default"
        # argparse passes a string default through `type`, so an int variable is checked like the
        # option.
        p.add_argument("--" + option.replace("_", "-"), type=kind,
                       default=environ.get(variable, default),
                       help=f"{what} (default: ${variable}, else {shown})")
    p.add_argument("--model", type=str, default=None,
                   help=f"project mode and --build-bundle: the checkpoint (default: {LOCALIZE}'s, "
                        "model/best.pt)")
    p.add_argument("--thresholds", type=str, default=None,
                   help="project mode and --build-bundle: a .npy of 8 probabilities or one number "
                        "(default: thresholds.npy beside --model, else the checkpoint's own)")
    p.add_argument("--bbox-list", type=str, default=None,
                   help="project mode and --build-bundle: BBox_List_2017.csv whose per-class mean "
                        "boxes size the boxes (default: box_sizes.json beside --model, else the "
                        "original's table)")
    p.add_argument("--box-sizes", type=str, default=None,
                   help="--build-bundle only: a box_sizes.json to bundle instead (default: as "
                        "--bbox-list)")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--build-bundle", type=str, default=None, metavar="ZIP",
                        help="write the grading bundle ZIP from the project folder and exit "
                             "(default: off)")
    action.add_argument("--check-bundle", type=str, default=None, metavar="PATH",
                        help="verify a bundle (a .zip or an unzipped folder) against its manifest "
                             "and exit (default: off)")
    return p


def is_bundle(folder: Path | None = None) -> bool:
    """Bundle mode: a manifest.json beside this script (or in `folder`)."""
    return ((folder or HERE) / MANIFEST).is_file()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_manifest(text: str, source: str) -> dict:
    """manifest.json text -> dict, its format checked and every listed name a plain file name."""
    try:
        manifest = json.loads(text)
    except ValueError as err:
        raise BundleError(f"{source}: not JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{source}: not a {BUNDLE_FORMAT} manifest")
    if manifest.get("version") != BUNDLE_VERSION:
        raise BundleError(f"{source}: bundle version {manifest.get('version')!r}; "
                          f"this inference.py reads version {BUNDLE_VERSION}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{source}: 'files' must map file names to sha256 digests")
    for name, digest in files.items():
        check_name(name, source)
        if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= _HEX):
            raise BundleError(f"{source}: {name}: {digest!r} is not a sha256 hex digest")
    return manifest


def check_name(name: str, source: str) -> None:
    """Bundle files lie at the bundle's root or one folder down (the package): a name with '..', a
    drive, a root or a deeper folder escapes or is not ours."""
    path = PurePosixPath(name)
    if (not name or "\\" in name or ":" in name or path.is_absolute()
            or not 1 <= len(path.parts) <= 2 or any(part in (".", "..", "") for part in path.parts)
            or name == MANIFEST or str(path) != name):
        raise BundleError(f"{source}: lists {name!r}, which is not a plain file name inside the "
                          f"bundle folder; refused")


def verify_folder(folder: Path) -> dict:
    """An unzipped bundle: every listed file present, inside the folder and as built. Extra files
    (the test list, images, outputs, __pycache__) are allowed."""
    folder = folder.resolve()
    source = str(folder / MANIFEST)
    manifest = parse_manifest(_read_text(folder / MANIFEST), source)

    def digest(name: str) -> str | None:
        path = folder / name
        if not path.is_file():
            return None
        if path.resolve() != path:  # a symlink (of the file or its folder) that leads elsewhere
            raise BundleError(f"{source}: {name} points outside the bundle folder "
                              f"({path.resolve()}); refused")
        return sha256_file(path)

    _compare(manifest, digest, str(folder))
    return manifest


def verify_zip(path: Path) -> dict:
    """A bundle zip: exactly the listed files plus manifest.json, each as built."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if MANIFEST not in names:
                raise BundleError(f"{path}: no {MANIFEST}; not a bundle")
            manifest = parse_manifest(zf.read(MANIFEST).decode("utf-8", "replace"),
                                      f"{path}: {MANIFEST}")
            extra = sorted(set(names) - set(manifest["files"]) - {MANIFEST})
            if extra or len(names) != len(set(names)):
                raise BundleError(f"{path}: holds files its manifest does not list (or twice): "
                                  f"{', '.join(extra)}")
            _compare(manifest,
                     lambda n: hashlib.sha256(zf.read(n)).hexdigest() if n in names else None,
                     str(path))
    except (zipfile.BadZipFile, OSError) as err:
        raise BundleError(f"{path}: not a readable zip ({err})") from None
    return manifest


def _compare(manifest: dict, digest: Callable[[str], str | None], where: str) -> None:
    missing, changed = [], []
    for name, expected in manifest["files"].items():
        found = digest(name)
        if found is None:
            missing.append(name)
        elif found != expected:
            changed.append(name)
    if missing or changed:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
                ([f"sha256 differs for {', '.join(changed)}"] if changed else [])
        raise BundleError(f"{where}: the bundle does not match its {MANIFEST} "
                          f"({'; '.join(parts)}); refused: unzip the bundle again or rebuild it")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise BundleError(f"{path}: cannot read ({err})") from None


def verify_path(path: str | os.PathLike) -> dict:
    """--check-bundle: a .zip or an unzipped folder."""
    path = Path(path)
    if path.is_dir():
        return verify_folder(path)
    if not path.is_file():
        raise BundleError(f"{path}: no such bundle (a .zip or an unzipped bundle folder)")
    return verify_zip(path)


def main(args: argparse.Namespace) -> int:
    """The exit status. In bundle mode _verify_here() has checked every file before this runs."""
    if args.check_bundle is not None:
        manifest = verify_path(args.check_bundle)
        built = manifest.get("built_with", {})
        print(f"{args.check_bundle}: OK, {len(manifest['files'])} files and {MANIFEST}, "
              f"as built on {manifest.get('created')} with torch {built.get('torch')}, torchvision "
              f"{built.get('torchvision')}, numpy {built.get('numpy')}")
        return 0
    if args.build_bundle is not None:
        if is_bundle():
            raise BundleError(f"{HERE}: this is an unzipped bundle; build bundles in the project "
                              "folder")
        return _child(HERE / BUILDER, builder_argv(args))
    return _child(HERE / LOCALIZE, localization_argv(args))


def _child(script: Path, argv: list[str]) -> int:
    """Run a script of this folder with this Python; its output and exit status are ours."""
    return subprocess.run([sys.executable, str(script), *argv]).returncode


def builder_argv(args: argparse.Namespace) -> list[str]:
    """This script's options as tools/build_bundle.py's arguments."""
    given = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in PROJECT_OPTIONS + ("box_sizes",)
             if getattr(args, k) is not None]
    return given + ["--", args.build_bundle]


def localization_argv(args: argparse.Namespace) -> list[str]:
    """This script's options as denseNet_localization.py's arguments (its parser fills the rest)."""
    given = [f"--{k.replace('_', '-')}" for k in PROJECT_OPTIONS + ("box_sizes",)
             if getattr(args, k) is not None]
    if is_bundle() and given:
        raise BundleError(f"{' '.join(given)}: this is a bundle; it runs its own checkpoint "
                          f"with the thresholds and box sizes beside it (project-folder options)")
    if "--box-sizes" in given:
        raise BundleError("--box-sizes is for --build-bundle; to run with other box sizes use "
                          "--bbox-list or a box_sizes.json beside --model")
    if is_bundle():
        run = run_files(parse_manifest(_read_text(HERE / MANIFEST), str(HERE / MANIFEST)),
                        str(HERE / MANIFEST))
        extra = ["--model", str(HERE / run["checkpoint"]),
                 "--thresholds", str(HERE / run["thresholds"])]
    else:
        extra = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in PROJECT_OPTIONS
                 if getattr(args, k) is not None]
    argv = [f"--out={args.out}", f"--device={args.device}"] + extra
    argv += ["--batch-size", str(args.batch_size)] if args.batch_size is not None else []
    argv += ["--workers", str(args.workers)] if args.workers is not None else []
    # "--" ends the options: a test list or folder whose name starts with "-" stays a path.
    return argv + ["--", args.test_list, args.images]


def run_files(manifest: dict, source: str) -> dict:
    """manifest["run"]: the checkpoint, thresholds and box sizes, each a file the manifest lists.
    Without thresholds or box sizes the run would quietly fall back to others: refused."""
    run = manifest.get("run")
    if not isinstance(run, dict):
        raise BundleError(f"{source}: no 'run' section; not a complete bundle")
    absent = [role for role in RUN_FILES if run.get(role) not in manifest["files"]]
    if absent or LOCALIZE not in manifest["files"]:
        names = ([str(run.get(role)) for role in absent]
                 + ([] if LOCALIZE in manifest["files"] else [LOCALIZE]))
        raise BundleError(f"{source}: does not list {', '.join(names)}; not a complete bundle")
    return run


def _verify_here() -> None:
    """In bundle mode, check the bundle before any of its code runs."""
    if is_bundle():
        manifest = verify_folder(HERE)
        run_files(manifest, str(HERE / MANIFEST))
        if Path(__file__).name not in manifest["files"]:
            raise BundleError(f"{HERE / MANIFEST}: does not list {Path(__file__).name}; "
                              f"not a complete bundle")


def _cli() -> None:
    args = get_args_parser().parse_args()
    try:
        _verify_here()
        status = main(args)
    except BundleError as err:
        print(f"error: {err}", file=sys.stderr)  # the format of chexnet.utils.run_cli
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status)


if __name__ == "__main__":
    _cli()
