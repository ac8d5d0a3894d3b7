"""A PEP 517 backend that tries to reach outside its own request, and records what it reached.

Copied into projects as ``_hostile/hostile_backend.py`` and loaded through
``backend-path`` (no requirements, so any environment serves it). Every hook
reads ``hostile.json`` from the project root, runs the probes it names, prints
one line ``HOSTILE {json record}`` on stdout (the daemon streams it to the
client as a log line) and then acts as a tiny real backend, so that requests
succeed and the test can tell "refused" from "never ran".

Probes (each optional, each recorded under its own key):

``write``
    paths to open for appending and write a marker into: a cached blob,
    another session's unpacked source, ``/usr``...; ``write_env`` adds the
    leased environment's ``pyvenv.cfg``, ``write_source`` a file in the
    project's own tree.
``read``
    paths to read (up to 4 KiB): the token file, ``/proc/PID/environ``...
``list``
    folders to list: the blob cache, the sessions folder...
``copy``
    ``{"from": A, "to": B}``: overwrite B with the bytes of A (made writable
    first, where its owner may): how a hook would poison a cached blob.
``discover``
    look through ``/proc/*/cmdline`` for a buildd daemon and record its
    command line (where the token file's path would be).
``tmp_marker``
    a file name to look for in, then write into, ``/tmp``: a private /tmp
    never shows what an earlier call left there.
``grandchild``
    ``{"socket": PATH, "hold_stdout": bool}``: start a process that leaves
    the hook's session (``setsid``), ignores SIGTERM, connects to the Unix
    socket at PATH, says who it is, and sleeps; with ``hold_stdout`` it keeps
    the hook's stdout open. The hook returns once it has connected. Its
    command line names nothing of the daemon (a plain ``/bin/sh``-started
    system Python), so nothing can find it by name.
``hang``
    seconds the hook sleeps after the probes (for timeout, cancel and kill tests).
``grandchild_hook``
    the one hook that starts the grandchild and hangs (default: every hook).

Record values: ``"ok"`` plus what was found, or ``"error: <OSError>"``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import zipfile

_ROOT = os.getcwd()
_GRANDCHILD = r"""
import os, signal, socket, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.setsid()
if not int(sys.argv[2]):
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(("alive %s\n" % os.readlink("/proc/self")).encode())
os.write(int(sys.argv[3]), b"connected\n")
os.close(int(sys.argv[3]))
while True:
    time.sleep(1000)
