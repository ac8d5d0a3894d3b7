"""The daemon's configuration: one frozen object built from the command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from pathlib import Path

InstallerName = Literal["auto", "pip", "uv"]


@dataclass(frozen=True)
class InstallerOptions:
    """What changes the packages an installer would pick; part of every key."""

    index_url: str = ""
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    no_index: bool = False

    def as_key_part(self) -> tuple[tuple[str, str], ...]:
        """A canonical, hashable form for the environment key."""
        return (
            ("index_url", self.index_url),
            ("extra_index_urls", "\n".join(self.extra_index_urls)),
            ("find_links", "\n".join(self.find_links)),
            ("no_index", "1" if self.no_index else "0"),
        )


@dataclass(frozen=True)
class SourceLimits:
    """Caps on what an uploaded archive may unpack to (see docs/remote.md)."""

    # Sum of the members' sizes.
    max_bytes: int = 1 << 30
    # Members of any kind (files, folders, links).
    max_files: int = 100_000
    # Unpacked bytes per byte of the archive, checked once the unpacked size
    # passes ``ratio_floor``: small archives of text compress well and are harmless.
    max_ratio: float = 100.0
    ratio_floor: int = 16 << 20


@dataclass(frozen=True)
class PrincipalCaps:
    """What one principal may hold at once; beyond a cap, RESOURCE_EXHAUSTED naming it.

    The defaults leave room for a fleet of about a hundred CI agents sharing one
    token (docs/configuration.md#per-principal-caps says why each is what it is).
    """

    # Streaming calls at once: KeepAlive, GetRequires, PrepareMetadata, Build,
    # UploadBlob, DownloadArtifact, WatchMetadata.
    streams: int = 512
    # Sessions open at once (closed or expired ones do not count).
    sessions: int = 1024
    # UploadBlob calls in flight (each may hold a temporary file open).
    uploads: int = 64
    # WatchMetadata streams at once.
    watches: int = 256


@dataclass(frozen=True)
class Config:
    """Every setting of one daemon; see docs/configuration.md."""

    address: str
    state_dir: Path
    session_ttl: float = 15 * 60.0
    max_envs_per_key: int = 4
    max_envs: int = 32
    hook_timeout: float = 30 * 60.0
    installer: InstallerName = "auto"
    installer_options: InstallerOptions = field(default_factory=InstallerOptions)
    grace: float = 30.0
    # 0 disables idle shutdown; auto-started daemons get a positive value.
    idle_timeout: float = 0.0
    log_format: Literal["console", "json", "auto"] = "auto"
    log_level: str = "info"
    # Threads for the blocking part of unary calls and of upload/download chunks;
    # streams wait on the event loop and long calls run in threads of their own.
    max_workers: int = 32
    # Allow plain TCP on a non-loopback address.
    insecure: bool = False
    # HOST:PORT for Prometheus metrics over HTTP; empty: none.
    metrics_address: str = ""
    # TLS for a TCP address: certificate chain and key (PEM); with a client CA,
    # clients must present a certificate it signed (mutual TLS).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Bearer tokens, one principal per line; None: no tokens.
    token_file: Path | None = None
    # Principals that may call Shutdown and see every session.
    admins: tuple[str, ...] = ()
    # Folders a remote principal may name as source or output paths.
    allow_paths: tuple[Path, ...] = ()
    # Uploaded sources kept in state_dir/blobs, least recently used evicted.
    blob_cache_size: int = 2 << 30
    source_limits: SourceLimits = field(default_factory=SourceLimits)
    # Warm hook calls fork from a per-environment fork server (zygotes.py).
    fork_server: bool = True
    # Environments outlive sessions in per-principal stores (store.py); off:
    # each session's environments are deleted when it ends.
    store: bool = True
    # Bytes the stores may take on disk together, and seconds an idle stored
    # environment is kept unused.
    store_size: int = 5 << 30
    store_ttl: float = 7 * 86400.0
    caps: PrincipalCaps = field(default_factory=PrincipalCaps)
    # Open WatchMetadata streams per session (watches.py).
    max_watches_per_session: int = 64
    # Trees the daemon watches at once, each one inotify instance (treewatch.py).
    max_watched_trees: int = 32
    # How hook calls and installs are contained (containment.py):
    # auto, pid, sandbox or none.
    containment: str = "auto"
    # This daemon's name among several behind one proxy (docs/scale-out.md).
    daemon_id: str = ""
