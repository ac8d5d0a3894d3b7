"""The runner's comparisons, on wheels made here: each one must catch what it claims to."""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import zipfile
from pathlib import Path

import pytest

from compat import compare, corpus, frontends

METADATA = (
    b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\nSummary: a demo\n"
    b"Requires-Dist: packaging\nRequires-Dist: tomli; python_version < '3.11'\n\nLong text.\n"
)
WHEEL = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
ELF = b"\x7fELF" + b"\x00" * 60
INIT = b"VERSION = '1.0'\n"


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(
    folder: Path,
    files: dict[str, bytes] | None = None,
    *,
    filename: str = "demo-1.0-py3-none-any.whl",
    record: str | None = None,
) -> Path:
    """A wheel of ``files`` (plus METADATA and WHEEL unless given) with a correct RECORD."""
    members = {
        "demo/__init__.py": INIT,
        "demo-1.0.dist-info/METADATA": METADATA,
        "demo-1.0.dist-info/WHEEL": WHEEL,
    }
    members.update(files or {})
    if record is None:
        rows = [f"{name},sha256={_digest(data)},{len(data)}" for name, data in members.items()]
        record = "\n".join([*rows, "demo-1.0.dist-info/RECORD,,"]) + "\n"
    members["demo-1.0.dist-info/RECORD"] = record.encode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_equal_wheels_have_no_differences(tmp_path: Path) -> None:
    left = make_wheel(tmp_path / "a")
    right = make_wheel(tmp_path / "b")
    assert compare.compare_wheels(left, right) == []
    assert compare.record_problems(left) == []


def test_a_changed_python_file_is_a_difference(tmp_path: Path) -> None:
    left = make_wheel(tmp_path / "a", {"demo/__init__.py": b"VERSION = '1.1'\n"})
    right = make_wheel(tmp_path / "b")
    [problem] = compare.compare_wheels(left, right)
    assert problem.startswith("demo/__init__.py: content differs")


def test_a_changed_compiled_file_is_not_a_difference(tmp_path: Path) -> None:
    name = "demo/_speedups.cpython-311-x86_64-linux-gnu.so"
    left = make_wheel(tmp_path / "a", {name: ELF + b"one"})
    right = make_wheel(tmp_path / "b", {name: ELF + b"two"})
    assert compare.compare_wheels(left, right) == []


def test_an_executable_without_suffix_is_compiled_by_its_header() -> None:
    assert compare.is_compiled("demo-1.0.data/scripts/tool", ELF)
    assert not compare.is_compiled("demo-1.0.data/scripts/tool", b"#!python\n")


def test_missing_and_extra_members_are_differences(tmp_path: Path) -> None:
    left = make_wheel(tmp_path / "a", {"demo/extra.py": b""})
    right = make_wheel(tmp_path / "b", {"demo/other.py": b""})
    problems = compare.compare_wheels(left, right)
    assert "buildd wheel lacks ['demo/other.py']" in problems
    assert "buildd wheel has extra ['demo/extra.py']" in problems


def test_different_tags_are_a_difference(tmp_path: Path) -> None:
    wheel = WHEEL.replace(b"py3-none-any", b"cp311-cp311-linux_x86_64")
    left = make_wheel(
        tmp_path / "a",
        {"demo-1.0.dist-info/WHEEL": wheel},
        filename="demo-1.0-cp311-cp311-linux_x86_64.whl",
    )
    right = make_wheel(tmp_path / "b")
    problems = compare.compare_wheels(left, right)
    assert any(p.startswith("file name demo-1.0-cp311") for p in problems)
    assert any(p.startswith("demo-1.0.dist-info/WHEEL: headers differ") for p in problems)


def test_metadata_headers_are_compared_in_order() -> None:
    swapped = METADATA.replace(
        b"Requires-Dist: packaging\nRequires-Dist: tomli; python_version < '3.11'\n",
        b"Requires-Dist: tomli; python_version < '3.11'\nRequires-Dist: packaging\n",
    )
    assert compare.metadata_differences(METADATA, swapped, "a", "b") == [
        "headers differ (same headers in a different order)"
    ]


