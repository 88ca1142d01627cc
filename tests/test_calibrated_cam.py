"""Localization makes its maps with the CAM and layer that box_sizes.json was calibrated on (its
box sizes and parameters were tuned on those maps); another --cam or --layer is warned about."""
from pathlib import Path

import numpy as np
import pytest

import denseNet_localization
from chexnet import calibrated, model_dir
from chexnet.boxfile import read_box_file
from chexnet.constants import AVERAGE_BOXES, DEFAULT_TARGET_LAYER
from chexnet.heatmap_file import read_heatmaps
from chexnet.utils import InputError
from gradcam import FINAL_FEATURES

FINER = "features.denseblock3"  # 14 x 14: a layer a calibration might pick for layercam


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, random_checkpoint) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("calcam"))  # thresholds 0: every class active


def _calibrated(folder: Path, record: dict | None) -> None:
    calibrated.write_box_sizes(folder / model_dir.BOX_SIZES, np.array(AVERAGE_BOXES), "peaks",
                              np.full(8, 0.9), calibration=record)


def test_resolve_cam_defaults_warnings_and_a_box_table(tmp_path):
    ckpt = tmp_path / "best.pt"
    assert calibrated.resolve_cam(None, None, None, ckpt) == ("gradcam", DEFAULT_TARGET_LAYER, "the default", None)
    _calibrated(tmp_path, {"cam": "layercam", "layer": FINER})
    sizes = str(tmp_path / model_dir.BOX_SIZES)
    assert calibrated.resolve_cam(None, None, None, ckpt) == ("layercam", FINER, sizes, None)
    assert calibrated.resolve_cam("layercam", FINER, None, ckpt)[3] is None  # the same, said explicitly
    cam, layer, _, warning = calibrated.resolve_cam("gradcam", None, None, ckpt)
    assert (cam, layer) == ("gradcam", DEFAULT_TARGET_LAYER)
    assert warning == (f"warning: maps of gradcam at {DEFAULT_TARGET_LAYER}, but {sizes} was calibrated on "
                       f"layercam at {FINER}: its box sizes and parameters were tuned for another CAM")
    assert calibrated.resolve_cam("layercam", DEFAULT_TARGET_LAYER, None, ckpt)[3] is not None  # other layer
    # A box table replaces box_sizes.json, its parameters and so its CAM: the default again.
    assert calibrated.resolve_cam(None, None, "BBox_List_2017.csv", ckpt)[:2] == ("gradcam", DEFAULT_TARGET_LAYER)
    _calibrated(tmp_path, {"cam": "cam"})  # no layer recorded: the method's own
    assert calibrated.resolve_cam(None, None, None, ckpt)[:2] == ("cam", FINAL_FEATURES)
    _calibrated(tmp_path, None)  # sizes and parameters without a calibration record: the default CAM
    assert calibrated.resolve_cam(None, None, None, ckpt)[:2] == ("gradcam", DEFAULT_TARGET_LAYER)
    _calibrated(tmp_path, {"cam": "scorecam"})
    with pytest.raises(InputError, match="calibrated on an unknown CAM method 'scorecam'"):
        calibrated.resolve_cam(None, None, None, ckpt)


def test_localization_takes_the_calibrated_cam_and_warns_on_another(model_path, sample_dir, tmp_path, capsys):
    _calibrated(model_path.parent, {"cam": "layercam", "layer": FINER})
    (tmp_path / "one.txt").write_text("00001933_000.png\n")

    def run(name, *extra):
        denseNet_localization.main(denseNet_localization.get_args_parser().parse_args(
            [str(tmp_path / "one.txt"), str(sample_dir / "images"), "--model", str(model_path), "--workers",
             "0", "--out", str(tmp_path / f"{name}.txt"), "--save-heatmaps", str(tmp_path / f"{name}.npz"),
             *extra]))
        saved = read_heatmaps(tmp_path / f"{name}.npz")
        return [b.line() for b in read_box_file(tmp_path / f"{name}.txt")[0].boxes], saved, capsys.readouterr().err

    default, saved, err = run("default")
    assert (saved.cam, saved.layer) == ("layercam", FINER)
    assert f"maps layercam at {FINER} (from {model_path.parent / model_dir.BOX_SIZES})" in err
    assert "warning" not in err
    explicit, _, err = run("explicit", "--cam", "layercam", "--layer", FINER)
    assert explicit == default and "warning" not in err
    other, saved, err = run("other", "--cam", "gradcam")
    assert (saved.cam, saved.layer) == ("gradcam", DEFAULT_TARGET_LAYER)
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "calibrated on layercam" in warnings[0]
