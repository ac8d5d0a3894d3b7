"""buf: the contract is lint-clean and no version of it ever broke v1; both checks can fail."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

from support.node import ROOT, buf_executable

CONTRACT = ROOT / "proto" / "buildd" / "v1" / "buildd.proto"


def _check_proto() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_proto", ROOT / "tools" / "check_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def buf() -> str:
    return buf_executable()


def _module(tmp_path: Path, text: str) -> Path:
    module = tmp_path / "module"
    (module / "buildd" / "v1").mkdir(parents=True)
    (module / "buildd" / "v1" / "buildd.proto").write_text(text, encoding="utf-8")
    shutil.copy(ROOT / "proto" / "buf.yaml", module / "buf.yaml")
    return module


def test_lint_and_history_are_clean(buf: str) -> None:
    check = _check_proto()
    check.lint(buf)
    assert check.check_history(buf) >= 2


def test_lint_requires_a_comment_on_every_element(buf: str, tmp_path: Path) -> None:
    check = _check_proto()
    text = CONTRACT.read_text(encoding="utf-8") + "\nmessage Undocumented {\n  int32 x = 1;\n}\n"
    with pytest.raises(check.CheckFailed, match="Undocumented"):
        check.lint(buf, _module(tmp_path, text))


def test_lint_waivers_cover_only_the_named_v1_rpcs(buf: str, tmp_path: Path) -> None:
    """A new RPC streaming the shared Event is refused: the waiver names the old ones."""
    check = _check_proto()
    text = CONTRACT.read_text(encoding="utf-8").replace(
        "service Buildd {",
        "service Buildd {\n  // A new long call.\n"
        "  rpc Lint(GetStatusRequest) returns (stream Event);",
    )
    with pytest.raises(check.CheckFailed, match='RPC response type "Event"'):
        check.lint(buf, _module(tmp_path, text))


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ("  int32 count = 7;\n", "", 'field "7" with name "count"'),
        ("  string key_id = 4;\n", "  int64 key_id = 4;\n", "changed type"),
        ('option go_package = "', 'option go_package = "x/', "go_package"),
    ],
    ids=["field-removed", "type-changed", "language-option-changed"],
)
def test_breaking_changes_are_caught(
    buf: str, tmp_path: Path, old: str, new: str, words: str
) -> None:
    check = _check_proto()
    text = CONTRACT.read_text(encoding="utf-8")
    assert old in text
    changed = _module(tmp_path / "new", text.replace(old, new, 1))
    before = _module(tmp_path / "old", text)
    check.breaking(buf, before, before, label="unchanged")
    with pytest.raises(check.CheckFailed, match=words):
        check.breaking(buf, changed, before, label="changed")