def test_metadata_line_endings_and_header_case_are_normalised() -> None:
    other = METADATA.replace(b"\n", b"\r\n").replace(b"Summary:", b"summary:")
    assert compare.metadata_differences(METADATA, other, "a", "b") == []


def test_metadata_values_and_bodies_are_compared() -> None:
    other = METADATA.replace(b"Version: 1.0", b"Version: 1.0.post1").replace(b"Long", b"Short")
    problems = compare.metadata_differences(METADATA, other, "a", "b")
    assert problems[0] == "headers differ (only in a: version: 1.0 | only in b: version: 1.0.post1)"
    assert problems[1].startswith("bodies differ")


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (
            "demo/__init__.py,sha256=AAAA,16\n",
            "RECORD hash of 'demo/__init__.py' is wrong",
        ),
        (
            f"demo/__init__.py,sha256={_digest(INIT)},15\n",
            "RECORD size of 'demo/__init__.py' is '15', the file has 16 bytes",
        ),
        ("demo/__init__.py,md5=AAAA,16\n", "RECORD row of 'demo/__init__.py' has hash 'md5=AAAA'"),
        ("demo/gone.py,sha256=AAAA,1\n", "RECORD lists 'demo/gone.py', which the wheel lacks"),
    ],
)
def test_record_errors_are_found(tmp_path: Path, record: str, expected: str) -> None:
    wheel = make_wheel(tmp_path, record=record + "demo-1.0.dist-info/RECORD,,\n")
    problems = compare.record_problems(wheel)
    assert expected in problems
    # The members the bad RECORD leaves out are reported too.
    assert any(p.startswith("not in RECORD: ") for p in problems)


def test_record_own_row_must_be_empty(tmp_path: Path) -> None:
    members = {
        "demo/__init__.py": INIT,
        "demo-1.0.dist-info/METADATA": METADATA,
        "demo-1.0.dist-info/WHEEL": WHEEL,
    }
    rows = [f"{name},sha256={_digest(data)},{len(data)}" for name, data in members.items()]
    record = "\n".join([*rows, "demo-1.0.dist-info/RECORD,sha256=AAAA,10"]) + "\n"
    wheel = make_wheel(tmp_path, record=record)
    assert compare.record_problems(wheel) == ["RECORD's own row must have no hash and no size"]


def test_filename_tags_must_match_wheel_tags(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, filename="demo-1.0-py2.py3-none-any.whl")
    [problem] = compare.record_problems(wheel)
    assert problem.startswith("filename tags ['py2-none-any', 'py3-none-any'] are not WHEEL's")


def test_the_corpus_covers_the_issue(tmp_path: Path) -> None:
    projects = corpus.load_corpus()
    assert len(projects) >= 10
    backends = {p.backend.split()[0].rstrip(",") for p in projects}
    assert {
        "setuptools",
        "hatchling",
        "flit_core",
        "pdm-backend",
        "poetry-core",
        "scikit-build-core",
        "meson-python",
        "maturin",
    } <= backends
    assert any("legacy" in p.backend for p in projects)
    assert any("C extension" in p.backend for p in projects)
    assert any("backend-path" in p.backend for p in projects)
    assert any("hatch-vcs" in p.backend for p in projects)
    editable = {p.backend.split()[0].rstrip(",") for p in projects if p.editable}
    assert {"setuptools", "hatchling", "flit_core"} <= editable
    assert 2 <= sum(p.fast for p in projects) <= 3
    # Added for the interpreters side by side: a Cython extension, a backend that
    # needs config settings to build here, setuptools-scm.
    assert any("Cython extension" in p.backend for p in projects)
    assert any(p.config_settings and p.note.startswith("Needs a config setting") for p in projects)
    assert any("setuptools-scm" in p.backend for p in projects)
    assert {"3.10", "3.11", "3.13"} <= set(corpus.load_interpreters())


