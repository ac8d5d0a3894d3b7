"""Unit tests of buildd_server.environments.keys: requirement normalisation, the key."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
from packaging.markers import default_environment

from buildd_server.config import InstallerOptions
from buildd_server.environments.interpreters import Interpreter
from buildd_server.environments.keys import EnvKey, make_key, normalize_requirements
from buildd_server.errors import InvalidProject

ORIGIN = "/p/pyproject.toml: build-system.requires"


def markers_for(version: str) -> dict[str, str]:
    """A marker environment of a CPython ``version`` on this machine."""
    env = {name: str(value) for name, value in default_environment().items()}
    env["python_full_version"] = version
    env["python_version"] = ".".join(version.split(".")[:2])
    return env


PY310 = markers_for("3.10.13")
PY312 = markers_for("3.12.1")


def norm(*reqs: str, markers: dict[str, str] = PY312) -> tuple[str, ...]:
    return normalize_requirements(reqs, markers, origin=ORIGIN)


def interpreter(version: str = "3.12.1") -> Interpreter:
    return Interpreter(
        executable=f"/opt/python{version}/bin/python3",
        implementation="cpython",
        version=version,
        platform="linux-x86_64",
        markers=tuple(sorted(markers_for(version).items())),
    )


@pytest.mark.parametrize(
    "spelling",
    [
        "setuptools>=40.8",
        "Setuptools >= 40.8",
        "SETUPTOOLS>=40.8.0 ; python_version>'3'",
        "setuptools (>=40.8.0.0)",
        "setuptools>=40.8,>=40.8.0",
        "set_up.tools>=40.8",
    ],
)
def test_spelling_variants_normalise_equal(spelling: str) -> None:
    expected = "set-up-tools>=40.8" if "set_up" in spelling else "setuptools>=40.8"
    assert norm(spelling) == (expected,)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Foo[B_ar,a]", "foo[a,b-ar]"),
        ("foo[b,a,A]>=1", "foo[a,b]>=1"),
        ("foo <2.0 , >=1.0", "foo<2,>=1"),
        ("foo==1.0-alpha1", "foo==1a1"),
        ("foo==1.0+Local", "foo==1+local"),
        ("foo!=1.0.*", "foo!=1.0.*"),
        ("foo==1.*", "foo==1.*"),
        ("foo===1.0-weird", "foo===1.0-weird"),
        (
            "Foo[X] @ https://example.org/Foo-1.0.tar.gz ; python_version >= '3.12'",
            "foo[x] @ https://example.org/Foo-1.0.tar.gz",
        ),
    ],
)
def test_canonical_form(given: str, expected: str) -> None:
    assert norm(given) == (expected,)


def test_compatible_release_keeps_its_components() -> None:
    # ~=1.4 allows 1.9, ~=1.4.0 does not: they must not share a key.
    assert norm("foo~=1.4") == ("foo~=1.4",)
    assert norm("foo~=1.4.0") == ("foo~=1.4.0",)
    assert norm("foo==1.0.*") != norm("foo==1.*")


def test_unique_and_sorted() -> None:
    assert norm("wheel", "Cython>=3", "setuptools", "wheel", "cython >= 3.0") == (
        "cython>=3",
        "setuptools",
        "wheel",
    )
    assert norm() == ()


def test_markers_evaluated_for_the_interpreter() -> None:
    tomli = 'tomli>=1.1 ; python_version < "3.11"'
    assert norm("setuptools", tomli, markers=PY310) == ("setuptools", "tomli>=1.1")
    assert norm("setuptools", tomli, markers=PY312) == ("setuptools",)
    assert norm('x; python_full_version >= "3.12.1"', markers=PY312) == ("x",)
    assert norm('x; python_full_version >= "3.12.1"', markers=PY310) == ()
    other_platform = {**PY312, "sys_platform": "win32"}
    assert norm("a; sys_platform == 'win32'", markers=other_platform) == ("a",)
    assert norm("a; sys_platform == 'win32'", markers={**PY312, "sys_platform": "linux"}) == ()


def test_extra_markers_are_false_without_crashing() -> None:
    # flit_core's dynamic requirements carry `extra ==` markers.
    assert norm('pytest; extra == "test"', 'docs ; extra == "Docs"') == ()
    assert norm('pkg; extra != "test"') == ("pkg",)
    assert norm('pkg; extra == "test" or python_version >= "3"') == ("pkg",)


@pytest.mark.parametrize(
    "text", ["foo>>1", "", "foo bar", "foo; python_version ~= 'abc'", "foo[", "foo ; bad_marker"]
)
def test_invalid_requirement_names_origin(text: str) -> None:
    with pytest.raises(InvalidProject) as caught:
        normalize_requirements(["ok", text], PY312, origin=ORIGIN, path="/p/pyproject.toml")
    assert caught.value.message.startswith(ORIGIN + ": ")
    assert repr(text) in caught.value.message
    assert caught.value.path == "/p/pyproject.toml"


def key(**changes: object) -> EnvKey:
    base = EnvKey(
        interpreter=("/usr/bin/python3.12", "cpython", "3.12.1", "linux-x86_64"),
        requirements=("setuptools>=40.8", "wheel"),
        installer="uv",
        installer_options=InstallerOptions().as_key_part(),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_id_is_16_hex_and_depends_on_every_field() -> None:
    ids = {
        key().id,
        key(interpreter=("/usr/bin/python3.12", "cpython", "3.12.2", "linux-x86_64")).id,
        key(requirements=("setuptools>=40.8",)).id,
        key(installer="pip").id,
        key(installer_options=InstallerOptions(no_index=True).as_key_part()).id,
        key(isolation="other").id,
    }
    assert len(ids) == 6
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    assert key().id == key().id
    assert key() == key() and hash(key()) == hash(key())


def test_id_is_stable_across_processes() -> None:
    code = (
        "from buildd_server.environments.keys import EnvKey; "
        "print(EnvKey(('/usr/bin/python3.12', 'cpython', '3.12.1', 'linux-x86_64'), "
        "('setuptools>=40.8', 'wheel'), 'uv', "
        "(('index_url', ''), ('extra_index_urls', ''), ('find_links', ''), ('no_index', '0'))).id)"
    )
    ids = set()
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        ids.add(out.stdout.strip())
    assert ids == {key().id}


def test_with_requirements_unions_and_sorts() -> None:
    start = key(requirements=("setuptools>=40.8",))
    grown = start.with_requirements(["wheel", "cython>=3", "setuptools>=40.8"])
    assert grown.requirements == ("cython>=3", "setuptools>=40.8", "wheel")
    assert start.requirements == ("setuptools>=40.8",)
    assert grown.id != start.id
    assert dataclasses.replace(grown, requirements=start.requirements) == start
    assert start.with_requirements([]) == start


def test_make_key() -> None:
    options = InstallerOptions(index_url="https://idx.example/simple")
    made = make_key(
        interpreter("3.10.13"),
        ["Setuptools >= 40.8", 'tomli; python_version < "3.11"'],
        "pip",
        options,
        origin=ORIGIN,
    )
    assert made.interpreter == interpreter("3.10.13").identity()
    assert made.requirements == ("setuptools>=40.8", "tomli")
    assert made.installer == "pip"
    assert made.installer_options == options.as_key_part()
    assert made.isolation == "isolated"
    on_312 = make_key(interpreter(), ['tomli; python_version < "3.11"'], "pip", options, origin="o")
    assert on_312.requirements == ()


def test_make_key_spelling_does_not_split() -> None:
    a = make_key(interpreter(), ["setuptools>=40.8", "wheel"], "uv", InstallerOptions(), origin="a")
    b = make_key(
        interpreter(), ["Wheel", "SETUPTOOLS>=40.8.0"], "uv", InstallerOptions(), origin="b"
    )
    assert a == b and a.id == b.id


def test_make_key_rejects_unresolved_installer() -> None:
    with pytest.raises(ValueError, match="'auto'"):
        make_key(interpreter(), [], "auto", InstallerOptions(), origin=ORIGIN)
