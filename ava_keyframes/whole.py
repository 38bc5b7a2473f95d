"""The whole-file fetch: one file over HTTP(S) into a cache partial, resumed where a previous
run left verified bytes, complete only once its size (and MD5, where the server published one)
matches. Its sibling :mod:`ava_keyframes.window` fetches only the window of a video that some
seconds need; :mod:`ava_keyframes.fetchers` chooses between them.
"""

from __future__ import annotations

from ava_keyframes.cache import Partial
from ava_keyframes.remote import (
    CONTENT_RANGE,
    Deadline,
    Meter,
    Refused,
    Remote,
    Transient,
    Unsatisfiable,
)


def download_whole(remote: Remote, url: str, partial: Partial, meter: Meter) -> None:
    """Fill ``partial`` with the whole of ``url``, resuming what a previous run verified.
    Returns once complete and verified; raises a RemoteError otherwise (the partial is kept
    for a later resume where that is safe)."""
    deadline = Deadline(remote.limits)
    partial.resume(url)
    if partial.total is not None:
        deadline.expect(partial.total)

    def attempt() -> None:
        if partial.total is None or partial.length < partial.total:  # else: only verify
            try:
                _one_request(remote, url, partial, meter, deadline)
            except Unsatisfiable:
                partial.restart(None, None)
                raise
            finally:
                partial.checkpoint()
        partial.verify_complete()

    remote.retrying(attempt, deadline, url)


def _one_request(remote: Remote, url: str, partial: Partial, meter: Meter,
                 deadline: Deadline) -> None:
    offset = partial.length
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    if offset and partial.etag:
        headers["If-Range"] = partial.etag
    with remote.open(url, headers, deadline) as response:
        if response.status == 206:
            match = CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if not (offset and match and int(match[1]) == offset
                    and match[3] == str(partial.total)):
                partial.restart(None, None)
                raise Transient(f"{url}: Content-Range does not fit the partial file, "
                                "starting over")
        else:
            length = response.headers.get("Content-Length", "")
            total = int(length) if length.isascii() and length.isdigit() else None
            partial.restart(total, response.headers.get("ETag"))
        if partial.total is not None:
            if partial.total > remote.limits.max_bytes:
                raise Refused(f"{url}: {partial.total} bytes is over the limit of "
                              f"{remote.limits.max_bytes} (--max-bytes)")
            deadline.expect(partial.total)
        for chunk in remote.chunks(response, deadline, meter, url):
            if partial.length + len(chunk) > (partial.total or remote.limits.max_bytes):
                raise Refused(f"{url}: more bytes than announced or over the limit "
                              f"(--max-bytes)")
            partial.write(chunk)
