"""Warnings about pyproject.toml: near misses and unknown [build-system] keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

from buildd_server import errors
from buildd_server.sources.lint import near_miss, pyproject_warnings
from buildd_server.sources.sources import load_project

WHERE = "/src/demo/pyproject.toml"


def warnings_of(text: str) -> list[tuple[str, str, str]]:
    return [(w.kind, w.field, w.suggestion) for w in pyproject_warnings(tomllib.loads(text), WHERE)]


@pytest.mark.parametrize("table", ["build_sytem", "build_system", "buildsystem", "build-sytem"])
def test_misspelt_build_system_tables(table: str) -> None:
    assert warnings_of(f"[{table}]\nrequires = []\n") == [("near_miss", table, "build-system")]


def test_other_near_misses_of_top_level_tables() -> None:
    assert warnings_of("[projet]\nname = 'x'\n[tools.x]\n") == [
        ("near_miss", "projet", "project"),
        ("near_miss", "tools", "tool"),
    ]


def test_known_or_unrelated_tables_are_quiet() -> None:
    text = "[build-system]\nrequires = []\n[project]\n[tool.x]\n[dependency-groups]\n[zzz]\n"
    assert warnings_of(text) == []


def test_a_near_miss_beside_the_real_table_is_quiet() -> None:
    # Both spelt: the real one is used; pypa/build says nothing either.
    assert warnings_of("[build-system]\nrequires = []\n[build_system]\n") == []


def test_unknown_build_system_keys() -> None:
    text = "[build-system]\nrequires = []\nbuild_backend = 'x'\nfrobnicate = 1\n"
    assert warnings_of(text) == [
        ("near_miss", "build-system.build_backend", "build-system.build-backend"),
        ("unknown_key", "build-system.frobnicate", ""),
    ]
    # With the real key present, the near miss is just an unknown key.
    text = "[build-system]\nrequires = []\nbuild-backend = 'x'\nbuild_backend = 'y'\n"
    assert warnings_of(text) == [("unknown_key", "build-system.build_backend", "")]


def test_messages_name_the_file_and_the_fix() -> None:
    [warning] = pyproject_warnings({"build_sytem": {}}, WHERE)
    assert warning.message == (
        f"Found 'build_sytem' in {WHERE}, did you mean 'build-system'? It is ignored"
    )
    assert warning.path == WHERE


def test_near_miss_takes_the_closest_name() -> None:
    assert near_miss("requirs", ("requires", "build-backend", "backend-path")) == "requires"
    assert near_miss("requires", ("requires",)) is None
    assert near_miss("x", ("requires",)) is None


def test_the_project_carries_its_warnings(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[build_sytem]\nrequires = []\n")
    project = load_project(str(tmp_path))
    assert [w.field for w in project.warnings] == ["build_sytem"]
    # The default backend, as PEP 517 says for a project without [build-system].
    assert project.backend == "setuptools.build_meta:__legacy__"


def test_a_missing_requires_error_names_its_near_miss(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[build-system]\nrequirs = []\n")
    with pytest.raises(errors.InvalidProject) as failure:
        load_project(str(tmp_path))
    assert failure.value.message.endswith(
        "build-system.requires: missing (required when [build-system] is present); "
        "found 'build-system.requirs', did you mean 'build-system.requires'?"
    )
