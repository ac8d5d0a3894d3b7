"""What every part of the harness shares: paths, the index, the tools' environment, logging."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
HERE = PACKAGE.parent  # benchmarks/
REPO = HERE.parent
CACHE = HERE / ".cache"
PROJECTS_FILE = HERE / "projects.toml"
DEFAULT_OUT = HERE / "results" / "latest.md"
# The script the P4 client processes are started with (``--p4-worker``).
RUN_SCRIPT = HERE / "run.py"

# Every tool resolves build requirements from this index and nothing else.
INDEX_URL = "https://pypi.org/simple"
# A run that takes longer than this is killed and counted as failed.
RUN_TIMEOUT = 900.0


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def tool_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any installer or buildd configuration.

    The machine's pip.conf (extra local indexes, find-links) must not matter:
    PIP_CONFIG_FILE points at /dev/null, every PIP_*/UV_*/BUILDD_* variable
    goes, and each tool is told the index explicitly. The pip version check
    is off so that no tool makes an extra request per run.
    """
    drop = ("PIP_", "UV_", "BUILDD_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX"):
        env.pop(name, None)
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra or {})
    return env


def console_script(name: str) -> str:
    """A console script of this venv (next to sys.executable), else from PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found next to {sys.executable} nor on PATH")
    return found


def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file ("" when it cannot be read)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
