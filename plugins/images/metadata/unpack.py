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
import uuid
from collections.abc import Iterator
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
        self.sn_name = snapshotter
        self.sn = svc.md.snapshotter(snapshotter)
        self.sn_short = snapshotter.rsplit(".", 1)[-1]
        self.lease = lease
        self.created: list[str] = []

    def _differ(self) -> Any:
        return self.svc.registry.get("diff")

    def unpack(self, target: Descriptor, matcher: plat.Matcher | None = None) -> UnpackResult:
        svc, ns = self.svc, self.ns
        read = svc.reader(ns)
        manifest = imgs.manifest_for_platform(read, target, matcher or plat.default())
        config_desc, layers = imgs.parse_manifest(manifest, read(manifest))
        cfg = imgs.parse_config(read(config_desc))
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
            self._layer(differ, layer, diff_id, chain_id, parent)
            parent = chain_id
        svc.set_blob_labels(ns, config_desc.digest, {f"{imgs.GC_REF_SNAPSHOT}.{self.sn_short}": chain[-1]})
        return UnpackResult(top=chain[-1], snapshotter=self.sn_short, chain=chain, created=list(self.created))

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

    def rollback(self) -> None:
        """Remove the snapshots this unpack committed (top first), e.g. when the import that ran it
        fails.  Snapshots another image grew children on are left to the garbage collector."""
        for key in reversed(self.created):
            try:
                self.sn.remove(self.ns, key)
            except PyctrError as e:
                log.info("leaving snapshot %s to the garbage collector: %s", key, e)
        self.created.clear()
