"""MetadataWatch's decisions, with a scripted prepare: what is delivered, and when it runs."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

from buildd_server import errors
from buildd_server.service.requests import MetadataOutcome, Request
from buildd_server.service.watches import MetadataWatch, Runner, WatchUpdate

WAIT = 10.0


def _outcome(text: bytes) -> MetadataOutcome:
    return MetadataOutcome(text, "x-1.dist-info", Path("/x"), False)


class Script:
    """A prepare that answers from a queue and counts its runs; it can be held."""

    def __init__(self) -> None:
        self.answers: queue.Queue[MetadataOutcome | errors.BuilddError] = queue.Queue()
        self.runs = 0
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()

    def __call__(self, *_args: object) -> MetadataOutcome:
        self.runs += 1
        self.started.set()
        assert self.release.wait(WAIT)
        answer = self.answers.get(timeout=WAIT)
        if isinstance(answer, errors.BuilddError):
            raise answer
        return answer


def _watch(script: Script) -> tuple[MetadataWatch, queue.Queue[WatchUpdate]]:
    delivered: queue.Queue[WatchUpdate] = queue.Queue()
    request = Request(session_id="s", source="/tree")
    watch = MetadataWatch(request, "wheel", "/tree", script, delivered.put, Runner())
    return watch, delivered


def _settle(watch: MetadataWatch) -> None:
    """Wait (bounded) until the watch is not preparing any more."""
    deadline = time.monotonic() + WAIT
    while watch._running:
        assert time.monotonic() < deadline, "the watch kept running"
        time.sleep(0.01)


def test_only_new_metadata_is_delivered() -> None:
    script = Script()
    watch, delivered = _watch(script)
    script.answers.put(_outcome(b"v1"))
    watch.start()
    first = delivered.get(timeout=WAIT)
    assert (first.sequence, first.metadata and first.metadata.metadata) == (1, b"v1")
    script.answers.put(_outcome(b"v1"))
    watch.changed(frozenset({"/tree/README.md"}), 0.0)
    _settle(watch)
    assert delivered.empty()
    script.answers.put(_outcome(b"v2"))
    watch.changed(frozenset({"/tree/pyproject.toml"}), 0.0)
    second = delivered.get(timeout=WAIT)
    assert second.sequence == 2
    assert second.metadata is not None
    assert second.metadata.metadata == b"v2"
    assert second.changed == ("pyproject.toml",)
    watch.end()


def test_a_failure_once_then_the_same_metadata_again_on_recovery() -> None:
    script = Script()
    watch, delivered = _watch(script)
    script.answers.put(_outcome(b"v1"))
    watch.start()
    delivered.get(timeout=WAIT)
    broken = errors.InvalidProject("pyproject.toml: invalid TOML")
    for _ in range(2):
        script.answers.put(broken)
        watch.changed(frozenset({"/tree/pyproject.toml"}), 0.0)
        _settle(watch)
    failure = delivered.get(timeout=WAIT)
    assert failure.error is broken
    assert delivered.empty()  # the same failure is not sent twice
    script.answers.put(_outcome(b"v1"))
    watch.changed(frozenset({"/tree/pyproject.toml"}), 0.0)
    recovered = delivered.get(timeout=WAIT)
    assert recovered.metadata is not None
    assert recovered.metadata.metadata == b"v1"
    assert recovered.sequence == failure.sequence + 1
    watch.end()


def test_changes_during_a_run_lead_to_exactly_one_more_run() -> None:
    script = Script()
    watch, delivered = _watch(script)
    script.release.clear()
    watch.start()
    assert script.started.wait(WAIT)
    for name in ("a", "b", "c"):
        watch.changed(frozenset({f"/tree/{name}"}), 0.0)
    script.answers.put(_outcome(b"v1"))
    script.answers.put(_outcome(b"v2"))
    script.release.set()
    assert delivered.get(timeout=WAIT).sequence == 1
    last = delivered.get(timeout=WAIT)
    assert last.changed == ("a", "b", "c")
    _settle(watch)
    assert script.runs == 2
    watch.end()


def test_the_session_ending_ends_the_watch() -> None:
    script = Script()
    watch, delivered = _watch(script)
    ended: list[bool] = []
    watch.on_end.append(lambda: ended.append(True))
    script.answers.put(errors.SessionNotFound("session s… has ended"))
    watch.start()
    final = delivered.get(timeout=WAIT)
    assert final.final
    assert isinstance(final.error, errors.SessionNotFound)
    assert watch.ended
    assert ended == [True]
    watch.changed(frozenset({"/tree/x"}), 0.0)
    assert script.runs == 1


def test_the_pool_ends_its_threads_when_idle() -> None:
    runner = Runner(limit=2)
    done = threading.Event()
    for _ in range(5):
        runner.submit(lambda: None)
    runner.submit(done.set)
    assert done.wait(WAIT)
    for thread in threading.enumerate():
        if thread.name == "buildd-watch-prepare":
            thread.join(WAIT)
    assert runner.threads == 0
