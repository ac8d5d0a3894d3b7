"""The Markdown report: machine, tools, summary table, one section per figure, failures."""

from __future__ import annotations

import datetime

from .builds import BUILD_FIGURES, BuildMatrix
from .context import Context
from .figure import Figure
from .tools import TOOL_LABELS


def markdown_report(
    ctx: Context,
    *,
    machine_info: list[tuple[str, str]],
    other_cpu: tuple[float, float],
    figures: list[Figure],
    matrix: BuildMatrix | None,
    versions: list[tuple[str, str]],
    started: datetime.datetime,
    seconds: float,
) -> str:
    out: list[str] = [
        "# buildd benchmarks",
        "",
        f"Run {started.strftime('%Y-%m-%d %H:%M UTC')}, {seconds / 60:.1f} min: "
        f"`python benchmarks/run.py {' '.join(ctx.args.argv)}`".rstrip()
        + ".",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine_info),
        f"| CPU used by other processes during the run | {other_cpu[0]:.0f} s "
        f"({other_cpu[1]:.0%} of all cores) |",
        "",
        *(
            [
                f"**The machine was busy**: other processes used {other_cpu[1]:.0%} of its "
                "cores during the run, so every tool ran slower and noisier than on an idle "
                "machine; the ratios suffer less than the absolute times, but compare them "
                "with care.",
                "",
            ]
            if other_cpu[1] > 0.1
            else []
        ),
        "## Tools",
        "",
        "| tool | version |",
        "|---|---|",
        *(f"| {k} | `{v}` |" for k, v in versions),
    ]
    if ctx.env_packages:
        out += [
            "",
            "Build backends, as installed in buildd's warm environments (the other tools "
            "resolve the same `[build-system].requires` from the same index in their own "
            "temporary environments):",
            "",
            "| project | backend | environment |",
            "|---|---|---|",
        ]
        for project in ctx.projects:
            packages = ctx.env_packages.get(project.id)
            if packages:
                listed = ", ".join(p for p in packages if not p.lower().startswith("pip=="))
                out.append(f"| {project.id} | {project.backend} | {listed} |")
    out += [
        "",
        "## Summary",
        "",
        "| id | figure | goal | measured | reached |",
        "|---|---|---|---|---|",
    ]
    for f in figures:
        reached = "n/a" if f.met is None else ("yes" if f.met else "**no**")
        if f.measured.startswith(("not measured", "failed")):
            reached = "**no**"
        out.append(f"| {f.id} | {f.figure} | {f.goal} | {f.measured} | {reached} |")
    if matrix is not None:
        out += matrix.section()
    for f in figures:
        if f.details and f.id in BUILD_FIGURES:
            out += ["", f"{f.id}: {f.details}"]
    for f in figures:
        if f.details and f.id not in BUILD_FIGURES:
            out += ["", f"## {f.id}: {f.figure}", "", f.details]
    if "daemon_rss_kib_at_end" in ctx.raw:
        out += [
            "",
            "VmRSS of the benchmark's own daemon after all its figures: "
            f"{ctx.raw['daemon_rss_kib_at_end'] / 1024:.1f} MiB.",
        ]
    failed = [s for s in ctx.samples if not s.ok]
    if failed or ctx.failures:
        out += ["", "## Failed runs", ""]
        for s in failed:
            indented = "\n".join("    " + line for line in s.error.splitlines())
            out += [f"- round {s.round}, {s.project}, {TOOL_LABELS[s.tool]}:", "", indented, ""]
        for what, error in ctx.failures:
            indented = "\n".join("    " + line for line in error.splitlines()[-30:])
            out += [f"- {what}:", "", indented, ""]
    return "\n".join(out) + "\n"
