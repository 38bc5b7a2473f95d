"""Server faults on the fetch path (issue 23): a faulty ranged answer or a redirect loop is
no proof that a video is gone. A window the server's answers cannot make is fetched whole
once; if that fails too, the video is lost for this run (transient), never recorded as
unavailable. Only 404 and 410 mark a video unavailable."""

from __future__ import annotations

import errno
import http.server
import json
import os
import re
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
from loopback import LoopbackServer
from test_window import VIDEO_ID, RangeServer, videos

from ava_keyframes import cli, window
from ava_keyframes.frames import extract_clips, extract_keyframes
from ava_keyframes.media import ffmpeg_binary
from ava_keyframes.remote import Limits
from ava_keyframes.settings import FetchSettings
from ava_keyframes.sources import VideoCache
from ava_keyframes.stamp import write_stamped_video

__all__ = ["videos"]  # a fixture, used by name
SECONDS = [40, 41]


class FaultyRanges(RangeServer):
    """Serves the file whole (200) correctly, but answers each Range request with the
    fault ``fault``; ``whole_status`` replaces the whole-file answer by an error."""

    def __init__(self, files: dict[str, Path], fault: str, whole_status: int | None = None):
        self.fault, self.whole_status = fault, whole_status
        super().__init__(files)

    def _respond(self, handler: http.server.BaseHTTPRequestHandler, number: int) -> None:
        data = self.files.get(handler.path)
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", handler.headers.get("Range") or "")
        if data is None or not match:
            if data is not None and self.whole_status:
                handler.send_error(self.whole_status)
                return
            super()._respond(handler, number)
            return
        start, end = int(match[1]), min(int(match[2]), len(data) - 1)
        body = data[start:end + 1]
        ranges = {"wrong": f"bytes {start + 1}-{end}/{len(data)}", "missing": None,
                  "star": f"bytes {start}-{end}/*", "extra": f"bytes {start}-{end}/{len(data)}",
                  "longer": f"bytes {start}-{end + 100}/{len(data)}"}
        body += b"\0" * 100 if self.fault in ("extra", "longer") else b""
        handler.send_response(206)
        if ranges[self.fault] is not None:
            handler.send_header("Content-Range", ranges[self.fault])
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


@pytest.fixture
def served(tmp_path, videos) -> Path:
    path = tmp_path / f"{VIDEO_ID}.mp4"
    path.write_bytes(videos["mp4"].read_bytes())
    return path


def cache(tmp_path: Path, url: str) -> VideoCache:
    return FetchSettings(tmp_path / "cache", sources="mirror", mirror=url, fetch="window",
                         limits=Limits(attempts=2, backoff=0)).video_cache(sleep=lambda _: None)


@pytest.mark.parametrize("fault", ["wrong", "missing", "star", "extra", "longer"])
def test_a_faulty_ranged_answer_falls_back_to_one_whole_file_fetch(tmp_path, served, fault):
    server = FaultyRanges({"video": served}, fault)
    try:
        result = cache(tmp_path, server.url).fetch(VIDEO_ID, SECONDS)
    finally:
        server.close()
    assert (result.status, result.fetch_mode) == ("downloaded", "whole"), result.reason
    assert "fetched whole" in result.note and "206" in result.note
    assert result.path.read_bytes() == served.read_bytes()
    assert [r for r in server.requests if r[1] is None] == [(f"/{VIDEO_ID}.mp4", None)]


def test_when_the_whole_file_fails_too_the_video_is_lost_as_transient(tmp_path, served):
    server = FaultyRanges({"video": served}, "wrong", whole_status=403)
    try:
        result = cache(tmp_path, server.url).fetch(VIDEO_ID, SECONDS)
    finally:
        server.close()
    assert (result.status, result.transient) == ("unavailable", True)
    assert "206" in result.reason and "403" in result.reason
    assert not (tmp_path / "cache" / "unavailable.json").exists()


def redirecting(loop: bool):
    """A server that redirects each request to itself (``loop``) or along a chain of 7."""

    def respond(handler: http.server.BaseHTTPRequestHandler, number: int) -> None:
        hops = int(handler.path.rsplit("/", 1)[1]) if handler.path[-1].isdigit() else 0
        target = handler.path if loop else f"/hop/{hops + 1}"
        handler.send_response(302)
        handler.send_header("Location", target)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return respond


@pytest.mark.parametrize("fetch", ["window", "whole"])
@pytest.mark.parametrize("loop", [True, False], ids=["loop", "over-5"])
def test_redirect_loops_and_chains_are_transient_never_unavailable(tmp_path, fetch, loop):
    server = LoopbackServer(redirecting(loop))
    try:
        video_cache = cache(tmp_path, server.url + "/m/")
        result = video_cache.fetch(VIDEO_ID, SECONDS if fetch == "window" else None)
    finally:
        server.close()
    assert (result.status, result.transient) == ("unavailable", True), result.reason
    assert "redirect" in result.reason
    assert not (tmp_path / "cache" / "unavailable.json").exists()


@pytest.mark.parametrize("status", [404, 410])
def test_only_answers_that_mean_absence_are_recorded_unavailable(tmp_path, status):
    server = LoopbackServer(lambda handler, number: handler.send_error(status))
    try:
        result = cache(tmp_path, server.url).fetch(VIDEO_ID, SECONDS)
    finally:
        server.close()
    assert (result.status, result.transient) == ("unavailable", False)
    [*entries] = json.loads((tmp_path / "cache" / "unavailable.json").read_text())
    assert entries and all(str(status) in entry["reason"] for entry in entries)


# --- windows that reach the video's end cover it to its last frame ---


