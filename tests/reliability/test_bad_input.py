"""Bad input: every kind gets a status that means what it says and a message naming it.

One daemon serves the module. A bystander session with a warm environment
lives in it from the start; after each test ``Bystander.check`` proves the
daemon still answers, and that the bystander's environment is the same one,
idle, with exactly its own hook calls, and still works. Each test sends its
bad input from a session of its own (the "victim").

The kinds that concern the daemon process itself (state folder, address)
start a second daemon, which must refuse with exit code 2 and a message on
stderr, and must not disturb the running one.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import shutil
import socket
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd.v1 import buildd_pb2_grpc
from buildd_client import Call, Client, RequestFailed
from buildd_client.client import Session
from support.daemon import DaemonProcess, short_tempdir
from support.projects import probe_project, read_probe_log
from support.reliability import (
    Bystander,
    alive,
    backend_project,
    env_dirs,
    proc_status_kib,
    wait_until,
)

pytestmark = pytest.mark.integration

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture(scope="module")
def bad_daemon(wheelhouse: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(wheelhouse).start()
    yield process
    process.cleanup()


@pytest.fixture(scope="module")
def bystander(bad_daemon: DaemonProcess, tmp_path_factory: pytest.TempPathFactory) -> Bystander:
    return Bystander(bad_daemon.address, tmp_path_factory.mktemp("bystander"))


@pytest.fixture
def client(bad_daemon: DaemonProcess) -> Iterator[Client]:
    with Client(bad_daemon.address, autostart=False) as value:
        yield value


@pytest.fixture
def victim(client: Client) -> Iterator[Session]:
    session = client.open_session("victim")
    yield session
    with contextlib.suppress(RequestFailed):
        session.close()


def refused(
    bystander: Bystander,
    run: Callable[[], object],
    status: grpc.StatusCode,
    *names: str,
    kind: int | None = None,
) -> RequestFailed:
    """Run ``run``, expect a RequestFailed with ``status`` naming ``names``; bystander intact."""
    with pytest.raises(RequestFailed) as caught:
        run()
    error = caught.value
    print(f"{status.name}: {error.message[:400]}")
    assert error.status == status, error
    if kind is not None:
        assert error.kind == kind, error
    for name in names:
        assert name in error.message, (name, error.message)
    bystander.check()
    return error


def write_project(root: Path, pyproject: str | bytes) -> Path:
    root.mkdir(parents=True)
    data = pyproject.encode() if isinstance(pyproject, str) else pyproject
    (root / "pyproject.toml").write_bytes(data)
    return root


def metadata_of(session: Session, source: Path | str, **kwargs: Any) -> Callable[[], object]:
    return lambda: session.metadata(str(source), **kwargs).result()


def raw_call(session: Session, method: str, request: Any) -> Callable[[], object]:
    """A long call sent through the raw stub: the client library would refuse the input."""

    def run() -> object:
        rpc = getattr(session.client.stub, method)(request, timeout=60)
        return Call(rpc, "any", lambda result: result).result()

    return run


def context(session_id: str, path: str = "", **kwargs: Any) -> pb.BuildContext:
    source = pb.Source(path=path) if path else None
    return pb.BuildContext(session_id=session_id, source=source, **kwargs)


# ---------------------------------------------------------- pyproject.toml --


def test_malformed_toml(bystander: Bystander, victim: Session, tmp_path: Path) -> None:
    source = write_project(tmp_path / "p", "[build-system\nrequires = []\n")
    refused(
        bystander,
        metadata_of(victim, source),
        INVALID,
        str(source / "pyproject.toml"),
        "invalid TOML",
        "line 1",
        kind=pb.FAILURE_KIND_INVALID_PROJECT,
    )


def test_pyproject_not_utf8(bystander: Bystander, victim: Session, tmp_path: Path) -> None:
    source = write_project(tmp_path / "p", b"[build-system]\nrequires = ['\xff\xfe']\n")
    refused(
        bystander, metadata_of(victim, source), INVALID, str(source / "pyproject.toml"), "UTF-8"
    )


@pytest.mark.parametrize(
    ("pyproject", "field", "value"),
    [
        ("build-system = 1\n", "build-system", "int 1"),
        ('[build-system]\nrequires = "setuptools"\n', "build-system.requires", "'setuptools'"),
        ("[build-system]\nrequires = [1]\n", "build-system.requires[0]", "int 1"),
        ('[build-system]\nbuild-backend = "x"\n', "build-system.requires", "missing"),
        ("[build-system]\nrequires = []\nbuild-backend = 3\n", "build-system.build-backend", "3"),
        (
            '[build-system]\nrequires = []\nbuild-backend = "not a module!"\n',
            "build-system.build-backend",
            "'not a module!'",
        ),
        (
            '[build-system]\nrequires = []\nbuild-backend = "b"\nbackend-path = "_be"\n',
            "build-system.backend-path",
            "'_be'",
        ),
    ],
    ids=[
        "table-is-int",
        "requires-is-string",
        "requirement-is-int",
        "requires-missing",
        "backend-is-int",
        "backend-not-a-name",
        "backend-path-is-string",
    ],
)
def test_build_system_of_wrong_types(
    bystander: Bystander, victim: Session, tmp_path: Path, pyproject: str, field: str, value: str
) -> None:
    source = write_project(tmp_path / "p", pyproject)
    where = str(source / "pyproject.toml")
    refused(bystander, metadata_of(victim, source), INVALID, where, field, value)


@pytest.mark.parametrize(
    ("requires", "field", "value"),
    [
        ('["setuptools >= = 1"]', "build-system.requires[0]", "'setuptools >= = 1'"),
        ('["wheel", "bad name!"]', "build-system.requires[1]", "'bad name!'"),
        ('["pkg; python_version >>> 3"]', "build-system.requires[0]", "python_version >>> 3"),
    ],
    ids=["bad-specifier", "bad-name", "bad-marker"],
)
def test_invalid_requirement_strings(
    bystander: Bystander, victim: Session, tmp_path: Path, requires: str, field: str, value: str
) -> None:
    source = write_project(tmp_path / "p", f"[build-system]\nrequires = {requires}\n")
    refused(
        bystander,
        metadata_of(victim, source),
        INVALID,
        str(source / "pyproject.toml"),
        field,
        value,
        kind=pb.FAILURE_KIND_INVALID_PROJECT,
    )


def test_backend_path_outside_the_tree(
    bystander: Bystander, victim: Session, tmp_path: Path
) -> None:
    (tmp_path / "outside").mkdir()
    source = write_project(
        tmp_path / "p",
        '[build-system]\nrequires = []\nbuild-backend = "b"\nbackend-path = ["../outside"]\n',
    )
    refused(
        bystander,
        metadata_of(victim, source),
        INVALID,
        "build-system.backend-path[0]",
        "'../outside'",
        "outside the project",
    )


# ------------------------------------------------------------------ backends --


@pytest.mark.parametrize(
    ("code", "backend", "words"),
    [
        ("import buildd_no_such_module_xyz\n", "fault_backend", "buildd_no_such_module_xyz"),
        ("", "nowhere_backend", "nowhere_backend"),
    ],
    ids=["import-fails", "module-missing"],
)
def test_backend_that_fails_to_import(
    bystander: Bystander, victim: Session, tmp_path: Path, code: str, backend: str, words: str
) -> None:
    source = backend_project(tmp_path / "p", code)
    pyproject = source / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"fault_backend"', f'"{backend}"'))
    error = refused(
        bystander,
        metadata_of(victim, source),
        PRECONDITION,
        f"backend {backend!r}",
        str(pyproject),
        kind=pb.FAILURE_KIND_BACKEND_UNAVAILABLE,
    )
    assert any(words in line for line in [error.message, *error.last_lines])


@pytest.mark.parametrize(
    ("dist", "kind", "words"),
    [
        # PEP 660's hook: pyproject_hooks reports its absence itself.
        ("editable", pb.FAILURE_KIND_HOOK_MISSING, "has no build_editable hook"),
        # A mandatory hook is called directly: its absence is an AttributeError
        # in pyproject_hooks' _in_process.py, which the daemon recognises.
        ("wheel", pb.FAILURE_KIND_HOOK_MISSING, "has no build_wheel hook"),
    ],
    ids=["editable", "wheel"],
)
def test_hook_missing(
    bystander: Bystander, victim: Session, tmp_path: Path, dist: str, kind: int, words: str
) -> None:
    source = backend_project(tmp_path / "p", "del build_wheel\n")
    refused(
        bystander,
        lambda: victim.build(str(source), distributions=(dist,)).result(),
        PRECONDITION,
        words,
        "'fault_backend'",
        kind=kind,
    )


def test_optional_hooks_missing_fall_back(
    bystander: Bystander, victim: Session, tmp_path: Path
) -> None:
    source = backend_project(
        tmp_path / "p", "del get_requires_for_build_wheel, prepare_metadata_for_build_wheel\n"
    )
    # PEP 517: no get_requires means none; no prepare_metadata means build a
    # wheel and take its .dist-info.
    result = victim.metadata(str(source)).result()
    assert result.from_wheel
    assert b"Name: demo" in result.metadata
    bystander.check()


def test_wheel_name_that_does_not_exist(
    bystander: Bystander, victim: Session, tmp_path: Path
) -> None:
    code = """
    def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
        return "ghost-1.0-py3-none-any.whl"
    """
    source = backend_project(tmp_path / "p", code)
    refused(
        bystander,
        lambda: victim.build(str(source), distributions=("wheel",)).result(),
        PRECONDITION,
        "'ghost-1.0-py3-none-any.whl'",
        "build_wheel",
        kind=pb.FAILURE_KIND_BACKEND_FAILED,
    )


@pytest.mark.parametrize(
    ("returned", "status", "words"),
    [
        ('["not a requirement!!"]', INVALID, "'not a requirement!!'"),
        ("42", PRECONDITION, "returned 42, not a list of strings"),
    ],
    ids=["invalid-requirement", "not-a-list"],
)
def test_bad_dynamic_requirements(
    bystander: Bystander,
    victim: Session,
    tmp_path: Path,
    returned: str,
    status: grpc.StatusCode,
    words: str,
) -> None:
    code = f"""
    def get_requires_for_build_wheel(config_settings=None):
        return {returned}
    """
    source = backend_project(tmp_path / "p", code)
    refused(bystander, metadata_of(victim, source), status, "get_requires_for_build_wheel", words)


def test_uninstallable_requirement(
    bystander: Bystander, victim: Session, client: Client, tmp_path: Path, bad_daemon: DaemonProcess
) -> None:
    source = write_project(
        tmp_path / "p", '[build-system]\nrequires = ["buildd-no-such-dist-xyz==1.0"]\n'
    )
    before = env_dirs(bad_daemon.state_dir)
    refused(
        bystander,
        metadata_of(victim, source),
        PRECONDITION,
        "buildd-no-such-dist-xyz==1",
        kind=pb.FAILURE_KIND_INSTALL_FAILED,
    )
    # The half-made environment is gone.
    assert env_dirs(bad_daemon.state_dir) == before
    assert client.status(victim.id).sessions[0].environments == []


def test_backend_writing_100_mb(
    bystander: Bystander, victim: Session, tmp_path: Path, bad_daemon: DaemonProcess
) -> None:
    code = """
    import sys

    def get_requires_for_build_wheel(config_settings=None):
        line = b"x" * (1 << 20) + b"\\n"
        for _ in range(100):
            sys.stdout.buffer.write(line)
        sys.stdout.buffer.write(b"the end\\n")
        sys.stdout.flush()
        raise SystemExit(7)
    """
    source = backend_project(tmp_path / "p", code)
    peak_before = proc_status_kib(bad_daemon.pid, "VmHWM")
    lines: list[str] = []
    call = victim.metadata(str(source))
    for event in call:
        if event.HasField("log"):
            lines.append(event.log.text)
    error = refused(bystander, call.result, PRECONDITION, "exit code 7")
    grown = proc_status_kib(bad_daemon.pid, "VmHWM") - peak_before
    print(f"100 MB of output: {len(lines)} lines streamed, peak RSS grew {grown} KiB")
    # 100 lines of 1 MiB were streamed cut to 8 KiB each; the rest was dropped.
    assert len(lines) == 101  # 100 cut lines and "the end"
    assert max(map(len, lines)) <= 8 * 1024 + 40
    assert len(error.last_lines) <= 50
    assert error.last_lines[-1] == "the end"
    assert all(len(line) <= 8 * 1024 + 40 for line in error.last_lines)
    assert grown < 32 * 1024


def test_backend_reading_stdin(bystander: Bystander, victim: Session, tmp_path: Path) -> None:
    code = """
    import sys

    def get_requires_for_build_wheel(config_settings=None):
        with open("stdin.txt", "w") as out:
            out.write(repr(sys.stdin.read()))
        return []
    """
    source = backend_project(tmp_path / "p", code)
    victim.metadata(str(source)).result()
    # Closed stdin: the read ends at once with nothing instead of hanging.
    assert (source / "stdin.txt").read_text() == "''"
    bystander.check()


def test_hook_changing_cwd_and_environment(
    bystander: Bystander, victim: Session, tmp_path: Path
) -> None:
    code = """
    import json

    def _seen(hook):
        with open(os.path.join(os.environ["PROBE_OUT"], hook + ".json"), "w") as out:
            json.dump({"cwd": os.getcwd(), "leak": os.environ.get("BUILDD_LEAK")}, out)
        os.environ["BUILDD_LEAK"] = hook
        os.chdir("/")

    _base_prepare = prepare_metadata_for_build_wheel

    def get_requires_for_build_wheel(config_settings=None):
        _seen("get_requires")
        return []

    def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
        _seen("prepare")
        return _base_prepare(metadata_directory, config_settings)
    """
    source = backend_project(tmp_path / "p", code)
    out = tmp_path / "seen"
    out.mkdir()
    # The hook finds its output folder through a file: nothing of ours leaks in.
    (source / "_be" / "fault_backend.py").write_text(
        (source / "_be" / "fault_backend.py")
        .read_text()
        .replace('os.environ["PROBE_OUT"]', repr(str(out)))
    )
    victim.metadata(str(source)).result()
    victim.metadata(str(source)).result()
    for hook in ("get_requires", "prepare"):
        seen = (out / f"{hook}.json").read_text()
        assert f'"cwd": "{source}"' in seen
        assert '"leak": null' in seen
    bystander.check()


def test_hook_leaving_a_background_process(
    bystander: Bystander, victim: Session, tmp_path: Path
) -> None:
    # The child writes its pid as the machine sees it (the hook may have a
    # PID namespace of its own, whose numbers mean nothing outside it).
    code = """
    import subprocess, sys, time

    def get_requires_for_build_wheel(config_settings=None):
        subprocess.Popen([sys.executable, "-c", (
            "import os, time; open('child.tmp', 'w').write(os.readlink('/proc/self')); "
            "os.replace('child.tmp', 'child.pid'); time.sleep(1000)"
        )])
        while not os.path.exists("child.pid"):
            time.sleep(0.01)
        return []
    """
    source = backend_project(tmp_path / "p", code)
    victim.metadata(str(source)).result()
    child = int((source / "child.pid").read_text())
    took = wait_until(lambda: not alive(child), "the hook's background child to be killed", 5)
    print(f"background child {child} gone {took:.2f} s after the call")
    bystander.check()


# ------------------------------------------------------------------- sources --


def test_path_that_does_not_exist(bystander: Bystander, victim: Session, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    refused(
        bystander,
        metadata_of(victim, missing),
        NOT_FOUND,
        str(missing),
        "does not exist",
        kind=pb.FAILURE_KIND_SOURCE_NOT_FOUND,
    )


def test_file_instead_of_folder(bystander: Bystander, victim: Session, tmp_path: Path) -> None:
    a_file = tmp_path / "pyproject.toml"
    a_file.write_text("[build-system]\nrequires = []\n")
    refused(bystander, metadata_of(victim, a_file), NOT_FOUND, str(a_file), "is a file")


def test_folder_that_is_not_a_project(
    bystander: Bystander, victim: Session, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(bystander, metadata_of(victim, empty), NOT_FOUND, str(empty), "not a Python project")


def test_symlink_loop(bystander: Bystander, victim: Session, tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    refused(bystander, metadata_of(victim, tmp_path / "a"), NOT_FOUND, str(tmp_path / "a"), "loop")


def test_path_with_spaces_and_non_ascii_works(
    bystander: Bystander, victim: Session, tmp_path: Path
) -> None:
    log = tmp_path / "probe.log"
    source = probe_project(tmp_path / "my prôject ü 空 x", log, name="spaced")
    result = victim.metadata(str(source)).result()
    assert b"Name: spaced" in result.metadata
    [wheel] = (
        victim.build(str(source), distributions=("wheel",), output_directory=tmp_path / "d é")
        .result()
        .artifacts
    )
    assert Path(wheel.path).is_file()
    assert {r["cwd"] for r in read_probe_log(log)} == {str(source)}
    bystander.check()


@pytest.mark.parametrize(
    "content",
    [b"not gzip at all", gzip.compress(b"gzip, but not a tar archive" * 100)],
    ids=["not-gzip", "not-tar"],
)
def test_corrupt_sdist(
    bystander: Bystander, victim: Session, tmp_path: Path, content: bytes
) -> None:
    sdist = tmp_path / "broken-1.0.tar.gz"
    sdist.write_bytes(content)
    refused(
        bystander,
        lambda: victim.build(str(sdist), distributions=("wheel",)).result(),
        INVALID,
        str(sdist),
        "not a valid .tar.gz sdist",
    )


def test_sdist_escaping_its_folder(bystander: Bystander, victim: Session, tmp_path: Path) -> None:
    sdist = tmp_path / "evil-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name in ("evil-1.0/pyproject.toml", "evil-1.0/../../escaped.txt"):
            data = b"[build-system]\nrequires = []\n"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    refused(
        bystander,
        lambda: victim.build(str(sdist), distributions=("wheel",)).result(),
        INVALID,
        str(sdist),
        "'evil-1.0/../../escaped.txt'",
    )
    assert not (tmp_path.parent / "escaped.txt").exists()


# -------------------------------------------------------- unreadable source --


class _NoDacOverride(DaemonProcess):
    """A daemon that runs as root without the capabilities that bypass permissions."""

    def command(self) -> list[str]:
        drop = "--bounding-set=-dac_override,-dac_read_search"
        return ["setpriv", drop, "--", *super().command()]


@pytest.fixture
def unreadable_daemon(wheelhouse: Path) -> Iterator[DaemonProcess]:
    if os.geteuid() != 0:
        process = DaemonProcess(wheelhouse)
    elif shutil.which("setpriv"):
        process = _NoDacOverride(wheelhouse)
    else:
        pytest.skip("root reads any folder, and setpriv (to drop CAP_DAC_OVERRIDE) is missing")
    yield process.start()
    process.cleanup()


@pytest.mark.parametrize("what", ["folder", "pyproject.toml"])
def test_unreadable_source(unreadable_daemon: DaemonProcess, tmp_path: Path, what: str) -> None:
    own = Bystander(unreadable_daemon.address, tmp_path / "own")
    source = write_project(tmp_path / "locked", "[build-system]\nrequires = []\n")
    target = source if what == "folder" else source / "pyproject.toml"
    target.chmod(0)
    try:
        with Client(unreadable_daemon.address, autostart=False) as client:
            session = client.open_session("unreadable")
            refused(
                own,
                metadata_of(session, source),
                grpc.StatusCode.PERMISSION_DENIED,
                str(target),
                "permission denied",
                kind=pb.FAILURE_KIND_SOURCE_UNREADABLE,
            )
            session.close()
    finally:
        target.chmod(0o755)
        own.close()


# --------------------------------------------------------- config settings --


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"big": "x" * (100 * 1024)}, ["context.config_settings[0]", "'big'", "102403 bytes"]),
        ({f"k{i}": "v" for i in range(300)}, ["context.config_settings", "300 entries"]),
        ({"": "value"}, ["context.config_settings[0].key is empty"]),
        ({"nul\0key": "v"}, ["context.config_settings[0]", "NUL"]),
    ],
    ids=["huge-value", "too-many", "empty-key", "nul-in-key"],
)
def test_bad_config_settings(
    bystander: Bystander,
    victim: Session,
    tmp_path: Path,
    settings: dict[str, str],
    words: list[str],
) -> None:
    source = probe_project(tmp_path / "p", tmp_path / "probe.log")
    refused(
        bystander,
        metadata_of(victim, source, config_settings=settings),
        INVALID,
        *words,
        kind=pb.FAILURE_KIND_INVALID_REQUEST,
    )
    assert read_probe_log(tmp_path / "probe.log") == []


def test_oversized_message(bystander: Bystander, victim: Session, tmp_path: Path) -> None:
    """Past the daemon's 2 MiB request limit gRPC itself refuses, before any of our code runs."""
    source = probe_project(tmp_path / "p", tmp_path / "probe.log")
    huge = pb.ConfigSetting(key="huge", values=["x" * (5 << 20)])
    request = pb.PrepareMetadataRequest(
        context=context(victim.id, str(source), config_settings=[huge])
    )
    options = [("grpc.max_send_message_length", 128 << 20)]
    with grpc.insecure_channel(bystander.address, options=options) as channel:
        stub = buildd_pb2_grpc.BuilddStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.PrepareMetadata(request, timeout=60))
    error: Any = caught.value
    print(f"{error.code().name}: {error.details()}")
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in error.details()
    assert str(2 << 20) in error.details()
    assert read_probe_log(tmp_path / "probe.log") == []
    bystander.check()


