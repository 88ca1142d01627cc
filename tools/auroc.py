"""Test-set AUROC per class with patient-level bootstrap 95% intervals, beside published figures.

    python3 tools/auroc.py PROBS_CSV DATA_ENTRY [--model model/best.pt | --thresholds FILE.npy]
                           [--bootstrap 1000] [--seed 0] [--out DIR]
    python3 tools/auroc.py A.csv DATA_ENTRY --compare B.csv [--compare C.csv] [--out D]

PROBS_CSV is denseNet_localization.py --probs (image,<class names>), or a peer's file (Image
Index,prob_<class>,...: chexnet/probs.py); the labels come from the label table by image name.
Per class: positives, negatives, AUROC (sklearn's), its 95% interval from --bootstrap draws of
patients with replacement (patients, not images: a patient's images are correlated), and with
--model or --thresholds the operating point (sensitivity, specificity; prob > threshold is
positive, as localization decides). --model CKPT takes the thresholds as localization does
(thresholds.npy beside it, else the checkpoint's own; --thresholds still overrides) and checks
that its class names are PROBS_CSV's header. The mean is over the classes whose AUROC is defined.
The published figures of docs/published_auroc.csv (CheXNet, arnoweng, jrzech, the original project)
are printed beside ours; their test sets differ from ours. --out writes auroc.csv, auroc.json
and roc.png.

--compare B.csv compares model A (PROBS_CSV) with B on the same images (chexnet/comparison.py):
per class and for the mean, AUROC of A and B, A - B with its paired patient-bootstrap interval,
and DeLong's p; --out writes comparison.csv, comparison.json and forest_plot.png. Several
--compare files are each compared with A.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root: chexnet/, model.py

from chexnet import bootstrap, comparison, metrics, model_dir, nih  # noqa: E402
from chexnet.constants import ALL_FINDINGS  # noqa: E402
from chexnet.probs import read_probs_csv  # noqa: E402
from chexnet.utils import InputError, run_cli, write_text_atomic  # noqa: E402

PUBLISHED = Path(__file__).resolve().parents[1] / "docs" / "published_auroc.csv"
SHORT = {"chexnet_paper": "CheXNet", "arnoweng_reimpl": "arnoweng", "arnoweng_improved": "arnow+",
         "jrzech_retrained": "jrzech", "original_8class": "original"}  # column titles of the table


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("probs_csv", type=str,
                   help="probabilities CSV of denseNet_localization.py --probs")
    p.add_argument("data_entry", type=str,
                   help="label table Data_Entry_2017.csv (or .csv.gz, or v2020)")
    p.add_argument("--model", type=str, default=None,
                   help="the checkpoint that made PROBS_CSV: its thresholds for the operating "
                        "point, found as localization finds them (thresholds.npy beside it, else "
                        "its own); its class names must be the CSV's (default: None)")
    p.add_argument("--thresholds", type=str, default=None,
                   help="a .npy of one threshold per class of PROBS_CSV (train.py's "
                        "thresholds.npy), or one number, for the operating point; beats --model's "
                        "(default: None: --model's, else no operating point)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="patient-level bootstrap draws; 0 for no interval (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap draws (default: 0)")
    p.add_argument("--compare", type=str, action="append", default=None, metavar="B_CSV",
                   help="another model's probabilities on the same images: a paired comparison "
                        "of PROBS_CSV (A) with it; repeat for several (default: None)")
    p.add_argument("--out", type=str, default=None,
                   help="folder for auroc.csv, auroc.json and roc.png (with --compare: "
                        "comparison.csv, comparison.json, forest_plot.png) (default: None, "
                        "print only)")
    return p


def read_published(path: str | os.PathLike = PUBLISHED) -> dict[str, dict[str, float]]:
    """{source column: {class or 'mean': AUROC}} of docs/published_auroc.csv ('#' lines:
    sources)."""
    lines = [line for line in Path(path).read_text().splitlines()
             if line and not line.startswith("#")]
    rows = list(csv.reader(lines))
    table: dict[str, dict[str, float]] = {source: {} for source in rows[0][1:]}
    for row in rows[1:]:
        for source, cell in zip(rows[0][1:], row[1:]):
            if cell:
                table[source][row[0]] = float(cell)
    return table


def resolve_thresholds(args: argparse.Namespace, class_names: list[str]
                       ) -> tuple[np.ndarray | None, str | None]:
    """(thresholds (C,) or None, where they came from), by chexnet.model_dir's rules, as
    localization resolves them."""
    if args.model is None:
        if args.thresholds is None:
            return None, None
        return model_dir.thresholds_from_spec(args.thresholds, len(class_names))
    from model import load_checkpoint  # torch loads only when a checkpoint is asked for

    checkpoint = load_checkpoint(args.model)
    names = list(checkpoint["class_names"])
    if names != class_names:
        raise InputError(f"{args.model}: class names {','.join(names)} differ from the header of "
                         f"{args.probs_csv} ({','.join(class_names)}); pass the checkpoint "
                         f"that wrote it")
    return model_dir.resolve_thresholds(args.thresholds, args.model, checkpoint)


def read_known(path: str) -> tuple[list[str], list[str], np.ndarray]:
    names, class_names, probs = read_probs_csv(path)
    unknown = [c for c in class_names if c not in ALL_FINDINGS]
    if unknown:
        raise InputError(f"{path}: unknown class(es) {', '.join(unknown)} in the header")
    return names, class_names, probs


def evaluate(args: argparse.Namespace) -> tuple[dict, np.ndarray, np.ndarray]:
    """(the report, labels 0/1 (N, C), probabilities (N, C))."""
    names, class_names, probs = read_known(args.probs_csv)
    table = nih.read_data_entry(args.data_entry)
    labels = nih.label_matrix(names, table, args.probs_csv, class_names=tuple(class_names),
                              line_numbers=list(range(2, len(names) + 2)))
    aurocs = metrics.per_class_auroc(labels, probs)
    defined = [c for c, a in enumerate(aurocs) if a is not None]
    thresholds, thresholds_from = resolve_thresholds(args, class_names)
    patients = [table[n].patient_id for n in names]
    ci = None
    if args.bootstrap > 0:
        ci = bootstrap.patient_bootstrap(labels, probs, patients, args.bootstrap, args.seed,
                                         defined)
    rows = []
    for c, name in enumerate(class_names + ["mean"]):
        row = {"class": name,
               "auroc": aurocs[c] if c < len(class_names) else metrics.mean_auroc(aurocs)}
        if c < len(class_names):
            row.update(positives=int(labels[:, c].sum()),
                       negatives=int(len(names) - labels[:, c].sum()))
        if ci is not None:
            row.update(ci_low=ci.low[c], ci_high=ci.high[c], draws_defined=ci.used[c])
        if thresholds is not None and c < len(class_names):
            row["threshold"] = float(thresholds[c])
            row["sensitivity"], row["specificity"] = bootstrap.operating_point(
                labels[:, c], probs[:, c], thresholds[c])
        rows.append(row)
    return {"probs_csv": args.probs_csv, "data_entry": args.data_entry, "images": len(names),
            "patients": len(set(patients)), "thresholds_from": thresholds_from,
            "bootstrap": {"draws": args.bootstrap, "seed": args.seed,
                          "unit": "patient", "confidence": bootstrap.CONFIDENCE}, "classes": rows,
            "published": published_beside(class_names)}, labels, probs


def published_beside(class_names: list[str]) -> dict[str, dict]:
    """Per source: its figures for our classes, its stated mean, and its mean over our classes
    (computed here, only where it gives all of them)."""
    out = {}
    for source, figures in read_published().items():
        mine = {c: figures.get(c) for c in class_names}
        full = all(v is not None for v in mine.values())
        out[source] = {"classes": mine, "stated_mean": figures.get("mean"),
                       "mean_of_these_classes": (float(np.mean(list(mine.values()))) if full
                                                 else None)}
    return out


def _f(value, width: int = 7, digits: int = 3) -> str:
    return ("-" if value is None else f"{value:.{digits}f}").rjust(width)


def format_report(report: dict) -> str:
    pub = report["published"]
    boot = report["bootstrap"]
    lines = [f"{report['images']} images of {report['patients']} patients; 95% intervals from "
             f"{boot['draws']} bootstrap draws of patients (seed {boot['seed']})"
             + (f"; thresholds from {report['thresholds_from']}" if report["thresholds_from"]
                else ""),
             f"{'class':<19}{'pos':>6}{'neg':>7}{'AUROC':>7}{'95% CI':>15}{'thr':>7}{'sens':>6}"
             f"{'spec':>6} |" + "".join(SHORT.get(s, s)[:9].rjust(10) for s in pub)]
    for row in report["classes"]:
        ci = (f"{_f(row.get('ci_low'), 6)}-{_f(row.get('ci_high'), 5)}".rjust(15)
              if "ci_low" in row else "-".rjust(15))
        if row["class"] == "mean":
            theirs = [p["mean_of_these_classes"] for p in pub.values()]
        else:
            theirs = [p["classes"][row["class"]] for p in pub.values()]
        lines.append(f"{row['class']:<19}{row.get('positives', ''):>6}{row.get('negatives', ''):>7}"
                     f"{_f(row['auroc'])}{ci}{_f(row.get('threshold'))}"
                     f"{_f(row.get('sensitivity'), 6, 2)}"
                     f"{_f(row.get('specificity'), 6, 2)} |" + "".join(_f(v, 10) for v in theirs))
    lines.append(f"{'stated mean':<73} |" + "".join(_f(p["stated_mean"], 10) for p in pub.values()))
    lines.append(f"published: {PUBLISHED.relative_to(PUBLISHED.parents[1])} (sources inside); "
                 f"their test "
                 f"sets are not ours. 'mean' of a source: over these classes, where it gives all")
    return "\n".join(lines) + "\n"


def format_csv(report: dict) -> str:
    columns = ["class", "positives", "negatives", "auroc", "ci_low", "ci_high", "draws_defined",
               "threshold", "sensitivity", "specificity"] + [f"published_{s}"
                                                            for s in report["published"]]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", restval="")
    writer.writeheader()
    for row in report["classes"]:
        out = {k: "" if v is None else (f"{v:.6f}" if isinstance(v, float) else v)
               for k, v in row.items()}
        for source, p in report["published"].items():
            value = (p["mean_of_these_classes"] if row["class"] == "mean"
                     else p["classes"][row["class"]])
            out[f"published_{source}"] = "" if value is None else f"{value:.4f}"
        writer.writerow(out)
    return buf.getvalue()


def compare_models(args: argparse.Namespace) -> list[dict]:
    """A (PROBS_CSV) against each --compare file on the same images, labels and patients."""
    if args.model is not None or args.thresholds is not None:
        raise InputError("--compare compares AUROCs; it takes no --model or --thresholds")
    names, classes_a, probs_a = read_known(args.probs_csv)
    table = nih.read_data_entry(args.data_entry)
    patients = [table[n].patient_id for n in names if n in table]
    reports = []
    for path_b in args.compare:
        names_b, classes_b, probs_b = read_known(path_b)
        classes, a, b = comparison.paired_rows(args.probs_csv, names, classes_a, probs_a,
                                               path_b, names_b, classes_b, probs_b)
        left_out = [c for c in [*classes_a, *classes_b] if c not in classes]
        if left_out:
            print(f"note: {path_b}: compared on the {len(classes)} classes both files hold; "
                  f"left out: {', '.join(left_out)}", file=sys.stderr)
        labels = nih.label_matrix(names, table, args.probs_csv, class_names=tuple(classes),
                                  line_numbers=list(range(2, len(names) + 2)))
        report = {"model_a": args.probs_csv, "model_b": path_b, "data_entry": args.data_entry,
                  **comparison.compare(labels, a, b, patients, classes, args.bootstrap,
                                       args.seed)}
        print(comparison.format_comparison(report))
        reports.append(report)
    return reports


def write_comparison(reports: list[dict], out: Path) -> None:
    body = reports[0] if len(reports) == 1 else {"comparisons": reports}
    write_text_atomic(out / "comparison.csv", comparison.format_comparison_csv(reports))
    write_text_atomic(out / "comparison.json", json.dumps(body, indent=1) + "\n")
    comparison.forest_plot(reports, out / "forest_plot.png")
    print(f"wrote comparison.csv, comparison.json and forest_plot.png into {out}")


def main(args: argparse.Namespace) -> dict | list[dict]:
    if args.bootstrap < 0:
        raise InputError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if args.compare:
        reports = compare_models(args)
        if args.out is not None:
            write_comparison(reports, Path(args.out))
        return reports
    report, labels, probs = evaluate(args)
    print(format_report(report), end="")
    if args.out is not None:
        out = Path(args.out)
        write_text_atomic(out / "auroc.csv", format_csv(report))
        write_text_atomic(out / "auroc.json", json.dumps(report, indent=1) + "\n")
        write_roc(report, labels, probs, out / "roc.png")
        print(f"wrote auroc.csv, auroc.json and roc.png into {out}")
    return report


def write_roc(report: dict, labels: np.ndarray, probs: np.ndarray, path: Path) -> None:
    """training_figures.roc_curves: a panel per class, the thresholds' operating points marked."""
    # matplotlib loads only when figures are written
    from chexnet.training_figures import roc_curves

    rows = report["classes"][:-1]
    thresholds = np.asarray([row.get("threshold", np.nan) for row in rows])
    roc_curves(labels, probs, thresholds, path, [row["class"] for row in rows])


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
