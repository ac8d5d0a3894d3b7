"""A PEP 517 backend that records evidence of how it was called.

Copied into probe projects as ``_probe/probe_backend.py`` and loaded through
``backend-path``, so it needs no installation and its environment key holds no
requirements. Every hook call appends one JSON line to the file named in
``probe.json`` (in the project root) with the hook, pid, ``sys.prefix``, start
and end times, cwd, and what it saw of its environment. It writes real wheels
and sdists so that the daemon's whole path is exercised.

``probe.json`` fields: ``log`` (path of the JSON-lines file), ``name``,
``version``, ``hold`` (seconds each hook stays running, to widen the window in
which two calls could overlap), ``requires`` (dynamic requirements returned by
``get_requires_for_build_*``), ``fail`` (hook name that raises),
``check_prefix`` (``build_wheel`` fails unless ``prepare_metadata`` of the same
source ran under the same ``sys.prefix``: the shape of uv issue 14269),
``start_log`` (a second JSON-lines file that gets hook, pid, ``sys.prefix`` and
start time as each hook *starts*, so calls killed mid-hook are seen too).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import io
import json
import os
import sys
import tarfile
import time
import zipfile

_ROOT = os.getcwd()


def _host_pid():
    """This process's pid as the machine sees it.

    In a PID namespace of its own (the daemon's containment) os.getpid() is
    the namespace's number; /proc, when it is the machine's, knows both.
    """
    try:
        return int(os.readlink("/proc/self"))
    except (OSError, ValueError):
        return os.getpid()


def _config():
    with open(os.path.join(_ROOT, "probe.json"), encoding="utf-8") as handle:
        return json.load(handle)


def _record(hook, started, **extra):
    config = _config()
    inherited = _INHERITED.pop(hook, None)
    entry = {
        "hook": hook,
        "pid": _host_pid(),
        "prefix": sys.prefix,
        "executable": sys.executable,
        "start": started,
        "end": time.time(),
        "cwd": os.getcwd(),
        "root": _ROOT,
        "pythonpath": os.environ.get("PYTHONPATH"),
        "virtual_env": os.environ.get("VIRTUAL_ENV"),
        "path0": os.environ.get("PATH", "").split(os.pathsep)[0],
        "no_user_site": bool(sys.flags.no_user_site) or os.environ.get("PYTHONNOUSERSITE") == "1",
        "stdin_eof": _stdin_is_eof(),
        # What a previous hook call set in its own environment: None unless
        # two calls shared one process.
        "inherited_marker": inherited,
        # Which instance ran the call: paths are stable (the store reuses a
        # slot's path for a new instance), the marker's id is not.
        "instance": _instance_id(),
    }
    entry.update(extra)
    _append(config["log"], entry)


def _instance_id():
    try:
        with open(os.path.join(sys.prefix, "buildd-env.json"), encoding="utf-8") as handle:
            return json.load(handle).get("id")
    except (OSError, ValueError):
        return None


def _append(path, entry):
    with open(path, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(json.dumps(entry) + "\n")
        fcntl.flock(handle, fcntl.LOCK_UN)


def _stdin_is_eof():
    try:
        return sys.stdin is None or os.read(0, 1) == b""
    except OSError:
        return True


_INHERITED = {}


def _enter(hook):
    started = time.time()
    config = _config()
    if config.get("start_log"):
        # Written before the hold: a call killed mid-hook leaves this line only.
        _append(config["start_log"], {"hook": hook, "pid": _host_pid(), "prefix": sys.prefix, "instance": _instance_id(), "start": started})
    _INHERITED[hook] = os.environ.get("BUILDD_PROBE_MARKER")
    print(f"probe: {hook} starting in {sys.prefix} pid {_host_pid()}", flush=True)
    # Leaks into the next call only if the daemon reused this process.
    os.environ["BUILDD_PROBE_MARKER"] = hook
    hold = float(config.get("hold", 0))
    if hold:
        time.sleep(hold)
    if config.get("fail") == hook:
        raise RuntimeError(f"probe asked to fail in {hook}")
    return started, config


def _dist_name(config):
    return config.get("name", "probe").replace("-", "_")


def _metadata(config):
    return (
        "Metadata-Version: 2.1\n"
        f"Name: {config.get('name', 'probe')}\n"
        f"Version: {config.get('version', '1.0')}\n"
        "Summary: probe project\n"
    )


def _write_dist_info(directory, config):
    name = f"{_dist_name(config)}-{config.get('version', '1.0')}.dist-info"
    os.makedirs(os.path.join(directory, name), exist_ok=True)
    with open(os.path.join(directory, name, "METADATA"), "w", encoding="utf-8") as handle:
        handle.write(_metadata(config))
    with open(os.path.join(directory, name, "PREFIX"), "w", encoding="utf-8") as handle:
        handle.write(sys.prefix)
    return name


def get_requires_for_build_wheel(config_settings=None):
    started, config = _enter("get_requires_for_build_wheel")
    _record("get_requires_for_build_wheel", started, config_settings=config_settings)
    return list(config.get("requires", []))


def get_requires_for_build_sdist(config_settings=None):
    started, config = _enter("get_requires_for_build_sdist")
    _record("get_requires_for_build_sdist", started, config_settings=config_settings)
    return list(config.get("requires", []))


def get_requires_for_build_editable(config_settings=None):
    started, config = _enter("get_requires_for_build_editable")
    _record("get_requires_for_build_editable", started, config_settings=config_settings)
    return list(config.get("requires", []))


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    started, config = _enter("prepare_metadata_for_build_wheel")
    name = _write_dist_info(metadata_directory, config)
    _record("prepare_metadata_for_build_wheel", started, config_settings=config_settings)
    return name


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    started, config = _enter("build_wheel")
    if config.get("check_prefix") and metadata_directory:
        # PEP 517: metadata_directory is the .dist-info folder prepare_metadata made.
        with open(os.path.join(metadata_directory, "PREFIX"), encoding="utf-8") as fh:
            recorded = fh.read()
        if recorded != sys.prefix or not os.path.isdir(recorded):
            raise RuntimeError(f"metadata prepared in {recorded}, wheel built in {sys.prefix}")
    filename = _write_wheel(wheel_directory, config)
    _record(
        "build_wheel",
        started,
        config_settings=config_settings,
        metadata_directory=metadata_directory,
    )
    return filename


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    started, config = _enter("build_editable")
    filename = _write_wheel(wheel_directory, config, editable=True)
    _record("build_editable", started, metadata_directory=metadata_directory)
    return filename


def build_sdist(sdist_directory, config_settings=None):
    started, config = _enter("build_sdist")
    base = f"{_dist_name(config)}-{config.get('version', '1.0')}"
    path = os.path.join(sdist_directory, base + ".tar.gz")
    with tarfile.open(path, "w:gz") as tar:
        for name in ("pyproject.toml", "probe.json", "_probe/probe_backend.py"):
            tar.add(os.path.join(_ROOT, name), arcname=f"{base}/{name}")
        info = tarfile.TarInfo(f"{base}/PKG-INFO")
        data = _metadata(config).encode()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    _record("build_sdist", started)
    return os.path.basename(path)


def _write_wheel(directory, config, editable=False):
    name, version = _dist_name(config), config.get("version", "1.0")
    filename = f"{name}-{version}-py3-none-any.whl"
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{dist_info}/METADATA": _metadata(config).encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: probe\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    if editable:
        files[f"_{name}_editable.pth"] = (_ROOT + "\n").encode()
    else:
        files[f"{name}/__init__.py"] = f"VERSION = {version!r}\n".encode()
    record = []
    for arcname, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{arcname},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(os.path.join(directory, filename), "w") as archive:
        for arcname, data in files.items():
            archive.writestr(arcname, data)
    return filename
