"""The known-truth benchmark's per-class rule: each class gets the box rule that wins on the
validation maps, and the grid scores that choice on other images."""
from __future__ import annotations

import numpy as np

from benchmarks import bench_grid
from benchmarks import localization_benchmark as bench
from chexnet import boxes
from chexnet.constants import CLASS_NAMES
from chexnet.heatmap_file import SavedHeatmaps
from chexnet.nih import TruthBox

ROWS, COLS = np.mgrid[0:224, 0:224]


def _nodule_map() -> np.ndarray:
    """A broad Gaussian centred on crop pixel (150, 160): its one peak sits on the nodule, while
    the region above half its maximum is some 94 px wide, far larger than the nodule."""
    return np.exp(-((ROWS - 150) ** 2 + (COLS - 160) ** 2) / (2 * 40.0 ** 2)).astype(np.float32)


def _heart_map() -> np.ndarray:
    """A plateau exactly on crop rows 60-134, columns 40-139: the threshold rule's rectangle is
    the heart's box."""
    heatmap = np.zeros((224, 224), np.float32)
    heatmap[60:135, 40:140] = 1.0
    return heatmap


def _case():
    """Two images: a nodule on a.png (box of the average size, at the Gaussian's centre) and a
    heart on b.png (box = the plateau; its average box is far too small for peaks to hit it)."""
    saved = SavedHeatmaps(["images/a.png", "images/b.png"], ["Nodule", "Cardiomegaly"],
                          np.ones(2, np.float32), np.stack([_nodule_map(), _heart_map()]),
                          "gradcam", "features.norm5", [(1024, 1024)] * 2)
    # crop (row, col) -> 1024 (x, y) = ((col + 16) * 4, (row + 16) * 4)
    truth = {"a.png": [TruthBox("a.png", "Nodule", 674.0, 634.0, 60.0, 60.0)],
             "b.png": [TruthBox("b.png", "Cardiomegaly", 224.0, 304.0, 400.0, 300.0)]}
    average = {c: np.array([0.0, 0.0, 100.0, 100.0]) for c in CLASS_NAMES}
    average["Nodule"] = np.array([0.0, 0.0, 60.0, 60.0])
    return saved, truth, average


def test_each_class_gets_the_rule_that_hits_its_boxes():
    saved, truth, average = _case()
    picked = bench_grid.pick_rules(saved, truth, ["a.png", "b.png"], average, bench.CLASSES,
                                   bench.score)
    assert picked["Nodule"] == ("peaks", None)  # at its default parameter
    assert picked["Cardiomegaly"][0] in ("threshold", "percentile", "otsu")
    # a class with no true box on these images keeps the original's rule
    assert {picked[c] for c in bench.CLASSES if c not in ("Nodule", "Cardiomegaly")} == {
        ("peaks", None)}
    tuned = bench_grid.pick_rules(saved, truth, ["a.png", "b.png"], average, bench.CLASSES,
                                  bench.score, tune=True)
    assert tuned["Nodule"][0] == "peaks" and tuned["Cardiomegaly"][0] in boxes.SIZE_FREE
    assert tuned["Atelectasis"] == ("peaks", boxes.METHODS["peaks"].default)  # nothing to tune
    per_class = bench.score(bench_grid.heatmap_boxes(saved, picked, average, bench.CLASSES), truth)
    for rule in ("peaks", "threshold"):  # the choice beats either rule alone on the two classes
        alone = bench.score(bench_grid.heatmap_boxes(saved, rule, average, bench.CLASSES), truth)
        assert (per_class["Nodule"]["acc_iou"]["0.5"] + per_class["Cardiomegaly"]["acc_iou"]["0.5"]
                > alone["Nodule"]["acc_iou"]["0.5"] + alone["Cardiomegaly"]["acc_iou"]["0.5"])
    assert per_class["Nodule"]["acc_iou"]["0.5"] == per_class["Cardiomegaly"]["acc_iou"]["0.5"] == 1


def test_the_grid_scores_the_rules_chosen_on_the_validation_maps(tmp_path):
    """score_grid(valid=...) adds the rule PER_CLASS, chosen on the validation file's maps and
    scored on the test maps. Validation images whose nodules are plateau-shaped and large choose
    the threshold rule for Nodule, and the test's small nodule is then missed."""
    from chexnet.heatmap_file import write_heatmaps
    saved, truth, average = _case()
    test_file, valid_file = tmp_path / "test.npz", tmp_path / "valid.npz"
    write_heatmaps(test_file, saved)
    write_heatmaps(valid_file, SavedHeatmaps(["images/v.png"], ["Nodule"], np.ones(1, np.float32),
                                             _heart_map()[None], "gradcam", "features.norm5",
                                             [(1024, 1024)]))
    big_nodule = {"v.png": [TruthBox("v.png", "Nodule", 224.0, 304.0, 400.0, 300.0)]}
    names = ["a.png", "b.png"]
    grid = bench_grid.score_grid(test_file, truth, names, average, bench.CLASSES, 0,
                                 bench.CONTROLS, (test_file, truth, names))
    assert grid["per_class_rules"][bench_grid.PER_CLASS]["Nodule"] == ["peaks", None]
    assert grid["rules"][bench_grid.PER_CLASS]["heat"]["Nodule"]["acc_iou"]["0.5"] == 1
    fooled = bench_grid.score_grid(test_file, truth, names, average, bench.CLASSES, 0,
                                   bench.CONTROLS, (valid_file, big_nodule, ["v.png"]))
    chosen = {row for row, *_ in bench_grid.PICKED_ROWS}
    for row in chosen:
        assert fooled["per_class_rules"][row]["Nodule"][0] != "peaks"
        assert fooled["rules"][row]["heat"]["Nodule"]["acc_iou"]["0.5"] == 0
    assert fooled["rules"][bench_grid.PER_CLASS]["heat"]["Nodule"]["acc_iou"]["0.5"] == 0
    # the other rules' figures do not depend on the validation maps
    assert {k: v for k, v in grid["rules"].items() if k not in chosen} == {
        k: v for k, v in fooled["rules"].items() if k not in chosen}
    plain = bench_grid.score_grid(test_file, truth, names, average, bench.CLASSES, 0,
                                  bench.CONTROLS)
    assert "per_class_rules" not in plain
    assert not chosen & set(plain["rules"])


