"""A loopback HTTP mirror, so tests and the demo exercise the real download path."""

from __future__ import annotations

import http.server
import os
import re
import threading
import time
import urllib.parse
from pathlib import Path
from stat import S_ISREG

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_CHUNK = 256 * 1024


class LoopbackMirror:
    """Serves the regular files of ``folder`` over HTTP on 127.0.0.1 the way the CVDF mirror
    serves videos (``<url><file name>``): whole files (200), or one byte range (206 with
    Content-Range) for a ``Range: bytes=a-b`` request, with an ETag and Content-Length on
    both, so window fetches work against it. Records request paths; ``delay`` seconds are
    waited before each answer (to slow a build down). A context manager: the server thread
    stops on exit."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.requests: list[str] = []
        self.delay = 0.0
        self.folder = Path(folder)
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                mirror.requests.append(self.path)
                time.sleep(mirror.delay)
                mirror._answer(self)

            def log_message(self, *args) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _answer(self, request: http.server.BaseHTTPRequestHandler) -> None:
        name = urllib.parse.unquote(urllib.parse.urlsplit(request.path).path.lstrip("/"))
        path = self.folder / name
        try:
            stat = os.lstat(path) if name and "/" not in name and name != ".." else None
        except OSError:
            stat = None
        if stat is None or not S_ISREG(stat.st_mode):
            request.send_error(404)
            return
        size, etag = stat.st_size, f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'
        start, end, status = 0, size, 200
        asked = _RANGE.fullmatch(request.headers.get("Range", "").strip())
        if asked and asked[1] + asked[2]:
            if asked[1]:
                start, end = int(asked[1]), min(size, int(asked[2]) + 1 if asked[2] else size)
            else:  # the last N bytes
                start = max(0, size - int(asked[2]))
            if start >= end:
                request.send_response(416)
                request.send_header("Content-Range", f"bytes */{size}")
                request.send_header("Content-Length", "0")
                request.end_headers()
                return
            status = 206
        request.send_response(status)
        request.send_header("Content-Type", "application/octet-stream")
        request.send_header("Content-Length", str(end - start))
        request.send_header("Accept-Ranges", "bytes")
        request.send_header("ETag", etag)
        if status == 206:
            request.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        request.end_headers()
        with open(path, "rb") as handle:
            handle.seek(start)
            left = end - start
            while left > 0:
                chunk = handle.read(min(_CHUNK, left))
                if not chunk:
                    break
                try:
                    request.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
                left -= len(chunk)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LoopbackMirror:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
