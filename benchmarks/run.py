"""buildd's benchmark harness: buildd side by side with uv, pypa/build and pip.

One command, run from the repository root in the venv that has buildd installed
(plus pypa/build: ``pip install build``)::

    python benchmarks/run.py [--rounds N] [--projects NAME ...] [--only P1,P2,...] [--out FILE]

It downloads the pinned sdists of ``benchmarks/projects.toml`` once into
``benchmarks/.cache``, starts its own daemon on a private socket under /tmp
with its own state folder, measures the figures and prints a Markdown report,
also written to ``--out`` (default ``benchmarks/results/latest.md``) with every
raw sample next to it as JSON. ``benchmarks/README.md`` explains each figure
and how the medians and ratios are computed; the code is the package
``buildd_bench`` next to this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder is sys.path[0] already; imported from elsewhere
# (``python -c 'import runpy; ...'``), it may not be.
HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from buildd_bench.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
