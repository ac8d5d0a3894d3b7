"""TreeWatchers' decisions with a scripted notifier: sharing, the cap, the system's refusals.

The real watcher (inotify) and the real refusals are in
tests/integration/test_watch_resources.py; here the notifier is scripted so
that each refusal's wording is checked one by one, with the exact texts
watchfiles gives (``Error creating recommended watcher: ... (os error 24)``).
"""

from __future__ import annotations

import os
import queue
import resource
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from buildd_server import errors
from buildd_server.sources.treewatch import Notifier, TreeWatchers, refusal

WAIT = 10.0


class Scripted:
    """A notifier whose ``watch`` returns what the test queues (or raises it)."""

    def __init__(self) -> None:
        self.results: queue.Queue[set[tuple[int, str]] | Exception] = queue.Queue()
        self.closed = threading.Event()

    def watch(
        self, debounce_ms: int, step_ms: int, timeout_ms: int, stop_event: threading.Event
    ) -> set[tuple[int, str]] | str:
        while not stop_event.is_set():
            try:
                result = self.results.get(timeout=0.01)
            except queue.Empty:
                continue
            if isinstance(result, Exception):
                raise result
            return result
        return "stop"

    def close(self) -> None:
        self.closed.set()


class Factory:
    def __init__(self, refuse: Exception | None = None) -> None:
        self.made: list[Scripted] = []
        self.refuse = refuse
        self.asked: list[bool] = []

    def __call__(self, paths: Sequence[str], ignore_permission_denied: bool) -> Notifier:
        self.asked.append(ignore_permission_denied)
        if self.refuse is not None and not (
            isinstance(self.refuse, PermissionError) and ignore_permission_denied
        ):
            raise self.refuse
        notifier = Scripted()
        self.made.append(notifier)
        return notifier


def _ignore(*_args: object) -> None:
    return None


def test_watches_of_one_tree_share_one_notifier_closed_by_the_last(tmp_path: Path) -> None:
    factory = Factory()
    trees = TreeWatchers(make=factory)
    root = str(tmp_path)
    seen: queue.Queue[frozenset[str]] = queue.Queue()
    tokens = [trees.subscribe(root, lambda p, _t: seen.put(p), _ignore) for _ in range(3)]
    assert len(factory.made) == 1 and trees.watched() == 1
    factory.made[0].results.put({(2, str(tmp_path / "pyproject.toml"))})
    for _ in tokens:
        assert seen.get(timeout=WAIT) == {str(tmp_path / "pyproject.toml")}
    for token in tokens[:2]:
        trees.unsubscribe(root, token)
    assert not factory.made[0].closed.is_set() and trees.watched() == 1
    trees.unsubscribe(root, tokens[2])
    assert factory.made[0].closed.wait(WAIT) and trees.watched() == 0


def test_the_cap_counts_trees_not_watches(tmp_path: Path) -> None:
    factory = Factory()
    trees = TreeWatchers(2, make=factory)
    roots = [str(tmp_path / name) for name in ("a", "b", "c")]
    first = trees.subscribe(roots[0], _ignore, _ignore)
    trees.subscribe(roots[1], _ignore, _ignore)
    trees.subscribe(roots[0], _ignore, _ignore)  # already watched: no new place
    with pytest.raises(errors.ResourceExhausted) as full:
        trees.subscribe(roots[2], _ignore, _ignore)
    assert "--max-watched-trees=2" in full.value.message and roots[2] in full.value.message
    assert full.value.metadata == {"limit": "--max-watched-trees"}
    assert len(factory.made) == 2
    trees.unsubscribe(roots[0], first)
    trees.unsubscribe(roots[0], first + 2)
    trees.subscribe(roots[2], _ignore, _ignore)
    assert len(factory.made) == 3


@pytest.mark.parametrize(
    ("raised", "limit"),
    [
        (
            RuntimeError("Error creating recommended watcher: Too many open files (os error 24)"),
            "fs.inotify.max_user_instances",
        ),
        (
            OSError('OS file watch limit reached. about ["/x"] (Error { kind: MaxFilesWatch })'),
            "fs.inotify.max_user_watches",
        ),
        (
            RuntimeError("error in underlying watcher: OS file watch limit reached."),
            "fs.inotify.max_user_watches",
        ),
        (RuntimeError("Too many open files in system (os error 23)"), "fs.file-max"),
    ],
)
def test_a_refused_watcher_is_resource_exhausted_naming_the_limit(
    tmp_path: Path, raised: Exception, limit: str
) -> None:
    trees = TreeWatchers(make=Factory(raised))
    with pytest.raises(errors.ResourceExhausted) as refused:
        trees.subscribe(str(tmp_path), _ignore, _ignore)
    assert limit in refused.value.message
    assert str(tmp_path) in refused.value.message
    assert refused.value.metadata == {"limit": limit}
    assert trees.watched() == 0


def test_an_unknown_failure_is_not_called_exhaustion(tmp_path: Path) -> None:
    error = refusal(str(tmp_path), RuntimeError("Unable to decode path"))
    assert type(error) is errors.BuilddError
    assert str(tmp_path) in error.message


def test_a_missing_tree_is_not_found(tmp_path: Path) -> None:
    trees = TreeWatchers(make=Factory(FileNotFoundError("No such file or directory")))
    with pytest.raises(errors.SourceNotFound):
        trees.subscribe(str(tmp_path / "gone"), _ignore, _ignore)


def test_an_unreadable_folder_is_left_out_but_nothing_else(tmp_path: Path) -> None:
    # watchfiles' ignore_permission_denied ignores every error: it is asked
    # for only after a permission error, never first.
    factory = Factory(PermissionError("Permission denied (os error 13)"))
    trees = TreeWatchers(make=factory)
    trees.subscribe(str(tmp_path), _ignore, _ignore)
    assert factory.asked == [False, True]
    assert trees.watched() == 1


def test_a_failing_watcher_ends_its_listeners_and_makes_room(tmp_path: Path) -> None:
    factory = Factory()
    trees = TreeWatchers(make=factory)
    root = str(tmp_path)
    ended: queue.Queue[errors.BuilddError] = queue.Queue()
    for _ in range(2):
        trees.subscribe(root, _ignore, ended.put)
    factory.made[0].results.put(
        RuntimeError("error in underlying watcher: OS file watch limit reached.")
    )
    for _ in range(2):
        error = ended.get(timeout=WAIT)
        assert isinstance(error, errors.ResourceExhausted)
        assert "fs.inotify.max_user_watches" in error.message
    assert factory.made[0].closed.wait(WAIT)
    assert trees.watched() == 0
    # The next watch of that tree starts a watcher of its own.
    trees.subscribe(root, _ignore, _ignore)
    assert len(factory.made) == 2


def test_an_open_file_limit_used_up_is_named_as_such(tmp_path: Path) -> None:
    # EMFILE from inotify_init1 means either limit: the process's own, when
    # it holds that many fds, else the user's inotify instances.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (held, hard))
    try:
        error = refusal(str(tmp_path), RuntimeError("Too many open files (os error 24)"))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert error.metadata == {"limit": "RLIMIT_NOFILE"}
    assert "ulimit -n" in error.message
