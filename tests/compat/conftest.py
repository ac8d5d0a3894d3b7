"""The compatibility checks import the ``compat`` package from the repository root."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    # Before tests/ (which conftest.py put first): ``compat`` must be the
    # runner's package at the root, not this folder.
    sys.path.insert(0, str(REPO))
