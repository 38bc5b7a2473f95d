import json
from pathlib import Path

import pytest

from ava_keyframes.annotations import (
    AnnotationError,
    annotation_csv_name,
    check_video_id,
    companion_excluded_name,
    excluded_csv_name,
    keyframe_key,
    parse_keyframe_key,
    read_annotations,
    read_excluded,
    write_excluded,
    write_rows,
)
from ava_keyframes.cli import main
from ava_keyframes.labelmap import read_labelmap

EXCERPT = "ava_val_v2.2_excerpt_1j20qq1JyX4_0902-1014.csv"
VID = "1j20qq1JyX4"


@pytest.fixture(scope="module")
def labelmap(ava_data):
    return read_labelmap(ava_data / "ava_action_list_v2.2.pbtxt")


def write(tmp_path, text, name="rows.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_real_excerpt_counts_merge_and_line_16(ava_data, labelmap):
    annotations = read_annotations(ava_data / EXCERPT, labelmap)
    assert annotations.rows_read == 341
    assert len(annotations.table) == 340
    [rejection] = annotations.report
    assert (rejection.line, rejection.field) == (16, "person_id")
    assert "'3_'" in rejection.reason and str(rejection).startswith(f"{ava_data / EXCERPT}:16:")
    keyframes = annotations.keyframes()
    assert len(keyframes) == 110
    assert sum(len(persons) for persons in keyframes.values()) == 148
    assert list(keyframes)[0] == (VID, 902) and list(keyframes)[-1] == (VID, 1014)
    # Lines 14-15 (person 3 at 0906: actions 11 and 74) are one person; line 16 (80) is reported.
    [person] = [p for p in keyframes[(VID, 906)] if p.person_id == 3]
    assert person.actions == (11, 74)
    assert person.box == (0.175, 0.001, 0.995, 1.0)


def test_real_subset_reads_whole_with_plain_seconds(ava_data, labelmap):
    path = ava_data / "ava_val_v2.1_person_movement_subset.csv"
    annotations = read_annotations(path, labelmap)
    lines = sum(1 for line in path.open() if line.strip())
    assert annotations.rows_read == lines == len(annotations.table)
    assert annotations.report == []
    assert annotations.table["person_id"].eq(-1).all()
    assert annotations.table["video_id"].nunique() == 64
    assert set(annotations.table["action_id"]) <= set(range(1, 15))


def test_padding_crlf_bom_and_seven_columns(tmp_path):
    text = "\ufeffaaaaaaaaaaa,0902,0.1,0.1,0.5,0.5,12,0\r\naaaaaaaaaaa,902,0.1,0.1,0.5,0.5,79,0\r\n"
    text += "bbbbbbbbbbb,903,0.2,0.2,0.6,0.6,11\r\n"
    annotations = read_annotations(write(tmp_path, text))
    assert annotations.report == []
    keyframes = annotations.keyframes()
    assert list(keyframes) == [("aaaaaaaaaaa", 902), ("bbbbbbbbbbb", 903)]
    assert keyframes[("aaaaaaaaaaa", 902)][0].actions == (12, 79)
    assert keyframes[("bbbbbbbbbbb", 903)][0].person_id == -1


def test_same_box_different_person_ids_stay_two_persons(tmp_path):
    text = "aaaaaaaaaaa,902,0.1,0.1,0.5,0.5,12,0\naaaaaaaaaaa,902,0.1,0.1,0.5,0.5,12,1\n"
    persons = read_annotations(write(tmp_path, text)).keyframes()[("aaaaaaaaaaa", 902)]
    assert [p.person_id for p in persons] == [0, 1]


BAD_ROWS = [
    ("aaaaaaaaaaa,902,0.1,zero,0.5,0.5,12,0", "y1", "not a number: 'zero'"),
    ("aaaaaaaaaaa,902,0.1,0.1,0.5,0.5,12", None, None),  # fine: 7 columns
    ("aaaaaaaaaaa,902,0.1,0.1,0.5", "row", "wrong column count: 5"),
    ("aaaaaaaaaaa,902,0.1,0.1,0.5,0.5,12,0,9", "row", "wrong column count: 9"),
    ("aaaaaaaaaaa,902,0.5,0.1,0.5,0.5,12,0", "x2", "x2 <= x1"),
    ("aaaaaaaaaaa,902,0.1,0.6,0.5,0.5,12,0", "y2", "y2 <= y1"),
    ("aaaaaaaaaaa,902,0.1,0.1,1.02,0.5,12,0", "x2", "outside [0, 1]: '1.02'"),
    ("aaaaaaaaaaa,902,-0.1,0.1,0.5,0.5,12,0", "x1", "outside [0, 1]"),
    ("aaaaaaaaaaa,902,0.1,0.1,0.5,0.5,81,0", "action_id", "action id 81 not in the label map"),
    ("aaaaaaaaaaa,902,0.1,0.1,0.5,0.5,1.5,0", "action_id", "not an integer: '1.5'"),
    ("aaaaaaaaaaa,902,0.1,0.1,0.5,0.5,12,3_", "person_id", "not an integer: '3_'"),
    ("aaaaaaaaaaa,9o2,0.1,0.1,0.5,0.5,12,0", "timestamp", "not a whole number of seconds"),
    ("../../etc/pw,902,0.1,0.1,0.5,0.5,12,0", "video_id", "invalid video id"),
    ("ccccccccccc,904,0.1,0.1,0.5,0.5,12,0", "timestamp", "excluded keyframe"),
    # each value at its type's range (the dataset stores int32), ASCII digits only, and a
    # quote is a character like any other (it never joins lines into one field)
    ("aaaaaaaaaaa,902,0.1,0.1,0.5,0.5,12,3000000000", "person_id",
     "outside 0..2147483647: '3000000000'"),
    ("aaaaaaaaaaa,902,0.1,0.1,0.5,0.5,12,2147483647", None, None),
    ("aaaaaaaaaaa,100000000000000000000,0.1,0.1,0.5,0.5,12,0", "timestamp", "outside 0.."),
    ("aaaaaaaaaaa,902,0.1,0.1,0.5,0.5,100000000000000000000,0", "action_id", "outside 0.."),
    ("aaaaaaaaaaa,\uff19\uff10\uff12,0.1,0.1,0.5,0.5,12,0", "timestamp",
     "not a whole number of seconds"),
    ("aaaaaaaaaaa,902,\uff10.1,0.1,0.5,0.5,12,0", "x1", "not a number"),
    ("aaaaaaaaaaa,902,0.1,0.1,0.5,0.5,\uff11\uff12,0", "action_id", "not an integer"),
    ("aaaaaaaaaaa,902,nan,0.1,0.5,0.5,12,0", "x1", "not a number: 'nan'"),
    ('"aaaaaaaaaaa,902,0.1,0.1,0.5,0.5,12,0', "video_id", "invalid video id"),
    ('aaaaaaaaaaa,902,"0.1,0.1,0.5,0.5,12,0', "x1", "not a number"),
]


@pytest.mark.parametrize(("row", "field", "reason"), BAD_ROWS)
def test_each_bad_row_is_reported_with_line_and_field(tmp_path, labelmap, row, field, reason):
    good = "aaaaaaaaaaa,903,0.1,0.1,0.5,0.5,12,0\n"
    path = write(tmp_path, good + row + "\n" + good)
    annotations = read_annotations(path, labelmap, excluded={("ccccccccccc", 904)})
    assert annotations.rows_read == 3
    if field is None:
        assert annotations.report == [] and len(annotations.table) == 3
        return
    [rejection] = annotations.report
    assert (rejection.file, rejection.line, rejection.field) == (str(path), 2, field)
    assert reason in rejection.reason
    assert list(annotations.table["line"]) == [1, 3]


def test_hostile_detections_are_row_rejections(tmp_path):
    text = ("aaaaaaaaaaa,902,0.1,0.1,0.5,0.5,12,1e400\n"
            "aaaaaaaaaaa,902,0.1,0.1,0.5,0.5,12,\uff10.5\n"
            "aaaaaaaaaaa,99999999999999999999999,0.1,0.1,0.5,0.5,12,0.5\n"
            '"aaaaaaaaaaa,902,0.1,0.1,0.5,0.5,12,0.5\n'
            "aaaaaaaaaaa,902,0.1,0.1,0.5,0.5,12,0.5\n")
    annotations = read_annotations(write(tmp_path, text), kind="detections")
    assert [(r.line, r.field) for r in annotations.report] == [
        (1, "score"), (2, "score"), (3, "timestamp"), (4, "video_id")]
    assert list(annotations.table["line"]) == [5]


def test_within_tolerance_is_clipped(tmp_path):
    path = write(tmp_path, "aaaaaaaaaaa,902,-0.004,0.1,1.009,0.5,12,0\n")
    [person] = read_annotations(path).keyframes()[("aaaaaaaaaaa", 902)]
    assert person.box == (0.0, 0.1, 1.0, 0.5)


def test_two_column_rows_are_keyframes_without_boxes(tmp_path):
    path = write(tmp_path, "aaaaaaaaaaa,0902\naaaaaaaaaaa,903,0.1,0.1,0.5,0.5,12\n")
    annotations = read_annotations(path)
    assert annotations.empty_keyframes == {("aaaaaaaaaaa", 902)}
    assert annotations.keyframes()[("aaaaaaaaaaa", 902)] == []
    assert annotations.summary()["rows_used"] == 2


def test_detections_keep_coordinates_and_need_scores(tmp_path):
    text = ("aaaaaaaaaaa,902,-0.2,0.1,1.3,0.5,12,0.75\n"
            "aaaaaaaaaaa,902,0.1,0.1,0.5,0.5,12,high\n"
            "aaaaaaaaaaa,902,0.1,0.1,0.5,0.5,12\n")
    annotations = read_annotations(write(tmp_path, text), kind="detections")
    assert annotations.table[["x1", "x2", "score"]].values.tolist() == [[-0.2, 1.3, 0.75]]
    assert [(r.line, r.field) for r in annotations.report] == [(2, "score"), (3, "row")]


def test_empty_and_missing_files_raise_one_line_errors(tmp_path):
    with pytest.raises(AnnotationError, match="empty file"):
        read_annotations(write(tmp_path, "\n\n"))
    with pytest.raises(AnnotationError, match="no such file"):
        read_annotations(tmp_path / "missing.csv")
    with pytest.raises(AnnotationError, match="cannot read"):
        read_annotations(write(tmp_path, "x", encoding="utf-16"))


@pytest.mark.parametrize("reader", [read_annotations, read_excluded])
def test_readers_refuse_endless_lines_and_large_files_with_bounded_memory(tmp_path, reader):
    # /dev/zero once took an evaluation to 23 GB; now the first long line ends the read.
    for source in (Path("/dev/zero"), write(tmp_path, "\0" * 10_000)):
        if source.exists():
            with pytest.raises(AnnotationError, match=r"a line longer than 4,096 bytes"):
                reader(source)
    rows = write(tmp_path, "aaaaaaaaaaa,902,0.1,0.1,0.5,0.5,12,1\n" * 100)  # 3,700 bytes
    assert len(read_annotations(rows, max_bytes=4000).table) == 100
    with pytest.raises(AnnotationError, match=r"more than the 3,000 bytes allowed for an AVA "
                       r"CSV \(max_bytes; evaluate --max-csv-mb\)"):
        read_annotations(rows, max_bytes=3000)


def test_excluded_timestamps(ava_data, tmp_path):
    excluded = read_excluded(ava_data / "ava_val_excluded_timestamps_v2.2.csv")
    assert excluded and all(isinstance(s, int) for _, s in excluded)
    with pytest.raises(AnnotationError, match=r"bad.csv:2: expected 'video_id,timestamp'"):
        read_excluded(write(tmp_path, "aaaaaaaaaaa,0902\naaaaaaaaaaa\n", name="bad.csv"))
    for value in ("\uff10\uff19\uff10\uff12", "100000000000000000000"):
        with pytest.raises(AnnotationError, match=r"big.csv:1: expected"):
            read_excluded(write(tmp_path, f"aaaaaaaaaaa,{value}\n", name="big.csv"))


def test_excluded_timestamps_without_rows_exclude_nothing(tmp_path):
    assert read_excluded(write(tmp_path, "")) == set()
    assert read_excluded(write(tmp_path, "\n \n")) == set()


def test_keyframe_key_round_trips_and_refuses_other_names():
    assert keyframe_key("1j20qq1JyX4", 902) == "1j20qq1JyX4_0902"
    assert keyframe_key("-5KQ66BBWC4", 12) == "-5KQ66BBWC4_0012"
    for video_id, second in (("1j20qq1JyX4", 902), ("_7oWZq_s_Sk", 1798), ("a" * 11, 12345)):
        assert parse_keyframe_key(keyframe_key(video_id, second)) == (video_id, second)
    for bad in ("1j20qq1JyX4_902", "1j20qq1JyX4-0902", "../etc/pass_0902", "1j20qq1JyX4_0902.jpg",
                "1j20qq1JyX4_\uff10\uff19\uff10\uff12", "1j20qq1JyX4_9999999999"):
        with pytest.raises(ValueError, match="not a keyframe key"):
            parse_keyframe_key(bad)
    with pytest.raises(ValueError, match="invalid video id"):
        keyframe_key("../x", 902)


@pytest.mark.parametrize(
    "bad", ["../x", "-oEVIL", "a;b", "a" * 12, "", "abc def ghi", "abcdefghijk\n"]
)
def test_check_video_id_rejects_hostile_ids(bad):
    with pytest.raises(ValueError, match="invalid video id"):
        check_video_id(bad)


def test_check_video_id_accepts_real_ids():
    assert check_video_id("-5KQ66BBWC4") == "-5KQ66BBWC4"
    assert check_video_id("_7oWZq_s_Sk") == "_7oWZq_s_Sk"


def test_inspect_cli_json(ava_data, capsys):
    argv = ["inspect", str(ava_data / EXCERPT), "--json", "--labelmap",
            str(ava_data / "ava_action_list_v2.2.pbtxt")]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["rows"], summary["rows_used"], summary["keyframes"], summary["persons"]) == (
        341, 340, 110, 148)
    assert summary["rejected"] == [
        {"line": 16, "field": "person_id", "reason": "not an integer: '3_'"}]
    assert summary["labels_per_class"]["stand"] == 133


