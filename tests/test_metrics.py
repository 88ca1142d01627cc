"""metrics.py on cases worked out by hand."""
import numpy as np
import pytest

from chexnet import metrics
from chexnet.utils import InputError
from chexnet.model_dir import read_metrics_log
from chexnet.constants import DEFAULT_THRESHOLD


def test_auroc_undefined_classes_are_none_and_left_out_of_the_mean():
    labels = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])
    scores = np.array([[0.9, 0.1, 0.2], [0.2, 0.3, 0.4], [0.4, 0.5, 0.6], [0.6, 0.7, 0.8]])
    # class 0: positives 0.9, 0.4 vs negatives 0.2, 0.6 -> 3 of 4 pairs ordered: 0.75
    assert metrics.per_class_auroc(labels, scores) == [0.75, None, None]
    assert metrics.mean_auroc([0.75, None, 0.25]) == 0.5
    assert metrics.mean_auroc([None, None]) is None
    assert metrics.format_auroc(None) == "undefined"


def test_youden_threshold_by_hand():
    # scores 0.1 0.3 0.35 0.6 0.8 with labels 0 0 1 0 1: cutting at >= 0.35 gives tpr 1, fpr 1/3
    # (J = 2/3, the best); the next lower score is 0.3, so '> 0.325' selects the same images.
    labels = np.array([[0, 0], [0, 0], [1, 0], [0, 0], [1, 0]])
    probs = np.array([[0.1, 0.1], [0.3, 0.2], [0.35, 0.3], [0.6, 0.4], [0.8, 0.5]])
    t = metrics.youden_thresholds(labels, probs)
    assert t.dtype == np.float32 and t.shape == (2,)
    assert t[0] == pytest.approx(0.325)
    assert t[1] == DEFAULT_THRESHOLD  # no positive: undefined
    predicted = probs[:, 0] > t[0]
    assert predicted.tolist() == [False, False, True, True, True]


def test_youden_perfectly_separable_and_nan():
    labels = np.array([[0], [0], [1], [1]])
    t = metrics.youden_thresholds(labels, np.array([[0.1], [0.2], [0.7], [0.9]]))
    assert t[0] == pytest.approx(0.45)
    with pytest.raises(ValueError, match="NaN"):
        metrics.per_class_auroc(labels, np.array([[0.1], [np.nan], [0.7], [0.9]]))


def test_metrics_log_names_a_bad_line(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"epoch": 1, "train_loss": 0.5}\n\n{"epoch": 2, "train_lo\n')
    with pytest.raises(InputError, match=r"metrics\.jsonl:3: not a metrics record"):
        read_metrics_log(log)
    log.write_text('{"epoch": 1, "train_loss": 0.5}\n\n')
    assert read_metrics_log(log) == [{"epoch": 1, "train_loss": 0.5}]


def test_youden_threshold_fires_when_scores_are_adjacent_float32():
    """The issue's case: the cut and the next lower score one float32 step apart. The float64
    midpoint rounds up to the cut in float32 and the class would never fire."""
    probs = np.array([[1.0], [1.0], [1 - 2**-24], [0.5]], dtype=np.float32)
    labels = np.array([[1], [1], [0], [0]])
    t = metrics.youden_thresholds(labels, probs)
    assert t.dtype == np.float32 and t[0] < 1.0
    assert ((probs[:, 0] > t[0]) == labels[:, 0].astype(bool)).all()
