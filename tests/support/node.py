"""The Node.js parts of the test suite: the TypeScript example and the buf CLI.

``.ci/run`` installs their npm packages (``npm ci`` in examples/typescript and
tools/buf); tests install nothing from the network. Without ``node`` they are
skipped; with ``node`` but without the packages they try ``npm ci --offline``
(npm's cache, as a previous ``npm ci`` left it) and fail, saying what to run.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "typescript"
BUF_TOOL = ROOT / "tools" / "buf"


def require_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the Node.js checks of the contract need Node.js 18+")
    return node


def npm_packages(folder: Path) -> Path:
    """``folder/node_modules``, installed from npm's local cache when missing."""
    require_node()
    modules = folder / "node_modules"
    if modules.is_dir():
        return modules
    npm = shutil.which("npm")
    proc = (
        subprocess.run(
            [npm, "ci", "--offline", "--no-audit", "--no-fund"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if npm
        else None
    )
    if proc is None or proc.returncode != 0:
        pytest.fail(
            f"{modules} is missing: run `npm ci --prefix {folder.relative_to(ROOT)}` "
            "(as .ci/run does) before the tests"
            + (f"\nnpm ci --offline said:\n{proc.stderr[-2000:]}" if proc else "")
        )
    return modules


def build_example() -> Path:
    """Generate the types and compile the example (tsc --strict); returns its dist/."""
    npm_packages(EXAMPLE)
    npm = shutil.which("npm")
    assert npm is not None
    proc = subprocess.run(
        [npm, "run", "build"], cwd=EXAMPLE, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, f"npm run build failed:\n{proc.stdout}\n{proc.stderr}"
    return EXAMPLE / "dist"


def buf_executable() -> str:
    npm_packages(BUF_TOOL)
    return str(BUF_TOOL / "node_modules" / ".bin" / "buf")
