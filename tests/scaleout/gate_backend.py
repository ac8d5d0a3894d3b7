"""The probe backend, with a ``build_wheel`` that waits at a gate.

Copied next to ``probe_backend.py`` into a project's ``_probe/`` folder. When
the project's ``gate.json`` names files, ``build_wheel`` creates ``started``
and then waits until ``go`` exists (at most 120 s), so a test can hold builds
running for exactly as long as it needs: while it kills a daemon, say.
"""

from __future__ import annotations

import json
import os
import time

import probe_backend
from probe_backend import (  # noqa: F401  (the other hooks, as they are)
    build_editable,
    build_sdist,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
    prepare_metadata_for_build_wheel,
)

_WAIT = 120.0


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    path = os.path.join(os.getcwd(), "gate.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            gate = json.load(handle)
        with open(gate["started"], "w", encoding="utf-8") as handle:
            handle.write(str(os.getpid()))
        deadline = time.monotonic() + _WAIT
        while not os.path.exists(gate["go"]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gate {gate['go']} did not open within {_WAIT} s")
            time.sleep(0.02)
    return probe_backend.build_wheel(wheel_directory, config_settings, metadata_directory)
