import csv
import json
from pathlib import Path

import pytest

from ava_keyframes.cli import main
from ava_keyframes.labelmap import (
    LabelMapError,
    default_labelmap_path,
    evaluation_labelmap_path,
    read_labelmap,
    write_classes_csv,
)


def test_real_80_class_map(ava_data):
    labelmap = read_labelmap(ava_data / "ava_action_list_v2.2.pbtxt")
    assert len(labelmap) == 80
    assert labelmap.ids == list(range(1, 81))
    assert labelmap.name_of(49) == "ride (e.g., a bike, a car, a horse)"
    assert labelmap.types[0] == "PERSON_MOVEMENT"
    assert set(labelmap.types) == {"PERSON_MOVEMENT", "OBJECT_MANIPULATION", "PERSON_INTERACTION"}
    assert labelmap.index_of(12) == 11 and labelmap.id_of(11) == 12


def test_real_60_class_evaluation_map(ava_data):
    labelmap = read_labelmap(ava_data / "ava_action_list_v2.2_for_activitynet_2019.pbtxt")
    assert len(labelmap) == 60
    assert 2 not in labelmap and 80 in labelmap
    assert labelmap.index_of(80) == 59
    assert labelmap.types == [None] * 60
    assert labelmap.name_of(79) == "talk to (e.g., self, a person, a group)"


def test_bundled_maps_equal_the_official_files(ava_data):
    assert read_labelmap(default_labelmap_path()) == read_labelmap(
        ava_data / "ava_action_list_v2.2.pbtxt"
    )
    assert len(read_labelmap(evaluation_labelmap_path())) == 60


def test_parser_handles_comments_quotes_escapes_and_layout(tmp_path):
    path = tmp_path / "map.pbtxt"
    path.write_text(
        "# a comment\n"
        "label{name:'single \\'quoted\\''  label_id:7 label_type:PERSON_MOVEMENT}\n"
        "item {\n\t\tname: \"tab, \\\"escaped\\\" (and commas)\"  # trailing comment\n"
        "    id: 3\n}\n"
        "item < name: \"caf\\303\\251\" id: -1 >\n",
        encoding="utf-8",
    )
    labelmap = read_labelmap(path)
    assert labelmap.ids == [7, 3, -1]
    assert labelmap.names[0] == "single 'quoted'"
    assert labelmap.names[1] == 'tab, "escaped" (and commas)'
    assert labelmap.types == ["PERSON_MOVEMENT", None, None]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('item {\n  name: "a"\n  id: 1\n', 1, "never closed"),
        ('item {\n  name: "a"\n}\n', 1, "'id': missing"),
        ('item { name: "a" id: 1 }\nitem {\n name: "b"\n id: 1\n}\n', 4, "duplicate id 1"),
        ('item {\n name: "a"\n id: one\n}\n', 3, "not an integer"),
        ('item {\n name: "a\n id: 1\n}\n', 2, "unexpected character"),
    ],
    ids=["unclosed", "missing-id", "duplicate-id", "non-integer-id", "unterminated-string"],
)
def test_malformed_pbtxt_names_file_and_line(tmp_path, text, line, words):
    path = tmp_path / "bad.pbtxt"
    path.write_text(text)
    with pytest.raises(LabelMapError) as caught:
        read_labelmap(path)
    assert str(caught.value).startswith(f"{path}:{line}:")
    assert words in str(caught.value)


def test_cli_json_and_classes_csv(ava_data, tmp_path, capsys):
    out = tmp_path / "classes.csv"
    assert main(["labelmap", str(ava_data / "ava_action_list_v2.2.pbtxt"), "--json",
                 "--classes-csv", str(out)]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert entries[48] == {"id": 49, "name": "ride (e.g., a bike, a car, a horse)",
                           "type": "OBJECT_MANIPULATION"}
    rows = list(csv.reader(out.open()))
    assert rows[48] == ["ride (e.g., a bike, a car, a horse)", "48"]
    assert '"ride (e.g., a bike, a car, a horse)",48' in out.read_text()
    write_classes_csv(read_labelmap(ava_data / "ava_action_list_v2.2_for_activitynet_2019.pbtxt"),
                      out)
    assert list(csv.reader(out.open()))[-1] == ["watch (a person)", "59"]


def test_cli_json_type_null_for_item_form(ava_data, capsys):
    main(["labelmap", str(ava_data / "ava_action_list_v2.2_for_activitynet_2019.pbtxt"),
          "--json"])
    assert json.loads(capsys.readouterr().out)[0]["type"] is None


def test_cli_malformed_is_one_line_error(tmp_path, capsys):
    path = tmp_path / "bad.pbtxt"
    path.write_text("item {\n name: 'x'\n")
    assert main(["labelmap", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}:1:" in err and "Traceback" not in err


def test_cli_classes_csv_into_a_folder_is_one_line_error(ava_data, tmp_path, capsys):
    code = main(["labelmap", str(ava_data / "ava_action_list_v2.2.pbtxt"),
                 "--classes-csv", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path) in err and "Traceback" not in err


def test_ids_outside_int32_are_refused(tmp_path):
    path = tmp_path / "big.pbtxt"
    path.write_text('label { name: "x" label_id: 99999999999999999999 }\n')
    with pytest.raises(LabelMapError, match=r"big.pbtxt:1: field 'label_id': .* int32 range"):
        read_labelmap(path)


def test_labelmap_of_an_endless_file_is_refused_at_one_mebibyte(tmp_path, capsys):
    big = tmp_path / "big.pbtxt"
    big.write_text('item { name: "a" id: 1 }\n' * 50_000)  # 1.2 MB of valid blocks
    with pytest.raises(LabelMapError, match=r"big.pbtxt: more than the 1,048,576 bytes"):
        read_labelmap(big)
    if Path("/dev/zero").exists():  # once 11.8 GB in 15 s
        assert main(["labelmap", "/dev/zero"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "/dev/zero: more than the 1,048,576 bytes" in err
