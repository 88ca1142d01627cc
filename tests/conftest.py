"""Shared fixtures: the bundled real sample, and ../shared/nih where present."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))  # the other commands: evaluate, calibrate, draw_boxes, build_bundle

SAMPLE = ROOT / "sample"
SHARED_NIH = ROOT.parent / "shared" / "nih"


@pytest.fixture
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture
def shared_nih() -> Path:
    if not (SHARED_NIH / "images").is_dir():
        pytest.skip("../shared/nih is not present")
    return SHARED_NIH
