"""What containment costs per hook call: none, pid and sandbox, plain and forked.

Runs the daemon's own hook path in-process (``Hooks`` -> ``HookRunner`` ->
the fork server or ``run_process``) on one warm setuptools environment,
``get_requires_for_build_wheel`` of a small project, ``--calls`` times per
(mode, path), interleaved so that a slow moment of the machine hits every
variant alike. Prints medians and the difference to ``none``.

    python benchmarks/containment.py                 # 40 calls per variant
    python benchmarks/containment.py --calls 100 --json out.json

Needs bubblewrap for pid and sandbox, and the test wheelhouse (or network)
for setuptools: ``BUILDD_TEST_WHEELHOUSE`` is used when set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for part in ("proto", "client", "server", "tests"):
    sys.path.insert(0, str(REPO / part))

from buildd_server import containment, zygotes  # noqa: E402
from buildd_server.config import InstallerOptions  # noqa: E402
from buildd_server.environments import EnvironmentFactory  # noqa: E402
from buildd_server.hooks import Hooks  # noqa: E402
from buildd_server.installers import select_installer  # noqa: E402
from buildd_server.interpreters import resolve_interpreter  # noqa: E402
from buildd_server.keys import make_key  # noqa: E402
from buildd_server.processes import run_process  # noqa: E402
from buildd_server.sources import load_project  # noqa: E402
from support.projects import setuptools_project  # noqa: E402

MODES: tuple[containment.Mode, ...] = ("none", "pid", "sandbox")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40, help="timed calls per variant")
    parser.add_argument("--json", type=Path, help="write the raw samples here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bd-bench-contain-", dir="/tmp"))
    state = work / "state"
    state.mkdir(mode=0o700)
    wheelhouse = os.environ.get("BUILDD_TEST_WHEELHOUSE")
    options = (
        InstallerOptions(no_index=True, find_links=(wheelhouse,))
        if wheelhouse
        else InstallerOptions()
    )
    policy = containment.detect("auto", state_dir=state, remote_possible=True)
    if policy.remote != "sandbox":
        print(f"bubblewrap sandbox unavailable: {policy.notes}", file=sys.stderr)
        return 2
    factory = EnvironmentFactory(state, select_installer("uv"), options)
    interpreter = resolve_interpreter("")
    key = make_key(interpreter, ["setuptools>=61"], "uv", options, origin="benchmark")
    # One environment per mode: a fork server serves one containment only.
    envs = {
        mode: factory.create(
            key, interpreter, state / "envs", emit=lambda e: None, cancel=threading.Event()
        )
        for mode in MODES
    }
    project = load_project(str(setuptools_project(state / "src" / "demo")))
    samples: dict[str, list[float]] = {}

    def call(mode: containment.Mode, forked: bool) -> float:
        containment.configure(
            containment.Policy(
                choice="auto",
                local=mode,
                remote=mode,
                bwrap=policy.bwrap,
                zygote_prefix=policy.zygote_prefix,
                state_dir=state,
            )
        )
        env = envs[mode]
        env.fork_server = forked
        hooks = Hooks(env, project, timeout=60, cancel=threading.Event(), emit=lambda e: None)
        with containment.caller(remote=False):
            started = time.perf_counter()
            hooks.get_requires("wheel", {})
            return time.perf_counter() - started

    def start_only(mode: containment.Mode) -> float:
        """One ``true``: what the mode adds to starting any process."""
        containment.configure(dataclasses.replace(policy, local=mode, remote=mode))
        confine = containment.Confinement(environment=envs[mode].path)
        with containment.caller(remote=False):
            started = time.perf_counter()
            run_process(
                ["/bin/true"],
                env=dict(os.environ),
                confine=confine,
                label="true",
                hook="true",
                emit=lambda e: None,
                cancel=threading.Event(),
                cwd=str(project.root),
            )
            return time.perf_counter() - started

    variants = [(m, f) for m in MODES for f in (False, True) if not (m == "sandbox" and f)]
    for mode, forked in variants:  # warm-up: starts the fork server of each mode
        for _ in range(3):
            call(mode, forked)
            if forked:
                zygote = zygotes.REGISTRY.get(envs[mode].id)
                if zygote is not None:
                    zygote.await_ready(threading.Event(), 60)
    for _ in range(args.calls):
        for mode, forked in variants:
            name = f"{mode}/{'fork' if forked else 'plain'}"
            samples.setdefault(name, []).append(call(mode, forked))
        for mode in MODES:
            samples.setdefault(f"{mode}/true", []).append(start_only(mode))
    for env in envs.values():
        factory.destroy(env)
    print(
        f"get_requires_for_build_wheel of setuptools (plain, fork) and /bin/true (true), "
        f"{args.calls} calls each (ms)"
    )
    print(f"  {'variant':<14} {'min':>8} {'median':>8}   {'extra (min)':>11} {'(median)':>9}")
    for name, values in samples.items():
        path = name.split("/")[1]
        base = samples[f"none/{path}"]
        low, mid = min(values), statistics.median(values)
        extra_low = (low - min(base)) * 1000
        extra_mid = (mid - statistics.median(base)) * 1000
        figures = f"{low * 1000:8.1f} {mid * 1000:8.1f}   {extra_low:+11.1f} {extra_mid:+9.1f}"
        print(f"  {name:<14} {figures}")
    if args.json:
        args.json.write_text(json.dumps(samples, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
