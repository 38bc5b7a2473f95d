"""The video cache as a shared, attackable place: planted links, redirects to other schemes,
read-only folders, a damaged unavailable.json, two processes on one cache."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_cache import (
    GOOD,
    MKV,
    OTHER,
    answer,
    cache_on,
    file_server,
    leftovers,
    no_cache_env,
    serve,
    video,
)

from ava_keyframes import cli
from ava_keyframes.cache import CacheError

__all__ = ["no_cache_env", "serve", "video"]  # fixtures, used by name


@pytest.mark.parametrize("folder", ["partial", "videos"])
def test_a_link_planted_in_the_cache_is_refused_and_its_target_untouched(
        tmp_path, serve, video, folder, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    cache = tmp_path / "cache"
    (cache / folder).mkdir(parents=True)
    (cache / folder / f"{GOOD}.mkv").symlink_to(victim)
    server = serve(file_server(video))
    with pytest.raises(CacheError, match=f"{folder}/{GOOD}.mkv: a symbolic link"):
        cache_on(server, cache).fetch(GOOD)
    code = cli.main(["download", "--ids", GOOD, "--cache", str(cache), "--sources", "mirror",
                     "--mirror", server.url + "/m/"])
    err = capsys.readouterr().err
    assert code == 2 and "symbolic link" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert victim.read_bytes() == b"precious" and (cache / folder / f"{GOOD}.mkv").is_symlink()


def test_a_linked_partial_folder_is_refused(tmp_path, serve, video):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "partial").symlink_to(elsewhere)
    with pytest.raises(CacheError, match="not a folder"):
        cache_on(serve(file_server(video)), tmp_path / "cache").fetch(GOOD)
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("target", ["ftp://127.0.0.1/x.mkv", "file:///etc/passwd"])
def test_a_redirect_to_another_scheme_is_refused(tmp_path, serve, video, target):
    def redirecting(handler, number):
        answer(handler, 302, {"Location": target, "Content-Length": 0})

    server = serve(redirecting)
    result = cache_on(server, tmp_path).fetch(GOOD)
    assert result.status == "unavailable" and not result.transient
    assert "refused" in result.reason and len(server.requests) == 1


def test_a_redirect_to_http_is_followed(tmp_path, serve, video):
    target = serve(file_server(video))

    def redirecting(handler, number):
        answer(handler, 302, {"Location": target.url + MKV, "Content-Length": 0})

    result = cache_on(serve(redirecting), tmp_path).fetch(GOOD)
    assert result.path.read_bytes() == video


def test_a_read_only_cache_is_a_one_line_error(tmp_path, serve, video, capsys):
    cache = tmp_path / "cache"
    (cache / "videos").mkdir(parents=True)
    (cache / "videos" / f"{OTHER}.mkv").write_bytes(video)
    os.chmod(cache, 0o555)
    immutable = False
    try:
        if os.access(cache, os.W_OK) and shutil.which("chattr"):  # root ignores modes
            immutable = subprocess.run(["chattr", "+i", str(cache)],  # noqa: S603, S607
                                       capture_output=True).returncode == 0
        try:
            (cache / "probe").mkdir()
        except OSError:
            pass
        else:
            pytest.skip("cannot make a read-only folder here")
        server = serve(file_server(video))
        common = ["--cache", str(cache), "--sources", "mirror", "--mirror", server.url + "/m/"]
        assert cli.main(["download", "--ids", OTHER, *common]) == 0  # reading still works
        capsys.readouterr()
        assert cli.main(["download", "--ids", GOOD, *common]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "cannot use the video cache" in err
        assert str(cache) in err and "Traceback" not in err
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(cache)], check=True)  # noqa: S603, S607
        os.chmod(cache, 0o755)


def test_invalid_unavailable_entries_are_ignored_with_one_warning(
        tmp_path, serve, video, caplog, capsys):
    other = {"id": OTHER, "source": "mirror", "reason": "HTTP 404", "time": "2026-01-01"}
    (tmp_path / "unavailable.json").write_text(json.dumps(
        [{"id": GOOD, "source": "mirror", "time": "2026-01-01"}, other, "junk"]))
    server = serve(file_server(video))
    with caplog.at_level(logging.WARNING):
        results = cache_on(server, tmp_path).fetch_many([GOOD, OTHER], progress=False)
    assert results[0].status == "downloaded"  # the entry without a reason does not count
    assert results[1].status == "unavailable" and "recorded" in results[1].reason
    [line] = [r.getMessage() for r in caplog.records if "unavailable.json" in r.getMessage()]
    assert "ignored 2 invalid entries" in line and "no 'reason'" in line

    (tmp_path / "unavailable.json").write_text('{"id": 1}')
    code = cli.main(["download", "--ids", GOOD, "--cache", str(tmp_path), "--sources",
                     "mirror", "--mirror", server.url + "/m/"])
    err = capsys.readouterr().err
    assert code == 2 and "unavailable.json: expected a JSON list" in err
    assert "Traceback" not in err


def _holds_open(pid: int, path: Path) -> bool:
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    target = os.path.realpath(path)
    for fd in fds:
        try:
            if os.readlink(fd) == target:
                return True
        except OSError:  # closed since it was listed (the process is starting up)
            continue
    return False


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_two_processes_on_one_cache_write_one_file_once(tmp_path, serve, video):
    """Process A is held half-way through the body; process B starts on the same video and
    must wait for A's lock (not write the same partial), then take A's file."""
    half_sent, release = threading.Event(), threading.Event()

    def respond(handler, number):
        if handler.path != MKV:
            return answer(handler, 404, {"Content-Length": 0})
        if number > 1:  # a second download: B did not wait
            return file_server(video)(handler, number)
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(video)))
        handler.end_headers()
        handler.wfile.write(video[: len(video) // 2])
        handler.wfile.flush()
        half_sent.set()
        release.wait(60)
        handler.wfile.write(video[len(video) // 2:])

    server = serve(respond)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVA_KEYFRAMES_")}
    command = [sys.executable, "-m", "ava_keyframes.cli", "download", "--ids", GOOD, "--cache",
               str(tmp_path), "--sources", "mirror", "--mirror", server.url + "/m/", "--json"]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,  # noqa: S603
                             stderr=subprocess.PIPE, text=True)
    second = None
    try:
        assert half_sent.wait(60)
        second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,  # noqa: S603
                                  stderr=subprocess.PIPE, text=True)
        lock = tmp_path / "locks" / f"{GOOD}.lock"
        for _ in range(1200):  # B opened the lock (and waits on it), or made a request
            if _holds_open(second.pid, lock) or len(server.requests) > 1 or second.poll():
                break
            time.sleep(0.05)
        release.set()
        outputs = [p.communicate(timeout=60) for p in (first, second)]
    finally:
        release.set()
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    assert not any("Traceback" in err for _, err in outputs), outputs
    results = [json.loads(out) for out, _ in outputs]
    assert [r["status"] for r in results] == ["downloaded", "cached"], (results, server.requests)
    assert (tmp_path / "videos" / f"{GOOD}.mkv").read_bytes() == video
    assert [p for p, _ in server.requests] == [f"/m/{GOOD}.mkv"]
    assert leftovers(tmp_path) == []
