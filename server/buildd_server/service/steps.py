"""What a request runs while it holds a lease.

The dynamic requirements (asked, then installed into the same instance:
rule 3), prepared metadata, one built artifact (checked, then published),
and a wheel built from the sdist just made. Each step keeps the hook cache
informed of what ran, so that an answer is reused only while nothing changed.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .. import errors
from ..artifacts import checks
from ..artifacts.artifacts import publish
from ..environments.keys import make_key, normalize_requirements
from ..events import Phase
from ..sources.sources import load_project, unpack_sdist
from .leasing import RequestContext
from .requests import ArtifactOutcome, Dist, Prepared, settings_id

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..config import InstallerOptions
    from ..environments.environments import Environment, EnvironmentFactory
    from ..hooks.hooks import Hooks
    from ..pool.pool import Lease
    from ..pool.store import Store
    from ..pool.storekeeper import StoreKeeper
    from .hookcache import HookCache
    from .leasing import Leaser
    from .workspace import Workspace


class Steps:
    """The steps of a request inside a lease, shared by every request of the service."""

    def __init__(
        self,
        factory: EnvironmentFactory,
        installer_name: str,
        installer_options: InstallerOptions,
        cache: HookCache,
        store: Store,
        keeper: StoreKeeper | None,
        leaser: Leaser,
        workspace: Workspace,
    ) -> None:
        self._factory = factory
        self._installer_name = installer_name
        self._installer_options = installer_options
        self._cache = cache
        self._store = store
        self._keeper = keeper
        self._leaser = leaser
        self._workspace = workspace

    def dynamic_requirements(
        self, ctx: RequestContext, lease: Lease[Environment], hooks: Hooks, dist: Dist
    ) -> list[str]:
        env = lease.instance
        cached = self._cache.requires(ctx, env, dist)
        if cached is not None:
            return cached  # installed in this very generation
        before = env.generation
        dynamic = hooks.get_requires(dist, ctx.request.config_settings)
        origin = f"{ctx.project.backend}: get_requires_for_build_{dist}"
        wanted = normalize_requirements(
            dynamic, ctx.interpreter.marker_environment(), origin=origin
        )
        missing = [req for req in wanted if req not in env.key.requirements]
        if missing:
            with self._store.cache_in_use(env.principal):
                self._factory.install(env, missing, emit=ctx.emit, cancel=ctx.cancel)
            lease.rekey(env.key)
            if self._keeper is not None:
                self._keeper.changed(env)
        self._cache.ran_requires(ctx, env, dist, before, dynamic)
        return dynamic

    def prepare(
        self,
        ctx: RequestContext,
        env: Environment,
        hooks: Hooks,
        dist: Literal["wheel", "editable"],
    ) -> Prepared:
        work = self._workspace.work_dir(ctx.session)
        directory = Path(tempfile.mkdtemp(prefix=f"metadata-{dist}-", dir=work))
        try:
            dist_info, from_wheel = hooks.prepare_metadata(
                dist, directory, ctx.request.config_settings
            )
            checks.check_prepared(directory / dist_info, dist, ctx.project)
            metadata = (directory / dist_info / "METADATA").read_bytes()
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        ctx.emit(
            Phase("artifact_checked", detail=dist_info, hook=f"prepare_metadata_for_build_{dist}")
        )
        # Usable for rule 6 and as a cached answer once the request confirmed
        # the tree held still (hookcache.py).
        prepared = Prepared(directory, dist_info, env.id, None, from_wheel, metadata)
        slot = (dist, settings_id(ctx.request.config_settings))
        old = ctx.state.prepared.get(slot)
        ctx.state.prepared[slot] = prepared
        if old is not None:
            shutil.rmtree(old.directory, ignore_errors=True)
        return prepared

    def build_one(
        self,
        ctx: RequestContext,
        env: Environment,
        hooks: Hooks,
        dist: Dist,
        outdir: Path,
        expected: Sequence[tuple[str, checks.Identity]] = (),
    ) -> ArtifactOutcome:
        work = self._workspace.work_dir(ctx.session)
        staging = Path(tempfile.mkdtemp(prefix=f"build-{dist}-", dir=work))
        try:
            metadata_directory = _metadata_directory(ctx, env, dist)
            name = hooks.build(dist, staging, ctx.request.config_settings, metadata_directory)
            built = staging / name
            if not built.is_file():
                raise errors.BackendFailed(
                    f"build_{dist} returned {name!r}, but no such file was written in the "
                    "output directory",
                    hook=f"build_{dist}",
                )
            # Nothing broken reaches the output folder, whoever asked for it.
            checks.check_artifact(
                dist, built, ctx.project, metadata_directory=metadata_directory, expected=expected
            )
            ctx.emit(Phase("artifact_checked", detail=name, hook=f"build_{dist}"))
            final, size, digest = publish(built, outdir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        ctx.emit(Phase("artifact_written", detail=str(final)))
        return ArtifactOutcome(dist, final, size, digest)

    def wheel_from_sdist(self, ctx: RequestContext, sdist: Path, outdir: Path) -> ArtifactOutcome:
        """Build the wheel from the unpacked sdist, as ``python -m build`` does by default."""
        work = self._workspace.work_dir(ctx.session)
        unpack_root = Path(tempfile.mkdtemp(prefix="from-sdist-", dir=work))
        source_id = f"{ctx.request.source}\0from-sdist"
        try:
            try:
                root = unpack_sdist(sdist, unpack_root)
            except errors.InvalidProject as exc:
                # The backend's own sdist, checked already: its fault, not the caller's.
                raise errors.BackendFailed(
                    f"hook build_sdist of backend {ctx.project.backend!r} wrote {sdist.name}, "
                    f"which cannot be unpacked safely: {exc.message}",
                    path=exc.path,
                    hook="build_sdist",
                ) from exc
            project = load_project(str(root))
            origin = f"{sdist.name}: build-system.requires"
            key = make_key(
                ctx.interpreter,
                project.requires,
                self._installer_name,
                self._installer_options,
                origin=origin,
            )
            state = self._workspace.state(ctx.session.id, source_id)
            sub = RequestContext(
                self._leaser,
                ctx.request,
                ctx.session,
                state,
                project,
                ctx.interpreter,
                key,
                ctx.emit,
                ctx.cancel,
            )
            expected = [(f"the sdist {sdist.name}", checks.sdist_identity(sdist.name))]
            with sub.leased() as (lease, hooks):
                self.dynamic_requirements(sub, lease, hooks, "wheel")
                return self.build_one(sub, lease.instance, hooks, "wheel", outdir, expected)
        finally:
            self._workspace.forget(ctx.session.id, source_id)
            shutil.rmtree(unpack_root, ignore_errors=True)


def _metadata_directory(ctx: RequestContext, env: Environment, dist: Dist) -> Path | None:
    """The prepared metadata to pass to build_* (rule 6), when it is still valid."""
    if dist == "sdist":
        return None
    prepared = ctx.state.prepared.get((dist, settings_id(ctx.request.config_settings)))
    if prepared is None:
        return None
    if (
        prepared.environment_id != env.id
        or prepared.fingerprint is None
        or prepared.fingerprint != ctx.fingerprint
        or not (prepared.directory / prepared.dist_info).is_dir()
    ):
        return None
    # PEP 517 passes the .dist-info folder itself, not its parent.
    return prepared.directory / prepared.dist_info
