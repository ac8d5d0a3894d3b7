"""Broken artifacts are never a success: each fault of a backend, as pypa/build refuses it.

Every test builds a small project whose in-tree backend (tests/support/faulty.py)
writes valid artifacts but for one fault, through the real daemon and the real
``buildd-client``, and checks the exit code, the failure kind, the message
(hook, file, what is wrong) and that nothing broken reached the output folder.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd_client import Client, RequestFailed
from support.daemon import DaemonProcess
from support.faulty import faulty_project, typo_project
from support.projects import setuptools_project

pytestmark = pytest.mark.integration


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "buildd_client", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


@pytest.fixture
def base(daemon: DaemonProcess) -> list[str]:
    opened = cli("--address", daemon.address, "session", "open")
    assert opened.returncode == 0, opened.stderr
    return ["--address", daemon.address, "--session", opened.stdout.strip()]


def _error_line(stderr: str) -> str:
    [line] = [x for x in stderr.splitlines() if x.startswith("buildd-client: error")]
    return line


def test_a_sound_faulty_backend_builds(base: list[str], tmp_path: Path) -> None:
    """The control: the same backend without a fault passes every check."""
    source = faulty_project(tmp_path / "ok", "none")
    done = cli(*base, "build", str(source))
    assert done.returncode == 0, done.stderr
    assert [Path(p).name for p in done.stdout.splitlines()] == [
        "faulty_none-1.0.tar.gz",
        "faulty_none-1.0-py3-none-any.whl",
    ]


@pytest.mark.parametrize("flags", [[], ["--wheel"]], ids=["sdist-then-wheel", "wheel"])
def test_a_wheel_without_dist_info_fails(base: list[str], tmp_path: Path, flags: list[str]) -> None:
    source = faulty_project(tmp_path / "p", "wheel-without-dist-info")
    done = cli(*base, "build", *flags, str(source))
    assert done.returncode == 1, done.stdout + done.stderr
    line = _error_line(done.stderr)
    assert "(backend_failed)" in line
    assert "hook build_wheel" in line
    assert "faulty_wheel_without_dist_info-1.0-py3-none-any.whl" in line
    assert "expected exactly one top-level {name}-{version}.dist-info, found none" in line
    assert done.stdout == ""  # no path printed: nothing is called a success
    assert not list((source / "dist").glob("*.whl"))


def test_a_wheel_without_record_fails(base: list[str], tmp_path: Path) -> None:
    source = faulty_project(tmp_path / "p", "wheel-without-record")
    done = cli(*base, "build", "--wheel", str(source))
    assert done.returncode == 1
    assert "faulty_wheel_without_record-1.0.dist-info holds no RECORD" in done.stderr


def test_a_wheel_must_agree_with_its_prepared_metadata(client: Client, tmp_path: Path) -> None:
    source = faulty_project(tmp_path / "p", "wheel-version-disagrees")
    session = client.open_session("outputs-disagrees")
    session.metadata(str(source)).result()
    with pytest.raises(RequestFailed) as failure:
        session.build(str(source), distributions=("wheel",)).result()
    assert failure.value.kind == pb.FAILURE_KIND_BACKEND_FAILED
    assert failure.value.hook == "build_wheel"
    # The file name says 2.0, its .dist-info 1.0: refused before any comparison.
    assert "faulty_wheel_version_disagrees-2.0-py3-none-any.whl" in failure.value.message
    assert "is for faulty-wheel-version-disagrees 1.0" in failure.value.message


@pytest.mark.parametrize("flags", [[], ["--sdist"]], ids=["sdist-then-wheel", "sdist"])
def test_an_sdist_without_pkg_info_fails(base: list[str], tmp_path: Path, flags: list[str]) -> None:
    source = faulty_project(tmp_path / "p", "sdist-without-pkg-info")
    done = cli(*base, "-v", "build", *flags, str(source))
    assert done.returncode == 1, done.stdout + done.stderr
    line = _error_line(done.stderr)
    assert "(backend_failed)" in line
    assert "hook build_sdist" in line
    assert "faulty_sdist_without_pkg_info-1.0.tar.gz" in line
    assert "does not contain faulty_sdist_without_pkg_info-1.0/PKG-INFO" in line
    # Like pypa/build, no wheel is built from it; and it is not published.
    assert "running build_wheel" not in done.stderr
    assert not (source / "dist").exists() or not list((source / "dist").iterdir())


@pytest.mark.parametrize("flags", [[], ["--sdist"]], ids=["sdist-then-wheel", "sdist"])
def test_an_sdist_that_is_not_gzip_fails_with_exit_1(
    base: list[str], tmp_path: Path, flags: list[str]
) -> None:
    source = faulty_project(tmp_path / "p", "sdist-not-gzip")
    done = cli(*base, "build", *flags, str(source))
    # The backend's fault, not the caller's: 1 in both flows, never 2.
    assert done.returncode == 1, done.stdout + done.stderr
    line = _error_line(done.stderr)
    assert "(backend_failed)" in line
    assert "faulty_sdist_not_gzip-1.0.tar.gz" in line
    assert "not a gzip-compressed tar archive" in line


def test_an_sdist_with_two_top_folders_fails(base: list[str], tmp_path: Path) -> None:
    source = faulty_project(tmp_path / "p", "sdist-two-folders")
    done = cli(*base, "build", "--sdist", str(source))
    assert done.returncode == 1
    assert (
        "expected a single top-level folder, found ['faulty_sdist_two_folders-1.0', 'other']"
        in done.stderr
    )


def test_prepared_metadata_without_metadata_fails(client: Client, tmp_path: Path) -> None:
    source = faulty_project(tmp_path / "p", "prepared-without-metadata")
    session = client.open_session("outputs-prepared")
    with pytest.raises(RequestFailed) as failure:
        session.metadata(str(source)).result()
    assert failure.value.kind == pb.FAILURE_KIND_BACKEND_FAILED
    assert failure.value.hook == "prepare_metadata_for_build_wheel"
    assert "faulty-prepared-without-metadata-1.0.dist-info" not in failure.value.message
    assert "faulty_prepared_without_metadata-1.0.dist-info/METADATA is missing" in (
        failure.value.message
    )


@pytest.mark.parametrize(
    ("fault", "flag", "hook"),
    [("no-build-sdist", "--sdist", "build_sdist"), ("no-build-wheel", "--wheel", "build_wheel")],
)
def test_a_missing_mandatory_hook_is_hook_missing(
    base: list[str], client: Client, tmp_path: Path, fault: str, flag: str, hook: str
) -> None:
    source = faulty_project(tmp_path / "p", fault)
    done = cli(*base, "build", flag, str(source))
    assert done.returncode == 1, done.stdout + done.stderr
    line = _error_line(done.stderr)
    assert "(hook_missing)" in line
    assert f"has no {hook} hook" in line
    session = client.open_session("outputs-hooks")
    with pytest.raises(RequestFailed) as failure:
        session.build(str(source), distributions=(flag.removeprefix("--"),)).result()
    assert failure.value.kind == pb.FAILURE_KIND_HOOK_MISSING
    assert failure.value.hook == hook
    assert failure.value.path == str(source / "pyproject.toml")


def test_an_attribute_error_inside_the_backend_stays_backend_failed(
    client: Client, tmp_path: Path
) -> None:
    """Only the hook itself missing is HOOK_MISSING, not any AttributeError naming it."""
    source = faulty_project(tmp_path / "p", "none")
    backend = source / "_backend" / "faulty_backend.py"
    backend.write_text(
        backend.read_text()
        + "\n\ndef build_wheel(wheel_directory, config_settings=None, metadata_directory=None):\n"
        "    return object().build_wheel\n"
    )
    session = client.open_session("outputs-attribute-error")
    with pytest.raises(RequestFailed) as failure:
        session.build(str(source), distributions=("wheel",)).result()
    assert failure.value.kind == pb.FAILURE_KIND_BACKEND_FAILED
    assert "has no attribute 'build_wheel'" in failure.value.message


def test_a_misspelt_build_system_table_is_a_warning(
    base: list[str], client: Client, tmp_path: Path
) -> None:
    source = typo_project(tmp_path / "typo")
    pyproject = source / "pyproject.toml"
    done = cli(*base, "-q", "metadata", str(source))
    assert done.returncode == 0, done.stderr
    # Shown even with -q, on stderr; stdout holds only the metadata.
    assert (
        f"buildd-client: warning: Found 'build_sytem' in {pyproject}, "
        "did you mean 'build-system'? It is ignored"
    ) in done.stderr.splitlines()
    assert done.stdout.startswith("Metadata-Version:")
    # ... and kept in the stream for IDEs, as a typed event.
    session = client.open_session("outputs-typo")
    call = session.metadata(str(source))
    warnings = [e.warning for e in call if e.WhichOneof("kind") == "warning"]
    call.result()
    assert [(w.kind, w.field, w.suggestion, w.path) for w in warnings] == [
        (pb.WARNING_KIND_NEAR_MISS, "build_sytem", "build-system", str(pyproject))
    ]


def test_unknown_build_system_keys_are_warnings(client: Client, tmp_path: Path) -> None:
    source = setuptools_project(tmp_path / "keys")
    pyproject = source / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace(
            'build-backend = "setuptools.build_meta"\n',
            'build-backend = "setuptools.build_meta"\nbuild_backend = "x"\nfrobnicate = true\n',
        )
    )
    session = client.open_session("outputs-keys")
    call = session.build(str(source), distributions=("wheel",), output_directory=tmp_path / "o")
    warnings = [e.warning for e in call if e.WhichOneof("kind") == "warning"]
    [artifact] = call.result().artifacts
    assert artifact.filename == "demo_setuptools-1.0-py3-none-any.whl"
    assert [(w.kind, w.field, w.suggestion) for w in warnings] == [
        (pb.WARNING_KIND_UNKNOWN_KEY, "build-system.build_backend", ""),
        (pb.WARNING_KIND_UNKNOWN_KEY, "build-system.frobnicate", ""),
    ]


def test_a_broken_wheel_is_never_a_success_in_the_library_either(
    client: Client, tmp_path: Path
) -> None:
    source = faulty_project(tmp_path / "p", "wheel-without-dist-info")
    session = client.open_session("outputs-library")
    out = tmp_path / "out"
    call = session.build(str(source), distributions=("wheel",), output_directory=out)
    phases = [e.phase for e in call if e.WhichOneof("kind") == "phase"]
    with pytest.raises(RequestFailed):
        call.result()
    kinds = [phase.kind for phase in phases]
    assert pb.PHASE_KIND_ARTIFACT_CHECKED not in kinds
    assert pb.PHASE_KIND_ARTIFACT_WRITTEN not in kinds
    assert not out.exists() or not list(out.iterdir())
    # The control: a sound wheel is checked, then written.
    good = faulty_project(tmp_path / "good", "none")
    call = session.build(str(good), distributions=("wheel",), output_directory=out)
    good_phases = [e.phase for e in call if e.WhichOneof("kind") == "phase"]
    kinds = [phase.kind for phase in good_phases]
    [artifact] = call.result().artifacts
    # The hook exited 0: the environment was kept (validated), not discarded,
    # so the next request of the same key leases that very instance.
    leased = [
        phase.environment_path
        for phase in [*phases, *good_phases]
        if phase.kind == pb.PHASE_KIND_ENVIRONMENT_LEASED
    ]
    assert len(leased) == 2 and leased[0] == leased[1]
    assert kinds.index(pb.PHASE_KIND_ARTIFACT_CHECKED) < kinds.index(pb.PHASE_KIND_ARTIFACT_WRITTEN)
    with zipfile.ZipFile(artifact.path) as archive:
        assert "faulty_none-1.0.dist-info/RECORD" in archive.namelist()


def test_an_sdist_source_without_pkg_info_is_bad_input(base: list[str], tmp_path: Path) -> None:
    """As pypa/build refuses `python -m build x.tar.gz` without PKG-INFO: the caller's file."""
    made = cli(*base, "build", "--sdist", str(faulty_project(tmp_path / "ok", "none")))
    assert made.returncode == 0, made.stderr
    good = Path(made.stdout.strip())
    # The same archive without its PKG-INFO, as a hand-made "sdist" would be.
    bad = tmp_path / good.name
    with tarfile.open(good) as original, tarfile.open(bad, "w:gz") as copy:
        for member in original.getmembers():
            if not member.name.endswith("/PKG-INFO"):
                copy.addfile(member, original.extractfile(member))
    done = cli(*base, "build", "--wheel", str(bad))
    assert done.returncode == 2, done.stdout + done.stderr
    line = _error_line(done.stderr)
    assert "(invalid_project)" in line
    assert f"{bad}: not a valid source distribution: it does not contain " in line
    assert "faulty_none-1.0/PKG-INFO" in line
    # The original, with PKG-INFO, builds.
    assert cli(*base, "build", "--wheel", str(good)).returncode == 0
