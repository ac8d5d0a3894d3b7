"""The artifact checks on archives made here: each refusal, and what real backends write."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from buildd_server import errors
from buildd_server.artifacts import checks
from buildd_server.sources.sources import Project

PROJECT = Project(Path("/src/demo"), Path("/src/demo/pyproject.toml"), (), "demo_backend", ())
METADATA = b"Metadata-Version: 2.1\nName: Demo.Pkg\nVersion: 1.0\n"
WHEEL = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"


def wheel(
    folder: Path,
    filename: str = "demo_pkg-1.0-py3-none-any.whl",
    *,
    dist_info: str = "demo_pkg-1.0.dist-info",
    files: dict[str, bytes] | None = None,
    drop: tuple[str, ...] = (),
) -> Path:
    members = {
        "demo_pkg/__init__.py": b"",
        f"{dist_info}/METADATA": METADATA,
        f"{dist_info}/WHEEL": WHEEL,
        f"{dist_info}/RECORD": b"",
    }
    members.update(files or {})
    for name in drop:
        del members[name]
    path = folder / filename
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def sdist(
    folder: Path,
    filename: str = "demo_pkg-1.0.tar.gz",
    *,
    members: dict[str, bytes] | None = None,
    mode: str = "w:gz",
) -> Path:
    if members is None:
        members = {"demo_pkg-1.0/PKG-INFO": METADATA, "demo_pkg-1.0/pyproject.toml": b""}
    path = folder / filename
    with tarfile.open(path, mode) as tar:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def refusal(dist: checks.Dist, path: Path, **kwargs: object) -> str:
    with pytest.raises(errors.BackendFailed) as failure:
        checks.check_artifact(dist, path, PROJECT, **kwargs)  # type: ignore[arg-type]
    assert failure.value.hook == f"build_{dist}"
    assert failure.value.path == "/src/demo/pyproject.toml"
    assert repr(path.name) in failure.value.message
    return failure.value.message


def test_a_sound_wheel_passes_with_names_compared_canonically(tmp_path: Path) -> None:
    identity = checks.check_artifact("wheel", wheel(tmp_path), PROJECT)
    assert str(identity) == "demo-pkg 1.0"
    # "Demo.Pkg 1.0.0" is the same distribution as "demo_pkg 1.0".
    prepared = checks.Identity(checks.canonicalize_name("Demo.Pkg"), checks.Version("1.0.0"))
    assert checks.check_artifact(
        "wheel", wheel(tmp_path), PROJECT, expected=[("prepared", prepared)]
    ) == (prepared)


def test_an_editable_wheel_with_a_build_tag_passes(tmp_path: Path) -> None:
    # setuptools names editable wheels like this.
    path = wheel(tmp_path, "demo_pkg-1.0-0.editable-py3-none-any.whl")
    assert str(checks.check_artifact("editable", path, PROJECT)) == "demo-pkg 1.0"


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: wheel(d, "demo.whl"), "not a wheel file name"),
        (lambda d: wheel(d, drop=("demo_pkg-1.0.dist-info/RECORD",)), "holds no RECORD"),
        (
            lambda d: wheel(
                d, drop=tuple(f"demo_pkg-1.0.dist-info/{n}" for n in ("METADATA", "WHEEL"))
            ),
            "holds no METADATA, WHEEL",
        ),
        (
            lambda d: wheel(d, files={"other-2.0.dist-info/METADATA": METADATA}),
            "found ['demo_pkg-1.0.dist-info', 'other-2.0.dist-info']",
        ),
        (lambda d: wheel(d, dist_info="demo_pkg.dist-info"), "is not named"),
        (lambda d: wheel(d, dist_info="other-1.0.dist-info"), "is for other 1.0"),
        (
            lambda d: wheel(d, files={"demo_pkg-1.0.dist-info/METADATA": b"Name: demo-pkg\n"}),
            "METADATA has no Version",
        ),
        (
            lambda d: wheel(
                d,
                files={"demo_pkg-1.0.dist-info/METADATA": b"Name: demo-pkg\nVersion: 1.1\n"},
            ),
            "METADATA says demo-pkg 1.1, the file name demo-pkg 1.0",
        ),
        (
            lambda d: wheel(d, files={"demo_pkg-1.0.dist-info/WHEEL": b"Generator: x\n"}),
            "WHEEL has no Wheel-Version",
        ),
        (
            lambda d: wheel(d, files={"demo_pkg-1.0.dist-info/WHEEL": b"Wheel-Version: 2.0\n"}),
            "Wheel-Version 2.0, not 1.x",
        ),
        (lambda d: wheel(d, files={"../evil.py": b""}), "outside site-packages"),
    ],
)
def test_broken_wheels_are_refused(tmp_path: Path, make: object, expected: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    assert expected in refusal("wheel", path)


def test_a_wheel_that_is_no_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "demo_pkg-1.0-py3-none-any.whl"
    path.write_bytes(b"PK but not really")
    assert "not a zip archive" in refusal("wheel", path)


def test_a_wheel_must_agree_with_what_it_was_built_from(tmp_path: Path) -> None:
    other = checks.sdist_identity("demo_pkg-1.1.tar.gz")
    message = refusal("wheel", wheel(tmp_path), expected=[("the sdist demo_pkg-1.1.tar.gz", other)])
    assert "it is demo-pkg 1.0, but the sdist demo_pkg-1.1.tar.gz is demo-pkg 1.1" in message


def test_a_wheel_must_agree_with_its_metadata_directory(tmp_path: Path) -> None:
    prepared = tmp_path / "demo_pkg-1.0.dist-info"
    prepared.mkdir()
    (prepared / "METADATA").write_bytes(METADATA.replace(b"1.0", b"0.9"))
    message = refusal("wheel", wheel(tmp_path), metadata_directory=prepared)
    assert "the metadata prepared by prepare_metadata_for_build_wheel is demo-pkg 0.9" in message


def test_a_sound_sdist_passes(tmp_path: Path) -> None:
    assert str(checks.check_artifact("sdist", sdist(tmp_path), PROJECT)) == "demo-pkg 1.0"
    # An unnormalised top folder for the same name and version is fine.
    path = sdist(
        tmp_path,
        members={"Demo.Pkg-1.0.0/PKG-INFO": METADATA},
    )
    assert str(checks.check_artifact("sdist", path, PROJECT)) == "demo-pkg 1.0"


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: sdist(d, members={"demo_pkg-1.0/setup.py": b""}), "does not contain"),
        (lambda d: sdist(d, mode="w"), "not a gzip-compressed tar archive"),
        (lambda d: sdist(d, "demo_pkg-1.0.zip"), "not a .tar.gz file name"),
        (lambda d: sdist(d, "demo.tar.gz"), "not an sdist file name"),
        (
            lambda d: sdist(d, members={"a/PKG-INFO": METADATA, "b/PKG-INFO": METADATA}),
            "expected a single top-level folder, found ['a', 'b']",
        ),
        (
            lambda d: sdist(d, members={"other-1.0/PKG-INFO": METADATA}),
            "top-level folder 'other-1.0' is for other 1.0, not demo-pkg 1.0",
        ),
        (
            lambda d: sdist(d, members={"demo_pkg-1.0/PKG-INFO": b"Name: demo-pkg\nVersion: 2\n"}),
            "PKG-INFO says demo-pkg 2, the file name demo-pkg 1.0",
        ),
        (
            lambda d: sdist(d, members={"demo_pkg-1.0/PKG-INFO": b"Name: demo-pkg\nVersion: x\n"}),
            "Version 'x', which is not PEP 440",
        ),
    ],
)
def test_broken_sdists_are_refused(tmp_path: Path, make: object, expected: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    assert expected in refusal("sdist", path)


def test_a_truncated_sdist_is_refused(tmp_path: Path) -> None:
    path = sdist(
        tmp_path, members={"demo_pkg-1.0/PKG-INFO": METADATA, "demo_pkg-1.0/big": b"x" * 4096}
    )
    path.write_bytes(path.read_bytes()[:-40])
    assert "gzip-compressed tar archive" in refusal("sdist", path)


def test_an_sdist_source_is_the_callers_input(tmp_path: Path) -> None:
    root = tmp_path / "demo_pkg-1.0"
    root.mkdir()
    path = tmp_path / "demo_pkg-1.0.tar.gz"
    with pytest.raises(errors.InvalidProject) as failure:
        checks.check_sdist_source(path, root)
    assert failure.value.path == str(path)
    assert failure.value.message == (
        f"{path}: not a valid source distribution: it does not contain demo_pkg-1.0/PKG-INFO"
    )
    (root / "PKG-INFO").write_bytes(METADATA)
    checks.check_sdist_source(path, root)
    with pytest.raises(errors.InvalidProject, match="does not look like a source distribution"):
        checks.check_sdist_source(tmp_path / "demo.tar.gz", root)


def test_prepared_metadata(tmp_path: Path) -> None:
    folder = tmp_path / "demo_pkg-1.0.dist-info"
    folder.mkdir()
    with pytest.raises(errors.BackendFailed, match="METADATA is missing") as failure:
        checks.check_prepared(folder, "wheel", PROJECT)
    assert failure.value.hook == "prepare_metadata_for_build_wheel"
    (folder / "METADATA").write_bytes(METADATA.replace(b"1.0", b"1.1"))
    with pytest.raises(errors.BackendFailed, match=r"says demo-pkg 1\.1, the folder name"):
        checks.check_prepared(folder, "wheel", PROJECT)
    (folder / "METADATA").write_bytes(METADATA)
    assert str(checks.check_prepared(folder, "editable", PROJECT)) == "demo-pkg 1.0"
    odd = tmp_path / "metadata"
    odd.mkdir()
    (odd / "METADATA").write_bytes(METADATA)
    with pytest.raises(errors.BackendFailed, match="not named"):
        checks.check_prepared(odd, "wheel", PROJECT)


IN_PROCESS = "/env/lib/python3.11/site-packages/pyproject_hooks/_in_process/_in_process.py"


def _traceback(function: str, error: str, file: str = IN_PROCESS) -> list[str]:
    return [
        "Traceback (most recent call last):",
        f'  File "{IN_PROCESS}", line 389, in <module>',
        "    main()",
        f'  File "{file}", line 311, in {function}',
        "    return backend.build_sdist(sdist_directory, config_settings)",
        "           ^^^^^^^^^^^^^^^^^^^",
        error,
    ]


def test_a_missing_mandatory_hook_is_told_from_other_attribute_errors() -> None:
    missing = "AttributeError: module 'b' has no attribute 'build_sdist'"
    assert checks.missing_mandatory_hook("build_sdist", _traceback("build_sdist", missing))
    # Python's suggestion suffix, an object backend.
    suggested = missing + ". Did you mean: '_build_sdist'?"
    assert checks.missing_mandatory_hook("build_sdist", _traceback("build_sdist", suggested))
    on_object = "AttributeError: 'Backend' object has no attribute 'build_sdist'"
    assert checks.missing_mandatory_hook("build_sdist", _traceback("build_sdist", on_object))
    # Raised inside the backend, another hook, another attribute, an optional hook.
    inside = _traceback("build_sdist", missing, file="/src/demo/_backend/b.py")
    assert not checks.missing_mandatory_hook("build_sdist", inside)
    assert not checks.missing_mandatory_hook("build_wheel", _traceback("build_sdist", missing))
    other = "AttributeError: module 'b' has no attribute 'helper'"
    assert not checks.missing_mandatory_hook("build_sdist", _traceback("build_sdist", other))
    optional = "AttributeError: module 'b' has no attribute 'build_editable'"
    assert not checks.missing_mandatory_hook(
        "build_editable", _traceback("build_editable", optional)
    )
    assert not checks.missing_mandatory_hook("build_sdist", [])
