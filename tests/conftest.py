"""Shared test fixtures: the real AVA files carried in `tests/data/ava/`; loopback only."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

AVA_DATA = Path(__file__).resolve().parent / "data" / "ava"


@pytest.fixture(scope="session")
def ava_data() -> Path:
    """The folder of real AVA annotation files (see `tests/data/ava/README.md`)."""
    return AVA_DATA


_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture(autouse=True)
def _no_network_but_loopback(monkeypatch):
    """Fail loudly if any test tries to resolve a host other than loopback."""
    real_getaddrinfo = socket.getaddrinfo

    def guarded(host, *args, **kwargs):
        if host not in _LOOPBACK and not str(host).startswith("127."):
            raise OSError(f"tests may only reach loopback, not {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)


# --- the builder's corpus and builds, each made once per session for every module using it --
# (how: tests/builder_support.py, imported in the fixtures so that a session without builder
# tests never loads TensorFlow Datasets)


@pytest.fixture(scope="session")
def e2e(tmp_path_factory):
    """The end-to-end corpus, manual dir and loopback mirror (``make_e2e``)."""
    from builder_support import make_e2e

    yield from make_e2e(tmp_path_factory)


@pytest.fixture(scope="session")
def local_corpus(e2e):
    """``e2e``'s corpus as a manual dir with every video (``make_local_corpus``)."""
    from builder_support import make_local_corpus

    return make_local_corpus(e2e)


@pytest.fixture(scope="session")
def builds(e2e):
    """The `tfds build` runs of ``e2e`` (``make_builds``)."""
    from builder_support import make_builds

    return make_builds(e2e)


@pytest.fixture(scope="session")
def loaded(builds, tmp_path_factory):
    """``builds`` read back in another process (``load_builds``)."""
    from builder_support import load_builds

    return load_builds(builds, tmp_path_factory)


@pytest.fixture(scope="session")
def clip_build(e2e, builds, tmp_path_factory):
    """A clip config built from ``e2e`` (``make_clip_build``)."""
    from builder_support import make_clip_build

    return make_clip_build(e2e, builds, tmp_path_factory)
