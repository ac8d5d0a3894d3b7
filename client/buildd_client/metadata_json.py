"""Core metadata (``METADATA``/``PKG-INFO``) as JSON, exactly as ``python -m build --metadata``.

pypa/build (1.4 and later) prints ``packaging.metadata.parse_email``'s raw
form with ``json.dumps(..., ensure_ascii=False, indent=2)``: keys are the
field names of ``packaging.metadata.RawMetadata`` (``classifiers``,
``platforms``, ``project_urls`` as an object, ``keywords`` as a list, the
body as ``description``), and fields packaging cannot parse are left out.
The same ``packaging`` gives the same bytes. ``packaging`` is imported only
here, so the rest of the client needs nothing but grpcio and protobuf.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["metadata_json", "metadata_to_json"]


def metadata_to_json(metadata: bytes | str) -> dict[str, Any]:
    """The JSON-compatible dict of a core metadata file (``RawMetadata``)."""
    from packaging.metadata import parse_email

    raw, _unparsed = parse_email(metadata)
    return dict(raw)


def metadata_json(metadata: bytes | str) -> str:
    """The text ``python -m build --metadata`` prints for this file, without its newline."""
    return json.dumps(metadata_to_json(metadata), ensure_ascii=False, indent=2)
