"""`ava-keyframes export-csv` on the end-to-end build: keras-retinanet's CSVs and images, and
one-line errors."""

from __future__ import annotations

import csv

import pytest
from builder_support import LABELMAP

from ava_keyframes.cli import main as cli_main


@pytest.mark.slow
def test_export_csv_writes_images_annotations_and_classes(e2e, builds, loaded, tmp_path):
    out = tmp_path / "export"
    code = cli_main(["export-csv", "--data-dir", str(builds["plain"]), "--split", "validation",
                     "--out", str(out)])
    assert code == 0
    with open(out / "annotations.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    validation = {k: ex for k, ex in loaded["examples"].items() if ex["split"] == "validation"}
    expected_rows = []
    for key, example in validation.items():
        if not example["person_id"]:
            expected_rows.append([f"images/{key}.jpg", "", "", "", "", ""])
        for pixels, labels in zip(example["box_pixels"], example["labels"], strict=True):
            corners = [str(round(v)) for v in pixels]
            expected_rows += [[f"images/{key}.jpg", *corners, LABELMAP.names[label]]
                              for label in labels]
    assert sorted(rows) == sorted(expected_rows)
    assert {p.name for p in (out / "images").iterdir()} == {f"{k}.jpg" for k in validation}
    with open(out / "classes.csv", newline="") as handle:
        classes = list(csv.reader(handle))
    assert classes == [[name, str(i)] for i, name in enumerate(LABELMAP.names)]


@pytest.mark.slow
def test_export_csv_unknown_split_is_a_one_line_error(builds, tmp_path, capsys):
    code = cli_main(["export-csv", "--data-dir", str(builds["plain"]), "--split", "test",
                     "--out", str(tmp_path / "x")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ava-keyframes: error: ") and "'test'" in err[-1]
    assert not any("Traceback" in line for line in err)


@pytest.mark.slow
def test_export_csv_into_a_file_is_a_one_line_error(builds, tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("not a folder")
    code = cli_main(["export-csv", "--data-dir", str(builds["plain"]), "--split", "validation",
                     "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ava-keyframes: error: ") and str(out) in err[0]
    assert out.read_text() == "not a folder"
