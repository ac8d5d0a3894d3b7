"""Progress events produced by the daemon's logic, independent of protobuf.

The servicer turns them into ``buildd.v1.Event`` messages and adds the
elapsed time; the logic only says what happened.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

PhaseName = Literal[
    "key_resolved",
    "waiting_for_environment",
    "creating_environment",
    "installing_requirements",
    "environment_leased",
    "environment_adopted",
    "running_hook",
    "hook_finished",
    "artifact_written",
    "artifact_checked",
    "cache_hit",
]


# Whether a phase opens a step that takes time, closes it, or stands alone.
PhaseStep = Literal["start", "end", "instant"]
# How a hook call ended ("" on every phase but hook_finished).
HookOutcome = Literal["", "ok", "failed", "timed_out", "cancelled"]
# Which process wrote a log line.
LogSource = Literal["hook", "installer", "compiler"]


@dataclass(frozen=True)
class Phase:
    """A step of a request started (``step="start"``), ended, or a moment (``"instant"``)."""

    name: PhaseName
    detail: str = ""
    key_id: str = ""
    environment_path: str = ""
    hook: str = ""
    count: int = 0
    step_seconds: float = 0.0
    # The instance's slot in its principal's store (-1: not in a store).
    slot: int = -1
    # How long validating the instance took before this lease (0: not validated).
    validation_seconds: float = 0.0
    step: PhaseStep = "instant"
    outcome: HookOutcome = ""
    # The source fingerprint a cached answer was given for (cache_hit).
    fingerprint: str = ""


@dataclass(frozen=True)
class Log:
    """One line written by a backend or an installer."""

    stream: Literal["stdout", "stderr"]
    text: str
    hook: str
    source: LogSource = "hook"


WarningKind = Literal["near_miss", "unknown_key"]


@dataclass(frozen=True)
class BuildWarning:
    """Something about the project the user likely wants to fix; the request goes on."""

    kind: WarningKind
    message: str
    path: str = ""
    field: str = ""
    suggestion: str = ""


Event = Phase | Log | BuildWarning
Emit = Callable[[Event], None]


def discard(_event: Event) -> None:
    """An ``Emit`` that drops everything (for callers nobody listens to)."""
