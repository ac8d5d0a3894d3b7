"""The committed generated code must be exactly what tools/gen_proto.py makes from proto/."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _gen_module() -> object:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "tools" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools comes with the dev extra")
    gen = _gen_module()
    fresh = gen.generate(tmp_path)  # type: ignore[attr-defined]
    assert fresh, "nothing generated"
    stale = []
    for path in fresh:
        committed = ROOT / "proto" / path.relative_to(tmp_path)
        if not committed.exists() or committed.read_bytes() != path.read_bytes():
            stale.append(str(committed.relative_to(ROOT)))
    assert stale == [], (
        f"generated code is out of date with proto/: {stale}; run "
        f"`{Path(sys.executable).name} tools/gen_proto.py`"
    )
