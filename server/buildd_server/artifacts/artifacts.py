"""Moving built artifacts into the caller's output folder, atomically."""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
from typing import TYPE_CHECKING

from .. import errors

if TYPE_CHECKING:
    from pathlib import Path

_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def publish(built: Path, outdir: Path) -> tuple[Path, int, str]:
    """Place ``built`` in ``outdir`` under its own name; return (path, size, sha256).

    The file first lands under a hidden temporary name in ``outdir`` and is
    then renamed, so a reader of ``outdir`` never sees half an artifact, and an
    existing artifact of the same name is replaced in one step.
    """
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _as_error(exc, outdir) from exc
    final = outdir / built.name
    # One name per publish: two requests writing the same artifact into one
    # folder at once (two sessions building one project into its dist/) must
    # not share it, or one renames the other's file and fails on its own.
    temporary = outdir / f".{built.name}.buildd-partial-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        try:
            os.replace(built, temporary)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.copyfile(built, temporary)
        size = temporary.stat().st_size
        digest = sha256_of(temporary)
        os.replace(temporary, final)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise _as_error(exc, outdir) from exc
    return final, size, digest


def _as_error(exc: OSError, outdir: Path) -> errors.BuilddError:
    if exc.errno == errno.ENOSPC:
        return errors.ResourceExhausted(f"no space left while writing into {outdir}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return errors.InvalidRequest(
            f"output_directory: cannot write into {outdir}: {exc.strerror}"
        )
    return errors.InvalidRequest(f"output_directory: {outdir}: {exc}")
