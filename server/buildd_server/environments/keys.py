"""The environment key: what makes two build environments interchangeable.

Requirements are normalised with ``packaging`` and their markers evaluated for
the target interpreter, so that spelling differences ("Setuptools >= 40.8" vs
"setuptools>=40.8.0") do not split environments, while anything that could
change what the installer picks does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from packaging.markers import InvalidMarker, UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name, canonicalize_version
from packaging.version import InvalidVersion, Version

from buildd_server.errors import InvalidProject

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from packaging.specifiers import Specifier

    from buildd_server.config import InstallerOptions
    from buildd_server.environments.interpreters import Interpreter

INSTALLERS = ("uv", "pip")
# Bumped whenever the canonical JSON changes shape, so that old and new ids
# never collide for different meanings.
_KEY_FORMAT = 1
# Operators whose meaning survives padding the release with zeros (PEP 440
# compares 40.8 and 40.8.0 as equal); "~=" and wildcards count components.
_PADDABLE = frozenset({"==", "!=", "<=", ">=", "<", ">"})


@dataclass(frozen=True)
class EnvKey:
    """The canonical identity of a build environment."""

    interpreter: tuple[str, str, str, str]
    requirements: tuple[str, ...]
    installer: str
    installer_options: tuple[tuple[str, str], ...]
    isolation: str = "isolated"

    @property
    def id(self) -> str:
        """16 hex digits naming this key, the same in every process and run."""
        canonical = json.dumps(
            {
                "format": _KEY_FORMAT,
                "interpreter": list(self.interpreter),
                "requirements": list(self.requirements),
                "installer": self.installer,
                "installer_options": [list(pair) for pair in self.installer_options],
                "isolation": self.isolation,
            },
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
        )
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]

    def with_requirements(self, more: Iterable[str]) -> EnvKey:
        """This key plus already normalised requirements (e.g. the dynamic ones)."""
        merged = tuple(sorted(set(self.requirements).union(more)))
        return dataclasses.replace(self, requirements=merged)


def normalize_requirements(
    reqs: Iterable[str], markers: Mapping[str, str], *, origin: str, path: str = ""
) -> tuple[str, ...]:
    """Canonical, unique, sorted requirement strings for one interpreter.

    ``markers`` is the interpreter's marker environment; a requirement whose
    marker is false there is dropped, a true marker is dropped from the string.
    ``origin`` names where the strings come from, for error messages;
    ``path`` is the file at fault, if any.
    """
    # extra="": build requirements are never installed for an extra, so an
    # `extra == "x"` marker (flit_core's dynamic requirements) is simply false.
    environment = {**markers, "extra": ""}
    found: set[str] = set()
    for text in reqs:
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise InvalidProject(
                f"{origin}: invalid requirement {text!r}: {exc}", path=path
            ) from exc
        if req.marker is not None:
            try:
                wanted = req.marker.evaluate(environment)
            except (InvalidMarker, UndefinedComparison, UndefinedEnvironmentName) as exc:
                raise InvalidProject(
                    f"{origin}: requirement {text!r}: marker cannot be evaluated: {exc}",
                    path=path,
                ) from exc
            if not wanted:
                continue
        found.add(_canonical(req))
    return tuple(sorted(found))


def _canonical(req: Requirement) -> str:
    name = canonicalize_name(req.name)
    extras = sorted({canonicalize_name(extra) for extra in req.extras})
    head = f"{name}[{','.join(extras)}]" if extras else name
    if req.url:
        return f"{head} @ {req.url}"
    specs = sorted({_canonical_specifier(spec) for spec in req.specifier})
    return head + ",".join(specs)


def _canonical_specifier(spec: Specifier) -> str:
    op, version = spec.operator, spec.version
    if op == "===":
        return str(spec)  # arbitrary equality compares the raw string
    wildcard = version.endswith(".*")
    base = version[:-2] if wildcard else version
    try:
        parsed = Version(base)
    except InvalidVersion:  # pragma: no cover - Specifier already validated it
        return str(spec)
    if op in _PADDABLE and not wildcard:
        text = canonicalize_version(parsed, strip_trailing_zero=True)
    else:
        text = str(parsed)
    return f"{op}{text}.*" if wildcard else f"{op}{text}"


def make_key(
    interpreter: Interpreter,
    requirements: Iterable[str],
    installer: str,
    options: InstallerOptions,
    *,
    origin: str,
    path: str = "",
) -> EnvKey:
    """The key of an environment for ``requirements`` on ``interpreter``."""
    if installer not in INSTALLERS:
        # A programming error: the service resolves "auto" before keying.
        raise ValueError(f"installer must be one of {INSTALLERS}, not {installer!r}")
    return EnvKey(
        interpreter=interpreter.identity(),
        requirements=normalize_requirements(
            requirements, interpreter.marker_environment(), origin=origin, path=path
        ),
        installer=installer,
        installer_options=options.as_key_part(),
    )
