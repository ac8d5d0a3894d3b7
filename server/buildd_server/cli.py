"""``buildd-server``: parse flags, start the daemon, serve until told to stop."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from buildd import __version__

from .config import Config, InstallerOptions

if TYPE_CHECKING:
    from collections.abc import Sequence


def _env(name: str, default: str = "") -> str:
    return os.environ.get(f"BUILDD_{name}", default)


def _env_list(name: str) -> list[str]:
    return _env(name).split()


def _env_flag(name: str) -> bool:
    return _env(name).lower() in ("1", "true", "yes", "on")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="buildd-server",
        description="Serve warm, session-scoped PEP 517 build environments over gRPC.",
    )
    parser.add_argument("--version", action="version", version=f"buildd-server {__version__}")
    parser.add_argument(
        "--address",
        default=os.environ.get("BUILDD_ADDRESS", ""),
        help="unix:PATH, an absolute socket path, or HOST:PORT "
        "(default: $BUILDD_ADDRESS, else a socket in the user's runtime folder)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(_env("STATE_DIR")) if _env("STATE_DIR") else None,
        help="folder for environments and the daemon lock (default: the user state folder)",
    )
    parser.add_argument(
        "--session-ttl",
        type=float,
        default=float(_env("SESSION_TTL", "900")),
        metavar="SECONDS",
        help="idle time after which a session ends (default: 900)",
    )
    parser.add_argument(
        "--max-envs-per-key",
        type=int,
        default=int(_env("MAX_ENVS_PER_KEY", "4")),
        metavar="N",
        help="environments per key in one session (default: 4)",
    )
    parser.add_argument(
        "--max-envs",
        type=int,
        default=int(_env("MAX_ENVS", "32")),
        metavar="N",
        help="environments in all; idle ones are evicted LRU (default: 32)",
    )
    parser.add_argument(
        "--hook-timeout",
        type=float,
        default=float(_env("HOOK_TIMEOUT", "1800")),
        metavar="SECONDS",
        help="longest a single hook call may run (default: 1800)",
    )
    parser.add_argument(
        "--installer",
        choices=("auto", "pip", "uv"),
        default=_env("INSTALLER", "auto"),
        help="auto: uv when installed, else pip",
    )
    parser.add_argument(
        "--index-url", default=_env("INDEX_URL"), help="package index for build requirements"
    )
    parser.add_argument(
        "--extra-index-url",
        action="append",
        default=_env_list("EXTRA_INDEX_URL"),
        metavar="URL",
        help="extra package index (repeatable)",
    )
    parser.add_argument(
        "--find-links",
        action="append",
        default=_env_list("FIND_LINKS"),
        metavar="PATH_OR_URL",
        help="local folder or page of wheels (repeatable)",
    )
    parser.add_argument(
        "--no-index",
        action="store_true",
        default=_env_flag("NO_INDEX"),
        help="use only --find-links",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=float(_env("GRACE", "30")),
        metavar="SECONDS",
        help="on SIGTERM, time for running calls to finish (default: 30)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="stop after this long without sessions; 0 never (default: 0)",
    )
    parser.add_argument(
        "--log-format",
        choices=("console", "json", "auto"),
        default=_env("LOG_FORMAT", "auto"),
        help="auto: console on a terminal, JSON otherwise",
    )
    parser.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "info"),
        choices=("debug", "info", "warning", "error"),
    )
    parser.add_argument(
        "--metrics-address",
        default=_env("METRICS_ADDRESS"),
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)",
    )
    parser.add_argument(
        "--insecure", action="store_true", help="allow plain TCP on a non-loopback address"
    )
    return parser


def _default_state_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_state_dir("buildd", appauthor=False))


def config_from_args(argv: Sequence[str] | None = None) -> Config:
    args = _parser().parse_args(argv)
    for name in ("session_ttl", "hook_timeout"):
        if getattr(args, name) <= 0:
            _parser().error(f"--{name.replace('_', '-')} must be positive")
    for name in ("max_envs_per_key", "max_envs"):
        if getattr(args, name) < 1:
            _parser().error(f"--{name.replace('_', '-')} must be at least 1")
    if args.grace < 0 or args.idle_timeout < 0:
        _parser().error("--grace and --idle-timeout must not be negative")
    find_links = tuple(
        str(Path(link).resolve()) if "://" not in link else link for link in args.find_links
    )
    return Config(
        address=args.address,
        state_dir=(args.state_dir or _default_state_dir()).resolve(),
        session_ttl=args.session_ttl,
        max_envs_per_key=args.max_envs_per_key,
        max_envs=args.max_envs,
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
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = config_from_args(argv)
    from . import logs

    logs.configure(config.log_format, config.log_level)
    import structlog

    from .daemon import Daemon
    from .errors import DaemonStartupError

    log = structlog.get_logger("buildd.cli")
    try:
        daemon = Daemon(config)
        daemon.start()
    except (DaemonStartupError, ValueError, PermissionError) as exc:
        log.error("startup_failed", error=str(exc))
        print(f"buildd-server: {exc}", file=sys.stderr)
        return 2
    daemon.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