def test_the_truth_classes_pointing_game_looks_past_the_classifiers_decision():
    """The classifier left Cardiomegaly inactive on b.png (no map): the end-to-end pointing game
    counts that pair a miss, the truth classes' protocol scores the map it would have had."""
    saved, truth, _ = _case()
    decided = SavedHeatmaps(saved.images[:1], saved.labels[:1], saved.probs[:1], saved.maps[:1],
                            saved.cam, saved.layer, saved.sizes[:1])
    names = ["a.png", "b.png"]
    end_to_end = bench_grid.map_figures(decided, truth, names)["overall"]
    assert end_to_end["pointing"] == end_to_end["mapped"] == 0.5
    assert "pointing_truth_classes" not in end_to_end
    both = bench_grid.map_figures(decided, truth, names, every=saved)
    assert both["overall"]["pointing_truth_classes"] == both["Cardiomegaly"][
        "pointing_truth_classes"] == 1.0
    assert both["Cardiomegaly"]["pointing"] == both["Cardiomegaly"]["mapped"] == 0.0
    assert both["Cardiomegaly"]["pointing_truth_classes_transposed"] == 0.0  # the heart mirrored


def test_the_summary_keeps_the_rows_every_seed_has():
    """A seed scored before the validation maps existed has no per-class rows: the table over
    seeds then leaves them out instead of failing (or dropping them only when it is first)."""
    def seed(rules):
        cell = {"acc_iou": {t: 0.5 for t in bench_grid.SHOWN_T}, "mean_iou": 0.4}
        figures = {c: cell for c in (*bench.CLASSES, "overall")}
        maps = {"overall": {"pointing": 0.8, "pointing_transposed": 0.3, "map_iou": 0.3}}
        return {"grid": {"gradcam": {"rules": {r: {k: figures for k in ("heat", "random",
                                                                        "swapped", "no_offset")}
                                               for r in rules}, "maps": maps}},
                "seconds_per_image": {"gradcam": 0.1}}
    full, old = seed(["peaks", bench_grid.PER_CLASS]), seed(["peaks"])
    for order in ([full, old], [old, full]):
        assert list(bench_grid.summarize(order, bench.CLASSES)) == ["gradcam / peaks"]
    assert list(bench_grid.summarize([full, full], bench.CLASSES)) == [
        "gradcam / peaks", f"gradcam / {bench_grid.PER_CLASS}"]


def test_the_scaled_row_shrinks_a_region_to_its_box():
    """The heart's plateau is 100 x 75 crop px and its true box the central 60 x 45: the rules
    tuned without a scale miss it at IoU > 0.5 (IoU 0.36); PER_CLASS_SCALED picks the rectangle
    scale 0.6 on these images and hits it exactly."""
    saved, truth, average = _case()
    truth["b.png"] = [TruthBox("b.png", "Cardiomegaly", *boxes.crop_rect_to_original(60, 75, 120,
                                                                                       120))]
    names = ["a.png", "b.png"]
    tuned = bench_grid.pick_rules(saved, truth, names, average, bench.CLASSES, bench.score, True)
    scaled = bench_grid.pick_rules(saved, truth, names, average, bench.CLASSES, bench.score, True,
                                   scale=True)
    rule, _, rect_scale = scaled["Cardiomegaly"]
    assert rule in boxes.SIZE_FREE and rect_scale == 0.6
    heart, nodule = {}, {}
    for name, chosen in (("tuned", tuned), ("scaled", scaled)):
        figures = bench.score(bench_grid.heatmap_boxes(saved, chosen, average, bench.CLASSES), truth)
        heart[name] = figures["Cardiomegaly"]["acc_iou"]["0.5"]
        nodule[name] = figures["Nodule"]["acc_iou"]["0.5"]
    assert heart == {"tuned": 0.0, "scaled": 1.0}
    assert nodule == {"tuned": 1.0, "scaled": 1.0}  # (peaks, or a region scaled down to it)


def test_every_class_maps_of_another_model_are_refused(tmp_path):
    """The truth-class pointing game reads a second heatmap file; one whose probabilities differ
    from the test maps' (another model's) must stop the scoring, not be scored beside them."""
    from dataclasses import replace

    import pytest

    from chexnet.heatmap_file import write_heatmaps
    saved, truth, average = _case()
    test_file, same, other = tmp_path / "test.npz", tmp_path / "same.npz", tmp_path / "other.npz"
    write_heatmaps(test_file, saved)
    write_heatmaps(same, saved)
    write_heatmaps(other, replace(saved, probs=saved.probs * 0.5))
    names = ["a.png", "b.png"]
    grid = bench_grid.score_grid(test_file, truth, names, average, bench.CLASSES, 0,
                                 bench.CONTROLS, every_class=same)
    assert grid["maps"]["overall"]["pointing_truth_classes"] == 1.0
    from chexnet.utils import InputError
    with pytest.raises(InputError, match="other.npz: not the maps of the model"):
        bench_grid.score_grid(test_file, truth, names, average, bench.CLASSES, 0, bench.CONTROLS,
                              every_class=other)
