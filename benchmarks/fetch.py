"""Window fetch against whole-file download, for the AVA schedule (seconds 902..1798).

A generated movie (60 minutes by default, 160x90 H.264 at 29.97 fps with B-frames, key frame
every 2 s; written once with the bundled ffmpeg and cached) is served on loopback by a
Range-capable HTTP server, as mp4 (index at the end, ffmpeg's default), as mkv (the same
packets) and as an mkv without an index (no Cues). For each, one run fetches

  window   ``ava_keyframes.window.fetch_window``: only the bytes of seconds 902..1798,
           stream-copied into a window file;
  whole    ``ava_keyframes.whole.download_whole``: the whole file, as the cache did before;

first at loopback speed, then through a server throttled to ``--rate`` MB/s (a link of
100 Mbit/s by default). Printed: bytes, requests and wall time of each, and their ratios.
A few keyframes extracted from the window are checked against the whole file's.

Usage: python benchmarks/fetch.py [--cache DIR] [--minutes 60] [--rate 12.5]
"""

from __future__ import annotations

import argparse
import http.server
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ava_keyframes.cache import Partial
from ava_keyframes.frames import extract_keyframes
from ava_keyframes.media import ffmpeg_binary
from ava_keyframes.remote import Limits, Meter, Remote
from ava_keyframes.whole import download_whole
from ava_keyframes.window import fetch_window

AVA_SECONDS = range(902, 1799)
CHECKED = [902, 1350, 1798]
_CHUNK = 64 * 1024


