"""Finding and describing the Python interpreters that environments are built for.

An interpreter is probed once (one ``-I -c`` subprocess) and the facts are cached
by (resolved path, mtime): the key needs the *base* interpreter and the PEP 508
marker values as that interpreter sees them, and the daemon's own ``packaging``
cannot compute those for another Python.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from buildd_server.errors import InterpreterNotFound, InvalidRequest

MIN_VERSION = (3, 8)
PROBE_TIMEOUT = 30.0

# Accepted version spellings: "3.12", "3.12.1", "python3.12" (and "python3.12.1").
_VERSION_SPEC = re.compile(r"^(?:python)?(\d+)\.(\d+)(?:\.(\d+))?$")
_LEADING_INT = re.compile(r"^(\d+)")
# The probe prints its JSON after this tag, so that a sitecustomize that writes
# to stdout cannot corrupt the answer.
_TAG = "@@buildd-probe@@"

# Runs inside the probed interpreter: must stay valid Python 3.6 syntax and must
# not need packaging, so that old interpreters get a clear "too old" error
# instead of a traceback. The marker values mirror
# packaging.markers.default_environment() key for key.
_PROBE = r"""
import json, os, platform, sys, sysconfig

def full_version(info):
    v = "%d.%d.%d" % (info.major, info.minor, info.micro)
    if info.releaselevel != "final":
        v += info.releaselevel[0] + str(info.serial)
    return v

