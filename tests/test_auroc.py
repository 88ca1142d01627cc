"""tools/auroc.py and denseNet_localization.py --probs: sklearn's AUROC, patient-level intervals."""
import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import auroc
import denseNet_localization
from conftest import random_state
from model import build_model
from chexnet import bootstrap, localize
from chexnet.constants import ALL_FINDINGS, CLASS_NAMES
from chexnet.probs import read_probs_csv, write_probs_csv

NAMES = ["00001933_000.png", "00008386_000.png", "00013125_000.png"]


def weighted_auroc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> float | None:
    """The bootstrap's AUROC of one draw, where image i counts weights[i] times."""
    _, groups = np.unique(scores, return_inverse=True)
    return bootstrap._grouped_auroc(np.asarray(labels, bool), groups,
                                    np.asarray(weights, np.float64))


def test_weighted_auroc_is_sklearns():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + 0.3 * labels, 2)  # rounded: many ties
    assert weighted_auroc(labels, scores, np.ones(300)) == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-12)
    weights = rng.integers(0, 4, 300)
    repeated = np.repeat(np.arange(300), weights)
    assert weighted_auroc(labels, scores, weights) == pytest.approx(
        roc_auc_score(labels[repeated], scores[repeated]), abs=1e-12)
    assert weighted_auroc(np.zeros(5), np.arange(5.0), np.ones(5)) is None


