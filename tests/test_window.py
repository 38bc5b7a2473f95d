"""Window fetch (issue 12) against a loopback Range-capable server: only the bytes the
keyframes need travel, and the window gives the whole file's frames."""

from __future__ import annotations

import bisect
import dataclasses
import http.server
import json
import re
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from loopback import LoopbackServer

from ava_keyframes import cli
from ava_keyframes.cache import CacheError
from ava_keyframes.frames import MissingKeyframes, extract_keyframes
from ava_keyframes.media import check_video, ffmpeg_binary
from ava_keyframes.remote import Limits, NoRanges, Remote, RemoteError
from ava_keyframes.settings import FetchSettings
from ava_keyframes.sidecar import read_window, sidecar_path
from ava_keyframes.sources import VideoCache
from ava_keyframes.stamp import read_frame_stamp, read_frame_times, write_stamped_video
from ava_keyframes.window import WindowError, fetch_window

DURATION = 120  # seconds: long enough that a 30 s window is a clear fraction
SECONDS = list(range(40, 71))
KINDS = ("mp4", "mp4-faststart", "mkv", "webm")


@pytest.fixture(scope="session")
def videos(tmp_path_factory) -> dict[str, Path]:
    """120 s at 160x120 and 29.97 fps (timestamps Matroska cannot hold exactly), key frames
    every 2 s; mp4 with the index at the end (ffmpeg's default) and at the start."""
    folder = tmp_path_factory.mktemp("mirror")
    paths = {}
    for kind in ("mp4", "mkv", "webm"):
        paths[kind] = folder / f"clip.{kind}"
        write_stamped_video(paths[kind], duration=DURATION, fps=29.97, size=(160, 120),
                            container=kind, start_time=0.5 if kind == "mkv" else 0.0)
    paths["mp4-faststart"] = folder / "faststart.mp4"
    subprocess.run([ffmpeg_binary(), "-v", "error", "-i", str(paths["mp4"]),  # noqa: S603
                    "-c", "copy", "-movflags", "+faststart", str(paths["mp4-faststart"])],
                   check=True)
    return paths


