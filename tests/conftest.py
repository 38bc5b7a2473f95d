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
