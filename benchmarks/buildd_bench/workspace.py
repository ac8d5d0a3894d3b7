"""The harness's private folder under /tmp: the daemon's socket and state, trees, outputs."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from .projects import Project
from .settings import log


class Workspace:
    """A private folder under /tmp: the daemon's socket and state, work trees, outputs."""

    def __init__(self, pristine: Mapping[str, Path], keep: bool) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="buildd-bench-", dir="/tmp"))
        self.pristine = dict(pristine)
        self.keep = keep
        self._outputs = 0
        for name in ("work", "out", "logs"):
            (self.root / name).mkdir()

    def tree(self, project: Project, copy: str = "") -> Path:
        """The work tree of ``project`` at a stable path (the daemon keys affinity by it)."""
        return self.root / "work" / (copy or "main") / project.id

    def fresh_tree(self, project: Project, copy: str = "") -> Path:
        """Put back a pristine copy of the sdist tree: no build/, no *.egg-info, no objects.

        Every tool starts from exactly what the sdist holds, so no tool can
        reuse another's (or its own earlier) in-tree build output.
        """
        path = self.tree(project, copy)
        if path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self.pristine[project.id], path, symlinks=True)
        return path

    def fresh_outdir(self) -> Path:
        self._outputs += 1
        path = self.root / "out" / f"{self._outputs:05d}"
        path.mkdir()
        return path

    def log_file(self, name: str) -> Path:
        return self.root / "logs" / name

    def cleanup(self) -> None:
        if self.keep:
            log(f"kept {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def workspace(pristine: Mapping[str, Path], keep: bool) -> Iterator[Workspace]:
    ws = Workspace(pristine, keep)
    try:
        yield ws
    finally:
        ws.cleanup()
