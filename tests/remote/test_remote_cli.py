"""Done when: a client using only TCP, TLS and a token builds a real project's wheel
into its own OUTDIR without the daemon reading the client's folder.

The daemon runs with ``--allow-path`` on a folder that does not hold the
client's project, so it may not open that project by path: the first request
below proves it (PERMISSION_DENIED naming the path). With ``--upload`` the
client packs the tree itself; the daemon's log shows requests by digest and
never the client's path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from support.projects import setuptools_project
from support.remote import TOKENS, MakeRemote, RemoteDaemon


def _cli(daemon: RemoteDaemon, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    token = tmp_path / "ci.token"
    token.write_text(f"ci:{TOKENS['alice']}\n")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "XDG_STATE_HOME": str(tmp_path / "client-state"),
        "BUILDD_NO_AUTOSTART": "1",
    }
    connection = ["--address", daemon.address, "--tls-ca", str(daemon.pki.ca)]
    return subprocess.run(
        [sys.executable, "-m", "buildd_client", *connection, "--token-file", str(token), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_a_wheel_built_through_tcp_tls_and_a_token_lands_in_outdir(
    make_remote: MakeRemote, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "daemon-may-read-only-this"
    elsewhere.mkdir()
    daemon = make_remote(["--allow-path", str(elsewhere)], metrics=False)
    source = setuptools_project(tmp_path / "client" / "demo", name="demo-remote", version="2.5")
    (source / ".git").mkdir()
    (source / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    outdir = tmp_path / "client" / "wheels"

    # By path: refused, the daemon does not read the client's folder.
    by_path = _cli(daemon, tmp_path, "build", "--wheel", str(source), "-o", str(outdir))
    assert by_path.returncode == 2, by_path.stderr
    assert "permission_denied" in by_path.stderr and str(source) in by_path.stderr

    # By upload: packed here, built there, downloaded here.
    built = _cli(daemon, tmp_path, "build", "--upload", "--wheel", str(source), "-o", str(outdir))
    assert built.returncode == 0, built.stderr + daemon.log()
    assert "uploaded:" in built.stderr
    wheel = outdir / "demo_remote-2.5-py3-none-any.whl"
    assert built.stdout.splitlines() == [str(wheel)]
    with zipfile.ZipFile(wheel) as archive:
        assert "demo_remote/__init__.py" in archive.namelist()
        metadata = archive.read("demo_remote-2.5.dist-info/METADATA").decode()
    assert "Name: demo-remote" in metadata
    assert sorted(p.name for p in outdir.iterdir()) == [wheel.name]  # no partial files

    log = daemon.log()
    # The client's path reached the daemon only in the refused request; every
    # request it ran named an uploaded digest.
    assert _only_refusal(log, source)
    started = [line for line in log.splitlines() if '"request_started"' in line]
    assert started and all('"source": "sha256:' in line for line in started), started
    assert '"artifact_downloaded"' in log

    # Again: the digest is known, nothing is uploaded.
    again = _cli(daemon, tmp_path, "build", "--upload", "--wheel", str(source), "-o", str(outdir))
    assert again.returncode == 0 and "already on the daemon" in again.stderr

    # The default (sdist, then a wheel from it), then that sdist uploaded as it is.
    both = _cli(daemon, tmp_path, "-q", "build", "--upload", str(source), "-o", str(tmp_path / "b"))
    assert both.returncode == 0, both.stderr
    sdist, wheel2 = (Path(line) for line in both.stdout.splitlines())
    assert sdist.name == "demo_remote-2.5.tar.gz" and wheel2.name == wheel.name
    from_sdist = _cli(daemon, tmp_path, "-q", "build", "--upload", "--wheel", str(sdist))
    assert from_sdist.returncode == 0, from_sdist.stderr
    assert from_sdist.stdout.strip() == str(sdist.parent / wheel.name)

    meta = _cli(daemon, tmp_path, "-q", "metadata", "--upload", str(source))
    assert meta.returncode == 0 and "Version: 2.5" in meta.stdout


def _only_refusal(log: str, source: Path) -> bool:
    """The client's path appears in the log only in the refusal of the by-path request."""
    lines = [line for line in log.splitlines() if str(source) in line]
    return all('"PermissionDenied"' in line or "may not use" in line for line in lines)
