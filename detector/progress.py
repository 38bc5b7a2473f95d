"""Progress of the long loops of predict and evaluate (images through the model), on stderr:
a tqdm bar on a terminal, plain lines otherwise (a pipe or log file gets no carriage return,
colour code or backspace), nothing when off. stdout keeps the results alone."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm


class Progress:
    """Counts images; `label` says what runs, `total` how many are expected (None: unknown)."""

    def __init__(self, label: str, total: int | None = None, *, enabled: bool = True,
                 stream: TextIO | None = None) -> None:
        self.label, self.total, self.enabled = label, total, enabled
        self.stream = stream or sys.stderr
        self.done = 0
        self._bar = (tqdm(total=total, desc=label, unit="image", file=self.stream,
                          dynamic_ncols=True, leave=False)
                     if enabled and self.stream.isatty() else None)

    def update(self, count: int = 1) -> None:
        """`count` more images done: the bar moves, or one plain line is printed."""
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif self.enabled:
            of = f"/{self.total}" if self.total else ""
            print(f"{self.label}: {self.done}{of} images", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
