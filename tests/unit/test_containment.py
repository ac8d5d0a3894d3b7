"""Containment policy and bubblewrap command lines, without starting anything."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from buildd_server.errors import DaemonStartupError
from buildd_server.hooks import containment, sandbox

STATE = Path("/srv/buildd-state")
WORKS = containment.Machine("/usr/bin/bwrap", "", "", True, "")
NO_BWRAP = containment.Machine("", "bwrap missing", "bwrap missing", True, "bwrap missing")
NO_SANDBOX = containment.Machine("/usr/bin/bwrap", "", "bwrap: no /proc", True, "")


def test_auto_sandboxes_remote_principals_and_namespaces_local_ones() -> None:
    policy = containment.resolve("auto", WORKS, state_dir=STATE, remote_possible=True)
    assert (policy.local, policy.remote, policy.notes) == ("pid", "sandbox", ())
    assert policy.zygote_prefix == ()  # CAP_SYS_ADMIN: fork servers as they are


def test_auto_falls_back_and_says_what_that_means() -> None:
    policy = containment.resolve("auto", NO_SANDBOX, state_dir=STATE, remote_possible=True)
    assert (policy.local, policy.remote) == ("pid", "pid")
    [note] = policy.notes
    assert "remote principals are not sandboxed (bwrap: no /proc)" in note
    policy = containment.resolve("auto", NO_BWRAP, state_dir=STATE, remote_possible=False)
    assert (policy.local, policy.remote) == ("none", "none")
    assert "can outlive the call" in policy.notes[0]


@pytest.mark.parametrize("choice", ["pid", "sandbox"])
def test_an_explicit_mode_the_machine_lacks_stops_the_start(choice: containment.Choice) -> None:
    with pytest.raises(DaemonStartupError, match=f"--containment {choice} needs"):
        containment.resolve(choice, NO_BWRAP, state_dir=STATE, remote_possible=False)


def test_without_cap_sys_admin_fork_servers_get_a_user_namespace_or_stop() -> None:
    unprivileged = containment.Machine("/usr/bin/bwrap", "", "", False, "")
    policy = containment.resolve("auto", unprivileged, state_dir=STATE, remote_possible=False)
    assert policy.zygote_prefix is not None and "--unshare-user" in policy.zygote_prefix
    stuck = containment.Machine("/usr/bin/bwrap", "", "", False, "no user namespaces")
    policy = containment.resolve("auto", stuck, state_dir=STATE, remote_possible=False)
    assert policy.zygote_prefix is None
    assert any("fork servers are off" in note for note in policy.notes)


def test_wrapped_signals_read_back_as_signals() -> None:
    assert containment.exit_status(128 + signal.SIGKILL, True) == -signal.SIGKILL
    assert containment.exit_status(3, True) == 3
    assert containment.exit_status(137, False) == 137


def test_the_callers_kind_picks_the_mode() -> None:
    policy = containment.Policy(choice="auto", local="pid", remote="sandbox")
    old = containment.POLICY
    containment.configure(policy)
    try:
        with containment.caller(remote=False):
            assert containment.current_mode() == "pid"
            assert containment.fork_server_allowed()
        with containment.caller(remote=True):
            assert containment.current_mode() == "sandbox"
            assert not containment.fork_server_allowed()
        # Outside any request: the strictest.
        assert containment.current_mode() == "sandbox"
    finally:
        containment.configure(old)


def test_the_sandbox_hides_the_state_folder_and_binds_the_calls_own(tmp_path: Path) -> None:
    state = tmp_path / "state"
    source = state / "sessions" / "s1" / "work" / "upload-x" / "proj"
    env = state / "sessions" / "s1" / "envs" / "e1"
    outside = tmp_path / "control"
    secret = tmp_path / "tokens"
    for folder in (source, env, outside):
        folder.mkdir(parents=True)
    secret.write_text("t")
    layout = sandbox.Layout(
        state_dir=state,
        hidden_files=(secret,),
        writable=(source, outside),
        readable=(env,),
    )
    args = sandbox.sandbox_prefix("bwrap", layout, str(source))
    assert args[:4] == ["bwrap", "--ro-bind", "/", "/"]
    assert args[-1] == "--"
    first = {value: args.index(value) for value in args}
    # Outside binds, then the tmpfs over the state folder, then what lies inside it.
    assert first[str(outside)] < first[str(state)] < first[str(source)]
    assert args[first[str(state)] - 1] == "--tmpfs"
    assert args[first[str(env)] - 1] == "--ro-bind"
    assert args[first[str(source)] - 1] == "--bind"
    assert args[args.index("--remount-ro") + 1] == str(state)
    assert args[first[str(secret)] - 2 : first[str(secret)] + 1] == [
        "--ro-bind",
        "/dev/null",
        str(secret),
    ]
    for flag in ("--unshare-pid", "--die-with-parent", "--new-session"):
        assert flag in args
    assert args[args.index("--proc") : args.index("--proc") + 2] == ["--proc", "/proc"]
    assert args[args.index("/tmp") - 1 : args.index("/tmp") + 1] == ["--tmpfs", "/tmp"]


def test_the_sandbox_leaves_out_the_daemons_variables() -> None:
    env = sandbox.sandbox_environment({"BUILDD_TOKEN": "x", "PATH": "/bin", "TMPDIR": "/var"})
    assert env == {"PATH": "/bin", "TMPDIR": "/tmp"}


def test_a_store_install_gets_its_principals_cache_and_not_the_machines(tmp_path: Path) -> None:
    state = tmp_path / "state"
    principal = state / "envs" / "alice-1234"
    env, private = principal / "k1" / "0", principal / "installer-cache"
    shared = tmp_path / "home-cache" / "uv"
    for folder in (env, private, shared):
        folder.mkdir(parents=True)
    policy = containment.Policy(
        choice="auto",
        local="pid",
        remote="sandbox",
        bwrap="bwrap",
        state_dir=state,
        install_writable=(shared,),
    )
    old = containment.POLICY
    containment.configure(policy)
    try:
        with containment.caller(remote=True):
            store, _, _ = containment.command(
                ["uv"],
                {},
                None,
                containment.Confinement(
                    environment=env, install=True, writable=(private,), shared_cache=False
                ),
            )
            plain, _, _ = containment.command(
                ["uv"], {}, None, containment.Confinement(environment=env, install=True)
            )
    finally:
        containment.configure(old)
    assert store[store.index(str(private)) - 1] == "--bind"
    assert store[store.index(str(env)) - 1] == "--bind"
    # Not the machine's cache, which every principal's installs would share;
    # and nothing else of the principal's folder (its other environments).
    assert str(shared) not in store
    assert str(principal) not in store
    # --no-store installs (no private cache) still get the machine's.
    assert plain[plain.index(str(shared)) - 1] == "--bind"


def test_the_daemons_installation_under_tmp_is_bound_into_the_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sandbox's /tmp is private and empty: a daemon run from a checkout
    # under /tmp (a CI clone) must still find its virtualenv there.
    venv = tmp_path / "venv"
    venv.mkdir()
    monkeypatch.setattr(sys, "prefix", str(venv))
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    found = containment.runtime_under_tmp()
    assert tmp_path.resolve().is_relative_to(Path("/tmp"))  # where pytest puts it here
    assert venv.resolve() in found
    assert Path("/usr") not in found
    assert all(path.is_relative_to(Path("/tmp")) for path in found)
    policy = containment.Policy(
        choice="sandbox", local="sandbox", remote="sandbox", bwrap="bwrap", runtime=found
    )
    old = containment.POLICY
    containment.configure(policy)
    try:
        args, _, _ = containment.command(["python"], {}, None, containment.Confinement())
    finally:
        containment.configure(old)
    at = args.index(str(venv.resolve()))
    assert args[at - 1] == "--ro-bind"
    assert args.index("/tmp") < at  # bound over the private /tmp, not hidden by it
