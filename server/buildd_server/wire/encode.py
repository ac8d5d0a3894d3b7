"""Service events and outcomes into wire messages (the other way of ``decode.py``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from buildd.v1 import buildd_pb2 as pb

from ..events import BuildWarning, Event, Log, Phase
from .decode import DIST_NUMBERS
from .failures import failure

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..environments.interpreter_discovery import FoundInterpreter
    from ..service.requests import ArtifactOutcome, MetadataOutcome, RequiresOutcome
    from ..service.watches import WatchUpdate

_PHASES: dict[str, int] = {
    "key_resolved": pb.PHASE_KIND_KEY_RESOLVED,
    "waiting_for_environment": pb.PHASE_KIND_WAITING_FOR_ENVIRONMENT,
    "creating_environment": pb.PHASE_KIND_CREATING_ENVIRONMENT,
    "installing_requirements": pb.PHASE_KIND_INSTALLING_REQUIREMENTS,
    "environment_leased": pb.PHASE_KIND_ENVIRONMENT_LEASED,
    "environment_adopted": pb.PHASE_KIND_ENVIRONMENT_ADOPTED,
    "running_hook": pb.PHASE_KIND_RUNNING_HOOK,
    "hook_finished": pb.PHASE_KIND_HOOK_FINISHED,
    "artifact_written": pb.PHASE_KIND_ARTIFACT_WRITTEN,
    "artifact_checked": pb.PHASE_KIND_ARTIFACT_CHECKED,
    "cache_hit": pb.PHASE_KIND_CACHE_HIT,
}
_WARNINGS: dict[str, int] = {
    "near_miss": pb.WARNING_KIND_NEAR_MISS,
    "unknown_key": pb.WARNING_KIND_UNKNOWN_KEY,
}
# The phases whose `slot` names the leased instance's slot (-1: not in a store).
_SLOTTED = frozenset({"environment_leased", "environment_adopted"})
_STEPS = {
    "start": pb.PHASE_STEP_START,
    "end": pb.PHASE_STEP_END,
    "instant": pb.PHASE_STEP_INSTANT,
}
_OUTCOMES = {
    "": pb.HOOK_OUTCOME_UNSPECIFIED,
    "ok": pb.HOOK_OUTCOME_OK,
    "failed": pb.HOOK_OUTCOME_FAILED,
    "timed_out": pb.HOOK_OUTCOME_TIMED_OUT,
    "cancelled": pb.HOOK_OUTCOME_CANCELLED,
}
_LOG_SOURCES = {
    "hook": pb.LOG_SOURCE_HOOK,
    "installer": pb.LOG_SOURCE_INSTALLER,
    "compiler": pb.LOG_SOURCE_COMPILER,
}
_INTERPRETER_SOURCES = {
    "daemon": pb.INTERPRETER_SOURCE_DAEMON,
    "path": pb.INTERPRETER_SOURCE_PATH,
    "pyenv": pb.INTERPRETER_SOURCE_PYENV,
}


def event(item: Event, started: float) -> pb.Event:
    """A phase, log line or warning of a long call that began at ``started`` (monotonic)."""
    if isinstance(item, Log):
        stream = pb.LOG_STREAM_STDOUT if item.stream == "stdout" else pb.LOG_STREAM_STDERR
        return pb.Event(
            log=pb.LogLine(
                stream=stream, text=item.text, hook=item.hook, source=_LOG_SOURCES[item.source]
            )
        )
    if isinstance(item, BuildWarning):
        return pb.Event(
            warning=pb.Warning(
                kind=_WARNINGS[item.kind],  # type: ignore[arg-type]
                message=item.message,
                path=item.path,
                field=item.field,
                suggestion=item.suggestion,
            )
        )
    assert isinstance(item, Phase)
    return pb.Event(
        phase=pb.Phase(
            kind=_PHASES[item.name],  # type: ignore[arg-type]
            elapsed_seconds=time.monotonic() - started,
            detail=item.detail,
            key_id=item.key_id,
            environment_path=item.environment_path,
            hook=item.hook,
            count=item.count,
            step_seconds=item.step_seconds,
            step=_STEPS[item.step],
            outcome=_OUTCOMES[item.outcome],
            source_fingerprint=item.fingerprint,
            slot=item.slot if item.name in _SLOTTED else 0,
            validation_seconds=item.validation_seconds,
        )
    )


def requires(out: RequiresOutcome) -> pb.Result:
    return pb.Result(
        requires=pb.RequiresResult(
            static_requirements=out.static,
            dynamic_requirements=out.dynamic,
            key_id=out.key_id,
            backend=out.backend,
            cached=out.cached,
        )
    )


def metadata(out: MetadataOutcome) -> pb.Result:
    return pb.Result(metadata=metadata_result(out))


def metadata_result(out: MetadataOutcome) -> pb.MetadataResult:
    return pb.MetadataResult(
        metadata=out.metadata,
        dist_info_name=out.dist_info_name,
        dist_info_path=str(out.dist_info_path),
        from_wheel=out.from_wheel,
        cached=out.cached,
        source_fingerprint=out.fingerprint,
    )


def watch_event(update: WatchUpdate) -> pb.WatchMetadataEvent:
    """One update of a metadata watch (not its end: that is the stream's status)."""
    event = pb.WatchMetadataEvent(
        sequence=update.sequence,
        changed_paths=list(update.changed),
        latency_seconds=update.latency,
        hook_seconds=update.hook_seconds,
    )
    if update.metadata is not None:
        event.metadata.CopyFrom(metadata_result(update.metadata))
    elif update.error is not None:
        event.failure.CopyFrom(failure(update.error))
    return event


def build(artifacts: Sequence[ArtifactOutcome]) -> pb.Result:
    return pb.Result(
        build=pb.BuildResult(
            artifacts=[
                pb.Artifact(
                    distribution=DIST_NUMBERS[a.distribution],  # type: ignore[arg-type]
                    path=str(a.path),
                    filename=a.path.name,
                    size=a.size,
                    sha256=a.sha256,
                    digest=f"sha256:{a.sha256}",
                    size_bytes=a.size,
                )
                for a in artifacts
            ]
        )
    )


def interpreters(found: Sequence[FoundInterpreter]) -> pb.ListInterpretersResponse:
    return pb.ListInterpretersResponse(
        interpreters=[
            pb.InterpreterInfo(
                path=item.path,
                executable=item.interpreter.executable,
                implementation=item.interpreter.implementation,
                version=item.interpreter.version,
                platform=item.interpreter.platform,
                source=_INTERPRETER_SOURCES[item.source],
            )
            for item in found
        ]
    )
