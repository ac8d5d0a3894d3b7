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
