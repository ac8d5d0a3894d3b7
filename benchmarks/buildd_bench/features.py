"""Which of the daemon's features the installed buildd has.

A figure whose feature is missing is reported as "not measured: <reason>",
never with a number. Each check answers "" when the feature is there, else
the reason, naming what was looked for.
"""

from __future__ import annotations

import functools
import shutil
import subprocess

from .settings import REPO, console_script, tool_environ


@functools.cache
def _help(*command: str) -> tuple[int, str]:
    done = subprocess.run(
        list(command),
        env=tool_environ(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return done.returncode, done.stdout + done.stderr


def missing_store() -> str:
    """The per-principal environment store (--store-size, ``store prune``)."""
    _, server = _help(console_script("buildd-server"), "--help")
    if "--store-size" not in server:
        return "the daemon has no environment store (buildd-server --help lists no --store-size)"
    code, _ = _help(console_script("buildd-client"), "store", "prune", "--help")
    if code != 0:
        return "the client has no `buildd-client store prune`"
    return ""


def missing_metadata_cache() -> str:
    """A metadata cache that says when it answered (``MetadataResult.cached``)."""
    from buildd.v1 import buildd_pb2 as pb

    if "cached" not in pb.MetadataResult.DESCRIPTOR.fields_by_name:
        return "the daemon has no metadata cache (MetadataResult has no `cached` field)"
    return ""


def missing_watch() -> str:
    """The WatchMetadata stream and the client's ``Session.watch_metadata``."""
    from buildd_client import Session

    if not hasattr(Session, "watch_metadata"):
        return "the client has no Session.watch_metadata (no WatchMetadata stream)"
    return ""


def missing_nginx() -> str:
    if shutil.which("nginx") is None:
        return "nginx is not installed (Debian package `nginx`)"
    return ""


def reference_nginx_config() -> str:
    """The repository's nginx configuration for many daemons, "" when there is none."""
    path = REPO / "deploy" / "nginx" / "nginx.conf"
    return str(path) if path.is_file() else ""
