#!/usr/bin/env python3
"""Build the compatibility corpus through buildd and through pypa/build, and compare.

The full run (every project in compat/corpus.toml, from PyPI)::

    python compat/run.py --write-docs

For each project of the corpus it

1. downloads the pinned sdist into ``.cache/compat/sdists`` (once; SHA-256 checked);
2. in a new buildd session, asks for the metadata (``prepare_metadata_for_build_wheel``,
   or the daemon's fallback), then the wheel, of a freshly unpacked copy of the sdist;
3. in the same session builds the wheel again from the sdist file itself;
4. for projects marked ``editable``, builds a PEP 660 editable wheel of another
   unpacked copy, installs it into a fresh virtualenv and imports the module from
   outside the tree: it must come from the source tree;
5. builds the reference wheel with ``python -m build --wheel --installer uv`` from a
   third unpacked copy, against the same index as the daemon;
6. compares (see ``compare_wheels``, ``metadata_differences``, ``record_problems``).

It starts its own daemon (``python -m buildd_server``, which is what the
``buildd-server`` script runs) on a private socket under /tmp, with the same index
options, and stops it at the end; ``--daemon ADDRESS`` uses a running one instead.
Both frontends install with uv, cut off from the machine's pip and uv configuration.
The table goes to stdout, and to docs/compatibility.md with ``--write-docs``.
Exit status: 0 when every project passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime
import email.parser
import email.policy
import hashlib
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from packaging.tags import parse_tag
from packaging.utils import (
    InvalidSdistFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    # The dev venv runs 3.11+, so mypy's 3.10 view may not find tomli there.
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from buildd_client import Client, Session

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "compat" / "corpus.toml"
DEFAULT_CACHE = REPO / ".cache" / "compat"
DOCS = REPO / "docs" / "compatibility.md"
PYPI = "https://pypi.org/simple"
# Long enough for the slowest corpus build on a 2-core machine, many times over.
CALL_TIMEOUT = 1800.0
DAEMON_READY_TIMEOUT = 60.0
TAIL_LINES = 25

# Files whose bytes depend on the compiler run, not on the frontend: machine
# code (ELF, Mach-O, PE), static libraries and objects, and bytecode.
COMPILED_SUFFIXES = (".so", ".pyd", ".dylib", ".dll", ".a", ".o", ".lib", ".pyc")
_MAGIC = (
    b"\x7fELF",
    b"MZ",
    b"\xfe\xed\xfa\xce",
    b"\xfe\xed\xfa\xcf",
    b"\xce\xfa\xed\xfe",
    b"\xcf\xfa\xed\xfe",
    b"\xca\xfe\xba\xbe",
)
# PEP 770 software bills of materials inside a wheel.
_SBOM = re.compile(r"^[^/]+\.dist-info/sboms/[^/]+\.json$")
_SOURCE_URL = re.compile(r"path\+file://[^#\"\s]*")
# Hash algorithms a RECORD may use (PEP 376/427: sha256 or stronger).
_RECORD_HASHES = frozenset({"sha256", "sha384", "sha512", "sha3_256", "sha3_384", "sha3_512"})

_T = TypeVar("_T")


# ----------------------------------------------------------------- corpus --


@dataclass(frozen=True)
class Project:
    """One entry of compat/corpus.toml."""

    name: str
    version: str
    sha256: str
    backend: str
    editable: bool = False
    import_name: str | None = None
    fast: bool = False
    config_settings: Mapping[str, str] = field(default_factory=dict)
    note: str = ""

    @property
    def key(self) -> str:
        return str(canonicalize_name(self.name))


def load_corpus(path: Path = CORPUS) -> list[Project]:
    """The projects of the corpus file, validated."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    projects: list[Project] = []
    allowed = {
        "name",
        "version",
        "sha256",
        "backend",
        "editable",
        "import",
        "fast",
        "config_settings",
        "note",
    }
    for entry in data.get("project", []):
        unknown = set(entry) - allowed
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {sorted(unknown)} in {entry.get('name')!r}")
        project = Project(
            name=str(entry["name"]),
            version=str(entry["version"]),
            sha256=str(entry["sha256"]).lower(),
            backend=str(entry["backend"]),
            editable=bool(entry.get("editable", False)),
            import_name=entry.get("import"),
            fast=bool(entry.get("fast", False)),
            config_settings={str(k): str(v) for k, v in entry.get("config_settings", {}).items()},
            note=str(entry.get("note", "")),
        )
        if project.editable and not project.import_name:
            raise ValueError(f"{path}: {project.name} is editable but names no `import`")
        if len(project.sha256) != 64:
            raise ValueError(f"{path}: {project.name}: sha256 must be 64 hex digits")
        Version(project.version)  # raises on a version that is not PEP 440
        projects.append(project)
    keys = [p.key for p in projects]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{path}: a project is listed twice")
    return projects


