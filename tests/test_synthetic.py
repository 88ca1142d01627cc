"""The known-truth benchmark's dataset: consistent tables, findings drawn where their boxes say,
and an evaluation that a wrong geometry (swapped axes, a dropped crop offset) cannot pass."""
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest

import evaluate
from benchmarks import localization_benchmark as bench
from benchmarks import findings, synthetic
from chexnet.boxfile import Box, ImageBoxes, read_box_file, write_box_file
from chexnet.constants import CROP_OFFSET, RESCALE_FACTOR
from chexnet.images import read_xray
from chexnet.heatmap_file import read_heatmaps
from chexnet.nih import read_bbox_list, read_data_entry, read_image_list
from chexnet import boxes, nih, scoring
from benchmarks.bench_grid import CAM_VARIANTS, PICKED_ROWS

SIZES = {"train": 16, "valid": 4, "test": 4}
SEED = 5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("synthetic")
    records = synthetic.generate(out, SIZES, SEED, synthetic.ROOT / "sample" / "images")
    return out, records


def test_tables_and_lists_agree(dataset):
    out, records = dataset
    entries = read_data_entry(out / "Data_Entry_2017.csv")
    boxes = read_bbox_list(out / "BBox_List_2017.csv")
    lists = {split: read_image_list(out / f"{split}.txt") for split in synthetic.SPLITS}
    assert {s: len(names) for s, names in lists.items()} == SIZES
    every = [n for names in lists.values() for n in names]
    assert len(set(every)) == len(every) == len(entries) == sum(SIZES.values())
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(every)
    for name, row in entries.items():
        box_labels = sorted(b.label for b in boxes if b.image == name)
        assert sorted(row.labels) == box_labels  # a box for every label and a label for every box
        assert row.patient_id == name.split("_")[0]
    # 16 images walk one cycle: 2 'No Finding', each of the 8 classes positive 3 times.
    train = lists["train"]
    assert sum(1 for n in train if not entries[n].labels) == 2
    assert len(synthetic.PLANTED_CLASSES) == 8
    for label in synthetic.PLANTED_CLASSES:
        assert sum(1 for n in train if label in entries[n].labels) == 3
    multiplicities = sorted(len(entries[n].labels) for n in train)
    assert multiplicities == sorted(synthetic.MULTIPLICITIES)


def test_boxes_inside_the_crop_apart_and_of_a_real_size(dataset):
    _, records = dataset
    lo, hi = synthetic.FIELD
    assert (lo, hi) == (CROP_OFFSET * RESCALE_FACTOR, 1024 - CROP_OFFSET * RESCALE_FACTOR) == (64, 960)
    real = findings.real_boxes()
    for r in records:
        assert len({f.label for f in r.findings}) == len(r.findings) <= 3
        for f in r.findings:
            assert lo <= f.x and f.x + f.w <= hi and lo <= f.y and f.y + f.h <= hi
            # the size is one of the release's boxes of the class, rounded
            sizes = np.round(real[f.label][:, 2:])
            assert ((sizes[:, 0] == f.w) & (sizes[:, 1] == f.h)).any(), f
        for a, b in itertools.combinations(r.findings, 2):
            assert not synthetic._overlap(a, b, margin=0)


def test_the_real_box_table_and_where_classes_live():
    """sample/BBox_List_2017.csv is the release's whole table; drawn boxes keep its anatomy: the
    heart box central, effusions low, pneumothoraces high, and they mirror with the background."""
    real = findings.real_boxes()
    assert sum(len(v) for v in real.values()) == 984 and set(real) == set(synthetic.PLANTED_CLASSES)
    rng = np.random.default_rng(0)
    centre = {c: np.array([[b.x + b.w / 2, b.y + b.h / 2]
                           for b in (synthetic.draw_box(c, rng) for _ in range(300))])
              for c in ("Cardiomegaly", "Effusion", "Pneumothorax")}
    assert 480 < np.median(centre["Cardiomegaly"][:, 0]) < 680
    assert np.median(centre["Effusion"][:, 1]) > np.median(centre["Pneumothorax"][:, 1]) + 150
    heart = [synthetic.draw_box("Cardiomegaly", np.random.default_rng(i), True) for i in range(50)]
    assert np.median([b.x + b.w / 2 for b in heart]) < 512  # mirrored with the background


