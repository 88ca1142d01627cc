"""tools/split.py on the real label table (112,120 images, 30,805 patients) and on NIH-format lists."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

import split
from chexnet import nih

ROOT = Path(__file__).resolve().parent.parent
SPLIT = ROOT / "tools" / "split.py"


@pytest.fixture(scope="module")
def full_table(request):
    path = ROOT.parent / "shared" / "nih" / "Data_Entry_2017_v2020.csv.gz"
    if not path.is_file():
        pytest.skip("../shared/nih is not present")
    return path, nih.read_data_entry(path)


def run(*argv) -> int:
    return split.main(split.get_args_parser().parse_args([str(a) for a in argv]))


def lists_of(out: Path) -> dict[str, list[str]]:
    return {n: (out / f"{n}.txt").read_text().split() for n in ("train", "valid", "test")}


def assert_patient_disjoint(lists: dict[str, list[str]], table) -> None:
    owner = {}
    for list_name, names in lists.items():
        for name in names:
            assert owner.setdefault(table[name].patient_id, list_name) == list_name, name


def test_random_split_of_the_full_table(tmp_path, full_table, capsys):
    path, table = full_table
    start = time.perf_counter()
    assert run(path, tmp_path / "a", "--seed", 3) == 0
    assert time.perf_counter() - start < 20  # seconds, on a shared 2-core machine
    lists = lists_of(tmp_path / "a")
    every = [n for names in lists.values() for n in names]
    assert len(every) == len(set(every)) == len(table) == 112120
    assert_patient_disjoint(lists, table)
    patients = {k: len({table[n].patient_id for n in v}) for k, v in lists.items()}
    assert sum(patients.values()) == 30805
    assert patients["test"] == round(0.2 * 30805) and patients["valid"] == round(0.1 * 30805)
    summary = (tmp_path / "a" / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("list,images,patients,Atelectasis") and len(summary) == 4
    assert "Hernia" in capsys.readouterr().out
    run(path, tmp_path / "b", "--seed", 3)
    run(path, tmp_path / "c", "--seed", 4)
    assert lists_of(tmp_path / "b") == lists and lists_of(tmp_path / "c") != lists
    assert run(path, "--check", *(tmp_path / "a" / f"{n}.txt" for n in lists)) == 0


def test_official_lists(tmp_path, full_table):
    """NIH-format lists (one name a line) written from the real table: a fifth of the patients test."""
    path, table = full_table
    test = [n for n, row in table.items() if int(row.patient_id) % 5 == 0]
    in_test = set(test)
    train_val = [n for n in table if n not in in_test]
    (tmp_path / "test_list.txt").write_text("\n".join(test) + "\n")
    (tmp_path / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    official = (tmp_path / "train_val_list.txt", tmp_path / "test_list.txt")
    assert run(path, tmp_path / "out", "--official", *official, "--valid-fraction", 0.125) == 0
    lists = lists_of(tmp_path / "out")
    assert lists["test"] == test
    assert sorted(lists["train"] + lists["valid"]) == sorted(train_val)
    assert_patient_disjoint(lists, table)
    valid_patients = {table[n].patient_id for n in lists["valid"]}
    assert len(valid_patients) == round(0.125 * len({table[n].patient_id for n in train_val}))


def test_check_finds_shared_patients_and_unknown_names(tmp_path, full_table, capsys):
    path, table = full_table
    by_patient = {}
    for name, row in table.items():
        by_patient.setdefault(row.patient_id, []).append(name)
    two = next(names for names in by_patient.values() if len(names) >= 2)
    (tmp_path / "a.txt").write_text(f"{two[0]}\nnot_an_image.png\n")
    (tmp_path / "b.txt").write_text(f"{two[1]}\n")
    assert run(path, "--check", tmp_path / "a.txt", tmp_path / "b.txt") == 1
    out = capsys.readouterr().out
    assert "1 not in the label table (e.g. not_an_image.png)" in out
    assert "SHARED: 1 patient(s)" in out
    # the CLI: exit status 1, nothing written
    proc = subprocess.run([sys.executable, SPLIT, path, "--check", tmp_path / "a.txt", tmp_path / "b.txt"],
                          capture_output=True, text=True)
    assert proc.returncode == 1


def test_official_lists_sharing_a_patient_are_refused(tmp_path, sample_dir):
    table = nih.read_data_entry(sample_dir / "Data_Entry_2017.csv")
    names = list(table)
    (tmp_path / "tv.txt").write_text("\n".join(names[:10]) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(names[9:]) + "\n")
    proc = subprocess.run([sys.executable, SPLIT, sample_dir / "Data_Entry_2017.csv", tmp_path / "out",
                           "--official", tmp_path / "tv.txt", tmp_path / "test.txt"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "also in" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists()
    proc = subprocess.run([sys.executable, SPLIT, sample_dir / "Data_Entry_2017.csv", tmp_path / "o",
                           "--official", tmp_path / "tv.txt", tmp_path / "test.txt", "--test-fraction",
                           "0.2"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--test-fraction" in proc.stderr


@pytest.mark.parametrize("which", ["tv", "test"])
def test_official_lists_with_a_duplicate_name_are_refused_alike(tmp_path, sample_dir, which):
    """A name listed twice, in train_val_list or in test_list: one line naming the file and the line,
    exit status 2, nothing written (neither list is quietly de-duplicated)."""
    names = list(nih.read_data_entry(sample_dir / "Data_Entry_2017.csv"))
    lists = {"tv": names[:10], "test": names[10:]}
    lists[which] = lists[which][:4] + [""] + lists[which][2:3] + lists[which][4:]  # blank line 5, then a repeat
    for name, content in lists.items():
        (tmp_path / f"{name}.txt").write_text("\n".join(content) + "\n")
    proc = subprocess.run([sys.executable, SPLIT, sample_dir / "Data_Entry_2017.csv", tmp_path / "out",
                           "--official", tmp_path / "tv.txt", tmp_path / "test.txt"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert f"{tmp_path / which}.txt:6: {lists[which][2]} is listed again (first on line 3)" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_sample_split_is_patient_disjoint(tmp_path, sample_dir):
    table = nih.read_data_entry(sample_dir / "Data_Entry_2017.csv")
    assert run(sample_dir / "Data_Entry_2017.csv", tmp_path, "--seed", 1) == 0
    lists = lists_of(tmp_path)
    assert sorted(sum(lists.values(), [])) == sorted(table)
    assert run(sample_dir / "Data_Entry_2017.csv", "--check",
               *(sample_dir / f"{n}.txt" for n in ("train", "valid", "test"))) == 0
