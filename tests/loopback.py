"""The scaffolding every fake remote server of the tests shares: a threaded HTTP server on
127.0.0.1 that records each request and lets the test decide each answer."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable

Respond = Callable[[http.server.BaseHTTPRequestHandler, int], None]


class LoopbackServer:
    """``respond(handler, number)`` writes the answer to the ``number``-th GET request;
    ``requests`` keeps (path, Range) of each. A client that hangs up mid-answer (a timeout,
    a reader that has read enough) is not the test's business and is not printed."""

    def __init__(self, respond: Respond) -> None:
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                outer.requests.append((self.path, self.headers.get("Range")))
                try:
                    respond(self, len(outer.requests))
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.handle_error = lambda *args: None
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