def test_the_corpus_rejects_unknown_fields(tmp_path: Path) -> None:
    corpus_file = tmp_path / "corpus.toml"
    corpus_file.write_text(
        '[[project]]\nname = "x"\nversion = "1"\nsha256 = "' + "0" * 64 + '"\n'
        'backend = "b"\neditble = true\n'
    )
    with pytest.raises(ValueError, match="unknown field"):
        corpus.load_corpus(corpus_file)


def test_a_cached_sdist_with_the_wrong_hash_is_not_used(tmp_path: Path) -> None:
    [project] = [p for p in corpus.load_corpus() if p.name == "tomli"]
    folder = tmp_path / "sdists"
    folder.mkdir()
    (folder / f"tomli-{project.version}.tar.gz").write_bytes(b"not the sdist")
    # No index answers at this address: the function must try to download.
    with pytest.raises(OSError):
        corpus.fetch_sdist(project, tmp_path, "http://127.0.0.1:9/simple")


def _sbom(serial: str, timestamp: str, tree: str, version: str = "3.13.0") -> bytes:
    document = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{serial}",
        "metadata": {
            "timestamp": timestamp,
            "component": {"bom-ref": f"path+file://{tree}#orjson@{version}", "version": version},
        },
    }
    return json.dumps(document).encode()


def test_sbom_serial_time_and_tree_path_are_normalised(tmp_path: Path) -> None:
    name = "demo-1.0.dist-info/sboms/demo.cyclonedx.json"
    left = make_wheel(tmp_path / "a", {name: _sbom("1111", "2026-01-01T00:00:00Z", "/tmp/a/x")})
    right = make_wheel(tmp_path / "b", {name: _sbom("2222", "2026-01-02T00:00:00Z", "/w/y-1.0")})
    assert compare.compare_wheels(left, right) == []


def test_sbom_content_still_counts(tmp_path: Path) -> None:
    name = "demo-1.0.dist-info/sboms/demo.cyclonedx.json"
    left = make_wheel(tmp_path / "a", {name: _sbom("1", "t", "/a", version="3.13.0")})
    right = make_wheel(tmp_path / "b", {name: _sbom("1", "t", "/a", version="3.13.1")})
    [problem] = compare.compare_wheels(left, right)
    assert problem.startswith(f"{name}: content differs")


def _no_index() -> frontends.IndexOptions:
    return frontends.IndexOptions(index_url=None, no_index=True)


def test_editable_check_accepts_a_module_from_the_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "demo").mkdir(parents=True)
    (tree / "demo" / "__init__.py").write_text("")
    wheel = _editable_only(tmp_path, tree)
    found = frontends.check_import(
        Path(sys.executable), wheel, "demo", tree, tmp_path / "w", _no_index(), tmp_path / "log"
    )
    assert found == (tree / "demo" / "__init__.py").resolve()


def _editable_only(tmp_path: Path, tree: Path) -> Path:
    """A wheel holding only a .pth that puts ``tree`` on sys.path (and its metadata)."""
    members = {
        "demo.pth": f"{tree}\n".encode(),
        "demo-1.0.dist-info/METADATA": METADATA,
        "demo-1.0.dist-info/WHEEL": WHEEL,
    }
    rows = [f"{name},sha256={_digest(data)},{len(data)}" for name, data in members.items()]
    record = "\n".join([*rows, "demo-1.0.dist-info/RECORD,,"]) + "\n"
    folder = tmp_path / "editable-only"
    folder.mkdir()
    path = folder / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        archive.writestr("demo-1.0.dist-info/RECORD", record)
    assert compare.record_problems(path) == []
    return path


def test_editable_check_rejects_a_regular_wheel(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "demo").mkdir(parents=True)
    (tree / "demo" / "__init__.py").write_text("")
    regular = make_wheel(tmp_path / "dist")
    with pytest.raises(frontends.StepError, match="outside the source tree"):
        frontends.check_import(
            Path(sys.executable),
            regular,
            "demo",
            tree,
            tmp_path / "w",
            _no_index(),
            tmp_path / "log",
        )


