"""Lint the wire contract and check that no version of it ever broke v1.

Usage: ``python tools/check_proto.py [--buf PATH] [--lint-only]`` (the buf CLI
comes from ``npm ci --prefix tools/buf``; .ci/run does that).

1. ``buf lint`` of ``proto/`` with ``proto/buf.yaml`` (STANDARD and COMMENTS).
2. ``buf breaking`` (category FILE) for every *version* of ``proto/``: each
   commit on the first-parent history of HEAD that changed ``proto/`` is
   checked against the commit before it, and uncommitted changes are checked
   against HEAD. So the check means the same on every commit and in any clone
   with history: nothing on the line of commits being built ever broke the
   v1 contract, whether CI ran on the commit that did it or only later on a
   descendant. A shallow clone lacks that history: it is deepened from its
   ``origin``, and when that fails the check fails, saying so.

The language options (java_package, go_package, ...) first appeared in one
commit; against versions older than that the FILE_SAME_<option> rules are
skipped, because setting an option that was unset is what adding them is.
Every later change of an option is a break.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = "proto"
CONTRACT = "buildd/v1/buildd.proto"
# Rules that compare a file option between two versions.
_OPTION_RULES = (
    "FILE_SAME_CSHARP_NAMESPACE",
    "FILE_SAME_GO_PACKAGE",
    "FILE_SAME_JAVA_MULTIPLE_FILES",
    "FILE_SAME_JAVA_OUTER_CLASSNAME",
    "FILE_SAME_JAVA_PACKAGE",
    "FILE_SAME_OBJC_CLASS_PREFIX",
    "FILE_SAME_PHP_NAMESPACE",
    "FILE_SAME_RUBY_PACKAGE",
    "FILE_SAME_SWIFT_PREFIX",
)


class CheckFailed(Exception):
    """A check failed; the message says which and why."""


def default_buf() -> str:
    local = ROOT / "tools" / "buf" / "node_modules" / ".bin" / "buf"
    return str(local) if local.exists() else (shutil.which("buf") or str(local))


def _git(*args: str, check: bool = True) -> str:
    proc = subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        raise CheckFailed(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _buf(buf: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    if not Path(buf).exists() and shutil.which(buf) is None:
        raise CheckFailed(
            f"buf not found at {buf}: run `npm ci --prefix tools/buf` (as .ci/run does)"
        )
    return subprocess.run([buf, *args], cwd=cwd, capture_output=True, text=True, check=False)


def lint(buf: str, module: Path = ROOT / PROTO) -> None:
    proc = _buf(buf, "lint", cwd=module)
    if proc.returncode != 0:
        raise CheckFailed(f"buf lint of {module}:\n{proc.stdout}{proc.stderr}")


def breaking(buf: str, new: Path, old: Path, *, label: str) -> None:
    """``buf breaking`` of the module ``new`` against the module ``old``."""
    config = (ROOT / PROTO / "buf.yaml").read_text(encoding="utf-8")
    old_text = (old / CONTRACT).read_text(encoding="utf-8") if (old / CONTRACT).exists() else ""
    if "option java_package" not in old_text:
        # Before the language options existed: setting them is no break.
        config = config.replace(
            "  use:\n    - FILE\n",
            "  use:\n    - FILE\n  except:\n" + "".join(f"    - {r}\n" for r in _OPTION_RULES),
        )
    if not old_text:
        return  # nothing to break: the contract did not exist yet
    proc = _buf(buf, "breaking", str(new), "--against", str(old), "--config", config, cwd=new)
    if proc.returncode != 0:
        raise CheckFailed(f"buf breaking, {label}:\n{proc.stdout}{proc.stderr}")


def _export(commit: str, dest: Path) -> Path:
    """``proto/buildd/v1/buildd.proto`` as of ``commit``, alone in a module folder."""
    text = _git("show", f"{commit}:{PROTO}/{CONTRACT}", check=False)
    target = dest / CONTRACT
    target.parent.mkdir(parents=True, exist_ok=True)
    if text:
        target.write_text(text + "\n", encoding="utf-8")
    (dest / "buf.yaml").write_text("version: v2\n", encoding="utf-8")
    return dest


def _ensure_history() -> None:
    if _git("rev-parse", "--is-shallow-repository", check=False) != "true":
        return
    proc = subprocess.run(
        ["git", "-C", str(ROOT), "fetch", "--quiet", "--unshallow", "origin"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise CheckFailed(
            "this clone is shallow and could not be deepened from origin "
            f"({proc.stderr.strip()}); buf breaking needs the history of proto/: "
            "clone with full history (e.g. fetch-depth: 0)"
        )


def versions() -> list[tuple[str, str]]:
    """(commit, its first parent) for each first-parent commit that changed proto/."""
    _ensure_history()
    log = _git("log", "--first-parent", "--format=%H %P", "HEAD", "--", f"{PROTO}/{CONTRACT}")
    pairs = []
    for line in log.splitlines():
        commit, *parents = line.split()
        if parents:
            pairs.append((commit, parents[0]))
    return pairs


def check_history(buf: str) -> int:
    """Check every version against the one before it; returns how many were checked."""
    checked = 0
    with tempfile.TemporaryDirectory(prefix="buildd-proto-") as work:
        base = Path(work)
        if _git("status", "--porcelain", "--", f"{PROTO}/{CONTRACT}", check=False):
            old = _export("HEAD", base / "HEAD")
            breaking(buf, ROOT / PROTO, old, label="uncommitted changes against HEAD")
            checked += 1
        for commit, parent in versions():
            new = _export(commit, base / commit)
            old = _export(parent, base / parent)
            breaking(buf, new, old, label=f"commit {commit[:12]} against {parent[:12]}")
            checked += 1
    return checked


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buf", default=default_buf(), help="the buf executable")
    parser.add_argument("--lint-only", action="store_true", help="skip buf breaking")
    args = parser.parse_args()
    try:
        lint(args.buf)
        print("buf lint: clean")
        if not args.lint_only:
            count = check_history(args.buf)
            print(f"buf breaking: {count} versions of {PROTO}/{CONTRACT} checked, none breaks v1")
    except CheckFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("BUF_CACHE_DIR", str(Path(tempfile.gettempdir()) / "buildd-buf-cache"))
    sys.exit(main())