# ------------------------------------------------------- malformed requests --


def test_relative_or_missing_source(bystander: Bystander, victim: Session) -> None:
    relative = pb.PrepareMetadataRequest(context=context(victim.id, "some/relative/dir"))
    refused(
        bystander,
        raw_call(victim, "PrepareMetadata", relative),
        INVALID,
        "'some/relative/dir'",
        "not an absolute path",
    )
    missing = pb.PrepareMetadataRequest(context=context(victim.id))
    refused(bystander, raw_call(victim, "PrepareMetadata", missing), INVALID, "context.source")


@pytest.mark.parametrize(
    ("request_of", "words"),
    [
        (
            lambda sid, src: pb.BuildRequest(
                context=context(sid, src),
                distributions=[99],  # type: ignore[list-item]
            ),
            ["distributions[0]", "99 is not a Distribution"],
        ),
        (
            lambda sid, src: pb.BuildRequest(
                context=context(sid, src),
                distributions=[pb.DISTRIBUTION_WHEEL, pb.DISTRIBUTION_WHEEL],
            ),
            ["distributions", "twice"],
        ),
        (
            lambda sid, src: pb.BuildRequest(
                context=context(sid, src),
                distributions=[pb.DISTRIBUTION_WHEEL],
                output_directory="relative/out",
            ),
            ["output_directory", "'relative/out'"],
        ),
        (
            lambda sid, src: pb.PrepareMetadataRequest(
                context=context(sid, src), distribution=pb.DISTRIBUTION_SDIST
            ),
            ["distribution", "DISTRIBUTION_SDIST"],
        ),
    ],
    ids=["unknown-distribution", "distribution-twice", "relative-output", "metadata-of-sdist"],
)
def test_malformed_request_fields(
    bystander: Bystander,
    victim: Session,
    tmp_path: Path,
    request_of: Callable[[str, str], Any],
    words: list[str],
) -> None:
    source = probe_project(tmp_path / "p", tmp_path / "probe.log")
    request = request_of(victim.id, str(source))
    method = "Build" if isinstance(request, pb.BuildRequest) else "PrepareMetadata"
    refused(
        bystander,
        raw_call(victim, method, request),
        INVALID,
        *words,
        kind=pb.FAILURE_KIND_INVALID_REQUEST,
    )


