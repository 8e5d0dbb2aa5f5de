"""Import and export of image archives: OCI image layout tars and ``docker save`` tars.

**Import** (containerd's ``core/images/archive/importer.go``, stricter):

* An OCI layout tar needs ``oci-layout`` (version 1.0.0) and ``index.json``; blobs are
  ``blobs/<alg>/<hex>``.  A docker tar needs ``manifest.json`` (``repositories`` is ignored); a manifest
  is synthesised for each entry, named by its ``RepoTags`` normalised like references
  (``acc/app:3`` -> ``docker.io/acc/app:3``).  Symlinked and hard-linked files are followed.
* Names: ``io.containerd.image.name`` as-is; else ``org.opencontainers.image.ref.name``: a bare tag is
  prefixed with ``--base-name`` (default ``import-<date>``) as ``NAME:TAG``, a full reference is kept
  (with ``--base-name``, only when it starts with it).  An entry with no name is named
  ``<base>@<digest>``.  ``--index-name`` also names the whole index.
* Checks, all before any byte goes into the store: every descriptor's digest is well formed, its size is
  within ``max_blob_size`` (JSON within ``max_json_size``, 20 MiB) and equals the size of the archive
  member; each index/manifest/config is read and its digest verified; index entries of unknown media
  types are skipped (as the image spec says), schema 1 is refused.  Layers are verified while they are
  written (the store's commit checks digest and size).
* Everything is written under a lease; records are made only once all content is in (and, with
  ``unpack``, unpacked).  On failure the content the import added to the namespace, the snapshots it
  committed and the lease are removed: no record, no active snapshot, no unverified content.

**Export** writes an OCI layout (``oci-layout``, ``index.json`` with ``io.containerd.image.name`` and
``org.opencontainers.image.ref.name`` annotations, ``blobs/sha256/...``) plus, for images with one manifest
for the platform, a docker ``manifest.json``, so ``skopeo ... oci-archive:`` / ``docker-archive:``,
``docker load`` and ``ctr images import`` read it.  The file is written to a temporary name, fsynced and
renamed into place.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import logging
import os
import posixpath
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pyctr import images as imgs
from pyctr import mediatypes as mt
from pyctr import platforms as plat
from pyctr import reference
from pyctr.content import Descriptor
from pyctr.errdefs import (
    AlreadyExists,
    Conflict,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NotImplementedErr,
    PyctrError,
)
from pyctr.images import Image

if TYPE_CHECKING:
    from .service import ImageService
    from .unpack import Unpacker

log = logging.getLogger("pyctr.plugin.pyctr.images.metadata")

ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
OCI_LAYOUT_VERSION = "1.0.0"
CHUNK = 1 << 20
MAX_LINK_DEPTH = 16
#: how long to wait for another writer of the same blob before giving up
WRITER_WAIT_S = 600.0


# ---------------------------------------------------------------------------------------------------
# reading the archive
# ---------------------------------------------------------------------------------------------------


def _clean(name: str) -> str:
    n = posixpath.normpath("/" + name).lstrip("/")
    return "" if n == "." else n


class Archive:
    """A tar opened for random access: members by clean path, links followed, sizes known up front."""

    def __init__(self, fileobj: IO[bytes]) -> None:
        try:
            self.tar = tarfile.open(fileobj=fileobj, mode="r:*")  # noqa: SIM115 - closed by close()
            members = self.tar.getmembers()
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            why = str(e).splitlines()[0].rstrip(":") if str(e) else type(e).__name__
            raise DataLoss(f"not a readable tar archive (plain, gzip, bzip2 or xz): {why}") from None
        self.members: dict[str, tarfile.TarInfo] = {}
        for m in members:
            name = _clean(m.name)
            if name:
                self.members[name] = m

    def member(self, path: str) -> tarfile.TarInfo | None:
        """The regular file at ``path``, following symlinks and hard links inside the archive."""
        name = _clean(path)
        for _ in range(MAX_LINK_DEPTH):
            m = self.members.get(name)
            if m is None:
                return None
            if m.isreg():
                return m
            if m.issym():
                name = _clean(posixpath.join(posixpath.dirname(name), m.linkname))
            elif m.islnk():
                name = _clean(m.linkname)
            else:
                return None
        raise DataLoss(f"archive member {path!r}: too many levels of links")

    @contextlib.contextmanager
    def open(self, m: tarfile.TarInfo) -> Iterator[IO[bytes]]:
        f = self.tar.extractfile(m)
        if f is None:
            raise DataLoss(f"archive member {m.name!r} is not a regular file")
        try:
            yield f
        finally:
            f.close()

    def read(self, m: tarfile.TarInfo, limit: int) -> bytes:
        if m.size > limit:
            raise InvalidArgument(f"archive member {m.name!r} is {m.size} bytes; JSON is capped at {limit}")
        try:
            with self.open(m) as f:
                data = f.read()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataLoss(f"archive member {m.name!r} cannot be read (truncated archive?): {e}") from None
        if len(data) != m.size:
            raise DataLoss(f"archive member {m.name!r} is truncated: {len(data)} of {m.size} bytes")
        return data

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.tar.close()


def _decompressor(head: bytes) -> Any:
    """A function opening a decompressing reader for the magic bytes ``head``, or None (plain tar)."""
    if head[:3] == b"\x1f\x8b\x08":
        try:
            from isal import igzip

            return lambda f: igzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[no-untyped-call]
        except ImportError:  # pragma: no cover - isal is a dependency
            import gzip

            return lambda f: gzip.GzipFile(fileobj=f, mode="rb")
    if head[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard

        return lambda f: zstandard.ZstdDecompressor().stream_reader(f)
    if head[:3] == b"BZh":
        import bz2

        return lambda f: bz2.BZ2File(f, "rb")
    if head[:6] == b"\xfd7zXZ\x00":
        import lzma

        return lambda f: lzma.LZMAFile(f, "rb")
    return None


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise DataLoss(f"{what} is not valid JSON: {e}") from None


def _known_entries(desc: Descriptor, data: bytes, where: str) -> list[Descriptor]:
    """The manifests and indexes an index lists; entries of other media types are skipped, as the
    image spec says; schema 1 and documents with both index and manifest fields are refused."""
    kids = imgs.parse_index(desc, data)
    doc = _json(data, where)
    if "layers" in doc or "config" in doc:
        raise DataLoss(f"{where} has manifest fields (layers/config): ambiguous document refused")
    if not isinstance(doc.get("manifests"), list):
        raise DataLoss(f"{where} has no manifests list")
    known: list[Descriptor] = []
    for k in kids:
        mt.check_supported(k.media_type, where)
        if mt.is_index(k.media_type) or mt.is_manifest(k.media_type):
            known.append(k)
        else:
            log.info("import: skipping entry %s of %s: unknown media type %r", k.digest, where, k.media_type)
    return known


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------------
# the import plan
# ---------------------------------------------------------------------------------------------------


@dataclass
class Blob:
    """One blob to put in the store: from memory (``data``) or from an archive member."""

    desc: Descriptor
    data: bytes | None = None
    member: tarfile.TarInfo | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Plan:
    blobs: dict[str, Blob] = field(default_factory=dict)  # by digest, in insertion order
    images: list[Image] = field(default_factory=list)

    def add(self, blob: Blob) -> None:
        have = self.blobs.get(blob.desc.digest)
        if have is None:
            self.blobs[blob.desc.digest] = blob
        else:
            have.labels.update(blob.labels)


def _ref_translator(base: str | None, explicit: bool) -> Any:
    """containerd's ``AddRefPrefix``/``FilterRefPrefix``: a bare tag becomes ``base:tag``; a full
    reference is kept (with an explicit base, only if it is under that base)."""

    def tr(ref: str) -> str:
        if not base:
            return ""
        if any(c in ref for c in "/:@"):
            if explicit and not (ref == base or ref.startswith(base + ":") or ref.startswith(base + "@")
                                 or ref.startswith(base + "/")):
                return ""
            return ref
        return f"{base}:{ref}"

    return tr


class Importer:
    """One import into namespace ``ns``."""

    def __init__(self, svc: ImageService, ns: str) -> None:
        self.svc = svc
        self.ns = ns
        self.max_blob = svc.max_blob_size
        self.max_json = svc.max_json_size

    # -- entry point ------------------------------------------------------------------------------

    def run(
        self,
        source: str | Path | IO[bytes],
        *,
        base_name: str | None = None,
        index_name: str | None = None,
        all_platforms: bool = False,
        unpack: bool = True,
        snapshotter: str | None = None,
        digests: bool = False,
        platform: str | None = None,
    ) -> list[Image]:
        matcher: plat.Matcher = plat.AnyMatcher() if all_platforms else (
            plat.only(platform) if platform else plat.default())
        unpack_matcher = plat.only(platform) if platform else plat.default()
        with self._source(source) as fileobj:
            archive = Archive(fileobj)
            try:
                plan = self._plan(archive, base_name, index_name, digests, matcher)
                return self._apply(archive, plan, unpack, snapshotter, unpack_matcher)
            finally:
                archive.close()

    @contextlib.contextmanager
    def _source(self, source: str | Path | IO[bytes]) -> Iterator[IO[bytes]]:
        """The archive as a seekable, uncompressed tar stream.  A pipe is spooled to a temporary file
        and a compressed archive decompressed into one (random access into a compressed stream would
        decompress it again for every backward seek)."""
        with contextlib.ExitStack() as stack:
            if isinstance(source, str | Path) and str(source) != "-":
                try:
                    stream: IO[bytes] = stack.enter_context(open(source, "rb"))
                except FileNotFoundError:
                    raise NotFound(f"archive {str(source)!r} does not exist") from None
                except IsADirectoryError:
                    raise InvalidArgument(f"{str(source)!r} is a directory; tar an OCI layout first") from None
            else:
                stream = sys.stdin.buffer if isinstance(source, str | Path) else source
            seekable = False
            with contextlib.suppress(AttributeError, OSError, ValueError):
                seekable = stream.seekable() and stream.tell() >= 0
            tmpdir = self.svc.root / "tmp"
            tmpdir.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not seekable:
                raw = stack.enter_context(tempfile.TemporaryFile(dir=tmpdir))
                shutil.copyfileobj(stream, raw, CHUNK)
                raw.seek(0)
                stream = raw
            start = stream.tell()
            opener = _decompressor(stream.read(6))
            stream.seek(start)
            if opener is None:
                yield stream
                return
            spool = stack.enter_context(tempfile.TemporaryFile(dir=tmpdir))
            try:
                with opener(stream) as src:
                    shutil.copyfileobj(src, spool, CHUNK)
            except (OSError, EOFError, ValueError) as e:
                raise DataLoss(f"the compressed archive cannot be read (truncated?): {e}") from None
            except Exception as e:  # zstandard raises its own ZstdError
                raise DataLoss(f"the compressed archive cannot be read: {e}") from None
            spool.seek(0)
            yield spool

    # -- planning: read and check every descriptor before writing anything ------------------------

    def _plan(self, archive: Archive, base_name: str | None, index_name: str | None, digests: bool,
              matcher: plat.Matcher) -> Plan:
        layout = archive.member("oci-layout")
        index_m = archive.member("index.json")
        manifest_m = archive.member("manifest.json")
        if layout is not None or (index_m is not None and manifest_m is None):
            if layout is None:
                raise InvalidArgument(
                    "archive has index.json but no oci-layout file: not an OCI image layout")
            if index_m is None:
                raise InvalidArgument("OCI image layout archive has no index.json")
            doc = _json(archive.read(layout, self.max_json), "oci-layout")
            version = doc.get("imageLayoutVersion") if isinstance(doc, dict) else None
            if version != OCI_LAYOUT_VERSION:
                raise NotImplementedErr(
                    f"unsupported OCI image layout version {version!r} (want {OCI_LAYOUT_VERSION})")
            index_bytes = archive.read(index_m, self.max_json)
            return self._plan_oci(archive, index_bytes, base_name, index_name, digests, matcher)
        if manifest_m is not None:
            return self._plan_docker(archive, archive.read(manifest_m, self.max_json), base_name, index_name,
                                     digests)
        raise InvalidArgument(
            "unrecognised archive: neither an OCI image layout (oci-layout, index.json) nor a docker save "
            "archive (manifest.json)"
        )

    def _base(self, base_name: str | None) -> str:
        return base_name or f"import-{datetime.date.today().isoformat()}"

    def _check_desc(self, d: Descriptor, where: str) -> None:
        if d.size > self.max_blob:
            raise InvalidArgument(
                f"{where}: {d.digest} claims {d.size} bytes, more than the limit of {self.max_blob}"
            )
        if (mt.is_index(d.media_type) or mt.is_manifest(d.media_type) or mt.is_config(d.media_type)) and \
                d.size > self.max_json:
            raise InvalidArgument(
                f"{where}: {d.media_type} {d.digest} claims {d.size} bytes; JSON is capped at {self.max_json}"
            )

    def _blob_member(self, archive: Archive, d: Descriptor, where: str) -> tarfile.TarInfo:
        alg, _, hexpart = d.digest.partition(":")
        m = archive.member(f"blobs/{alg}/{hexpart}")
        if m is None:
            raise NotFound(f"{where}: blob {d.digest} is not in the archive")
        if m.size != d.size:
            raise DataLoss(
                f"{where}: blob {d.digest} is {m.size} bytes in the archive, its descriptor says {d.size}")
        return m

    def _read_json_blob(self, archive: Archive, d: Descriptor, where: str) -> tuple[bytes, tarfile.TarInfo]:
        m = self._blob_member(archive, d, where)
        data = archive.read(m, self.max_json)
        got = _sha256(data)
        if got != d.digest:
            raise DataLoss(f"{where}: blob {d.digest} has digest {got}: the archive is corrupt")
        return data, m

    def _plan_oci(self, archive: Archive, index_bytes: bytes, base_name: str | None, index_name: str | None,
                  digests: bool, matcher: plat.Matcher) -> Plan:
        index_desc = Descriptor(mt.OCI_INDEX, _sha256(index_bytes), len(index_bytes))
        entries = _known_entries(index_desc, index_bytes, "index.json")
        plan = Plan()
        if not entries:
            raise InvalidArgument("the archive's index.json lists no image manifest or index of a known type")
        base = self._base(base_name)
        tr = _ref_translator(base, explicit=bool(base_name))
        for d in entries:
            names: list[str] = []
            name = d.annotations.get(ANNOTATION_IMAGE_NAME, "")
            if not name and d.annotations.get(ANNOTATION_REF_NAME):
                name = tr(d.annotations[ANNOTATION_REF_NAME])
                if not name:
                    continue  # named outside --base-name: not this import's business (containerd filters it)
            if name:
                names.append(name)
            if digests or not names:
                names.append(f"{base}@{d.digest}")
            self._walk(archive, d, plan, matcher, "index.json", 0)
            for n in names:
                plan.images.append(Image(name=n, target=d))
        if index_name:
            plan.add(Blob(index_desc, data=index_bytes, labels=imgs.child_gc_labels(index_desc, entries)))
            plan.images.append(Image(name=index_name, target=index_desc))
        if not plan.images:
            raise InvalidArgument(f"no image in the archive is named under {base_name!r}")
        return plan

    def _walk(self, archive: Archive, d: Descriptor, plan: Plan, matcher: plat.Matcher, where: str,
              depth: int) -> None:
        if depth > 8:
            raise DataLoss(f"{where}: indexes nested too deep")
        if d.digest in plan.blobs:
            return
        self._check_desc(d, where)
        if mt.is_index(d.media_type):
            data, _ = self._read_json_blob(archive, d, where)
            known = _known_entries(d, data, f"index {d.digest}")
            plan.add(Blob(d, data=data, labels=imgs.child_gc_labels(d, known)))
            wanted = imgs.select_manifests(known, matcher)
            if known and not wanted and not isinstance(matcher, plat.AnyMatcher):
                log.info("import: index %s has no manifest for %s", d.digest, matcher)
            for k in wanted:
                self._walk(archive, k, plan, matcher, f"index {d.digest}", depth + 1)
        elif mt.is_manifest(d.media_type):
            data, _ = self._read_json_blob(archive, d, where)
            doc = _json(data, f"manifest {d.digest}")
            if "manifests" in doc:
                raise DataLoss(f"manifest {d.digest} has index fields: ambiguous document refused")
            config, layers = imgs.parse_manifest(d, data)
            plan.add(Blob(d, data=data, labels=imgs.child_gc_labels(d, [config, *layers])))
            here = f"manifest {d.digest}"
            self._check_desc(config, here)
            cdata, _ = self._read_json_blob(archive, config, here)
            if mt.is_config(config.media_type):
                imgs.parse_config(cdata)  # must be a valid config
            plan.add(Blob(config, data=cdata))
            for layer in layers:
                self._check_desc(layer, here)
                if layer.digest in plan.blobs:
                    continue
                alg, _, hexpart = layer.digest.partition(":")
                shipped = archive.member(f"blobs/{alg}/{hexpart}") is not None
                if not shipped and mt.is_non_distributable(layer.media_type):
                    continue  # foreign layer: fetched from its URLs, never shipped in archives
                plan.add(Blob(layer, member=self._blob_member(archive, layer, here)))
        else:
            mt.check_supported(d.media_type, where)
            raise InvalidArgument(
                f"{where}: {d.digest} is a {d.media_type!r}, not an image manifest or index")

    def _plan_docker(self, archive: Archive, manifest_bytes: bytes, base_name: str | None,
                     index_name: str | None, digests: bool) -> Plan:
        doc = _json(manifest_bytes, "manifest.json")
        if not isinstance(doc, list):
            raise DataLoss("manifest.json is not a JSON list")
        plan = Plan()
        layer_cache: dict[str, Blob] = {}
        entries: list[Descriptor] = []
        for i, entry in enumerate(doc):
            if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
                raise DataLoss(f"manifest.json entry {i} has no Config")
            where = f"manifest.json entry {i}"
            cm = archive.member(entry["Config"])
            if cm is None:
                raise NotFound(f"{where}: config {entry['Config']!r} is not in the archive")
            cdata = archive.read(cm, self.max_json)
            cfg = imgs.parse_config(cdata)
            config = Descriptor(mt.DOCKER_CONFIG, _sha256(cdata), len(cdata))
            plan.add(Blob(config, data=cdata))
            paths = entry.get("Layers") or []
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                raise DataLoss(f"{where}: Layers is not a list of paths")
            if len(paths) != len(cfg.diff_ids):
                raise DataLoss(
                    f"{where}: {len(paths)} layers but the config lists {len(cfg.diff_ids)} diff ids")
            layers: list[Descriptor] = []
            for p, diff_id in zip(paths, cfg.diff_ids, strict=True):
                blob = layer_cache.get(p)
                if blob is None:
                    m = archive.member(p)
                    if m is None:
                        raise NotFound(f"{where}: layer {p!r} is not in the archive")
                    if m.size > self.max_blob:
                        raise InvalidArgument(f"{where}: layer {p!r} is {m.size} bytes, more than the limit")
                    with archive.open(m) as f:
                        head = f.read(4)
                    if head[:3] == b"\x1f\x8b\x08":
                        media, digest = mt.DOCKER_LAYER_GZIP, ""
                    elif head == b"\x28\xb5\x2f\xfd":
                        media, digest = mt.DOCKER_LAYER_ZSTD, ""
                    else:
                        media, digest = mt.DOCKER_LAYER, diff_id  # verified when written
                    if not digest:
                        # learn the digest now (the archive is seekable), so the manifest can name it
                        digest = self._digest_member(archive, m)
                    blob = Blob(Descriptor(media, digest, m.size), member=m)
                    layer_cache[p] = blob
                layers.append(blob.desc)
                plan.add(blob)
            mdoc = {
                "schemaVersion": 2,
                "mediaType": mt.DOCKER_MANIFEST,
                "config": config.to_oci(),
                "layers": [x.to_oci() for x in layers],
            }
            mbytes = json.dumps(mdoc, separators=(",", ":")).encode()
            pf = cfg.platform.to_oci() if cfg.platform.os else None
            mdesc = Descriptor(mt.DOCKER_MANIFEST, _sha256(mbytes), len(mbytes), platform=pf)
            plan.add(Blob(mdesc, data=mbytes, labels=imgs.child_gc_labels(mdesc, [config, *layers])))
            entries.append(mdesc)
            tags = entry.get("RepoTags") or []
            if not isinstance(tags, list):
                raise DataLoss(f"{where}: RepoTags is not a list")
            names: list[str] = []
            for t in tags:
                if not isinstance(t, str):
                    raise DataLoss(f"{where}: RepoTags has a non-string")
                try:
                    n = reference.normalize(t)
                except InvalidArgument as e:
                    raise InvalidArgument(f"{where}: {e}") from None
                if n not in names:
                    names.append(n)
            if digests or not names:
                names.append(f"{self._base(base_name)}@{mdesc.digest}")
            for n in names:
                plan.images.append(Image(name=n, target=mdesc))
        if not entries:
            raise InvalidArgument("manifest.json lists no images")
        if index_name:
            ibytes = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                                 "manifests": [e.to_oci() for e in entries]}, separators=(",", ":")).encode()
            idx = Descriptor(mt.OCI_INDEX, _sha256(ibytes), len(ibytes))
            plan.add(Blob(idx, data=ibytes, labels=imgs.child_gc_labels(idx, entries)))
            plan.images.append(Image(name=index_name, target=idx))
        return plan

    def _digest_member(self, archive: Archive, m: tarfile.TarInfo) -> str:
        h = hashlib.sha256()
        n = 0
        try:
            with archive.open(m) as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    n += len(chunk)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataLoss(f"archive member {m.name!r} cannot be read (truncated archive?): {e}") from None
        if n != m.size:
            raise DataLoss(f"archive member {m.name!r} is truncated: {n} of {m.size} bytes")
        return "sha256:" + h.hexdigest()

    # -- applying the plan ----------------------------------------------------------------------

    def _apply(self, archive: Archive, plan: Plan, unpack: bool, snapshotter: str | None,
               matcher: plat.Matcher) -> list[Image]:
        svc, ns = self.svc, self.ns
        added: list[str] = []
        unpackers: list[Unpacker] = []
        with svc.temporary_lease(ns, "import") as lease:
            try:
                # manifests and configs first (in memory), then layers in manifest order
                for blob in sorted(plan.blobs.values(), key=lambda b: b.data is None):
                    if self._write(archive, blob, lease):
                        added.append(blob.desc.digest)
                # Unpacked after the copy, not during it (an UnpackSession as pulls use): a local copy is
                # fast, and overlapping the two measured no faster on two cores.
                if unpack:
                    from .unpack import Unpacker

                    sn = svc.snapshotter_name(ns, snapshotter)
                    targets = {i.target.digest: i for i in plan.images}
                    for img in targets.values():
                        try:
                            imgs.manifest_for_platform(svc.reader(ns), img.target, matcher)
                        except NotFound:
                            log.info("import: %s has nothing for %s; not unpacked", img.name, matcher)
                            continue
                        u = Unpacker(svc, ns, sn, lease)
                        unpackers.append(u)
                        u.unpack(img.target, matcher)
                out: list[Image] = []
                with svc.md.db.tx():
                    for img in plan.images:
                        out.append(svc.create_or_update(ns, img))
                return out
            except BaseException:
                for u in reversed(unpackers):
                    u.rollback()
                mine = set(added)
                for digest in reversed(added):
                    if self._referenced_elsewhere(digest, mine):
                        continue  # a concurrent import or pull committed it too: the GC decides
                    try:
                        svc.content.delete(ns, digest)
                    except PyctrError as e:
                        log.warning("import rollback: cannot delete %s: %s", digest, e)
                if added:
                    with contextlib.suppress(Exception):
                        svc.schedule_garbage_collection()  # the bytes themselves
                raise

    def _write(self, archive: Archive, blob: Blob, lease: str) -> bool:
        """Put ``blob`` into the namespace's content; True if it was not there before."""
        svc, ns, d = self.svc, self.ns, blob.desc
        cs = svc.content
        svc.lease_add(ns, lease, "content", d.digest)  # held before it exists: the GC never sees it bare
        if cs.exists(ns, d.digest):
            svc.set_blob_labels(ns, d.digest, blob.labels)
            return False
        ref = f"import-{imgs.ingest_ref(d)}"
        delay, waited = 0.016, 0.0
        while True:
            try:
                w = cs.writer(ns, ref, d.size, d.digest)
                break
            except AlreadyExists:
                svc.set_blob_labels(ns, d.digest, blob.labels)
                return True
            except Conflict:
                # another import or pull is writing this blob (containerd's OpenWriter backs off too)
                if waited > WRITER_WAIT_S:
                    raise
                time.sleep(delay)
                waited += delay
                delay = min(delay * 2, 2.0)
                if cs.exists(ns, d.digest):
                    svc.set_blob_labels(ns, d.digest, blob.labels)
                    return False
        committed = False
        try:
            if w.offset:
                w.truncate(0)
            if blob.data is not None:
                w.write(blob.data)
            else:
                assert blob.member is not None
                n = 0
                try:
                    with archive.open(blob.member) as f:
                        while chunk := f.read(CHUNK):
                            w.write(chunk)
                            n += len(chunk)
                except (tarfile.TarError, EOFError, OSError) as e:
                    raise DataLoss(
                        f"blob {d.digest} cannot be read from the archive (truncated?): {e}") from None
                if n != d.size:
                    raise DataLoss(f"blob {d.digest} is truncated in the archive: {n} of {d.size} bytes")
            try:
                w.commit(d.size, d.digest, labels=blob.labels)
            except AlreadyExists:
                svc.set_blob_labels(ns, d.digest, blob.labels)
            committed = True
        except FailedPrecondition as e:  # the store's size or digest check at commit
            raise DataLoss(f"blob {d.digest} in the archive does not match its descriptor: {e}") from None
        finally:
            if not committed:
                with contextlib.suppress(Exception):
                    w.abort()
        return True

    def _referenced_elsewhere(self, digest: str, mine: set[str]) -> bool:
        """Whether an image record or a blob this import did not add points at ``digest``."""
        db = self.svc.md.db
        if self.svc.store.by_target(self.ns, digest):
            return True
        rows = db.query("SELECT digest FROM content WHERE ns=? AND labels LIKE ?", (self.ns, f"%{digest}%"))
        return any(r[0] not in mine for r in rows)


