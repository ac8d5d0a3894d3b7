"""The benchmark harness's own logic: parsing backend logs, editing trees, configs, figures.

The figures themselves need PyPI and minutes (``python benchmarks/run.py``);
these tests check, offline, the parts whose mistakes would silently make a
figure wrong.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from buildd_bench import cli, native, proxy, stats, watch
from buildd_bench.figure import FIGURES, Figure
from buildd_bench.metadata import edit_tree
from buildd_bench.store import store_instances

REPO = Path(__file__).resolve().parents[2]

CMAKE_LOG = """\
*** Building project with Ninja...
[1/2] Building C object CMakeFiles/_bench_native.dir/src/gamma.c.o
[2/2] Linking C shared module _bench_native.cpython-311-x86_64-linux-gnu.so
"""
CMAKE_FULL = """\
[1/6] Building C object CMakeFiles/_bench_native.dir/src/beta.c.o
[2/6] Building C object CMakeFiles/_bench_native.dir/src/alpha.c.o
[3/6] Building C object CMakeFiles/_bench_native.dir/src/gamma.c.o
[4/6] Building C object CMakeFiles/_bench_native.dir/src/delta.c.o
[5/6] Building C object CMakeFiles/_bench_native.dir/src/module.c.o
[6/6] Linking C shared module _bench_native.cpython-311-x86_64-linux-gnu.so
"""
# pip -v indents the backend's lines; meson-python's install step is "[1/1] <path>".
MESON_PIP_LOG = """\
  + /tmp/env/bin/ninja
  [1/2] Compiling C object _bench_native.cpython-311-x86_64-linux-gnu.so.p/src_gamma.c.o
  [2/2] Linking target _bench_native.cpython-311-x86_64-linux-gnu.so
  [1/1] /tmp/x/build/bench/_bench_native.cpython-311-x86_64-linux-gnu.so
