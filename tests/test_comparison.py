"""tools/auroc.py --compare: DeLong against its brute-force definition, the paired bootstrap
against its definition, peers' prediction files, and the command's outputs."""
import csv
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import auroc
from benchmarks import label_table_baseline as baseline
from chexnet import bootstrap
from chexnet.delong import components, delong_paired, midranks
from chexnet.probs import read_probs_csv, write_probs_csv
from chexnet.utils import InputError

DATA = Path(__file__).resolve().parent / "data"
# the first 300 rows of jrzech/reproduce-chexnet pretrained/preds.csv (BSD-3-Clause, John Zech)
EXCERPT = DATA / "jrzech_preds_excerpt.csv"
EXCERPT_LABELS = DATA / "jrzech_excerpt_labels.csv"  # their rows of Data_Entry_2017_v2020.csv


def brute_components(x, y):
    """DeLong's V10, V01 straight from psi over all m*n pairs (1, 1/2 on a tie, 0)."""
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    return psi.mean(axis=1), psi.mean(axis=0)


def brute_p(labels, a, b):
    """DeLong's two-sided p restated from the O(m*n) components and the covariance definition."""
    t = labels.astype(bool)
    (va10, va01), (vb10, vb01) = (brute_components(s[t], s[~t]) for s in (a, b))
    m, n = t.sum(), (~t).sum()
    def cov(u, v):
        return ((u - u.mean()) * (v - v.mean())).sum() / (len(u) - 1)
    var = (cov(va10, va10) + cov(vb10, vb10) - 2 * cov(va10, vb10)) / m \
        + (cov(va01, va01) + cov(vb01, vb01) - 2 * cov(va01, vb01)) / n
    z = (va10.mean() - vb10.mean()) / math.sqrt(var)
    return va10.mean(), vb10.mean(), math.erfc(abs(z) / math.sqrt(2))


def test_midranks_share_the_mean_rank_of_ties():
    assert midranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_components_and_p_equal_the_brute_force_restatement_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 120)
    a = rng.integers(0, 6, 120) + 2 * labels  # few distinct values: many ties, within and across
    b = np.round(rng.random(120) + 0.3 * labels, 1)
    for s in (a, b):
        fast, slow = components(s[labels == 1], s[labels == 0]), brute_components(
            s[labels == 1].astype(float), s[labels == 0].astype(float))
        np.testing.assert_allclose(fast[0], slow[0], atol=1e-12)
        np.testing.assert_allclose(fast[1], slow[1], atol=1e-12)
    result = delong_paired(labels, a, b)
    auroc_a, auroc_b, p = brute_p(labels, a.astype(float), b)
    assert result.auroc_a == pytest.approx(roc_auc_score(labels, a), abs=1e-12) == auroc_a
    assert result.auroc_b == pytest.approx(auroc_b, abs=1e-12)
    assert result.p == pytest.approx(p, rel=1e-9)
    assert result.delta == pytest.approx(auroc_a - auroc_b, abs=1e-12)


