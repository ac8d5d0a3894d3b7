"""The store's layout, slots and index, the manifest, and the bytecode script."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from buildd_server.environments import bytecode, manifest
from buildd_server.environments.environments import METADATA_FILE
from buildd_server.pool.store import INDEX_FILE, MAX_SOURCES, Store, principal_dir_name

if TYPE_CHECKING:
    from collections.abc import Iterator

# ------------------------------------------------------------------ names --


@pytest.mark.parametrize(
    "name", ["local", "alice", "a/b", "a_b", "..", ".", "", "ünï cødé", "x" * 300, "CI:agent"]
)
def test_a_principal_folder_name_is_safe(name: str) -> None:
    folder = principal_dir_name(name)
    assert folder not in (".", "..", "")
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in folder)
    assert len(folder) <= 24 + 1 + 16


def test_distinct_principals_never_share_a_folder() -> None:
    names = ["a/b", "a_b", "a b", "A_B", "..", "_", ".", "", "local", "Local"]
    assert len({principal_dir_name(n) for n in names}) == len(names)
    assert principal_dir_name("alice") == principal_dir_name("alice")


# ------------------------------------------------------------------ slots --


def test_slots_are_the_lowest_free_unless_a_free_one_is_preferred(tmp_path: Path) -> None:
    store = Store(tmp_path)
    first = store.placement("alice", "k" * 16, None)
    second = store.placement("alice", "k" * 16, 0)  # taken: the lowest free instead
    assert (first.slot, second.slot) == (0, 1)
    assert first.path == tmp_path / principal_dir_name("alice") / ("k" * 16) / "0"
    assert first.cache_dir == tmp_path / principal_dir_name("alice") / "installer-cache"
    assert store.placement("alice", "k" * 16, 7).slot == 7
    store.release("alice", "k" * 16, 0)
    assert store.placement("alice", "k" * 16, None).slot == 0
    # Other keys and other principals count on their own.
    assert store.placement("bob", "k" * 16, None).slot == 0
    assert store.placement("alice", "j" * 16, None).slot == 0


def test_the_key_folder_stays_while_another_slot_of_it_is_reserved(tmp_path: Path) -> None:
    # A creation reserves its slot, makes the key folder, then the slot's own
    # folder; the key's last instance going meanwhile must not take the key
    # folder with it (seen as ENOENT creating the new instance).
    store = Store(tmp_path)
    old = store.placement("alice", "k" * 16, None)
    old.path.mkdir(parents=True)
    new = store.placement("alice", "k" * 16, None)
    new.path.parent.mkdir(parents=True, exist_ok=True)  # its folder not made yet
    old.path.rmdir()  # the old instance deleted, then its slot released
    store.release("alice", "k" * 16, old.slot)
    assert new.path.parent.is_dir()
    store.release("alice", "k" * 16, new.slot)
    assert not new.path.parent.exists()  # gone with the key's last slot


def test_concurrent_placements_never_share_a_slot(tmp_path: Path) -> None:
    store = Store(tmp_path)
    slots: list[int] = []
    lock = threading.Lock()

    def place() -> None:
        for _ in range(50):
            slot = store.placement("alice", "k" * 16, 0).slot
            with lock:
                slots.append(slot)

    threads = [threading.Thread(target=place) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(slots) == list(range(200))


# ------------------------------------------------------------------ index --


class _Env:
    """What the index reads of an environment."""

    def __init__(self, principal: str, key_dir: str, slot: int) -> None:
        self.principal, self.key_dir, self.slot = principal, key_dir, slot
        self.last_used_at, self.hook_calls = 1000.0 + slot, 3 * slot


def test_the_index_remembers_sources_and_uses_across_store_objects(tmp_path: Path) -> None:
    store = Store(tmp_path)
    env = _Env("alice", "k" * 16, 2)
    store.remember(env, "/src/a")  # type: ignore[arg-type]
    store.remember(env, "/src/b\0from-sdist")  # type: ignore[arg-type]
    assert store.last_slot("alice", "/src/a") == ("k" * 16, 2)
    assert store.last_slot("bob", "/src/a") is None
    store.flush()
    written = json.loads((store.principal_dir("alice") / INDEX_FILE).read_text())
    assert written["principal"] == "alice"
    again = Store(tmp_path)
    assert again.last_slot("alice", "/src/a") == ("k" * 16, 2)
    assert again.last_slot("alice", "/src/b\0from-sdist") is None
    assert again.recorded_use(env) == (1002.0, 6)  # type: ignore[arg-type]
    again.release("alice", "k" * 16, 2)
    again.flush()
    assert Store(tmp_path).recorded_use(env) is None  # type: ignore[arg-type]


def test_the_index_keeps_only_the_most_recent_sources(tmp_path: Path) -> None:
    store = Store(tmp_path)
    env = _Env("alice", "k" * 16, 0)
    for n in range(MAX_SOURCES + 5):
        store.remember(env, f"/src/{n}")  # type: ignore[arg-type]
    assert store.last_slot("alice", "/src/0") is None
    assert store.last_slot("alice", f"/src/{MAX_SOURCES + 4}") is not None


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_an_index_that_cannot_be_written_stays_whole_and_is_written_later(
    tiny_disk: Path,
) -> None:
    store = Store(tiny_disk)
    env = _Env("alice", "k" * 16, 0)
    store.remember(env, "/src/a")  # type: ignore[arg-type]
    store.flush()
    index = store.principal_dir("alice") / INDEX_FILE
    before = index.read_text()
    filler = tiny_disk / "filler"
    with filler.open("wb", buffering=0) as handle, pytest.raises(OSError):
        while True:
            handle.write(b"\0" * 65536)
            handle.flush()
    store.remember(_Env("alice", "k" * 16, 1), "/src/b")  # type: ignore[arg-type]
    store.flush()  # the disk is full: logged, not raised
    assert index.read_text() == before
    assert [p.name for p in index.parent.iterdir()] == [INDEX_FILE]  # no scratch file left
    filler.unlink()
    store.flush()
    assert Store(tiny_disk).last_slot("alice", "/src/b") == ("k" * 16, 1)


# ------------------------------------------------------------- scan, cache --


def test_scan_tells_complete_from_half_made_instances(tmp_path: Path) -> None:
    store = Store(tmp_path)
    key = store.principal_dir("alice") / ("a" * 16)
    (key / "0").mkdir(parents=True)
    (key / "0" / METADATA_FILE).write_text("{}")
    (key / "1" / "bin").mkdir(parents=True)
    (key / "stray").mkdir()
    (store.principal_dir("alice") / "installer-cache").mkdir()
    found = {f.path.name: f.complete for f in store.scan()}
    assert found == {"0": True, "1": False, "stray": False}
    store.remove(key / "1")
    assert not (key / "1").exists()


def test_the_cache_is_not_cleared_while_an_install_uses_it(tmp_path: Path) -> None:
    store = Store(tmp_path)
    cache = store.cache_dir("alice")
    cache.mkdir(parents=True)
    with store.cache_in_use("alice"):
        assert store.clear_cache("alice") is False
        assert cache.is_dir()
    assert store.clear_cache("alice") is True
    assert not cache.exists()


# --------------------------------------------------------------- manifest --


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "env"
    (root / "lib" / "site" / "pkg").mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "lib" / "site" / "pkg" / "__init__.py").write_text("x = 1\n")
    (root / "bin" / "tool").write_text("#!/bin/sh\n")
    (root / "bin" / "python").symlink_to(sys.executable)
    return root


@pytest.mark.parametrize(
    "change",
    ["add-pth", "remove", "edit-same-size", "chmod", "retarget-link", "add-folder", "bin-script"],
)
def test_the_digest_sees_every_change_to_installed_files(tree: Path, change: str) -> None:
    before = manifest.digest(str(tree))
    module = tree / "lib" / "site" / "pkg" / "__init__.py"
    if change == "add-pth":
        (tree / "lib" / "site" / "evil.pth").write_text("import os\n")
    elif change == "remove":
        module.unlink()
    elif change == "edit-same-size":
        stat = module.stat()
        module.write_text("x = 2\n")
        os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))
    elif change == "chmod":
        module.chmod(0o755)
    elif change == "retarget-link":
        (tree / "bin" / "python").unlink()
        (tree / "bin" / "python").symlink_to("/bin/sh")
    elif change == "add-folder":
        (tree / "lib" / "site" / "newpkg").mkdir()
    else:
        (tree / "bin" / "tool").write_text("#!/bin/sh\nexit 1\n")
    assert manifest.digest(str(tree)) != before


def test_the_digest_ignores_bytecode_and_buildd_files(tree: Path) -> None:
    before = manifest.survey(str(tree))
    cache = tree / "lib" / "site" / "pkg" / "__pycache__"
    cache.mkdir()
    (cache / "__init__.cpython-311.pyc").write_bytes(b"\0" * 5000)
    for name in (METADATA_FILE, "buildd-lease", ".zygote"):
        (tree / name).write_text("{}")
    after = manifest.survey(str(tree))
    assert after.digest == before.digest == manifest.digest(str(tree))
    # Bytecode is not digested but it is sized.
    assert after.size_bytes > before.size_bytes
    assert after.files == before.files == 2


def test_own_bytes_leaves_out_files_hard_linked_elsewhere(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "alone").write_bytes(b"a" * 10000)
    (cache / "shared").write_bytes(b"b" * 10000)
    os.link(cache / "shared", tmp_path / "link")
    alone = (cache / "alone").stat().st_blocks * 512
    assert alone > 0
    assert manifest.own_bytes(str(cache)) == alone
    assert manifest.own_bytes(str(tmp_path / "missing")) == 0


# --------------------------------------------------------------- bytecode --


def test_the_bytecode_script_stays_python_3_8_and_standalone() -> None:
    source = Path(bytecode.__file__).with_name("_bytecode_main.py").read_text()
    tree = ast.parse(source, feature_version=(3, 8))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert "buildd_server" not in imported


def test_the_bytecode_script_writes_only_inside_site_packages(tmp_path: Path) -> None:
    site, outside = tmp_path / "site", tmp_path / "outside"
    (site / "alpha").mkdir(parents=True)
    (outside / "beta").mkdir(parents=True)
    (site / "alpha" / "__init__.py").write_text("import beta\n")
    (site / "alpha" / "lazy.py").write_text("LAZY = 1\n")
    (outside / "beta" / "__init__.py").write_text("B = 1\n")
    script = Path(bytecode.__file__).with_name("_bytecode_main.py")
    environ = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{site}{os.pathsep}{outside}"}
    subprocess.run(
        [sys.executable, str(script), str(site), "alpha"], env=environ, check=True, timeout=60
    )
    tag = sys.implementation.cache_tag
    assert (site / "alpha" / "__pycache__" / f"__init__.{tag}.pyc").is_file()
    # Not imported, compiled by the second pass.
    assert (site / "alpha" / "__pycache__" / f"lazy.{tag}.pyc").is_file()
    assert not (outside / "beta" / "__pycache__").exists()


def test_a_compile_can_be_stopped_and_waited_for(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "m.py").write_text("M = 1\n")
    compiler = bytecode.Compiler()
    results: list[bool] = []
    compiler.start("e1", tmp_path, Path(sys.executable), site, "", on_done=results.append)
    assert compiler.wait("e1", 60)
    assert results == [True]
    assert not compiler.running("e1")
    compiler.stop_all()
    compiler.start("e2", tmp_path, Path(sys.executable), site)  # refused after stop_all
    assert not compiler.running("e2")


# ------------------------------------------------------------------- flags --


def test_store_flags_and_their_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from buildd_server.daemon.cli import config_from_args

    default = config_from_args(["--state-dir", "/tmp/x"])
    assert (default.store, default.store_size, default.store_ttl) == (True, 5 << 30, 7 * 86400.0)
    given = config_from_args(
        ["--state-dir", "/tmp/x", "--store-size", "1.5G", "--store-ttl", "12h"]
    )
    assert (given.store_size, given.store_ttl) == (int(1.5 * (1 << 30)), 43200.0)
    monkeypatch.setenv("BUILDD_NO_STORE", "1")
    monkeypatch.setenv("BUILDD_STORE_TTL", "2w")
    from_env = config_from_args(["--state-dir", "/tmp/x"])
    assert (from_env.store, from_env.store_ttl) == (False, 14 * 86400.0)


@pytest.mark.parametrize(
    "bad", [["--store-ttl", "soon"], ["--store-ttl", "0"], ["--store-size", "0"]]
)
def test_bad_store_flags_are_usage_errors(
    bad: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from buildd_server.daemon.cli import config_from_args

    with pytest.raises(SystemExit) as stopped:
        config_from_args(["--state-dir", "/tmp/x", *bad])
    assert stopped.value.code == 2
    assert "--store-" in capsys.readouterr().err
