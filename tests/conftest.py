"""Shared pytest setup for every test directory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# ----------------------------------------------------------------- imports --
# tests/ goes on sys.path so that tests import their helpers as ``support.*``.
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from support.wheelhouse import ensure_wheelhouse  # noqa: E402

# ---------------------------------------------------------------- fixtures --


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    """Local wheels (setuptools, hatchling, flit_core...) to install with --no-index."""
    return ensure_wheelhouse()
