"""Localize findings with one command, `python3 inference.py`: the grading bundle's entry point.

One script, two modes, chosen by what lies beside it:
- bundle mode: a manifest.json beside this script (an unzipped deepQ.zip). Every file the manifest
  lists is checked (present, sha256 as built, a plain name inside the folder) BEFORE any bundled
  module is imported; a mismatch is one `error:` line and exit status 2. Then the bundle's own
  checkpoint.pt, thresholds.npy and box_sizes.json run; --model/--thresholds/--bbox-list are refused.
- project mode: no manifest.json (the project folder): --model (default model/best.pt), thresholds
  and box sizes are found as denseNet_localization.py finds them.
Both modes read the test list and the image folder from the options, else the environment variables
CHEXNET_TEST_LIST / CHEXNET_IMAGES / CHEXNET_OUT, else test.txt, images/ and bounding_box.txt in the
working folder; they run denseNet_localization.py's own main, so the box file is the same, line for line.

Build a bundle (project folder): python3 inference.py --build-bundle deepQ.zip [--model model/best.pt]
Check one (zip or unzipped folder): python3 inference.py --check-bundle deepQ.zip
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Mapping

# Only the standard library above: nothing of the project may run before the bundle is verified.
HERE = Path(__file__).resolve().parent
MANIFEST = "manifest.json"
BUNDLE_FORMAT = "chexnet-bundle"
BUNDLE_VERSION = 1
CHECKPOINT = "checkpoint.pt"  # the bundle's model; thresholds and box sizes lie beside it (localize's names)
# The run's options, each with its environment variable: the option beats the variable beats the
# default (None: denseNet_localization.py's own default).
RUN_OPTIONS = {
    "test_list": ("CHEXNET_TEST_LIST", str, "test.txt", "list of image names, one a line"),
    "images": ("CHEXNET_IMAGES", str, "images", "folder of the images; the box file names them IMAGES/name"),
    "out": ("CHEXNET_OUT", str, "bounding_box.txt", "box file to write"),
    "device": ("CHEXNET_DEVICE", str, "auto", "auto (the GPU if any, else the CPU), cpu, cuda or cuda:N"),
    "batch_size": ("CHEXNET_BATCH_SIZE", int, None, "images per forward pass"),
    "workers": ("CHEXNET_WORKERS", int, None, "image-decoding processes, 0: none"),
}
_HEX = frozenset("0123456789abcdef")


class BundleError(Exception):
    """A bundle that does not match its manifest; the message is one line."""


def get_args_parser(environ: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    for option, (variable, kind, default, what) in RUN_OPTIONS.items():
        shown = f"{default} in the working folder" if option in ("test_list", "images", "out") else default
        shown = shown or f"denseNet_localization.py's --{option.replace('_', '-')} default"
        # argparse passes a string default through `type`, so an int variable is checked like the option.
        p.add_argument("--" + option.replace("_", "-"), type=kind, default=environ.get(variable, default),
                       help=f"{what} (default: ${variable}, else {shown})")
    p.add_argument("--model", type=str, default=None,
                   help="project mode and --build-bundle: the checkpoint (default: denseNet_localization.py's, "
                        "model/best.pt)")
    p.add_argument("--thresholds", type=str, default=None,
                   help="project mode and --build-bundle: a .npy of 8 probabilities or one number "
                        "(default: thresholds.npy beside --model, else the checkpoint's own)")
    p.add_argument("--bbox-list", type=str, default=None,
                   help="project mode and --build-bundle: BBox_List_2017.csv whose per-class mean boxes size "
                        "the boxes (default: box_sizes.json beside --model, else the original's table)")
    p.add_argument("--box-sizes", type=str, default=None,
                   help="--build-bundle only: a box_sizes.json to bundle instead (default: as --bbox-list)")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--build-bundle", type=str, default=None, metavar="ZIP",
                        help="write the grading bundle ZIP from the project folder and exit (default: off)")
    action.add_argument("--check-bundle", type=str, default=None, metavar="PATH",
                        help="verify a bundle (a .zip or an unzipped folder) against its manifest and exit "
                             "(default: off)")
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
        raise BundleError(f"{source}: bundle version {manifest.get('version')!r}; this inference.py reads "
                          f"version {BUNDLE_VERSION}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{source}: 'files' must map file names to sha256 digests")
    for name, digest in files.items():
        check_name(name, source)
        if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= _HEX):
            raise BundleError(f"{source}: {name}: {digest!r} is not a sha256 hex digest")
    return manifest


def check_name(name: str, source: str) -> None:
    """Bundle files lie at the bundle's root: a name with a folder, '..', a drive or a root escapes."""
    path = PurePosixPath(name)
    if (not name or "\\" in name or ":" in name or path.is_absolute() or len(path.parts) != 1
            or path.name in (".", "..", MANIFEST)):
        raise BundleError(f"{source}: lists {name!r}, which is not a plain file name inside the bundle "
                          f"folder; refused")


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
        if path.resolve().parent != folder:  # a symlink that leads out of the bundle
            raise BundleError(f"{source}: {name} points outside the bundle folder ({path.resolve()}); refused")
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
            manifest = parse_manifest(zf.read(MANIFEST).decode("utf-8", "replace"), f"{path}: {MANIFEST}")
            extra = sorted(set(names) - set(manifest["files"]) - {MANIFEST})
            if extra or len(names) != len(set(names)):
                raise BundleError(f"{path}: holds files its manifest does not list (or twice): {', '.join(extra)}")
            _compare(manifest, lambda n: hashlib.sha256(zf.read(n)).hexdigest() if n in names else None, str(path))
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
        raise BundleError(f"{where}: the bundle does not match its {MANIFEST} ({'; '.join(parts)}); "
                          f"refused: unzip the bundle again or rebuild it")


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


