"""tools/auroc.py and denseNet_localization.py --probs: sklearn's AUROC, patient-level intervals."""
import csv
import json
import os

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import auroc
import denseNet_localization
from model import build_model, new_checkpoint, save_checkpoint
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


def test_localization_probs_are_the_forward_pass(tmp_path, sample_dir):
    torch.manual_seed(0)
    net = build_model(len(CLASS_NAMES), weights="none").eval()
    save_checkpoint(tmp_path / "best.pt", new_checkpoint(net.state_dict()))
    np.save(tmp_path / "thresholds.npy", np.full(8, 0.5, dtype=np.float32))
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
