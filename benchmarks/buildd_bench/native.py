"""Incremental native rebuilds in a new session: figure P6.

Two small real projects kept in ``benchmarks/fixtures/`` (five C files each):
one built by scikit-build-core (CMake + Ninja), one by meson-python (Meson +
Ninja), the build tools coming from PyPI into the build environment. Each
tool gets its own copy of each tree and keeps it between its runs, with a
persistent build folder (config setting ``build-dir``): first an untimed full
build, then per round one C source is edited (untimed) and the wheel rebuilt,
timed. For buildd every rebuild is the first build of a new session. Ninja's
own output ("[i/n] Building C object ...") in each run's log tells which
objects were compiled.
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .builds import created_environment
from .context import Context
from .figure import Figure
from .settings import HERE, log
from .stats import fmt_s, fmt_x, median
from .tools import (
    COLD,
    PIP,
    PYBUILD,
    TOOL_LABELS,
    UV,
    BuilddCold,
    PipWheel,
    PyBuild,
    Sample,
    Tool,
    UvBuild,
    build_once,
    find_uv,
)

FIXTURES = HERE / "fixtures"
# Relative to the project: both backends keep it inside the tree.
BUILD_DIR = "build/bench"
CONFIG = {"build-dir": BUILD_DIR}
# The one source edited before each rebuild, and how.
TOUCHED = "src/gamma.c"
SALT = re.compile(r"^#define GAMMA_SALT \d+$", re.MULTILINE)
GOAL = 5.0

# Ninja's status lines for a compile step, from CMake's and Meson's generators:
# "[3/6] Building C object CMakeFiles/_bench_native.dir/src/gamma.c.o",
# "[4/6] Compiling C object _bench_native.cpython-311-x86_64-linux-gnu.so.p/src_gamma.c.o".
# buildd-client -v: "[   1.2s] build_wheel finished in 1.1s" after every hook.
HOOK_FINISHED = re.compile(r"\] (\w+) finished in ([0-9.]+)s$", re.MULTILINE)
NINJA_COMPILE = re.compile(
    r"^\s*\[\d+/\d+\] (?:Building|Compiling) (?:C|CXX|C\+\+) object (\S+)", re.MULTILINE
)


@dataclass(frozen=True)
class NativeFixture:
    name: str
    backend: str
    sources: tuple[str, ...] = (
        "src/module.c",
        "src/alpha.c",
        "src/beta.c",
        "src/gamma.c",
        "src/delta.c",
    )

    @property
    def path(self) -> Path:
        return FIXTURES / self.name


NATIVE_FIXTURES = (
    NativeFixture("native-cmake", "scikit-build-core + CMake + Ninja"),
    NativeFixture("native-meson", "meson-python + Meson + Ninja"),
)


@dataclass
class NativeRun:
    """One rebuild: the timed sample and what Ninja says it compiled."""

    sample: Sample
    compiled: list[str] = field(default_factory=list)
    touched_compiled: bool = False
    untouched_compiled: list[str] = field(default_factory=list)
    created_environment: bool | None = None
    # buildd only: the hooks' own time, as the daemon reported it (its phases).
    hook_seconds: float | None = None


def compiled_objects(log_text: str) -> list[str]:
    """The objects Ninja compiled, as it names them in its status lines."""
    return NINJA_COMPILE.findall(log_text)


def object_source(sources: tuple[str, ...], obj: str) -> str:
    """The source an object was compiled from; the object's own name when none matches.

    CMake names it ``<target>.dir/src/gamma.c.o``, Meson ``<target>.p/src_gamma.c.o``.
    """
    for source in sources:
        if obj.endswith((f"/{source}.o", f"/{source.replace('/', '_')}.o")):
            return source
    return obj


def classify(fixture: NativeFixture, compiled: list[str]) -> tuple[bool, list[str]]:
    """(was the touched source compiled, the untouched sources that were)."""
    sources = [object_source(fixture.sources, obj) for obj in compiled]
    return TOUCHED in sources, [s for s in sources if s != TOUCHED]


def set_salt(tree: Path, salt: int) -> None:
    """Edit the touched source: a different constant, so its object must be rebuilt."""
    path = tree / TOUCHED
    text = path.read_text(encoding="utf-8")
    new, count = SALT.subn(f"#define GAMMA_SALT {salt}", text)
    if count != 1:
        raise RuntimeError(f"{path} has no '#define GAMMA_SALT N' line to edit")
    path.write_text(new, encoding="utf-8")


def fresh_fixture(fixture: NativeFixture, target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        fixture.path, target, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info")
    )
    return target


def examine(fixture: NativeFixture, sample: Sample) -> NativeRun:
    try:
        text = Path(sample.log_path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    compiled = compiled_objects(text)
    touched, untouched = classify(fixture, compiled)
    run = NativeRun(sample, compiled, touched, untouched)
    if sample.tool == COLD:
        run.created_environment = created_environment(sample)
        run.hook_seconds = sum(float(s) for _, s in HOOK_FINISHED.findall(text))
    return run


def figure_p6(ctx: Context) -> Figure:
    """A scikit-build-core and a meson-python project rebuilt after one C file changed."""
    tools: list[Tool] = [
        BuilddCold(ctx.daemon),
        UvBuild(find_uv()),
        PyBuild(),
        PipWheel(verbose=True),
    ]
    rounds = ctx.args.p6_rounds
    runs: dict[tuple[str, str], list[NativeRun]] = {}
    broken: set[tuple[str, str]] = set()
    for fixture in NATIVE_FIXTURES:
        trees = {
            tool.id: fresh_fixture(fixture, ctx.ws.root / "work" / f"p6-{tool.id}" / fixture.name)
            for tool in tools
        }
        for tool in tools:
            log(f"P6: first (full, untimed) build of {fixture.name} with {TOOL_LABELS[tool.id]}")
            first = build_once(tool, ctx.ws, trees[tool.id], fixture.name, 0, CONFIG)
            if not first.ok:
                ctx.fail(f"P6 first build, {fixture.name}, {TOOL_LABELS[tool.id]}", first.error)
                broken.add((fixture.name, tool.id))
        for round_ in range(1, rounds + 1):
            shift = (round_ - 1) % len(tools)
            for tool in tools[shift:] + tools[:shift]:
                if (fixture.name, tool.id) in broken:
                    continue
                set_salt(trees[tool.id], round_)
                sample = build_once(tool, ctx.ws, trees[tool.id], fixture.name, round_, CONFIG)
                ctx.samples.append(sample)
                run = examine(fixture, sample)
                runs.setdefault((fixture.name, tool.id), []).append(run)
                state = f"{sample.seconds:.3f}s" if sample.ok else "FAILED"
                log(
                    f"P6 round {round_}/{rounds} {fixture.name} {tool.id:12} {state}, "
                    f"compiled {len(run.compiled)} (untouched {len(run.untouched_compiled)})"
                )
    return _p6_figure(ctx, tools, runs)


def _median_time(runs: list[NativeRun]) -> float:
    return median([r.sample.seconds for r in runs if r.sample.ok])


def _p6_figure(
    ctx: Context, tools: list[Tool], runs: dict[tuple[str, str], list[NativeRun]]
) -> Figure:
    ratios: dict[str, float] = {}
    buildd_clean = True
    head = ["project", "backend"]
    for tool in tools:
        head += [f"{TOOL_LABELS[tool.id]} s", f"{TOOL_LABELS[tool.id]} compiled"]
    head += ["uv / buildd", "build / buildd", "pip / buildd"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    raw: dict[str, Any] = {}
    for fixture in NATIVE_FIXTURES:
        cells = [fixture.name, fixture.backend]
        for tool in tools:
            mine = runs.get((fixture.name, tool.id), [])
            ok = [r for r in mine if r.sample.ok]
            failed = len(mine) - len(ok)
            cells.append(fmt_s(_median_time(mine)) + (f" ({failed} failed)" if failed else ""))
            if ok:
                untouched = max(len(r.untouched_compiled) for r in ok)
                touched = sum(1 for r in ok if r.touched_compiled)
                cells.append(
                    f"{median([len(r.compiled) for r in ok]):.0f} of {len(fixture.sources)} "
                    f"(untouched: at most {untouched}; touched seen {touched}/{len(ok)})"
                )
            else:
                cells.append("n/a")
            raw[f"{fixture.name}/{tool.id}"] = [
                {**asdict(r), "sample": asdict(r.sample)} for r in mine
            ]
        buildd = _median_time(runs.get((fixture.name, COLD), []))
        for other in (UV, PYBUILD, PIP):
            ratio = _median_time(runs.get((fixture.name, other), [])) / buildd
            cells.append(fmt_x(ratio))
            if other == UV:
                ratios[fixture.name] = ratio
        mine = [r for r in runs.get((fixture.name, COLD), []) if r.sample.ok]
        if not mine or any(r.untouched_compiled or not r.touched_compiled for r in mine):
            buildd_clean = False
        lines.append("| " + " | ".join(cells) + " |")
    ctx.raw["P6"] = raw
    buildd_runs = [r for f in NATIVE_FIXTURES for r in runs.get((f.name, COLD), [])]
    created = sum(1 for r in buildd_runs if r.created_environment)
    hooks = []
    for f in NATIVE_FIXTURES:
        own = [r.hook_seconds or 0.0 for r in runs.get((f.name, COLD), []) if r.sample.ok]
        hooks.append(f"{f.name} {fmt_s(median(own))} s")
    details = "\n".join(
        [
            f"Median wall time of {ctx.args.p6_rounds} rebuilds per tool and project, each "
            f"after `{TOUCHED}` was edited (untimed) in the tool's own copy of the tree, "
            f"with `-C build-dir={BUILD_DIR}` kept from the tool's previous build (an untimed "
            "full build came first). buildd: `buildd-client -v build --wheel` as the first "
            "build of a new session; pip wheel with `-v` so that the backend's output shows. "
            "*compiled*: the objects Ninja compiled (median), from its `[i/n] Building C "
            "object` / `Compiling C object` lines in the run's log.",
            "",
            *lines,
            "",
            f"buildd's new sessions created an environment in {created} of "
            f"{len(buildd_runs)} rebuilds (0: the store's environment, at the same path, "
            "was reused every time). Of buildd's time, the hooks themselves took (median, "
            f"as the daemon reports them): {', '.join(hooks)}.",
        ]
    )
    measured = "; ".join(f"{name} {fmt_x(r)}" for name, r in ratios.items())
    measured += "; buildd recompiled " + (
        "only the touched source" if buildd_clean else "more than the touched source"
    )
    values = list(ratios.values())
    met = None if any(math.isnan(v) for v in values) else min(values) >= GOAL and buildd_clean
    return Figure(
        "P6",
        "incremental native rebuild in a new session (scikit-build-core and meson-python, "
        "persistent `build-dir`, one C source touched) vs `uv build --wheel` with the same "
        "settings",
        "at least 5x faster on both, and Ninja's log shows untouched objects were not recompiled",
        measured,
        met,
        details,
    )