class RangeServer(LoopbackServer):
    """Serves files by name (``url`` ends with "/"), honouring single byte ranges (206), with
    an ETag; counts requests and body bytes sent. ``ranges=False`` answers every request with
    the whole file (200); ``drop`` cuts that many next answers short; ``etag`` can be changed."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = {f"/{path.name}": path.read_bytes() for path in files.values()}
        self.bytes_sent = 0
        self.ranges = True
        self.drop = 0
        self.etag = '"v1"'
        self.replaced_after: int | None = None  # requests after which the file "changes"
        super().__init__(self._respond)
        self.url += "/"

    def _respond(self, handler: http.server.BaseHTTPRequestHandler, number: int) -> None:
        if self.replaced_after is not None and number > self.replaced_after:
            self.etag = '"replaced"'
        data = self.files.get(handler.path)
        if data is None:
            handler.send_error(404)
            return
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", handler.headers.get("Range") or "")
        if match and self.ranges:
            start = int(match[1])
            end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
            body = data[start:end + 1]
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            body = data
            handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("ETag", self.etag)
        handler.end_headers()
        if self.drop:
            self.drop -= 1
            body = body[: len(body) // 2]
        handler.wfile.write(body)  # a client that hangs up (after a 200 it wanted no body) ends it
        self.bytes_sent += len(body)

    def reset(self) -> None:
        self.requests.clear()
        self.bytes_sent = 0


@pytest.fixture
def server(videos):
    server = RangeServer(videos)
    yield server
    server.close()


def remote() -> Remote:
    return Remote(Limits(attempts=2, backoff=0, read_timeout=10), sleep=lambda _: None)


def fetch(server: RangeServer, video: Path, seconds, cache: Path):
    for folder in ("windows", "partial"):
        (cache / folder).mkdir(exist_ok=True)
    return fetch_window(server.url + video.name, seconds, cache / "windows" / video.name,
                        remote=remote(), partial_dir=cache / "partial")


def keyframes(path: Path, seconds, origin=None) -> dict:
    return dict(extract_keyframes(path, seconds, origin=origin))


def layout(path: Path) -> tuple[int, Fraction, int]:
    """(file size, duration of the video stream, bytes that are not video packets: the
    container's index and headers)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size]
        times = [p.pts * stream.time_base for p in packets]
    size = path.stat().st_size
    return size, max(times) - min(times), size - sum(p.size for p in packets)


def allowed_bytes(path: Path, span: float) -> float:
    """1.5 x the share of the file that ``span`` seconds are, plus its container index."""
    size, duration, index = layout(path)
    return 1.5 * size * span / float(duration) + index


def assert_same_frames(window: dict, whole: dict) -> None:
    assert window.keys() == whole.keys()
    for second in whole:
        assert np.array_equal(window[second], whole[second]), second


@pytest.mark.parametrize("kind", KINDS)
def test_a_window_gives_the_whole_files_keyframes_from_a_fraction_of_its_bytes(
        tmp_path, server, videos, kind):
    video = videos[kind]
    window = fetch(server, video, SECONDS, tmp_path)
    assert window.path.suffix == video.suffix  # the same container kind, a stream copy
    assert window.bytes_fetched == server.bytes_sent
    assert window.requests == len(server.requests)
    assert server.bytes_sent <= allowed_bytes(video, SECONDS[-1] - SECONDS[0])
    assert window.path.stat().st_size < video.stat().st_size / 2
    got = keyframes(window.path, SECONDS, window.origin)
    assert_same_frames(got, keyframes(video, SECONDS))
    # the stamps say which frame each is: the first at or after its second
    times = read_frame_times(video)
    assert [read_frame_stamp(got[s]) for s in SECONDS] == [
        bisect.bisect_left(times, s) for s in SECONDS]


def test_the_window_keeps_every_packet_time_and_byte_of_its_span(tmp_path, server, videos):
    video = videos["mkv"]  # starts at 0.5 s: times count from the first frame, not 0
    window = fetch(server, video, SECONDS, tmp_path)
    with av.open(str(video)) as whole, av.open(str(window.path)) as part:
        original = {p.pts: bytes(p) for p in whole.demux(whole.streams.video[0]) if p.size}
        copied = {p.pts: bytes(p) for p in part.demux(part.streams.video[0]) if p.size}
    assert copied and all(original[pts] == data for pts, data in copied.items())
    assert window.origin == Fraction(1, 2)
    meta = json.loads(sidecar_path(window.path).read_text())
    assert (meta["url"], meta["size"], meta["etag"]) == (server.url + video.name,
                                                         video.stat().st_size, '"v1"')
    assert Fraction(meta["start"]) <= SECONDS[0] and Fraction(meta["end"]) >= SECONDS[-1]


@pytest.mark.parametrize("kind", ["mp4", "mkv"])
def test_a_second_fetch_makes_no_request_and_more_seconds_fetch_only_the_difference(
        tmp_path, server, videos, kind):
    video = videos[kind]
    first = fetch(server, video, SECONDS, tmp_path)
    server.reset()
    again = fetch(server, video, SECONDS[5:10], tmp_path)
    assert server.requests == [] and again.bytes_fetched == 0 and again.path == first.path
    wider = list(range(30, 91))
    grown = fetch(server, video, wider, tmp_path)
    missing = (SECONDS[0] - wider[0]) + (wider[-1] - SECONDS[-1])  # 30 of 60 s are new
    assert 0 < server.bytes_sent <= allowed_bytes(video, missing)
    assert grown.start <= 30 and grown.end >= 90
    assert_same_frames(keyframes(grown.path, wider, grown.origin), keyframes(video, wider))


def test_a_server_without_range_support_is_noticed_before_the_body(tmp_path, server, videos):
    video = videos["mp4"]
    server.ranges = False
    with pytest.raises(NoRanges):
        fetch(server, video, SECONDS, tmp_path)
    assert len(server.requests) == 1
    assert list((tmp_path / "windows").iterdir()) == list((tmp_path / "partial").iterdir()) == []


def test_an_interrupted_range_is_read_again_and_nothing_half_made_is_kept(
        tmp_path, server, videos):
    video = videos["webm"]
    first = fetch(server, video, SECONDS, tmp_path)
    before = first.path.read_bytes()
    server.drop = 1  # one answer cut short: read again, within the attempts
    grown = fetch(server, video, range(30, 80), tmp_path)
    assert grown.start <= 30 and grown.end >= 79
    server.drop = 10**6  # every answer cut short: the fetch fails, the old window stays
    with pytest.raises(RemoteError):
        fetch(server, video, range(0, 119), tmp_path)
    assert read_window(grown.path) == grown.__class__(grown.path, grown.origin, grown.start,
                                                      grown.end, grown.source)
    assert grown.path.read_bytes() != before
    assert list((tmp_path / "partial").iterdir()) == []
    killed = tmp_path / "partial" / f".{video.name}.k1ll3d.webm"  # as a killed fetch leaves it
    killed.write_bytes(b"half")
    server.drop = 0
    fetch(server, video, range(20, 80), tmp_path)
    assert list((tmp_path / "partial").iterdir()) == []


def test_a_changed_file_on_the_server_starts_a_new_window(tmp_path, server, videos):
    video = videos["mp4"]
    server.replaced_after = 3  # replaced while the window is being read: nothing is kept
    with pytest.raises(WindowError, match="changed on the server") as raised:
        fetch(server, video, SECONDS, tmp_path)
    assert raised.value.transient
    assert list((tmp_path / "windows").iterdir()) == list((tmp_path / "partial").iterdir()) == []
    server.replaced_after, server.etag = None, '"v1"'
    fetch(server, video, SECONDS, tmp_path)
    server.etag = '"v2"'
    server.reset()
    window = fetch(server, video, range(60, 100), tmp_path)
    assert window.start > 50  # not joined to the old one: fetched afresh
    assert window.source.etag == '"v2"'


def test_a_sidecar_that_does_not_match_its_file_is_ignored(tmp_path, server, videos):
    video = videos["mkv"]
    window = fetch(server, video, SECONDS, tmp_path)
    with open(window.path, "ab") as handle:
        handle.write(b"\0")
    assert read_window(window.path) is None
    server.reset()
    again = fetch(server, video, SECONDS, tmp_path)
    assert server.requests and read_window(again.path) is not None


@pytest.mark.parametrize("kind", ["mp4", "mkv"])
def test_seconds_past_the_end_give_a_window_to_the_end(tmp_path, server, videos, kind):
    video = videos[kind]
    window = fetch(server, video, [110, 150], tmp_path)
    assert window.end is None
    # checked to its end as the cache checks it: a Matroska header's duration counts from
    # the segment's zero, not from the window's first cluster
    check_video(window.path, until=None, origin=window.origin)
    # 119 s lies after the last key frame (118.1 s): the window holds the video's end
    assert_same_frames(keyframes(window.path, [110, 119], window.origin),
                       keyframes(video, [110, 119]))
    with pytest.raises(MissingKeyframes):  # as from the whole file: no frame that late
        list(extract_keyframes(window.path, [150], origin=window.origin))


def test_a_file_that_is_not_a_video_is_a_window_error(tmp_path, server, videos):
    server.files["/junk.mp4"] = b"\0" * 100_000
    with pytest.raises(WindowError):
        fetch(server, Path("junk.mp4"), [1], tmp_path)
    assert list((tmp_path / "windows").iterdir()) == list((tmp_path / "partial").iterdir()) == []


def test_a_link_planted_in_the_cache_is_never_followed(tmp_path, server, videos):
    video = videos["mp4"]
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    (tmp_path / "windows").mkdir()
    sidecar_path(tmp_path / "windows" / video.name).symlink_to(outside)
    (tmp_path / "windows" / video.name).symlink_to(video)
    assert read_window(tmp_path / "windows" / video.name) is None
    with pytest.raises(CacheError, match="a symbolic link in the video cache, refused"):
        fetch(server, video, SECONDS, tmp_path)  # refused in one line (issue 23), not replaced
    assert outside.read_text() == "{}" and video.stat().st_size == layout(video)[0]


X264 = ["-c:v", "libx264", "-preset", "veryfast", "-bf", "3", "-x264-params"]


@pytest.mark.parametrize("name, encoder", [
    ("open_gop.mkv", [*X264, "open-gop=1:keyint=20:min-keyint=20:scenecut=0"]),
    ("b_pyramid.mp4", [*X264, "b-pyramid=normal:b-adapt=0:keyint=30"]),
    ("altref.webm", ["-c:v", "libvpx-vp9", "-deadline", "good", "-cpu-used", "8",
                     "-auto-alt-ref", "1", "-lag-in-frames", "16", "-g", "60", "-b:v", "200k"])])
def test_open_gops_b_pyramids_and_hidden_frames_give_the_same_frames(
        tmp_path, videos, name, encoder):
    """Frames shown before the key frame they follow in decode order (open GOPs), B-frames
    referencing B-frames, VP9's hidden alt-ref frames: the window answers as the whole file."""
    video = tmp_path / name
    subprocess.run([ffmpeg_binary(), "-v", "error", "-i", str(videos["mp4"]),  # noqa: S603
                    "-t", "30", *encoder, str(video)], check=True)
    server = RangeServer({"video": video})
    try:
        window = fetch(server, video, range(10, 21), tmp_path)
    finally:
        server.close()
    seconds = [n / 4 for n in range(40, 81)]  # 10 s .. 20 s by quarter seconds
    assert_same_frames(keyframes(window.path, seconds, window.origin), keyframes(video, seconds))


def test_a_real_world_encode_with_audio_gives_the_same_frames(tmp_path):
    """Big Buck Bunny (an encode this project did not make; audio first in the file): the
    window holds the video stream only, and its frames are the whole file's."""
    clip = Path(__file__).parent / "data" / "video" / "bigbuckbunny.mp4"
    server = RangeServer({"clip": clip})
    try:
        window = fetch(server, clip, [1, 2, 3], tmp_path)
    finally:
        server.close()
    with av.open(str(window.path)) as container:
        assert [s.type for s in container.streams] == ["video"]
    assert_same_frames(keyframes(window.path, [1, 2, 3], window.origin),
                       keyframes(clip, [1, 2, 3]))


# --- the video cache fetches windows from the mirror ---

VIDEO_ID = "abcdefghijk"  # not in the official list: tried as .mkv (404), then .mp4


@pytest.fixture
def mirror(tmp_path, videos):
    folder = tmp_path / "mirror"
    folder.mkdir()
    served = folder / f"{VIDEO_ID}.mp4"
    served.write_bytes(videos["mp4"].read_bytes())
    server = RangeServer({"video": served})
    yield server, served
    server.close()


def video_cache(tmp_path, server, **flags) -> VideoCache:
    """A mirror-only cache on ``server``; ``flags`` and the environment settle the rest."""
    settings = FetchSettings.resolve(cache_dir=tmp_path / "cache", flags={
        "sources": "mirror", "mirror": server.url, **flags})
    settings = dataclasses.replace(settings, limits=Limits(attempts=2, backoff=0))
    return settings.video_cache(sleep=lambda _: None)


def test_the_mirror_source_fetches_windows_by_default_and_reuses_them(
        tmp_path, mirror, monkeypatch):
    monkeypatch.delenv("AVA_KEYFRAMES_FETCH", raising=False)
    server, video = mirror
    result = video_cache(tmp_path, server).fetch(VIDEO_ID, SECONDS)
    assert (result.status, result.fetch_mode, result.note) == ("downloaded", "window", None)
    assert result.path.parent.name == "windows" and result.bytes_fetched == server.bytes_sent
    assert result.bytes_fetched <= allowed_bytes(video, SECONDS[-1] - SECONDS[0])
    assert_same_frames(keyframes(result.path, SECONDS, result.origin),
                       keyframes(video, SECONDS))
    server.reset()
    again = video_cache(tmp_path, server).fetch(VIDEO_ID, SECONDS[::3])
    assert (again.status, again.fetch_mode, again.bytes_fetched) == ("cached", "cache", 0)
    assert server.requests == [] and again.path == result.path
    wider = video_cache(tmp_path, server).fetch(VIDEO_ID, range(20, 100))
    assert wider.fetch_mode == "window"
    assert 0 < wider.bytes_fetched <= allowed_bytes(video, (SECONDS[0] - 20) + (99 - SECONDS[-1]))
    assert_same_frames(keyframes(wider.path, range(20, 100), wider.origin),
                       keyframes(video, range(20, 100)))


def test_whole_files_on_request_without_seconds_and_from_a_server_without_ranges(
        tmp_path, mirror, monkeypatch):
    server, video = mirror
    monkeypatch.setenv("AVA_KEYFRAMES_FETCH", "whole")
    result = video_cache(tmp_path / "a", server).fetch(VIDEO_ID, SECONDS)
    assert (result.fetch_mode, result.path.parent.name) == ("whole", "videos")
    monkeypatch.delenv("AVA_KEYFRAMES_FETCH")
    assert video_cache(tmp_path / "b", server).fetch(VIDEO_ID).fetch_mode == "whole"
    server.ranges = False
    server.reset()
    fallback = video_cache(tmp_path / "c", server).fetch(VIDEO_ID, SECONDS)
    assert (fallback.fetch_mode, fallback.path.read_bytes()) == ("whole", video.read_bytes())
    assert "does not answer byte ranges" in fallback.note
    assert [r for r in server.requests if r[0].endswith(".mp4")] == [  # the whole file once
        (f"/{VIDEO_ID}.mp4", "bytes=0-16383"), (f"/{VIDEO_ID}.mp4", None)]
    with pytest.raises(ValueError, match="fetch mode"):
        video_cache(tmp_path / "d", server, fetch="some")


def test_cli_download_fetches_windows_for_a_csv_and_whole_files_on_request(
        tmp_path, mirror, capsys, monkeypatch):
    monkeypatch.delenv("AVA_KEYFRAMES_FETCH", raising=False)
    server, video = mirror
    csv = tmp_path / "train.csv"
    csv.write_text("".join(f"{VIDEO_ID},{s:04d},0.1,0.1,0.5,0.5,12,0\n" for s in (40, 55, 70)))
    common = ["download", "--csv", str(csv), "--sources", "mirror", "--mirror", server.url,
              "--json"]
    assert cli.main([*common, "--cache", str(tmp_path / "a")]) == 0
    line = json.loads(capsys.readouterr().out)
    assert (line["fetch_mode"], Path(line["path"]).parent.name) == ("window", "windows")
    assert 0 < line["bytes_fetched"] == server.bytes_sent < video.stat().st_size / 2
    assert cli.main([*common, "--cache", str(tmp_path / "b"), "--fetch", "whole"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert (line["fetch_mode"], line["bytes_fetched"]) == ("whole", video.stat().st_size)


def test_a_failed_read_is_reported_once_without_pyav_dropped_exception_tracebacks(
        tmp_path, server, videos, capfd):
    server.replaced_after = 3  # every read after the third fails
    with pytest.raises(WindowError, match="changed on the server"):
        fetch(server, videos["mp4"], SECONDS, tmp_path)
    assert "exception being dropped" not in capfd.readouterr().err
    server.replaced_after, server.drop = None, 10**6
    with pytest.raises(RemoteError):
        fetch(server, videos["webm"], SECONDS, tmp_path)
    assert "exception being dropped" not in capfd.readouterr().err
