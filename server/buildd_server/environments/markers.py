"""The marker of an instance, and the mark of its lease: what says, on disk,
that a folder is a complete environment, and that a request holds it.

``buildd-env.json`` is written last, atomically, when the instance is
complete, and moved away (``buildd-env.json.off``) while an install changes
it: a folder without it is half-made, reclaimed at start. It records what
validation compares (the interpreter's file size and mtime, the key, the
digest of the files) and what the store needs to adopt the instance after a
restart (key, interpreter facts, principal, key folder, slot, size).
``buildd-lease`` exists while a request holds the instance.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .. import errors
from .interpreters import Interpreter
from .keys import EnvKey

if TYPE_CHECKING:
    from .environments import Environment

METADATA_FILE = "buildd-env.json"
# While an install changes the instance, the marker waits under this name.
OFF_FILE = METADATA_FILE + ".off"
# Present while a request holds the instance: one found at start was leased
# when the daemon died, so its state is unknown (rule 5).
LEASE_FILE = "buildd-lease"
_FORMAT = 2


def stamp(executable: str) -> tuple[int, int]:
    """(size, mtime_ns) of an interpreter's file: what "unchanged" means for it."""
    info = os.stat(executable)
    return (info.st_size, info.st_mtime_ns)


def mark_leased(env: Environment) -> None:
    """Record on disk that a request holds ``env`` (see LEASE_FILE).

    Raises ResourceExhausted when the disk is too full to create even that
    empty file; the instance is untouched then.
    """
    try:
        (env.path / LEASE_FILE).touch()
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise errors.ResourceExhausted(
                f"no space left on device to lease environment {env.path}: {exc}",
                path=str(env.path),
            ) from exc
        raise errors.BuilddError(f"cannot lease environment {env.path}: {exc}") from exc


def unmark_leased(env: Environment) -> None:
    with contextlib.suppress(OSError):
        (env.path / LEASE_FILE).unlink()


def matches(env: Environment) -> bool:
    """Whether the marker on disk still names ``env``: its id, key and digest."""
    data = json.loads((env.path / METADATA_FILE).read_text(encoding="utf-8"))
    return bool(
        data.get("id") == env.id
        and data.get("key_id") == env.key.id
        and data.get("digest") == env.fingerprint
    )


def write(env: Environment) -> None:
    """Write ``env``'s marker atomically (a temporary name, then a rename)."""
    key = env.key
    interpreter = env.interpreter
    data = {
        "format": _FORMAT,
        "id": env.id,
        "key_id": key.id,
        "key": {
            "interpreter": list(key.interpreter),
            "requirements": list(key.requirements),
            "installer": key.installer,
            "installer_options": [list(pair) for pair in key.installer_options],
            "isolation": key.isolation,
        },
        "interpreter": {
            "executable": interpreter.executable,
            "implementation": interpreter.implementation,
            "version": interpreter.version,
            "platform": interpreter.platform,
            "markers": [list(pair) for pair in interpreter.markers],
        },
        "interpreter_stamp": list(env.interpreter_stamp),
        "python": os.path.relpath(env.python, env.path),
        "site_packages": os.path.relpath(env.site_packages, env.path),
        "digest": env.fingerprint,
        "size_bytes": env.size_bytes,
        "principal": env.principal,
        "key_dir": env.key_dir,
        "slot": env.slot,
        "cache_dir": str(env.cache_dir) if env.cache_dir is not None else "",
        "created_at": env.created_at,
        "daemon_pid": os.getpid(),
        "daemon_python": sys.executable,
    }
    target = env.path / METADATA_FILE
    scratch = env.path / (METADATA_FILE + ".tmp")
    scratch.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(scratch, target)


def load(path: Path, owner: str, *, fork_server: bool) -> Environment | None:
    """The instance ``path``'s marker describes (not validated); None when unmarked."""
    from .environments import Environment  # it imports this module

    try:
        data = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
        if data.get("format") != _FORMAT:
            return None
        key_part = data["key"]
        key = EnvKey(
            interpreter=tuple(key_part["interpreter"]),
            requirements=tuple(key_part["requirements"]),
            installer=str(key_part["installer"]),
            installer_options=tuple(tuple(p) for p in key_part["installer_options"]),
            isolation=str(key_part["isolation"]),
        )
        facts = data["interpreter"]
        interpreter = Interpreter(
            executable=str(facts["executable"]),
            implementation=str(facts["implementation"]),
            version=str(facts["version"]),
            platform=str(facts["platform"]),
            markers=tuple((str(k), str(v)) for k, v in facts["markers"]),
        )
        if key.id != data["key_id"] or interpreter.identity() != key.interpreter:
            return None
        stamp = data["interpreter_stamp"]
        return Environment(
            id=str(data["id"]),
            path=path,
            key=key,
            interpreter=interpreter,
            python=path / data["python"],
            site_packages=path / data["site_packages"],
            created_at=float(data["created_at"]),
            last_used_at=float(data["created_at"]),
            fingerprint=str(data["digest"]),
            fork_server=fork_server,
            owner=owner,
            principal=str(data["principal"]),
            key_dir=str(data["key_dir"]),
            slot=int(data["slot"]),
            cache_dir=Path(data["cache_dir"]) if data.get("cache_dir") else None,
            size_bytes=int(data["size_bytes"]),
            interpreter_stamp=(int(stamp[0]), int(stamp[1])),
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