"""


def _config():
    with open(os.path.join(_ROOT, "hostile.json"), encoding="utf-8") as handle:
        return json.load(handle)


def _error(exc):
    return "error: " + type(exc).__name__ + ": " + str(exc)[:200]


def _probe(hook):
    config = _config()
    record = {"hook": hook, "write": {}, "read": {}, "list": {}}
    targets = list(config.get("write", []))
    if config.get("write_env"):
        targets.append(os.path.join(os.environ["VIRTUAL_ENV"], "pyvenv.cfg"))
    if config.get("write_source"):
        targets.append(os.path.join(_ROOT, "written-by-the-hook"))
    for path in targets:
        try:
            with open(path, "ab") as out:
                out.write(b"\n# hostile was here\n")
            record["write"][path] = "ok"
        except OSError as exc:
            record["write"][path] = _error(exc)
    for path in config.get("read", []):
        try:
            with open(path, "rb") as handle:
                data = handle.read(4096)
            # Kept short: the record must fit in one log line (8 KiB).
            record["read"][path] = "ok: " + data.decode("utf-8", "replace")[:1000]
        except OSError as exc:
            record["read"][path] = _error(exc)
    for path in config.get("list", []):
        try:
            record["list"][path] = "ok: " + " ".join(sorted(os.listdir(path)))[:1000]
        except OSError as exc:
            record["list"][path] = _error(exc)
    copy = config.get("copy")
    if copy:
        try:
            with open(copy["from"], "rb") as handle:
                data = handle.read()
            with contextlib.suppress(OSError):
                os.chmod(copy["to"], 0o600)
            with open(copy["to"], "wb") as out:
                out.write(data)
            record["copied"] = "ok"
        except OSError as exc:
            record["copied"] = _error(exc)
    if config.get("discover"):
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    command = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            # The sandbox's own first process (bubblewrap) is no daemon: its
            # command line names the layout, paths only (what it hides is
            # bound to /dev/null there).
            if "buildd_server" in command and not command.split(" ", 1)[0].endswith("bwrap"):
                found.append(command[:1000])
        record["discover"] = found
    marker = config.get("tmp_marker")
    if marker:
        path = os.path.join("/tmp", marker)
        record["tmp_seen"] = os.path.exists(path)
        try:
            with open(path, "w") as out:
                out.write("left by a hostile hook")
            record["tmp_written"] = "ok"
        except OSError as exc:
            record["tmp_written"] = _error(exc)
    child = config.get("grandchild")
    if child and hook == config.get("grandchild_hook", hook):
        record["grandchild"] = _grandchild(child["socket"], child.get("hold_stdout", False))
    record["pid_seen"] = os.getpid()
    record["cwd"] = os.getcwd()
    record["ancestors"] = _ancestors()
    print("HOSTILE " + json.dumps(record), flush=True)
    if config.get("hang") and hook == config.get("grandchild_hook", hook):
        time.sleep(config["hang"])


def _ancestors():
    """The pids above this process as /proc shows them (the machine's, unless sandboxed)."""
    found = []
    try:
        pid = os.readlink("/proc/self")
        while pid not in ("0", "1"):
            with open(f"/proc/{pid}/status") as status:
                pid = next(line.split()[1] for line in status if line.startswith("PPid:"))
            found.append(int(pid))
    except (OSError, IndexError, ValueError):
        pass
    return found


def _grandchild(socket_path, hold_stdout):
    ready_r, ready_w = os.pipe()
    os.set_inheritable(ready_w, True)
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    # Through /bin/sh, so that the hook does not wait for it and nobody reaps it.
    command = " ".join(
        [
            python,
            "-c",
            _quote(_GRANDCHILD),
            _quote(socket_path),
            str(int(hold_stdout)),
            str(ready_w),
        ]
    )
    command += " &"
    subprocess.run(["/bin/sh", "-c", command], close_fds=False, check=True)
    os.close(ready_w)
    with os.fdopen(ready_r, "rb") as ready:
        said = ready.readline().decode().strip()
    return "started: " + (said or "no answer")


def _quote(text):
    return "'" + text.replace("'", "'\"'\"'") + "'"


# ------------------------------------------------------------ a tiny backend --


def _name():
    return _config().get("name", "hostile-demo")


def get_requires_for_build_wheel(config_settings=None):
    _probe("get_requires_for_build_wheel")
    return []


def get_requires_for_build_sdist(config_settings=None):
    _probe("get_requires_for_build_sdist")
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    _probe("prepare_metadata_for_build_wheel")
    dist_info = os.path.join(metadata_directory, _dist() + "-1.0.dist-info")
    os.makedirs(dist_info, exist_ok=True)
    with open(os.path.join(dist_info, "METADATA"), "w", encoding="utf-8") as out:
        out.write(_metadata())
    return os.path.basename(dist_info)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _probe("build_wheel")
    name = _dist() + "-1.0-py3-none-any.whl"
    dist_info = _dist() + "-1.0.dist-info"
    files = {
        dist_info + "/METADATA": _metadata().encode(),
        dist_info + "/WHEEL": b"Wheel-Version: 1.0\nGenerator: hostile\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as whl:
        for path, data in files.items():
            whl.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{path},sha256={digest.decode()},{len(data)}")
        record.append(dist_info + "/RECORD,,")
        whl.writestr(dist_info + "/RECORD", "\n".join(record) + "\n")
    return name


def build_sdist(sdist_directory, config_settings=None):
    _probe("build_sdist")
    base = _dist() + "-1.0"
    name = base + ".tar.gz"
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz") as sdist:
        for rel in ("pyproject.toml", "hostile.json", "_hostile/hostile_backend.py"):
            sdist.add(os.path.join(_ROOT, rel), arcname=base + "/" + rel)
        data = _metadata().encode()
        info = tarfile.TarInfo(base + "/PKG-INFO")
        info.size = len(data)
        sdist.addfile(info, io.BytesIO(data))
    return name


def _dist():
    return _name().replace("-", "_")


def _metadata():
    return f"Metadata-Version: 2.1\nName: {_name()}\nVersion: 1.0\n"
