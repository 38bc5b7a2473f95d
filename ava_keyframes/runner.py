"""What both command-line tools share: the runner, the user-error idiom, quiet libraries and
the `--seconds` grammar. Imports nothing heavy, so that a verb pays only for what it uses."""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from ava_keyframes import __version__
from ava_keyframes.labelmap import INT32_MAX

MAX_SECONDS = 86_400  # one day of video: more keyframes than any --seconds list needs
# A line of TensorFlow's / XLA's / absl's C++ logging ("I0000 00:00:17.2 1234 port.cc:153] ..."),
# and absl's note that precedes the first of them.
_NATIVE_LOG_LINE = re.compile(
    rb"^(?:[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\] |WARNING: All log messages before "
    rb"absl::InitializeLog\(\) is called are written to STDERR$|To enable the following "
    rb"instructions: .*rebuild TensorFlow with the appropriate compiler flags\.$)"
)
_LIBRARIES = ("tensorflow", "keras", "keras_cv", "tensorflow_datasets", "absl", "h5py", "google")


class CliError(Exception):
    """A user's mistake: printed as one line, exit code 2, no traceback."""


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` shows each option's default, unless it has none (None, False) or its help
    already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default in (None, False, argparse.SUPPRESS) or "default" in text
                or action.option_strings == [] or action.nargs == 0):
            return text
        return f"{text} (default: %(default)s)".lstrip()


class VerbParser(argparse.ArgumentParser):
    """A verb's parser (pass as ``add_subparsers(parser_class=VerbParser)``): every verb takes
    ``-v/--verbose``, which lets the libraries' start-up and deprecation logs through, and its
    ``--help`` shows every option's default."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("-v", "--verbose", action="store_true",
                          help="show TensorFlow's, CUDA's and other libraries' logs")

    def error(self, message: str) -> NoReturn:
        """A bad flag is a user's mistake like any other: one line, exit code 2."""
        tool = self.prog.split()[0]
        self.exit(2, f"{tool}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    if not (text.strip().isascii() and text.strip().isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def count(text: str) -> int:
    """argparse type: a whole number >= 0."""
    if not (text.strip().isascii() and text.strip().isdigit()):
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return int(text)


def positive_number(text: str) -> float:
    """argparse type: a finite number > 0 (not nan, inf or negative)."""
    return _number(text, lambda x: x > 0, "a positive number")


def probability(text: str) -> float:
    """argparse type: a number from 0 to 1."""
    return _number(text, lambda x: 0 <= x <= 1, "a number from 0 to 1")


def _number(text: str, valid: Callable[[float], bool], what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and valid(value)):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def verb_parser(prog: str, description: str,
                adders: Sequence[Callable[[argparse._SubParsersAction], None]]
                ) -> argparse.ArgumentParser:
    """A tool's parser: one sub-command per verb, each added by one of ``adders``, and
    ``--version`` (the package's, both tools ship in it)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=VerbParser)
    for add in adders:
        add(sub)
    return parser


@contextmanager
def user_errors(*kinds: type[BaseException]) -> Iterator[None]:
    """Inside, an exception of ``kinds`` (a library's way of saying the input is wrong)
    becomes a CliError carrying its message: one line for the user, no traceback."""
    try:
        yield
    except kinds as error:
        raise CliError(str(error)) from None


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and run the chosen command; a CliError becomes one line and exit 2.
    Unless the verb got ``-v``, the libraries run quietly (`quiet_libraries`)."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a bad flag already reported by argparse
        return done.code if isinstance(done.code, int) else 2
    try:
        if getattr(args, "verbose", False):
            return args.func(args)
        with quiet_libraries():
            return args.func(args)
    except CliError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush
        return 141  # 128 + SIGPIPE


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Run with TensorFlow's, CUDA's and absl's start-up logs and the libraries' deprecation
    warnings silenced.

    TensorFlow 2.21 logs through absl's C++ logging before ``absl::InitializeLog`` and ignores
    ``TF_CPP_MIN_LOG_LEVEL`` for those lines (oneDNN, cudart stub, ``cuInit`` failures), so
    the process's native stderr (file descriptor 2) goes to a temporary file meanwhile;
    Python's ``sys.stderr`` keeps writing to the terminal. Afterwards, every line of that
    file that is not a native log line (from a child process, say) is written out, and the
    environment variables, logger levels and warning filters it changed are as before.
    """
    with _quiet_settings(), warnings.catch_warnings(), _native_stderr_filtered():
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.simplefilter("ignore", category)
        for library in _LIBRARIES:
            warnings.filterwarnings("ignore", module=rf"{library}(\.|$)")
        yield


@contextmanager
def _quiet_settings() -> Iterator[None]:
    """TensorFlow's log environment variables (read when TensorFlow starts) and the libraries'
    logger levels, quiet inside and as they were afterwards."""
    quiet_env = {"TF_CPP_MIN_LOG_LEVEL": "3",
                 "TF_ENABLE_ONEDNN_OPTS": "1"}  # the default; set, it is not announced
    env_before = {name: os.environ.get(name) for name in quiet_env}
    loggers = [logging.getLogger(name) for name in ("tensorflow", "absl", "h5py")]
    levels_before = [logger.level for logger in loggers]
    for name, value in quiet_env.items():
        os.environ.setdefault(name, value)
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, value in env_before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for logger, level in zip(loggers, levels_before, strict=True):
            logger.setLevel(level)


@contextmanager
def _native_stderr_filtered() -> Iterator[None]:
    try:
        sys.stderr.flush()
        terminal = os.dup(2)
    except (OSError, ValueError):  # no usable file descriptor 2 (embedded, closed): leave it
        yield
        return
    python_stderr = sys.stderr
    try:  # Python's stderr may be fd 2 (a terminal, a pipe) or its own object (a test capture)
        on_fd2 = python_stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        on_fd2 = False
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        if on_fd2:
            sys.stderr = open(os.dup(terminal), "w", buffering=1,  # noqa: SIM115
                              encoding=python_stderr.encoding, errors="backslashreplace")
        try:
            yield
        finally:
            if on_fd2:
                sys.stderr.close()
            sys.stderr = python_stderr
            os.dup2(terminal, 2)
            os.close(terminal)
            sink.seek(0)
            kept = [line for line in sink if not _NATIVE_LOG_LINE.match(line)]
            if kept:
                sys.stderr.flush()
                os.write(2, b"".join(kept))


def output_path(path: str | os.PathLike, *, folder: bool = False) -> Path:
    """A place to write a file (``folder``: a folder), its parent folders created: CliError
    naming the path when it is of the other kind or cannot be created or written."""
    path = Path(path)
    target = path if folder else path.parent
    try:
        target.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CliError(f"{target}: exists and is not a folder") from None
    except OSError as error:
        raise CliError(f"{target}: cannot create the folder: {error.strerror}") from None
    if not folder and path.is_dir():
        raise CliError(f"{path}: is a folder, expected a file name")
    if not os.access(target, os.W_OK | os.X_OK):
        raise CliError(f"{target}: not writable")
    return path


def parse_seconds(text: str, *, fractions: bool = False) -> dict[int | float, list[str]]:
    """The `--seconds` grammar of both tools: a comma list of seconds and ranges, e.g.
    ``902,903,910-915`` (``fractions``: single values may have decimals, ``902.5``).

    Returns ``{second: [tokens as written]}`` in the order given, so that ``902`` and ``0902``
    keep their own spelling (a range's members take its first bound's zero padding). Raises
    CliError naming the bad part, and for lists of more than `MAX_SECONDS` seconds."""
    seconds: dict[int | float, list[str]] = {}
    count = 0
    for token in (t.strip() for t in text.split(",")):
        first, dash, last = token.partition("-")
        if dash and _whole(first) and _whole(last):
            low, high = int(first), int(last)
            if high < low:
                raise CliError(f"--seconds: range {token!r} ends before it starts")
            values = [(s, f"{s:0{len(first)}d}") for s in range(low, min(high, low + MAX_SECONDS)
                                                                  + 1)]
            count += high - low + 1
        elif _whole(token) or (fractions and _decimal(token)):
            values = [(int(token) if _whole(token) else float(token), token)]
            count += 1
        else:
            example = "902, 902.5 or 902-910" if fractions else "902 or a range like 902-910"
            raise CliError(f"--seconds: {token!r} is not a second such as {example}")
        if count > MAX_SECONDS:
            raise CliError(f"--seconds: {text!r} lists more than {MAX_SECONDS} seconds")
        if values and max(value for value, _ in values) > INT32_MAX:
            raise CliError(f"--seconds: {token!r} is past the last second a keyframe can have "
                           f"({INT32_MAX})")
        for value, spelling in values:
            seconds.setdefault(value, []).append(spelling)
    return seconds


def _whole(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _decimal(text: str) -> bool:
    whole, dot, part = text.partition(".")
    return bool(dot) and _whole(whole) and _whole(part)