def test_output_directory_that_is_a_file(
    bystander: Bystander, victim: Session, tmp_path: Path
) -> None:
    source = probe_project(tmp_path / "p", tmp_path / "probe.log")
    a_file = tmp_path / "out"
    a_file.write_text("not a folder")
    refused(
        bystander,
        lambda: victim.build(
            str(source), distributions=("wheel",), output_directory=a_file
        ).result(),
        INVALID,
        "output_directory",
        str(a_file),
    )


# ----------------------------------------------------------------- sessions --


def test_unknown_session_id(bystander: Bystander, client: Client, tmp_path: Path) -> None:
    unknown = "A" * 32
    stranger = Session(client, pb.SessionInfo(session_id=unknown))
    source = probe_project(tmp_path / "p", tmp_path / "probe.log")
    for run in (lambda: client.join_session(unknown), metadata_of(stranger, source)):
        refused(
            bystander,
            run,
            NOT_FOUND,
            repr(unknown),
            "unknown to this daemon",
            kind=pb.FAILURE_KIND_SESSION_NOT_FOUND,
        )


def test_closed_session_id(bystander: Bystander, client: Client, tmp_path: Path) -> None:
    session = client.open_session("closed")
    session.close()
    source = probe_project(tmp_path / "p", tmp_path / "probe.log")
    for run in (
        lambda: client.join_session(session.id),
        lambda: client.close_session(session.id),
        metadata_of(session, source),
    ):
        refused(bystander, run, NOT_FOUND, repr(session.id), "was closed")


