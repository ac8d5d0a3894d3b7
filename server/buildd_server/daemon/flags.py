"""``buildd-server``'s flags, each with its ``BUILDD_*`` variable as the default.

Sizes (``2G``) and durations (``7d``) are parsed here; ``cli.py`` checks what
the flags say together and turns them into a ``Config``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from buildd import __version__

from ..config import PrincipalCaps, SourceLimits

LOG_LEVELS = ("debug", "info", "warning", "error")


def _env(name: str, default: str = "") -> str:
    return os.environ.get(f"BUILDD_{name}", default)


def _env_list(name: str) -> list[str]:
    return _env(name).split()


def _env_flag(name: str) -> bool:
    return _env(name).lower() in ("1", "true", "yes", "on")


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def size(text: str) -> int:
    """``2G``, ``512M``, ``1.5G``, ``4096``: a byte count (units are binary)."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 2G or 512M") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return int(number * _UNITS[unit])


_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration(text: str) -> float:
    """``7d``, ``12h``, ``30m``, ``90s``, ``3600``: seconds (a bare number is seconds)."""
    value = text.strip().lower()
    unit = value[-1:] if value[-1:] in _SECONDS else "s"
    number_text = value[:-1] if value[-1:] in _SECONDS else value
    try:
        number = float(number_text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration such as 7d, 12h, 30m or 90s"
        ) from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return number * _SECONDS[unit]


def _path(text: str) -> Path:
    return Path(text).expanduser().resolve()


def _add_remote_options(parser: argparse.ArgumentParser) -> None:
    """TLS, tokens, allowed paths and the upload cache (docs/remote.md)."""
    group = parser.add_argument_group("remote clients (see docs/remote.md)")
    group.add_argument(
        "--tls-cert",
        type=_path,
        default=_path(_env("TLS_CERT")) if _env("TLS_CERT") else None,
        metavar="PEM",
        help="serve TCP over TLS with this certificate chain (with --tls-key)",
    )
    group.add_argument(
        "--tls-key",
        type=_path,
        default=_path(_env("TLS_KEY")) if _env("TLS_KEY") else None,
        metavar="PEM",
        help="the private key of --tls-cert",
    )
    group.add_argument(
        "--tls-client-ca",
        type=_path,
        default=_path(_env("TLS_CLIENT_CA")) if _env("TLS_CLIENT_CA") else None,
        metavar="PEM",
        help="mutual TLS: clients must present a certificate signed by this CA",
    )
    group.add_argument(
        "--token-file",
        type=_path,
        default=_path(_env("TOKEN_FILE")) if _env("TOKEN_FILE") else None,
        metavar="FILE",
        help="bearer tokens, one per line as TOKEN or NAME:TOKEN; each line is a principal",
    )
    group.add_argument(
        "--admin",
        action="append",
        default=_env_list("ADMIN"),
        metavar="NAME",
        help="a principal of --token-file that may call Shutdown and see every session "
        "(repeatable)",
    )
    group.add_argument(
        "--allow-path",
        action="append",
        type=_path,
        default=[_path(p) for p in _env_list("ALLOW_PATH")],
        metavar="DIR",
        help="a folder remote principals may name as source or output path (repeatable; "
        "default: none, they must upload)",
    )
    group.add_argument(
        "--blob-cache-size",
        type=size,
        default=size(_env("BLOB_CACHE_SIZE", "2G")),
        metavar="SIZE",
        help="uploaded sources kept, least recently used evicted (default: 2G)",
    )
    limits = SourceLimits()
    group.add_argument(
        "--max-source-size",
        type=size,
        default=size(_env("MAX_SOURCE_SIZE", str(limits.max_bytes))),
        metavar="SIZE",
        help="largest unpacked size of an uploaded source (default: 1G)",
    )
    group.add_argument(
        "--max-source-files",
        type=int,
        default=int(_env("MAX_SOURCE_FILES", str(limits.max_files))),
        metavar="N",
        help=f"most members in an uploaded source (default: {limits.max_files})",
    )
    group.add_argument(
        "--max-source-ratio",
        type=float,
        default=float(_env("MAX_SOURCE_RATIO", str(limits.max_ratio))),
        metavar="R",
        help="largest unpacked/compressed size ratio of an uploaded source past 16 MiB "
        f"unpacked (default: {limits.max_ratio:g})",
    )


