"""Reading a user's text file with bounded memory, whatever it turns out to be."""

from __future__ import annotations

from pathlib import Path

from etils import epath

_CHUNK = 2**20


def read_bounded(path: str | Path, max_bytes: int, what: str, error: type[ValueError],
                 max_line: int | None = None, raise_limit: str = "") -> str:
    """A file's UTF-8 text (a leading BOM dropped), read in chunks and refused in one line
    (raising ``error``) as soon as it passes ``max_bytes`` or, with ``max_line``, holds a
    longer line: ``/dev/zero`` or a 2 GB file costs no more memory than the limits. ``what``
    names the expected kind of file in the message ("an AVA CSV"), ``raise_limit`` how to
    allow a larger file."""
    chunks, total, run = [], 0, 0
    try:
        with epath.Path(path).open("rb") as handle:  # gs://... too (a remote --manual_dir)
            while chunk := handle.read(_CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise error(f"{path}: more than the {max_bytes:,} bytes allowed for {what}"
                                + (f" ({raise_limit})" if raise_limit else ""))
                if max_line is not None:
                    run = _longest_line(chunk, run, max_line, path, what, error)
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8-sig")
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as problem:
        raise error(f"{path}: cannot read ({problem})") from None


def _longest_line(chunk: bytes, run: int, max_line: int, path: str | Path, what: str,
                  error: type[ValueError]) -> int:
    """The length of the line still open at the end of ``chunk`` (``run`` bytes of it came
    before); raises ``error`` if any line seen so far is longer than ``max_line``."""
    parts = chunk.split(b"\n")
    lengths = [run + len(parts[0]), *map(len, parts[1:])]
    if max(lengths) > max_line:
        raise error(f"{path}: a line longer than {max_line:,} bytes: not {what}")
    return lengths[-1]
