"""nginx's consistent hash (``hash KEY consistent``), computed the same way in Python.

A model of ``ngx_http_upstream_update_chash`` and ``..._find_chash_point``
(nginx 1.22 to 1.29): each server named ``HOST:PORT`` gets ``160 * weight``
points, point i being ``crc32(HOST "\\0" PORT prev)`` where ``prev`` is the
previous point's value as 4 little-endian bytes (0 for the first); points are
sorted, duplicates dropped, and a key goes to the first point at or above
``crc32(key)``, wrapping around. The scale-out test checks this model against
the daemon each session really opened on, and docs/scale-out.md takes its
figures for scale-up and scale-down from it.
"""

from __future__ import annotations

import bisect
import zlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

POINTS_PER_WEIGHT = 160


class Ring:
    """The points of a set of upstream servers, by their names as configured."""

    def __init__(self, servers: Sequence[str]) -> None:
        points: dict[int, str] = {}
        ordered: list[tuple[int, str]] = []
        for server in servers:
            host, port = _split(server)
            base = host + b"\0" + port
            previous = 0
            for _ in range(POINTS_PER_WEIGHT):
                value = zlib.crc32(base + previous.to_bytes(4, "little"))
                ordered.append((value, server))
                previous = value
        # nginx sorts with qsort (not stable) and keeps the first of equal
        # hashes; equal 32-bit points are rare enough that ties do not matter.
        for value, server in sorted(ordered, key=lambda item: item[0]):
            points.setdefault(value, server)
        self.hashes = sorted(points)
        self.servers = [points[h] for h in self.hashes]

    def server(self, key: str) -> str:
        """The server a key goes to while every server is up."""
        index = bisect.bisect_left(self.hashes, zlib.crc32(key.encode()))
        return self.servers[index % len(self.hashes)]

    def server_without(self, key: str, down: Iterable[str]) -> str:
        """Where a key goes when the ``down`` servers refuse: the next point's server."""
        gone = set(down)
        index = bisect.bisect_left(self.hashes, zlib.crc32(key.encode()))
        for step in range(len(self.hashes)):
            server = self.servers[(index + step) % len(self.hashes)]
            if server not in gone:
                return server
        raise ValueError("every server is down")


def _split(server: str) -> tuple[bytes, bytes]:
    data = server.encode()
    if data[:5].lower() == b"unix:":
        return data[5:], b""
    host, sep, port = data.rpartition(b":")
    if sep and port.isdigit():
        return host, port
    return data, b""