@pytest.mark.parametrize(
    ("session_id", "shown"),
    [
        ("", "session id is empty"),
        ("short", "'short'"),
        ("../../../../etc/passwd-and-more", "'../../../../etc/passwd-and-more'"),
        ("has spaces in it, see", "'has spaces in it, see'"),
        ("é" * 20, "'" + "é" * 20 + "'"),
        # Below the 64 KiB message limit of JoinSession and GetStatus (wire/limits.py).
        ("x" * 60_000, "(60000 characters)"),
    ],
    ids=["empty", "too-short", "path", "spaces", "non-ascii", "huge"],
)
def test_malformed_session_id(
    bystander: Bystander, client: Client, tmp_path: Path, session_id: str, shown: str
) -> None:
    source = probe_project(tmp_path / "p", tmp_path / "probe.log")
    request = pb.PrepareMetadataRequest(
        context=context(session_id, str(source)), distribution=pb.DISTRIBUTION_WHEEL
    )
    runs = [
        lambda: client.join_session(session_id),
        raw_call(Session(client, pb.SessionInfo()), "PrepareMetadata", request),
    ]
    if session_id:  # an empty id asks GetStatus for every session
        runs.append(lambda: client.status(session_id))
    for run in runs:
        error = refused(bystander, run, NOT_FOUND, shown)
        assert len(error.message) < 300
        if session_id:
            assert "malformed" in error.message


