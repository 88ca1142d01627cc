"""Two models on the same test images: per class and for the mean AUROC, the difference A - B,
its patient-level paired bootstrap interval, and DeLong's p (tools/auroc.py --compare).

Both models must hold the same images: a paired test compares them image by image. The mean has
no DeLong p: DeLong's variance is built from one class's positives and negatives, and the classes
of a multi-label table split the same images differently, so the covariance between classes that
the mean's variance needs is not among its components; the paired bootstrap, which resamples
patients for all classes at once, gives the mean its interval instead.
"""
from __future__ import annotations

import csv
import io
import os

import numpy as np

from chexnet import bootstrap, metrics
from chexnet.delong import delong_paired
from chexnet.utils import InputError


def paired_rows(path_a, names_a: list[str], classes_a: list[str], probs_a: np.ndarray,
                path_b, names_b: list[str], classes_b: list[str], probs_b: np.ndarray
                ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(the classes both hold, A's order; A (N, C); B (N, C) in A's image order)."""
    set_a, set_b = set(names_a), set(names_b)
    only_a = [n for n in names_a if n not in set_b]
    only_b = [n for n in names_b if n not in set_a]
    if only_a or only_b:
        side, other, one = ((path_a, path_b, only_a) if only_a else (path_b, path_a, only_b))
        raise InputError(f"{side}: {len(only_a) + len(only_b)} image(s) are in only one of "
                         f"{path_a} and {path_b}, e.g. {one[0]} (not in {other}); a paired "
                         f"comparison needs the same images")
    classes = [c for c in classes_a if c in classes_b]
    if not classes:
        raise InputError(f"{path_b}: no class in common with {path_a}")
    row_of = {n: i for i, n in enumerate(names_b)}
    order = [row_of[n] for n in names_a]
    a = probs_a[:, [classes_a.index(c) for c in classes]]
    b = probs_b[order][:, [classes_b.index(c) for c in classes]]
    return classes, a, b


def compare(labels: np.ndarray, a: np.ndarray, b: np.ndarray, patients: list[str],
            class_names: list[str], draws: int, seed: int) -> dict:
    """The comparison of two (N, C) score sets on the same labels 0/1 (N, C)."""
    aurocs_a, aurocs_b = metrics.per_class_auroc(labels, a), metrics.per_class_auroc(labels, b)
    defined = [c for c, v in enumerate(aurocs_a) if v is not None]
    ci = bootstrap.paired_bootstrap(labels, a, b, patients, draws, seed, defined)
    classes = {}
    for c, name in enumerate(class_names):
        positives = int(labels[:, c].sum())
        negatives = int(len(labels) - positives)
        p = None
        if min(positives, negatives) >= 2:
            p = delong_paired(labels[:, c], a[:, c], b[:, c]).p
        classes[name] = _row(aurocs_a[c], aurocs_b[c], ci, c, p, positives, negatives)
    mean_a, mean_b = metrics.mean_auroc(aurocs_a), metrics.mean_auroc(aurocs_b)
    mean = _row(mean_a, mean_b, ci, -1, None, None, None)
    mean.update(classes_in_mean=[class_names[c] for c in defined])
    return {"images": len(labels), "patients": len(set(patients)),
            "bootstrap": {"draws": draws, "seed": seed, "unit": "patient", "paired": True,
                          "confidence": bootstrap.CONFIDENCE},
            "classes": classes, "mean": mean}


def _row(auroc_a, auroc_b, ci: bootstrap.BootstrapResult, c: int, p, positives, negatives
         ) -> dict:
    delta = None if auroc_a is None or auroc_b is None else auroc_a - auroc_b
    return {"auroc_a": auroc_a, "auroc_b": auroc_b, "delta": delta,
            "ci95": [ci.low[c], ci.high[c]] if ci.draws else [None, None],
            "draws_defined": ci.used[c], "p_delong": p,
            "positives": positives, "negatives": negatives}


def _f(value, width: int, digits: int = 3, signed: bool = False) -> str:
    if value is None:
        return "-".rjust(width)
    return (f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}").rjust(width)


def _p(value) -> str:
    if value is None:
        return "-".rjust(9)
    if value == 0.0:  # below the smallest double: erfc underflows
        return "<1e-300".rjust(9)
    return (f"{value:.3f}" if value >= 0.001 else f"{value:.1e}").rjust(9)


def format_comparison(report: dict) -> str:
    """The printed table of one comparison."""
    boot = report["bootstrap"]
    lines = [f"A: {report['model_a']}", f"B: {report['model_b']}",
             f"{report['images']} images of {report['patients']} patients; delta = A - B; 95% "
             f"interval from {boot['draws']} paired bootstrap draws of patients (seed "
             f"{boot['seed']}); p: DeLong's test, two-sided",
             f"{'class':<19}{'pos':>6}{'neg':>7}{'A':>7}{'B':>7}{'delta':>8}{'95% CI':>18}"
             f"{'p':>9}"]
    for name, row in [*report["classes"].items(), ("mean", report["mean"])]:
        low, high = row["ci95"]
        ci = f"{_f(low, 7, signed=True)} {_f(high, 7, signed=True)}".rjust(18)
        lines.append(f"{name:<19}{'' if row['positives'] is None else row['positives']:>6}"
                     f"{'' if row['negatives'] is None else row['negatives']:>7}"
                     f"{_f(row['auroc_a'], 7)}{_f(row['auroc_b'], 7)}"
                     f"{_f(row['delta'], 8, signed=True)}{ci}{_p(row['p_delong'])}")
    lines.append("mean: over the classes whose AUROC is defined; no DeLong p (it would need "
                 "the covariance between classes); its interval is the test")
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ["model_a", "model_b", "class", "positives", "negatives", "auroc_a", "auroc_b",
               "delta", "ci_low", "ci_high", "draws_defined", "p_delong"]


def format_comparison_csv(reports: list[dict]) -> str:
    """comparison.csv: one row per class and one for the mean, per comparison."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for report in reports:
        for name, row in [*report["classes"].items(), ("mean", report["mean"])]:
            cells = {"model_a": report["model_a"], "model_b": report["model_b"], "class": name,
                     "ci_low": row["ci95"][0], "ci_high": row["ci95"][1],
                     **{k: row[k] for k in CSV_COLUMNS[3:] if k in row}}
            writer.writerow({k: "" if v is None else (f"{v:.6g}" if k == "p_delong" else
                                                      f"{v:.6f}" if isinstance(v, float) else v)
                             for k, v in cells.items()})
    return buf.getvalue()


def forest_plot(reports: list[dict], path: str | os.PathLike) -> None:
    """Each class's delta (A - B) and its 95% interval, the mean's last, the zero line marked;
    one colour per comparison (several --compare files)."""
    from chexnet.drawing import plt, save_figure  # matplotlib loads only when figures are drawn

    names = [*reports[0]["classes"], "mean"]
    fig, ax = plt.subplots(figsize=(7.0, 0.36 * len(names) + 1.6))
    offsets = np.linspace(-0.2, 0.2, len(reports)) if len(reports) > 1 else [0.0]
    for report, offset, colour in zip(reports, offsets, plt.cm.tab10.colors):
        rows = [*report["classes"].values(), report["mean"]]
        y = np.arange(len(names))[::-1] + offset
        for yi, row in zip(y, rows):
            if row["delta"] is None:
                continue
            low, high = row["ci95"]
            if low is not None:
                ax.plot([low, high], [yi, yi], color=colour, lw=1.6)
            ax.plot(row["delta"], yi, "D" if row is rows[-1] else "o", color=colour, ms=5)
        ax.plot([], [], "o-", color=colour, label=f"A - {os.path.basename(report['model_b'])}")
    ax.axvline(0.0, color="black", lw=0.8, ls="--")
    ax.axhline(0.5, color="0.8", lw=0.6)  # the mean below the classes
    ax.set_yticks(np.arange(len(names))[::-1], names)
    ax.set_xlabel(f"AUROC difference, A = {os.path.basename(reports[0]['model_a'])} "
                  f"(95% paired patient bootstrap)")
    ax.set_title("Paired comparison per class; right of the dashed line: A is better", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", color="0.9")
    fig.tight_layout()
    save_figure(fig, path)