def test_each_look_fills_its_box_and_reaches_its_sides():
    rng = np.random.default_rng(3)
    for label, look in synthetic.PLANTED_CLASSES.items():
        for lateral_left in (False, True):
            weight = look.draw(160, 120, lateral_left, rng)
            assert weight.shape == (120, 160) and weight.dtype == np.float32, label
            assert weight.max() <= 1 + 1e-6 and weight.max() > 0.8, label
            # the finding spans the box: its soft rims reach within 5 % of each side
            for axis in (0, 1):
                seen = np.flatnonzero((weight > 0.05).any(axis=axis))
                size = weight.shape[1 - axis]
                assert seen[0] <= 0.05 * size and seen[-1] >= 0.95 * size - 1, (label, axis)
    # Effusion: fluid climbs the chest wall: the lateral column's top is higher than the medial
    weight = synthetic.PLANTED_CLASSES["Effusion"].draw(160, 200, False, rng)  # lateral right
    first = lambda col: int(np.argmax(col > 0.3))
    assert first(weight[:, -10]) < first(weight[:, 10]) - 60


def test_findings_are_drawn_exactly_inside_their_boxes(dataset):
    """Each file equals its finding-free twin (same index, no labels) outside the boxes, and
    differs inside them in the class's direction: darker for Pneumothorax, else brighter."""
    out, records = dataset
    backgrounds = synthetic.load_backgrounds(synthetic.ROOT / "sample" / "images")
    for index, r in enumerate(records[:SIZES["train"]]):
        image = read_xray(out / "images" / r.name)
        assert image.shape == (1024, 1024) and image.dtype == np.uint8
        _, background, _ = synthetic.make_image(index, (), SEED, backgrounds)
        inside = np.zeros(image.shape, bool)
        for f in r.findings:
            box = np.s_[f.y:f.y + f.h, f.x:f.x + f.w]
            inside[box] = True
            bg = background[box].astype(float)
            change = image[box] - bg
            look = synthetic.PLANTED_CLASSES[f.label]
            # a share of the room there is: towards white (bright), towards black (dark)
            sign, room = (1, 255 - bg) if look.bright else (-1, bg)
            assert sign * change.mean() > 0.15 * look.strength * room.mean(), (r.name, f)
        assert (image[~inside] == background[~inside]).all(), r.name


