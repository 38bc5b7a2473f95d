"""Video sources and cache, against a loopback HTTP server (no other network)."""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import subprocess
import time

import pytest
from loopback import LoopbackServer

import ava_keyframes
from ava_keyframes import cli
from ava_keyframes.media import ffmpeg_binary
from ava_keyframes.remote import Hosts, Limits, Meter, Permanent
from ava_keyframes.settings import FetchSettings
from ava_keyframes.sources import VideoCache

GOOD = "abcdefghijk"  # not in the official mirror list: tried as .mkv, .mp4, .webm
MISSING = "zzzzzzzzzzz"
LISTED = "_-Z6wFjXtGQ"  # listed as _-Z6wFjXtGQ.mkv
DASHED = "-oEVIL_abcd"  # a valid id that looks like an option
HOSTILE = ["../x", "-oEVIL", "a;b", "abcdefghijkl", "../../etc/pa", "abc/defghij"]


@pytest.fixture(scope="session")
def video_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("video") / "tiny.mp4"
    subprocess.run([ffmpeg_binary(), "-v", "error", "-f", "lavfi", "-i",  # noqa: S603
                    "testsrc2=size=64x48:rate=10", "-t", "1", "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", str(path)], check=True)
    return path.read_bytes()


class Server(LoopbackServer):
    """Serves ``files`` by URL path; ``script[path]`` lists what to do on successive requests:
    an HTTP status (int or (status, headers)), "drop" (close the connection half-way),
    "ignore-range" (answer 200 with everything) or "slow" (answer after 1 s)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.script: dict[str, list] = {}
        self.bytes_sent = 0
        super().__init__(self._respond)

    def _respond(self, handler: http.server.BaseHTTPRequestHandler, number: int) -> None:
        steps = self.script.get(handler.path)
        step = steps.pop(0) if steps else None
        if step == "slow":
            time.sleep(1.0)
        if isinstance(step, int) or isinstance(step, tuple) or handler.path not in self.files:
            status, headers = step if isinstance(step, tuple) else (step or 404, {})
            handler.send_response(status)
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        data = self.files[handler.path]
        start = 0
        if handler.headers.get("Range") and step != "ignore-range":
            start = int(handler.headers["Range"].removeprefix("bytes=").rstrip("-"))
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            handler.send_response(200)
        body = data[start:]
        handler.send_header("Content-Type", "video/mp4")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if step == "drop":
            body = body[: len(body) // 2]
        handler.wfile.write(body)
        self.bytes_sent += len(body)

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def no_source_env(monkeypatch):
    for name in [name for name in os.environ if name.startswith("AVA_KEYFRAMES_")]:
        monkeypatch.delenv(name)


def mirror_cache(cache_dir, server, waits=None, **options) -> VideoCache:
    """A mirror-only cache on ``server`` with short limits; ``options`` of Limits go there."""
    limits = {name: options.pop(name) for name in list(options) if hasattr(Limits, name)}
    limits = Limits(**{"read_timeout": 5, "attempts": 4, "backoff": 0.01, **limits})
    settings = FetchSettings(cache_dir, sources="mirror", mirror=server.url + "/m/",
                             limits=limits)
    return settings.video_cache(sleep=(waits if waits is not None else []).append,
                                hosts=Hosts(), **options)


def test_mirror_download_is_byte_identical_and_a_second_run_makes_no_request(
        tmp_path, server, video_bytes):
    server.files[f"/m/{GOOD}.mp4"] = video_bytes
    result = mirror_cache(tmp_path / "c", server).fetch(GOOD)
    assert (result.status, result.source) == ("downloaded", "mirror")
    assert result.path == tmp_path / "c" / "videos" / f"{GOOD}.mp4"
    assert result.path.read_bytes() == video_bytes
    assert server.paths() == [f"/m/{GOOD}.mkv", f"/m/{GOOD}.mp4"]
    assert list((tmp_path / "c" / "partial").iterdir()) == []

    again = mirror_cache(tmp_path / "c", server).fetch_many([GOOD, GOOD], progress=False)
    assert [(r.status, r.source, r.path) for r in again] == [("cached", "cache", result.path)]
    assert len(server.requests) == 2


def test_an_id_in_the_official_list_is_fetched_under_its_listed_name(
        tmp_path, server, video_bytes):
    server.files[f"/m/{LISTED}.mkv"] = video_bytes
    result = mirror_cache(tmp_path, server).fetch(LISTED)
    assert result.path.name == f"{LISTED}.mkv"
    assert server.paths() == [f"/m/{LISTED}.mkv"]


def test_a_dropped_connection_resumes_with_a_range_request(tmp_path, server, video_bytes):
    path = f"/m/{GOOD}.mp4"
    server.files[path] = video_bytes
    server.script[path] = ["drop"]
    waits = []
    result = mirror_cache(tmp_path, server, waits).fetch(GOOD)
    assert result.status == "downloaded"
    assert result.path.read_bytes() == video_bytes
    ranges = [rng for p, rng in server.requests if p == path]
    assert ranges == [None, f"bytes={len(video_bytes) // 2}-"]
    assert server.bytes_sent < 2 * len(video_bytes)
    assert len(waits) == 1


def test_a_server_that_ignores_range_restarts_the_file_cleanly(tmp_path, server, video_bytes):
    path = f"/m/{GOOD}.mp4"
    server.files[path] = video_bytes
    server.script[path] = ["drop", "ignore-range"]
    result = mirror_cache(tmp_path, server).fetch(GOOD)
    assert [rng is not None for p, rng in server.requests if p == path] == [False, True]
    assert result.path.read_bytes() == video_bytes


def test_404_is_recorded_skipped_later_and_retried_on_request(tmp_path, server, video_bytes):
    server.files[f"/m/{GOOD}.mp4"] = video_bytes
    missing, good = mirror_cache(tmp_path, server).fetch_many([MISSING, GOOD], jobs=2,
                                                               progress=False)
    assert (good.status, missing.status, missing.path) == ("downloaded", "unavailable", None)
    assert "404" in missing.reason
    [entry] = json.loads((tmp_path / "unavailable.json").read_text())
    assert (entry["id"], entry["source"]) == (MISSING, "mirror")
    assert "404" in entry["reason"] and entry["time"].startswith("20")

    before = len(server.requests)
    skipped = mirror_cache(tmp_path, server).fetch(MISSING)
    assert skipped.status == "unavailable" and "recorded" in skipped.reason
    assert len(server.requests) == before

    server.files[f"/m/{MISSING}.webm"] = video_bytes
    retried = mirror_cache(tmp_path, server, retry_unavailable=True).fetch(MISSING)
    assert (retried.status, retried.path.name) == ("downloaded", f"{MISSING}.webm")
    assert json.loads((tmp_path / "unavailable.json").read_text()) == []


def test_429_waits_for_retry_after_then_succeeds(tmp_path, server, video_bytes):
    path = f"/m/{GOOD}.mp4"
    server.files[path] = video_bytes
    server.script[path] = [(429, {"Retry-After": "7"})]
    waits = []
    result = mirror_cache(tmp_path, server, waits).fetch(GOOD)
    assert result.status == "downloaded"
    assert waits == [7.0]


def test_5xx_and_timeouts_are_retried_with_exponential_backoff(tmp_path, server, video_bytes):
    path = f"/m/{GOOD}.mp4"
    server.files[path] = video_bytes
    server.script[path] = [503, 500, "slow"]
    waits = []
    cache = FetchSettings(tmp_path, sources="mirror", mirror=server.url + "/m",
                          limits=Limits(read_timeout=0.3, attempts=4, backoff=0.01),
                          ).video_cache(sleep=waits.append)
    result = cache.fetch(GOOD)
    assert result.path.read_bytes() == video_bytes
    assert waits == [0.01, 0.02, 0.04]


def test_transient_failures_give_up_without_recording(tmp_path, server, video_bytes):
    path = f"/m/{GOOD}.mp4"
    server.files[path] = video_bytes
    server.script[path] = [503] * 10
    result = mirror_cache(tmp_path, server, attempts=3).fetch(GOOD)
    assert result.status == "unavailable" and "gave up after 3" in result.reason
    assert not (tmp_path / "unavailable.json").exists()


def test_files_over_the_size_limit_or_not_decodable_are_not_kept(tmp_path, server, video_bytes):
    server.files[f"/m/{GOOD}.mp4"] = video_bytes
    server.files[f"/m/{MISSING}.mkv"] = b"<html>not a video</html>" * 40
    big = mirror_cache(tmp_path, server, max_bytes=len(video_bytes) - 1).fetch(GOOD)
    bad = mirror_cache(tmp_path, server).fetch(MISSING)
    assert big.status == bad.status == "unavailable"
    assert "limit" in big.reason and "not a decodable video" in bad.reason
    assert not (tmp_path / "videos").exists()
    assert list((tmp_path / "partial").iterdir()) == []


def test_youtube_source_downloads_through_ytdlp_and_the_url_template(
        tmp_path, server, video_bytes, monkeypatch):
    for video_id in (GOOD, DASHED):
        server.files[f"/yt/{video_id}.mp4"] = video_bytes
    monkeypatch.chdir(tmp_path.parent)  # a relative cache folder
    cache = FetchSettings(tmp_path.name, sources="youtube",
                          youtube_template=server.url + "/yt/{id}.mp4",
                          limits=Limits(read_timeout=5, backoff=0.01),
                          ).video_cache(sleep=lambda s: None)
    results = cache.fetch_many([GOOD, DASHED, MISSING], jobs=1, progress=False)
    assert [(r.status, r.source) for r in results[:2]] == [("downloaded", "youtube")] * 2
    for result, video_id in zip(results[:2], (GOOD, DASHED), strict=True):
        assert result.path == tmp_path / "videos" / f"{video_id}.mp4"
        assert result.path.read_bytes() == video_bytes
    assert results[2].status == "unavailable" and "404" in results[2].reason
    [entry] = json.loads((tmp_path / "unavailable.json").read_text())
    assert (entry["id"], entry["source"]) == (MISSING, "youtube")
    assert list((tmp_path / "partial").iterdir()) == []


def test_sources_in_order_first_success_wins_and_local_files_are_used_in_place(
        tmp_path, server, video_bytes):
    manual = tmp_path / "manual" / "videos"
    manual.mkdir(parents=True)
    (manual / f"{GOOD}.webm").write_bytes(video_bytes)
    server.files[f"/yt/{MISSING}.mp4"] = video_bytes
    cache = FetchSettings(tmp_path / "cache", sources="local,mirror,youtube",
                          mirror=server.url + "/m/", youtube_template=server.url + "/yt/{id}.mp4",
                          manual_dir=tmp_path / "manual", limits=Limits(read_timeout=5),
                          ).video_cache(sleep=lambda s: None)
    local = cache.fetch(GOOD)
    assert (local.status, local.source, local.path) == ("cached", "local", manual / f"{GOOD}.webm")
    assert server.requests == [] and not (tmp_path / "cache").exists()
    fallback = cache.fetch(MISSING)
    assert (fallback.status, fallback.source) == ("downloaded", "youtube")
    assert server.paths()[:3] == [f"/m/{MISSING}{ext}" for ext in (".mkv", ".mp4", ".webm")]


def test_each_source_says_what_it_lacks_and_only_downloading_ones_are_recorded(
        tmp_path, server):
    folder = tmp_path / "manual" / "videos"
    folder.mkdir(parents=True)
    settings = FetchSettings(tmp_path / "cache", sources="local,mirror", mirror=server.url + "/m/",
                             manual_dir=tmp_path / "manual", limits=Limits(read_timeout=5))
    cache = settings.video_cache(hosts=Hosts())
    local, mirror = cache.sources
    assert [(s.name, s.downloads) for s in cache.sources] == [("local", False), ("mirror", True)]
    with pytest.raises(Permanent, match=f"not in {folder}"):
        local.get(MISSING, None, Meter())
    result = cache.fetch(MISSING)
    assert result.reason.startswith(f"local: not in {folder}; mirror: ") and not result.transient
    [entry] = json.loads((tmp_path / "cache" / "unavailable.json").read_text())
    assert (entry["id"], entry["source"]) == (MISSING, "mirror")
    no_folder = dataclasses.replace(settings, manual_dir=None).video_cache()
    assert [source.name for source in no_folder.sources] == ["mirror"]


def test_environment_variables_configure_sources_mirror_and_template(
        tmp_path, server, monkeypatch, video_bytes):
    monkeypatch.setenv("AVA_KEYFRAMES_SOURCES", "youtube,mirror")
    monkeypatch.setenv("AVA_KEYFRAMES_MIRROR", server.url + "/env/")
    monkeypatch.setenv("AVA_KEYFRAMES_YOUTUBE_TEMPLATE", server.url + "/t/{id}.mp4")
    server.files[f"/env/{GOOD}.mkv"] = video_bytes
    cache = FetchSettings.resolve(cache_dir=tmp_path).video_cache()
    assert [source.name for source in cache.sources] == ["youtube", "mirror"]
    result = cache.fetch(GOOD)
    assert result.source == "mirror" and server.paths()[0] == f"/t/{GOOD}.mp4"
    for bad in ({"sources": "mirror,ftp"}, {"mirror": "file:///etc/"},
                {"youtube_template": "https://example.org/"}):
        with pytest.raises(ValueError, match="invalid"):
            FetchSettings.resolve(cache_dir=tmp_path, flags=bad)
        with pytest.raises(ValueError, match="invalid"):
            FetchSettings(tmp_path, **bad)


def test_a_cache_made_from_settings_never_reads_the_environment(
        tmp_path, server, monkeypatch, video_bytes):
    server.files[f"/m/{GOOD}.mp4"] = video_bytes
    settings = FetchSettings(tmp_path / "cache", sources="mirror", mirror=server.url + "/m/",
                             fetch="whole", limits=Limits(read_timeout=5, backoff=0.01))
    for name, bad in {"SOURCES": "ftp", "MIRROR": "file:///etc/", "FETCH": "some",
                      "YOUTUBE_TEMPLATE": "https://example.org/", "READ_TIMEOUT": "soon",
                      "ATTEMPTS": "0", "MAX_BYTES": "1", "CACHE": str(tmp_path / "other")
                      }.items():
        monkeypatch.setenv(f"AVA_KEYFRAMES_{name}", bad)
    cache = settings.video_cache(sleep=lambda s: None, hosts=Hosts())
    assert [source.name for source in cache.sources] == ["mirror"]
    result = cache.fetch(GOOD, seconds=[0])
    assert (result.status, result.source, result.fetch_mode) == ("downloaded", "mirror", "whole")
    assert result.path == tmp_path / "cache" / "videos" / f"{GOOD}.mp4"
    assert not (tmp_path / "other").exists()


def test_hostile_ids_are_rejected_with_nothing_written(tmp_path, server, capsys):
    cache = mirror_cache(tmp_path / "cache", server)
    with pytest.raises(ValueError, match="invalid video id"):
        cache.fetch(f"{GOOD[:-1]}x\n")
    for video_id in HOSTILE:
        with pytest.raises(ValueError, match="invalid video id"):
            cache.fetch(video_id)
        with pytest.raises(ValueError, match="invalid video id"):
            cache.fetch_many([GOOD, video_id], progress=False)
        code = cli.main(["download", "--ids", f"{GOOD},{video_id}", "--cache",
                         str(tmp_path / "cache"), "--sources", "mirror", "--mirror", server.url])
        assert code == 2 and "invalid video id" in capsys.readouterr().err
    assert server.requests == []
    assert list(tmp_path.iterdir()) == []


def test_download_as_a_library_from_ids_then_from_a_csv(tmp_path, server, video_bytes):
    server.files[f"/m/{GOOD}.mp4"] = video_bytes
    settings = FetchSettings(tmp_path / "c", sources="mirror", mirror=server.url + "/m",
                             limits=Limits(read_timeout=5, backoff=0.01))
    done = ava_keyframes.download(settings, ids=[GOOD, MISSING, GOOD], progress=False)
    assert [(r.id, r.status, r.source) for r in done.results] == [
        (GOOD, "downloaded", "mirror"), (MISSING, "unavailable", None)]
    assert done.counts == {"cached": 0, "downloaded": 1, "unavailable": 1}
    assert (done.transient, done.bytes_fetched) == (0, len(video_bytes))
    assert done.cache_dir == tmp_path / "c" and "404" in done.results[1].reason

    csv = tmp_path / "train.csv"
    csv.write_text(f"{GOOD},0902,0.1,0.1,0.5,0.5,12,0\n{MISSING},0902\n")
    again = ava_keyframes.download(settings, csv=csv, jobs=1, progress=False)
    assert [(r.id, r.status) for r in again.results] == [(GOOD, "cached"),
                                                         (MISSING, "unavailable")]
    assert "recorded" in again.results[1].reason and again.bytes_fetched == 0
    for wrong, message in (({"ids": ["../x"]}, "invalid video id"), ({"ids": []}, "no video ids"),
                           ({}, "either ids or csv"), ({"ids": [GOOD], "jobs": 0}, "jobs")):
        with pytest.raises(ValueError, match=message):
            ava_keyframes.download(settings, **wrong)


def test_cli_download_json_lines_from_ids_and_csv(tmp_path, server, capsys, video_bytes):
    server.files[f"/m/{GOOD}.mp4"] = video_bytes
    common = ["--cache", str(tmp_path / "c"), "--sources", "mirror", "--mirror", server.url + "/m",
              "--json"]
    assert cli.main(["download", "--ids", f"{GOOD},{MISSING}", *common]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["id"], d["status"], d["source"]) for d in lines] == [
        (GOOD, "downloaded", "mirror"), (MISSING, "unavailable", None)]
    assert lines[0]["path"] == str(tmp_path / "c" / "videos" / f"{GOOD}.mp4")
    assert lines[0]["reason"] is None and "404" in lines[1]["reason"]

    csv = tmp_path / "train.csv"
    csv.write_text(f"{GOOD},0902,0.1,0.1,0.5,0.5,12,0\n{GOOD},0903,0.1,0.1,0.5,0.5,12,0\n"
                   f"{MISSING},0902\n")
    assert cli.main(["download", "--csv", str(csv), *common]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["id"], d["status"]) for d in lines] == [(GOOD, "cached"), (MISSING, "unavailable")]

    csv.write_text(f"{GOOD},0902,0.1,0.1,0.5,0.5,12,0\n../evil/xx,0902,0.1,0.1,0.5,0.5,12,0\n")
    assert cli.main(["download", "--csv", str(csv), *common]) == 2
    assert f"{csv}:2: video_id: invalid video id" in capsys.readouterr().err
