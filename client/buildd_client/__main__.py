"""``python -m buildd_client``: the ``buildd-client`` command."""

from __future__ import annotations

from buildd_client.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