def main(args: argparse.Namespace) -> None:
    """Run after _verify_here(): in bundle mode every file has been checked before this imports any."""
    if args.check_bundle is not None:
        manifest = verify_path(args.check_bundle)
        built = manifest.get("built_with", {})
        print(f"{args.check_bundle}: OK, {len(manifest['files'])} files and {MANIFEST}, as built on {manifest.get('created')} "
              f"with torch {built.get('torch')}, torchvision {built.get('torchvision')}, numpy {built.get('numpy')}")
        return
    if args.build_bundle is not None:
        if is_bundle():
            raise BundleError(f"{HERE}: this is an unzipped bundle; build bundles in the project folder")
        import bundle
        bundle.main(args)
        return
    local_args = localization_args(args)
    import denseNet_localization  # verified in bundle mode (see _verify_here)

    denseNet_localization.main(local_args)


def localization_args(args: argparse.Namespace) -> argparse.Namespace:
    """This script's options as denseNet_localization.py's arguments (its parser fills the rest)."""
    given = [f"--{k.replace('_', '-')}" for k in ("model", "thresholds", "bbox_list", "box_sizes")
             if getattr(args, k) is not None]
    if is_bundle() and given:
        raise BundleError(f"{' '.join(given)}: this is a bundle; it runs its own {CHECKPOINT} with the "
                          f"thresholds and box sizes beside it (project-folder options)")
    if "--box-sizes" in given:
        raise BundleError("--box-sizes is for --build-bundle; to run with other box sizes use --bbox-list "
                          "or a box_sizes.json beside --model")
    import denseNet_localization
    import localize

    if is_bundle():
        listed = parse_manifest(_read_text(HERE / MANIFEST), str(HERE / MANIFEST))["files"]  # verified
        absent = [n for n in (localize.THRESHOLDS_FILE, localize.BOX_SIZES_FILE) if n not in listed]
        if absent:  # without them the run would quietly fall back to other thresholds or sizes
            raise BundleError(f"{HERE / MANIFEST}: does not list {', '.join(absent)}; not a complete bundle")
        extra = ["--model", str(HERE / CHECKPOINT), "--thresholds", str(HERE / localize.THRESHOLDS_FILE)]
    else:
        extra = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("model", "thresholds", "bbox_list")
                 if getattr(args, k) is not None]
    argv = [f"--out={args.out}", f"--device={args.device}"] + extra
    argv += ["--batch-size", str(args.batch_size)] if args.batch_size is not None else []
    argv += ["--workers", str(args.workers)] if args.workers is not None else []
    # "--" ends the options: a test list or folder whose name starts with "-" stays a path.
    return denseNet_localization.get_args_parser().parse_args(argv + ["--", args.test_list, args.images])


def _verify_here() -> None:
    """In bundle mode, check the bundle before any of its modules is imported."""
    if is_bundle():
        manifest = verify_folder(HERE)
        required = {Path(__file__).name, CHECKPOINT, "localize.py", "denseNet_localization.py"}
        absent = sorted(required - set(manifest["files"]))
        if absent:
            raise BundleError(f"{HERE / MANIFEST}: does not list {', '.join(absent)}; not a complete bundle")


def _cli() -> None:
    # Not the usual run_cli(main) line: run_cli lives in common.py, a bundled module that may only be
    # imported once the bundle is verified; until then errors are printed here, in run_cli's format.
    args = get_args_parser().parse_args()
    try:
        _verify_here()
    except BundleError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    from common import InputError, run_cli

    def guarded() -> None:
        try:
            main(args)
        except BundleError as err:
            raise InputError(str(err)) from None

    run_cli(guarded)


if __name__ == "__main__":
    _cli()