def test_inspect_cli_excluded_and_readable_summary(ava_data, tmp_path, capsys):
    excluded = write(tmp_path, f"{VID},0902\n", name="excluded.csv")
    assert main(["inspect", str(ava_data / EXCERPT), "--excluded", str(excluded)]) == 0
    out = capsys.readouterr().out
    assert "109 keyframes" in out and "excluded keyframe" in out and ":16: person_id" in out


def test_inspect_cli_hostile_values_are_reported_rows_not_tracebacks(tmp_path, capsys):
    text = ("aaaaaaaaaaa,902,0.1,0.1,0.5,0.5,12,3000000000\n"
            "aaaaaaaaaaa,100000000000000000000,0.1,0.1,0.5,0.5,12,1\n"
            "aaaaaaaaaaa,\uff19\uff10\uff12,0.1,0.1,0.5,0.5,12,1\n"
            '"aaaaaaaaaaa,903,0.1,0.1,0.5,0.5,12,1\n'
            "aaaaaaaaaaa,904,0.1,0.1,0.5,0.5,12,1\n")
    assert main(["inspect", str(write(tmp_path, text)), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["rows"], summary["rows_used"]) == (5, 1)
    assert [(r["line"], r["field"]) for r in summary["rejected"]] == [
        (1, "person_id"), (2, "timestamp"), (3, "timestamp"), (4, "video_id")]


def test_inspect_cli_unreadable_file_is_one_line(tmp_path, capsys):
    assert main(["inspect", str(write(tmp_path, ""))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "empty file" in err


def test_one_home_writes_what_it_reads(tmp_path):
    truth = [("aaaaaaaaaaa", 902, 0.1, 0.2, 0.5, 0.6, 12, 3), ("bbbbbbbbbbb", 7, 0, 0, 1, 1, 80, 0)]
    write_rows(tmp_path / "gt.csv", truth)
    assert (tmp_path / "gt.csv").read_text().splitlines()[0] == (
        "aaaaaaaaaaa,0902,0.100,0.200,0.500,0.600,12,3")
    gt = read_annotations(tmp_path / "gt.csv")
    assert [tuple(r) for r in gt.table.drop(columns="line").itertuples(index=False)] == truth
    write_rows(tmp_path / "det.csv", [(*truth[0][:7], 0.123456789)], kind="detections")
    det = read_annotations(tmp_path / "det.csv", kind="detections")
    assert det.table["score"].tolist() == [0.123457]
    write_excluded(tmp_path / "ex.csv", {("bbbbbbbbbbb", 7), ("aaaaaaaaaaa", 902)})
    assert read_excluded(tmp_path / "ex.csv") == {("bbbbbbbbbbb", 7), ("aaaaaaaaaaa", 902)}
    assert annotation_csv_name("val", "2.2") == "ava_val_v2.2.csv"
    assert companion_excluded_name("ava_val_v2.2.csv") == excluded_csv_name("val", "2.2") == (
        "ava_val_excluded_timestamps_v2.2.csv")
    assert companion_excluded_name("mine.csv") is None
