"""What the cache opens for writing (issue 23): only regular files with one link, never a
hard link planted to a file elsewhere, never a folder in a file's place; each refused in
one line, the planted target untouched."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from test_cache import GOOD, cache_on, file_server, no_cache_env, serve, video
from test_window import VIDEO_ID, RangeServer, videos

from ava_keyframes import cli
from ava_keyframes.cache import CacheError
from ava_keyframes.remote import Limits
from ava_keyframes.settings import FetchSettings
from ava_keyframes.sources import VideoCache

__all__ = ["no_cache_env", "serve", "video", "videos"]  # fixtures, used by name


def test_a_hard_link_planted_as_a_partial_file_is_refused_and_its_target_untouched(
        tmp_path, serve, video, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    partial = tmp_path / "cache" / "partial"
    partial.mkdir(parents=True)
    os.link(victim, partial / f"{GOOD}.mkv")
    server = serve(file_server(video))
    with pytest.raises(CacheError, match=f"partial/{GOOD}.mkv: a file with 2 hard links"):
        cache_on(server, tmp_path / "cache").fetch(GOOD)
    code = cli.main(["download", "--ids", GOOD, "--cache", str(tmp_path / "cache"),
                     "--sources", "mirror", "--mirror", server.url + "/m/", "--fetch", "whole"])
    err = capsys.readouterr().err
    assert code == 2 and "hard links" in err and len(err.strip().splitlines()) == 1
    assert victim.read_bytes() == b"precious"


def window_cache(tmp_path: Path, url: str) -> VideoCache:
    return FetchSettings(tmp_path / "cache", sources="mirror", mirror=url, fetch="window",
                         limits=Limits(attempts=2, backoff=0)).video_cache(sleep=lambda _: None)


@pytest.mark.parametrize("place", ["partial/.{name}.tmp1.mp4", "windows/{name}",
                                   "windows/{name}.json"])
def test_a_folder_in_a_window_file_s_place_is_refused_in_one_line(
        tmp_path, videos, place, capsys):
    served = tmp_path / f"{VIDEO_ID}.mp4"
    served.write_bytes(videos["mp4"].read_bytes())
    folder = tmp_path / "cache" / place.format(name=served.name)
    folder.mkdir(parents=True)
    csv = tmp_path / "train.csv"
    csv.write_text(f"{VIDEO_ID},0040,0.1,0.1,0.5,0.5,12,0\n")
    server = RangeServer({"video": served})
    try:
        with pytest.raises(CacheError, match="not a regular file"):
            window_cache(tmp_path, server.url).fetch(VIDEO_ID, [40, 41])
        code = cli.main(["download", "--csv", str(csv), "--cache", str(tmp_path / "cache"),
                         "--sources", "mirror", "--mirror", server.url])
    finally:
        server.close()
    err = capsys.readouterr().err
    assert code == 2 and "not a regular file" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and folder.is_dir()


# --- one file per id; an undecodable local file is not the end of the road ---


@pytest.mark.parametrize("where", ["manual", "cache"])
def test_two_files_for_one_id_are_refused_in_one_line_naming_both(
        tmp_path, serve, video, where, capsys):
    folder = tmp_path / ("manual/videos" if where == "manual" else "cache/videos")
    folder.mkdir(parents=True)
    (folder / f"{GOOD}.mkv").write_bytes(video)
    (folder / f"{GOOD}.mp4").write_bytes(video)
    server = serve(file_server(video))
    cache = FetchSettings(tmp_path / "cache", sources="local,mirror", mirror=server.url + "/m/",
                          manual_dir=tmp_path / "manual", fetch="whole").video_cache()
    with pytest.raises(CacheError, match=f"{GOOD}.mkv and .*{GOOD}.mp4: two files for video"):
        cache.fetch(GOOD)
    code = cli.main(["download", "--ids", GOOD, "--cache", str(tmp_path / "cache"),
                     "--manual-dir", str(tmp_path / "manual"), "--sources", "local,mirror",
                     "--mirror", server.url + "/m/"])
    err = capsys.readouterr().err
    assert code == 2 and "two files for video" in err and len(err.strip().splitlines()) == 1


def test_an_undecodable_local_file_falls_through_to_the_next_source(tmp_path, serve, video):
    local = tmp_path / "manual" / "videos"
    local.mkdir(parents=True)
    (local / f"{GOOD}.mkv").write_bytes(b"<html>garbage</html>" * 50)
    server = serve(file_server(video))

    def fetch(sources: str):
        settings = FetchSettings(tmp_path / "cache", sources=sources, mirror=server.url + "/m/",
                                 manual_dir=tmp_path / "manual", fetch="whole")
        return settings.video_cache().fetch(GOOD)

    alone = fetch("local")
    assert alone.status == "unavailable" and "not a decodable video" in alone.reason
    result = fetch("local,mirror")
    assert (result.status, result.source) == ("downloaded", "mirror")
    assert result.path.read_bytes() == video


def test_a_read_only_cache_serves_the_windows_it_holds(tmp_path, videos):
    served = tmp_path / f"{VIDEO_ID}.mp4"
    served.write_bytes(videos["mp4"].read_bytes())
    cache = tmp_path / "cache"
    server = RangeServer({"video": served})
    try:
        first = window_cache(tmp_path, server.url).fetch(VIDEO_ID, range(40, 61))
        assert first.fetch_mode == "window"
        if subprocess.run(["chattr", "-R", "+i", str(cache)],  # noqa: S603, S607
                          capture_output=True).returncode != 0:
            pytest.skip("cannot make an immutable folder here")
        try:
            if not _immutable(cache / "locks"):
                pytest.skip("cannot make a read-only folder here")
            server.reset()
            held = window_cache(tmp_path, server.url).fetch(VIDEO_ID, range(45, 56))
        finally:
            subprocess.run(["chattr", "-R", "-i", str(cache)], check=True)  # noqa: S603, S607
    finally:
        server.close()
    assert (held.status, held.fetch_mode, held.path, held.origin) == (
        "cached", "cache", first.path, first.origin)
    assert server.requests == []


def _immutable(folder: Path) -> bool:
    try:
        (folder / "probe").touch()
    except OSError:
        return True
    (folder / "probe").unlink()
    return False
