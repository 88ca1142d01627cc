"""The house plan: the card's six modules at the root, the shared code in chexnet/, the other
commands in tools/; imports point one way (commands -> package -> nothing above it), with no
cycle."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CARD = {"preprocessing.py", "train.py", "denseNet_localization.py", "inference.py", "model.py",
        "gradcam.py"}
COMMANDS = {"preprocessing.py", "train.py", "denseNet_localization.py", "inference.py"} | {
    f"tools/{p.name}" for p in (ROOT / "tools").glob("*.py")}
SHARED = {"model.py", "gradcam.py"}  # at the root by the card, but part of the shared layer


def modules() -> dict[str, Path]:
    """'chexnet/boxes.py' -> path, for every module of the project (tests and benchmarks aside)."""
    paths = list(ROOT.glob("*.py")) + list((ROOT / "chexnet").glob("*.py")) \
        + list((ROOT / "tools").glob("*.py"))
    return {p.relative_to(ROOT).as_posix(): p for p in paths}


def benchmarks() -> dict[str, Path]:
    return {f"benchmarks/{p.name}": p for p in (ROOT / "benchmarks").glob("*.py")}


def imported(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules a file imports, anywhere in it (inside functions too). A bare name is
    looked up beside the file first (a script's own folder is sys.path[0]), then from the root,
    then in tools/ (which tests put on sys.path). A relative import fails: the bundle builder's
    walk refuses them, and a script run as a file cannot use one."""
    found = set()
    label = path.relative_to(ROOT) if path.is_relative_to(ROOT) else Path(path.name)
    folder = label.parent.as_posix()  # '.' at the root
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{label}:{node.lineno}: a relative import"
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            module = name.replace(".", "/") + ".py"
            for candidate in (f"{folder}/{module}", module, f"tools/{module}"):
                if candidate in known:
                    found.add(candidate)
                    break
    return found


def test_the_root_holds_the_card_and_nothing_else():
    assert {p.name for p in ROOT.glob("*.py")} == CARD
    assert all(p.suffix == ".py" for p in (ROOT / "chexnet").iterdir() if p.is_file())
    assert not [p for p in (ROOT / "chexnet").iterdir() if p.is_dir() and p.name != "__pycache__"]


def test_no_command_imports_another_and_the_package_imports_no_command():
    known = modules()
    graph = {name: imported(path, known) for name, path in known.items()}
    for name, targets in graph.items():
        if name in COMMANDS:
            assert not targets & COMMANDS, f"{name} imports the command(s) {targets & COMMANDS}"
        else:  # the package, model.py and gradcam.py
            assert not targets & COMMANDS, f"{name} imports the command(s) {targets & COMMANDS}"


def test_no_benchmark_imports_a_command():
    """Benchmarks call the shared code (chexnet/, model.py, gradcam.py) and each other's helpers;
    a command they run as a subprocess, as a user would."""
    known = {**modules(), **benchmarks()}
    for name, path in benchmarks().items():
        targets = imported(path, known)
        assert not targets & COMMANDS, f"{name} imports the command(s) {targets & COMMANDS}"


def test_a_relative_import_fails_the_walk(tmp_path):
    script = tmp_path / "script.py"
    script.write_text("import os\n\n\ndef f():\n    from .boxes import METHODS\n")
    with pytest.raises(AssertionError, match="script.py:5: a relative import"):
        imported(script, modules())


def test_no_import_cycle():
    known = modules()
    graph = {name: imported(path, known) for name, path in known.items()}
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != "open", "import cycle: " + " -> ".join(trail + [node, nxt])
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_inference_uses_the_standard_library_only():
    """It checks a bundle before any bundled code runs, so it may import nothing of the project."""
    tree = ast.parse((ROOT / "inference.py").read_text())
    tops = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
            for a in n.names}
    tops |= {n.module.split(".")[0] for n in ast.walk(tree)
             if isinstance(n, ast.ImportFrom) and n.module}
    assert tops <= {"__future__", "argparse", "hashlib", "json", "os", "subprocess", "sys",
                    "zipfile", "pathlib", "typing"}


def test_modules_are_short():
    long_modules = {n: len(p.read_text().splitlines()) for n, p in modules().items()
                    if len(p.read_text().splitlines()) > 320}
    assert long_modules == {}


def test_code_lines_fit_in_100_characters():
    long_lines = [f"{name}:{number}" for name, path in modules().items()
                  for number, line in enumerate(path.read_text().splitlines(), start=1)
                  if len(line) > 100]
    assert long_lines == []
