"""The store on disk: each principal's environments at stable paths, and what is
remembered about them across sessions and daemon restarts.

    <state>/envs/<principal-dir>/<key-id>/<slot>/     one instance (its marker: buildd-env.json)
    <state>/envs/<principal-dir>/store.json           the index: source -> slot, uses
    <state>/envs/<principal-dir>/installer-cache/     uv's cache, private to the principal

``<principal-dir>`` is a safe folder name for any principal name (its safe
characters, then 16 hex digits of its SHA-256: distinct names never share a
folder); ``<key-id>`` is the key the instance was created for (it may grow
into a larger key with dynamic requirements, but it cannot move: tools baked
its absolute paths); ``<slot>`` is a small number, the lowest free one unless
the source asking used another one last. Nothing here names a session.

This module knows paths, slots and the index; the policy that acts on the
pool (adoption, checks, bounds) is in storekeeper.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from ..environments.environments import METADATA_FILE, Placement

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from ..environments.environments import Environment

log = structlog.get_logger("buildd.store")

INDEX_FILE = "store.json"
CACHE_DIR = "installer-cache"
_INDEX_FORMAT = 1
# Sources remembered per principal (most recent kept): affinity across
# sessions must not grow without bound.
MAX_SOURCES = 4096
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SLOT = re.compile(r"[0-9]{1,4}")
_KEY_DIR = re.compile(r"[0-9a-f]{16}")


def principal_dir_name(principal: str) -> str:
    """A folder name for ``principal``: safe on every file system, unique per name."""
    safe = _UNSAFE.sub("_", principal)[:24].strip("._") or "p"
    digest = hashlib.sha256(principal.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{safe}-{digest}"


@dataclass
class _Index:
    """One principal's remembered state; guarded by the store's lock."""

    principal: str
    # source (absolute path or digest) -> "<key-id>/<slot>", most recent last.
    sources: OrderedDict[str, str]
    # "<key-id>/<slot>" -> (last used, Unix seconds; hook calls)
    uses: dict[str, tuple[float, int]]
    dirty: bool = False


@dataclass(frozen=True)
class Found:
    """An instance folder found on disk at start: complete (marked) or not."""

    principal_dir: Path
    path: Path
    complete: bool


class Store:
    """Paths, slot reservations and the per-principal index; thread-safe."""

    def __init__(self, root: Path, *, enabled: bool = True) -> None:
        self.root = root
        self.enabled = enabled
        self._lock = threading.Lock()
        # One flush at a time: two could otherwise write their states out of order.
        self._flushing = threading.Lock()
        # (principal, key-id) -> slots in use: instances, creations, deletions.
        self._slots: dict[tuple[str, str], set[int]] = {}
        self._indexes: dict[str, _Index] = {}
        # Installs running against each principal's installer cache, and the
        # principals whose cache is being cleared (installs wait for that).
        self._cache_users: dict[str, int] = {}
        self._clearing: set[str] = set()
        self._cache_free = threading.Condition(self._lock)

    # ---------------------------------------------------------- placement --

    def principal_dir(self, principal: str) -> Path:
        return self.root / principal_dir_name(principal)

    def cache_dir(self, principal: str) -> Path:
        return self.principal_dir(principal) / CACHE_DIR

    def placement(self, principal: str, key_id: str, preferred: int | None) -> Placement:
        """A free slot of ``key_id`` for a new instance, reserved until ``release``."""
        with self._lock:
            used = self._slots.setdefault((principal, key_id), set())
            if preferred is not None and preferred not in used:
                slot = preferred
            else:
                slot = next(n for n in range(len(used) + 1) if n not in used)
            used.add(slot)
        folder = self.principal_dir(principal)
        return Placement(
            path=folder / key_id / str(slot),
            owner=principal,
            principal=principal,
            key_dir=key_id,
            slot=slot,
            cache_dir=folder / CACHE_DIR,
        )

    def reserve(self, env: Environment) -> bool:
        """Mark an adopted instance's slot as used; False if it already was."""
        with self._lock:
            used = self._slots.setdefault((env.principal, env.key_dir), set())
            if env.slot in used:
                return False
            used.add(env.slot)
            return True

    def release(self, principal: str, key_id: str, slot: int) -> None:
        """The slot's instance is gone from disk (or was never made)."""
        with self._lock:
            used = self._slots.get((principal, key_id))
            if used is not None:
                used.discard(slot)
                if not used:
                    del self._slots[principal, key_id]
            index = self._indexes.get(principal)
            if index is not None and index.uses.pop(f"{key_id}/{slot}", None) is not None:
                index.dirty = True
            # An empty key folder goes with its last instance, and only then:
            # a slot reserved meanwhile may not have made its folder yet (its
            # creation makes the key folder, then the slot's). Under the lock,
            # so that no placement comes between the check and the rmdir.
            if (principal, key_id) not in self._slots:
                with contextlib.suppress(OSError):
                    (self.principal_dir(principal) / key_id).rmdir()

    @contextlib.contextmanager
    def cache_in_use(self, principal: str) -> Iterator[None]:
        """Hold ``principal``'s installer cache for one install (it is not cleared meanwhile)."""
        with self._cache_free:
            self._cache_free.wait_for(lambda: principal not in self._clearing)
            self._cache_users[principal] = self._cache_users.get(principal, 0) + 1
        try:
            yield
        finally:
            with self._cache_free:
                self._cache_users[principal] -= 1
                if not self._cache_users[principal]:
                    del self._cache_users[principal]

    def clear_cache(self, principal: str) -> bool:
        """Delete ``principal``'s installer cache unless an install uses it now.

        Instances keep their hard-linked files: a link outlives the cache's.
        """
        with self._cache_free:
            if self._cache_users.get(principal):
                return False
            self._clearing.add(principal)
        try:
            shutil.rmtree(self.cache_dir(principal), ignore_errors=True)
        finally:
            with self._cache_free:
                self._clearing.discard(principal)
                self._cache_free.notify_all()
        return True

    # -------------------------------------------------------------- index --

    def last_slot(self, principal: str, source: str) -> tuple[str, int] | None:
        """The (key id, slot) ``source`` used last, in any session of ``principal``."""
        with self._lock:
            where = self._index(principal).sources.get(source)
        if where is None:
            return None
        key_id, _, slot = where.partition("/")
        return key_id, int(slot)

    def remember(self, env: Environment, source: str | None) -> None:
        """After a lease of ``env``: its use, and ``source``'s affinity to it."""
        where = f"{env.key_dir}/{env.slot}"
        with self._lock:
            index = self._index(env.principal)
            index.uses[where] = (env.last_used_at, env.hook_calls)
            index.dirty = True
            if source is not None and "\0" not in source:
                index.sources[source] = where
                index.sources.move_to_end(source)
                while len(index.sources) > MAX_SOURCES:
                    index.sources.popitem(last=False)

    def recorded_use(self, env: Environment) -> tuple[float, int] | None:
        """(last used, hook calls) the index holds for an adopted instance."""
        with self._lock:
            return self._index(env.principal).uses.get(f"{env.key_dir}/{env.slot}")

    def flush(self, principal: str | None = None) -> None:
        """Write the changed indexes (one principal's, or all) to disk.

        A failure (a full disk) keeps the old file whole and the new state in
        memory, to be written next time: nothing is lost, nothing is half-written.
        """
        with self._flushing:
            self._flush(principal)

    def _flush(self, principal: str | None) -> None:
        with self._lock:
            targets = [
                index
                for name, index in self._indexes.items()
                if index.dirty and principal in (None, name)
            ]
            payloads = [(index, self._payload(index)) for index in targets]
            for index in targets:
                index.dirty = False
        for index, payload in payloads:
            folder = self.principal_dir(index.principal)
            scratch = folder / f".{INDEX_FILE}.{secrets.token_hex(4)}"
            try:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                scratch.write_text(payload, encoding="utf-8")
                os.replace(scratch, folder / INDEX_FILE)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    scratch.unlink()
                with self._lock:
                    index.dirty = True
                log.warning("store_index_not_written", principal=index.principal, error=str(exc))

    # ----------------------------------------------------------- at start --

    def scan(self) -> Iterator[Found]:
        """Every instance folder under the store, complete or half-made."""
        try:
            principals = sorted(p for p in self.root.iterdir() if p.is_dir())
        except OSError:
            return
        for principal_dir in principals:
            for key_dir in sorted(principal_dir.iterdir()):
                if not (key_dir.is_dir() and _KEY_DIR.fullmatch(key_dir.name)):
                    continue
                for slot in sorted(key_dir.iterdir()):
                    if _SLOT.fullmatch(slot.name):
                        complete = (slot / METADATA_FILE).is_file()
                        yield Found(principal_dir, slot, complete)
                    elif slot.is_dir():
                        # Nothing but slots lives here: a leftover of some other kind.
                        yield Found(principal_dir, slot, False)

    def remove(self, path: Path) -> None:
        """Delete a folder found at start that is not (or no longer) a store instance."""
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()

    def principals_on_disk(self) -> list[str]:
        """Names of principals with an index on disk (the folder names hash them)."""
        names = []
        for folder in sorted(self.root.glob("*")):
            with self._lock:
                index = self._load(folder)
            if index is not None and principal_dir_name(index.principal) == folder.name:
                self._indexes.setdefault(index.principal, index)
                names.append(index.principal)
        return names

    # ---------------------------------------------------------- internals --

    def _index(self, principal: str) -> _Index:
        """Lock held. The principal's index, read from disk once."""
        index = self._indexes.get(principal)
        if index is None:
            loaded = self._load(self.principal_dir(principal))
            if loaded is None or loaded.principal != principal:
                loaded = _Index(principal, OrderedDict(), {})
            index = self._indexes[principal] = loaded
        return index

    def _load(self, folder: Path) -> _Index | None:
        try:
            data = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
            if data.get("format") != _INDEX_FORMAT:
                return None
            sources = OrderedDict((str(k), str(v)) for k, v in data["sources"])
            uses = {str(k): (float(v[0]), int(v[1])) for k, v in data["uses"].items()}
            return _Index(str(data["principal"]), sources, uses)
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return None

    @staticmethod
    def _payload(index: _Index) -> str:
        return json.dumps(
            {
                "format": _INDEX_FORMAT,
                "principal": index.principal,
                "written_at": time.time(),
                # A list keeps the recency order.
                "sources": [[source, where] for source, where in index.sources.items()],
                "uses": {where: list(use) for where, use in index.uses.items()},
            },
            indent=1,
        )
