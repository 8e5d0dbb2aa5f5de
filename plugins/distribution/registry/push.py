"""Pushing an image graph from the content store to a registry.

Children go before parents: configs and layers first (in parallel, ``max_concurrent_uploads``), then
manifests (by digest), then the root (by tag).  Per blob, as containerd's pusher does:

1. ``HEAD blobs/<digest>``: the registry has it -> skip;
2. when the blob's ``containerd.io/distribution.source.<host>`` label names another repository on the
   same registry, try a cross-repository mount ``POST blobs/uploads/?mount=<digest>&from=<repo>``
   (201: done; 202: the registry declined and opened an upload session instead);
3. otherwise ``POST blobs/uploads/`` and then either one ``PUT ...?digest=`` with the whole blob
   (monolithic, the default) or ``PATCH`` chunks of ``upload_chunk_size`` and a final ``PUT``.

With ``platforms`` and an index as target, only the matching manifests are pushed: one match is pushed
as the tag itself; several are pushed under a new index listing just them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pyctr import images as img
from pyctr import mediatypes as mt
from pyctr import platforms as plat
from pyctr.content import Descriptor
from pyctr.errdefs import FailedPrecondition, NotFound, PyctrError, Unavailable
from pyctr.reference import Reference

from .auth import scope_for
from .client import TRANSIENT_ERRORS, RepositoryClient, describe_os_error
from .pull import ProgressEvent, ProgressFn

if TYPE_CHECKING:
    from .service import RegistryService

log = logging.getLogger("pyctr.distribution")


class _ChunkReader:
    """A file-like view of ``limit`` bytes of ``f`` (for PATCH bodies)."""

    def __init__(self, f: Any, limit: int) -> None:
        self.f = f
        self.left = limit

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = self.left if n < 0 else min(n, self.left)
        data: bytes = self.f.read(n)
        self.left -= len(data)
        return data


class Pusher:
    def __init__(self, service: RegistryService, rc: RepositoryClient, content: Any, ns: str,
                 ref: Reference, *, matcher: plat.Matcher | None, progress: ProgressFn | None) -> None:
        self.service = service
        self.rc = rc
        self.content = content
        self.ns = ns
        self.ref = ref
        self.matcher = matcher
        self.progress = progress
        self.source_key, _ = img.distribution_source_label(ref.domain, ref.path)
        self.bytes_sent = 0
        self._lock = threading.Lock()

    def _emit(self, ev: ProgressEvent) -> None:
        if self.progress is not None:
            try:
                self.progress(ev)
            except Exception:
                log.debug("progress callback failed", exc_info=True)

    def _read(self, desc: Descriptor) -> bytes:
        try:
            return bytes(self.content.read(self.ns, desc.digest))
        except NotFound:
            raise NotFound(f"cannot push {self.ref}: {desc.digest} ({desc.media_type}) is not in the content "
                           "store; pull it first (or use --platform for the platforms you have)") from None

    # -- planning ------------------------------------------------------------------------------

    def _plan(
        self, target: Descriptor
    ) -> tuple[Descriptor, bytes | None, list[Descriptor], list[Descriptor]]:
        """``(root, root body if synthesised, manifests children-first, blobs)``."""
        root, root_body = target, None
        if self.matcher is not None and mt.is_index(target.media_type):
            kids = img.parse_index(target, self._read(target))
            chosen = img.select_manifests(kids, self.matcher)
            chosen = [k for k in chosen if mt.is_manifest(k.media_type) or mt.is_index(k.media_type)]
            if not chosen:
                raise img.no_match_error(str(self.ref), kids, self.matcher)
            if len(chosen) == 1:
                root = chosen[0]
            else:
                doc = json.loads(self._read(target))
                doc["manifests"] = [k.to_oci() for k in chosen]
                root_body = json.dumps(doc, separators=(",", ":")).encode()
                root = Descriptor(target.media_type, "sha256:" + hashlib.sha256(root_body).hexdigest(),
                                  len(root_body))
        manifests: list[Descriptor] = []
        blobs: dict[str, Descriptor] = {}
        seen: set[str] = set()

        def visit(d: Descriptor, body: bytes | None, depth: int) -> None:
            if d.digest in seen:
                return
            seen.add(d.digest)
            if depth > 8:
                raise FailedPrecondition(f"{d.digest}: indexes nested too deep")
            mt.check_supported(d.media_type, d.digest)
            if mt.is_index(d.media_type) or mt.is_manifest(d.media_type):
                for k in img.children(d, body if body is not None else self._read(d)):
                    visit(k, None, depth + 1)
                manifests.append(d)  # after its children
            else:
                if mt.is_non_distributable(d.media_type) and d.urls:
                    return  # foreign layers stay where their URLs point
                blobs.setdefault(d.digest, d)

        visit(root, root_body, 0)
        return root, root_body, manifests, list(blobs.values())

    def run(self, target: Descriptor) -> None:
        root, root_body, manifests, blobs = self._plan(target)
        for b in blobs:
            if not self.content.exists(self.ns, b.digest):
                raise NotFound(f"cannot push {self.ref}: blob {b.digest} is not in the content store")
        workers = max(1, self.service.max_uploads)
        if workers == 1 or len(blobs) <= 1:
            for b in blobs:
                self.push_blob(b)
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pyctr-push") as pool:
                for f in [pool.submit(self.push_blob, b) for b in blobs]:
                    f.result()
        for m in manifests:
            body = root_body if (m.digest == root.digest and root_body is not None) else self._read(m)
            is_root = m.digest == root.digest
            tag = self.ref.tag if is_root and self.ref.tag and not self.ref.digest else m.digest
            self.put_manifest(m, body, tag)

    # -- manifests -----------------------------------------------------------------------------

    def put_manifest(self, desc: Descriptor, body: bytes, ref: str) -> None:
        ev_ref = img.ingest_ref(desc)
        self._emit(ProgressEvent(ev_ref, desc.digest, mt.kind(desc.media_type), "uploading", 0, desc.size))
        resp = self.rc.request("PUT", f"manifests/{ref}", {"Content-Type": desc.media_type}, body,
                               ok=(200, 201, 202), what=f"manifest {ref}")
        resp.close()
        with self._lock:
            self.bytes_sent += len(body)
        got = resp.header("Docker-Content-Digest")
        if got and got != desc.digest:
            log.warning("registry %s stored manifest %s as %s", self.rc.where, desc.digest, got)
        self._emit(ProgressEvent(ev_ref, desc.digest, mt.kind(desc.media_type), "done", desc.size, desc.size))

    # -- blobs ---------------------------------------------------------------------------------

    def _mount_source(self, desc: Descriptor) -> str:
        """Another repository on this registry the blob came from (the distribution-source label)."""
        try:
            labels = self.content.info(self.ns, desc.digest).labels
        except NotFound:
            return ""
        repos = [r for r in labels.get(self.source_key, "").split(",") if r and r != self.ref.path]
        return repos[0] if repos else ""

    def push_blob(self, desc: Descriptor) -> None:
        kind = mt.kind(desc.media_type)
        ev_ref = img.ingest_ref(desc)
        resp = self.rc.request("HEAD", f"blobs/{desc.digest}", ok=(200, 404), what=f"blob {desc.digest}")
        resp.close()
        if resp.status == 200:
            self._emit(ProgressEvent(ev_ref, desc.digest, kind, "exists", desc.size, desc.size))
            return
        location = ""
        src = self._mount_source(desc)
        if src:
            q = urllib.parse.urlencode({"mount": desc.digest, "from": src})
            resp = self.rc.request("POST", f"blobs/uploads/?{q}", ok=(201, 202),
                                   what=f"mount of {desc.digest}", extra_scopes=[scope_for(src, ("pull",))])
            resp.close()
            if resp.status == 201:
                self._emit(ProgressEvent(ev_ref, desc.digest, kind, "mounted", desc.size, desc.size,
                                         message=f"from {src}"))
                return
            location = resp.header("Location")
        attempts = 0
        while True:
            try:
                self._upload(desc, location, ev_ref, kind)
                return
            except PyctrError:
                raise
            except TRANSIENT_ERRORS as e:
                attempts += 1
                location = ""
                if attempts > self.service.retries:
                    raise Unavailable(
                        f"upload of {desc.digest} to {self.rc.where}: {describe_os_error(e)}") from None
                self._emit(ProgressEvent(ev_ref, desc.digest, kind, "retrying", 0, desc.size,
                                         message=describe_os_error(e)))
                time.sleep(min(self.service.backoff * (2 ** attempts), 10.0))

    def _start(self) -> str:
        resp = self.rc.request("POST", "blobs/uploads/", ok=(202,), what="upload start")
        resp.close()
        loc = resp.header("Location")
        if not loc:
            raise Unavailable(f"{self.rc.where}: the registry opened an upload without a Location")
        return loc

    def _abs(self, loc: str) -> str:
        return urllib.parse.urljoin(self.rc.url(""), loc)

    def _upload(self, desc: Descriptor, location: str, ev_ref: str, kind: str) -> None:
        loc = self._abs(location or self._start())
        chunk = self.service.chunk_size
        self._emit(ProgressEvent(ev_ref, desc.digest, kind, "uploading", 0, desc.size))
        with self.content.open(self.ns, desc.digest) as f:
            if chunk and desc.size > chunk:
                off = 0
                while off < desc.size:
                    n = min(chunk, desc.size - off)
                    resp = self.rc.request(
                        "PATCH", loc,
                        {"Content-Type": "application/octet-stream", "Content-Length": str(n),
                         "Content-Range": f"{off}-{off + n - 1}"},
                        _ChunkReader(f, n), ok=(202,), what=f"upload of {desc.digest}")  # type: ignore[arg-type]
                    resp.close()
                    loc = self._abs(resp.header("Location") or loc)
                    off += n
                    self._emit(ProgressEvent(ev_ref, desc.digest, kind, "uploading", off, desc.size))
                body: Any = None
                length = 0
            else:
                body, length = f, desc.size
            sep = "&" if "?" in loc else "?"
            url = f"{loc}{sep}{urllib.parse.urlencode({'digest': desc.digest})}"
            resp = self.rc.request(
                "PUT", url, {"Content-Type": "application/octet-stream", "Content-Length": str(length)},
                body, ok=(201, 204), what=f"upload of {desc.digest}")
            resp.close()
        with self._lock:
            self.bytes_sent += desc.size
        self._emit(ProgressEvent(ev_ref, desc.digest, kind, "done", desc.size, desc.size))
