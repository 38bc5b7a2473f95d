"""The one guarded HTTP client: every request for a video, whole or a range of bytes, goes here.

What it guarantees, whatever the server does:

- redirects are followed only to ``http``/``https`` URLs (at most 5); ``ftp://``, ``file://``
  and anything else is refused;
- each read waits at most ``read_timeout`` seconds, and each file has a total deadline of
  ``deadline + size / min_rate`` seconds (size once known), waits included;
- a Retry-After longer than ``max_retry_after`` is not waited for: the file is given up for
  this run (transient) instead of costing minutes;
- at most ``attempts`` failed requests per file, counted over restarts, resumes and 416
  answers alike: nothing resets the count;
- no more than ``max_bytes`` per file, and every byte received is counted (:class:`Meter`);
- a host that cannot be reached at all (name not resolved, connection refused, no route) on
  ``down_after`` tries in a row is marked down for the rest of the process, with one warning
  line; later requests to it fail at once, without waiting.

Each limit has an environment variable (``AVA_KEYFRAMES_<NAME>``, e.g.
``AVA_KEYFRAMES_ATTEMPTS``, read by :mod:`ava_keyframes.settings`) and a flag of
``ava-keyframes download``.
"""

from __future__ import annotations

import dataclasses
import email.utils
import errno
import http.client
import logging
import math
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import NamedTuple, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

USER_AGENT = "ava-keyframes (video cache)"
CHUNK = 1 << 20
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_SCHEMES = ("http", "https")


@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds on fetching one file. Seconds, bytes and bytes per second."""

    read_timeout: float = 30.0
    deadline: float = 600.0  # per file, plus size / min_rate
    min_rate: float = 256 * 1024.0
    max_retry_after: float = 120.0
    attempts: int = 6  # failed requests per file before giving up
    backoff: float = 2.0  # first wait between attempts, doubled each time
    max_backoff: float = 60.0
    max_bytes: int = 8 * 2**30
    down_after: int = 3  # unreachable tries in a row that mark a host down

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            whole = field.type == "int"
            valid = (not isinstance(value, bool)
                     and isinstance(value, int if whole else (int, float))
                     and math.isfinite(value)
                     and (value >= 0 if field.name == "backoff" else value > 0))
            if not valid:
                kind = "a positive integer" if whole else "a positive number"
                raise ValueError(f"invalid limit {field.name}={value!r}: expected {kind}")


class RemoteError(Exception):
    """A file not fetched. ``transient``: a cause that may pass (outage, retries spent, deadline,
    throttling, disk full), as opposed to the source not having it or refusing it."""

    transient = True


class Transient(RemoteError):
    """Worth another attempt, after ``retry_after`` seconds when the server said so."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class Unsatisfiable(Transient):
    """HTTP 416 to a resume: the partial file does not fit the server's file."""


class GaveUp(RemoteError):
    """Not to be tried again in this run, though a later run may succeed."""


class ServerFault(GaveUp):
    """An answer that breaks HTTP's rules (a redirect loop, more than 5 redirects, a ranged
    answer whose Content-Range or length does not fit the request): a fault of the server,
    no proof that the file is gone. Not retried in this run; a window fetch falls back to
    one whole-file fetch."""


class Permanent(RemoteError):
    """The source does not have it (HTTP 404, 410): recorded in unavailable.json. Only
    answers that mean absence are Permanent."""

    transient = False


class Refused(RemoteError):
    """Refused by this package (unsafe redirect, over the size limit, size unknown,
    not a decodable video): given up without a record."""

    transient = False


class Meter:
    """Bytes received, with an optional callback per chunk (a progress bar)."""

    def __init__(self, on_bytes: Callable[[int], object] | None = None):
        self.bytes = 0
        self._on_bytes = on_bytes
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        with self._lock:
            self.bytes += count
        if self._on_bytes is not None:
            self._on_bytes(count)


