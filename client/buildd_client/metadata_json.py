"""Core metadata (``METADATA``/``PKG-INFO``) to its JSON-compatible form, as PEP 566 defines it.

PEP 566: keys are the field names lowercased with ``-`` turned into ``_``;
multiple-use fields become lists under that same key; ``keywords`` is split on
commas; the message body, when there is one, is the ``description``.
"""

from __future__ import annotations

import textwrap
from email.parser import Parser
from email.policy import compat32

__all__ = ["MULTIPLE_USE_FIELDS", "metadata_to_json"]

JSONValue = str | list[str]

# Fields that may appear several times (core metadata 2.4, plus the 1.1
# fields Requires, Provides and Obsoletes that old sdists still carry).
MULTIPLE_USE_FIELDS = frozenset(
    {
        "platform",
        "supported_platform",
        "classifier",
        "requires_dist",
        "requires_external",
        "project_url",
        "provides_extra",
        "provides_dist",
        "obsoletes_dist",
        "dynamic",
        "license_file",
        "requires",
        "provides",
        "obsoletes",
    }
)


def _key(field: str) -> str:
    return field.lower().replace("-", "_")


def _unfold(value: str) -> str:
    """Undo the RFC 822 continuation indent that writers put on multi-line fields.

    setuptools writes continuation lines with eight leading spaces (older
    versions with "       |" for Description); keep the text's own indent.
    """
    lines = value.replace("\r\n", "\n").split("\n")
    if len(lines) == 1:
        return lines[0].strip()
    rest = textwrap.dedent("\n".join(lines[1:])).split("\n")
    if all(line.startswith("|") for line in rest if line):
        rest = [line[1:] for line in rest]
    return "\n".join([lines[0].strip(), *rest]).rstrip()


def metadata_to_json(text: str | bytes) -> dict[str, JSONValue]:
    """Convert a core metadata file to a JSON-compatible dict (PEP 566).

    Keys keep the order of the file. Undecodable UTF-8 bytes are replaced.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    message = Parser(policy=compat32).parsestr(text)
    out: dict[str, JSONValue] = {}
    for field in message:
        key = _key(field)
        if key in out:
            # get_all() below already took every spelling of this field.
            continue
        values = [_unfold(str(v)) for v in message.get_all(field, [])]
        if key in MULTIPLE_USE_FIELDS:
            out[key] = values
        elif key == "keywords":
            out[key] = [word.strip() for word in values[-1].split(",") if word.strip()]
        else:
            # A single-use field given twice is malformed; the last one wins.
            out[key] = values[-1]
    body = message.get_payload()
    if isinstance(body, str) and body.strip():
        out["description"] = body
    return out
