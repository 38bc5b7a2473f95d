"""ava_keyframes.runner: what both command lines share."""

from __future__ import annotations

import argparse
import os
import sys

import pytest

from ava_keyframes.runner import (
    MAX_SECONDS,
    CliError,
    VerbParser,
    output_path,
    parse_seconds,
    positive_number,
    quiet_libraries,
    run,
    user_errors,
)


def test_seconds_grammar_lists_ranges_and_spellings():
    assert parse_seconds("902,903,910-912") == {902: ["902"], 903: ["903"], 910: ["910"],
                                                911: ["911"], 912: ["912"]}
    assert parse_seconds("0902-0903, 902") == {902: ["0902", "902"], 903: ["0903"]}
    assert parse_seconds("902.5,1", fractions=True) == {902.5: ["902.5"], 1: ["1"]}


@pytest.mark.parametrize(("text", "fractions", "needle"), [
    ("902.5", False, "'902.5' is not a second"),
    ("9x", True, "'9x' is not a second"),
    ("-1", True, "'-1' is not a second"),
    ("902.5-903", True, "'902.5-903' is not a second"),
    ("910-902", False, "ends before it starts"),
    ("0-99999999999", False, f"more than {MAX_SECONDS} seconds"),
    ("99999999999999999999999", True, "past the last second a keyframe can have"),
    ("2147483648", False, "past the last second"),
    (",".join(f"1-{MAX_SECONDS}" for _ in range(2)), False, "more than"),
])
def test_seconds_grammar_refuses_with_the_part_named(text, fractions, needle):
    with pytest.raises(CliError, match=needle):
        parse_seconds(text, fractions=fractions)


def test_output_path_makes_folders_and_names_what_is_wrong(tmp_path):
    assert output_path(tmp_path / "a" / "b" / "x.json") == tmp_path / "a" / "b" / "x.json"
    assert (tmp_path / "a" / "b").is_dir()
    assert output_path(tmp_path / "c", folder=True).is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(CliError, match="exists and is not a folder"):
        output_path(tmp_path / "file", folder=True)
    with pytest.raises(CliError, match="file: exists and is not a folder"):
        output_path(tmp_path / "file" / "x.json")
    with pytest.raises(CliError, match="cannot create the folder"):
        output_path(tmp_path / "file" / "sub" / "x.json")
    with pytest.raises(CliError, match="is a folder, expected a file name"):
        output_path(tmp_path / "c")


def _tool() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tool")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=VerbParser)
    verb = sub.add_parser("verb")
    verb.add_argument("--lr", type=positive_number)

    def call(args):
        with user_errors(KeyError):
            raise KeyError("a library's error")

    verb.set_defaults(func=call)
    return parser


def test_bad_flags_and_library_errors_are_one_line(capsys):
    for value in ("nan", "inf", "-1", "0", "x"):
        assert run(_tool(), ["verb", f"--lr={value}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("tool: error: argument --lr: must be a positive number")
        assert err.count("\n") == 1 and repr(value) in err
    assert run(_tool(), ["verb", "--lr", "0.5"]) == 2
    assert capsys.readouterr().err == "tool: error: \"a library's error\"\n"


def test_quiet_libraries_drops_native_log_lines_and_keeps_the_rest(capfd):
    with quiet_libraries():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are "
                    b"written to STDERR\n")
        os.write(2, b"E0000 00:00:1796219095.547318   27807 cuda_platform.cc:52] failed call "
                    b"to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR "
                    b"(303)\n")
        os.write(2, b"I0000 00:00:1796216606.260433   11289 cudart_stub.cc:31] Could not find "
                    b"cuda drivers on your machine, GPU will not be used.\n")
        os.write(2, b"ffmpeg: a child's line\n")
        print("ours", file=sys.stderr)
    assert capfd.readouterr().err == "ours\nffmpeg: a child's line\n"


def test_quiet_libraries_restores_environment_loggers_and_warning_filters(monkeypatch):
    import logging
    import warnings

    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    logging.getLogger("absl").setLevel(logging.DEBUG)
    filters = list(warnings.filters)
    with quiet_libraries():
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
        assert logging.getLogger("absl").level == logging.ERROR
        assert warnings.filters != filters
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert logging.getLogger("absl").level == logging.DEBUG
    assert warnings.filters == filters
    logging.getLogger("absl").setLevel(logging.NOTSET)


def test_a_reader_that_goes_away_ends_the_verb_quietly(ava_data):
    """`ava-keyframes labelmap MAP | head -0`: the pipe closes before the first line."""
    import subprocess

    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    result = subprocess.run(  # noqa: S603 (argument list)
        [sys.executable, "-m", "ava_keyframes.cli", "labelmap",
         str(ava_data / "ava_action_list_v2.2.pbtxt")],
        stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)
    os.close(write)
    assert result.returncode == 141
    assert result.stderr == ""
