"""Daemon addresses: the per-user default socket, parsing, and its private folder.

Shared by the client and the daemon (which imports it), so this module uses the
standard library only.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "Address",
    "default_address",
    "default_socket_path",
    "ensure_private_dir",
    "local_token_path",
    "parse_address",
]

SOCKET_NAME = "buildd.sock"

# sun_path holds 108 bytes on Linux and 104 on the BSDs and macOS, NUL included.
# A longer path fails deep inside gRPC with a vague error, so we say it early.
_MAX_SOCKET_PATH = 107 if sys.platform.startswith("linux") else 103

_LOCAL_HOSTS = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


@dataclass(frozen=True)
class Address:
    """A parsed daemon address.

    ``kind`` is ``"unix"`` (``path`` set, always absolute) or ``"tcp"``
    (``host`` and ``port`` set; an IPv6 host is stored without brackets).
    """

    kind: Literal["unix", "tcp"]
    path: str = ""
    host: str = ""
    port: int = 0

    @property
    def target(self) -> str:
        """The string to hand to ``grpc.insecure_channel`` or ``add_insecure_port``."""
        if self.kind == "unix":
            return "unix://" + self.path
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def is_local(self) -> bool:
        """True for a Unix socket or a loopback host: paths mean the same on both ends."""
        if self.kind == "unix":
            return True
        if self.host.lower() in _LOCAL_HOSTS:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return self.target


def _runtime_dir() -> str | None:
    # The XDG base directory spec says relative values must be ignored.
    value = os.environ.get("XDG_RUNTIME_DIR", "")
    if value and os.path.isabs(value) and os.path.isdir(value):
        return value
    return None


def default_socket_path() -> str:
    """The per-user socket: ``$XDG_RUNTIME_DIR/buildd/buildd.sock`` or ``/tmp/buildd-<uid>/...``."""
    runtime = _runtime_dir()
    if runtime is not None:
        return os.path.join(runtime, "buildd", SOCKET_NAME)
    return os.path.join("/tmp", f"buildd-{os.getuid()}", SOCKET_NAME)


def local_token_path(port: int) -> str:
    """Where a daemon of this user on loopback port ``port`` keeps its token (mode 0600).

    The same private folder as the default socket: a daemon listening on
    loopback TCP without a token file writes it there, and the client reads
    it when it connects to that port with no token of its own.
    """
    return os.path.join(os.path.dirname(default_socket_path()), f"tcp-{port}.token")


def default_address() -> str:
    """The per-user default address, e.g. ``unix:///run/user/1000/buildd/buildd.sock``."""
    return "unix://" + default_socket_path()


def _unix(path: str, text: str) -> Address:
    if not path:
        raise ValueError(f"invalid address {text!r}: the Unix socket path is empty")
    if "\0" in path:
        raise ValueError(f"invalid address {text!r}: the Unix socket path contains a NUL byte")
    # gRPC resolves a relative "unix:name" against the process's own folder; the
    # client and the daemon rarely share one, so make it absolute once, here.
    path = os.path.abspath(path)
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        raise ValueError(
            f"invalid address {text!r}: the Unix socket path is longer than "
            f"{_MAX_SOCKET_PATH} bytes, the limit of this system; choose a shorter one"
        )
    return Address("unix", path=path)


def _port(value: str, text: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        raise ValueError(f"invalid address {text!r}: port {value!r} is not a number in 0-65535")
    return int(value)


def parse_address(text: str) -> Address:
    """Parse ``unix:/p``, ``unix:///p``, ``/abs/path``, ``host:port`` or ``[v6]:port``.

    Raises ValueError with a message naming ``text`` when it is none of these.
    """
    value = text.strip()
    if not value:
        raise ValueError("invalid address '': expected unix:///PATH, /PATH or HOST:PORT")
    if value.startswith("unix://"):
        rest = value[len("unix://") :]
        if not rest.startswith("/"):
            raise ValueError(
                f"invalid address {text!r}: after 'unix://' the path must be absolute "
                "(unix:///abs/path), or write unix:relative/path"
            )
        return _unix(rest, text)
    if value.startswith("unix:"):
        return _unix(value[len("unix:") :], text)
    if value.startswith("/"):
        return _unix(value, text)
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep or not host:
            raise ValueError(f"invalid address {text!r}: expected [IPV6]:PORT")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid address {text!r}: {host!r} is not an IPv6 address") from None
        return Address("tcp", host=host, port=_port(port, text))
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"invalid address {text!r}: expected unix:///PATH, /PATH or HOST:PORT")
    if ":" in host:
        raise ValueError(f"invalid address {text!r}: write an IPv6 host in brackets, [::1]:PORT")
    if "/" in host or any(c.isspace() for c in host):
        raise ValueError(f"invalid address {text!r}: {host!r} is not a host name")
    return Address("tcp", host=host, port=_port(port, text))


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` with mode 0700 if missing, then check that only we can use it.

    The folder holds the daemon's socket; anyone who can write there could put
    their own socket in its place. So refuse (PermissionError) a folder that is
    a symbolic link, belongs to another user or grants group/other permissions.
    """
    folder = Path(path)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    else:
        # mkdir's mode is filtered by the umask; set it exactly.
        os.chmod(folder, 0o700)
    info = os.lstat(folder)
    if stat.S_ISLNK(info.st_mode):
        raise PermissionError(
            f"refusing to use {folder}: it is a symbolic link; "
            "remove it so that a private folder can be created"
        )
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(f"{folder} exists and is not a directory")
    if info.st_uid != os.getuid():
        raise PermissionError(
            f"refusing to use {folder}: it belongs to uid {info.st_uid}, not to you "
            f"(uid {os.getuid()})"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise PermissionError(
            f"refusing to use {folder}: its mode is {mode:04o}, which lets other users in; "
            f"run 'chmod 700 {folder}'"
        )
    return folder