def known_case(tmp_path, copies: int = 1):
    """60 patients with 14 findings' probabilities; each image of a patient listed `copies` times
    (under new names, same patient)."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, (60, 14))
    labels[:, 13] = 0
    labels[:3, 13] = 1  # Hernia: rare, so some bootstrap draws have no positive
    probs = np.clip(0.35 * labels + 0.65 * rng.random((60, 14)), 0, 1)
    entries, names, rows = ["Image Index,Finding Labels,Patient ID"], [], []
    for p in range(60):
        found = "|".join(ALL_FINDINGS[c] for c in range(14) if labels[p, c]) or "No Finding"
        for k in range(copies):
            names.append(f"{p:08d}_{k:03d}.png")
            rows.append(p)
            entries.append(f"{names[-1]},{found},{p}")
    (tmp_path / "entry.csv").write_text("\n".join(entries) + "\n")
    write_probs_csv(tmp_path / "probs.csv", names, ALL_FINDINGS, probs[rows])
    np.save(tmp_path / "thr.npy", np.full(14, 0.5))
    return labels, probs


def run(tmp_path, *extra):
    args = auroc.get_args_parser().parse_args(
        [str(tmp_path / "probs.csv"), str(tmp_path / "entry.csv"), "--bootstrap", "300", *extra])
    return auroc.main(args)


def test_auroc_tool_on_a_known_case(tmp_path, capsys):
    labels, probs = known_case(tmp_path)
    report = run(tmp_path, "--thresholds", str(tmp_path / "thr.npy"),
                 "--out", str(tmp_path / "out"))
    assert report["bootstrap"]["unit"] == "patient"
    for c, row in enumerate(report["classes"][:14]):
        expected = roc_auc_score(labels[:, c], probs[:, c])
        assert row["class"] == ALL_FINDINGS[c]
        assert row["auroc"] == pytest.approx(expected, abs=1e-5)  # the CSV keeps 6 decimals
        assert row["ci_low"] < row["auroc"] < row["ci_high"]
        on = probs[:, c] > 0.5
        assert row["sensitivity"] == pytest.approx(on[labels[:, c] == 1].mean(), abs=1e-6)
        assert row["specificity"] == pytest.approx((~on[labels[:, c] == 0]).mean(), abs=1e-6)
    hernia, mean = report["classes"][13], report["classes"][14]
    # draws without a Hernia positive are left out, and counted
    assert hernia["draws_defined"] < 300
    assert mean["auroc"] == pytest.approx(np.mean([r["auroc"] for r in report["classes"][:14]]))
    assert mean["ci_low"] < mean["auroc"] < mean["ci_high"]
    assert mean["draws_defined"] == hernia["draws_defined"]
    out = capsys.readouterr().out
    assert "bootstrap draws of patients" in out and "0.841" in out and "0.824" in out
    table = list(csv.DictReader((tmp_path / "out" / "auroc.csv").open()))
    assert [r["class"] for r in table] == list(ALL_FINDINGS) + ["mean"]
    assert table[0]["published_chexnet_paper"] == "0.8094"
    assert json.loads((tmp_path / "out" / "auroc.json").read_text())["images"] == 60
    assert (tmp_path / "out" / "roc.png").stat().st_size > 10_000


@pytest.fixture(scope="module")
def checkpoint_14(tmp_path_factory, random_checkpoint):
    """A 14-class checkpoint (random weights) carrying thresholds of 0.3, alone in its folder."""
    return random_checkpoint(tmp_path_factory.mktemp("ckpt"), ALL_FINDINGS, thresholds_npy=None,
                             thresholds=np.full(14, 0.3))


def test_model_gives_the_thresholds_localization_uses(tmp_path, checkpoint_14, capsys):
    labels, probs = known_case(tmp_path)
    report = run(tmp_path, "--model", str(checkpoint_14))  # no thresholds.npy beside: its own
    assert report["thresholds_from"] == f"{checkpoint_14} (its 'thresholds')"
    assert [r["threshold"] for r in report["classes"][:14]] == pytest.approx([0.3] * 14)
    on = probs[:, 0] > 0.3
    assert report["classes"][0]["sensitivity"] == pytest.approx(on[labels[:, 0] == 1].mean())
    assert f"thresholds from {checkpoint_14}" in capsys.readouterr().out
    beside = tmp_path / "model"  # thresholds.npy beside the checkpoint beats its own, as in localization
    beside.mkdir()
    os.link(checkpoint_14, beside / "best.pt")
    values = np.linspace(0.2, 0.8, 14).astype(np.float32)
    np.save(beside / "thresholds.npy", values)
    report = run(tmp_path, "--model", str(beside / "best.pt"))
    assert report["thresholds_from"] == str(beside / "thresholds.npy")
    assert [r["threshold"] for r in report["classes"][:14]] == pytest.approx(values.tolist())
    report = run(tmp_path, "--model", str(beside / "best.pt"), "--thresholds", "0.6")  # beats both
    assert report["thresholds_from"] == "0.6 for every class"


def test_model_whose_classes_are_not_the_csvs_is_refused(tmp_path, checkpoint_14):
    from chexnet.utils import InputError

    known_case(tmp_path)
    names, _, probs = read_probs_csv(tmp_path / "probs.csv")
    write_probs_csv(tmp_path / "probs.csv", names, ALL_FINDINGS[::-1], probs)  # same names, other order
    with pytest.raises(InputError, match="class names Atelectasis,.*differ from the header of") as err:
        run(tmp_path, "--model", str(checkpoint_14))
    assert str(checkpoint_14) in str(err.value) and "\n" not in str(err.value)


def test_interval_resamples_patients_not_images(tmp_path):
    """Listing every image three times (same patients) changes neither the AUROC nor the interval;
    an image-level bootstrap would narrow it."""
    known_case(tmp_path)
    once = run(tmp_path)["classes"]
    known_case(tmp_path, copies=3)
    thrice = run(tmp_path)["classes"]
    for a, b in zip(once, thrice):
        assert (a["auroc"], a["ci_low"], a["ci_high"]) == pytest.approx(
            (b["auroc"], b["ci_low"], b["ci_high"]))


def test_published_table_has_its_sources_and_the_papers_mean():
    published = auroc.read_published()
    assert published["chexnet_paper"]["mean"] == 0.841
    assert published["original_8class"]["mean"] == 0.824
    assert set(published["jrzech_retrained"]) == set(ALL_FINDINGS)
    paper = np.mean([published["chexnet_paper"][c] for c in ALL_FINDINGS])
    assert round(paper, 3) == 0.841  # the per-class figures give the stated mean
    text = auroc.PUBLISHED.read_text()
    assert "arxiv.org/abs/1711.05225" in text and "github.com/arnoweng/CheXNet" in text
    assert "github.com/jrzech/reproduce-chexnet" in text


# The original project's per-class test AUROCs (thtang/CheXNet-with-localization, Report.pdf Table 1).
ORIGINAL = {"Atelectasis": 0.8486, "Cardiomegaly": 0.9479, "Effusion": 0.8884, "Infiltration": 0.6630,
            "Mass": 0.8147, "Nodule": 0.8066, "Pneumonia": 0.7228, "Pneumothorax": 0.8996}
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "README.md"


def test_the_original_projects_row_is_its_report_and_gives_its_mean():
    published = auroc.read_published()["original_8class"]
    assert {c: published[c] for c in CLASS_NAMES} == ORIGINAL
    assert set(published) == set(CLASS_NAMES) | {"mean"}  # it reported 8 classes, no others
    assert round(float(np.mean(list(ORIGINAL.values()))), 3) == published["mean"] == 0.824
    text = auroc.PUBLISHED.read_text()
    assert "github.com/thtang/CheXNet-with-localization" in text and "theinfamouswayne" not in text


def test_the_original_row_matches_the_shared_reference_notes():
    if not REFERENCE.is_file():
        pytest.skip("../shared/reference is not present")
    line = next(l for l in REFERENCE.read_text().splitlines() if "the original pipeline (its report" in l)
    figures = [float(v) for v in re.findall(r"(?<![\w.])\.\d{4}\b", line)]
    assert figures == list(ORIGINAL.values())


def test_side_by_side_table_shows_the_originals_per_class_figures(tmp_path, capsys):
    labels, probs = known_case(tmp_path)
    names, _, all_probs = read_probs_csv(tmp_path / "probs.csv")
    write_probs_csv(tmp_path / "probs.csv", names, CLASS_NAMES, all_probs[:, :8])  # an 8-class run
    report = run(tmp_path)
    beside = report["published"]["original_8class"]
    assert beside["classes"] == ORIGINAL
    assert round(beside["mean_of_these_classes"], 3) == 0.824
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    for name, value in ORIGINAL.items():  # the last column of the printed table is the original's
        assert rows[name].split()[-1] == f"{value:.3f}"
    assert rows["mean"].split()[-1] == "0.824"


def test_localization_probs_are_the_forward_pass(tmp_path, sample_dir, random_checkpoint):
    random_checkpoint(tmp_path, thresholds_npy=0.5)
    net = build_model(len(CLASS_NAMES), weights="none").eval()
    net.load_state_dict(random_state(len(CLASS_NAMES)))
    (tmp_path / "test.txt").write_text("\n".join(NAMES) + "\n")
    args = denseNet_localization.get_args_parser().parse_args(
        [str(tmp_path / "test.txt"), str(sample_dir / "images"),
         "--model", str(tmp_path / "best.pt"), "--out", str(tmp_path / "bb.txt"),
         "--probs", str(tmp_path / "probs.csv"), "--workers", "0"])
    denseNet_localization.main(args)
    names, classes, probs = read_probs_csv(tmp_path / "probs.csv")
    assert names == NAMES and classes == list(CLASS_NAMES)
    paths = [os.path.join(str(sample_dir / "images"), n) for n in NAMES]
    direct = [r.probs for r in localize.iter_localize(net, paths, np.full(8, 0.5),
                                                      np.ones((8, 4)) * 100, torch.device("cpu"))]
    np.testing.assert_allclose(probs, np.asarray(direct), atol=1e-6)
    assert (tmp_path / "probs.csv").read_text().splitlines()[0] == "image," + ",".join(CLASS_NAMES)