def test_nodule_disc_is_brighter_than_its_surroundings(dataset):
    out, records = dataset
    nodules = [(r.name, f) for r in records for f in r.findings if f.label == "Nodule"]
    assert nodules
    for name, f in nodules:
        image = read_xray(out / "images" / name).astype(float)
        core = image[f.y + f.h // 4:f.y + 3 * f.h // 4, f.x + f.w // 4:f.x + 3 * f.w // 4].mean()
        ring = np.ones(image.shape, bool)  # a band 8..24 px around the recorded box
        ring[f.y - 24:f.y + f.h + 24, f.x - 24:f.x + f.w + 24] = False
        band = ~ring
        band[f.y - 8:f.y + f.h + 8, f.x - 8:f.x + f.w + 8] = False
        assert core > image[band].mean() + 20, (name, f)


def test_same_seed_same_bytes_other_seed_other_images(dataset, tmp_path):
    out, records = dataset
    again = synthetic.generate(tmp_path / "a", {"train": 2, "valid": 1, "test": 1}, SEED,
                               synthetic.ROOT / "sample" / "images")
    assert again[:2] == records[:2]
    assert (tmp_path / "a/images" / records[0].name).read_bytes() == (out / "images" / records[0].name).read_bytes()
    other = synthetic.generate(tmp_path / "b", {"train": 2, "valid": 1, "test": 1}, SEED + 1,
                               synthetic.ROOT / "sample" / "images")
    assert [r.findings for r in other[:2]] != [r.findings for r in records[:2]]


# ---------------------------------------------------------------- geometry sensitivity

def _truth(tmp_path, n_images=400) -> dict:
    """Findings of n_images (positions only, no pixels), written and read back as the NIH box table."""
    rng = np.random.default_rng(SEED)
    records = [synthetic.Record(synthetic.image_name(i), "test",
                                synthetic.place_findings(labels, np.random.default_rng([SEED, i])), 40, "F")
               for i, labels in enumerate(synthetic.split_compositions(n_images, rng))]
    table = tmp_path / "BBox_List_2017.csv"
    table.write_text(synthetic.bbox_text(records))
    return nih.read_truth_by_image(table)


def _through_box_file(tmp_path, preds: dict) -> dict:
    """The predictions written as a box file (images/NAME paths) and read back as evaluate.py reads it."""
    write_box_file(tmp_path / "boxes.txt", [ImageBoxes(f"images/{k}", v) for k, v in preds.items()])
    return scoring.predictions_by_image("boxes.txt", read_box_file(tmp_path / "boxes.txt"))


def test_perfect_prediction_scores_one_and_a_wrong_geometry_collapses(tmp_path):
    truth = _truth(tmp_path)
    perfect = _through_box_file(tmp_path, bench.planted(truth))
    scores = bench.score(perfect, truth)
    for name in (*synthetic.PLANTED_CLASSES, scoring.OVERALL):
        assert scores[name]["mean_iou"] == 1.0
        assert set(scores[name]["acc_iou"].values()) == set(scores[name]["acc_iobb"].values()) == {1.0}
    # Swapping x and y moves each box to its mirror position across the diagonal: a small nodule
    # is then almost never found; the large findings keep only the overlap of random placement.
    swapped = bench.score(_through_box_file(tmp_path, bench.each_box(perfect, bench.swap_xy)), truth)
    assert swapped["Nodule"]["acc_iou"]["0.1"] < 0.15
    assert swapped[scoring.OVERALL]["acc_iou"]["0.5"] < 0.2
    assert swapped[scoring.OVERALL]["mean_iou"] < 0.2
    # Dropping the crop offset ((x224 + 16) * 4 computed as x224 * 4) shifts every box by -64 px
    # on both axes: few boxes keep IoU > 0.5, and few nodules overlap their truth.
    # A heart box is large (~480 x 380 px) and central: shifted by 64 px it keeps IoU > 0.5, and
    # even at random places it often overlaps (its chance row is high; the benchmark shows it).
    shifted = bench.score(_through_box_file(tmp_path, bench.each_box(perfect, bench.drop_crop_offset)), truth)
    assert shifted[scoring.OVERALL]["acc_iou"]["0.5"] < 0.2
    assert all(shifted[c]["acc_iou"]["0.5"] < 0.1 for c in synthetic.PLANTED_CLASSES
               if c != "Cardiomegaly")
    assert shifted["Nodule"]["acc_iou"]["0.1"] < 0.1
    # The chance row: the right boxes at random places are about as bad as the swapped ones.
    rng = np.random.default_rng(0)
    chance = bench.score(bench.random_positions(perfect, rng), truth)
    assert chance[scoring.OVERALL]["acc_iou"]["0.5"] < 0.2 and chance["Nodule"]["acc_iou"]["0.1"] < 0.15


# ---------------------------------------------------------------- the runner's pieces

def test_controls_change_only_what_they_claim():
    average = {"Nodule": np.array([676.0, 580.3, 66.3, 66.3])}
    preds = {"a.png": [Box("Nodule", 676.0, 580.3, 66.3, 66.3), Box("Nodule", 100.0, 200.0, 64.0, 64.0),
                       Box("Mass", 300.0, 400.0, 250.0, 280.0)],
             "b.png": []}
    heat, removed = bench.heatmap_only(preds, average)
    assert removed == 1 and heat == {"a.png": preds["a.png"][1:], "b.png": []}
    assert bench.average_only(preds, average) == {"a.png": [Box("Nodule", 676.0, 580.3, 66.3, 66.3)], "b.png": []}
    assert bench.swap_xy(Box("Mass", 300.0, 400.0, 250.0, 280.0)) == Box("Mass", 400.0, 300.0, 280.0, 250.0)
    assert bench.drop_crop_offset(Box("Mass", 300.0, 400.0, 250.0, 280.0)) == Box("Mass", 236.0, 336.0, 250.0, 280.0)
    moved = bench.random_positions(preds, np.random.default_rng(1))["a.png"]
    lo, hi = synthetic.FIELD
    for before, after in zip(preds["a.png"], moved):
        assert (after.label, after.w, after.h) == (before.label, before.w, before.h)
        assert lo <= after.x <= hi - after.w and lo <= after.y <= hi - after.h


def test_every_training_stage_gets_the_presets_precision(tmp_path, monkeypatch):
    """The full preset's train.py commands (warm-up, final, fine) carry --amp bf16 and its
    sizes; the settings of a run made before the preset had 'amp' give train.py's default."""
    commands = {}
    monkeypatch.setattr(bench, "run_stage", lambda name, cmd, work, timings:
                        commands.__setitem__(name, cmd))
    at, full = bench.Layout(tmp_path), dict(bench.PRESETS["full"], fine_size=448)
    bench.train_model(at, full, 7, "cpu", {})
    bench.fine_tune(at, full, 7, "cpu", {})
    assert list(commands) == ["synthetic", "preprocessing", "preprocessing_warm", "train_warm",
                              "train", "preprocessing_fine", "train_fine"]
    assert commands["synthetic"][commands["synthetic"].index("--n-train") + 1] == "1024"
    for stage in ("train_warm", "train", "train_fine"):
        cmd = commands[stage]
        assert cmd[1] == "train.py" and cmd[cmd.index("--amp") + 1] == "bf16", stage
        assert cmd[cmd.index("--seed") + 1] == "7"
    assert commands["train"][commands["train"].index("--weights") + 1].endswith("best.pt")
    old = {k: v for k, v in full.items() if k != "amp"}
    cmd = bench.training_options(old, 0, "cpu")
    assert cmd[cmd.index("--amp") + 1] == "auto"


def test_the_presets_bf16_only_where_the_cpu_runs_it_natively(monkeypatch):
    import torch
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):  # torch's own probes
        monkeypatch.setattr(torch.cpu, probe, lambda: False)
    assert bench.preset_precision("bf16", "cpu") == "auto"  # fp32 on such a CPU
    assert bench.preset_precision("off", "cpu") == "off"  # the user's choice stays
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert bench.preset_precision("bf16", "cpu") == "bf16"