@pytest.fixture(scope="module")
def short_video(tmp_path_factory) -> Path:
    """19.3 s at 30 fps with B-frames (packets reordered), key frames every 2 s: second 19 is
    0.27 s before the end and after the last key frame (18 s), and a clip around it reaches
    past the last frame."""
    folder = tmp_path_factory.mktemp("short")
    write_stamped_video(folder / "plain.mp4", duration=19.3, fps=30, size=(160, 120))
    path = folder / f"{VIDEO_ID}.mp4"
    subprocess.run([ffmpeg_binary(), "-v", "error", "-i", str(folder / "plain.mp4"),  # noqa: S603
                    "-c:v", "libx264", "-preset", "veryfast", "-bf", "3", "-x264-params",
                    "keyint=60:min-keyint=60:scenecut=0", str(path)], check=True)
    return path


def test_a_window_to_the_video_s_end_keeps_its_last_keyframe_and_clip(tmp_path, short_video):
    server = RangeServer({"video": short_video})
    try:
        fetched = cache(tmp_path, server.url).fetch(VIDEO_ID, [15, 19, 19.94])
    finally:
        server.close()
    assert (fetched.fetch_mode, fetched.to_end) == ("window", True)
    window = dict(extract_keyframes(fetched.path, [15, 19], origin=fetched.origin,
                                    to_end=fetched.to_end))
    whole = dict(extract_keyframes(short_video, [15, 19]))
    assert window.keys() == whole.keys() == {15, 19}
    assert all(np.array_equal(window[s], whole[s]) for s in whole)
    clips = [extract_clips(path, [19], length=8, stride=8, clip_short_side=60, **options)
             for path, options in ((fetched.path, {"origin": fetched.origin, "to_end": True}),
                                   (short_video, {}))]
    [from_window], [from_whole] = map(list, clips)
    assert from_window.padded == from_whole.padded > 0
    assert np.array_equal(from_window.frames, from_whole.frames)


# --- the cache verifies the window sidecars it trusts ---


@pytest.mark.parametrize("edit", ["origin", "end", "bytes"])
def test_an_edited_sidecar_or_window_is_not_trusted_and_is_fetched_again(
        tmp_path, served, edit):
    server = RangeServer({"video": served})
    try:
        first = cache(tmp_path, server.url).fetch(VIDEO_ID, SECONDS)
        side = first.path.with_name(first.path.name + ".json")
        meta = json.loads(side.read_text())
        if edit == "bytes":  # same size and mtime, one byte changed near the end
            stat = first.path.stat()
            data = bytearray(first.path.read_bytes())
            data[-200] ^= 0xFF
            first.path.write_bytes(bytes(data))
            os.utime(first.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        else:
            meta[edit] = "1" if edit == "origin" else None
            side.write_text(json.dumps(meta))
        server.reset()
        again = cache(tmp_path, server.url).fetch(VIDEO_ID, SECONDS)
    finally:
        server.close()
    assert again.fetch_mode == "window" and server.requests  # fetched again, not trusted
    assert (again.origin, again.to_end) == (first.origin, False)
    window = dict(extract_keyframes(again.path, SECONDS, origin=again.origin))
    whole = dict(extract_keyframes(served, SECONDS))
    assert all(np.array_equal(window[s], whole[s]) for s in whole)


# --- a window fetch that fails says so once, without PyAV's dropped-exception noise ---


class FailingAfter(RangeServer):
    """Answers the first ``good`` requests, then 503 to every request."""

    def __init__(self, files: dict[str, Path], good: int):
        self.good = good
        super().__init__(files)

    def _respond(self, handler: http.server.BaseHTTPRequestHandler, number: int) -> None:
        if number > self.good:
            handler.send_error(503)
            return
        super()._respond(handler, number)


@pytest.mark.parametrize("kind, good", [("mkv", 1), ("mkv", 3), ("mp4", 1), ("mp4", 3)])
def test_a_window_fetch_failing_midway_prints_no_dropped_exceptions(
        tmp_path, videos, kind, good, capfd):
    served = tmp_path / f"{VIDEO_ID}.{kind}"
    served.write_bytes(videos[kind].read_bytes())
    server = FailingAfter({"video": served}, good)
    try:
        result = cache(tmp_path, server.url).fetch(VIDEO_ID, range(40, 71))
    finally:
        server.close()
    assert (result.status, result.transient) == ("unavailable", True)
    assert "503" in result.reason
    err = capfd.readouterr().err
    assert "being dropped" not in err and "Traceback" not in err
    assert not list((tmp_path / "cache" / "windows").glob("*"))


def test_a_full_disk_during_a_window_write_is_transient_and_downloads_nothing_more(
        tmp_path, served, monkeypatch, capsys):
    def full_disk(packets, template, out, muxer):
        av.error.err_check(-errno.ENOSPC, str(out))

    monkeypatch.setattr(window, "_write", full_disk)
    csv = tmp_path / "train.csv"
    csv.write_text(f"{VIDEO_ID},0040,0.1,0.1,0.5,0.5,12,0\n")
    server = RangeServer({"video": served})
    try:
        result = cache(tmp_path, server.url).fetch(VIDEO_ID, SECONDS)
        code = cli.main(["download", "--csv", str(csv), "--cache", str(tmp_path / "cache"),
                         "--sources", "mirror", "--mirror", server.url])
    finally:
        server.close()
    assert (result.status, result.transient) == ("unavailable", True)
    assert "no space left" in result.reason
    assert all(requested is not None for _, requested in server.requests)  # nothing whole
    out, err = capsys.readouterr()
    assert code == 1 and "no space left" in out + err and "Traceback" not in out + err
