"""What the CLI writes: progress and backend lines, failures, status."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, TextIO

from buildd.v1 import buildd_pb2 as pb

if TYPE_CHECKING:
    from buildd_client.errors import DaemonUnavailable, RequestFailed

PROG = "buildd-client"


def _phase_text(phase: pb.Phase) -> str:
    step = phase.step_seconds
    kind = phase.kind
    if kind == pb.PHASE_KIND_KEY_RESOLVED:
        key = f" (key {phase.key_id})" if phase.key_id else ""
        return f"backend {phase.detail}{key}"
    if kind == pb.PHASE_KIND_WAITING_FOR_ENVIRONMENT:
        return "waiting for a free environment" + (f": {phase.detail}" if phase.detail else "")
    if kind == pb.PHASE_KIND_CREATING_ENVIRONMENT:
        if step:
            return f"created environment {phase.environment_path} in {step:.1f}s"
        return f"creating environment {phase.environment_path}".rstrip()
    if kind == pb.PHASE_KIND_INSTALLING_REQUIREMENTS:
        what = f"{phase.count} requirement{'s' if phase.count != 1 else ''}"
        if step:
            return f"installed {what} in {step:.1f}s"
        return f"installing {what}" + (f": {phase.detail}" if phase.detail else "")
    if kind == pb.PHASE_KIND_ENVIRONMENT_LEASED:
        return f"using environment {phase.environment_path}"
    if kind == pb.PHASE_KIND_RUNNING_HOOK:
        return f"running {phase.hook}"
    if kind == pb.PHASE_KIND_HOOK_FINISHED:
        return f"{phase.hook} finished in {step:.1f}s"
    if kind == pb.PHASE_KIND_ARTIFACT_WRITTEN:
        return f"wrote {phase.detail}"
    return phase.detail or f"phase {kind}"


class Progress:
    """Writes the events of a long call to ``stream`` (stderr) as they arrive."""

    def __init__(self, stream: TextIO, *, phases: bool, logs: bool) -> None:
        self.stream = stream
        self.phases = phases
        self.logs = logs

    def __call__(self, event: pb.Event) -> None:
        kind = event.WhichOneof("kind")
        if kind == "warning":
            # Shown even with --quiet, like a failure: the project needs fixing.
            self.stream.write(f"{PROG}: warning: {event.warning.message}\n")
        elif kind == "log" and self.logs:
            self.stream.write(event.log.text + "\n")
        elif kind == "phase" and self.phases:
            self.stream.write(f"[{event.phase.elapsed_seconds:6.1f}s] {_phase_text(event.phase)}\n")
        else:
            return
        self.stream.flush()


def report_failure(error: RequestFailed, stream: TextIO) -> None:
    """The error message, the file at fault, then the backend's last lines: always shown."""
    stream.write(f"{PROG}: error ({error.kind_name}): {error.message}\n")
    if error.path and error.path not in error.message:
        stream.write(f"  file: {error.path}\n")
    if error.last_lines:
        source = f"hook {error.hook}" if error.hook else "the backend"
        stream.write(f"--- last {len(error.last_lines)} lines from {source} ---\n")
        for line in error.last_lines:
            stream.write(line + "\n")
    stream.flush()


def report_unavailable(error: DaemonUnavailable, stream: TextIO) -> None:
    stream.write(f"{PROG}: error: {error.message}\n")
    if error.log_lines:
        stream.write("--- last lines of the daemon's log ---\n")
        for line in error.log_lines:
            stream.write(line + "\n")
    stream.flush()


def _state(value: int) -> str:
    try:
        name = pb.EnvironmentState.Name(value)  # type: ignore[arg-type]
    except ValueError:
        return str(value)
    return name.removeprefix("ENVIRONMENT_STATE_").lower()


def _environment_json(env: pb.EnvironmentInfo) -> dict[str, Any]:
    return {
        "id": env.id,
        "path": env.path,
        "key_id": env.key_id,
        "interpreter": env.interpreter,
        "python_version": env.python_version,
        "requirements": list(env.requirements),
        "state": _state(env.state),
        "hook_calls": env.hook_calls,
        "created_at": env.created_at,
        "last_used_at": env.last_used_at,
        "sources": list(env.sources),
        "slot": env.slot,
        "size_bytes": env.size_bytes,
        "principal": env.principal,
        "store_key_id": env.store_key_id,
    }


