"""FetchSettings: resolved once on the launching side, carried as a value."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest

from ava_keyframes.plan import VideoWork
from ava_keyframes.remote import Limits
from ava_keyframes.settings import FetchSettings

ENVIRON = {"AVA_KEYFRAMES_SOURCES": "mirror", "AVA_KEYFRAMES_MIRROR": "http://127.0.0.1:9/m",
           "AVA_KEYFRAMES_FETCH": "whole", "AVA_KEYFRAMES_READ_TIMEOUT": "7",
           "AVA_KEYFRAMES_ALLOW_MISSING": "1"}


def test_resolve_order_flags_config_environment_defaults(tmp_path):
    settings = FetchSettings.resolve(cache_dir=tmp_path, environ=ENVIRON,
                                     config={"fetch": "window", "deadline": 50.0},
                                     flags={"sources": "local,youtube", "deadline": 9.0})
    assert settings.sources == ("local", "youtube")  # flag over environment
    assert settings.fetch == "window"  # config over environment
    assert settings.limits.deadline == 9.0  # flag over config
    assert settings.limits.read_timeout == 7.0  # environment over default
    assert settings.mirror == "http://127.0.0.1:9/m" and settings.allow_missing
    assert FetchSettings.resolve(cache_dir=tmp_path, environ={}) == FetchSettings(str(tmp_path))
    assert settings.to_json()["limits"]["deadline"] == 9.0


def test_resolve_names_a_bad_setting(tmp_path):
    with pytest.raises(ValueError, match="invalid fetch mode 'some'"):
        FetchSettings.resolve(cache_dir=tmp_path, environ={"AVA_KEYFRAMES_FETCH": "some"})
    with pytest.raises(ValueError, match="AVA_KEYFRAMES_DEADLINE='soon'"):
        FetchSettings.resolve(cache_dir=tmp_path, environ={"AVA_KEYFRAMES_DEADLINE": "soon"})


def test_launching_side_settings_win_over_the_environment_at_fetch_time(tmp_path, monkeypatch):
    settings = FetchSettings.resolve(cache_dir=tmp_path / "cache", environ=ENVIRON)
    work = pickle.loads(pickle.dumps(VideoWork(settings, None, None)))  # as Beam ships it
    for variable in ENVIRON:
        monkeypatch.setenv(variable, "")
    monkeypatch.setenv("AVA_KEYFRAMES_SOURCES", "local")
    monkeypatch.setenv("AVA_KEYFRAMES_MIRROR", "http://127.0.0.1:1/other")
    monkeypatch.setenv("AVA_KEYFRAMES_FETCH", "window")
    monkeypatch.setenv("AVA_KEYFRAMES_READ_TIMEOUT", "99")
    cache = work.video_cache()
    [mirror] = cache.sources
    assert (mirror.name, mirror.base, mirror.windowed) == ("mirror", "http://127.0.0.1:9/m/", False)
    assert cache.remote.limits == Limits(read_timeout=7.0)


@pytest.mark.slow
def test_pickled_settings_rebuild_the_same_sources_in_a_clean_process(tmp_path):
    settings = FetchSettings.resolve(cache_dir=tmp_path / "cache", environ=ENVIRON)
    blob = tmp_path / "settings.pickle"
    blob.write_bytes(pickle.dumps(settings))
    script = ("import pickle, sys; s = pickle.load(open(sys.argv[1], 'rb')); c = s.video_cache();"
              "[m] = c.sources; print(m.name, m.base, m.windowed, c.remote.limits.read_timeout, "
              "s == pickle.loads(pickle.dumps(s)))")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AVA_KEYFRAMES_")}
    out = subprocess.run([sys.executable, "-c", script, str(blob)], env=clean, check=True,  # noqa: S603
                         capture_output=True, text=True).stdout
    assert out.split() == ["mirror", "http://127.0.0.1:9/m/", "False", "7.0", "True"]