"""


def test_ninja_compile_lines_are_counted_for_cmake_and_meson() -> None:
    fixture = native.NATIVE_FIXTURES[0]
    assert native.classify(fixture, native.compiled_objects(CMAKE_LOG)) == (True, [])
    touched, untouched = native.classify(fixture, native.compiled_objects(CMAKE_FULL))
    assert touched
    assert sorted(untouched) == ["src/alpha.c", "src/beta.c", "src/delta.c", "src/module.c"]
    compiled = native.compiled_objects(MESON_PIP_LOG)
    assert compiled == ["_bench_native.cpython-311-x86_64-linux-gnu.so.p/src_gamma.c.o"]
    assert native.classify(native.NATIVE_FIXTURES[1], compiled) == (True, [])


def test_an_unknown_object_counts_as_untouched() -> None:
    fixture = native.NATIVE_FIXTURES[0]
    touched, untouched = native.classify(fixture, ["CMakeFiles/x.dir/src/other.c.o"])
    assert not touched
    assert untouched == ["CMakeFiles/x.dir/src/other.c.o"]


@pytest.mark.parametrize("fixture", native.NATIVE_FIXTURES, ids=lambda f: f.name)
def test_fixtures_hold_their_sources_and_the_edit_changes_only_the_touched_one(
    fixture: native.NativeFixture, tmp_path: Path
) -> None:
    tree = native.fresh_fixture(fixture, tmp_path / fixture.name)
    for source in fixture.sources:
        assert (tree / source).is_file(), source
    before = {s: (tree / s).read_bytes() for s in fixture.sources}
    native.set_salt(tree, 7)
    after = {s: (tree / s).read_bytes() for s in fixture.sources}
    assert [s for s in fixture.sources if before[s] != after[s]] == [native.TOUCHED]
    assert b"#define GAMMA_SALT 7\n" in after[native.TOUCHED]
    # No build output is kept in the repository's fixtures.
    assert not (fixture.path / "build").exists()


def test_edit_tree_changes_the_build_file_each_time(tmp_path: Path) -> None:
    (tmp_path / "setup.py").write_text("from setuptools import setup\nsetup()\n")
    first = edit_tree(tmp_path, 1).read_text()
    second = edit_tree(tmp_path, 2).read_text()
    assert first != second
    assert second.startswith("from setuptools import setup\nsetup()\n")
    with pytest.raises(RuntimeError, match="none of"):
        edit_tree(tmp_path / "missing", 1)


def test_describe_edit_changes_only_the_project_description(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[build-system]\nrequires = ["flit_core"]\n\n'
        '[project]\nname = "x"\ndescription = "A lil\' parser"\n\n'
        '[tool.tox]\ndescription = "not this one"\n'
    )
    assert watch.describe_edit(pyproject, 1) == "A lil' parser (buildd-bench save 1)"
    assert watch.describe_edit(pyproject, 2) == "A lil' parser (buildd-bench save 2)"
    text = pyproject.read_text()
    assert 'description = "A lil\' parser (buildd-bench save 2)"' in text
    assert 'description = "not this one"' in text
    (tmp_path / "bare.toml").write_text('[project]\nname = "x"\n')
    with pytest.raises(RuntimeError, match="no static"):
        watch.describe_edit(tmp_path / "bare.toml", 1)


def test_store_instances_counts_virtualenvs_only(tmp_path: Path) -> None:
    for slot in ("envs/local/key1/0", "envs/local/key1/1", "envs/local/key2/0"):
        (tmp_path / slot).mkdir(parents=True)
        (tmp_path / slot / "pyvenv.cfg").write_text("home = /usr/bin\n")
    # The principal's folder holds more than instances: the installer's cache, an index.
    (tmp_path / "envs/local/installer-cache/archive-v0/x").mkdir(parents=True)
    (tmp_path / "envs/local/store.json").write_text("{}")
    (tmp_path / "envs/local/key2/1").mkdir()  # no virtualenv (yet)
    found = store_instances(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "envs/local/key1/0",
        "envs/local/key1/1",
        "envs/local/key2/0",
    ]
    assert store_instances(tmp_path / "nothing") == []


def test_geomean_is_nan_unless_every_value_counts() -> None:
    assert stats.geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert math.isnan(stats.geomean([2.0, math.nan]))
    assert math.isnan(stats.geomean([2.0, 0.0]))
    assert math.isnan(stats.geomean([]))
    assert stats.pctl([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.9) == 9


def test_a_missing_feature_is_reported_as_not_measured() -> None:
    figure = Figure.not_measured("P7", "x", "at most 150 ms", "no watch")
    assert figure.measured == "not measured: no watch"
    assert figure.met is False


def test_every_figure_can_be_selected_and_unknown_ones_are_refused() -> None:
    args = cli.parse_args(["--only", ",".join(FIGURES)])
    assert args.figures == list(FIGURES)
    assert set(cli.FIGURE_FUNCTIONS) | set(cli.MATRIX_FIGURES) == set(FIGURES)
    with pytest.raises(SystemExit):
        cli.parse_args(["--only", "P9"])


def test_run_py_still_answers_help() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert "--p5b-keys" in done.stdout


REFERENCE = """\
pid /tmp/nginx.pid;
error_log /dev/stderr warn;
events { worker_connections 64; }
http {
    client_body_temp_path /tmp/nginx-client-body;
    proxy_temp_path /tmp/nginx-proxy;
    fastcgi_temp_path /tmp/nginx-fastcgi;
    uwsgi_temp_path /tmp/nginx-uwsgi;
    scgi_temp_path /tmp/nginx-scgi;
    access_log /dev/stdout;
    resolver kube-dns.kube-system.svc.cluster.local valid=5s ipv6=off;
    upstream buildd {
        zone buildd 256k;
        hash $http_x_buildd_session consistent;
        # daemons: begin
        server buildd-0.buildd:50051 resolve max_fails=1 fail_timeout=5s;
        server buildd-1.buildd:50051 resolve max_fails=1 fail_timeout=5s;
        # daemons: end
    }
    server {
        listen 8443 ssl http2;
        ssl_certificate /etc/nginx/tls/tls.crt;
        ssl_certificate_key /etc/nginx/tls/tls.key;
        location / { grpc_pass grpc://buildd; }
    }
    server {
        listen 8081 http2;
        location / { grpc_pass grpc://buildd; }
    }
}
"""


def test_the_reference_nginx_config_is_pointed_at_this_machine(tmp_path: Path) -> None:
    text = proxy.render_reference(
        REFERENCE, tmp_path, "127.0.0.1:1111", "127.0.0.1:2222", "127.0.0.1:3333"
    )
    assert "buildd-0" not in text
    assert "resolve" not in text
    assert "ssl" not in text
    assert "/tmp/nginx" not in text
    assert text.count("server 127.0.0.1:1111 max_fails=1 fail_timeout=5s;") == 1
    assert "listen 127.0.0.1:2222 http2;" in text
    assert "listen 127.0.0.1:3333 http2;" in text
    assert "hash $http_x_buildd_session consistent;" in text
    if shutil.which("nginx"):
        (tmp_path / "nginx.conf").write_text(text)
        checked = subprocess.run(
            [
                "nginx",
                "-t",
                "-p",
                str(tmp_path),
                "-c",
                str(tmp_path / "nginx.conf"),
                "-e",
                str(tmp_path / "error.log"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stderr


def test_buildd_hook_times_are_read_from_its_verbose_log() -> None:
    text = (
        "[   0.0s] using environment /state/envs/local/abc/0\n"
        "[   0.3s] get_requires_for_build_wheel finished in 0.2s\n"
        "[   1.5s] build_wheel finished in 1.1s\n"
        "build_wheel finished in 9.9s, said the backend\n"
    )
    found = native.HOOK_FINISHED.findall(text)
    assert found == [("get_requires_for_build_wheel", "0.2"), ("build_wheel", "1.1")]


class _Refused:
    """A watch handle the daemon ended at once (as RESOURCE_EXHAUSTED does)."""

    def __iter__(self) -> _Refused:
        return self

    def __next__(self) -> object:
        raise RuntimeError("RESOURCE_EXHAUSTED: cannot watch the tree")


def test_a_watch_that_ends_is_seen_at_once_not_after_the_timeout() -> None:
    reader = watch.EventReader(_Refused())
    # A reader that only noticed the end after the timeout would raise TimeoutError.
    with pytest.raises(RuntimeError, match="the watch ended"):
        reader.next(30)
    with pytest.raises(RuntimeError, match="the watch ended"):
        reader.next(30)


def test_events_come_in_order_then_the_end() -> None:
    reader = watch.EventReader(iter(["first", "second"]))
    assert reader.next(30)[1] == "first"
    assert reader.next(30)[1] == "second"
    with pytest.raises(RuntimeError, match="the watch ended"):
        reader.next(30)
    assert reader.drain() == 0


@pytest.mark.parametrize(
    ("trees", "watches", "sessions"), [(200, 200, 4), (50, 200, 4), (7, 30, 4)]
)
def test_watches_are_spread_over_trees_and_sessions(
    trees: int, watches: int, sessions: int
) -> None:
    plan = watch.watch_plan(trees, watches, sessions)
    assert len(plan) == watches
    per_tree = Counter(tree for tree, _ in plan)
    assert max(per_tree.values()) - min(per_tree.values()) <= 1
    assert len(per_tree) == trees
    per_session = Counter(session for _, session in plan)
    assert max(per_session.values()) - min(per_session.values()) <= 1
    for tree in range(trees):
        used = [session for t, session in plan if t == tree]
        assert len(used) == len(set(used)) or len(used) > sessions
