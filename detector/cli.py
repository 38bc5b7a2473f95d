"""`ava-detector`: train, evaluate, predict, export (keras-retinanet's verbs)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


class CliError(Exception):
    """A user's mistake: printed as one line, exit code 2, no traceback."""


# --- train ---

# --- evaluate ---

# --- predict ---

# --- export ---


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ava-detector",
        description="KerasCV RetinaNet on AVA keyframes: train, evaluate, predict, export.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # --- parsers ---
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as error:
        print(f"ava-detector: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