class Deadline:
    """The total time allowed for one file: ``limits.deadline`` seconds, plus
    ``size / limits.min_rate`` once the size is known."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic):
        self._limits = limits
        self._clock = clock
        self._start = clock()
        self.seconds = limits.deadline

    def expect(self, size: int) -> None:
        self.seconds = max(self.seconds, self._limits.deadline + size / self._limits.min_rate)

    def remaining(self) -> float:
        return self.seconds - (self._clock() - self._start)

    def check(self, what: str) -> None:
        if self.remaining() <= 0:
            raise GaveUp(f"{what}: deadline of {self.seconds:.0f} s passed (--deadline, "
                         "--min-rate)")


class Hosts:
    """Hosts found unreachable in this process: after ``down_after`` unreachable tries in a
    row a host is down until the process ends, and requests to it fail at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}
        self._down: dict[str, str] = {}

    def check(self, url: str) -> None:
        host = _host(url)
        with self._lock:
            reason = self._down.get(host)
        if reason is not None:
            raise GaveUp(f"{host} is unreachable ({reason}); not tried again in this run")

    def reached(self, url: str) -> None:
        with self._lock:
            self._failures.pop(_host(url), None)

    def unreachable(self, url: str, reason: str, down_after: int) -> None:
        host = _host(url)
        with self._lock:
            count = self._failures[host] = self._failures.get(host, 0) + 1
            newly_down = count >= down_after and host not in self._down
            if newly_down:
                self._down[host] = f"{reason}, {count} tries"
        if newly_down:
            log.warning("%s is unreachable (%s on %d tries in a row): skipped for the rest of "
                        "this run", host, reason, count)


HOSTS = Hosts()  # the process's memory of unreachable hosts


class NoRanges(Refused):
    """The server answered a Range request with the whole file (no 206)."""


class Range(NamedTuple):
    data: bytes
    total: int  # the whole file's size, from Content-Range
    etag: str | None = None  # identifies the file's version, when the server sends one


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    max_redirections = 5

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201
        scheme = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl)).scheme
        if scheme.lower() not in _SCHEMES:
            fp.close()
            raise Refused(f"{req.full_url}: redirect to {newurl!r} refused (only http and https)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class Remote:
    """Guarded requests under ``limits``; ``sleep`` waits between attempts (tests pass a
    recorder), ``hosts`` remembers unreachable hosts (the process's by default)."""

    def __init__(self, limits: Limits, *, sleep: Callable[[float], object] = time.sleep,
                 hosts: Hosts | None = None):
        self.limits = limits
        self.hosts = HOSTS if hosts is None else hosts
        self._sleep = sleep
        self._opener = urllib.request.build_opener(_SafeRedirects)
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Make every transfer of this Remote stop at its next read or attempt (GaveUp), so
        that threads end promptly on Ctrl-C instead of finishing their downloads."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _check_cancelled(self, what: str) -> None:
        if self.cancelled:
            raise GaveUp(f"{what}: cancelled")

    def open(self, url: str, headers: Mapping[str, str], deadline: Deadline
             ) -> http.client.HTTPResponse:
        """One request. Raises Transient (worth retrying), Permanent, Refused or GaveUp."""
        if urllib.parse.urlsplit(url).scheme not in _SCHEMES:
            raise Refused(f"{url}: only http and https URLs are fetched")
        self.hosts.check(url)
        deadline.check(url)
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **headers})
        timeout = max(0.001, min(self.limits.read_timeout, deadline.remaining()))
        try:
            response = self._opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as error:
            self.hosts.reached(url)
            with error:
                raise _http_error(url, error.code, error.reason, error.headers) from None
        except urllib.error.URLError as error:
            self.note_unreachable(url, error)
            raise Transient(f"{url}: {error.reason}") from None
        except (OSError, http.client.HTTPException) as error:
            raise Transient(f"{url}: {error!r}") from None
        except ValueError as error:
            raise Refused(f"{url}: {error}") from None
        self.hosts.reached(url)
        return response

    def chunks(self, response: http.client.HTTPResponse, deadline: Deadline, meter: Meter,
               what: str) -> Iterator[bytes]:
        """The body as it arrives (each read returns what one receive got, so a trickling
        server meets the deadline); counted in ``meter``."""
        while True:
            deadline.check(what)
            self._check_cancelled(what)
            try:
                chunk = response.read1(CHUNK)
            except (OSError, http.client.HTTPException) as error:
                raise Transient(f"{what}: interrupted ({error!r})") from None
            if not chunk:
                return
            meter.add(len(chunk))
            yield chunk

    def retrying(self, attempt: Callable[[], T], deadline: Deadline, url: str) -> T:
        """Run ``attempt`` (a request for ``url``) until it returns; a Transient failure is
        retried after a backoff (or the server's Retry-After), ``limits.attempts`` failures
        in all, unless the host is found down meanwhile."""
        failures = 0
        while True:
            deadline.check(url)
            self._check_cancelled(url)
            try:
                return attempt()
            except Transient as error:
                failures += 1
                if failures >= self.limits.attempts:
                    raise GaveUp(f"{error} (gave up after {failures} failed attempts; "
                                 "--attempts)") from None
                self.hosts.check(url)
                self._sleep(self._wait(error, failures, deadline))

    def read_range(self, url: str, start: int, end: int, meter: Meter,
                   deadline: Deadline | None = None) -> Range:
        """Bytes ``start`` to ``end`` (exclusive) of ``url``, with retries; NoRanges when the
        server does not answer ranges, ServerFault when its 206 does not fit the request."""
        if not 0 <= start < end or end - start > self.limits.max_bytes:
            raise ValueError(f"invalid byte range {start}-{end}")
        deadline = deadline or Deadline(self.limits)
        deadline.expect(end - start)

        def attempt() -> Range:
            with self.open(url, {"Range": f"bytes={start}-{end - 1}"}, deadline) as response:
                match = CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
                if response.status != 206:
                    raise NoRanges(f"{url}: the server does not answer byte ranges "
                                   f"(HTTP {response.status})")
                if (not match or int(match[1]) != start or match[3] == "*"
                        or not start <= int(match[2]) < min(end, int(match[3]))):
                    raise ServerFault(f"{url}: a 206 answer with a missing, wrong or unsized "
                                      f"Content-Range for bytes {start}-{end - 1}")
                etag = response.headers.get("ETag")
                data = bytearray()
                for chunk in self.chunks(response, deadline, meter, url):
                    data += chunk
                    if len(data) > int(match[2]) + 1 - start:
                        raise ServerFault(f"{url}: a 206 answer with more bytes than its "
                                          "Content-Range")
            if len(data) < min(end, int(match[2]) + 1) - start:
                raise Transient(f"{url}: range cut short at {start + len(data)}")
            return Range(bytes(data), int(match[3]), etag)

        return self.retrying(attempt, deadline, url)

    def _wait(self, error: Transient, failures: int, deadline: Deadline) -> float:
        if error.retry_after is not None and error.retry_after > self.limits.max_retry_after:
            raise GaveUp(f"{error}: asked to wait {error.retry_after:.0f} s, over the limit of "
                         f"{self.limits.max_retry_after:.0f} s (--max-retry-after)")
        wait = error.retry_after
        if wait is None:
            wait = min(self.limits.backoff * 2 ** (failures - 1), self.limits.max_backoff)
        if wait >= deadline.remaining():
            raise GaveUp(f"{error}: no time left to wait {wait:.0f} s before the deadline")
        return wait

    def note_unreachable(self, url: str, error: BaseException | None) -> None:
        """Count a failed try at ``url`` against its host when ``error`` (or what caused it)
        says the host cannot be reached at all; ``down_after`` in a row mark it down."""
        reason = _unreachable_reason(error)
        if reason is not None:
            self.hosts.unreachable(url, reason, self.limits.down_after)


