"""One client process of the stress test (tests/reliability/test_stress.py).

Run as ``python -m support.stress_worker CONFIG INDEX``. It talks to the daemon
through the client library only, sends ``requests`` seeded-random requests
one after another, and appends one JSON line per request to
``<results>/worker-INDEX.jsonl``: what was asked, its deadline, when it
started and ended, and how it ended (result, failure with status and kind,
cancelled).

Workers come in groups that share one session (so that requests of one
session really run side by side). The group's current session id lives in
``<groups>/group-N`` and changes under an flock: a worker that closes the
session opens the next one; its partner notices by a NOT_FOUND and reads the
file again. A request may therefore end by NOT_FOUND: the session was closed
under it.
"""

from __future__ import annotations

import fcntl
import json
import random
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from buildd.v1 import buildd_pb2 as pb
from buildd_client import Client, RequestFailed
from buildd_client.session import Session

if TYPE_CHECKING:
    from collections.abc import Iterator


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Group:
    """The session shared by a group of workers."""

    def __init__(self, client: Client, folder: Path, number: int) -> None:
        self.client = client
        self.file = folder / f"group-{number}"
        self.lock = folder / f"group-{number}.lock"

    def current(self) -> str:
        with _locked(self.lock):
            text = self.file.read_text() if self.file.exists() else ""
            if text:
                return text
            return self._open()

    def replace(self, old: str) -> bool:
        """Close ``old`` (if still current) and open the next session; True if closed here."""
        with _locked(self.lock):
            if self.file.exists() and self.file.read_text() != old:
                return False  # a partner did it already
            self.client.close_session(old)
            self._open()
            return True

    def _open(self) -> str:
        session = self.client.open_session(f"stress-{self.file.name}")
        self.file.write_text(session.id)
        return session.id


def run_one(
    client: Client,
    session_id: str,
    source: dict[str, Any],
    kind: str,
    deadline: float,
    cancel_after: float | None,
) -> dict[str, Any]:
    session = Session(client, pb.SessionInfo(session_id=session_id))
    if kind == "metadata":
        call: Any = session.metadata(source["path"], timeout=deadline, quiet=True)
    else:
        # Into the default <source>/dist: workers of every session publish
        # the same wheel name into the same folder at once.
        call = session.build(source["path"], distributions=("wheel",), timeout=deadline, quiet=True)
    timer = None
    if cancel_after is not None:
        timer = threading.Timer(cancel_after, call.cancel)
        timer.start()
    started = time.monotonic()
    record: dict[str, Any] = {"start_wall": time.time()}
    environments: list[str] = []
    try:
        for event in call:
            if event.HasField("phase") and event.phase.kind == pb.PHASE_KIND_ENVIRONMENT_LEASED:
                environments.append(event.phase.environment_path)
        call.result()
        record["outcome"] = "result"
        record["code"] = "OK"
    except RequestFailed as exc:
        cancelled = call.cancelled and exc.status == grpc.StatusCode.CANCELLED
        record["outcome"] = "cancelled" if cancelled else "error"
        record["code"] = exc.status.name
        record["failure_kind"] = exc.kind_name
        # A Failure event came from the daemon; without one the RPC itself
        # ended (client cancel, client-side deadline, connection).
        record["failure_event"] = call.final is not None
        record["message"] = exc.message[:300]
    finally:
        if timer is not None:
            timer.cancel()
    record["elapsed"] = time.monotonic() - started
    record["end_wall"] = time.time()
    record["environments"] = environments
    return record


def main(argv: list[str]) -> int:
    config = json.loads(Path(argv[1]).read_text())
    index = int(argv[2])
    rng = random.Random(f"{config['seed']}-{index}")
    results = Path(config["results"]) / f"worker-{index}.jsonl"
    with Client(config["address"], autostart=False) as client, results.open("a") as out:
        group = Group(client, Path(config["groups"]), index // config["group_size"])
        for number in range(config["requests"]):
            session_id = group.current()
            source = rng.choice(config["sources"])
            kind = "metadata" if rng.random() < config["metadata_share"] else "wheel"
            short = rng.random() < config["short_deadline_share"]
            deadline = rng.uniform(*config["short_deadline"]) if short else config["deadline"]
            cancel_after = (
                rng.uniform(0.0, config["cancel_window"])
                if rng.random() < config["cancel_share"]
                else None
            )
            record = run_one(client, session_id, source, kind, deadline, cancel_after)
            record.update(
                worker=index,
                number=number,
                session=session_id,
                source=source["path"],
                key=source["key"],
                kind=kind,
                deadline=deadline,
                short_deadline=short,
                cancel_after=cancel_after,
            )
            close = rng.random() < config["close_share"]
            record["closed_session"] = close and group.replace(session_id)
            out.write(json.dumps(record) + "\n")
            out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
