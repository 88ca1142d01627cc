"""The figures: each is a valid PNG of its stated size, and what it draws lands where it says."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import draw_boxes
from chexnet import drawing, evaluation_figures, localization_figures, training_figures
from chexnet.boxfile import Box
from chexnet.utils import InputError
from chexnet.constants import CLASS_NAMES
from chexnet.images import read_xray, resize_stored
from chexnet.nih import TruthBox, read_bbox_list

WANG = Path(__file__).resolve().parent.parent / "docs" / "wang2017_localization_table4.csv"


def read_rgb(path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a written PNG; fails when the file is not a decodable image."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"{path} is not a readable image"
    return bgr[:, :, ::-1].astype(int)


def bounding_rect(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(first column, first row, last column, last row) of the True pixels."""
    rows, cols = np.nonzero(mask)
    assert rows.size, "no pixel of the colour was drawn"
    return cols.min(), rows.min(), cols.max(), rows.max()


def blue(rgb):  # PRED_COLOR (0, 80, 255); never a gray X-ray pixel, nor the light-blue label text
    return (rgb[..., 2] > 200) & (rgb[..., 0] < 60) & (rgb[..., 1] < 130)


def red(rgb):  # TRUTH_COLOR (255, 26, 26)
    return (rgb[..., 0] > 200) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)


def assert_box_at(rect, box, scale: float, tol: float = 3.0):
    """The drawn outline (line width ~2.8 px, centred on the edge) covers the box's pixels."""
    expected = (box.x * scale, box.y * scale, (box.x + box.w) * scale, (box.y + box.h) * scale)
    assert np.allclose(rect, expected, atol=tol), f"drawn at {rect}, box names {expected}"


@pytest.mark.parametrize("size", [1024, 512])
def test_boxes_land_on_the_pixels_they_name(tmp_path, size):
    # x != y and w != h, so swapping rows and columns would move the box far off.
    pred = Box("Nodule", 100.0, 300.0, 200.0, 80.0)
    truth = TruthBox("a.png", "Mass", 640.0, 120.0, 90.0, 250.0)
    out = tmp_path / "boxes.png"
    localization_figures.boxes_figure(np.zeros((1024, 1024), np.uint8), [pred], [truth], {"Nodule": 0.9}, out, "t", size=size)
    rgb = read_rgb(out)
    assert rgb.shape == (size, size, 3)
    assert_box_at(bounding_rect(blue(rgb)), pred, size / 1024)
    assert_box_at(bounding_rect(red(rgb)), truth, size / 1024)


def test_truth_box_on_a_real_xray(tmp_path, sample_dir):
    truth = [b for b in read_bbox_list(sample_dir / "BBox_List_2017.csv") if b.image == "00008386_000.png"]
    image = read_xray(sample_dir / "images" / "00008386_000.png")
    out = tmp_path / "real.png"
    localization_figures.boxes_figure(image, [], truth, None, out, "00008386_000.png")
    rgb = read_rgb(out)
    assert rgb.shape == (1024, 1024, 3)
    assert not blue(rgb).any()
    assert_box_at(bounding_rect(red(rgb)), truth[0], 1.0)
    # Away from the box the X-ray itself is drawn, one image pixel per output pixel.
    assert abs(rgb[900:1000, 100:200, 0] - image[900:1000, 100:200]).max() <= 2


def test_heatmap_sits_on_the_centre_crop(tmp_path):
    heatmap = np.zeros((224, 224), np.float32)
    heatmap[100:120, 30:50] = 1.0  # rows 100-119, columns 30-49 of the crop
    out = tmp_path / "heat.png"
    localization_figures.heatmap_overlay(np.zeros((256, 256), np.uint8), heatmap, "Mass", out, size=512)
    rgb = read_rgb(out)
    assert rgb.shape == (512, 512 + drawing.COLORBAR_PX, 3)
    image_part = rgb[:, :512]
    # jet(1) is dark red: over a black image at alpha 0.4 it is about (51, 0, 0).
    hot = (image_part[..., 0] > 25) & (image_part[..., 2] < 25)
    # crop pixel c of 224 is 256-pixel c + 16, i.e. 1024-pixel (c + 16) * 4, i.e. output pixel (c + 16) * 2.
    assert np.allclose(bounding_rect(hot), ((30 + 16) * 2, (100 + 16) * 2, (50 + 16) * 2, (120 + 16) * 2), atol=3)
    # The map covers the crop only: the 16-pixel border of the 256 image (32 output px) stays untinted.
    # (the caption sits at the top-left, so the bottom, right and lower-left borders are checked)
    assert image_part[484:].max() == 0 and image_part[:, 484:].max() == 0 and image_part[100:, :28].max() == 0
    assert image_part[40:470, 40:470].max(axis=2).min() > 0  # the whole crop is tinted (jet(0) is blue)