def base_executable():
    exe = sys.executable
    if sys.prefix == sys.base_prefix:
        return os.path.realpath(exe)
    # A virtual environment: keys must name the interpreter it was made from,
    # so that a venv python and its base share environments.
    names = [os.path.basename(exe), "python%d.%d" % sys.version_info[:2],
             "python%d" % sys.version_info[0], "python"]
    dirs = []
    cfg = os.path.join(sys.prefix, "pyvenv.cfg")
    try:
        with open(cfg, encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.partition("=")
                if sep and key.strip().lower() == "home":
                    dirs.append(value.strip())
    except OSError:
        pass
    dirs.append(os.path.join(sys.base_prefix, "bin"))
    base = getattr(sys, "_base_executable", "")
    if base and os.path.realpath(base) != os.path.realpath(exe):
        dirs.insert(0, os.path.dirname(base))
        names.insert(0, os.path.basename(base))
    for d in dirs:
        for n in names:
            cand = os.path.join(d, n)
            if os.path.isfile(cand) and os.access(cand, os.X_OK):
                return os.path.realpath(cand)
    return os.path.realpath(exe)

markers = {
    "implementation_name": sys.implementation.name,
    "implementation_version": full_version(sys.implementation.version),
    "os_name": os.name,
    "platform_machine": platform.machine(),
    "platform_release": platform.release(),
    "platform_system": platform.system(),
    "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "platform_python_implementation": platform.python_implementation(),
    "python_version": ".".join(platform.python_version_tuple()[:2]),
    "sys_platform": sys.platform,
}
facts = {
    "executable": base_executable(),
    "implementation": sys.implementation.name,
    "version": platform.python_version(),
    "version_info": list(sys.version_info[:3]),
    "platform": sysconfig.get_platform(),
    "markers": markers,
}
sys.stdout.write("\n" + TAG + json.dumps(facts) + "\n")
""".replace("TAG", repr(_TAG))


@dataclass(frozen=True)
class Interpreter:
    """The facts about one base interpreter that matter for environment keys."""

    executable: str
    implementation: str
    version: str
    platform: str
    markers: tuple[tuple[str, str], ...]

    def marker_environment(self) -> dict[str, str]:
        """The PEP 508 marker environment of this interpreter (``extra`` not set)."""
        return dict(self.markers)

    def identity(self) -> tuple[str, str, str, str]:
        """The part of an environment key that names the interpreter."""
        return (self.executable, self.implementation, self.version, self.platform)


# A probe that failed for a definite reason (non-zero exit, too old, not a
# Python) is cached too: a failing pyenv shim must not cost a subprocess on
# every lookup of its version. Timeouts and spawn errors may be transient and
# are not cached.
_cache: dict[tuple[str, int], Interpreter | str] = {}
_cache_lock = threading.Lock()


class _DefiniteFailure(InterpreterNotFound):
    """A probe failure that will not change until the file changes."""


def clear_cache() -> None:
    """Forget every probed interpreter (tests; or after upgrading Pythons in place)."""
    with _cache_lock:
        _cache.clear()


def resolve_interpreter(spec: str) -> Interpreter:
    """Find the interpreter ``spec`` names and describe it.

    ``""`` is the daemon's own interpreter, an absolute path is that file (a
    venv's python resolves to its base interpreter), and ``"3.12"``,
    ``"3.12.1"`` or ``"python3.12"`` is looked up on PATH and in pyenv.
    """
    if spec == "":
        return _probe(sys.executable)
    if os.path.isabs(spec):
        return _probe(spec)
    match = _VERSION_SPEC.match(spec)
    if match is None:
        raise InvalidRequest(
            f"python: invalid interpreter {spec!r}: expected an absolute path of a Python "
            'executable or a version such as "3.12", "3.12.1" or "python3.12"'
        )
    wanted = tuple(int(part) for part in match.groups() if part is not None)
    return _find_version(spec, wanted)


def describe(executable: str) -> Interpreter:
    """Probe the interpreter at ``executable`` (cached by resolved path and mtime)."""
    return _probe(executable)


def _find_version(spec: str, wanted: tuple[int, ...]) -> Interpreter:
    name = f"python{wanted[0]}.{wanted[1]}"
    tried: list[str] = []
    for candidate in _candidates(name, wanted):
        try:
            found = _probe(str(candidate))
        except InterpreterNotFound as exc:
            # pyenv shims for versions that are not active exit non-zero: not
            # an error as long as another candidate answers.
            tried.append(f"{candidate} ({exc.message})")
            continue
        if _version_tuple(found.version)[: len(wanted)] == wanted:
            return found
        tried.append(f"{candidate} (is {found.version})")
    detail = "; tried: " + "; ".join(tried) if tried else ""
    raise InterpreterNotFound(
        f"python: no interpreter matching {spec!r} found on PATH or in "
        f"{_pyenv_root() / 'versions'}{detail}"
    )


def _candidates(name: str, wanted: tuple[int, ...]) -> list[Path]:
    seen: set[Path] = set()
    found: list[Path] = []
    for entry in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if entry and os.path.isabs(entry):
            _add_candidate(Path(entry) / name, seen, found)
    versions = _pyenv_root() / "versions"
    try:
        dirs = [d for d in versions.iterdir() if d.is_dir()]
    except OSError:
        dirs = []
    # Newest first, so that "3.12" means the latest installed 3.12.x; folder
    # names that are not versions (virtualenvs, conda) come last.
    dirs.sort(key=lambda d: (_version_tuple(d.name), d.name), reverse=True)
    for directory in dirs:
        prefix = _version_tuple(directory.name)
        if prefix and prefix[: len(wanted)] != wanted[: len(prefix)]:
            continue  # saves probing a 3.11.x folder when 3.12 is asked for
        _add_candidate(directory / "bin" / name, seen, found)
    return found


def _add_candidate(path: Path, seen: set[Path], found: list[Path]) -> None:
    if path in seen or not (path.is_file() and os.access(path, os.X_OK)):
        return
    seen.add(path)
    found.append(path)


def _pyenv_root() -> Path:
    root = os.environ.get("PYENV_ROOT", "")
    return Path(root) if root else Path.home() / ".pyenv"


def _version_tuple(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in version.split("."):
        match = _LEADING_INT.match(piece)
        if match is None:
            break
        parts.append(int(match.group(1)))
        if match.group(1) != piece:
            break  # "0rc1": the release number ends here
    return tuple(parts)


def _probe(executable: str) -> Interpreter:
    try:
        resolved = os.path.realpath(executable)
        stat = os.stat(resolved)
    except OSError as exc:
        raise InterpreterNotFound(f"python: {executable!r} does not exist: {exc}") from exc
    if not os.path.isfile(resolved) or not os.access(resolved, os.X_OK):
        raise InterpreterNotFound(f"python: {executable!r} is not an executable file")
    # A pyenv shim keeps its mtime while pyenv's selected version changes: a
    # daemon that must follow `pyenv global` changes needs clear_cache().
    cache_key = (resolved, stat.st_mtime_ns)
    with _cache_lock:
        cached = _cache.get(cache_key)
    if isinstance(cached, str):
        raise InterpreterNotFound(cached)
    if cached is not None:
        return cached
    try:
        interpreter = _run_probe(executable)
    except _DefiniteFailure as exc:
        with _cache_lock:
            _cache[cache_key] = exc.message
        raise
    with _cache_lock:
        _cache[cache_key] = interpreter
    return interpreter


def _probe_env() -> dict[str, str]:
    # -I already ignores PYTHON* variables; the rest is dropped so that nothing
    # of the daemon's environment changes the answer, except what is needed to
    # start at all (shims need PATH, some builds need their library path).
    keep = ("PATH", "LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH", "SYSTEMROOT", "PYENV_ROOT")
    return {name: os.environ[name] for name in keep if name in os.environ}


def _run_probe(executable: str) -> Interpreter:
    try:
        proc = subprocess.run(
            [executable, "-I", "-c", _PROBE],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=_probe_env(),
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise InterpreterNotFound(
            f"python: {executable!r} did not answer within {PROBE_TIMEOUT:.0f} s"
        ) from exc
    except OSError as exc:
        raise InterpreterNotFound(f"python: {executable!r} cannot be run: {exc}") from exc
    stdout = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0:
        lines = [x.strip() for x in proc.stderr.decode("utf-8", "replace").splitlines()]
        lines = [x for x in lines if x]
        # The first line names the problem for shims and old Pythons ("Unknown
        # option: -I"), the last one for a traceback: keep both.
        said = " ... ".join(dict.fromkeys([*lines[:1], *lines[-1:]]))
        raise _DefiniteFailure(
            f"python: {executable!r} exited with status {proc.returncode}"
            + (f": {said}" if said else "")
        )
    answer = next(
        (line[len(_TAG) :] for line in reversed(stdout.splitlines()) if line.startswith(_TAG)),
        None,
    )
    try:
        facts = json.loads(answer) if answer is not None else None
        return _from_facts(executable, facts)
    except (ValueError, TypeError, KeyError) as exc:
        raise _DefiniteFailure(
            f"python: {executable!r} is not a Python interpreter this daemon can use "
            f"(unexpected answer to the probe: {stdout[-200:]!r})"
        ) from exc


def _from_facts(executable: str, facts: object) -> Interpreter:
    if not isinstance(facts, dict):
        raise TypeError("probe answer is not an object")
    version_info = tuple(int(part) for part in facts["version_info"])
    if version_info[:2] < MIN_VERSION:
        raise _DefiniteFailure(
            f"python: {executable!r} is Python {facts['version']}; "
            f"at least {MIN_VERSION[0]}.{MIN_VERSION[1]} is required"
        )
    markers = facts["markers"]
    if not isinstance(markers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in markers.items()
    ):
        raise TypeError("markers are not a string mapping")
    fields = [facts[name] for name in ("executable", "implementation", "version", "platform")]
    if not all(isinstance(value, str) for value in fields):
        raise TypeError("facts are not strings")
    return Interpreter(
        executable=str(fields[0]),
        implementation=str(fields[1]),
        version=str(fields[2]),
        platform=str(fields[3]),
        markers=tuple(sorted(markers.items())),
    )
