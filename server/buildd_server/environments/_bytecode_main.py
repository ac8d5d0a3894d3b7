"""Compiles an environment's bytecode; runs in the environment's interpreter.

    python -I _bytecode_main.py SITE_PACKAGES [BACKEND_MODULE]

First, when a backend module is named, it is imported with bytecode writing
on but limited to SITE_PACKAGES: exactly what every hook call of that backend
imports first is compiled, once. Then, at a lower priority, every module of
SITE_PACKAGES that has no up-to-date bytecode yet is compiled. Writes are
atomic (importlib writes a temporary file and renames it), so a hook reading
the environment meanwhile sees either no ``.pyc`` or a whole one.

Must stay valid Python 3.8 and need nothing but the standard library.
"""

from __future__ import annotations

import compileall
import contextlib
import importlib
import os
import sys
from importlib.machinery import SourceFileLoader


def _limit_writes(prefix: str) -> None:
    original = SourceFileLoader.set_data

    def set_data(self: SourceFileLoader, path: str, data: bytes, *, _mode: int = 0o666) -> None:
        # Only inside the environment: never the base interpreter's library
        # (it may be writable when we run as root) nor any other folder.
        if path.startswith(prefix):
            original(self, path, data, _mode=_mode)

    SourceFileLoader.set_data = set_data  # type: ignore[method-assign,assignment]


def main(argv: list[str]) -> int:
    site_packages = os.path.realpath(argv[1])
    prefix = site_packages + os.sep
    if len(argv) > 2 and argv[2]:
        _limit_writes(prefix)
        sys.dont_write_bytecode = False
        # A backend that cannot be imported: the hook will say why.
        with contextlib.suppress(BaseException):
            importlib.import_module(argv[2])
    with contextlib.suppress(AttributeError, OSError):
        os.nice(10)
    compileall.compile_dir(site_packages, quiet=2, workers=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