def _add_store_options(parser: argparse.ArgumentParser) -> None:
    """The per-principal store of environments (docs/configuration.md)."""
    group = parser.add_argument_group("environment store")
    group.add_argument(
        "--store-size",
        type=size,
        default=size(_env("STORE_SIZE", "5G")),
        metavar="SIZE",
        help="bytes the stored environments may take on disk; least recently used idle "
        "ones are evicted past it (default: 5G)",
    )
    group.add_argument(
        "--store-ttl",
        type=duration,
        default=duration(_env("STORE_TTL", "7d")),
        metavar="DURATION",
        help="how long an idle stored environment is kept unused, e.g. 7d, 12h (default: 7d)",
    )
    group.add_argument(
        "--no-store",
        action="store_true",
        default=_env_flag("NO_STORE"),
        help="delete each session's environments when it ends, as before the store",
    )


def _add_cap_options(parser: argparse.ArgumentParser) -> None:
    """What one principal may hold at once (docs/configuration.md#per-principal-caps)."""
    group = parser.add_argument_group("per-principal caps (see docs/configuration.md)")
    caps = PrincipalCaps()
    for name, what in (
        ("streams", "streaming calls (KeepAlive, metadata, builds, uploads, downloads, watches)"),
        ("sessions", "open sessions"),
        ("uploads", "UploadBlob calls in flight"),
        ("watches", "WatchMetadata streams"),
    ):
        default = getattr(caps, name)
        group.add_argument(
            f"--max-{name}-per-principal",
            type=int,
            default=int(_env(f"MAX_{name.upper()}_PER_PRINCIPAL", str(default))),
            metavar="N",
            help=f"{what} one principal may have at once (default: {default})",
        )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="buildd-server",
        description="Serve warm PEP 517 build environments over gRPC, kept per principal "
        "across sessions.",
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
        "--max-watches-per-session",
        type=int,
        default=int(_env("MAX_WATCHES_PER_SESSION", "64")),
        metavar="N",
        help="open WatchMetadata streams per session (default: 64)",
    )
    parser.add_argument(
        "--max-watched-trees",
        type=int,
        default=int(_env("MAX_WATCHED_TREES", "32")),
        metavar="N",
        help="source trees watched at once, one inotify instance each (default: 32)",
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
        choices=LOG_LEVELS,
    )
    parser.add_argument(
        "--metrics-address",
        default=_env("METRICS_ADDRESS"),
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)",
    )
    parser.add_argument(
        "--no-fork-server",
        action="store_true",
        default=_env_flag("NO_FORK_SERVER"),
        help="start every hook as a plain subprocess, never as a fork of a warm "
        "per-environment fork server (see docs/performance.md)",
    )
    _add_store_options(parser)
    parser.add_argument(
        "--containment",
        choices=("auto", "pid", "sandbox", "none"),
        default=_env("CONTAINMENT", "auto"),
        help="how hook calls and installs are contained: pid (a PID namespace per call), "
        "sandbox (plus a bubblewrap sandbox), none; auto (default): sandbox for remote "
        "principals and pid for local ones, as far as the machine allows "
        "(see docs/configuration.md)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback TCP address without TLS and tokens, and a loopback one "
        "without any token",
    )
    parser.add_argument(
        "--daemon-id",
        default=_env("DAEMON_ID"),
        metavar="NAME",
        help="this daemon's name among several behind one proxy, shown in status and "
        "in every session (default: $BUILDD_DAEMON_ID, else the host name)",
    )
    _add_remote_options(parser)
    _add_cap_options(parser)
    return parser
