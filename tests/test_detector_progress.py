"""detector.progress: a bar on a terminal, plain lines in a log, nothing when off."""

from __future__ import annotations

import io

from detector.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_not_a_terminal():
    log = io.StringIO()
    with Progress("predict", 3, stream=log) as progress:
        progress.update()
        progress.update(2)
    assert log.getvalue() == "predict: 1/3 images\npredict: 3/3 images\n"
    unknown = io.StringIO()
    Progress("ava:validation", stream=unknown).update(8)
    assert unknown.getvalue() == "ava:validation: 8 images\n"


def test_a_bar_on_a_terminal_and_nothing_when_off():
    terminal = _Terminal()
    with Progress("predict", 2, stream=terminal) as progress:
        progress.update(2)
    shown = terminal.getvalue()
    assert "\rpredict:   0%" in shown and "0/2" in shown and "images\n" not in shown
    off = _Terminal()
    with Progress("predict", 2, enabled=False, stream=off) as progress:
        progress.update(2)
    assert off.getvalue() == "" and progress.done == 2