# ---------------------------------------------------------------- sdists --


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_sdist_of(filename: str, project: Project) -> bool:
    if not filename.endswith(".tar.gz"):
        return False
    try:
        name, version = parse_sdist_filename(filename)
    except InvalidSdistFilename:
        return False
    return name == project.key and version == Version(project.version)


def fetch_sdist(project: Project, cache: Path = DEFAULT_CACHE, index_url: str = PYPI) -> Path:
    """The project's sdist in ``cache/sdists``, downloaded from the index's JSON API if missing.

    A cached file is used only when its SHA-256 is the pinned one, so after the
    first run no network is needed.
    """
    folder = cache / "sdists"
    if folder.is_dir():
        for candidate in sorted(folder.iterdir()):
            if _is_sdist_of(candidate.name, project) and _sha256_file(candidate) == project.sha256:
                return candidate
    page = index_url.rstrip("/") + f"/{project.key}/"
    request = urllib.request.Request(
        page, headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        listing = json.load(response)
    files = [f for f in listing.get("files", []) if _is_sdist_of(f["filename"], project)]
    if not files:
        raise LookupError(f"{page} lists no .tar.gz sdist of {project.name} {project.version}")
    chosen = files[0]
    expected = chosen.get("hashes", {}).get("sha256")
    if expected and expected != project.sha256:
        raise ValueError(
            f"{page}: {chosen['filename']} has sha256 {expected}, the corpus pins {project.sha256}"
        )
    filename = str(chosen["filename"])
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / filename
    scratch = folder / f".{filename}.{os.getpid()}.part"
    url = urllib.parse.urljoin(page, str(chosen["url"]))
    try:
        with urllib.request.urlopen(url, timeout=300) as response, scratch.open("wb") as out:
            shutil.copyfileobj(response, out)
        got = _sha256_file(scratch)
        if got != project.sha256:
            raise ValueError(f"{url}: downloaded sha256 {got}, the corpus pins {project.sha256}")
        os.replace(scratch, target)
    finally:
        scratch.unlink(missing_ok=True)
    return target


def unpack_sdist(sdist: Path, dest: Path) -> Path:
    """Extract ``sdist`` into a fresh ``dest``; return its single top-level folder."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    with tarfile.open(sdist) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(dest, filter="data")
        else:  # pragma: no cover - Python without PEP 706 filters
            for member in archive.getmembers():
                target = (dest / member.name).resolve()
                if not target.is_relative_to(dest.resolve()) or member.issym() or member.islnk():
                    raise ValueError(f"{sdist}: unsafe member {member.name!r}")
            archive.extractall(dest)
    roots = [p for p in dest.iterdir() if p.is_dir()]
    if len(roots) != 1:
        raise ValueError(f"{sdist}: expected one top-level folder, found {len(roots)}")
    return roots[0]


# ------------------------------------------------------------- comparing --


def is_compiled(name: str, data: bytes) -> bool:
    """Whether a wheel member is compiler output, whose bytes may differ between builds."""
    return name.endswith(COMPILED_SUFFIXES) or data.startswith(_MAGIC)


def normalise_member(name: str, data: bytes) -> bytes:
    """A member's bytes with what is irreproducible by design taken out.

    Only one kind of member needs it: a CycloneDX SBOM (PEP 770,
    ``.dist-info/sboms/*.json``; maturin writes one). By the CycloneDX spec its
    ``serialNumber`` is a fresh random UUID and ``metadata.timestamp`` the build
    time, and cargo names the package by the ``path+file://`` URL of the source
    tree, which is a different folder in every build. Those three are dropped
    or replaced; everything else, key order included, must be equal.
    """
    if not _SBOM.match(name):
        return data
    try:
        document = json.loads(data)
    except ValueError:
        return data
    if not isinstance(document, dict) or document.get("bomFormat") != "CycloneDX":
        return data
    document.pop("serialNumber", None)
    metadata = document.get("metadata")
    if isinstance(metadata, dict):
        metadata.pop("timestamp", None)
    text = _SOURCE_URL.sub("path+file://<source tree>", json.dumps(document, indent=1))
    return text.encode()


def read_wheel(path: Path) -> dict[str, bytes]:
    """Every file of a wheel (directory entries left out), by archive name."""
    with zipfile.ZipFile(path) as archive:
        return {
            info.filename: archive.read(info) for info in archive.infolist() if not info.is_dir()
        }


def dist_info_dir(names: Iterable[str]) -> str:
    """The wheel's single top-level ``.dist-info`` folder."""
    found = {n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")}
    if len(found) != 1:
        raise ValueError(f"expected one .dist-info folder, found {sorted(found)}")
    return found.pop()


def _headers(data: bytes) -> tuple[list[tuple[str, str]], str]:
    """A core-metadata or WHEEL file as (headers in order, body), line endings normalised."""
    text = data.decode("utf-8").replace("\r\n", "\n")
    message = email.parser.Parser(policy=email.policy.compat32).parsestr(text)
    headers = [(name.lower(), str(value)) for name, value in message.items()]
    payload = message.get_payload()
    return headers, payload if isinstance(payload, str) else ""


def metadata_differences(left: bytes, right: bytes, left_label: str, right_label: str) -> list[str]:
    """How two METADATA (or WHEEL) files differ, after the only normalisation we allow.

    Normalised: line endings (CRLF = LF) and the case of header names (RFC 822
    names are case-insensitive). Compared exactly: every header, its value, its
    position and multiplicity, and the body (the long description).
    """
    left_headers, left_body = _headers(left)
    right_headers, right_body = _headers(right)
    problems: list[str] = []
    if left_headers != right_headers:
        only_left = [h for h in left_headers if h not in right_headers]
        only_right = [h for h in right_headers if h not in left_headers]
        detail = []
        if only_left:
            detail.append(f"only in {left_label}: " + "; ".join(f"{k}: {v}" for k, v in only_left))
        if only_right:
            detail.append(
                f"only in {right_label}: " + "; ".join(f"{k}: {v}" for k, v in only_right)
            )
        if not detail:
            detail.append("same headers in a different order")
        problems.append("headers differ (" + " | ".join(detail) + ")")
    if left_body != right_body:
        problems.append(
            f"bodies differ ({len(left_body)} characters in {left_label}, "
            f"{len(right_body)} in {right_label})"
        )
    return problems


def record_problems(path: Path) -> list[str]:
    """Why a wheel's RECORD is not valid (empty when it is).

    Valid: exactly one row per file in the archive (``RECORD.jws``/``.p7s``
    signatures may be absent), no row for a missing file, every row but
    RECORD's own with a sha256-or-stronger urlsafe-base64 digest and the exact
    size; RECORD's own row without either. Also: the filename's tags are
    exactly the WHEEL file's ``Tag`` lines, and no member path is absolute or
    climbs out with ``..``.
    """
    problems: list[str] = []
    with zipfile.ZipFile(path) as archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        names = [i.filename for i in infos]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            problems.append(f"duplicate archive members: {duplicates}")
        files = {i.filename: archive.read(i) for i in infos}
    for name in names:
        if name.startswith("/") or ".." in name.split("/"):
            problems.append(f"unsafe member path {name!r}")
    try:
        dist_info = dist_info_dir(names)
    except ValueError as exc:
        return [*problems, str(exc)]
    record_name = f"{dist_info}/RECORD"
    if record_name not in files:
        return [*problems, f"{record_name} is missing"]
    rows = list(csv.reader(io.StringIO(files[record_name].decode("utf-8"))))
    listed: dict[str, int] = {}
    for number, row in enumerate(rows, 1):
        if not row:
            continue
        if len(row) != 3:
            problems.append(f"RECORD line {number} has {len(row)} fields: {row!r}")
            continue
        name, hash_field, size_field = row
        listed[name] = listed.get(name, 0) + 1
        if name == record_name:
            if hash_field or size_field:
                problems.append("RECORD's own row must have no hash and no size")
            continue
        if name not in files:
            problems.append(f"RECORD lists {name!r}, which the wheel lacks")
            continue
        algorithm, _, encoded = hash_field.partition("=")
        if algorithm not in _RECORD_HASHES:
            problems.append(f"RECORD row of {name!r} has hash {hash_field!r}")
        else:
            digest = hashlib.new(algorithm, files[name]).digest()
            expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            if encoded != expected:
                problems.append(f"RECORD hash of {name!r} is wrong")
        if size_field != str(len(files[name])):
            problems.append(
                f"RECORD size of {name!r} is {size_field!r}, the file has {len(files[name])} bytes"
            )
    twice = sorted(n for n, count in listed.items() if count > 1)
    if twice:
        problems.append(f"RECORD lists these more than once: {twice}")
    signatures = {f"{dist_info}/RECORD.jws", f"{dist_info}/RECORD.p7s"}
    unlisted = sorted(n for n in files if n not in listed and n not in signatures)
    if unlisted:
        problems.append(f"not in RECORD: {unlisted}")
    wheel_file = files.get(f"{dist_info}/WHEEL")
    if wheel_file is None:
        problems.append(f"{dist_info}/WHEEL is missing")
    else:
        headers, _ = _headers(wheel_file)
        declared = {value.strip() for key, value in headers if key == "tag"}
        expanded = {t for value in declared for t in map(str, parse_tag(value))}
        _, _, _, from_name = parse_wheel_filename(path.name)
        if {str(t) for t in from_name} != expanded:
            problems.append(
                f"filename tags {sorted(map(str, from_name))} are not WHEEL's Tag lines "
                f"{sorted(declared)}"
            )
    return problems


def compare_wheels(candidate: Path, reference: Path, label: str = "buildd") -> list[str]:
    """How ``candidate`` differs from ``reference``; empty when they are equal.

    Equal means: the same file name (so the same tags), the same member list,
    WHEEL and METADATA equal under ``metadata_differences``, and every other
    member byte-identical (after ``normalise_member``), except compiled members
    (``is_compiled``), whose bytes are expected to differ, and RECORD, which is
    validated on its own by ``record_problems`` (its digests of compiled members
    differ with them).
    """
    problems: list[str] = []
    if candidate.name != reference.name:
        problems.append(f"file name {candidate.name} != reference {reference.name}")
    ours, theirs = read_wheel(candidate), read_wheel(reference)
    missing = sorted(set(theirs) - set(ours))
    extra = sorted(set(ours) - set(theirs))
    if missing:
        problems.append(f"{label} wheel lacks {missing}")
    if extra:
        problems.append(f"{label} wheel has extra {extra}")
    try:
        dist_info = dist_info_dir(theirs)
    except ValueError as exc:
        return [*problems, f"reference: {exc}"]
    for name in sorted(set(ours) & set(theirs)):
        left, right = ours[name], theirs[name]
        if name in (f"{dist_info}/METADATA", f"{dist_info}/WHEEL"):
            for problem in metadata_differences(left, right, label, "reference"):
                problems.append(f"{name}: {problem}")
        elif name == f"{dist_info}/RECORD" or (
            is_compiled(name, left) and is_compiled(name, right)
        ):
            continue
        elif normalise_member(name, left) != normalise_member(name, right):
            problems.append(f"{name}: content differs ({len(left)} vs {len(right)} bytes)")
    return problems


def wheel_metadata(path: Path) -> bytes:
    files = read_wheel(path)
    return files[f"{dist_info_dir(files)}/METADATA"]


def wheel_generator(path: Path) -> str:
    files = read_wheel(path)
    headers, _ = _headers(files[f"{dist_info_dir(files)}/WHEEL"])
    return next((value.strip() for key, value in headers if key == "generator"), "")


# ------------------------------------------------------------ frontends --


@dataclass(frozen=True)
class IndexOptions:
    """Where both frontends get build requirements from."""

    index_url: str | None = PYPI
    find_links: tuple[str, ...] = ()
    no_index: bool = False

    def daemon_args(self) -> list[str]:
        args: list[str] = []
        if self.index_url and not self.no_index:
            args += ["--index-url", self.index_url]
        for link in self.find_links:
            args += ["--find-links", link]
        if self.no_index:
            args.append("--no-index")
        return args

    def uv_config(self) -> str:
        """A uv.toml saying the same. uv has no environment variable for --no-index."""
        lines = []
        if self.index_url and not self.no_index:
            lines.append(f"index-url = {json.dumps(self.index_url)}")
        if self.find_links:
            lines.append(f"find-links = [{', '.join(json.dumps(f) for f in self.find_links)}]")
        if self.no_index:
            lines.append("no-index = true")
        return "\n".join(lines) + "\n"

    def describe(self) -> str:
        parts = [] if self.no_index else [f"index {self.index_url}"]
        parts += [f"find-links {link}" for link in self.find_links]
        return ", ".join(parts) or "no index"


def tool_environment(index: IndexOptions, scratch: Path) -> dict[str, str]:
    """This process's environment for pypa/build and uv: no pip or uv configuration but ours.

    uv reads only ``scratch/uv.toml`` (written here from ``index``), pip reads
    no configuration file, and no ``PIP_*`` or ``UV_*`` variable gets through.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PIP_", "UV_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    scratch.mkdir(parents=True, exist_ok=True)
    config = scratch / "uv.toml"
    config.write_text(index.uv_config(), encoding="utf-8")
    env["UV_CONFIG_FILE"] = str(config)
    env["PIP_CONFIG_FILE"] = os.devnull
    cert = os.environ.get("PIP_CERT")
    if cert and "SSL_CERT_FILE" not in env:
        env["SSL_CERT_FILE"] = cert
    return env


def find_uv() -> str:
    try:
        import uv

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            raise RuntimeError("uv not found: install the project's dependencies") from None
        return found


class StepError(Exception):
    """A step of the check failed; the message says why, with the output's tail."""


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    kept = text.rstrip().splitlines()[-lines:]
    return "\n".join("    " + line for line in kept)


def run_logged(
    cmd: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> str:
    """Run ``cmd``, append its output to ``log``; StepError with the output's tail on failure."""
    done = subprocess.run(
        list(cmd),
        env=None if env is None else dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"$ {' '.join(cmd)}\n{done.stdout}{done.stderr}\n[exit {done.returncode}]\n")
    if done.returncode != 0:
        raise StepError(
            f"`{' '.join(cmd)}` exited with {done.returncode}:\n{_tail(done.stdout + done.stderr)}"
        )
    return done.stdout


def build_reference(
    tree: Path, outdir: Path, project: Project, index: IndexOptions, log: Path
) -> Path:
    """``python -m build --wheel --installer uv`` of ``tree``: the reference wheel."""
    shutil.rmtree(outdir, ignore_errors=True)
    cmd = [sys.executable, "-m", "build", "--wheel", "--installer", "uv", "--outdir", str(outdir)]
    for key, value in project.config_settings.items():
        cmd.append(f"--config-setting={key}={value}")
    cmd.append(str(tree))
    run_logged(cmd, log, env=tool_environment(index, outdir.parent))
    wheels = sorted(outdir.glob("*.whl"))
    if len(wheels) != 1:
        raise StepError(f"pypa/build left {len(wheels)} wheels in {outdir}")
    return wheels[0]


def check_import(
    wheel: Path, module: str, tree: Path, workdir: Path, index: IndexOptions, log: Path
) -> Path:
    """Install an editable wheel into a fresh virtualenv; ``module`` must import from ``tree``.

    Returns the file the import found.
    """
    venv = workdir / "editable-venv"
    shutil.rmtree(venv, ignore_errors=True)
    uv = find_uv()
    env = tool_environment(index, workdir)
    run_logged([uv, "venv", "--python", sys.executable, str(venv)], log, env=env)
    python = venv / "bin" / "python"
    run_logged(
        [uv, "pip", "install", "--python", str(python), "--no-deps", str(wheel)],
        log,
        env=env,
    )
    # -I: no PYTHONPATH, no user site, and not the current folder: only the
    # virtualenv's site-packages (and the .pth or finder the wheel put there).
    code = f"import json, {module}; print(json.dumps({module}.__file__))"
    out = run_logged([str(python), "-I", "-c", code], log, env=env, cwd=workdir)
    where = Path(json.loads(out.strip().splitlines()[-1])).resolve()
    if not where.is_relative_to(tree.resolve()):
        raise StepError(f"`import {module}` found {where}, outside the source tree {tree}")
    return where


# ---------------------------------------------------------------- daemon --


class Daemon:
    """A private ``buildd-server`` on a short Unix socket path, stopped on exit."""

    def __init__(self, index: IndexOptions, extra_args: Sequence[str] = ()) -> None:
        self.index = index
        self.extra_args = list(extra_args)
        # Unix socket paths are limited to 107 bytes: keep it short.
        self.root = Path(tempfile.mkdtemp(prefix="bdc-", dir="/tmp"))
        self.address = f"unix://{self.root / 's.sock'}"
        self.log_path = self.root / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "buildd_server",
            "--address",
            self.address,
            "--state-dir",
            str(self.root / "state"),
            "--log-format",
            "json",
            *self.index.daemon_args(),
            *self.extra_args,
        ]

    def start(self) -> Daemon:
        import grpc

        # This checkout's daemon, whether or not (or however) it is installed.
        env = dict(os.environ)
        paths = [str(REPO / "proto"), str(REPO / "client"), str(REPO / "server")]
        env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )
        deadline = time.monotonic() + DAEMON_READY_TIMEOUT
        with grpc.insecure_channel(self.address) as channel:
            ready = grpc.channel_ready_future(channel)
            while True:
                try:
                    ready.result(timeout=1.0)
                    break
                except grpc.FutureTimeoutError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(
                            f"the daemon did not start ({' '.join(self.command())}):\n"
                            f"{_tail(self.log())}"
                        ) from None
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.process is not None and self.exit_code is None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                self.exit_code = self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.exit_code = self.process.wait()
        return self.exit_code

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


# ----------------------------------------------------------------- check --


@dataclass
class ProjectResult:
    """What one project's check found."""

    project: Project
    metadata_equal: bool | None = None
    wheel_equal: bool | None = None
    # None: not asked for this project.
    editable: bool | None = None
    buildd_cold: float | None = None
    buildd_warm: float | None = None
    build_time: float | None = None
    generator: str = ""
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            not self.failures
            and bool(self.metadata_equal)
            and bool(self.wheel_equal)
            and (self.editable is not False)
            and (self.editable is not None or not self.project.editable)
        )


def _describe(exc: BaseException) -> str:
    from buildd_client import RequestFailed

    if isinstance(exc, RequestFailed):
        text = f"buildd {exc.kind_name}: {exc.message}"
        if exc.hook:
            text += f" (hook {exc.hook})"
        if exc.last_lines:
            text += "\n" + _tail("\n".join(exc.last_lines))
        return text
    if isinstance(exc, StepError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _step(result: ProjectResult, what: str, action: Callable[[], _T]) -> _T | None:
    """Run one step; a failure is recorded (with its reason) and the check goes on."""
    try:
        return action()
    except Exception as exc:
        result.failures.append(f"{what}: {_describe(exc)}")
        return None


def _single_artifact(
    session: Session, source: Path, kind: str, out: Path, project: Project
) -> Path:
    call = session.build(
        source,
        distributions=(kind,),
        output_directory=out,
        config_settings=project.config_settings or None,
        timeout=CALL_TIMEOUT,
    )
    artifacts = call.result().artifacts
    if len(artifacts) != 1:
        raise StepError(f"buildd returned {len(artifacts)} artifacts for one {kind}")
    path = Path(artifacts[0].path)
    if path.parent != out.resolve() or not path.is_file():
        raise StepError(f"buildd reported {path}, which is not a file in {out}")
    return path


def check_project(
    project: Project,
    client: Client,
    sdist: Path,
    workdir: Path,
    index: IndexOptions,
) -> ProjectResult:
    """Build ``project`` every way, compare, and say what differed and why."""
    result = ProjectResult(project)
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "run.log"
    settings = project.config_settings or None

    session = client.open_session(f"buildd-compat/{project.key}")
    prepared: bytes | None = None
    tree_wheel: Path | None = None
    sdist_wheel: Path | None = None
    try:
        tree = unpack_sdist(sdist, workdir / "buildd-src")
        started = time.perf_counter()
        metadata = _step(
            result,
            "buildd metadata",
            lambda: session.metadata(tree, config_settings=settings, timeout=CALL_TIMEOUT).result(),
        )
        if metadata is not None:
            prepared = metadata.metadata
            expected = f"{canonicalize_name(project.name)}-"
            if not str(canonicalize_name(metadata.dist_info_name)).startswith(expected):
                result.failures.append(
                    f"buildd metadata: .dist-info named {metadata.dist_info_name!r}"
                )
            on_disk = Path(metadata.dist_info_path) / "METADATA"
            if not on_disk.is_file() or on_disk.read_bytes() != prepared:
                result.failures.append(
                    f"buildd metadata: {on_disk} is missing or differs from the METADATA sent"
                )
        tree_wheel = _step(
            result,
            "buildd wheel from the unpacked sdist",
            lambda: _single_artifact(session, tree, "wheel", workdir / "buildd-tree", project),
        )
        if metadata is not None and tree_wheel is not None:
            result.buildd_cold = time.perf_counter() - started
        started = time.perf_counter()
        sdist_wheel = _step(
            result,
            "buildd wheel from the sdist file",
            lambda: _single_artifact(session, sdist, "wheel", workdir / "buildd-sdist", project),
        )
        if sdist_wheel is not None:
            result.buildd_warm = time.perf_counter() - started
        if project.editable:
            result.editable = _check_editable(result, session, sdist, workdir, index, log)
    finally:
        from buildd_client import RequestFailed

        try:
            session.close()
        except RequestFailed as exc:
            result.failures.append(f"closing the buildd session: {_describe(exc)}")

    reference_tree = unpack_sdist(sdist, workdir / "reference-src")
    started = time.perf_counter()
    reference = _step(
        result,
        "pypa/build wheel",
        lambda: build_reference(reference_tree, workdir / "reference", project, index, log),
    )
    if reference is not None:
        result.build_time = time.perf_counter() - started
        result.generator = wheel_generator(reference)

    _compare(result, prepared, tree_wheel, sdist_wheel, reference)
    return result


def _check_editable(
    result: ProjectResult,
    session: Session,
    sdist: Path,
    workdir: Path,
    index: IndexOptions,
    log: Path,
) -> bool:
    project = result.project
    assert project.import_name is not None
    tree = unpack_sdist(sdist, workdir / "editable-src")
    wheel = _step(
        result,
        "buildd editable wheel",
        lambda: _single_artifact(session, tree, "editable", workdir / "editable", project),
    )
    if wheel is None:
        return False
    problems = record_problems(wheel)
    for problem in problems:
        result.failures.append(f"editable wheel {wheel.name}: {problem}")
    module = project.import_name
    imported = _step(
        result,
        f"installing the editable wheel and importing {module}",
        lambda: check_import(wheel, module, tree, workdir, index, log),
    )
    return imported is not None and not problems


def _compare(
    result: ProjectResult,
    prepared: bytes | None,
    tree_wheel: Path | None,
    sdist_wheel: Path | None,
    reference: Path | None,
) -> None:
    failures = result.failures
    wheels = {
        "buildd wheel from the unpacked sdist": tree_wheel,
        "buildd wheel from the sdist file": sdist_wheel,
        "pypa/build wheel": reference,
    }
    valid = True
    for label, wheel in wheels.items():
        if wheel is None:
            continue
        for problem in record_problems(wheel):
            valid = False
            failures.append(f"{label} {wheel.name}: {problem}")

    if reference is not None and tree_wheel is not None and sdist_wheel is not None:
        differences = [
            f"{label}: {problem}"
            for label, wheel in list(wheels.items())[:2]
            if wheel is not None
            for problem in compare_wheels(wheel, reference)
        ]
        failures.extend(differences)
        result.wheel_equal = valid and not differences
    else:
        result.wheel_equal = False

    if prepared is not None and tree_wheel is not None and reference is not None:
        differences = [
            f"prepared metadata vs {label}: {problem}"
            for label, wheel in (("buildd wheel", tree_wheel), ("pypa/build wheel", reference))
            for problem in metadata_differences(prepared, wheel_metadata(wheel), "prepared", label)
        ]
        failures.extend(differences)
        result.metadata_equal = not differences
    else:
        result.metadata_equal = False


# ----------------------------------------------------------------- report --


def _mark(value: bool | None) -> str:
    if value is None:
        return "n/a"
    return "yes" if value else "**NO**"


def _seconds(value: float | None) -> str:
    return "failed" if value is None else f"{value:.1f}"


def markdown_table(results: Sequence[ProjectResult]) -> str:
    lines = [
        "| project | version | backend | built by (WHEEL Generator) | metadata equal "
        "| wheel equal | editable | buildd time, new session (s) | buildd time, warm (s) "
        "| pypa/build time (s) |",
        "|---|---|---|---|---|---|---|---:|---:|---:|",
    ]
    for r in results:
        p = r.project
        lines.append(
            f"| {p.name} | {p.version} | {p.backend} | {r.generator or '?'} "
            f"| {_mark(r.metadata_equal)} "
            f"| {_mark(r.wheel_equal)} | {_mark(r.editable)} | {_seconds(r.buildd_cold)} "
            f"| {_seconds(r.buildd_warm)} | {_seconds(r.build_time)} |"
        )
    return "\n".join(lines) + "\n"


def failures_section(results: Sequence[ProjectResult]) -> str:
    failed = [r for r in results if r.failures or not r.passed]
    if not failed:
        return "None: every project passed every check.\n"
    parts = []
    for r in failed:
        reasons = r.failures or ["a check did not run (see the table)"]
        body = "\n".join(f"- {reason}" for reason in reasons)
        parts.append(f"### {r.project.name} {r.project.version}\n\n```text\n{body}\n```\n")
    return "\n".join(parts)


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    uv = subprocess.run(
        [find_uv(), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return (
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"buildd {of('buildd')}, pypa/build {of('build')}, {uv or 'uv'}"
    )


DOC_TEMPLATE = """\
# Compatibility

<!-- Generated by `python compat/run.py --write-docs`; edit compat/run.py, not this file. -->

buildd must build real projects exactly as pypa/build, the reference frontend,
does. The corpus ([compat/corpus.toml](../compat/corpus.toml)) pins {count} real
sdists from PyPI (name, version, SHA-256) over {backends} build backends.

Run it (after `pip install -e '.[dev]'`; it needs PyPI for the build requirements):

```sh
python compat/run.py --write-docs       # all projects; rewrites this file
python compat/run.py --only tomli       # one project
python -m pytest tests/compat -m corpus # the same checks as pytest tests
```

The fast subset ({fast}) is not marked `corpus`, so `bash .ci/run` runs it too:
both frontends then install only from the test wheelhouse (`--no-index`), and
no network is needed once the three sdists are in `.cache/compat`.

## Results

{table}
Last run: {date}, {versions}, build requirements from {index}.

- **metadata equal**: the METADATA that buildd's `prepare_metadata_for_build_wheel`
  (or its fallback, a wheel) returned equals the METADATA inside buildd's wheel
  and inside pypa/build's wheel.
- **wheel equal**: buildd's wheel from the unpacked sdist and buildd's wheel
  from the sdist file each equal pypa/build's wheel, and all three have a
  valid RECORD.
- **editable**: a PEP 660 editable wheel built by buildd installs into a fresh
  virtualenv, and `import` there finds the module in the source tree.
- **buildd time, new session**: metadata then wheel, in a new session (so
  including creating and filling the build environment); **warm**: the wheel
  again from the sdist file in the same session, reusing that environment;
  **pypa/build time**: `python -m build --wheel --installer uv`, which makes a
  new environment every time. Both install with uv, so the difference is
  environment reuse, not the installer. A new session costs more than one
  pypa/build run for small projects: it also prepares the metadata (two more
  hook processes, `get_requires_for_build_wheel` and
  `prepare_metadata_for_build_wheel`), and buildd compiles the bytecode of the
  environments it fills, once, so that later hook calls start faster. One run
  on a 2-core machine shared with other work: the numbers are indicative.

## Failures

{failures}
## What is compared, and what is not

- The wheel's file name (so its tags), its list of members, and every member
  byte for byte, except:
  - compiled members (`{suffixes}`, or content starting with an ELF, Mach-O
    or PE header): the compiler is run twice, and its output's bytes may
    differ; their names, and so their ABI tags, are still compared;
  - `RECORD`, whose rows for compiled members differ with them: it is
    validated on its own instead (one row per member, sha256-or-stronger
    digests and sizes that match, its own row empty, nothing listed that is
    missing), for every wheel, buildd's and pypa/build's;
  - `METADATA` and `WHEEL`, compared as header lists (names case-insensitive as
    in RFC 822; values, order and repetition exact) plus the body; line endings
    normalised;
  - CycloneDX SBOMs (PEP 770, `.dist-info/sboms/*.json`, written by maturin):
    compared without `serialNumber` (a random UUID by the CycloneDX spec) and
    `metadata.timestamp` (the build time), and with cargo's `path+file://` URL
    of the source tree replaced by a placeholder (every build, by either
    frontend, unpacks the sdist into a different folder). Any other change in
    them counts.

  Nothing else is normalised or ignored.
- The filename's tags must be exactly the `Tag` lines of `WHEEL`.
- Timestamps inside the zip are not compared (no frontend fixes them here).

Both frontends use the same interpreter, the same index options, uv as the
installer, and no pip or uv configuration of the machine: the daemon passes its
`--index-url`/`--find-links`/`--no-index` to `uv pip install --no-config`;
`python -m build` runs with no `PIP_*` or `UV_*` variable, `PIP_CONFIG_FILE=/dev/null`
and `UV_CONFIG_FILE` naming a uv.toml that holds the same three options.
Each build gets its own freshly unpacked copy of the sdist, so that no build
reuses another's leftovers (`build/`, `target/`, `.mesonpy-*`).

## The projects

{notes}
"""


def render_docs(results: Sequence[ProjectResult], projects: Sequence[Project], index: str) -> str:
    notes = "\n".join(f"- **{p.name} {p.version}** ({p.backend}): {p.note}" for p in projects)
    # The backend's name is the label's first word ("setuptools, legacy (...)").
    backends = {p.backend.split()[0].rstrip(",") for p in projects}
    return DOC_TEMPLATE.format(
        count=len(projects),
        backends=len(backends),
        fast=", ".join(p.name for p in projects if p.fast),
        table=markdown_table(results),
        date=datetime.date.today().isoformat(),
        versions=_versions(),
        index=index,
        failures=failures_section(results),
        suffixes="`, `".join(COMPILED_SUFFIXES),
        notes=notes,
    )


# ------------------------------------------------------------------- main --


def run_corpus(
    projects: Sequence[Project],
    address: str,
    workroot: Path,
    index: IndexOptions,
    cache: Path = DEFAULT_CACHE,
    download_index: str = PYPI,
    progress: Callable[[str], None] | None = None,
) -> list[ProjectResult]:
    """Check every project against the daemon at ``address``, one session each."""
    from buildd_client import Client

    results: list[ProjectResult] = []
    with Client(address, autostart=False) as client:
        for project in projects:
            if progress:
                progress(f"== {project.name} {project.version} ({project.backend})")
            try:
                sdist = fetch_sdist(project, cache, download_index)
            except Exception as exc:
                result = ProjectResult(project, failures=[f"download: {_describe(exc)}"])
            else:
                try:
                    result = check_project(project, client, sdist, workroot / project.key, index)
                except Exception as exc:  # e.g. the daemon is gone: report, go on
                    result = ProjectResult(project, failures=[f"check: {_describe(exc)}"])
            results.append(result)
            if progress:
                verdict = "passed" if result.passed else "FAILED"
                progress(f"   {verdict}" + "".join(f"\n   - {f}" for f in result.failures))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME")
    parser.add_argument("--fast", action="store_true", help="only the fast subset")
    parser.add_argument("--write-docs", action="store_true", help=f"also write {DOCS}")
    parser.add_argument("--index-url", default=PYPI, help="index for build requirements")
    parser.add_argument("--find-links", action="append", default=[], metavar="PATH_OR_URL")
    parser.add_argument("--no-index", action="store_true")
    parser.add_argument("--download-index", default=PYPI, help="index to fetch the sdists from")
    parser.add_argument("--daemon", metavar="ADDRESS", help="use this daemon, do not start one")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--workdir", type=Path, help="keep every build here (default: temporary)")
    args = parser.parse_args(argv)

    projects = load_corpus()
    if args.only:
        wanted = {canonicalize_name(n) for n in args.only}
        unknown = wanted - {p.key for p in projects}
        if unknown:
            parser.error(f"not in the corpus: {', '.join(sorted(unknown))}")
        projects = [p for p in projects if p.key in wanted]
    if args.fast:
        projects = [p for p in projects if p.fast]
    index = IndexOptions(
        index_url=None if args.no_index else args.index_url,
        find_links=tuple(
            str(Path(f).resolve()) if Path(f).exists() else f for f in args.find_links
        ),
        no_index=args.no_index,
    )

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    workroot = args.workdir or Path(tempfile.mkdtemp(prefix="buildd-compat-"))
    daemon: Daemon | None = None
    try:
        if args.daemon:
            address = args.daemon
        else:
            daemon = Daemon(index).start()
            address = daemon.address
            progress(f"daemon: {' '.join(daemon.command())}")
        results = run_corpus(
            projects, address, workroot, index, args.cache, args.download_index, progress
        )
    finally:
        if daemon is not None:
            code = daemon.stop()
            if code not in (0, None):
                progress(f"the daemon exited with {code}:\n{_tail(daemon.log())}")
            daemon.cleanup()
        if args.workdir is None:
            shutil.rmtree(workroot, ignore_errors=True)

    print(markdown_table(results))
    failed = [r for r in results if not r.passed]
    if failed:
        print(failures_section(results))
    if args.write_docs:
        DOCS.write_text(render_docs(results, projects, index.describe()), encoding="utf-8")
        progress(f"wrote {DOCS}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
