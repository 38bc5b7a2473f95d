"""`ava-keyframes`: one verb per job on the dataset side."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


class CliError(Exception):
    """A user's mistake: printed as one line, exit code 2, no traceback."""


# --- labelmap ---

# --- inspect ---

# --- synth ---

# --- download ---

# --- frames ---

# --- export-csv ---


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ava-keyframes",
        description="AVA Actions keyframes: label maps, annotations, videos, frames, TFDS export.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # --- parsers ---
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as error:
        print(f"ava-keyframes: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
