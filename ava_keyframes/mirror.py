"""A loopback HTTP mirror, so tests and the demo exercise the real download path."""

from __future__ import annotations

import functools
import http.server
import os
import threading
import time


class LoopbackMirror:
    """Serves ``folder`` over HTTP on 127.0.0.1 the way the CVDF mirror serves videos
    (``<url><file name>``; whole files only, as ``http.server`` ignores Range); records
    request paths. A context manager: the server thread stops on exit."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.requests: list[str] = []
        self.delay = 0.0  # seconds to wait before each answer (to slow a build down)
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                mirror.requests.append(self.path)
                time.sleep(mirror.delay)
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        handler = functools.partial(Handler, directory=str(folder))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LoopbackMirror:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
