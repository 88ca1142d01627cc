"""Docs that cannot rot: README.md, every docs/*.md and the folders' READMEs are checked against
the code.

- every relative link and image resolves (a file, and a heading's anchor in a Markdown page);
- every `python3 SCRIPT.py` (also `python`, `$(PY)`) in a code block, a table row or an inline code
  span names an existing script, and every `--option` after it there is an option of that
  script's argparse parser (from its get_args_parser(), loaded in one child process: no model
  runs); a table row whose first cell names a script (benchmarks/README.md's) counts as a command;
- every `make TARGET` in code names a target of the Makefile.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" /
         "README.md", ROOT / "tests" / "README.md"]

FENCE = re.compile(r"^ *(```|~~~).*?^ *\1", re.M | re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)\)")
INLINE = re.compile(r"`([^`]+)`")
COMMAND = re.compile(r"(?:^|[\s(`])(?:python3?|\$\(PY\))\s+((?!-)[\w./-]+\.py)\b")
OPTION = re.compile(r"(?<![\w-])(--[a-zA-Z][\w-]*)")
MAKE = re.compile(r"(?:^|[\s`;&])make\s+([a-z][\w-]*)")
# a comment, the next command, a pipe or a table cell ("[A | --b B]" is a usage's choice)
SEPARATOR = re.compile(r"\s(?:#|&&|\|\||;|\|(?!\s*-))\s")

OPTIONS_OF_EACH = r"""
import json, runpy, sys
root, scripts = sys.argv[1], sys.argv[2:]
base = [p for p in sys.path if p not in ("", root)]
found = {}
for script in scripts:
    path = f"{root}/{script}"
    sys.path[:] = [path.rsplit("/", 1)[0], *base]
    make = runpy.run_path(path, run_name="docs_check").get("get_args_parser")
    found[script] = make and sorted(s for a in make()._actions for s in a.option_strings)
    for name, module in list(sys.modules.items()):  # the next script imports the project afresh
        file = getattr(module, "__file__", None) or ""
        if file.startswith(root + "/") and "site-packages" not in file:
            del sys.modules[name]
print(json.dumps(found))
"""


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} +(.+?) *#*$", text, re.M)}


def broken_links(page: Path) -> list[str]:
    """'target: why' for every relative link or image of the page that does not resolve."""
    bad = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            bad.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            bad.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    return bad


def code_units(page: Path) -> list[str]:
    """The page's code, one string per command unit: each line of a fenced block (a trailing
    backslash joins the next), each table row, each inline code span."""
    text, units = page.read_text(), []
    for block in FENCE.finditer(text):
        body = block.group(0).split("\n", 1)[1].rsplit("\n", 1)[0]
        units += re.sub(r"\\\n", " ", body).split("\n")
    prose = FENCE.sub("", text)
    units += [line for line in prose.split("\n") if line.lstrip().startswith("|")]
    units += INLINE.findall(prose)
    return units


def folder(page: Path) -> Path:
    """Where a table's first-cell script names are looked up: docs/ pages name them from the
    root, the folders' READMEs from their folder."""
    return ROOT if page.parent == ROOT / "docs" else page.parent


def has_parser(page: Path, name: str) -> bool:
    path = folder(page) / name
    return path.is_file() and "def get_args_parser" in path.read_text()


def commands(page: Path) -> list[tuple[str, list[str]]]:
    """(script, its --options) for each command written on the page; the script as a path from
    the root (a table row's first-cell script from the page's folder; a docs/ page's from the
    root)."""
    found = []
    for unit in code_units(page):
        for piece in SEPARATOR.split(" " + unit + " "):
            starts = list(COMMAND.finditer(piece))
            for i, match in enumerate(starts):
                end = starts[i + 1].start() if i + 1 < len(starts) else len(piece)
                found.append((match.group(1), OPTION.findall(piece[match.end():end])))
        first = re.match(r"\s*\|\s*`([\w/]+\.py)`", unit)
        if first and not COMMAND.search(unit) and has_parser(page, first.group(1)):
            script = (folder(page) / first.group(1)).resolve().relative_to(ROOT).as_posix()
            found.append((script, OPTION.findall(unit)))
    return found


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+)\s*:(?!=)", (ROOT / "Makefile").read_text(), re.M))


