"""``python -m buildd_server``: the daemon (what auto-starting clients run)."""

from __future__ import annotations

from .daemon.cli import main

raise SystemExit(main())
