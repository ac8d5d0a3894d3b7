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
    # Worker threads of the gRPC server (each streaming call holds one).
    max_workers: int = 128
    # Allow plain TCP on a non-loopback address.
    insecure: bool = False
    # HOST:PORT for Prometheus metrics over HTTP; empty: none.
    metrics_address: str = ""
