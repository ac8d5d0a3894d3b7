"""Comparing two wheels, and checking one wheel's RECORD: what "equal" means here.

See ``compare_wheels`` and ``record_problems``; docs/compatibility.md lists
what is normalised (compiled members, SBOM serial numbers and times) and why.
"""

from __future__ import annotations

import base64
import csv
import email.parser
import email.policy
import hashlib
import io
import json
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

from packaging.tags import parse_tag
from packaging.utils import parse_wheel_filename

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
# The build configuration numpy's meson build writes (numpy/__config__.py).
_MESON_CONFIG = re.compile(r"^[^/]+/__config__\.py$")
_CONFIG_PYTHON = re.compile(rb'("Python Information": \{\s*"path": r")[^"]*(")')
_CONFIG_DEP_ID = re.compile(rb'"name": "dep\d+"')
# Hash algorithms a RECORD may use (PEP 376/427: sha256 or stronger).
_RECORD_HASHES = frozenset({"sha256", "sha384", "sha512", "sha3_256", "sha3_384", "sha3_512"})


def is_compiled(name: str, data: bytes) -> bool:
    """Whether a wheel member is compiler output, whose bytes may differ between builds."""
    return name.endswith(COMPILED_SUFFIXES) or data.startswith(_MAGIC)


def normalise_member(name: str, data: bytes) -> bytes:
    """A member's bytes with what is irreproducible by design taken out.

    Two kinds of member need it. A CycloneDX SBOM (PEP 770,
    ``.dist-info/sboms/*.json``; maturin writes one): by the CycloneDX spec its
    ``serialNumber`` is a fresh random UUID and ``metadata.timestamp`` the build
    time, and cargo names the package by the ``path+file://`` URL of the source
    tree, which is a different folder in every build. Those three are dropped
    or replaced; everything else, key order included, must be equal. And
    numpy's ``__config__.py`` (its meson build's record of itself): it names
    the build environment's interpreter (every frontend makes its own
    environment, at its own path) and, for a dependency meson did not find
    (BLAS here), ``dep`` followed by a Python object id, which changes with
    every run. Both are replaced by placeholders.
    """
    if _MESON_CONFIG.match(name) and b'"Python Information"' in data:
        data = _CONFIG_PYTHON.sub(rb"\1<build environment>/bin/python\2", data)
        return _CONFIG_DEP_ID.sub(b'"name": "dep<object id>"', data)
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


def metadata_json_differences(ours: str, theirs: str) -> list[str]:
    """How ``buildd-client metadata --json`` differs from ``python -m build --metadata``.

    Equal means: the same JSON object (keys, values, list order), printed the
    same way (``json.dumps(..., ensure_ascii=False, indent=2)`` and a newline).
    Key order alone is not compared: pypa/build's changes from run to run
    (packaging collects the fields through a frozenset of randomised hashes).
    """
    try:
        mine, reference = json.loads(ours), json.loads(theirs)
    except ValueError as exc:
        return [f"not JSON: {exc}"]
    if not isinstance(mine, dict) or not isinstance(reference, dict):
        return ["not a JSON object"]
    problems = []
    for key in sorted(set(mine) | set(reference)):
        if key not in mine:
            problems.append(f"{key!r} missing (pypa/build has {reference[key]!r:.100})")
        elif key not in reference:
            problems.append(f"{key!r} extra ({mine[key]!r:.100}; pypa/build has none)")
        elif mine[key] != reference[key]:
            problems.append(f"{key!r} is {mine[key]!r:.100}, pypa/build's {reference[key]!r:.100}")
    if not problems:
        # The same object: the text must then be exactly pypa/build's, in our key order.
        expected = json.dumps({k: reference[k] for k in mine}, ensure_ascii=False, indent=2)
        if ours != expected + "\n":
            problems.append("the same object, printed differently (indent, escapes or newline)")
    return problems
