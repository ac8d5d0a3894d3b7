"""The address the daemon listens on: a private Unix socket, or TCP (TLS when configured).

Non-loopback addresses are vetted before this runs (``access/auth.py``,
``check_listen``): here the address is only bound.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from buildd_client.addresses import Address, default_address, ensure_private_dir, parse_address

from ..access.access import check_folder
from ..errors import DaemonStartupError

if TYPE_CHECKING:
    import grpc
    import grpc.aio


def bind(
    server: grpc.aio.Server, address: Address, tls: grpc.ServerCredentials | None
) -> tuple[Address, int]:
    """Bind ``address``; returns it with port 0 replaced by the real port, and that port."""
    if address.kind == "unix":
        assert address.path
        path = Path(address.path)
        if len(os.fsencode(path)) > 107:
            raise DaemonStartupError(f"--address: unix socket path {path} is longer than 107 bytes")
        if address.target == parse_address(default_address()).target:
            ensure_private_dir(path.parent)
        elif not path.parent.is_dir():
            raise DaemonStartupError(f"--address: folder {path.parent} does not exist")
        check_folder(path.parent, "--address: the socket's folder")
        _clear_stale_socket(path)
        old_umask = os.umask(0o177)
        try:
            port = server.add_insecure_port(address.target)
        except RuntimeError as exc:
            raise DaemonStartupError(f"--address: cannot listen on {path}: {exc}") from exc
        finally:
            os.umask(old_umask)
        if port == 0:
            raise DaemonStartupError(f"--address: cannot listen on {path}")
        os.chmod(path, 0o600)
        return address, port
    try:
        if tls is not None:
            port = server.add_secure_port(address.target, tls)
        else:
            port = server.add_insecure_port(address.target)
    except RuntimeError as exc:
        raise DaemonStartupError(f"--address: cannot listen on {address.target}: {exc}") from exc
    if port == 0:
        raise DaemonStartupError(f"--address: cannot listen on {address.target}")
    if address.port == 0:
        address = parse_address(f"{address.host}:{port}")
    return address, port


def _clear_stale_socket(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise DaemonStartupError(f"--address: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody answers: left by a daemon that died
        return
    finally:
        probe.close()
    raise DaemonStartupError(f"--address: {path} is in use by a running daemon")
