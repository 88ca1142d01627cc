"""Box sizes that never see the test images, and scores on a list's images only."""
import numpy as np
import pytest

import evaluate
from chexnet import model_dir, nih
from chexnet.boxfile import Box, ImageBoxes, write_box_file
from chexnet.constants import AVERAGE_BOXES


def test_sizes_from_listed_images_only(shared_nih):
    table_path = shared_nih / "BBox_List_2017.csv.gz"
    truth = nih.read_bbox_list(table_path)
    images = sorted({b.image for b in truth})
    train = set(images[::2])  # half of the 880 box images stand for train + valid
    everything, said = model_dir.resolve_box_sizes(table_path, None)
    assert said.startswith("mean of 984 boxes in ")
    np.testing.assert_allclose(everything, AVERAGE_BOXES, atol=0.05)  # the original's all-984 table
    sizes, said = model_dir.resolve_box_sizes(table_path, None, {"train.txt": train})
    kept = [b for b in truth if b.image in train]
    assert said.startswith(f"mean of {len(kept)} boxes of the images of train.txt")
    np.testing.assert_allclose(sizes, nih.average_boxes(kept))
    assert not np.allclose(sizes, everything)


def test_evaluate_scores_only_the_listed_images(sample_dir, tmp_path, capsys):
    truth = nih.read_truth_by_image(sample_dir / "BBox_List_2017.csv")
    test = nih.read_image_list(sample_dir / "test.txt")
    valid = nih.read_image_list(sample_dir / "valid.txt")
    entries = [ImageBoxes(f"../images/{name}", [Box(b.label, b.x, b.y, b.w, b.h) for b in truth.get(name, [])])
               for name in test + valid]  # perfect boxes
    write_box_file(tmp_path / "bb.txt", entries)
    args = evaluate.get_args_parser().parse_args(
        [str(tmp_path / "bb.txt"), str(sample_dir / "BBox_List_2017.csv"), "--images",
         str(sample_dir / "test.txt")])
    report = evaluate.main(args)
    in_test = [n for n in test if n in truth]
    assert report["images"]["evaluated"] == len(in_test)
    assert report["images"]["truth_not_in_box_file"] == 0  # the other lists' truth is out of scope
    counts = report["image_lists"][str(sample_dir / "test.txt")]
    assert counts == {"images": len(test), "box_images": len(in_test),
                      "boxes": sum(len(truth[n]) for n in in_test)}
    assert f"{len(in_test)} of them with truth boxes" in capsys.readouterr().out
    assert report["classes"]["overall"]["truth_boxes"] == counts["boxes"]


def test_size_images_needs_a_box_table(sample_dir, tmp_path):
    import denseNet_localization
    from chexnet.utils import InputError

    args = denseNet_localization.get_args_parser().parse_args(
        [str(sample_dir / "test.txt"), str(sample_dir / "images"), "--model", str(tmp_path / "none.pt"),
         "--size-images", str(sample_dir / "train.txt")])
    with pytest.raises(InputError, match="--size-images needs --bbox-list"):
        denseNet_localization.main(args)
