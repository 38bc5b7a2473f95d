"""The video cache under faults: hostile loopback servers, planted links, shared caches."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from loopback import LoopbackServer

from ava_keyframes import cli
from ava_keyframes.cache import Partial
from ava_keyframes.media import ffmpeg_binary
from ava_keyframes.remote import Hosts, Limits
from ava_keyframes.settings import FetchSettings
from ava_keyframes.sources import VideoCache

GOOD = "abcdefghijk"  # not in the official mirror list: tried as .mkv, .mp4, .webm
OTHER = "bcdefghijkl"
MKV = f"/m/{GOOD}.mkv"


@pytest.fixture(scope="session")
def video(tmp_path_factory) -> bytes:
    """A 6 s, 10 fps mkv: a prefix of it still decodes its first frame."""
    path = tmp_path_factory.mktemp("video") / "six.mkv"
    subprocess.run([ffmpeg_binary(), "-v", "error", "-f", "lavfi", "-i",  # noqa: S603
                    "testsrc2=size=160x120:rate=10", "-t", "6", "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", "-g", "10", str(path)], check=True)
    return path.read_bytes()


@pytest.fixture
def serve():
    servers = []

    def start(respond) -> LoopbackServer:
        servers.append(LoopbackServer(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def answer(handler, status: int, headers: dict, body: bytes = b"") -> None:
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name, str(value))
    handler.end_headers()
    handler.wfile.write(body)


def file_server(data: bytes, path: str = MKV, etag: str | None = None):
    """``respond`` for a well-behaved server of ``data`` at ``path`` (Range honoured)."""

    def respond(handler, number: int) -> None:
        if handler.path != path:
            return answer(handler, 404, {"Content-Length": 0})
        extra = {"ETag": etag} if etag else {}
        start = int((handler.headers.get("Range") or "bytes=0-")[6:].rstrip("-"))
        if start >= len(data):
            return answer(handler, 416, {"Content-Range": f"bytes */{len(data)}"})
        if handler.headers.get("Range"):
            extra["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        answer(handler, 206 if start else 200,
               {"Content-Length": len(data) - start, **extra}, data[start:])

    return respond


@pytest.fixture(autouse=True)
def no_cache_env(monkeypatch):
    """The tests choose sources, fetch mode and limits themselves."""
    for name in [name for name in os.environ if name.startswith("AVA_KEYFRAMES_")]:
        monkeypatch.delenv(name)


def cache_on(server: LoopbackServer, root: Path, waits: list | None = None, **limits) -> VideoCache:
    """A cache of whole files from ``server``'s /m/ with short limits (``limits`` override)."""
    limits = Limits(**{"read_timeout": 5, "attempts": 4, "backoff": 0.01, **limits})
    settings = FetchSettings(root, sources="mirror", mirror=server.url + "/m/", limits=limits,
                             fetch="whole")
    return settings.video_cache(sleep=(waits if waits is not None else []).append, hosts=Hosts())


def leftovers(root: Path) -> list[str]:
    partial = root / "partial"
    return sorted(p.name for p in partial.iterdir()) if partial.exists() else []