def _unreachable_reason(error: BaseException | None) -> str | None:
    """"name not resolved", "connection refused" or "no route to host", found along the
    chain of ``reason``, ``cause`` (yt-dlp), ``__cause__`` and ``__context__``."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, socket.gaierror):
            return "name not resolved"
        if isinstance(error, ConnectionRefusedError):
            return "connection refused"
        if isinstance(error, OSError) and error.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "no route to host"
        links = (getattr(error, "reason", None), getattr(error, "cause", None),
                 error.__cause__, error.__context__)
        error = next((e for e in links if isinstance(e, BaseException)), None)
    return None


def _host(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return parts.netloc.rpartition("@")[2].lower() or url


def _http_error(url: str, status: int, reason: str, headers: Mapping[str, str]) -> RemoteError:
    message = f"{url}: HTTP {status} {reason}".strip()
    if status == 416:
        return Unsatisfiable(message)
    if 300 <= status < 400 and str(reason).startswith(_SafeRedirects.inf_msg):
        return ServerFault(f"{url}: HTTP {status}: a redirect loop or more than "
                           f"{_SafeRedirects.max_redirections} redirects")
    if 300 <= status < 400:  # a redirect urllib would not follow (file://)
        return Refused(f"{message}: redirect refused")
    if status in (408, 429) or status >= 500:
        return Transient(message, parse_retry_after(headers.get("Retry-After")))
    if status in (404, 410):
        return Permanent(message)
    return GaveUp(f"{message} (not proof that the file is gone: not recorded)")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    if value.strip().isascii() and value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