# ---------------------------------------------------------------- the whole chain, tiny

@pytest.mark.skipif(os.environ.get("CHEXNET_PIPELINE_TESTS") != "1",
                    reason="the whole chain takes ~90 s of CPU (5 min on a busy 2-core machine): "
                           "set CHEXNET_PIPELINE_TESTS=1 to run it")
def test_quick_benchmark_runs_the_real_scripts_end_to_end(tmp_path):
    """--quick: synthetic data, preprocessing.py, train.py, denseNet_localization.py, evaluate.py.
    The model is far too small to localize; what must hold is the plumbing and the bookkeeping."""
    # three of CAM_VARIANTS' 13 (each one localizes once): the original's, a fused one, a flip
    chosen = ["gradcam", "layercam@db2+db3", "layercam@db2+db3-flip"]
    assert set(chosen) <= set(CAM_VARIANTS)
    stale = tmp_path / "heatmaps_every_class_layercam@db2+db3.npz"  # an earlier model's maps
    stale.write_bytes(b"not these")
    result = bench.main(bench.get_args_parser().parse_args(["--quick", "--work", str(tmp_path),
                                                            "--cams", *chosen]))
    assert result == json.loads((tmp_path / "benchmark.json").read_text())
    # of the default truth-class cams only those that ran: every class's maps, and their figure;
    # the stale file is gone, not scored
    assert (tmp_path / "heatmaps_every_class_gradcam.npz").is_file()
    assert not list(tmp_path.glob("heatmaps_every_class_layercam*"))
    maps = result["grid"]["gradcam"]["maps"][scoring.OVERALL]
    assert maps["pointing_truth_classes"] >= maps["pointing"]  # a map for each pair, not fewer
    every = read_heatmaps(tmp_path / "heatmaps_every_class_gradcam.npz")
    pairs = {(Path(i).name, l) for i, l in zip(every.images, every.labels)}
    assert pairs >= {(n, c) for n in read_image_list(tmp_path / "data" / "test.txt")
                     for c in bench.CLASSES}  # every class active on every test image
    assert "pointing_truth_classes" not in result["grid"]["layercam@db2+db3"]["maps"]["overall"]
    rows, cams = result["rows"], result["cams"]
    # one epoch of the warm-up at 112, then one at 224 from its weights (the quick preset)
    assert cams == chosen and [e["stage"] for e in result["training"]] == ["warm", "final"]
    truth = read_bbox_list(tmp_path / "bbox_test.csv")
    assert {b.image for b in truth} <= set(read_image_list(tmp_path / "data" / "test.txt"))
    oracle = rows["planted boxes (oracle)"]
    assert oracle[scoring.OVERALL]["truth_boxes"] == len(truth)
    assert set(oracle[scoring.OVERALL]["acc_iou"].values()) == {1.0}
    whole = rows["gradcam + peaks: box file as written"]
    heat = rows["gradcam + peaks: heatmap boxes only"]
    for c in whole:  # dropping boxes can only lose hits
        assert all(whole[c]["acc_iou"][t] >= heat[c]["acc_iou"][t] for t in whole[c]["acc_iou"]
                   if whole[c]["acc_iou"][t] is not None)
    # The original format writes one average box first for each class detected in an image.
    preds = bench.load_preds(tmp_path / "boxes_gradcam.txt")
    detected = sum(len({b.label for b in found if b.label in bench.CLASSES})
                   for found in preds.values())
    assert result["average_boxes_removed"]["gradcam"] == detected
    for cam in cams:
        assert (tmp_path / f"evaluation_{cam}" / "evaluation.json").is_file()
        picked = {row for row, *_ in PICKED_ROWS}
        assert set(result["grid"][cam]["rules"]) == set(boxes.METHODS) | picked
        assert (tmp_path / f"heatmaps_valid_{cam}.npz").is_file()  # where the rules were chosen
        for row in picked:
            chosen = result["grid"][cam]["per_class_rules"][row]
            assert set(chosen) == set(bench.CLASSES)
            assert {rule for rule, *_ in chosen.values()} <= set(boxes.METHODS)
        assert result["seconds_per_image"][cam] > 0
    # the grid's Grad-CAM + peaks (from the saved maps) scores the same truth as the box file
    grid = result["grid"]["gradcam"]["rules"]["peaks"]["heat"][scoring.OVERALL]
    assert grid["truth_boxes"] == heat[scoring.OVERALL]["truth_boxes"]
