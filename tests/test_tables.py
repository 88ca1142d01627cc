"""The NIH tables and the image lists, read from the real sample files."""
import csv

import numpy as np
import pytest

from chexnet.utils import InputError
from chexnet.constants import CLASS_NAMES
from chexnet.nih import label_matrix, read_bbox_list, read_data_entry, read_image_list, read_image_list_lines


def raw_rows(path):
    with open(path, newline="") as f:
        return {row[0]: row for row in list(csv.reader(f))[1:]}


def test_2020_label_table_matches_raw_rows(sample_dir):
    table = read_data_entry(sample_dir / "Data_Entry_2017.csv")
    raw = raw_rows(sample_dir / "Data_Entry_2017.csv")
    assert set(table) == set(raw)
    assert table["00000100_000.png"].labels == ("Atelectasis", "Effusion", "Infiltration")
    assert table["00000100_000.png"].patient_id == "100"
    for name, row in raw.items():
        expected = () if row[1] == "No Finding" else tuple(row[1].split("|"))
        assert table[name].labels == expected
    assert any(row[1] == "No Finding" for row in raw.values())  # the sample covers that case


def test_2017_table_with_trailing_empty_column_reads_the_same(sample_dir, tmp_path):
    lines = (sample_dir / "Data_Entry_2017.csv").read_text().splitlines()
    legacy = tmp_path / "Data_Entry_2017.csv"
    legacy.write_text("".join(line + ",\r\n" for line in lines))  # the 2017 file: a trailing ',' and CRLF
    assert read_data_entry(legacy) == read_data_entry(sample_dir / "Data_Entry_2017.csv")


def test_label_matrix_against_label_table(sample_dir):
    table = read_data_entry(sample_dir / "Data_Entry_2017.csv")
    names = ["00000100_000.png", "00026911_000.png", "00000404_000.png"]
    y = label_matrix(names, table, "list.txt")
    assert y.dtype == np.uint8 and y.shape == (3, 8)
    raw = raw_rows(sample_dir / "Data_Entry_2017.csv")
    for i, name in enumerate(names):
        findings = raw[name][1].split("|")
        assert [CLASS_NAMES[k] for k in np.flatnonzero(y[i])] == [c for c in CLASS_NAMES if c in findings]
    # 00000404_000 also has Consolidation and Pleural_Thickening, outside the 8 classes
    assert y[2].tolist() == [1, 0, 1, 0, 1, 0, 0, 0]


def test_label_matrix_names_the_list_line(sample_dir):
    table = read_data_entry(sample_dir / "Data_Entry_2017.csv")
    with pytest.raises(InputError, match=r"^list.txt: line 7: 99999999_000.png is not in the label table$"):
        label_matrix(["00000100_000.png", "99999999_000.png"], table, "list.txt", line_numbers=[1, 7])


def test_box_table_header_and_infiltrate_mapping(sample_dir):
    boxes = read_bbox_list(sample_dir / "BBox_List_2017.csv")
    assert len(boxes) == 984  # the complete table of the release
    infiltration = [b for b in boxes if b.image == "00026911_000.png"]
    assert len(infiltration) == 1 and infiltration[0].label == "Infiltration"
    b = infiltration[0]
    assert (b.x, b.y, b.w, b.h) == pytest.approx((555.885714285714, 235.140740740741, 206.967195767196, 313.159788359788))
    assert {b.label for b in boxes} <= set(CLASS_NAMES)


def test_image_list_tolerates_crlf_blank_lines_labels_and_bom(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes(b"\xef\xbb\xbf00000100_000.png\r\n\r\n  \r\n00000404_000.png 1 0 1 0 0 0 0 0\r\n00000574_000.png")
    assert read_image_list(path) == ["00000100_000.png", "00000404_000.png", "00000574_000.png"]
    assert [line for line, _ in read_image_list_lines(path)] == [1, 4, 5]


@pytest.mark.parametrize("content", [b"", b"\n\r\n   \n"])
def test_empty_list_is_an_error(tmp_path, content):
    path = tmp_path / "valid.txt"
    path.write_bytes(content)
    with pytest.raises(InputError, match=r"valid.txt: the list is empty"):
        read_image_list(path)


def test_csv_without_expected_columns(sample_dir, tmp_path):
    text = (sample_dir / "Data_Entry_2017.csv").read_text().replace("Finding Labels", "Labels", 1)
    renamed = tmp_path / "Data_Entry_2017.csv"
    renamed.write_text(text)
    with pytest.raises(InputError, match=r"Data_Entry_2017.csv: missing column\(s\) Finding Labels"):
        read_data_entry(renamed)
    boxes = tmp_path / "BBox_List_2017.csv"
    boxes.write_text("Image Index,Finding Label,x,y,w,h\n00026911_000.png,Infiltrate,1,2,3,4\n")
    with pytest.raises(InputError, match=r"BBox_List_2017.csv: missing column Bbox \[x,y,w,h\]"):
        read_bbox_list(boxes)


def test_unknown_finding_and_short_box_row_name_the_row(sample_dir, tmp_path):
    table = tmp_path / "table.csv"
    table.write_text("Image Index,Finding Labels,Patient ID\na.png,Atelectasis,1\nb.png,Pneumonitis,2\n")
    with pytest.raises(InputError, match=r"table.csv: row 3: unknown finding\(s\) Pneumonitis"):
        read_data_entry(table)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Mass,1,2,3\n")
    with pytest.raises(InputError, match=r"boxes.csv: row 2: too few columns"):
        read_bbox_list(boxes)


def test_binary_file_as_csv_is_a_clear_error(sample_dir):
    with pytest.raises(InputError, match=r"00000100_000.png: not a readable CSV file"):
        read_data_entry(sample_dir / "images" / "00000100_000.png")


def test_gzip_tables_read_like_plain_ones_and_a_broken_one_is_named(sample_dir, tmp_path):
    import gzip

    packed = tmp_path / "Data_Entry_2017.csv.gz"
    packed.write_bytes(gzip.compress((sample_dir / "Data_Entry_2017.csv").read_bytes()))
    assert read_data_entry(packed) == read_data_entry(sample_dir / "Data_Entry_2017.csv")
    broken = tmp_path / "BBox_List_2017.csv.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(InputError, match=r"^.*BBox_List_2017\.csv\.gz: cannot read"):
        read_bbox_list(broken)
