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


@dataclass
class Prepared:
    """Metadata prepared for one source, valid while its instance and files stay the same."""

    directory: Path
    dist_info: str
    environment_id: str
    fingerprint: tuple[tuple[str, int, int], ...]
    from_wheel: bool


@dataclass
class SourceState:
    """What a session remembers about one source."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    environment: Environment | None = None
    prepared: dict[tuple[str, str], Prepared] = field(default_factory=dict)
    # For a source given as an sdist: where it was unpacked and from which file state.
    unpacked: tuple[tuple[int, int], Path] | None = None


@dataclass(frozen=True)
class MetadataOutcome:
    metadata: bytes
    dist_info_name: str
    dist_info_path: Path
    from_wheel: bool


@dataclass(frozen=True)
class RequiresOutcome:
    static: tuple[str, ...]
    dynamic: tuple[str, ...]
    key_id: str
    backend: str


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
