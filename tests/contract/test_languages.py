"""The language options let protoc generate Java and C# where a plugin author expects them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_java_and_csharp_land_in_their_packages(tmp_path: Path) -> None:
    protoc = shutil.which("protoc")
    if protoc is None:
        pytest.skip("protoc is not installed (.ci/run installs Debian's protobuf-compiler)")
    (tmp_path / "java").mkdir()
    (tmp_path / "cs").mkdir()
    proc = subprocess.run(
        [
            protoc,
            f"-I{ROOT / 'proto'}",
            f"--java_out={tmp_path / 'java'}",
            f"--csharp_out={tmp_path / 'cs'}",
            "buildd/v1/buildd.proto",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    java = tmp_path / "java" / "dev" / "buildd" / "v1"
    # java_multiple_files: one file per message, beside the outer class.
    assert (java / "BuilddProto.java").is_file() and (java / "BuildRequest.java").is_file()
    assert "package dev.buildd.v1;" in (java / "BuildRequest.java").read_text()
    csharp = (tmp_path / "cs" / "Buildd.cs").read_text()
    assert "namespace Buildd.V1 {" in csharp
