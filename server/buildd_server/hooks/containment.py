"""Containment: what a process the daemon starts for a request may reach, and for how long.

Every hook call and every install runs in one of three modes:

``none``
    A process group of its own (processes.py). What leaves the group
    (``setsid``) can outlive the call; everything the daemon's user can
    reach, the hook can.
``pid``
    A fresh PID namespace per call: when the call's first process ends,
    the kernel kills everything else in the namespace, whatever it did
    (``setsid``, ignoring SIGTERM, holding stdout open). Plain processes
    start under bubblewrap (``--unshare-pid --die-with-parent``, the file
    system as it is); fork server children get their namespace from
    ``unshare(CLONE_NEWPID)`` in the fork server (_zygote_main.py).
``sandbox``
    ``pid`` plus a bubblewrap sandbox (sandbox.py): the system read-only,
    a private ``/tmp``, a fresh ``/proc``, the state folder hidden, and
    write access only to the call's own folders. No fork server.

``--containment`` picks the mode per principal kind (``auto``: sandbox for
remote principals, pid for local ones, each falling back, with a note, to
what the machine offers); ``detect`` finds out at start-up what works.
The request's principal kind travels with the request's thread as a
context variable (``caller``), the way structlog's bound context does, so
that every process a request starts, however deep in the call chain, is
contained the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import structlog

from ..errors import DaemonStartupError
from . import sandbox

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

log = structlog.get_logger("buildd.containment")

Mode = Literal["none", "pid", "sandbox"]
Choice = Literal["auto", "pid", "sandbox", "none"]
CHOICES: tuple[Choice, ...] = ("auto", "pid", "sandbox", "none")
# Capability bit of CAP_SYS_ADMIN in /proc/self/status (linux/capability.h).
_CAP_SYS_ADMIN = 21
_PROBE_TIMEOUT = 20.0


@dataclass(frozen=True)
class Confinement:
    """The folders one process needs besides the system: its request's own."""

    # The leased environment: read-only for hooks, writable for installs.
    environment: Path | None = None
    writable: tuple[Path, ...] = ()
    readable: tuple[Path, ...] = ()
    install: bool = False
    # An install with a private cache of its principal (the store's) does not
    # get the machine's installer cache, which every principal would share.
    shared_cache: bool = True


