"""Unpack an image's layers into a snapshotter, as containerd's unpacker does.

For the manifest that matches the platform, with ``chain[i]`` the OCI chain IDs of the config's
``rootfs.diff_ids``, each layer in order:

1. under a keyed lock (``flock`` on ``<state>/locks/<snapshotter>/<chainID hex>``, so two processes
   unpacking the same layer do it once), ``stat(chain[i])``: committed already -> reuse it;
2. ``prepare("extract-<unique> <chain[i]>", parent=chain[i-1], labels={snapshot.ref: chain[i]})``;
   AlreadyExists means the backend had it (another namespace): reuse it;
3. apply the blob through the diff plugin, compare the digest of the uncompressed stream with
   ``diff_ids[i]`` (a mismatch is :class:`DataLoss` "wrong diff id");
4. ``commit(chain[i], key)``; on any failure in 3-4 the active snapshot is removed;
5. label the layer blob ``containerd.io/uncompressed=<diff_id>``.

At the end the config blob gets ``containerd.io/gc.ref.snapshot.<snapshotter>=<top chainID>``, which keeps
the whole chain alive (through parent edges) while the image's content is alive.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyctr import images as imgs
from pyctr import mediatypes as mt
from pyctr import platforms as plat
from pyctr.content import Descriptor
from pyctr.errdefs import AlreadyExists, DataLoss, InvalidArgument, NotFound, PyctrError

if TYPE_CHECKING:
    from .service import ImageService

log = logging.getLogger("pyctr.plugin.pyctr.images.metadata")

LABEL_SNAPSHOT_REF = "containerd.io/snapshot.ref"


@dataclass
class UnpackResult:
    """The top chain ID and what this unpack created (committed snapshot keys, bottom first)."""

    top: str
    snapshotter: str
    chain: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    manifest: str = ""


@contextlib.contextmanager
def keyed_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (made if missing), across threads and processes."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor of the open file releases the lock


def _kind(info: Any) -> str:
    return str(getattr(info, "kind", "")).lower()


class Unpacker:
    """One unpack of one image into one snapshotter, holding what it makes in ``lease``."""

    def __init__(self, svc: ImageService, ns: str, snapshotter: str, lease: str | None) -> None:
        self.svc = svc
        self.ns = ns
        self.sn = svc.md.snapshotter(snapshotter)
        self.sn_short = snapshotter.rsplit(".", 1)[-1]
        self.lease = lease
        self.created: list[str] = []

    def _differ(self) -> Any:
        return self.svc.registry.get("diff")

    def unpack(self, target: Descriptor, matcher: plat.Matcher | None = None) -> UnpackResult:
        read = self.svc.reader(self.ns)
        manifest = imgs.manifest_for_platform(read, target, matcher or plat.default())
        config_desc, layers = imgs.parse_manifest(manifest, read(manifest))
        cfg = imgs.parse_config(read(config_desc))
        return self.unpack_manifest(manifest, config_desc, layers, cfg)

    def unpack_manifest(self, manifest: Descriptor, config_desc: Descriptor, layers: list[Descriptor],
                        cfg: imgs.ImageConfig, wait: Callable[[Descriptor], bool] | None = None
                        ) -> UnpackResult:
        """Unpack ``layers`` of ``manifest`` in order; ``wait(layer)`` (if given) blocks until the layer's
        blob is in the store and returns False to stop (the blob will not come)."""
        svc, ns = self.svc, self.ns
        layers = [x for x in layers if mt.is_layer(x.media_type)]
        if len(layers) != len(cfg.diff_ids):
            raise DataLoss(
                f"image {manifest.digest} has {len(layers)} layers but its config lists {len(cfg.diff_ids)} "
                "diff ids"
            )
        if not layers:
            raise InvalidArgument(f"image {manifest.digest} has no layers to unpack")
        chain = imgs.chain_ids(cfg.diff_ids)
        differ = self._differ()
        parent = ""
        for layer, diff_id, chain_id in zip(layers, cfg.diff_ids, chain, strict=True):
            if wait is not None and not self._committed(chain_id) and not wait(layer):
                raise _Stopped()
            self._layer(differ, layer, diff_id, chain_id, parent)
            parent = chain_id
        svc.set_blob_labels(ns, config_desc.digest, {f"{imgs.GC_REF_SNAPSHOT}.{self.sn_short}": chain[-1]})
        return UnpackResult(top=chain[-1], snapshotter=self.sn_short, chain=chain, created=list(self.created),
                            manifest=manifest.digest)

    def _lock_path(self, chain_id: str) -> Path:
        return self.svc.state / "locks" / self.sn_short / chain_id.replace(":", "-")

    def _committed(self, chain_id: str) -> bool:
        try:
            return _kind(self.sn.stat(self.ns, chain_id)) == "committed"
        except NotFound:
            return False

    def _hold(self, key: str) -> None:
        if self.lease:
            with contextlib.suppress(PyctrError):
                self.svc.lease_add(self.ns, self.lease, f"snapshots/{self.sn_short}", key)

    def _layer(self, differ: Any, layer: Descriptor, diff_id: str, chain_id: str, parent: str) -> None:
        svc, ns = self.svc, self.ns
        with keyed_lock(self._lock_path(chain_id)):
            if self._committed(chain_id):
                self._hold(chain_id)
                self._label_uncompressed(layer, diff_id)
                return
            if not svc.content.exists(ns, layer.digest):
                raise NotFound(f"layer {layer.digest} of the image is not in the content store")
            key = f"extract-{uuid.uuid4().hex[:16]} {chain_id}"
            labels = {LABEL_SNAPSHOT_REF: chain_id}
            try:
                mounts = self.sn.prepare(ns, key, parent, labels, lease=self.lease)
            except AlreadyExists:
                # the backend already had this chain (another namespace, a remote snapshotter): linked in
                if not self._committed(chain_id):
                    raise
                self._label_uncompressed(layer, diff_id)
                return
            try:
                with svc.content.open(ns, layer.digest) as blob:
                    result = differ.apply(layer.media_type, blob, mounts)
                got = str(getattr(result, "diff_id", ""))
                if got != diff_id:
                    raise DataLoss(
                        f"wrong diff id for layer {layer.digest}: the config says {diff_id}, the layer's "
                        f"uncompressed content is {got}"
                    )
                self.sn.commit(ns, chain_id, key, labels, lease=self.lease)
            except BaseException:
                try:
                    self.sn.remove(ns, key)
                except Exception as e:  # keep the original error
                    log.warning("cannot remove active snapshot %r after a failed unpack: %s", key, e)
                raise
            self.created.append(chain_id)
        self._label_uncompressed(layer, diff_id)

    def _label_uncompressed(self, layer: Descriptor, diff_id: str) -> None:
        with contextlib.suppress(NotFound):
            self.svc.set_blob_labels(self.ns, layer.digest, {imgs.LABEL_UNCOMPRESSED: diff_id})

    def _held_elsewhere(self, key: str) -> bool:
        """Whether a lease other than this unpack's holds snapshot ``key`` (a concurrent unpack that
        reused the layer, say)."""
        db = self.svc.md.db
        if db.query_one("SELECT 1 FROM sqlite_master WHERE type='table' AND name='lease_resources'") is None:
            return False
        row = db.query_one(
            "SELECT 1 FROM lease_resources WHERE ns=? AND type=? AND key=? AND lease!=? LIMIT 1",
            (self.ns, f"snapshots/{self.sn_short}", key, self.lease or ""))
        return row is not None

    def rollback(self) -> None:
        """Remove the snapshots this unpack committed (top first), e.g. when the import that ran it
        fails.  Snapshots another image grew children on are left to the garbage collector."""
        for key in reversed(self.created):
            if self._held_elsewhere(key):
                log.info("leaving snapshot %s: another operation's lease holds it", key)
                continue
            try:
                self.sn.remove(self.ns, key)
            except PyctrError as e:
                log.info("leaving snapshot %s to the garbage collector: %s", key, e)
        self.created.clear()


class _Stopped(Exception):
    """The fetch ended without the blob an unpack-during-fetch was waiting for."""


#: progress states that mean "this blob is in the content store now"
_READY_STATES = frozenset({"done", "exists", "mounted"})


class UnpackSession:
    """Unpack while a pull is still fetching (containerd's unpacker wrapping the fetch handler): layer
    *i* is applied as soon as its blob is in the store and layers *0..i-1* are done, while later layers
    are still downloading.

    Feed it the fetch's progress events (:meth:`on_event`, or wrap a progress callback with
    :meth:`progress`); events are hints: the store is re-checked, so a missed event only delays.  The
    manifest to unpack is found from the first config blob that arrives for the platform (through the
    manifest's ``containerd.io/gc.ref.content.config`` label).  :meth:`finish` with the pulled target
    waits for the work, checks it unpacked the right manifest (or unpacks it now, reusing what is
    committed) and returns the top chain ID; :meth:`abort` (or leaving a ``with`` block by an exception)
    stops and removes what the session committed.
    """

    POLL_S = 0.2

    def __init__(self, svc: ImageService, ns: str, snapshotter: str, lease: str | None,
                 matcher: plat.Matcher) -> None:
        self.svc = svc
        self.ns = ns
        self.matcher = matcher
        self.unpacker = Unpacker(svc, ns, snapshotter, lease)
        self._cond = threading.Condition()
        self._ready: set[str] = set()
        self._configs: list[str] = []
        self._closed = False
        self._error: BaseException | None = None
        self.result: UnpackResult | None = None
        self._thread = threading.Thread(target=self._run, name="pyctr-unpack", daemon=True)
        self._thread.start()

    # -- events ------------------------------------------------------------------------------------

    def on_event(self, ev: Any) -> None:
        state = getattr(ev, "state", "")
        digest = getattr(ev, "digest", "")
        if state not in _READY_STATES or not digest:
            return
        with self._cond:
            self._ready.add(digest)
            if getattr(ev, "kind", "") == "config":
                self._configs.append(digest)
            self._cond.notify_all()

    def progress(self, inner: Callable[[Any], None] | None = None) -> Callable[[Any], None]:
        """A progress callback that feeds this session, then ``inner``."""

        def cb(ev: Any) -> None:
            self.on_event(ev)
            if inner is not None:
                inner(ev)

        return cb

    # -- the worker ------------------------------------------------------------------------------

    def _have(self, digest: str) -> bool:
        return digest in self._ready or bool(self.svc.content.exists(self.ns, digest))

    def _wait_blob(self, desc: Descriptor) -> bool:
        with self._cond:
            while True:
                if self._have(desc.digest):
                    return True
                if self._closed:
                    return bool(self.svc.content.exists(self.ns, desc.digest))
                self._cond.wait(self.POLL_S)

    def _next_config(self, seen: set[str]) -> str | None:
        with self._cond:
            while True:
                for d in self._configs:
                    if d not in seen:
                        return d
                if self._closed:
                    return None
                self._cond.wait(self.POLL_S)

    def _manifest_for_config(self, config: str) -> Descriptor | None:
        key = f"{imgs.GC_REF_CONTENT}.config"
        for info in self.svc.content.walk(self.ns, [f'labels."{key}"=={config}']):
            blob = self.svc.read_blob(self.ns, Descriptor(mt.OCI_MANIFEST, info.digest, info.size))
            try:
                media_type = mt.detect(blob)
            except PyctrError:
                continue
            if mt.is_manifest(media_type):
                return Descriptor(media_type, info.digest, info.size)
        return None

    def _run(self) -> None:
        svc, ns = self.svc, self.ns
        seen: set[str] = set()
        try:
            while True:
                config = self._next_config(seen)
                if config is None:
                    return
                seen.add(config)
                manifest = self._manifest_for_config(config)
                if manifest is None:
                    continue
                config_desc, layers = imgs.parse_manifest(manifest, svc.read_blob(ns, manifest))
                cfg = imgs.parse_config(svc.read_blob(ns, config_desc))
                if cfg.platform.os and not self.matcher.match(cfg.platform):
                    continue
                self.result = self.unpacker.unpack_manifest(manifest, config_desc, layers, cfg,
                                                            wait=self._wait_blob)
                return
        except _Stopped:
            return
        except BaseException as e:
            self._error = e

    # -- the end ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the worker (after its current layer) and wait for it; keeps what it committed."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def finish(self, target: Descriptor) -> str:
        """Wait for the session; make sure ``target``'s manifest for the platform is unpacked; return
        its top chain ID.  On failure what the session committed is removed and the error raised."""
        self.close()
        try:
            if self._error is not None:
                raise self._error
            read = self.svc.reader(self.ns)
            want = imgs.manifest_for_platform(read, target, self.matcher)
            if self.result is None or self.result.manifest != want.digest:
                self.result = self.unpacker.unpack(target, self.matcher)
            return self.result.top
        except BaseException:
            self.unpacker.rollback()
            raise

    def abort(self) -> None:
        """Stop and remove what the session committed."""
        self.close()
        self.unpacker.rollback()

    def __enter__(self) -> UnpackSession:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()
