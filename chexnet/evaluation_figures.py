"""tools/evaluate.py's pictures: localization accuracy per class and threshold, beside Wang et
al."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from chexnet import drawing
from chexnet.constants import CLASS_NAMES
from chexnet.drawing import plt
from chexnet.utils import InputError


def read_wang_table(path: str | os.PathLike) -> dict[float, dict[str, float]]:
    """docs/wang2017_localization_table4.csv -> {threshold: {class: accuracy}}; '#' lines are
    notes."""
    try:
        lines = [l for l in Path(path).read_text().splitlines()
                 if l.strip() and not l.startswith("#")]
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    header = lines[0].split(",")
    table: dict[float, dict[str, float]] = {}
    for number, line in enumerate(lines[1:], start=2):
        cells = line.split(",")
        try:
            if len(cells) != len(header):
                raise ValueError
            table[float(cells[0])] = {name: float(v) for name, v in zip(header[1:], cells[1:])}
        except ValueError:
            raise InputError(f"{path}: data row {number}: expected {len(header)} numbers, "
                             f"got {line!r}") from None
    return table


def evaluation_bars(results: dict[str, dict[float, float | None]],
                    wang_table: dict[float, dict[str, float]] | None,
                    out_path: str | os.PathLike, metric: str = "IoBB") -> None:
    """Per-class localization accuracy at each threshold: ours (blue) beside Wang et al. (gray).

    results is {class: {threshold (float or its string): accuracy or None}} (results_from_report
    turns evaluate.py's report into it); one panel per threshold, stacked
    (1200 px wide, 260 px per threshold). A None accuracy (no truth box) draws no bar.
    """
    # '0.1' -> 0.1
    results = {name: {float(t): v for t, v in per_t.items()} for name, per_t in results.items()}
    names = [n for n in CLASS_NAMES if n in results] + [n for n in results if n not in CLASS_NAMES]
    thresholds = sorted({t for per_t in results.values() for t in per_t})
    if not thresholds:
        raise ValueError("evaluation_bars: the results hold no threshold")
    fig, axes = plt.subplots(len(thresholds), 1, figsize=(12.0, 2.6 * len(thresholds)),
                             dpi=drawing.DPI, squeeze=False)
    x = np.arange(len(names))
    for ax, t in zip(axes[:, 0], thresholds):
        ours = [results[n].get(t) for n in names]
        series = [(0.0, ours, drawing.PRED_COLOR, "this run")]
        if wang_table is not None:  # ours left, Wang et al. right of each class's tick
            series = [(-0.2, ours, drawing.PRED_COLOR, "this run"),
                      (0.2, [wang_table.get(t, {}).get(n) for n in names], "#9a9a9a",
                       "Wang et al. 2017")]
        for offset, values, color, label in series:
            xs = [i + offset for i, v in enumerate(values) if v is not None]
            ys = [v for v in values if v is not None]
            bars = ax.bar(xs, ys, width=0.38, color=color, label=label)
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
            for i, v in enumerate(values):
                if v is None and (label == "this run" or names[i] in CLASS_NAMES):
                    ax.text(i + offset, 0.02, "n/a", ha="center", fontsize=7, color="dimgray")
        ax.set_xticks(x, names, fontsize=8)
        ax.set_xlim(-0.6, len(names) - 0.4)  # every group's slot, even where no bar is drawn
        # headroom for the legend
        ax.set(ylim=(0, 1.3), yticks=np.linspace(0, 1, 6), ylabel="accuracy")
        ax.set_title(f"{metric} > {t:g}", fontsize=9, loc="left")
        ax.legend(fontsize=7, loc="upper right", ncol=2)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    drawing.save_figure(fig, out_path)


def results_from_report(report: dict,
                        table: str = "acc_iobb") -> dict[str, dict[float, float | None]]:
    """evaluate.py's report ({'classes': {name: {'acc_iobb': {'0.1': acc, ...}}}}) ->
    evaluation_bars' results.

    The 'overall' row is kept, drawn as the last group (Wang et al. give no overall figure).
    """
    return {name: {float(t): v for t, v in summary[table].items()}
            for name, summary in report["classes"].items()}


def evaluation_figures(out_dir: str | os.PathLike, report: dict,
                       wang_csv: str | os.PathLike | None = None) -> list[Path]:
    """localization_iobb.png (beside Wang et al.'s Table 4 when wang_csv is given) and
    localization_iou.png (Table 4 as copied holds IoBB only) from evaluate.py's report."""
    out = Path(out_dir)
    wang = read_wang_table(wang_csv) if wang_csv is not None else None
    paths = [out / "localization_iobb.png", out / "localization_iou.png"]
    evaluation_bars(results_from_report(report, "acc_iobb"), wang, paths[0], metric="IoBB")
    evaluation_bars(results_from_report(report, "acc_iou"), None, paths[1], metric="IoU")
    return paths