def test_probability_chart(tmp_path):
    out = tmp_path / "probs.png"
    localization_figures.probability_chart(np.linspace(0.05, 0.95, 8), np.full(8, 0.5), out, title="x")
    assert read_rgb(out).shape == (380, 600, 3)


def test_contact_sheet_on_real_images(tmp_path, sample_dir):
    truth = [b for b in read_bbox_list(sample_dir / "BBox_List_2017.csv") if (sample_dir / "images" / b.image).is_file()]
    rows = []
    for name in ("Cardiomegaly", "Nodule"):
        cells = [localization_figures.SheetCell(resize_stored(read_xray(sample_dir / "images" / b.image)),
                                 np.full((224, 224), 0.5, np.float32), [Box(name, b.x, b.y, b.w, b.h)], [b], b.image)
                 for b in truth if b.label == name][:2]
        rows.append((name, cells))
    out = tmp_path / "sheet.png"
    localization_figures.contact_sheet(rows, out, cell=128)
    assert read_rgb(out).shape == (2 * 128, localization_figures.SHEET_LABEL_PX + 2 * 128 + drawing.COLORBAR_PX, 3)


def test_training_curves_skip_undefined_auroc(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    lines = []
    for epoch in (1, 2, 3):
        auroc = {name: (None if name == "Mass" else 0.5 + 0.1 * epoch) for name in CLASS_NAMES}
        lines.append(json.dumps({"epoch": epoch, "train_loss": 0.6 / epoch, "valid_loss": 0.5 / epoch,
                                 "auroc": auroc, "mean_auroc": 0.5 + 0.1 * epoch, "seconds": 1.0}))
    metrics.write_text("\n".join(lines) + "\n")
    out = tmp_path / "curves.png"
    training_figures.training_curves(metrics, out)
    assert read_rgb(out).shape == (450, 1200, 3)


def test_bad_metrics_line_names_file_and_line(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"epoch": 1, "train_loss": 0.5}\n{"epoch": 2, oops\n')
    with pytest.raises(InputError, match=r"metrics.jsonl:2:"):
        training_figures.training_curves(metrics, tmp_path / "c.png")


def test_roc_curves_with_an_undefined_class(tmp_path):
    rng = np.random.default_rng(0)
    y_true = (rng.random((40, 8)) < 0.4).astype(np.uint8)
    y_true[:, 4] = 0  # Mass: no positive example, no ROC curve
    out = tmp_path / "roc.png"
    training_figures.roc_curves(y_true, rng.random((40, 8)), np.full(8, 0.5), out)
    assert read_rgb(out).shape == (700, 1400, 3)


def test_wang_table_and_evaluation_bars(tmp_path):
    wang = evaluation_figures.read_wang_table(WANG)
    assert sorted(wang) == [0.1, 0.25, 0.5, 0.75, 0.9]
    assert wang[0.1]["Cardiomegaly"] == pytest.approx(0.9931) and set(wang[0.5]) == set(CLASS_NAMES)
    results = {name: {t: (None if name == "Mass" else 0.5) for t in wang} for name in CLASS_NAMES}
    out = tmp_path / "eval.png"
    evaluation_figures.evaluation_bars(results, wang, out)
    assert read_rgb(out).shape == (5 * 260, 1200, 3)


def test_image_figures_writes_each_picture(tmp_path, sample_dir):
    image = read_xray(sample_dir / "images" / "00001933_000.png")
    probs = np.linspace(0.1, 0.8, 8)
    paths = localization_figures.image_figures(tmp_path, "00001933_000.png", image, probs, np.full(8, 0.5),
                                {6: np.zeros((224, 224), np.float32)}, [Box("Pneumonia", 500, 540, 220, 260)],
                                size=256)
    assert [p.name for p in paths] == ["00001933_000_boxes.png", "00001933_000_probs.png",
                                       "00001933_000_heatmap_Pneumonia.png"]
    assert read_rgb(paths[0]).shape == (256, 256, 3)
    assert read_rgb(paths[2]).shape == (256, 256 + drawing.COLORBAR_PX, 3)


def test_draw_boxes_on_the_originals_box_file(tmp_path, sample_dir):
    box_txt = tmp_path / "bounding_box.txt"
    box_txt.write_text("../images/00008386_000.png 1\nNodule 300.0 500.0 120.0 60.0\n"
                       "../images/00013125_000.png 0\n")
    args = draw_boxes.get_args_parser().parse_args(
        [str(box_txt), "--images", str(sample_dir / "images"), "--bbox-list", str(sample_dir / "BBox_List_2017.csv"),
         "--out", str(tmp_path / "out"), "--size", "512"])
    draw_boxes.main(args)
    rgb = read_rgb(tmp_path / "out" / "00008386_000_boxes.png")
    assert rgb.shape == (512, 512, 3)
    assert_box_at(bounding_rect(blue(rgb)), Box("Nodule", 300.0, 500.0, 120.0, 60.0), 0.5)
    assert red(rgb).any()  # its truth box from the table
    assert (tmp_path / "out" / "00013125_000_boxes.png").is_file()


def test_draw_boxes_names_a_missing_image(tmp_path, sample_dir):
    box_txt = tmp_path / "b.txt"
    box_txt.write_text("../images/99999999_000.png 0\n")
    args = draw_boxes.get_args_parser().parse_args([str(box_txt), "--images", str(sample_dir / "images"),
                                                    "--out", str(tmp_path / "out")])
    with pytest.raises(InputError, match="99999999_000.png"):
        draw_boxes.main(args)
    assert not (tmp_path / "out").exists()


def test_evaluation_figures_from_an_evaluator_report(tmp_path):
    # The shape of evaluate.py's report: accuracies keyed by the threshold's string, None where undefined.
    accuracy = {"0.1": 0.9, "0.25": 0.7, "0.5": 0.4, "0.75": None, "0.9": 0.0}
    report = {"classes": {name: {"acc_iobb": accuracy, "acc_iou": accuracy} for name in CLASS_NAMES + ("overall",)}}
    assert evaluation_figures.results_from_report(report)["Mass"][0.25] == 0.7
    paths = evaluation_figures.evaluation_figures(tmp_path, report, WANG)
    assert [p.name for p in paths] == ["localization_iobb.png", "localization_iou.png"]
    for path in paths:
        assert read_rgb(path).shape == (5 * 260, 1200, 3)


def figure_texts(monkeypatch, draw) -> list[str]:
    """Every text of the figure that draw() saves (drawing.save_figure is intercepted)."""
    import matplotlib.text
    seen = []
    monkeypatch.setattr(drawing, "save_figure",
                        lambda fig, path: seen.extend(t.get_text() for t in fig.findobj(matplotlib.text.Text)))
    draw()
    return seen


@pytest.mark.parametrize("cam, layer, name", [
    ("gradcam", None, "Grad-CAM"), ("layercam", "features.denseblock2,features.denseblock3", "LayerCAM"),
    ("gradcam++", None, "Grad-CAM++"), ("cam", "features.norm5", "CAM")])
def test_the_pictures_name_the_cam_that_made_the_map(tmp_path, monkeypatch, cam, layer, name):
    heatmap = np.zeros((224, 224), np.float32)
    texts = figure_texts(monkeypatch, lambda: localization_figures.heatmap_overlay(
        np.zeros((256, 256), np.uint8), heatmap, "Mass", tmp_path / "h.png", size=256, cam=cam, layer=layer))
    assert name in texts  # the colour bar's label
    caption = next(t for t in texts if t.startswith("Mass: "))
    assert caption.startswith(f"Mass: {name}")
    assert ("denseblock2+denseblock3" in caption) == (layer is not None and "denseblock2" in layer)
    assert cam == "gradcam" or "Grad-CAM" not in texts  # the colour bar said so for every --cam
    cell = localization_figures.SheetCell(np.zeros((256, 256), np.uint8), heatmap, [], [])
    sheet = figure_texts(monkeypatch, lambda: localization_figures.contact_sheet(
        [("Mass", [cell])], tmp_path / "s.png", cell=64, cam=cam))
    assert name in sheet and (cam == "gradcam" or "Grad-CAM" not in sheet)


def test_labels_of_nearby_boxes_do_not_print_over_each_other():
    """The demo's case: a Nodule box and a Cardiomegaly box whose top-left corners are 20 px apart
    printed 'Nodule 0.50iiomegaly 0.48'; each label now clears the ones drawn before it."""
    fig = drawing.plt.figure(figsize=(5.12, 5.12), dpi=drawing.DPI)
    ax = drawing.image_axes(fig, 0, 0, 512)
    predicted = [Box("Cardiomegaly", 300, 400, 400, 300), Box("Nodule", 330, 410, 70, 70),
                 Box("Nodule", 310, 420, 70, 70), Box("Mass", 120, 4, 300, 200)]
    truth = [TruthBox("a.png", "Nodule", 320, 330, 60, 60)]  # its label below: onto the others'
    texts = drawing.draw_boxes(ax, predicted, truth, {"Cardiomegaly": 0.48, "Nodule": 0.5}, 11.0)
    renderer = fig.canvas.get_renderer()
    extents = [t.get_window_extent(renderer) for t in texts]
    drawing.plt.close(fig)
    assert len(extents) == 5
    for i, a in enumerate(extents):
        assert not any(a.overlaps(b) for b in extents[i + 1:]), [t.get_text() for t in texts]
        assert ax.bbox.y0 <= a.y0 and a.y1 <= ax.bbox.y1  # inside the picture, none clipped away
    # each stays beside its own box: within a few label heights of the edge it names
    for text, box in zip(texts, truth + predicted):
        edge = box.y + box.h if isinstance(box, TruthBox) else box.y
        height = 2 * 20  # a label at 11 pt is under 20 px high, 2 units of the 1024 frame a px
        assert abs(text.get_position()[1] - edge) < (drawing.LABEL_SHIFTS + 1) * height, text.get_text()


def drawn_texts(monkeypatch, draw) -> tuple:
    """The picture's extent and (text, extent of its dark band) for each text of the X-ray's axes
    in the figure that draw() saves (drawn, then closed; nothing is written)."""
    seen = {}

    def keep(fig, path):
        fig.canvas.draw()
        renderer, ax = fig.canvas.get_renderer(), fig.axes[0]
        seen["picture"] = ax.bbox.frozen()
        seen["texts"] = [(t.get_text(), t.get_bbox_patch().get_window_extent(renderer))
                         for t in ax.texts]
        drawing.plt.close(fig)
    monkeypatch.setattr(drawing, "save_figure", keep)
    draw()
    return seen["picture"], seen["texts"]


@pytest.mark.parametrize("top", [0, 30])
def test_labels_of_boxes_at_the_top_clear_the_title(tmp_path, monkeypatch, top):
    """A flat truth box and three predicted boxes (the peaks rule finds several) at the top of a
    heatmap picture, under its two-line caption: no room above them, so each label goes below
    its box's top, inside the picture and clear of the caption. The last one used to be left where
    it started: above the picture (clipped away) or, a little lower, on the title."""
    predicted = [Box("Mass", 20 * i, top, 300, 200) for i in range(3)]
    truth = [TruthBox("a.png", "Mass", 0, top, 300, 20)]
    picture, texts = drawn_texts(monkeypatch, lambda: localization_figures.heatmap_overlay(
        np.full((1024, 1024), 90, np.uint8), np.zeros((224, 224), np.float32), "Mass",
        tmp_path / "h.png", predicted=predicted, truth=truth, prob=0.7, title="00000001_000.png"))
    (title, caption), *labels = texts
    assert title.startswith("00000001_000.png\nMass: ") and len(labels) == 4
    for text, band in labels:
        assert not band.overlaps(caption), (text, band.bounds, caption.bounds)
        assert picture.y0 <= band.y0 and band.y1 <= picture.y1 + 1, (text, band.bounds)  # shown
        assert picture.y1 - band.y1 >= top - 1  # not above its box's top (1024 px: a unit a px)