def test_short_body_without_content_length_is_never_cached(tmp_path, serve, video):
    def respond(handler, number):
        if handler.path != MKV:
            return answer(handler, 404, {"Content-Length": 0})
        answer(handler, 200, {"Content-Type": "video/x-matroska"}, video[: len(video) * 9 // 10])

    result = cache_on(serve(respond), tmp_path).fetch(GOOD)
    assert result.status == "unavailable" and "size unknown" in result.reason
    assert not (tmp_path / "videos").exists() and leftovers(tmp_path) == []


def test_content_length_smaller_than_the_file_is_caught_by_the_needed_seconds(
        tmp_path, serve, video):
    def respond(handler, number):
        if handler.path != MKV:
            return answer(handler, 404, {"Content-Length": 0})
        answer(handler, 200, {"Content-Length": len(video) // 2}, video)

    result = cache_on(serve(respond), tmp_path).fetch(GOOD, seconds=[1, 5])
    assert result.status == "unavailable" and "before second 5" in result.reason
    assert not (tmp_path / "videos").exists() and leftovers(tmp_path) == []


def dropping_first(video: bytes):
    """``respond`` that cuts the first answer at half the file, then serves it properly."""
    serve_file = file_server(video)

    def respond(handler, number):
        if number == 1:
            return answer(handler, 200, {"Content-Length": len(video)}, video[: len(video) // 2])
        serve_file(handler, number)

    return respond


def test_a_damaged_partial_is_downloaded_again_not_appended_to(tmp_path, serve, video):
    server = serve(dropping_first(video))
    lost = cache_on(server, tmp_path, attempts=1).fetch(GOOD)
    partial = tmp_path / "partial" / f"{GOOD}.mkv"
    assert lost.transient and partial.stat().st_size == len(video) // 2
    damaged = bytearray(partial.read_bytes())
    damaged[100:110] = b"\0" * 10
    partial.write_bytes(bytes(damaged))

    result = cache_on(server, tmp_path).fetch(GOOD)
    assert result.path.read_bytes() == video
    assert server.requests == [(MKV, None), (MKV, None)]  # started over, no Range
    assert leftovers(tmp_path) == []


def test_an_intact_partial_resumes_even_with_a_tail_written_after_its_record(
        tmp_path, serve, video):
    server = serve(dropping_first(video))
    cache_on(server, tmp_path, attempts=1).fetch(GOOD)
    with open(tmp_path / "partial" / f"{GOOD}.mkv", "ab") as out:
        out.write(b"junk after the last record")
    result = cache_on(server, tmp_path).fetch(GOOD)
    half = len(video) // 2
    assert result.path.read_bytes() == video
    assert server.requests == [(MKV, None), (MKV, f"bytes={half}-")]
    assert result.bytes_fetched == len(video) - half and result.fetch_mode == "whole"


def test_a_complete_partial_is_verified_and_published_without_a_request(
        tmp_path, serve, video):
    server = serve(file_server(video))
    (tmp_path / "partial").mkdir()
    partial = Partial(tmp_path / "partial", f"{GOOD}.mkv")  # as a run killed before the rename
    partial.restart(len(video), None, server.url + MKV)
    partial.write(video)
    partial.close()
    result = cache_on(server, tmp_path).fetch(GOOD)
    assert result.path.read_bytes() == video and result.bytes_fetched == 0
    assert server.requests == [] and leftovers(tmp_path) == []


def test_content_length_longer_than_the_body_ends_after_a_bounded_number_of_requests(
        tmp_path, serve, video):
    def lying(handler, number):
        if handler.path != MKV:
            return answer(handler, 404, {"Content-Length": 0})
        if handler.headers.get("Range"):
            return answer(handler, 416, {"Content-Range": f"bytes */{len(video)}"})
        answer(handler, 200, {"Content-Length": len(video) + 1000}, video)

    server = serve(lying)
    result = cache_on(server, tmp_path, attempts=6).fetch(GOOD)
    assert result.status == "unavailable" and result.transient
    assert "gave up after 6" in result.reason
    assert len([p for p, _ in server.requests if p == MKV]) == 6
    assert result.bytes_fetched <= 3 * len(video)
    assert not (tmp_path / "videos").exists()


def trickle(handler, number):
    """1 KiB every 0.1 s of an announced megabyte (at most 10 s, should the client stay)."""
    handler.send_response(200)
    handler.send_header("Content-Length", "1000000")
    handler.end_headers()
    for _ in range(100):
        handler.wfile.write(b"x" * 1024)
        handler.wfile.flush()
        time.sleep(0.1)


def test_a_trickling_server_meets_the_deadline(tmp_path, serve):
    server = serve(trickle)
    result = cache_on(server, tmp_path, read_timeout=2, deadline=0.5,
                      min_rate=1e12).fetch(GOOD)
    assert result.status == "unavailable" and result.transient
    assert "deadline" in result.reason
    assert len(server.requests) == 1  # the deadline is per file: no more attempts


def test_cancel_stops_a_running_download_at_its_next_read(tmp_path, serve):
    server = serve(trickle)
    cache = cache_on(server, tmp_path, deadline=60)
    results = []
    worker = threading.Thread(target=lambda: results.append(cache.fetch(GOOD)))
    worker.start()
    partial = tmp_path / "partial" / f"{GOOD}.mkv"
    for _ in range(600):  # cancel once bytes are in: an empty partial is not worth keeping
        if partial.exists() and partial.stat().st_size:
            break
        time.sleep(0.05)
    cache.remote.cancel()
    worker.join(30)
    assert results and results[0].transient and "cancelled" in results[0].reason
    assert len(server.requests) == 1 and partial.exists()


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs pthread_kill")
def test_ctrl_c_during_fetch_many_stops_its_threads(tmp_path, serve):
    server = serve(trickle)
    cache = cache_on(server, tmp_path, deadline=60)
    main = threading.get_ident()

    def interrupt() -> None:
        for _ in range(600):
            if server.requests:
                break
            time.sleep(0.05)
        signal.pthread_kill(main, signal.SIGINT)

    before = set(threading.enumerate())
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal
    threading.Thread(target=interrupt, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            cache.fetch_many([GOOD, OTHER], jobs=2, progress=False)
    finally:
        signal.signal(signal.SIGINT, handler)
    workers = [t for t in set(threading.enumerate()) - before
               if t.name.startswith("ThreadPoolExecutor")]
    for worker in workers:
        worker.join(30)
    assert not any(worker.is_alive() for worker in workers)


def test_a_huge_retry_after_is_not_waited_for(tmp_path, serve, video):
    def throttled(handler, number):
        answer(handler, 429, {"Retry-After": "3600", "Content-Length": 0})

    server = serve(throttled)
    waits = []
    result = cache_on(server, tmp_path, waits).fetch(GOOD)
    assert result.status == "unavailable" and result.transient
    assert "3600" in result.reason and "--max-retry-after" in result.reason
    assert waits == [] and len(server.requests) == 1


def test_an_etag_md5_is_verified(tmp_path, serve, video):
    good = cache_on(serve(file_server(video, etag=f'"{hashlib.md5(video).hexdigest()}"')),
                    tmp_path / "a").fetch(GOOD)
    assert good.status == "downloaded"
    bad = cache_on(serve(file_server(video, etag=f'"{hashlib.md5(b"x").hexdigest()}"')),
                   tmp_path / "b", attempts=2).fetch(GOOD)
    assert bad.status == "unavailable" and bad.transient and "MD5" in bad.reason
    assert not (tmp_path / "b" / "videos").exists()


def test_a_full_disk_is_a_transient_loss_and_a_later_run_completes(
        tmp_path, serve, video, monkeypatch):
    real_write = os.write

    def full_disk(fd, data):
        if os.fstat(fd).st_size + len(data) > len(video) // 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    server = serve(file_server(video))
    monkeypatch.setattr(os, "write", full_disk)
    lost = cache_on(server, tmp_path).fetch(GOOD)
    monkeypatch.setattr(os, "write", real_write)
    assert lost.status == "unavailable" and lost.transient and "No space left" in lost.reason
    assert len(server.requests) == 1  # not retried: waiting will not free the disk
    assert cache_on(server, tmp_path).fetch(GOOD).path.read_bytes() == video


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed once the block ends: connections are refused


@pytest.mark.parametrize("source", ["mirror", "youtube"])
def test_an_unreachable_host_is_marked_down_after_a_few_tries(tmp_path, caplog, source):
    url = f"http://127.0.0.1:{closed_port()}"
    waits = []
    cache = FetchSettings(tmp_path, sources=source, mirror=url + "/m/",
                          youtube_template=url + "/yt/{id}.mp4",
                          limits=Limits(attempts=6, backoff=0.01, down_after=3),
                          ).video_cache(sleep=waits.append, hosts=Hosts())
    with caplog.at_level(logging.WARNING):
        results = cache.fetch_many([GOOD, OTHER, "cdefghijklm"], jobs=1, progress=False)
    assert [(r.status, r.transient) for r in results] == [("unavailable", True)] * 3
    assert waits == [0.01, 0.02]
    assert all("not tried again" in r.reason for r in results)
    lines = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(lines) == 1 and url.removeprefix("http://") in lines[0]
    assert not (tmp_path / "unavailable.json").exists()  # an outage is not a verdict
    assert leftovers(tmp_path) == []  # nothing to resume


def test_a_name_that_does_not_resolve_is_marked_down_too(tmp_path, caplog, monkeypatch):
    def no_dns(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)  # offline, as seen from the resolver
    waits = []
    cache = FetchSettings(tmp_path, sources="mirror", mirror="http://mirror.invalid/m/",
                          limits=Limits(attempts=6, backoff=0.01, down_after=2),
                          ).video_cache(sleep=waits.append, hosts=Hosts())
    with caplog.at_level(logging.WARNING):
        results = cache.fetch_many([GOOD, OTHER], jobs=1, progress=False)
    assert all(r.transient and "name not resolved" in r.reason for r in results)
    assert waits == [0.01]
    assert len([r for r in caplog.records if "mirror.invalid" in r.getMessage()]) == 1

def test_cli_download_reports_transient_loss_in_its_exit_code(tmp_path, serve, video, capsys,
                                                              monkeypatch):
    def respond(handler, number):
        if handler.path == f"/m/{OTHER}.mkv":
            return answer(handler, 503, {"Retry-After": "999", "Content-Length": 0})
        return file_server(video)(handler, number)

    server = serve(respond)
    monkeypatch.setenv("AVA_KEYFRAMES_ATTEMPTS", "2")
    code = cli.main(["download", "--ids", f"{GOOD},{OTHER}", "--cache", str(tmp_path),
                     "--sources", "mirror", "--mirror", server.url + "/m/", "--json",
                     "--max-retry-after", "5"])
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 1
    assert [(d["status"], d["fetch_mode"], d["transient"]) for d in lines] == [
        ("downloaded", "whole", False), ("unavailable", None, True)]
    assert lines[0]["bytes_fetched"] == len(video)
    assert f"{OTHER}: lost (transient, run again)" in err and "999" in err
    assert f"2 videos: 0 cached, 1 downloaded, 1 unavailable (1 transient); {len(video)} " \
           "bytes fetched" in err

    monkeypatch.setenv("AVA_KEYFRAMES_ATTEMPTS", "many")
    assert cli.main(["download", "--ids", GOOD, "--cache", str(tmp_path)]) == 2
    assert "AVA_KEYFRAMES_ATTEMPTS='many': expected a whole number" in capsys.readouterr().err