def size_text(size: int) -> str:
    """``12.3 MiB``: a byte count for people."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - the loop returns


def prune_to_json(response: pb.PruneStoreResponse) -> dict[str, Any]:
    """The shape ``buildd-client store prune --json`` prints."""
    return {
        "environments_removed": response.environments_removed,
        "bytes_freed": response.bytes_freed,
        "environments_kept": response.environments_kept,
    }


def status_to_json(status: pb.StatusResponse) -> dict[str, Any]:
    """The shape ``buildd-client status --json`` prints (a public contract)."""
    daemon = status.daemon
    return {
        "daemon": {
            "pid": daemon.pid,
            "version": daemon.version,
            "address": daemon.address,
            "state_dir": daemon.state_dir,
            "started_at": daemon.started_at,
            "installer": daemon.installer,
            "max_envs": daemon.max_envs,
            "max_envs_per_key": daemon.max_envs_per_key,
            "draining": daemon.draining,
            "daemon_id": daemon.daemon_id,
            "store_enabled": daemon.store_enabled,
            "store_size_limit_bytes": daemon.store_size_limit_bytes,
            "store_ttl_seconds": daemon.store_ttl_seconds,
            "store_bytes": daemon.store_bytes,
            "store_environments": daemon.store_environments,
        },
        "principal": status.principal,
        "admin": status.admin,
        "sessions": [
            {
                "id": session.session_id,
                "client_name": session.client_name,
                "created_at": session.created_at,
                "last_active_at": session.last_active_at,
                "keepalives": session.keepalives,
                "principal": session.principal,
                "environments": [_environment_json(env) for env in session.environments],
            }
            for session in status.sessions
        ],
        "store": [
            {
                "principal": row.principal,
                "key_id": row.key_id,
                "slots": [env.slot for env in row.environments],
                "size_bytes": row.size_bytes,
                "last_used_at": row.last_used_at,
                "hook_calls": row.hook_calls,
                "environments": [_environment_json(env) for env in row.environments],
            }
            for row in status.store
        ],
    }


def status_text(status: pb.StatusResponse) -> str:
    """A human-readable status report."""
    daemon = status.daemon
    lines = [
        f"daemon: pid {daemon.pid}, buildd {daemon.version}, installer {daemon.installer}"
        + (", draining" if daemon.draining else ""),
        *([f"  id:      {daemon.daemon_id}"] if daemon.daemon_id else []),
        f"  address: {daemon.address}",
        f"  state:   {daemon.state_dir}",
        f"  caps:    {daemon.max_envs} environments, {daemon.max_envs_per_key} per key",
    ]
    if status.principal:
        lines.append(f"  you:     {status.principal}" + (" (admin)" if status.admin else ""))
    if not status.sessions:
        lines.append("no sessions")
    for session in status.sessions:
        count = len(session.environments)
        name = f" ({session.client_name})" if session.client_name else ""
        if session.principal and session.principal != status.principal:
            name += f" of {session.principal}"
        lines.append(
            f"session {session.session_id}{name}: {count} environment{'s' if count != 1 else ''}"
        )
        for env in session.environments:
            lines.append(
                f"  {env.id}  {_state(env.state):8}  python {env.python_version}  "
                f"hook calls {env.hook_calls}  {env.path}"
            )
            if env.requirements:
                lines.append(f"      requires: {', '.join(env.requirements)}")
    lines += _store_text(status)
    return "\n".join(lines) + "\n"


def _store_text(status: pb.StatusResponse) -> list[str]:
    daemon = status.daemon
    if not daemon.store_enabled:
        return ["store: off (--no-store)"]
    days = daemon.store_ttl_seconds / 86400
    lines = [
        f"store: {daemon.store_environments} environments, {size_text(daemon.store_bytes)} "
        f"of {size_text(daemon.store_size_limit_bytes)}, kept {days:g} days unused"
    ]
    for row in status.store:
        slots = ", ".join(f"{env.slot} {_state(env.state)}" for env in row.environments)
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(row.last_used_at))
        who = f" of {row.principal}" if row.principal != status.principal else ""
        lines.append(
            f"  key {row.key_id}{who}: slots {slots}; {size_text(row.size_bytes)}, "
            f"last used {used}, {row.hook_calls} hook calls"
        )
        if row.environments and row.environments[0].requirements:
            lines.append(f"      requires: {', '.join(row.environments[0].requirements)}")
    return lines
