"""One row of the summary table, with the section that explains it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Figure:
    id: str
    figure: str
    goal: str
    measured: str
    met: bool | None
    details: str = ""

    @classmethod
    def not_measured(cls, id_: str, figure: str, goal: str, reason: str) -> Figure:
        """A figure whose feature is missing: the reason, never a number."""
        return cls(id_, figure, goal, f"not measured: {reason}", False)

    @classmethod
    def failed(cls, id_: str, figure: str, goal: str, error: str) -> Figure:
        """A figure whose run failed (the error is in the report's "Failed runs")."""
        first = error.strip().splitlines()[0] if error.strip() else "unknown error"
        return cls(id_, figure, goal, f"failed: {first[:200]}", False)


# Every figure the harness knows, in report order: (what, goal). A figure
# function gives its own, more precise title; this is for a figure whose run
# failed before it could say more.
CATALOGUE: dict[str, tuple[str, str]] = {
    "P1": ("warm `buildd-client build --wheel` vs `uv build --wheel`", "at least 4x faster"),
    "P1b": ("the same vs `python -m build --wheel`", "at least 12x faster"),
    "P2": ("warm metadata, unchanged tree: round trip", "at most 5 ms at the median"),
    "P2b": ("warm metadata after a file changed, minus the hooks", "at most 15 ms at the median"),
    "P3": ("first build in a new session, the store holding the key", "at least 2.0x faster"),
    "P3b": ("the same with the key new to the store", "at least 1.0x (no slower than uv)"),
    "P4": ("concurrent clients", "no errors; throughput at least 0.8 of the CPU-bound limit"),
    "P4b": (
        "concurrent WatchMetadata streams plus the P4 load",
        "0 errors; P4's p90 no more than 1.2x without the watches",
    ),
    "P5": ("idle daemon RSS; growth over sessions", "at most 60 MiB; at most 5 MiB"),
    "P5b": ("daemon RSS with store instances on disk", "at most 70 MiB"),
    "P6": (
        "incremental native rebuild in a new session vs `uv build --wheel`",
        "at least 5x faster, untouched objects not recompiled",
    ),
    "P7": ("save of pyproject.toml to the pushed WatchMetadata event", "at most 150 ms"),
    "P8": ("added latency of an nginx proxy per call", "under 2 ms at the median"),
}
FIGURES = tuple(CATALOGUE)
