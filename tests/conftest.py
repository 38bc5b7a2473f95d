"""Shared test fixtures: paths of the real AVA files beside the repo."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_AVA = Path(os.environ.get("AVA_SHARED_DIR", ROOT.parent / "shared" / "ava"))


@pytest.fixture(scope="session")
def shared_ava() -> Path:
    """The folder of real AVA annotation files (`../shared/ava/`, see its README)."""
    assert SHARED_AVA.is_dir(), f"real AVA files expected in {SHARED_AVA} (set AVA_SHARED_DIR)"
    return SHARED_AVA


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
