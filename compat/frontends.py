"""The reference frontend and the tools around it, cut off from the machine's configuration.

pypa/build (``python -m build --installer uv``) builds the reference wheel and
prints the reference ``--metadata`` JSON, run by the interpreter under test
(interpreters.py); uv makes the virtualenv an editable wheel is tried in. Both
see only the index options given here: no pip.conf, uv.toml or ``PIP_*``/``UV_*``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .corpus import PYPI, Project

TAIL_LINES = 25


@dataclass(frozen=True)
class IndexOptions:
    """Where both frontends get build requirements from."""

    index_url: str | None = PYPI
    find_links: tuple[str, ...] = ()
    no_index: bool = False

    def daemon_args(self) -> list[str]:
        args: list[str] = []
        if self.index_url and not self.no_index:
            args += ["--index-url", self.index_url]
        for link in self.find_links:
            args += ["--find-links", link]
        if self.no_index:
            args.append("--no-index")
        return args

    def uv_config(self) -> str:
        """A uv.toml saying the same. uv has no environment variable for --no-index."""
        lines = []
        if self.index_url and not self.no_index:
            lines.append(f"index-url = {json.dumps(self.index_url)}")
        if self.find_links:
            lines.append(f"find-links = [{', '.join(json.dumps(f) for f in self.find_links)}]")
        if self.no_index:
            lines.append("no-index = true")
        return "\n".join(lines) + "\n"

    def describe(self) -> str:
        parts = [] if self.no_index else [f"index {self.index_url}"]
        parts += [f"find-links {link}" for link in self.find_links]
        return ", ".join(parts) or "no index"


def tool_environment(index: IndexOptions, scratch: Path) -> dict[str, str]:
    """This process's environment for pypa/build and uv: no pip or uv configuration but ours.

    uv reads only ``scratch/uv.toml`` (written here from ``index``), pip reads
    no configuration file, and no ``PIP_*`` or ``UV_*`` variable gets through.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PIP_", "UV_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    scratch.mkdir(parents=True, exist_ok=True)
    config = scratch / "uv.toml"
    config.write_text(index.uv_config(), encoding="utf-8")
    env["UV_CONFIG_FILE"] = str(config)
    env["PIP_CONFIG_FILE"] = os.devnull
    cert = os.environ.get("PIP_CERT")
    if cert and "SSL_CERT_FILE" not in env:
        env["SSL_CERT_FILE"] = cert
    # pypa/build finds uv through $UV when uv is not installed next to it (in
    # the virtualenvs of the other interpreters).
    env["UV"] = find_uv()
    return env


def find_uv() -> str:
    try:
        import uv

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            raise RuntimeError("uv not found: install the project's dependencies") from None
        return found


class StepError(Exception):
    """A step of the check failed; the message says why, with the output's tail."""


def tail(text: str, lines: int = TAIL_LINES) -> str:
    kept = text.rstrip().splitlines()[-lines:]
    return "\n".join("    " + line for line in kept)


def run_logged(
    cmd: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> str:
    """Run ``cmd``, append its output to ``log``; StepError with the output's tail on failure."""
    done = subprocess.run(
        list(cmd),
        env=None if env is None else dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"$ {' '.join(cmd)}\n{done.stdout}{done.stderr}\n[exit {done.returncode}]\n")
    if done.returncode != 0:
        raise StepError(
            f"`{' '.join(cmd)}` exited with {done.returncode}:\n{tail(done.stdout + done.stderr)}"
        )
    return done.stdout


def build_reference(
    python: Path, tree: Path, outdir: Path, project: Project, index: IndexOptions, log: Path
) -> Path:
    """``python -m build --wheel --installer uv`` of ``tree``: the reference wheel.

    ``python`` runs pypa/build, and so is the interpreter it builds for.
    """
    shutil.rmtree(outdir, ignore_errors=True)
    cmd = [str(python), "-m", "build", "--wheel", "--installer", "uv", "--outdir", str(outdir)]
    cmd += _settings(project)
    cmd.append(str(tree))
    run_logged(cmd, log, env=tool_environment(index, outdir.parent))
    wheels = sorted(outdir.glob("*.whl"))
    if len(wheels) != 1:
        raise StepError(f"pypa/build left {len(wheels)} wheels in {outdir}")
    return wheels[0]


def reference_metadata_json(
    python: Path, source: Path, project: Project, index: IndexOptions, scratch: Path, log: Path
) -> str:
    """What ``python -m build --metadata --installer uv`` prints for ``source``.

    ``source`` is a tree, or a wheel whose METADATA pypa/build then reads
    without building: its ``--metadata`` passes no config settings to
    ``prepare_metadata_for_build_wheel`` or the wheel it falls back on
    (``ProjectBuilder.metadata_path`` takes none), so a project that needs them
    is read from pypa/build's own wheel, built with them.
    """
    cmd = [str(python), "-m", "build", "--metadata", "--installer", "uv"]
    if source.suffix != ".whl":
        cmd += _settings(project)
    return run_logged([*cmd, str(source)], log, env=tool_environment(index, scratch))


def _settings(project: Project) -> list[str]:
    return [f"--config-setting={key}={value}" for key, value in project.config_settings.items()]


def check_import(
    python: Path,
    wheel: Path,
    module: str,
    tree: Path,
    workdir: Path,
    index: IndexOptions,
    log: Path,
) -> Path:
    """Install an editable wheel into a fresh virtualenv of ``python``; ``module`` must
    import from ``tree``.

    Returns the file the import found.
    """
    venv = workdir / "editable-venv"
    shutil.rmtree(venv, ignore_errors=True)
    uv = find_uv()
    env = tool_environment(index, workdir)
    run_logged([uv, "venv", "--python", str(python), str(venv)], log, env=env)
    inside = venv / "bin" / "python"
    run_logged(
        [uv, "pip", "install", "--python", str(inside), "--no-deps", str(wheel)],
        log,
        env=env,
    )
    # -I: no PYTHONPATH, no user site, and not the current folder: only the
    # virtualenv's site-packages (and the .pth or finder the wheel put there).
    code = f"import json, {module}; print(json.dumps({module}.__file__))"
    out = run_logged([str(inside), "-I", "-c", code], log, env=env, cwd=workdir)
    where = Path(json.loads(out.strip().splitlines()[-1])).resolve()
    if not where.is_relative_to(tree.resolve()):
        raise StepError(f"`import {module}` found {where}, outside the source tree {tree}")
    return where


# ---------------------------------------------------------------- daemon --
