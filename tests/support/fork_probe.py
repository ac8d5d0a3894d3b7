"""An installable PEP 517 backend that reports how its hook process came to be.

The fork server serves only backends installed in the environment (never
in-tree ones), so this probe is written into a wheel in a test's folder and
installed from there. Its import prints a line on each stream and warns once,
so tests can check that a fork shows the same import noise as a fresh start.
Every hook appends one JSON line to the ``log`` named in ``fork-probe.json``
(in the project root) and then does its ``action``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

NAME = "buildd-fork-probe"
MODULE = "buildd_fork_probe"
VERSION = "1.0"

BACKEND = r"""
import atexit, json, os, signal, subprocess, sys, threading, time, warnings

print("fork-probe: imported", flush=True)
print("fork-probe: imported, on stderr", file=sys.stderr, flush=True)
warnings.warn("fork-probe: a warning at import", UserWarning)
_IMPORTED_IN = os.getpid()
# A module global: holds more than one entry only if one process ran two hooks.
_CALLS = []


def _config():
    with open("fork-probe.json", encoding="utf-8") as handle:
        return json.load(handle)


def _spawn():
    child = subprocess.Popen(["sleep", "1000"])
    with open("child.pid", "w") as out:
        out.write(str(child.pid))
    print("spawned", child.pid, flush=True)


def _hook(name, result):
    config = _config()
    _CALLS.append(name)
    entry = {
        "hook": name,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
        "imported_in": _IMPORTED_IN,
        "calls": list(_CALLS),
        "marker": os.environ.get("FORK_PROBE_MARKER"),
        "cwd": os.getcwd(),
        "argv": sys.argv,
        "main_file": getattr(sys.modules["__main__"], "__file__", None),
        "main_name": sys.modules["__main__"].__name__,
        "path": sys.path,
        "stdin": sys.stdin.read(),
        "environ": dict(os.environ),
        "sigint": str(signal.getsignal(signal.SIGINT)),
        "sigpipe": str(signal.getsignal(signal.SIGPIPE)),
    }
    os.environ["FORK_PROBE_MARKER"] = "set by " + name
    with open(config["log"], "a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")
    print("fork-probe: running", name, flush=True)
    action = config.get("action", "")
    if action == "spawn-hang":
        _spawn()
        time.sleep(1000)
    elif action == "spawn-return":
        _spawn()
    elif action == "exit":
        sys.exit(config["code"])
    elif action == "raise":
        raise RuntimeError("fork-probe: boom")
    elif action == "kill-self":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "kill-parent-unless" and os.getppid() != config["spare"]:
        # Kills the fork server that forked this process, never the test.
        os.kill(os.getppid(), signal.SIGKILL)
    elif action == "late-thread":
        def late():
            time.sleep(0.3)
            with open("thread.done", "w") as out:
                out.write("done")
        threading.Thread(target=late).start()
    elif action == "atexit":
        atexit.register(lambda: open("atexit.done", "w").close())
    return result


def get_requires_for_build_wheel(config_settings=None):
    return _hook("get_requires_for_build_wheel", ["fork-probe-req"])


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    name = "buildd_fork_probe_demo-1.0.dist-info"
    os.makedirs(os.path.join(metadata_directory, name))
    with open(os.path.join(metadata_directory, name, "METADATA"), "w") as out:
        out.write("Metadata-Version: 2.1\nName: buildd-fork-probe-demo\nVersion: 1.0\n")
    return _hook("prepare_metadata_for_build_wheel", name)
"""


def write_probe_wheel(folder: Path) -> Path:
    """``buildd-fork-probe`` as a wheel in ``folder`` (an installer's find-links)."""
    folder.mkdir(parents=True, exist_ok=True)
    dist_info = f"{MODULE}-{VERSION}.dist-info"
    files = {
        f"{MODULE}.py": BACKEND.encode(),
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n".encode()
        ),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for arcname, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{arcname},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = folder / f"{MODULE}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for arcname, data in files.items():
            archive.writestr(arcname, data)
    return wheel


def fork_probe_project(root: Path, log: Path, **config: Any) -> Path:
    """A project built by the installed probe backend; ``config`` goes to fork-probe.json."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(
        f'[build-system]\nrequires = ["{NAME}"]\nbuild-backend = "{MODULE}"\n'
    )
    write_fork_probe_config(root, log, **config)
    return root


def write_fork_probe_config(root: Path, log: Path, **config: Any) -> None:
    (root / "fork-probe.json").write_text(json.dumps({"log": str(log), **config}))


def read_log(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
