"""Every command's --help: it exits 0 and opens with one whole sentence on one line.

A script whose imports break (a renamed module, a moved function) fails here, benchmarks included,
though no other test runs them. One child process runs every script as `python3 SCRIPT --help`
would (its own folder first on sys.path, the project's modules imported afresh for each), so torch
is imported once rather than once per script: a few seconds instead of a minute.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["preprocessing.py", "train.py", "denseNet_localization.py", "inference.py"]
SCRIPTS = STAGES + sorted(p.relative_to(ROOT).as_posix() for folder in ("tools", "benchmarks")
                          for p in (ROOT / folder).glob("*.py")
                          if "ArgumentParser(" in p.read_text())

RUN_EACH = r"""
import contextlib, io, json, runpy, sys, traceback
root, scripts = sys.argv[1], sys.argv[2:]
base = [p for p in sys.path if p not in ("", root)]
results = {}
for script in scripts:
    path = f"{root}/{script}"
    sys.argv, sys.path[:] = [path, "--help"], [path.rsplit("/", 1)[0], *base]
    out, err, code = io.StringIO(), io.StringIO(), None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as exit:
            code = exit.code
        except BaseException:
            traceback.print_exc()
            code = "raised"
    results[script] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
    for name, module in list(sys.modules.items()):  # the next script imports the project afresh
        file = getattr(module, "__file__", None) or ""
        if file.startswith(root + "/") and "site-packages" not in file:
            del sys.modules[name]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def helps() -> dict:
    result = subprocess.run([sys.executable, "-c", RUN_EACH, str(ROOT), *SCRIPTS], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "COLUMNS": "1000"})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_the_list_holds_the_tools_and_benchmarks():
    assert {"tools/evaluate.py", "benchmarks/bench_localize.py", "benchmarks/gpu_check.py"} \
        <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exits_0_and_opens_with_one_sentence(helps, script):
    run = helps[script]
    assert run["code"] in (0, None), run["stderr"]
    blocks = run["stdout"].split("\n\n")
    assert blocks[0].startswith("usage: ") and len(blocks) > 2, run["stdout"]
    description = blocks[1]
    assert "\n" not in description, f"the description takes several lines: {description!r}"
    assert description.endswith("."), f"the description stops mid-sentence: {description!r}"
    assert not re.search(r"[.!?] +[A-Z]", description), f"more than one sentence: {description!r}"
