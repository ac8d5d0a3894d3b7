#!/usr/bin/env python3
"""Build the compatibility corpus through buildd and through pypa/build, and compare.

The full run (every project of compat/corpus.toml, on every interpreter it lists)::

    python compat/run.py --write-docs

It starts its own daemon (``python -m buildd_server``, which is what the
``buildd-server`` script runs) on a private socket under /tmp, with the run's
index options, opens one session, and checks each project on each interpreter
in that session (compat/check.py says how); ``--daemon ADDRESS`` uses a running
daemon instead. The table goes to stdout, and to docs/compatibility.md with
``--write-docs``. Exit status: 0 when every project passed on every interpreter
its Requires-Python admits, 1 otherwise.

The package, by role: corpus.py (the projects, their sdists), interpreters.py
(which Pythons, a pypa/build on each), frontends.py (pypa/build and uv, cut off
from the machine's configuration), daemon.py (the private daemon), check.py
(one project on one interpreter), compare.py (what "equal" means), report.py
(the markdown).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: `python compat/run.py` puts compat/ first on sys.path,
    # not the repository root that holds the package.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from packaging.utils import canonicalize_name

from compat.check import ProjectResult, check_project, describe
from compat.corpus import (
    DEFAULT_CACHE,
    PYPI,
    REPO,
    Project,
    fetch_sdist,
    load_corpus_file,
)
from compat.daemon import Daemon
from compat.frontends import IndexOptions, StepError, tail
from compat.interpreters import Interpreter, prepare_interpreter
from compat.report import failures_section, markdown_table, render_docs

DOCS = REPO / "docs" / "compatibility.md"


def prepare_interpreters(
    labels: Sequence[str], index: IndexOptions, workroot: Path
) -> tuple[dict[str, Interpreter], dict[str, str]]:
    """(the interpreters ready to use, why each other one is not) by label."""
    ready: dict[str, Interpreter] = {}
    missing: dict[str, str] = {}
    for label in labels:
        try:
            ready[label] = prepare_interpreter(label, index, workroot)
        except StepError as exc:
            missing[label] = str(exc)
    return ready, missing


def run_corpus(
    projects: Sequence[Project],
    interpreters: Sequence[Interpreter],
    address: str,
    workroot: Path,
    index: IndexOptions,
    cache: Path = DEFAULT_CACHE,
    download_index: str = PYPI,
    progress: Callable[[str], None] | None = None,
) -> list[ProjectResult]:
    """Check every project on every interpreter against the daemon at ``address``.

    One session for the whole run: the interpreters of a project side by side.
    """
    from buildd_client import Client

    results: list[ProjectResult] = []
    with Client(address, autostart=False) as client:
        session = client.open_session("buildd-compat")
        try:
            for project in projects:
                if progress:
                    progress(f"== {project.name} {project.version} ({project.backend})")
                try:
                    sdist: Path | None = fetch_sdist(project, cache, download_index)
                    problem = ""
                except Exception as exc:
                    sdist, problem = None, f"download: {describe(exc)}"
                for interpreter in interpreters:
                    label = interpreter.label
                    if sdist is None:
                        result = ProjectResult(project, label, failures=[problem])
                    else:
                        workdir = workroot / project.key / label
                        try:
                            result = check_project(
                                project, session, address, interpreter, sdist, workdir, index
                            )
                        except Exception as exc:  # e.g. the daemon is gone: report, go on
                            result = ProjectResult(project, label, failures=[describe(exc)])
                    results.append(result)
                    if progress:
                        progress(_line(result))
        finally:
            session.close()
    return results


def _line(result: ProjectResult) -> str:
    where = f"   Python {result.interpreter}: "
    if result.skipped:
        return where + f"skipped ({result.skipped})"
    verdict = "passed" if result.passed else "FAILED"
    return where + verdict + "".join(f"\n   - {f}" for f in result.failures)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME")
    parser.add_argument("--fast", action="store_true", help="only the fast subset")
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="X.Y",
        help="only these interpreters (default: the corpus's)",
    )
    parser.add_argument("--write-docs", action="store_true", help=f"also write {DOCS}")
    parser.add_argument("--index-url", default=PYPI, help="index for build requirements")
    parser.add_argument("--find-links", action="append", default=[], metavar="PATH_OR_URL")
    parser.add_argument("--no-index", action="store_true")
    parser.add_argument("--download-index", default=PYPI, help="index to fetch the sdists from")
    parser.add_argument("--daemon", metavar="ADDRESS", help="use this daemon, do not start one")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--workdir", type=Path, help="keep every build here (default: temporary)")
    args = parser.parse_args(argv)

    projects, labels = load_corpus_file()
    if args.only:
        wanted = {canonicalize_name(n) for n in args.only}
        unknown = wanted - {p.key for p in projects}
        if unknown:
            parser.error(f"not in the corpus: {', '.join(sorted(unknown))}")
        projects = [p for p in projects if p.key in wanted]
    if args.fast:
        projects = [p for p in projects if p.fast]
    if args.python:
        labels = tuple(args.python)
    index = IndexOptions(
        index_url=None if args.no_index else args.index_url,
        find_links=tuple(
            str(Path(f).resolve()) if Path(f).exists() else f for f in args.find_links
        ),
        no_index=args.no_index,
    )

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    workroot = args.workdir or Path(tempfile.mkdtemp(prefix="buildd-compat-"))
    workroot.mkdir(parents=True, exist_ok=True)
    daemon: Daemon | None = None
    try:
        interpreters, missing = prepare_interpreters(labels, index, workroot)
        for label, why in missing.items():
            progress(f"Python {label}: {why}")
        if missing:
            return 1
        if args.daemon:
            address = args.daemon
        else:
            daemon = Daemon(index).start()
            address = daemon.address
            progress(f"daemon: {' '.join(daemon.command())}")
        results = run_corpus(
            projects,
            list(interpreters.values()),
            address,
            workroot,
            index,
            args.cache,
            args.download_index,
            progress,
        )
    finally:
        if daemon is not None:
            code = daemon.stop()
            if code not in (0, None):
                progress(f"the daemon exited with {code}:\n{tail(daemon.log())}")
            daemon.cleanup()
        if args.workdir is None:
            shutil.rmtree(workroot, ignore_errors=True)

    print(markdown_table(results, projects, list(interpreters)))
    failed = [r for r in results if not r.ok]
    if failed:
        print(failures_section(results))
    if args.write_docs:
        DOCS.write_text(
            render_docs(results, projects, interpreters, index.describe()), encoding="utf-8"
        )
        progress(f"wrote {DOCS}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
