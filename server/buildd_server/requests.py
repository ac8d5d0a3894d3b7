"""What a request carries and what it returns, plus per-source session state."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from .events import Emit, Event, Log

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from .environments import Environment

Dist = Literal["wheel", "sdist", "editable"]


@dataclass(frozen=True)
class Request:
    """What every hook-running request carries, already decoded from the wire."""

    session_id: str
    # An absolute daemon path, or "sha256:<hex>" of an uploaded archive.
    source: str
    python: str = ""
    config_settings: Mapping[str, str | list[str]] = field(default_factory=dict)
    quiet: bool = False
    # Absolute time.monotonic() deadline, or None for none.
    deadline: float | None = None
    # The caller's principal: the session must be theirs. None: not checked.
    principal: str | None = None
    # Run every hook even when a cached answer is valid (hookcache.py).
    no_cache: bool = False
    # Whether that principal is remote: its hooks and installs are then
    # contained as containment.py's policy says for remote principals.
    remote: bool = False


@dataclass
class Prepared:
    """Metadata prepared for one source, valid while its instance and files stay the same."""

    directory: Path
    dist_info: str
    environment_id: str
    # The source fingerprint it was prepared for (hookcache.py); None until
    # the request confirmed the tree did not change while the hooks ran.
    fingerprint: str | None
    from_wheel: bool
    metadata: bytes = b""
    # The instance's generation it came from; None: not reusable as a cached answer.
    generation: tuple[str, str, str] | None = None


@dataclass(frozen=True)
class CachedRequires:
    """What get_requires_for_build_* answered for one fingerprint and generation."""

    generation: tuple[str, str, str]
    fingerprint: str
    dynamic: tuple[str, ...]


@dataclass
class SourceState:
    """What a session remembers about one source."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    environment: Environment | None = None
    prepared: dict[tuple[str, str], Prepared] = field(default_factory=dict)
    requires: dict[tuple[str, str], CachedRequires] = field(default_factory=dict)
    # For a source given as an sdist: where it was unpacked and from which file state.
    unpacked: tuple[tuple[int, int], Path] | None = None

    def forget_answers(self) -> None:
        """The instance is gone or changed: nothing it answered holds any more."""
        self.prepared.clear()
        self.requires.clear()


@dataclass(frozen=True)
class MetadataOutcome:
    metadata: bytes
    dist_info_name: str
    dist_info_path: Path
    from_wheel: bool
    # Answered from the cache, without running a hook.
    cached: bool = False
    fingerprint: str = ""


@dataclass(frozen=True)
class RequiresOutcome:
    static: tuple[str, ...]
    dynamic: tuple[str, ...]
    key_id: str
    backend: str
    cached: bool = False


@dataclass(frozen=True)
class ArtifactOutcome:
    distribution: Dist
    path: Path
    size: int
    sha256: str


def settings_id(settings: Mapping[str, str | list[str]]) -> str:
    text = repr(sorted((k, v if isinstance(v, str) else tuple(v)) for k, v in settings.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def drop_logs(emit: Emit) -> Emit:
    def quiet_emit(event: Event) -> None:
        if not isinstance(event, Log):
            emit(event)

    return quiet_emit
