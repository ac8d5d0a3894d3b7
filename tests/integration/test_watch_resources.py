"""What a metadata watch holds of the system: one inotify instance per tree, given back.

Every count is read from the daemon's own /proc entries (its fds that are
``anon_inode:inotify``, and their ``inotify wd:`` lines), so these tests see
what the kernel sees. The system's refusals are provoked in a user
namespace of the daemon's own, whose inotify limits are lowered there alone
(tests/support/inotify.py); the machine-wide sysctls are never touched.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd_client import Client, RequestFailed, Session, Watch
from support import inotify
from support.daemon import DaemonProcess
from support.projects import flit_project
from support.reliability import start_client_process, wait_until

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")

WAIT = 120.0  # seconds: a first prepare may create an environment


def _metadata(watch: Watch, timeout: float = WAIT) -> pb.WatchMetadataEvent:
    event = watch.get(timeout)
    assert event.WhichOneof("kind") == "metadata", event
    return event


def _bump(source: Path, old: str, new: str) -> None:
    pyproject = source / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(f'"{old}"', f'"{new}"'))


def _refused(watch: Watch) -> RequestFailed:
    with pytest.raises(RequestFailed) as refused:
        watch.get(WAIT)
    return refused.value


def test_watches_of_one_tree_share_one_instance_and_give_it_back(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    daemon = make_daemon()
    source = flit_project(tmp_path / "shared")
    with Client(daemon.address, autostart=False) as client:
        one, two = client.open_session("share-one"), client.open_session("share-two")
        watches = [session.watch_metadata(source) for session in (one, two, one, two)]
        for watch in watches:
            _metadata(watch)
        assert inotify.instances(daemon.pid) == 1
        assert client.status().daemon.watched_trees == 1
        for watch in watches[:3]:
            watch.cancel()
        wait_until(lambda: client.status(two.id).sessions[0].watches == 1, "three cancels")
        # The last watch of the tree still holds the one instance, and works.
        assert inotify.instances(daemon.pid) == 1
        _bump(source, "4.0", "4.1")
        assert b"Version: 4.1" in _metadata(watches[3]).metadata.metadata
        watches[3].cancel()
        wait_until(lambda: inotify.instances(daemon.pid) == 0, "the instance to close")
        assert client.status().daemon.watched_trees == 0


def test_closing_the_session_gives_its_instances_back(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    daemon = make_daemon()
    sources = [flit_project(tmp_path / f"closing{i}") for i in range(2)]
    with Client(daemon.address, autostart=False) as client:
        session = client.open_session("closing")
        watches = [session.watch_metadata(source) for source in sources]
        for watch in watches:
            _metadata(watch)
        assert inotify.instances(daemon.pid) == 2
        session.close()
        for watch in watches:
            assert _refused(watch).status == grpc.StatusCode.NOT_FOUND
        wait_until(lambda: inotify.instances(daemon.pid) == 0, "the instances to close")
        assert client.status().daemon.watched_trees == 0


def test_a_client_that_dies_gives_its_instance_back(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    daemon = make_daemon()
    source = flit_project(tmp_path / "orphan")
    with Client(daemon.address, autostart=False) as client:
        session = client.open_session("orphan")
        other = start_client_process("watch_client", [daemon.address, session.id, str(source)])
        try:
            assert other.stdout is not None
            assert other.stdout.readline().strip() == "metadata"
            assert inotify.instances(daemon.pid) == 1
            other.kill()  # no cancel sent: the connection just breaks
            other.wait(timeout=30)
        finally:
            if other.poll() is None:
                other.kill()
            if other.stdout is not None:
                other.stdout.close()
        wait_until(lambda: inotify.instances(daemon.pid) == 0, "the instance to close")
        # The session itself lives on (its idle clock runs), without the watch.
        assert client.status(session.id).sessions[0].watches == 0
        session.close()


def _many_folders(root: Path, count: int) -> Path:
    flit_project(root)
    for i in range(count):
        (root / "data" / f"d{i // 100}" / f"e{i}").mkdir(parents=True)
    return root


def test_a_watch_cancelled_while_it_opens_gives_its_instance_back(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    # Opening a tree of 5000 folders adds 5000 inotify watches, one at a time:
    # the cancel lands while that goes on, and the test checks that it did.
    daemon = make_daemon()
    source = _many_folders(tmp_path / "opening", 5000)
    folders = 5000 + 50 + 2
    landed = 0
    with Client(daemon.address, autostart=False) as client:
        session = client.open_session("opening")
        for _attempt in range(5):
            watch = session.watch_metadata(source)
            wait_until(lambda: inotify.instances(daemon.pid) == 1, "the watcher to start", 60)
            watch.cancel()
            if inotify.watches(daemon.pid) < folders:
                landed += 1
            wait_until(lambda: inotify.instances(daemon.pid) == 0, "the instance to close")
            assert client.status(session.id).sessions[0].watches == 0
            if landed >= 2:
                break
        session.close()
    if not landed:
        pytest.skip("no cancel arrived while the watcher was being set up")


def test_watched_trees_are_capped(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    daemon = make_daemon(["--max-watched-trees", "2"])
    sources = [flit_project(tmp_path / f"capped{i}") for i in range(3)]
    with Client(daemon.address, autostart=False) as client:
        session = client.open_session("trees")
        held = [session.watch_metadata(source) for source in sources[:2]]
        for watch in held:
            _metadata(watch)
        full = _refused(session.watch_metadata(sources[2]))
        assert full.status == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-watched-trees=2" in full.message
        assert str(sources[2]) in full.message
        assert inotify.instances(daemon.pid) == 2
        # A tree already watched takes no new place.
        with session.watch_metadata(sources[0]) as again:
            _metadata(again)
        held[1].cancel()
        wait_until(lambda: client.status().daemon.watched_trees == 1, "the cancel")
        with session.watch_metadata(sources[2]) as third:
            _metadata(third)
        held[0].cancel()
        session.close()


def _limited_daemon(
    make_daemon: Callable[..., DaemonProcess], *, instances: int = 0, watches: int = 0
) -> DaemonProcess:
    wrapper = inotify.limited(instances, watches)
    if wrapper is None:
        pytest.skip("cannot make a user namespace with its own inotify limits here")
    return make_daemon(wrapper=wrapper)


def test_no_instance_left_is_resource_exhausted_and_others_go_on(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    daemon = _limited_daemon(make_daemon, instances=2)
    sources = [flit_project(tmp_path / f"inst{i}") for i in range(3)]
    with Client(daemon.address, autostart=False) as client:
        one, two = client.open_session("inst-one"), client.open_session("inst-two")
        held = [one.watch_metadata(sources[0]), two.watch_metadata(sources[1])]
        for watch in held:
            _metadata(watch)
        refused = _refused(one.watch_metadata(sources[2]))
        assert refused.status == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "fs.inotify.max_user_instances" in refused.message
        assert str(sources[2]) in refused.message
        # The daemon and both sessions go on: the other watches still push.
        for watch, source in zip(held, sources, strict=False):
            _bump(source, "4.0", "4.4")
            assert b"Version: 4.4" in _metadata(watch).metadata.metadata
        assert client.status(one.id).sessions[0].watches == 1
        # An instance given back is one the next tree can have (the kernel
        # counts it free a moment after its fd closed).
        held[1].cancel()
        wait_until(lambda: inotify.instances(daemon.pid) == 1, "the instance to close")
        third = _watch_once_free(one, sources[2])
        third.cancel()
        held[0].cancel()


def _watch_once_free(session: Session, source: Path, timeout: float = 30.0) -> Watch:
    """A watch of ``source`` that got its metadata, retried while the system refuses."""
    deadline = time.monotonic() + timeout
    while True:
        watch = session.watch_metadata(source)
        try:
            _metadata(watch)
            return watch
        except RequestFailed as exc:
            if exc.status != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise


def test_no_inotify_watch_left_is_resource_exhausted(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    daemon = _limited_daemon(make_daemon, watches=100)
    big = _many_folders(tmp_path / "big", 200)
    small = flit_project(tmp_path / "small")
    with Client(daemon.address, autostart=False) as client:
        session = client.open_session("watches")
        refused = _refused(session.watch_metadata(big))
        assert refused.status == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "fs.inotify.max_user_watches" in refused.message
        assert str(big) in refused.message
        # Nothing of the refused watcher stays; a tree that fits is watched.
        wait_until(lambda: inotify.instances(daemon.pid) == 0, "the refused instance to close")
        with session.watch_metadata(small) as watch:
            _metadata(watch)
        session.close()


def test_watches_running_out_later_end_the_watch(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    # inotify needs a watch for each new folder too: when none is left, the
    # watcher can no longer see everything, and its watches must say so
    # rather than wait for changes that will never be reported.
    daemon = _limited_daemon(make_daemon, watches=50)
    source = flit_project(tmp_path / "growing")
    with Client(daemon.address, autostart=False) as client:
        session = client.open_session("growing")
        watch = session.watch_metadata(source)
        _metadata(watch)
        for i in range(80):
            (source / "src" / f"d{i}").mkdir(parents=True)
        ended = _refused(watch)
        assert ended.status == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "fs.inotify.max_user_watches" in ended.message
        wait_until(lambda: inotify.instances(daemon.pid) == 0, "the instance to close")
        assert client.status().daemon.watched_trees == 0
        session.close()
