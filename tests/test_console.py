"""The build's own console output: per-video progress (bar on a terminal, plain lines
otherwise) and the summary of what is missing."""

from __future__ import annotations

import io
import os

import pytest

from ava_keyframes import console
from ava_keyframes.plan import VideoOutcome


class _Terminal(io.StringIO):
    """A terminal's stream; its file descriptor (/dev/null's) is only asked for its size."""

    def __init__(self) -> None:
        super().__init__()
        self._null = open(os.devnull, "w")  # noqa: SIM115 - closed with the stream

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._null.fileno()

    def close(self) -> None:
        self._null.close()
        super().close()


def _outcomes() -> list[VideoOutcome]:
    return [VideoOutcome("train", "a" * 11, 3, written=3, bytes_fetched=2_000_000),
            VideoOutcome("train", "b" * 11, 2, unavailable="HTTP 404")]


def test_progress_is_one_plain_line_per_video_when_not_a_terminal():
    stream = io.StringIO()
    progress = console.VideoProgress("ava_keyframes/v2.2/2.0.0 train", 2, stream)
    for outcome in _outcomes():
        progress.update(outcome)
    progress.close()
    assert stream.getvalue().splitlines() == [
        f"ava_keyframes/v2.2/2.0.0 train: video 1/2 {'a' * 11}: 3 keyframes; "
        "3 keyframes, 2.0 MB fetched",
        f"ava_keyframes/v2.2/2.0.0 train: video 2/2 {'b' * 11}: 0 keyframes (missing, see the "
        "summary at the end); 3 keyframes, 2.0 MB fetched",
    ]
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()


@pytest.mark.parametrize("columns", [80, 200])
def test_progress_is_a_bar_with_videos_keyframes_and_bytes_on_a_terminal(monkeypatch, columns):
    # A terminal `columns` wide as tqdm measures it: os.get_terminal_size of its descriptor, or
    # (tqdm 4.66) COLUMNS and LINES when the ioctl on it fails
    size = os.terminal_size((columns, 24))
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=None: size)
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setenv("LINES", "24")
    stream = _Terminal()
    progress = console.VideoProgress("ava_keyframes/v2.2/2.0.0 train", 2, stream)
    for outcome in _outcomes():
        progress.update(outcome)
    progress.close()
    shown = stream.getvalue()
    stream.close()
    last = shown.split("\r")[-1]
    assert "\r" in shown and "video 1/2" not in shown
    assert "2/2 videos, 3 keyframes, 2.0 MB fetched" in last
    assert len(last.rstrip("\n")) <= columns


def test_summary_outside_tfds_build_is_printed_at_once(capsys):
    console.summary(["ava_keyframes/v2.2/2.0.0 train: video x missing: gone"])
    assert capsys.readouterr().out == "ava_keyframes/v2.2/2.0.0 train: video x missing: gone\n"
    console.summary([])
    assert capsys.readouterr().out == ""


def test_dataset_info_description_is_a_summary_not_the_card(tmp_path):
    """`tfds build` prints DatasetInfo once per config: the 200-line card is not in it."""
    import tensorflow_datasets as tfds

    import ava_keyframes  # noqa: F401 - registers the dataset

    info = tfds.builder("ava_keyframes/v2.2", data_dir=str(tmp_path)).info
    assert info.description.startswith("AVA Actions keyframes")
    assert len(info.description) < 400 and "\n" not in info.description
    assert "README.md" in info.description
    assert "@" in info.citation  # CITATIONS.bib still read
    assert len(repr(info).splitlines()) < 100
