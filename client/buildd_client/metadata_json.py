"""Core metadata (``METADATA``/``PKG-INFO``) as JSON, as ``python -m build --metadata`` prints it.

pypa/build (1.4 and later) prints ``packaging.metadata.parse_email``'s raw
form with ``json.dumps(..., ensure_ascii=False, indent=2)``: keys are the
field names of ``packaging.metadata.RawMetadata`` (``classifiers``,
``platforms``, ``project_urls`` as an object, ``keywords`` as a list, the
body as ``description``), and fields packaging cannot parse are left out.
This is that object, formatted the same way. Only the key order differs by
design: packaging collects the fields through a frozenset, so pypa/build's
order changes from one run to the next (string hashing is randomised per
process); here the keys follow ``RawMetadata``'s own order (the core metadata
specification's), the same every time. ``packaging`` is imported only here,
so the rest of the client needs nothing but grpcio and protobuf.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["metadata_json", "metadata_to_json"]


def metadata_to_json(metadata: bytes | str) -> dict[str, Any]:
    """The JSON-compatible dict of a core metadata file, keys in ``RawMetadata`` order."""
    from packaging.metadata import RawMetadata, parse_email

    raw, _unparsed = parse_email(metadata)
    fields: dict[str, Any] = dict(raw)
    order = {key: index for index, key in enumerate(RawMetadata.__annotations__)}
    return {key: fields[key] for key in sorted(fields, key=lambda k: (order.get(k, len(order)), k))}


def metadata_json(metadata: bytes | str) -> str:
    """The text to print for this file (without the final newline ``print`` adds)."""
    return json.dumps(metadata_to_json(metadata), ensure_ascii=False, indent=2)
