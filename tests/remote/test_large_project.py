"""A 50 MB project goes up, is built, and comes back, with the daemon's memory bounded.

The project holds 50 MiB of random (incompressible) data, so the archive, the
wheel and the download are each about 50 MiB. Were any of them held in the
daemon's memory, its peak RSS would grow by at least that much; streaming
keeps the growth to a few chunks per phase. The peak is measured with VmHWM after
resetting it (``/proc/PID/clear_refs``), so start-up does not count.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import zipfile
from pathlib import Path

import pytest

from buildd_client.remote import missing, pack_source, upload
from support.projects import setuptools_project
from support.remote import MakeRemote, proc_status, reset_peak_rss

DATA = 50 << 20
# Holding the archive or the wheel in memory costs at least DATA (gRPC and
# protobuf would add copies). Streaming costs a few 256 KiB chunks per phase,
# which gRPC and glibc's per-thread arenas keep: about 16 MiB measured.
ALLOWED_GROWTH = 40 << 20

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _project(root: Path) -> Path:
    project = setuptools_project(root, name="big-data", version="1.0")
    with (project / "pyproject.toml").open("a") as handle:
        handle.write('\n[tool.setuptools.package-data]\nbig_data = ["*.bin"]\n')
    with (project / "big_data" / "payload.bin").open("wb") as handle:
        for _ in range(DATA >> 20):
            handle.write(os.urandom(1 << 20))
    return project


def test_a_50mb_project_streams_through_a_bounded_daemon(
    make_remote: MakeRemote, tmp_path: Path
) -> None:
    project = _project(tmp_path / "big-data")
    payload = hashlib.sha256((project / "big_data" / "payload.bin").read_bytes()).hexdigest()
    daemon = make_remote(metrics=False)
    with daemon.client("alice") as client, client.open_session("big") as session:
        # Warm the daemon's code paths on a tiny upload first, so the peak below
        # measures the 50 MB, not first-use imports.
        tiny = pack_source(setuptools_project(tmp_path / "tiny", name="tiny"), tmp_path)
        upload(client.stub, tiny)
        rss_before = proc_status(daemon.pid, "VmRSS")
        reset_peak_rss(daemon.pid)

        started = time.monotonic()
        work = tmp_path / "pack"
        work.mkdir()
        packed = pack_source(project, work)
        packed_at = time.monotonic()
        assert packed.size > DATA
        assert upload(client.stub, packed)
        uploaded_at = time.monotonic()
        [wheel] = session.build(packed.digest, distributions=["wheel"]).result().artifacts
        built_at = time.monotonic()
        [local] = session.download([wheel], tmp_path / "out")
        downloaded_at = time.monotonic()

        peak = proc_status(daemon.pid, "VmHWM")
        assert missing(client.stub, [packed.digest]) == []
    with zipfile.ZipFile(local) as wheel_zip:
        data = wheel_zip.read("big_data/payload.bin")
    assert hashlib.sha256(data).hexdigest() == payload
    growth = peak - rss_before
    mib = packed.size / (1 << 20)
    report = (
        f"50 MB project: archive {mib:.1f} MiB; pack {packed_at - started:.2f}s, "
        f"upload {uploaded_at - packed_at:.2f}s ({mib / (uploaded_at - packed_at):.0f} MiB/s), "
        f"build {built_at - uploaded_at:.2f}s, download {downloaded_at - built_at:.2f}s "
        f"({wheel.size / (1 << 20) / (downloaded_at - built_at):.0f} MiB/s); daemon RSS "
        f"{rss_before / (1 << 20):.1f} MiB before, peak {peak / (1 << 20):.1f} MiB "
        f"(+{growth / (1 << 20):.1f} MiB)"
    )
    print(report)
    (tmp_path.parent / "remote-figures.txt").write_text(report + "\n")
    assert growth < ALLOWED_GROWTH, report