def movie(folder: Path, minutes: int) -> dict[str, Path]:
    """The movie as mp4, mkv, and mkv without an index (no Cues: written to a pipe, as a
    live recording is), cached in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    mp4, mkv = folder / f"movie-{minutes}min.mp4", folder / f"movie-{minutes}min.mkv"
    if not mp4.exists():
        print(f"writing a {minutes}-minute movie to {mp4} (once)...", flush=True)
        temp = mp4.with_suffix(".part.mp4")
        subprocess.run([ffmpeg_binary(), "-v", "error", "-y", "-f", "lavfi",  # noqa: S603
                        "-i", "testsrc2=size=160x90:rate=30000/1001", "-t", str(60 * minutes),
                        "-c:v", "libx264", "-preset", "ultrafast",
                        "-x264-params", "bframes=2:keyint=60", "-pix_fmt", "yuv420p", str(temp)],
                       check=True)
        temp.rename(mp4)
    if not mkv.exists():
        temp = mkv.with_suffix(".part.mkv")
        subprocess.run([ffmpeg_binary(), "-v", "error", "-y", "-i", str(mp4),  # noqa: S603
                        "-c", "copy", str(temp)], check=True)
        temp.rename(mkv)
    unindexed = folder / f"movie-{minutes}min-unindexed.mkv"
    if not unindexed.exists():
        temp = unindexed.with_suffix(".part.mkv")
        with open(temp, "wb") as out:
            subprocess.run([ffmpeg_binary(), "-v", "error", "-i", str(mp4),  # noqa: S603
                            "-c", "copy", "-f", "matroska", "pipe:1"], stdout=out, check=True)
        temp.rename(unindexed)
    return {"mp4": mp4, "mkv": mkv, "mkv (no Cues)": unindexed}


class Server:
    """Serves ``folder`` on 127.0.0.1 with single byte ranges, at most ``rate`` bytes/s per
    answer (0: no limit); counts requests and body bytes."""

    def __init__(self, folder: Path) -> None:
        self.rate = 0.0
        self.requests = self.bytes_sent = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                outer.requests += 1
                path = folder / Path(self.path).name
                size = path.stat().st_size
                match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
                start, end = 0, size - 1
                if match:
                    start, end = int(match[1]), min(int(match[2] or end), end)
                self.send_response(206 if match else 200)
                if match:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                began = time.monotonic()
                with open(path, "rb") as file:
                    file.seek(start)
                    sent = 0
                    while sent < end - start + 1:
                        chunk = file.read(min(_CHUNK, end - start + 1 - sent))
                        self.wfile.write(chunk)
                        sent += len(chunk)
                        outer.bytes_sent += len(chunk)
                        if outer.rate:
                            time.sleep(max(0.0, sent / outer.rate - (time.monotonic() - began)))

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def measure(self, fetch) -> tuple[object, int, int, float]:
        """(result, bytes served, requests, wall seconds) of ``fetch()``."""
        self.requests = self.bytes_sent = 0
        began = time.perf_counter()
        result = fetch()
        return result, self.bytes_sent, self.requests, time.perf_counter() - began


def compare(server: Server, video: Path, work: Path) -> dict[str, tuple]:
    remote = Remote(Limits())
    url = server.url + video.name
    for name in ("windows", "partial", "whole"):
        (work / name).mkdir(parents=True, exist_ok=True)

    def window():
        return fetch_window(url, AVA_SECONDS, work / "windows" / video.name, remote=remote,
                            partial_dir=work / "partial")

    def whole():
        partial = Partial(work / "whole", video.name)
        try:
            download_whole(remote, url, partial, Meter())
        finally:
            partial.close()
        return partial.path

    results = {"window": server.measure(window), "whole": server.measure(whole)}
    got = results["window"][0]
    same = all(np.array_equal(a[1], b[1]) for a, b in zip(
        extract_keyframes(got.path, CHECKED, origin=got.origin),
        extract_keyframes(video, CHECKED), strict=True))
    if not same:
        raise SystemExit(f"{video.name}: the window's keyframes differ from the whole file's")
    return results


def report(kind: str, video: Path, results: dict[str, tuple], rate: float, duration: float
           ) -> None:
    size = video.stat().st_size
    (_, w_bytes, w_requests, w_time), (_, f_bytes, f_requests, f_time) = (
        results["window"], results["whole"])
    share = size * len(AVA_SECONDS) / duration
    link = f"{rate:g} MB/s" if rate else "loopback"
    print(f"| {kind} | {link} | {w_bytes / 1e6:.1f} MB ({w_bytes / share:.2f}x the window's "
          f"share), {w_requests} requests, {w_time:.2f} s | {f_bytes / 1e6:.1f} MB, "
          f"{f_requests} request(s), {f_time:.2f} s | {w_bytes / f_bytes:.3f} | "
          f"{w_time / f_time:.2f} |", flush=True)


def _duration(video: Path) -> float:
    import av

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        return float(stream.duration * stream.time_base) if stream.duration else (
            container.duration / av.time_base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "ava-keyframes-bench" / "fetch")
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--rate", type=float, default=12.5,
                        help="MB/s of the throttled runs (default: 12.5, a 100 Mbit/s link)")
    args = parser.parse_args()
    if args.minutes < 31:
        parser.error("--minutes must be at least 31 (the AVA schedule ends at 1798 s)")
    videos = movie(args.cache, args.minutes)
    server = Server(args.cache)
    duration = _duration(videos["mp4"])  # the same packets in each (an unindexed mkv has none)
    print(f"{args.minutes}-minute movie: mp4 {videos['mp4'].stat().st_size / 1e6:.1f} MB, "
          f"mkv {videos['mkv'].stat().st_size / 1e6:.1f} MB; seconds {AVA_SECONDS.start}.."
          f"{AVA_SECONDS.stop - 1}; keyframes {CHECKED} of the window equal the whole file's")
    print("| file | link | window | whole | bytes window/whole | time window/whole |")
    print("| --- | --- | --- | --- | ---: | ---: |")
    for rate in (0.0, args.rate):
        server.rate = rate * 1e6
        for kind, video in videos.items():
            with tempfile.TemporaryDirectory() as work:
                report(kind, video, compare(server, video, Path(work)), rate, duration)


if __name__ == "__main__":
    main()
