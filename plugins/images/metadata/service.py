"""The images service: records, tags, inspection, checks, pruning, and the entry points of import,
export and unpack.  The instance of ``pyctr.images.metadata`` (``client.plugin("images")``).

Every method takes the namespace ``ns`` explicitly and plain arguments, and returns plain data or
:class:`~pyctr.images.Image` records (which convert with ``to_dict``), so it can sit behind the daemon.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pyctr import images as imgs
from pyctr import mediatypes as mt
from pyctr import platforms as plat
from pyctr import reference
from pyctr.content import Descriptor
from pyctr.errdefs import AlreadyExists, InvalidArgument, NotFound, PyctrError
from pyctr.images import Image
from pyctr.metadata.images import ImageStore
from pyctr.metadata.namespaces import LABEL_DEFAULT_SNAPSHOTTER

if TYPE_CHECKING:
    from .unpack import UnpackSession

log = logging.getLogger("pyctr.plugin.pyctr.images.metadata")

#: how long an import's or unpack's lease keeps its content if the process dies mid-way
LEASE_EXPIRY_S = 24 * 3600


class ImageService:
    """Image records plus what works on the content behind them."""

    def __init__(self, md: Any, registry: Any, *, root: Path, state: Path, config: Mapping[str, Any]) -> None:
        self.md = md
        self.registry = registry
        self.root = Path(root)
        self.state = Path(state)
        self.config = dict(config)
        # events: the metadata store's publisher, publish(ns, topic, payload), once the core offers one
        publish = getattr(md, "publish", None)
        self.store = ImageStore(md.db, publish=publish if callable(publish) else None)
        self.max_blob_size = int(self.config.get("max_blob_size", 64 << 30))
        self.max_json_size = int(self.config.get("max_json_size", 20 << 20))

    # -- records ---------------------------------------------------------------------------------

    def get(self, ns: str, name: str) -> Image:
        return self.store.get(ns, name)

    def resolve(self, ns: str, name: str) -> Image:
        """The image called ``name``, or else the one called by ``name``'s normalised reference
        (``busybox`` finds ``docker.io/library/busybox:latest``)."""
        try:
            return self.store.get(ns, name)
        except NotFound:
            ref = reference.try_parse(name)
            if ref is None or str(ref) == name:
                raise
            try:
                return self.store.get(ns, str(ref))
            except NotFound:
                raise NotFound(f"image {name!r} not found in namespace {ns!r}") from None

    def list(self, ns: str, filters: Iterable[str] = ()) -> list[Image]:
        return self.store.list(ns, filters)

    def create(self, ns: str, image: Image) -> Image:
        return self.store.create(ns, image)

    def update(self, ns: str, image: Image, fieldpaths: Iterable[str] = ()) -> Image:
        return self.store.update(ns, image, fieldpaths)

    def create_or_update(self, ns: str, image: Image) -> Image:
        img, _ = self.store.create_or_update(ns, image)
        return img

    def tag(self, ns: str, source: str, target: str, *, force: bool = False) -> Image:
        """Name ``source``'s target ``target`` too (``force`` re-points an existing ``target``)."""
        src = self.resolve(ns, source)
        new = Image(name=target, target=src.target, labels=dict(src.labels))
        if force:
            return self.create_or_update(ns, new)
        try:
            return self.store.create(ns, new)
        except AlreadyExists:
            raise AlreadyExists(
                f"image {target!r} already exists in namespace {ns!r} (use --force)") from None

    def delete(self, ns: str, name: str, *, sync: bool = False) -> Image:
        """Remove the record; the garbage collector removes content and snapshots nothing else holds
        (right away with ``sync``)."""
        img = self.store.delete(ns, self.resolve(ns, name).name)
        if sync:
            self.collect_garbage()
        else:
            self.schedule_garbage_collection()
        return img

    def _gc(self) -> Any:
        try:
            return self.registry.get("gc")
        except PyctrError:
            return None

    def collect_garbage(self) -> None:
        """Run the garbage collector now, if one is loaded."""
        gc = self._gc()
        for meth in ("schedule_and_wait", "collect", "run"):
            fn = getattr(gc, meth, None)
            if callable(fn):
                fn()
                return

    def schedule_garbage_collection(self) -> None:
        """Ask the garbage collector for a collection soon (in a one-shot CLI: when it closes)."""
        fn = getattr(self._gc(), "schedule", None)
        if callable(fn):
            fn()

    # -- content helpers -------------------------------------------------------------------------

    @property
    def content(self) -> Any:
        return self.md.content

    def read_blob(self, ns: str, desc: Descriptor, limit: int | None = None) -> bytes:
        """A small blob (index, manifest, config) from the namespace's content, capped at ``limit``."""
        cap = self.max_json_size if limit is None else limit
        if desc.size > cap:
            raise InvalidArgument(
                f"{desc.digest}: {desc.media_type} of {desc.size} bytes exceeds the limit of {cap}")
        data: bytes = self.content.read(ns, desc.digest)
        return data

    def reader(self, ns: str) -> imgs.ReadFn:
        def read(desc: Descriptor) -> bytes:
            return self.read_blob(ns, desc)

        return read

    def set_blob_labels(self, ns: str, digest: str, labels: Mapping[str, str]) -> None:
        """Merge ``labels`` into the blob's labels (``""`` removes one)."""
        if not labels:
            return
        cs = self.content
        info = cs.info(ns, digest)
        if all(info.labels.get(k, "") == v for k, v in labels.items()):
            return
        cs.update(ns, digest, dict(labels), [f"labels.{k}" for k in labels])

    # -- leases ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def temporary_lease(self, ns: str, purpose: str) -> Iterator[str]:
        """A lease that holds what an operation creates until the records that keep it exist; deleted
        when the block ends, whatever happens."""
        leases = self.md.leases
        lease_id = f"pyctr-{purpose}-{uuid.uuid4().hex[:12]}"
        lid: str = leases.create(ns, lease_id, ttl=LEASE_EXPIRY_S).id
        try:
            yield lid
        finally:
            try:
                leases.delete(ns, lid)
            except NotFound:
                pass
            except PyctrError as e:
                log.warning("cannot delete lease %s: %s", lid, e)

    def lease_add(self, ns: str, lease_id: str, kind: str, resource: str) -> None:
        """Put ``resource`` (``content``: a digest; ``snapshots/<sn>``: a key) into the lease."""
        self.md.leases.add_resource(ns, lease_id, kind, resource)

    # -- snapshotters ----------------------------------------------------------------------------

    def snapshotter_name(self, ns: str, name: str | None = None) -> str:
        """``name``, else the namespace's default (label ``containerd.io/defaults/snapshotter``), else
        the configured one, else the store's default."""
        if name:
            return name
        with contextlib.suppress(NotFound):
            labels = self.md.namespaces.labels(ns)
            if labels.get(LABEL_DEFAULT_SNAPSHOTTER):
                return str(labels[LABEL_DEFAULT_SNAPSHOTTER])
        if self.config.get("snapshotter"):
            return str(self.config["snapshotter"])
        return str(self.md.default_snapshotter())

    # -- unpack ----------------------------------------------------------------------------------

    def unpack(self, ns: str, name: str, snapshotter: str | None = None, platform: str | None = None) -> str:
        """Unpack ``name``'s layers (for ``platform``, default the host) into ``snapshotter``; return the
        chain ID of the top layer.  Layers already committed are reused."""
        img = self.resolve(ns, name)
        return self.unpack_target(ns, img.target, snapshotter, platform)

    def unpack_target(self, ns: str, target: Descriptor, snapshotter: str | None = None,
                      platform: str | None = None, *, lease: str | None = None) -> str:
        """Unpack the image whose root descriptor is ``target`` (no record needed: a pull unpacks before
        it makes the record).  With ``lease``, what is committed is held by that lease and removed again
        if the unpack fails; without, a temporary lease is used.  Returns the top chain ID."""
        from .unpack import Unpacker

        matcher = plat.only(platform) if platform else plat.default()
        sn = self.snapshotter_name(ns, snapshotter)
        if lease is None:
            with self.temporary_lease(ns, "unpack") as tmp:
                return Unpacker(self, ns, sn, tmp).unpack(target, matcher).top
        u = Unpacker(self, ns, sn, lease)
        try:
            return u.unpack(target, matcher).top
        except BaseException:
            u.rollback()
            raise

    def pull(self, ns: str, ref: str, *, platforms: Sequence[str] | None = None, all_platforms: bool = False,
             plain_http: bool = False, user: str | None = None, unpack: bool = True,
             snapshotter: str | None = None) -> Iterator[dict[str, Any]]:
        """Pull ``ref``: fetch it from its registry (the ``distribution`` plugin), unpack each layer as it
        arrives, then record the image -- all under one lease, so a failure at any step leaves no record,
        no snapshot and no unverified content.

        A generator (streamed item by item through the daemon): ``{"progress": ProgressEvent}`` while it
        works, then one ``{"result": FetchResult, "top": top chain ID or ""}``.  Closing it early cancels
        the pull.
        """
        import queue
        import threading

        from pyctr.errdefs import Unavailable

        dist = self.registry.get("distribution")
        platform = platforms[0] if platforms else None
        events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        cancelled = threading.Event()

        def progress(ev: Any) -> None:
            if cancelled.is_set():
                raise Unavailable(f"pull of {ref} cancelled")
            events.put(("progress", ev))

        def work() -> None:
            try:
                with self.temporary_lease(ns, "pull") as lease:
                    kw: dict[str, Any] = {"platforms": list(platforms) if platforms else None,
                                          "all_platforms": all_platforms, "plain_http": plain_http,
                                          "user": user, "lease_id": lease}
                    top = ""
                    if unpack:
                        with self.unpack_session(ns, snapshotter, platform, lease=lease) as session:
                            res = dist.fetch(ns, ref, progress=session.progress(progress), **kw)
                            top = session.finish(res.target)
                    else:
                        res = dist.fetch(ns, ref, progress=progress, **kw)
                    self.create_or_update(ns, Image(name=res.name, target=res.target))
                events.put(("done", (res, top)))
            except BaseException as e:  # handed to the consumer, who raises it
                events.put(("error", e))

        worker = threading.Thread(target=work, name=f"pull {ref}", daemon=True)
        worker.start()
        try:
            while True:
                kind, value = events.get()
                if kind == "progress":
                    yield {"progress": value}
                elif kind == "error":
                    raise value
                else:
                    res, top = value
                    yield {"result": res, "top": top}
                    return
        finally:
            cancelled.set()
            worker.join()

    def unpack_session(self, ns: str, snapshotter: str | None = None, platform: str | None = None, *,
                       lease: str | None = None) -> UnpackSession:
        """Start unpacking while a pull fetches (see :class:`~.unpack.UnpackSession`)::

            with images.temporary_lease(ns, "pull") as lease:
                with images.unpack_session(ns, snapshotter, platform, lease=lease) as session:
                    res = dist.fetch(ns, ref, progress=session.progress(renderer), lease_id=lease)
                    top = session.finish(res.target)      # raises (and cleans up) if unpack failed
                images.create_or_update(ns, Image(name=res.name, target=res.target))
        """
        from .unpack import UnpackSession

        matcher = plat.only(platform) if platform else plat.default()
        return UnpackSession(self, ns, self.snapshotter_name(ns, snapshotter), lease, matcher)

    # -- archives --------------------------------------------------------------------------------

    def import_archive(
        self,
        ns: str,
        source: str | Path | IO[bytes],
        base_name: str | None = None,
        index_name: str | None = None,
        all_platforms: bool = False,
        unpack: bool = True,
        snapshotter: str | None = None,
        digests: bool = False,
        platform: str | None = None,
    ) -> builtins.list[Image]:
        """Import an OCI image layout tar or a ``docker save`` tar (a path, ``-`` for stdin, or a binary
        stream).  Every descriptor is checked before the records are made; on any failure nothing is
        left behind.  Returns the records made or updated."""
        from .archive import Importer

        return Importer(self, ns).run(
            source, base_name=base_name, index_name=index_name, all_platforms=all_platforms,
            unpack=unpack, snapshotter=snapshotter, digests=digests, platform=platform,
        )

    def export_archive(
        self,
        ns: str,
        dest: str | Path | IO[bytes],
        refs: Sequence[str],
        platforms: Sequence[str] | None = None,
        all_platforms: bool = False,
        skip_manifest_json: bool = False,
    ) -> dict[str, Any]:
        """Write the images ``refs`` as an OCI layout tar (plus a docker ``manifest.json`` for what has
        one manifest for the platform) to ``dest`` (a path, ``-`` for stdout, or a binary stream)."""
        from .archive import export

        images = [self.resolve(ns, r) for r in refs]
        if not images:
            raise InvalidArgument("name at least one image to export")
        return export(self, ns, dest, images, platforms=platforms, all_platforms=all_platforms,
                      skip_manifest_json=skip_manifest_json)

    # -- inspection ------------------------------------------------------------------------------

    def _platforms(self, ns: str, target: Descriptor) -> builtins.list[str]:
        """``os/arch[/variant]`` of each manifest an index lists (or of a manifest's config)."""
        try:
            if mt.is_index(target.media_type):
                kids = imgs.parse_index(target, self.read_blob(ns, target))
                return imgs.index_platforms([k for k in kids if k.platform or mt.is_manifest(k.media_type)])
            if mt.is_manifest(target.media_type):
                config, _ = imgs.parse_manifest(target, self.read_blob(ns, target))
                cfg = imgs.parse_config(self.read_blob(ns, config))
                return [plat.format_platform(cfg.platform)] if cfg.platform.os else []
        except PyctrError:
            return []
        return []

    def walk_content(self, ns: str, target: Descriptor, matcher: plat.Matcher | None
                     ) -> tuple[builtins.list[Descriptor], builtins.list[Descriptor]]:
        """``(available, missing)``: the descriptors reachable from ``target`` (index entries filtered by
        ``matcher``; None: all) that the namespace's content has, parents first, and those it lacks."""
        cs = self.content
        available: builtins.list[Descriptor] = []
        missing: builtins.list[Descriptor] = []
        seen: set[str] = set()
        stack = [target]
        while stack:
            d = stack.pop(0)
            if d.digest in seen:
                continue
            seen.add(d.digest)
            if not cs.exists(ns, d.digest):
                missing.append(d)
                continue
            available.append(d)
            if mt.is_index(d.media_type) or mt.is_manifest(d.media_type):
                try:
                    kids = imgs.children(d, self.read_blob(ns, d))
                except PyctrError:
                    continue
                if mt.is_index(d.media_type) and matcher is not None:
                    kids = imgs.select_manifests(kids, matcher)
                stack.extend(kids)
        return available, missing

    def size(self, ns: str, image: Image, platform: str | None = None) -> int:
        """Bytes of the image's content present for ``platform`` (default: the host)."""
        matcher = plat.only(platform) if platform else plat.default()
        available, _ = self.walk_content(ns, image.target, matcher)
        return sum(d.size for d in available)

    def unpacked(self, ns: str, image: Image, snapshotter: str | None = None) -> bool:
        """Whether the top layer of ``image`` (host platform) is committed in ``snapshotter``."""
        sn = self.snapshotter_name(ns, snapshotter)
        try:
            top = self.top_chain_id(ns, image.target)
            info = self.md.snapshotter(sn).stat(ns, top)
        except Exception:  # no such snapshot, snapshotter or image content: not unpacked
            return False
        return str(getattr(info, "kind", "")).lower() == "committed"

    def top_chain_id(self, ns: str, target: Descriptor, platform: str | None = None) -> str:
        matcher = plat.only(platform) if platform else plat.default()
        read = self.reader(ns)
        manifest = imgs.manifest_for_platform(read, target, matcher)
        config, _ = imgs.parse_manifest(manifest, read(manifest))
        return imgs.chain_id(imgs.parse_config(read(config)).diff_ids)

    def summary(self, ns: str, image: Image) -> dict[str, Any]:
        """What ``images ls`` shows: name, type, digest, size, platforms, labels."""
        return {
            "name": image.name,
            "type": image.target.media_type,
            "digest": image.target.digest,
            "size": self.size(ns, image),
            "platforms": self._platforms(ns, image.target),
            "labels": dict(image.labels),
        }

    def check(self, ns: str, name: str, snapshotter: str | None = None) -> dict[str, Any]:
        """containerd's ``images check``: how much of the image's content is here, and whether it is
        unpacked.  ``status`` is ``complete`` (everything for the host platform is present),
        ``incomplete`` or ``missing`` (not even the target)."""
        img = self.resolve(ns, name)
        available, missing = self.walk_content(ns, img.target, plat.default())
        if not available:
            status = "missing"
        elif missing:
            status = "incomplete"
        else:
            status = "complete"
        return {
            "name": img.name,
            "type": img.target.media_type,
            "digest": img.target.digest,
            "status": status,
            "available": len(available),
            "required": len(available) + len(missing),
            "size": sum(d.size for d in available),
            "missing": [d.to_oci() for d in missing],
            "unpacked": self.unpacked(ns, img, snapshotter) if status == "complete" else False,
        }

    def inspect(self, ns: str, name: str) -> dict[str, Any]:
        """The record, the manifests (with platforms), the host platform's config and layers, and the
        content status, as one plain dict."""
        img = self.resolve(ns, name)
        out: dict[str, Any] = img.to_dict()
        out["platforms"] = self._platforms(ns, img.target)
        read = self.reader(ns)
        try:
            if mt.is_index(img.target.media_type):
                out["index"] = [m.to_oci() for m in imgs.parse_index(img.target, read(img.target))]
            manifest = imgs.manifest_for_platform(read, img.target, plat.default())
            config, layers = imgs.parse_manifest(manifest, read(manifest))
            cfg = imgs.parse_config(read(config))
            out["manifest"] = manifest.to_oci()
            out["config_descriptor"] = config.to_oci()
            out["config"] = cfg.raw
            out["layers"] = [x.to_oci() for x in layers]
            out["chain_ids"] = imgs.chain_ids(cfg.diff_ids)
        except PyctrError as e:
            out["error"] = str(e)
        chk = self.check(ns, img.name)
        out["check"] = {k: v for k, v in chk.items() if k not in ("name", "type", "digest")}
        return out

    # -- prune -----------------------------------------------------------------------------------

    def images_in_use(self, ns: str) -> set[str]:
        """Names of images that containers in ``ns`` were made from."""
        from pyctr.metadata.containers import ContainerStore

        return {c.image for c in ContainerStore(self.md.db).list(ns) if c.image}

    def prune(self, ns: str, all: bool = False, *, sync: bool = False) -> builtins.list[str]:
        """Remove images no container uses.  Without ``all`` only *dangling* ones: records whose
        target content is gone or whose name is a bare digest reference (``repo@sha256:...``).
        Returns the removed names."""
        used = self.images_in_use(ns)
        removed: builtins.list[str] = []
        for img in self.store.list(ns):
            if img.name in used:
                continue
            if not all:
                ref = reference.try_parse(img.name)
                dangling = (ref is not None and bool(ref.digest) and not ref.tag) or not self.content.exists(
                    ns, img.target.digest)
                if not dangling:
                    continue
            with contextlib.suppress(NotFound):
                self.store.delete(ns, img.name)
                removed.append(img.name)
        if removed and sync:
            self.collect_garbage()
        return removed

    def close(self) -> None:
        pass

