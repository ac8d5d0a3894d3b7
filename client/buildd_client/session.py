"""A session on the daemon, and the requests made in it."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from buildd.v1 import buildd_pb2 as pb
from buildd_client.calls import Call
from buildd_client.errors import RequestFailed
from buildd_client.keepalive import KeepAlive
from buildd_client.routing import session_metadata

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

    from typing_extensions import Self

    from buildd_client.client import Client
    from buildd_client.remote import PackedSource
    from buildd_client.watch import Watch

__all__ = ["ConfigSettings", "Session"]

# PEP 517 config settings: a key maps to one string or to several (in order).
ConfigSettings = Mapping[str, str | Sequence[str]]

_DISTRIBUTIONS: dict[str, pb.Distribution.ValueType] = {
    "wheel": pb.DISTRIBUTION_WHEEL,
    "sdist": pb.DISTRIBUTION_SDIST,
    "editable": pb.DISTRIBUTION_EDITABLE,
}


def _distribution(name: str, allowed: Sequence[str]) -> pb.Distribution.ValueType:
    if name not in allowed:
        raise ValueError(f"invalid distribution {name!r}: expected one of {', '.join(allowed)}")
    return _DISTRIBUTIONS[name]


def _config_settings(settings: ConfigSettings | None) -> list[pb.ConfigSetting]:
    out: list[pb.ConfigSetting] = []
    for key, value in (settings or {}).items():
        values = [value] if isinstance(value, str) else list(value)
        for item in values:
            if not isinstance(item, str):
                raise TypeError(f"config setting {key!r}: {item!r} is not a string")
        out.append(pb.ConfigSetting(key=key, values=values))
    return out


class Session:
    """A session on the daemon: the environments it creates belong to it."""

    def __init__(self, client: Client, info: pb.SessionInfo) -> None:
        self._client = client
        self.info = info

    @property
    def id(self) -> str:
        return self.info.session_id

    @property
    def ttl_seconds(self) -> float:
        return self.info.ttl_seconds

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, address={self.client.address.target!r})"

    @property
    def client(self) -> Client:
        return self._client

    def _context(
        self,
        source: str | os.PathLike[str],
        python: str | None,
        config_settings: ConfigSettings | None,
        quiet: bool,
        no_cache: bool = False,
    ) -> pb.BuildContext:
        text = os.fspath(source)
        if text.startswith("sha256:"):
            # An uploaded archive: our interpreter's path means nothing to the
            # daemon, so its own is the default.
            where = pb.Source(digest=text)
            default_python = ""
        else:
            where = pb.Source(path=os.path.abspath(text))
            default_python = sys.executable
        return pb.BuildContext(
            session_id=self.id,
            source=where,
            python=default_python if python is None else python,
            config_settings=_config_settings(config_settings),
            quiet=quiet,
            no_cache=no_cache,
        )

    def get_requires(
        self,
        source: str | os.PathLike[str],
        *,
        distribution: str = "wheel",
        config_settings: ConfigSettings | None = None,
        python: str | None = None,
        quiet: bool = False,
        timeout: float | None = None,
        no_cache: bool = False,
    ) -> Call[pb.RequiresResult]:
        """Static and dynamic build requirements of ``source`` (wheel, sdist or editable).

        An unchanged source is answered from the daemon's cache (``cached`` in
        the result); ``no_cache`` runs the hook all the same.
        """
        request = pb.GetRequiresRequest(
            context=self._context(source, python, config_settings, quiet, no_cache),
            distribution=_distribution(distribution, ("wheel", "sdist", "editable")),
        )
        rpc = self._client.stub.GetRequires(request, timeout=timeout)
        return Call(rpc, "requires", lambda result: result.requires)

    def metadata(
        self,
        source: str | os.PathLike[str],
        *,
        distribution: str = "wheel",
        config_settings: ConfigSettings | None = None,
        python: str | None = None,
        quiet: bool = False,
        timeout: float | None = None,
        no_cache: bool = False,
    ) -> Call[pb.MetadataResult]:
        """Prepare the core metadata of ``source`` (wheel or editable).

        An unchanged source is answered from the daemon's cache without running
        a hook (``cached`` in the result); ``no_cache`` runs the hooks all the same.
        """
        request = pb.PrepareMetadataRequest(
            context=self._context(source, python, config_settings, quiet, no_cache),
            distribution=_distribution(distribution, ("wheel", "editable")),
        )
        rpc = self._client.stub.PrepareMetadata(request, timeout=timeout)
        return Call(rpc, "metadata", lambda result: result.metadata)

    def watch_metadata(
        self,
        source: str | os.PathLike[str],
        *,
        python: str | None = None,
        config_settings: ConfigSettings | None = None,
        distribution: str = "wheel",
    ) -> Watch:
        """Watch the core metadata of the project directory ``source``.

        The daemon sends the current metadata, then new metadata each time a
        change of the tree changes it, and a failure each time preparing fails
        (the watch goes on). Iterate the returned handle, or ``get(timeout)``;
        ``cancel()`` ends the watch. The watch holds the session open.
        """
        from buildd_client.watch import Watch

        request = pb.WatchMetadataRequest(
            context=self._context(source, python, config_settings, quiet=True),
            distribution=_distribution(distribution, ("wheel", "editable")),
        )
        return Watch(self._client.stub.WatchMetadata(request))

    def build(
        self,
        source: str | os.PathLike[str],
        *,
        distributions: Sequence[str] = ("sdist", "wheel"),
        wheel_from_sdist: bool | None = None,
        output_directory: str | os.PathLike[str] | None = None,
        config_settings: ConfigSettings | None = None,
        python: str | None = None,
        quiet: bool = False,
        timeout: float | None = None,
        no_cache: bool = False,
    ) -> Call[pb.BuildResult]:
        """Build ``distributions`` of ``source``, in order, into ``output_directory``.

        ``wheel_from_sdist`` defaults to True exactly when an sdist comes
        before the wheel (what ``python -m build`` does); ``output_directory``
        defaults to the daemon's choice, ``<source>/dist``. ``get_requires_for_build_*``
        is answered from the daemon's cache for an unchanged source unless ``no_cache``.
        """
        if isinstance(distributions, str) or not distributions:
            raise ValueError(f"distributions must be a non-empty sequence, got {distributions!r}")
        kinds = [_distribution(name, ("sdist", "wheel", "editable")) for name in distributions]
        if wheel_from_sdist is None:
            names = list(distributions)
            wheel_from_sdist = (
                "sdist" in names
                and "wheel" in names
                and names.index("sdist") < names.index("wheel")
            )
        request = pb.BuildRequest(
            context=self._context(source, python, config_settings, quiet, no_cache),
            distributions=kinds,
            wheel_from_sdist=wheel_from_sdist,
            output_directory=(
                "" if output_directory is None else os.path.abspath(os.fspath(output_directory))
            ),
        )
        rpc = self._client.stub.Build(request, timeout=timeout)
        return Call(rpc, "build", lambda result: result.build)

    def upload(self, source: str | os.PathLike[str] | PackedSource, *, force: bool = False) -> str:
        """Pack ``source`` (a tree; an sdist goes as it is) and upload it if the daemon
        lacks it; returns its digest, to pass as the ``source`` of any request.

        The daemon's cache is shared by digest; the upload carries this
        session's routing header so that, behind a proxy, it reaches the
        daemon that holds the session (and fails when that session is gone).
        """
        import tempfile
        from pathlib import Path

        from buildd_client import remote

        routing = session_metadata(self.id)
        if isinstance(source, remote.PackedSource):
            remote.upload(self._client.stub, source, force=force, metadata=routing)
            return source.digest

        with tempfile.TemporaryDirectory(prefix="buildd-upload-") as work:
            packed = remote.pack_source(source, Path(work))
            remote.upload(self._client.stub, packed, force=force, metadata=routing)
        return packed.digest

    def download(
        self, artifacts: Sequence[pb.Artifact], outdir: str | os.PathLike[str]
    ) -> list[Path]:
        """Fetch artifacts this session built into ``outdir`` (atomically, digest-checked)."""
        from buildd_client import remote

        return remote.download(self._client.stub, self.id, artifacts, outdir)

    def keepalive(self, interval: float = 0.0) -> KeepAlive:
        """A context manager holding the session open from a background thread."""
        return KeepAlive(self._client.stub, self.id, interval)

    def close(self) -> pb.CloseSessionResponse:
        """End the session now; its environments go back to the principal's store."""
        return self._client.close_session(self.id)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Already gone (expired, closed elsewhere) is what we wanted anyway.
        with contextlib.suppress(RequestFailed):
            self.close()