# ---------------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------------


def _oci_ref_name(name: str) -> str:
    """containerd's ``ociReferenceName``: the tag (or digest) part of a full name."""
    ref = reference.try_parse(name)
    if ref is None:
        return name
    return ref.tag or ref.digest or name


def _docker_tag(name: str) -> str | None:
    ref = reference.try_parse(name)
    if ref is None or not ref.tag:
        return None
    return f"{ref.familiar_name}:{ref.tag}"


def _tarinfo(name: str, size: int = 0, *, directory: bool = False) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = 0 if directory else size
    ti.mode = 0o755 if directory else 0o444
    ti.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def export(
    svc: ImageService,
    ns: str,
    dest: str | Path | IO[bytes],
    images: Sequence[Image],
    *,
    platforms: Sequence[str] | None = None,
    all_platforms: bool = False,
    skip_manifest_json: bool = False,
) -> dict[str, Any]:
    cs = svc.content
    read = svc.reader(ns)
    matcher: plat.Matcher = plat.AnyMatcher() if all_platforms else plat.matcher_for(list(platforms or []))
    blobs: dict[str, Descriptor] = {}
    index_entries: list[dict[str, Any]] = []
    docker: dict[str, dict[str, Any]] = {}
    for img in images:
        for d in _export_walk(svc, ns, img.target, matcher):
            blobs.setdefault(d.digest, d)
        ann = dict(img.target.annotations)
        ann[ANNOTATION_IMAGE_NAME] = img.name
        ann[ANNOTATION_REF_NAME] = _oci_ref_name(img.name)
        entry = Descriptor(img.target.media_type, img.target.digest, img.target.size, annotations=ann,
                           platform=img.target.platform, urls=img.target.urls).to_oci()
        index_entries.append(entry)
        if skip_manifest_json:
            continue
        try:
            manifest = imgs.manifest_for_platform(read, img.target, matcher if platforms else plat.default())
            config, layers = imgs.parse_manifest(manifest, read(manifest))
        except PyctrError:
            continue
        if any(not cs.exists(ns, x.digest) for x in layers):
            continue
        mj = docker.setdefault(manifest.digest, {
            "Config": f"blobs/sha256/{config.digest.partition(':')[2]}",
            "RepoTags": [],
            "Layers": [f"blobs/sha256/{x.digest.partition(':')[2]}" for x in layers],
        })
        tag = _docker_tag(img.name)
        if tag and tag not in mj["RepoTags"]:
            mj["RepoTags"].append(tag)
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": index_entries}
    files: list[tuple[str, bytes]] = [
        ("oci-layout", json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}).encode()),
        ("index.json", json.dumps(index, separators=(",", ":")).encode()),
    ]
    if docker:
        files.append(("manifest.json", json.dumps(list(docker.values()), separators=(",", ":")).encode()))

    def write(out: IO[bytes]) -> None:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_tarinfo("blobs", directory=True))
            tar.addfile(_tarinfo("blobs/sha256", directory=True))
            for d in blobs.values():
                ti = _tarinfo(f"blobs/sha256/{d.digest.partition(':')[2]}", d.size)
                with cs.open(ns, d.digest) as f:
                    tar.addfile(ti, f)
            for name, data in files:
                tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))

    if isinstance(dest, str | Path) and str(dest) != "-":
        path = Path(dest)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            with contextlib.suppress(OSError):
                dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    else:
        out: IO[bytes] = sys.stdout.buffer if isinstance(dest, str | Path) else dest
        write(out)
        out.flush()
    return {
        "images": [i.name for i in images],
        "blobs": len(blobs),
        "size": sum(d.size for d in blobs.values()),
        "docker_manifest": bool(docker),
    }


def _export_walk(svc: ImageService, ns: str, target: Descriptor, matcher: plat.Matcher) -> list[Descriptor]:
    """What to write for ``target``: the target, the manifests ``matcher`` selects and their configs and
    layers.  All must be present, except foreign layers and, with ``--all-platforms``, manifests the
    index lists but this store never fetched."""
    available, missing = svc.walk_content(ns, target, matcher)
    for d in missing:
        if mt.is_non_distributable(d.media_type):
            continue
        if isinstance(matcher, plat.AnyMatcher) and d is not target and (
                mt.is_manifest(d.media_type) or mt.is_index(d.media_type)):
            continue
        raise NotFound(f"blob {d.digest} ({d.media_type}) of the image is not in the content store; "
                       "pull the image again")
    return available