# ------------------------------------------------------------ daemon process --


def _second_daemon(process: DaemonProcess, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(process.command(), capture_output=True, text=True, timeout=timeout)


def test_two_daemons_on_one_state_dir(
    bystander: Bystander, bad_daemon: DaemonProcess, wheelhouse: Path
) -> None:
    second = DaemonProcess(wheelhouse)
    second.state_dir = bad_daemon.state_dir
    try:
        done = _second_daemon(second)
    finally:
        second.cleanup()
    print(done.stderr.strip())
    assert done.returncode == 2
    assert str(bad_daemon.state_dir) in done.stderr
    assert f"in use by another buildd daemon (pid {bad_daemon.pid})" in done.stderr
    # It reclaimed nothing: the bystander's environment is still there and works.
    assert Path(bystander.path).is_dir()
    bystander.check()


@pytest.fixture
def read_only_dir() -> Iterator[Path]:
    folder = short_tempdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        if os.geteuid() == 0:
            shutil.rmtree(folder)
            pytest.skip(f"cannot mount a read-only tmpfs: {mounted.stderr.strip()}")
        folder.chmod(0o500)
    try:
        yield folder
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)
        folder.chmod(0o700)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("where", ["read-only", "under-a-file"])
def test_unwritable_state_dir(
    bystander: Bystander,
    wheelhouse: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    where: str,
) -> None:
    process = DaemonProcess(wheelhouse)
    if where == "read-only":
        process.state_dir = request.getfixturevalue("read_only_dir")
    else:
        (tmp_path / "a-file").write_text("")
        process.state_dir = tmp_path / "a-file" / "state"
    try:
        done = _second_daemon(process)
    finally:
        process.cleanup()
    print(done.stderr.strip())
    assert done.returncode == 2
    assert f"state dir {process.state_dir} is not writable" in done.stderr
    bystander.check()