@dataclass(frozen=True)
class Policy:
    """What the daemon contains, how, and what it could not do; fixed at start-up."""

    choice: Choice = "none"
    local: Mode = "none"
    remote: Mode = "none"
    bwrap: str = ""
    # How to start a fork server that can give each fork a PID namespace
    # (empty: as it is, the daemon holds CAP_SYS_ADMIN); None: fork servers
    # are not used where calls must be contained.
    zygote_prefix: tuple[str, ...] | None = ()
    # What a sandboxed process must not see, and what installs need besides.
    state_dir: Path | None = None
    hidden_files: tuple[Path, ...] = ()
    install_readable: tuple[Path, ...] = ()
    install_writable: tuple[Path, ...] = ()
    # What every sandboxed process runs from that the sandbox's private /tmp
    # would hide: the daemon's own installation (its virtualenv, uv, this
    # package, pyproject-hooks' _in_process.py) when it lives under /tmp.
    runtime: tuple[Path, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def mode_for(self, remote: bool) -> Mode:
        return self.remote if remote else self.local


# Unconfigured (library use, unit tests): nothing is contained.
POLICY = Policy()
_REMOTE: ContextVar[bool | None] = ContextVar("buildd_remote_caller", default=None)


def configure(policy: Policy) -> None:
    global POLICY  # noqa: PLW0603 - one policy per daemon, set once at start-up
    POLICY = policy


@contextlib.contextmanager
def caller(remote: bool) -> Iterator[None]:
    """Contain what this thread starts as for a remote (or local) principal."""
    token = _REMOTE.set(remote)
    try:
        yield
    finally:
        _REMOTE.reset(token)


def current_mode() -> Mode:
    """The mode for what the current request starts; outside any request, the strictest."""
    remote = _REMOTE.get()
    if remote is None:
        return max_mode(POLICY)
    return POLICY.mode_for(remote)


def max_mode(policy: Policy) -> Mode:
    order: tuple[Mode, ...] = ("none", "pid", "sandbox")
    return max(policy.local, policy.remote, key=order.index)


def command(
    argv: Sequence[str],
    environ: Mapping[str, str],
    cwd: str | None,
    confine: Confinement,
    info_fd: int | None = None,
) -> tuple[list[str], dict[str, str], bool]:
    """``argv`` and its environment as the current mode starts them; True when wrapped.

    A wrapped process reports a signal the way bubblewrap does, as exit
    status 128 + N: see ``exit_status``. With ``info_fd``, bubblewrap writes
    the pid of the namespace's first process there (``sandbox._info``).
    """
    mode = current_mode()
    if mode == "none":
        return list(argv), dict(environ), False
    if mode == "pid":
        return [*sandbox.pid_prefix(POLICY.bwrap, cwd, info_fd), *argv], dict(environ), True
    layout = sandbox.Layout(
        state_dir=POLICY.state_dir,
        hidden_files=POLICY.hidden_files,
        writable=(
            *([Path(cwd)] if cwd else []),
            *confine.writable,
            *(((confine.environment,) if confine.environment else ()) if confine.install else ()),
            *(POLICY.install_writable if confine.install and confine.shared_cache else ()),
        ),
        readable=(
            *POLICY.runtime,
            *confine.readable,
            *(() if confine.install or confine.environment is None else (confine.environment,)),
            *(POLICY.install_readable if confine.install else ()),
        ),
    )
    prefix = sandbox.sandbox_prefix(POLICY.bwrap, layout, cwd, info_fd)
    return [*prefix, *argv], sandbox.sandbox_environment(environ), True


def exit_status(returncode: int, wrapped: bool) -> int:
    """A wrapped process's 128 + N back to -N (killed by signal N), as shells read it."""
    if wrapped and returncode > 128:
        with contextlib.suppress(ValueError):
            return -signal.Signals(returncode - 128).value
    return returncode


def fork_server_allowed() -> bool:
    """Whether the current request's hooks may fork from a fork server."""
    mode = current_mode()
    return mode == "none" or (mode == "pid" and POLICY.zygote_prefix is not None)


def zygote_launch() -> tuple[tuple[str, ...], bool]:
    """(command prefix, whether each fork gets its own PID namespace) for a new fork server."""
    if current_mode() == "none":
        return (), False
    return POLICY.zygote_prefix or (), True


# ------------------------------------------------------------ detection --


@dataclass(frozen=True)
class Machine:
    """What this machine offers, found out by trying (``probe``)."""

    bwrap: str
    pid: str  # "" when bubblewrap's PID namespace works, else why not
    sandbox: str  # "" when the full sandbox works, else why not
    cap_sys_admin: bool
    zygote_userns: str  # "" when a fork server may make namespaces in a user namespace


def probe(state_dir: Path) -> Machine:
    """Try bubblewrap's PID namespace, the sandbox, and namespaces for fork servers."""
    bwrap = shutil.which("bwrap") or ""
    caps = _has_cap_sys_admin()
    if not bwrap:
        missing = "bubblewrap (bwrap) is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
        return Machine("", missing, missing, caps, missing)
    true = shutil.which("true") or "/bin/true"
    pid = _try([*sandbox.pid_prefix(bwrap, None), true])
    with tempfile.TemporaryDirectory(prefix="probe-", dir=state_dir) as scratch:
        layout = sandbox.Layout(state_dir=state_dir, writable=(Path(scratch),))
        full = pid or _try([*sandbox.sandbox_prefix(bwrap, layout, scratch), true])
    userns = ""
    if not caps and not pid:
        code = (
            "import ctypes,os;c=ctypes.CDLL(None,use_errno=True);"
            "f=os.open('/proc/self/ns/pid',os.O_RDONLY);"
            "assert c.unshare(0x20000000)==0 and c.setns(f,0x20000000)==0"
        )
        userns = _try([*sandbox.zygote_prefix(bwrap), sys.executable, "-I", "-c", code])
    return Machine(bwrap, pid, full, caps, userns if not caps else "")


def resolve(choice: Choice, machine: Machine, *, state_dir: Path, remote_possible: bool) -> Policy:
    """The policy for ``--containment choice`` on ``machine``; refuses what cannot be had."""
    notes: list[str] = []
    if choice == "none":
        local: Mode = "none"
        remote: Mode = "none"
        if remote_possible:
            notes.append(
                "--containment none: hooks of remote principals run as the daemon's user with "
                "the whole file system visible, and what they leave running can outlive the call"
            )
    elif choice == "pid":
        if machine.pid:
            raise DaemonStartupError(f"--containment pid needs bubblewrap: {machine.pid}")
        local = remote = "pid"
        if remote_possible:
            notes.append(
                "--containment pid: remote principals' hooks are not sandboxed; they can read "
                "and write whatever the daemon's user can"
            )
    elif choice == "sandbox":
        if machine.sandbox:
            raise DaemonStartupError(
                f"--containment sandbox needs a working bubblewrap sandbox: {machine.sandbox}"
            )
        local = remote = "sandbox"
        notes.append("--containment sandbox: every hook runs plain (no fork server)")
    else:
        local = "pid" if not machine.pid else "none"
        remote = "sandbox" if not machine.sandbox else local
        if machine.pid:
            notes.append(
                f"no PID namespace per call ({machine.pid}): what a hook leaves running "
                "outside its process group can outlive the call"
            )
        if remote_possible and machine.sandbox:
            notes.append(
                f"remote principals are not sandboxed ({machine.sandbox}): their hooks can "
                "read and write whatever the daemon's user can"
            )
    zygote: tuple[str, ...] | None = ()
    if "pid" in (local, remote) and not machine.cap_sys_admin:
        if machine.zygote_userns:
            zygote = None
            notes.append(
                "fork servers are off under PID containment: the daemon lacks CAP_SYS_ADMIN "
                f"and a user namespace did not help ({machine.zygote_userns})"
            )
        else:
            zygote = sandbox.zygote_prefix(machine.bwrap)
    return Policy(
        choice=choice,
        local=local,
        remote=remote,
        bwrap=machine.bwrap,
        zygote_prefix=zygote,
        state_dir=state_dir,
        notes=tuple(notes),
    )


def detect(
    choice: Choice,
    *,
    state_dir: Path,
    remote_possible: bool,
    hidden_files: Sequence[Path] = (),
    install_readable: Sequence[Path] = (),
    install_writable: Sequence[Path] = (),
) -> Policy:
    """Probe the machine (skipped for ``none``) and resolve ``choice``; log the outcome."""
    if choice == "none":
        machine = Machine("", "not tried", "not tried", _has_cap_sys_admin(), "not tried")
    else:
        machine = probe(state_dir)
    policy = resolve(choice, machine, state_dir=state_dir, remote_possible=remote_possible)
    policy = replace(
        policy,
        hidden_files=tuple(p for p in hidden_files if p.exists()),
        install_readable=tuple(p for p in install_readable if p.is_dir()),
        install_writable=tuple(install_writable),
        runtime=runtime_under_tmp(),
    )
    event = log.warning if policy.notes and choice != "none" else log.info
    event(
        "containment",
        choice=choice,
        local=policy.local,
        remote=policy.remote,
        bwrap=policy.bwrap or None,
        fork_server=(
            "off"
            if policy.zygote_prefix is None
            else "namespaced"
            if policy.zygote_prefix
            else "direct"
        ),
        notes=list(policy.notes),
    )
    return policy


def runtime_under_tmp() -> tuple[Path, ...]:
    """The daemon's own installation, where it lies under /tmp (a CI checkout, say).

    A sandboxed process gets a private, empty /tmp: without these it could
    not start the installer, pyproject-hooks' _in_process.py or the bytecode
    compiler, which all run from here.
    """
    import pyproject_hooks

    tmp = Path("/tmp")
    found: list[Path] = []
    for path in (
        Path(sys.prefix),
        Path(sys.base_prefix),
        Path(__file__).resolve().parents[1],  # the buildd_server package
        Path(pyproject_hooks.__file__).resolve().parent,
    ):
        resolved = path.resolve()
        if resolved.is_relative_to(tmp) and not any(resolved.is_relative_to(p) for p in found):
            found = [p for p in found if not p.is_relative_to(resolved)] + [resolved]
    return tuple(found)


def _try(argv: Sequence[str]) -> str:
    """'' when ``argv`` exits 0, else what it said (its last line of stderr)."""
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=_PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{argv[0]}: {exc}"
    if done.returncode == 0:
        return ""
    said = done.stderr.decode("utf-8", "replace").strip().splitlines()
    return f"{Path(argv[0]).name} failed: {said[-1] if said else f'exit code {done.returncode}'}"


def _has_cap_sys_admin() -> bool:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return os.geteuid() == 0
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> _CAP_SYS_ADMIN & 1)
    return False
