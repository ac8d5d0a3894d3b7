"""``buildd-server``: parse flags, start the daemon, serve until told to stop."""

from __future__ import annotations

import argparse
import re
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config, InstallerOptions, PrincipalCaps, SourceLimits
from .flags import LOG_LEVELS, make_parser

if TYPE_CHECKING:
    from collections.abc import Sequence


_DAEMON_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _default_state_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_state_dir("buildd", appauthor=False))


def config_from_args(argv: Sequence[str] | None = None) -> Config:
    try:
        parser = make_parser()
    except (ValueError, argparse.ArgumentTypeError) as exc:
        # A BUILDD_* variable holds something that is not a number.
        print(f"buildd-server: error: bad value in the environment: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    args = parser.parse_args(argv)
    if args.log_level not in LOG_LEVELS:
        parser.error(f"--log-level {args.log_level!r}: choose from {', '.join(LOG_LEVELS)}")
    if args.log_format not in ("console", "json", "auto"):
        parser.error(f"--log-format {args.log_format!r}: choose from console, json, auto")
    if args.installer not in ("auto", "pip", "uv"):
        parser.error(f"--installer {args.installer!r}: choose from auto, pip, uv")
    if args.containment not in ("auto", "pid", "sandbox", "none"):
        parser.error(f"--containment {args.containment!r}: choose from auto, pid, sandbox, none")
    for name in ("session_ttl", "hook_timeout"):
        if getattr(args, name) <= 0:
            make_parser().error(f"--{name.replace('_', '-')} must be positive")
    for name in (
        "max_envs_per_key",
        "max_envs",
        "max_watches_per_session",
        "max_watched_trees",
    ):
        if getattr(args, name) < 1:
            make_parser().error(f"--{name.replace('_', '-')} must be at least 1")
    if args.blob_cache_size < 1 or args.max_source_size < 1 or args.max_source_files < 1:
        parser.error("--blob-cache-size, --max-source-size and --max-source-files must be positive")
    if args.max_source_ratio < 1:
        parser.error("--max-source-ratio must be at least 1")
    if args.store_size < 1 or args.store_ttl <= 0:
        parser.error("--store-size and --store-ttl must be positive")
    for name in ("streams", "sessions", "uploads", "watches"):
        if getattr(args, f"max_{name}_per_principal") < 1:
            parser.error(f"--max-{name}-per-principal must be at least 1")
    if args.grace < 0 or args.idle_timeout < 0:
        make_parser().error("--grace and --idle-timeout must not be negative")
    if args.daemon_id and not _DAEMON_ID.fullmatch(args.daemon_id):
        parser.error(
            f"--daemon-id {args.daemon_id[:80]!r}: 1-64 characters from A-Z, a-z, 0-9, "
            "'.', '_', '-', beginning with a letter or digit"
        )
    find_links = tuple(
        str(Path(link).resolve()) if "://" not in link else link for link in args.find_links
    )
    return Config(
        address=args.address,
        state_dir=(args.state_dir or _default_state_dir()).resolve(),
        session_ttl=args.session_ttl,
        max_envs_per_key=args.max_envs_per_key,
        max_envs=args.max_envs,
        max_watches_per_session=args.max_watches_per_session,
        max_watched_trees=args.max_watched_trees,
        hook_timeout=args.hook_timeout,
        installer=args.installer,
        installer_options=InstallerOptions(
            index_url=args.index_url,
            extra_index_urls=tuple(args.extra_index_url),
            find_links=find_links,
            no_index=args.no_index,
        ),
        grace=args.grace,
        idle_timeout=args.idle_timeout,
        log_format=args.log_format,
        log_level=args.log_level,
        insecure=args.insecure,
        metrics_address=args.metrics_address,
        fork_server=not args.no_fork_server,
        containment=args.containment,
        store=not args.no_store,
        store_size=args.store_size,
        store_ttl=args.store_ttl,
        # In a Kubernetes StatefulSet the host name is the pod name (buildd-0...).
        daemon_id=args.daemon_id or socket.gethostname()[:64],
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        token_file=args.token_file,
        admins=tuple(args.admin),
        allow_paths=tuple(args.allow_path),
        blob_cache_size=args.blob_cache_size,
        source_limits=SourceLimits(
            max_bytes=args.max_source_size,
            max_files=args.max_source_files,
            max_ratio=args.max_source_ratio,
        ),
        caps=PrincipalCaps(
            streams=args.max_streams_per_principal,
            sessions=args.max_sessions_per_principal,
            uploads=args.max_uploads_per_principal,
            watches=args.max_watches_per_principal,
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = config_from_args(argv)
    from . import logs

    logs.configure(config.log_format, config.log_level)
    import structlog

    from ..errors import DaemonStartupError
    from .daemon import Daemon

    log = structlog.get_logger("buildd.cli")
    daemon: Daemon | None = None
    try:
        daemon = Daemon(config)
        daemon.start()
    except (DaemonStartupError, ValueError, PermissionError) as exc:
        if daemon is not None:
            daemon.abandon_start()
        log.error("startup_failed", error=str(exc))
        print(f"buildd-server: {exc}", file=sys.stderr)
        return 2
    daemon.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