def test_address_in_use(bystander: Bystander, bad_daemon: DaemonProcess, wheelhouse: Path) -> None:
    # The bystander's own socket: the newcomer must neither steal nor remove it.
    second = DaemonProcess(wheelhouse)
    second.address = bad_daemon.address
    try:
        done = _second_daemon(second)
    finally:
        second.cleanup()
    print(done.stderr.strip())
    assert done.returncode == 2
    assert f"{bad_daemon.socket} is in use by a running daemon" in done.stderr
    assert bad_daemon.socket.is_socket()
    bystander.check()


def test_tcp_port_in_use(bystander: Bystander, wheelhouse: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = DaemonProcess(wheelhouse)
        process.address = f"127.0.0.1:{port}"
        try:
            done = _second_daemon(process)
        finally:
            process.cleanup()
    print(done.stderr.strip())
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    bystander.check()


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("127.0.0.1:99999", "port '99999' is not a number in 0-65535"),
        ("[::1", "'[::1'"),
        ("unix:///buildd-no-such-folder/x.sock", "folder /buildd-no-such-folder does not exist"),
        ("unix:///tmp/" + "s" * 120 + ".sock", "longer than 107 bytes"),
        ("192.0.2.1:7000", "not a loopback address"),
    ],
    ids=["port-out-of-range", "bad-ipv6", "no-such-folder", "path-too-long", "not-loopback"],
)
def test_invalid_address(bystander: Bystander, wheelhouse: Path, address: str, words: str) -> None:
    process = DaemonProcess(wheelhouse)
    process.address = address
    try:
        done = _second_daemon(process)
    finally:
        process.cleanup()
    print(done.stderr.strip())
    assert done.returncode == 2
    assert words in done.stderr
    # Refused before anything was touched: no state folder was even created.
    assert not process.state_dir.exists()
    bystander.check()


def test_bystander_ran_only_its_own_hooks(bystander: Bystander) -> None:
    """Across every test above, nothing else ever ran in the bystander's environment."""
    records = read_probe_log(bystander.log)
    assert {r["prefix"] for r in records} == {bystander.path}
    assert len(records) == bystander.hook_calls