def test_metadata_json_key_order_alone_is_no_difference() -> None:
    ours = json.dumps({"name": "a", "version": "1", "classifiers": ["x"]}, indent=2) + "\n"
    theirs = json.dumps({"classifiers": ["x"], "version": "1", "name": "a"}, indent=2) + "\n"
    assert compare.metadata_json_differences(ours, theirs) == []


@pytest.mark.parametrize(
    ("ours", "expected"),
    [
        ({"name": "a", "version": "1", "classifier": ["x"]}, "'classifier' extra"),
        ({"name": "a", "version": "1"}, "'classifiers' missing"),
        ({"name": "a", "version": "2", "classifiers": ["x"]}, "'version' is '2'"),
        ({"name": "a", "version": "1", "classifiers": "x"}, "'classifiers' is 'x'"),
    ],
)
def test_metadata_json_differences_are_found(ours: dict[str, object], expected: str) -> None:
    theirs = json.dumps({"name": "a", "version": "1", "classifiers": ["x"]}, indent=2) + "\n"
    problems = compare.metadata_json_differences(json.dumps(ours, indent=2) + "\n", theirs)
    assert any(p.startswith(expected) for p in problems), problems


def test_metadata_json_formatting_counts() -> None:
    data = {"name": "café", "version": "1"}
    theirs = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    assert compare.metadata_json_differences(json.dumps(data, indent=2) + "\n", theirs) == [
        "the same object, printed differently (indent, escapes or newline)"
    ]
    assert compare.metadata_json_differences(json.dumps(data, ensure_ascii=False), theirs) != []


def _sdist_requiring(folder: Path, spec: str | None) -> Path:
    import io
    import tarfile

    path = folder / "demo-1.0.tar.gz"
    pkg_info = "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n"
    if spec is not None:
        pkg_info += f"Requires-Python: {spec}\n"
    with tarfile.open(path, "w:gz") as tar:
        data = pkg_info.encode()
        info = tarfile.TarInfo("demo-1.0/PKG-INFO")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    ("spec", "version", "expected"),
    [
        (">=3.11", "3.10.13", "Requires-Python >=3.11 excludes Python 3.10.13"),
        (">=3.11", "3.13.0", ""),
        ("<3.13,>=3.9", "3.13.0", "Requires-Python <3.13,>=3.9 excludes Python 3.13.0"),
        (None, "3.10.13", ""),
    ],
)
def test_a_project_is_skipped_where_requires_python_excludes_it(
    tmp_path: Path, spec: str | None, version: str, expected: str
) -> None:
    from packaging.version import Version

    from compat.check import skip_reason
    from compat.interpreters import Interpreter

    python = Path(sys.executable)
    interpreter = Interpreter(version[:4].rstrip("."), python, Version(version), python)
    assert skip_reason(_sdist_requiring(tmp_path, spec), interpreter) == expected


def _numpy_config(python: str, dep: str, blas: str = "False") -> bytes:
    return (
        '"lapack": {\n    "name": "' + dep + '",\n    "found": bool("' + blas + '".lower()),\n},\n'
        '"Python Information": {\n    "path": r"' + python + '",\n    "version": "3.10",\n},\n'
    ).encode()


def test_numpy_config_environment_path_and_object_ids_are_normalised(tmp_path: Path) -> None:
    name = "demo/__config__.py"
    left = make_wheel(tmp_path / "a", {name: _numpy_config("/tmp/build-env-x/bin/python", "dep1")})
    right = make_wheel(
        tmp_path / "b", {name: _numpy_config("/s/envs/f814c99271b9/bin/python", "dep2")}
    )
    assert compare.compare_wheels(left, right) == []


def test_numpy_config_content_still_counts(tmp_path: Path) -> None:
    name = "demo/__config__.py"
    left = make_wheel(tmp_path / "a", {name: _numpy_config("/a/bin/python", "dep1", "True")})
    right = make_wheel(tmp_path / "b", {name: _numpy_config("/b/bin/python", "dep2", "False")})
    [problem] = compare.compare_wheels(left, right)
    assert problem.startswith(f"{name}: content differs")
