"""What a build shows on the console besides TFDS's own lines: per-video progress while a
split is generated, and the summary of what is missing, printed last.

On a terminal the progress is one bar per split (videos done, keyframes written, megabytes
fetched); otherwise (a pipe, a log file) it is one plain line per video, with no carriage
return or colour code. Under ``tfds build`` the summary waits for the end of the run, after
TFDS's ``DatasetInfo`` printout of each config, so that it is the last thing on the console.
"""

from __future__ import annotations

import atexit
import sys
from typing import TYPE_CHECKING, TextIO

from tqdm import tqdm

from ava_keyframes.plan import tfds_build_args

if TYPE_CHECKING:
    from ava_keyframes.plan import VideoOutcome

_LAST: list[str] = []


def plain_tfds_bars() -> None:
    """Inside ``tfds build`` with stderr not a terminal, turn TFDS's own progress bars off:
    they would fill a log with carriage returns and cursor moves, and glue our lines to
    theirs. (A notebook's stderr is no terminal either, hence only under ``tfds build``.)"""
    if tfds_build_args() is not None and not sys.stderr.isatty():
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()


def summary(lines: list[str]) -> None:
    """Print ``lines`` (what a build could not get): at once when called from Python, at the
    end of the process inside ``tfds build``."""
    if not lines:
        return
    if tfds_build_args() is None:
        print(*lines, sep="\n", flush=True)
        return
    if not _LAST:
        atexit.register(_print_last)
    _LAST.extend(lines)


def _print_last() -> None:
    print(*_LAST, sep="\n", flush=True)
    _LAST.clear()


# The counts come first and the time last, so that on a narrow terminal (80 columns) it is the
# bar and the time that are cut, never what was done.
_BAR_FORMAT = "{desc}: {n_fmt}/{total_fmt} videos{postfix} |{bar}| {elapsed}<{remaining}"


class VideoProgress:
    """Progress of one split's generation, one video at a time."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label, self.total, self.stream = label, total, stream or sys.stdout
        self.done = self.keyframes = self.bytes = 0
        self._bar = (tqdm(total=total, desc=label, file=self.stream, dynamic_ncols=True,
                          bar_format=_BAR_FORMAT) if self.stream.isatty() else None)

    def update(self, outcome: VideoOutcome) -> None:
        """Count ``outcome``'s video as done."""
        self.done += 1
        self.keyframes += outcome.written
        self.bytes += outcome.bytes_fetched
        totals = f"{self.keyframes} keyframes, {self.bytes / 1e6:.1f} MB fetched"
        if self._bar is not None:
            self._bar.set_postfix_str(totals, refresh=False)
            self._bar.update()
            return
        state = "" if outcome.written or not (outcome.unavailable or outcome.error) else \
            " (missing, see the summary at the end)"
        print(f"{self.label}: video {self.done}/{self.total} {outcome.video_id}: "
              f"{outcome.written} keyframes{state}; {totals}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