def test_a_model_against_itself_has_p_one_not_a_division_by_zero():
    rng = np.random.default_rng(3)
    labels, scores = rng.integers(0, 2, 50), np.round(rng.random(50), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 0/0 would warn
        result = delong_paired(labels, scores, scores)
        # a monotone transform orders every pair alike: the same AUROC, no difference either
        same_order = delong_paired(labels, scores, scores ** 3)
    assert (result.p, result.delta, result.z) == (1.0, 0.0, None)
    assert same_order.p == 1.0


def test_paired_bootstrap_is_its_definition():
    """Each draw: P patients with replacement, every image of a patient drawn k times k times,
    both models on those images; the 2.5 and 97.5 percentiles of AUROC(A) - AUROC(B)."""
    rng = np.random.default_rng(4)
    n, draws, seed = 90, 40, 11
    patients = [f"p{i % 30}" for i in range(n)]
    labels = np.stack([rng.integers(0, 2, n), (rng.random(n) < 0.3).astype(int)], axis=1)
    a = np.round(rng.random((n, 2)) + 0.4 * labels, 2)
    b = np.round(rng.random((n, 2)) + 0.2 * labels, 2)
    result = bootstrap.paired_bootstrap(labels, a, b, patients, draws, seed, [0, 1])
    ids = sorted(set(patients))
    draw_rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(draws):
        chosen = [ids[k] for k in draw_rng.integers(0, len(ids), len(ids))]
        rows = [i for pid in chosen for i in range(n) if patients[i] == pid]
        per_class = [roc_auc_score(labels[rows, c], a[rows, c])
                     - roc_auc_score(labels[rows, c], b[rows, c]) for c in range(2)]
        deltas.append(per_class + [np.mean(per_class)])  # the mean's difference, same draws
    deltas = np.asarray(deltas)
    for k in range(3):
        assert result.low[k] == pytest.approx(np.percentile(deltas[:, k], 2.5), abs=1e-12)
        assert result.high[k] == pytest.approx(np.percentile(deltas[:, k], 97.5), abs=1e-12)
    assert result.used == [draws] * 3


def test_unpaired_bootstrap_is_unchanged_by_the_shared_draws():
    rng = np.random.default_rng(5)
    labels, scores = rng.integers(0, 2, (60, 1)), rng.random((60, 1))
    patients = [str(i // 2) for i in range(60)]
    one = bootstrap.patient_bootstrap(labels, scores, patients, 30, 0, [0])
    zero = bootstrap.paired_bootstrap(labels, scores, np.full_like(scores, 0.5), patients, 30, 0,
                                      [0])  # B at chance (0.5) in every draw: delta = A - 0.5
    assert one.low[0] == pytest.approx(zero.low[0] + 0.5, abs=1e-12)


def test_peer_file_any_order_aliases_and_extra_columns(tmp_path, capsys):
    path = tmp_path / "peer.csv"
    path.write_text("Image Index,prob_Pleural Thickening,Finding Labels,prob_Infiltrate\n"
                    "a.png,0.25,Hernia,0.5\nb.png,0.75,No Finding,0.125\n")
    names, classes, probs = read_probs_csv(path)
    assert (names, classes) == (["a.png", "b.png"], ["Pleural_Thickening", "Infiltration"])
    assert probs.tolist() == [[0.25, 0.5], [0.75, 0.125]]
    assert capsys.readouterr().err == (f"note: {path}: ignored column(s) Finding Labels "
                                       f"(not prob_<class>)\n")


@pytest.mark.parametrize("header, message", [
    ("Image,prob_Mass", "expected a header 'image,<class names>' or 'Image Index,prob_<class>"),
    ("Image Index,prob_Fracture", "column 'prob_Fracture': expected prob_<class>"),
    ("Image Index,Mass", "no 'prob_<class>' column after 'Image Index'"),
    ("Image Index,prob_Infiltrate,prob_Infiltration", "class Infiltration has two columns"),
])
def test_other_headers_are_the_one_line_error(tmp_path, header, message):
    path = tmp_path / "bad.csv"
    path.write_text(f"{header}\na.png," + ",".join(["0.5"] * (header.count(","))) + "\n")
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        read_probs_csv(path)


def test_jrzech_excerpt_reads_as_published(tmp_path):
    names, classes, probs = read_probs_csv(EXCERPT)
    with open(EXCERPT) as f:
        rows = list(csv.reader(f))
    assert classes == [c[len("prob_"):] for c in rows[0][1:]] and len(names) == 300
    assert probs[0, 0] == float(rows[1][1])
    report = auroc.main(auroc.get_args_parser().parse_args(
        [str(EXCERPT), str(EXCERPT_LABELS), "--bootstrap", "0"]))
    labels = {r[0]: r[1].split("|") for r in csv.reader(open(EXCERPT_LABELS))}
    for c, row in enumerate(report["classes"][:-1]):
        truth = [row["class"] in labels[n] for n in names]
        expected = roc_auc_score(truth, probs[:, c]) if 0 < sum(truth) < len(truth) else None
        assert row["auroc"] == pytest.approx(expected, abs=1e-12) if expected else \
            row["auroc"] is None


def degraded(tmp_path, digits=1) -> Path:
    """The excerpt's probabilities rounded to `digits` decimals (our format, columns reversed)."""
    names, classes, probs = read_probs_csv(EXCERPT)
    path = tmp_path / f"rounded{digits}.csv"
    write_probs_csv(path, names[::-1], classes[::-1], np.round(probs[::-1, ::-1], digits))
    return path


def test_compare_writes_table_json_csv_and_forest_plot(tmp_path, capsys):
    out = tmp_path / "cmp"
    reports = auroc.main(auroc.get_args_parser().parse_args(
        [str(EXCERPT), str(EXCERPT_LABELS), "--compare", str(degraded(tmp_path)),
         "--bootstrap", "50", "--out", str(out)]))
    printed = capsys.readouterr().out
    assert "delta" in printed and "Atelectasis" in printed
    assert sorted(os.listdir(out)) == ["comparison.csv", "comparison.json", "forest_plot.png"]
    body = json.loads((out / "comparison.json").read_text())
    assert body["classes"].keys() == reports[0]["classes"].keys()
    for row in [*body["classes"].values(), body["mean"]]:
        assert {"auroc_a", "auroc_b", "delta", "ci95", "p_delong", "positives",
                "negatives"} <= row.keys()
    mass = body["classes"]["Mass"]
    names, classes, probs = read_probs_csv(EXCERPT)
    labels = {r[0]: r[1].split("|") for r in csv.reader(open(EXCERPT_LABELS))}
    truth = np.array([("Mass" in labels[n]) for n in names])
    assert mass["auroc_b"] == pytest.approx(
        roc_auc_score(truth, np.round(probs[:, classes.index("Mass")], 1)), abs=1e-12)
    assert mass["delta"] == pytest.approx(mass["auroc_a"] - mass["auroc_b"], abs=1e-12)
    assert mass["ci95"][0] <= mass["delta"] <= mass["ci95"][1]
    assert body["mean"]["p_delong"] is None and body["mean"]["ci95"][0] is not None
    with open(out / "comparison.csv") as f:
        assert len(list(csv.DictReader(f))) == len(body["classes"]) + 1


def test_several_compare_files_each_against_a(tmp_path):
    reports = auroc.main(auroc.get_args_parser().parse_args(
        [str(EXCERPT), str(EXCERPT_LABELS), "--compare", str(degraded(tmp_path, 1)),
         "--compare", str(EXCERPT), "--bootstrap", "5", "--out", str(tmp_path / "o")]))
    assert [r["model_b"] for r in reports] == [str(tmp_path / "rounded1.csv"), str(EXCERPT)]
    assert all(r["p_delong"] == 1.0 and r["delta"] == 0 for r in reports[1]["classes"].values()
               if r["p_delong"] is not None)
    body = json.loads((tmp_path / "o" / "comparison.json").read_text())
    assert len(body["comparisons"]) == 2


def test_images_in_only_one_file_are_an_error_naming_how_many_and_one(tmp_path):
    names, classes, probs = read_probs_csv(EXCERPT)
    short = tmp_path / "short.csv"
    write_probs_csv(short, names[2:], classes, probs[2:])
    with pytest.raises(InputError, match=rf"2 image\(s\) are in only one of .* e.g. {names[0]} "
                                         r"\(not in .*short.csv\); a paired comparison needs"):
        auroc.main(auroc.get_args_parser().parse_args(
            [str(EXCERPT), str(EXCERPT_LABELS), "--compare", str(short), "--out",
             str(tmp_path / "o")]))
    assert not (tmp_path / "o").exists()


PUBLISHED_JRZECH = {  # jrzech/reproduce-chexnet pretrained/aucs.csv, as published
    "Atelectasis": 0.8179808156177791, "Cardiomegaly": 0.909014913721344,
    "Effusion": 0.8827164014509215, "Infiltration": 0.715644983031959,
    "Mass": 0.8376837531798024, "Nodule": 0.7755751107094851, "Pneumonia": 0.7616870310044441,
    "Pneumothorax": 0.8776145243493956, "Consolidation": 0.8002045198129359,
    "Edema": 0.8944599670561432, "Emphysema": 0.9316231389092308,
    "Fibrosis": 0.8250897843248722, "Pleural_Thickening": 0.7889195976208047,
    "Hernia": 0.9175253237376412}


def test_jrzech_full_file_gives_their_published_aurocs(shared_nih, tmp_path):
    path = Path(os.environ.get("JRZECH_PREDS", DATA.parents[1] / "output/jrzech/preds.csv"))
    if not path.is_file():
        pytest.skip(f"{path} absent (docs/comparing_models.md shows how to download it)")
    report = auroc.main(auroc.get_args_parser().parse_args(
        [str(path), str(shared_nih / "Data_Entry_2017_v2020.csv.gz"), "--bootstrap", "0"]))
    for row in report["classes"][:-1]:
        assert row["auroc"] == pytest.approx(PUBLISHED_JRZECH[row["class"]], abs=1e-6)


def test_classes_only_one_file_holds_are_left_out_with_a_note(tmp_path, capsys):
    names, classes, probs = read_probs_csv(EXCERPT)
    fewer = tmp_path / "fewer.csv"
    write_probs_csv(fewer, names, classes[:3], probs[:, :3])
    reports = auroc.main(auroc.get_args_parser().parse_args(
        [str(EXCERPT), str(EXCERPT_LABELS), "--compare", str(fewer), "--bootstrap", "3"]))
    assert list(reports[0]["classes"]) == classes[:3]
    assert f"compared on the 3 classes both files hold; left out: {classes[3]}" \
        in capsys.readouterr().err


def test_cli_bad_header_is_one_line_exit_2_and_no_output(tmp_path):
    import subprocess
    import sys
    bad = tmp_path / "preds.csv"
    bad.write_text("Image,prob_Mass\na.png,0.5\n")
    proc = subprocess.run([sys.executable, str(DATA.parents[1] / "tools" / "auroc.py"), str(bad),
                           str(EXCERPT_LABELS), "--compare", str(EXCERPT), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == (f"error: {bad}: expected a header 'image,<class names>' or "
                           f"'Image Index,prob_<class>,...'\n")
    assert not (tmp_path / "o").exists()


def test_label_table_baseline_learns_only_from_other_patients(tmp_path):
    rows = list(csv.reader(open(EXCERPT_LABELS)))
    test = tmp_path / "test.csv"  # the first 100 images are the test set
    write_probs_csv(test, [r[0] for r in rows[1:101]], ["Effusion", "Hernia"], np.zeros((100, 2)))
    out = tmp_path / "base.csv"
    baseline.main(baseline.get_args_parser().parse_args(
        [str(test), str(EXCERPT_LABELS), str(out), "--smoothing", "0"]))
    names, _, probs = read_probs_csv(out)
    test_patients = {r[3] for r in rows[1:101]}
    train = [r for r in rows[1:] if r[3] not in test_patients]
    first = rows[1]  # its cell: same view, sex and age decade among the training rows
    cell = [r for r in train if (r[6], r[5], int(r[4]) // 10) == (first[6], first[5],
                                                                   int(first[4]) // 10)]
    assert probs[0, 0] == pytest.approx(np.mean(["Effusion" in r[1] for r in cell]), abs=1e-6)
    with pytest.raises(InputError, match="no image outside the patients of"):
        baseline.main(baseline.get_args_parser().parse_args(
            [str(EXCERPT), str(EXCERPT_LABELS), str(tmp_path / "none.csv")]))
