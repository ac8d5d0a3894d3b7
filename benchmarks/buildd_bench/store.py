"""The daemon's environment store as the figures see it: on disk, and emptied on demand."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .daemon import Daemon
from .settings import console_script, tool_environ


def store_instances(state_dir: Path) -> list[Path]:
    """The environment instances on disk: ``<state>/envs/<principal>/<key-id>/<slot>``.

    An instance is a virtualenv (it has ``pyvenv.cfg``); the principal's
    folder also holds other things (the installer's cache, the store's index).
    """
    root = state_dir / "envs"
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.glob("*/*/*/pyvenv.cfg"))


def prune_store(daemon: Daemon) -> None:
    """Remove every idle instance of the daemon's store with ``buildd-client store prune``.

    Raises when anything is left on disk afterwards: a figure that needs an
    empty store must not run on a store that still holds the key.
    """
    done = subprocess.run(
        [console_script("buildd-client"), "--address", daemon.address, "store", "prune"],
        env=tool_environ(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"buildd-client store prune exited with {done.returncode}: "
            f"{(done.stderr or done.stdout).strip()[-2000:]}"
        )
    left = store_instances(daemon.state_dir)
    if left:
        raise RuntimeError(
            f"{len(left)} store instance(s) still on disk after store prune, e.g. {left[0]}"
        )
