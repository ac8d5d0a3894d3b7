"""Service events and outcomes into wire messages (the other way of ``decode.py``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from buildd.v1 import buildd_pb2 as pb

from ..events import BuildWarning, Event, Log, Phase
from .decode import DIST_NUMBERS

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..requests import ArtifactOutcome, MetadataOutcome, RequiresOutcome

_PHASES: dict[str, int] = {
    "key_resolved": pb.PHASE_KIND_KEY_RESOLVED,
    "waiting_for_environment": pb.PHASE_KIND_WAITING_FOR_ENVIRONMENT,
    "creating_environment": pb.PHASE_KIND_CREATING_ENVIRONMENT,
    "installing_requirements": pb.PHASE_KIND_INSTALLING_REQUIREMENTS,
    "environment_leased": pb.PHASE_KIND_ENVIRONMENT_LEASED,
    "running_hook": pb.PHASE_KIND_RUNNING_HOOK,
    "hook_finished": pb.PHASE_KIND_HOOK_FINISHED,
    "artifact_written": pb.PHASE_KIND_ARTIFACT_WRITTEN,
    "artifact_checked": pb.PHASE_KIND_ARTIFACT_CHECKED,
}
_WARNINGS: dict[str, int] = {
    "near_miss": pb.WARNING_KIND_NEAR_MISS,
    "unknown_key": pb.WARNING_KIND_UNKNOWN_KEY,
}


def event(item: Event, started: float) -> pb.Event:
    """A phase, log line or warning of a long call that began at ``started`` (monotonic)."""
    if isinstance(item, Log):
        stream = pb.LOG_STREAM_STDOUT if item.stream == "stdout" else pb.LOG_STREAM_STDERR
        return pb.Event(log=pb.LogLine(stream=stream, text=item.text, hook=item.hook))
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
        )
    )


def requires(out: RequiresOutcome) -> pb.Result:
    return pb.Result(
        requires=pb.RequiresResult(
            static_requirements=out.static,
            dynamic_requirements=out.dynamic,
            key_id=out.key_id,
            backend=out.backend,
        )
    )


def metadata(out: MetadataOutcome) -> pb.Result:
    return pb.Result(
        metadata=pb.MetadataResult(
            metadata=out.metadata,
            dist_info_name=out.dist_info_name,
            dist_info_path=str(out.dist_info_path),
            from_wheel=out.from_wheel,
        )
    )


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
                )
                for a in artifacts
            ]
        )
    )
