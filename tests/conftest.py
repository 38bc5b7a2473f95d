"""Shared test fixtures: paths of the real AVA files beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_AVA = Path(os.environ.get("AVA_SHARED_DIR", ROOT.parent / "shared" / "ava"))


@pytest.fixture(scope="session")
def shared_ava() -> Path:
    """The folder of real AVA annotation files (`../shared/ava/`, see its README)."""
    assert SHARED_AVA.is_dir(), f"real AVA files expected in {SHARED_AVA} (set AVA_SHARED_DIR)"
    return SHARED_AVA