def script_options(scripts: set[str]) -> dict[str, list[str]]:
    result = subprocess.run([sys.executable, "-c", OPTIONS_OF_EACH, str(ROOT), *sorted(scripts)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def problems(pages: list[Path], options: dict[str, list[str]] | None = None) -> list[str]:
    """Everything wrong with the pages, one line each; options: script -> its options (None:
    read from the scripts)."""
    bad = [f"{page.name}: link {why}" for page in pages for why in broken_links(page)]
    written = [(page, script, opts) for page in pages for script, opts in commands(page)]
    missing = {script for _, script, _ in written if not (ROOT / script).is_file()}
    bad += [f"{page.name}: no script {script}" for page, script, _ in written if script in missing]
    if options is None:
        options = script_options({s for _, s, _ in written} - missing)
    bad += [f"{page.name}: {script} has no option {opt}" for page, script, opts in written
            if script not in missing for opt in opts if opt not in (options[script] or ())]
    targets = make_targets()
    bad += [f"{page.name}: make has no target {target}" for page in pages
            for unit in code_units(page) for target in MAKE.findall(unit)
            if target not in targets]
    return list(dict.fromkeys(bad))  # a table row's inline code is seen twice: one line each


@pytest.fixture(scope="module")
def options() -> dict[str, list[str]]:
    scripts = {s for page in PAGES for s, _ in commands(page) if (ROOT / s).is_file()}
    return script_options(scripts)


def test_every_page_holds_what_the_code_has(options):
    found = problems(PAGES, options)
    assert not found, "the pages and the code disagree:\n" + "\n".join(found)


def test_the_pages_name_the_stages_their_options_and_targets():
    """The checks look at something: the commands, options and targets the pages are known to
    write are found."""
    written = {(s, o) for page in PAGES for s, opts in commands(page) for o in opts}
    assert {("train.py", "--out"), ("denseNet_localization.py", "--save-heatmaps"),
            ("tools/auroc.py", "--model"), ("benchmarks/bench_cam_methods.py", "--threads"),
            ("preprocessing.py", "--classes")} <= written
    made = {t for page in PAGES for unit in code_units(page) for t in MAKE.findall(unit)}
    assert {"demo", "test", "gpu-check"} <= made
    assert len([1 for page in PAGES for _ in LINK.findall(page.read_text())]) > 20


def write_page(tmp_path: Path, text: str) -> Path:
    # in docs/, so that its links resolve as a page's; not *.md, so that no other check sees it
    page = ROOT / "docs" / f".test_docs_{tmp_path.name}.md.tmp"
    page.write_text(text)
    return page


@pytest.fixture
def page_at(tmp_path):
    made = []

    def make(text: str) -> Path:
        made.append(write_page(tmp_path, text))
        return made[-1]
    yield make
    for page in made:
        page.unlink()


@pytest.mark.parametrize("text, expected", [
    ("see [training](training.md) and ![x](../output/README_figures/boxes.png)", []),
    ("see [training](trainin.md)", ["link trainin.md: no such file"]),
    ("see [a](training.md#several-gpu)", ["no heading #several-gpu in docs/training.md"]),
    ("![x](../output/README_figures/box.png)", ["no such file"]),
    ("```\npython3 train.py OUT --epochs 2 --out m  # --not-an-option in a comment\n```", []),
    ("```\npython3 train.py OUT --epoch 2\n```", ["train.py has no option --epoch"]),
    ("| a | `python3 tools/evaluate.py B T --out D --heatmap H` |",
     ["tools/evaluate.py has no option --heatmap"]),
    ("text `python3 tools/evalute.py B T` text", ["no script tools/evalute.py"]),
    ("```\npython3 train.py O \\\n    --out m --seeed 1\n```", ["train.py has no option --seeed"]),
    ("```\nmake demo\nmake benchmarks\n```", ["make has no target benchmarks"]),
])
def test_a_broken_link_a_renamed_option_a_missing_script_are_found(page_at, text, expected):
    found = problems([page_at(text)], {"train.py": ["--epochs", "--out", "--seed"],
                                       "tools/evaluate.py": ["--out", "--heatmaps"]})
    assert len(found) == len(expected), found
    for line, part in zip(found, expected):
        assert part in line, found


def test_slugs_are_githubs():
    assert slug("A benchmark whose truth is known: `benchmarks/localization_benchmark.py`") == \
        "a-benchmark-whose-truth-is-known-benchmarkslocalization_benchmarkpy"
    assert slug("Pictures: `--plots`") == "pictures---plots"
