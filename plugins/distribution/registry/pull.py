"""Pulling: resolve a reference, then fetch its graph into the namespaced content store.

The graph is walked as containerd's handler chain does (``FetchHandler`` -> ``ChildrenHandler`` ->
``SetChildrenMappedLabels`` -> ``FilterPlatforms`` -> ``LimitManifests`` ->
``AppendDistributionSourceLabel``):

* the root (index or manifest) and every selected manifest are fetched whole (at most 4 MiB), checked
  against their digest, and committed with the GC labels naming their children and the
  ``containerd.io/distribution.source.<host>`` label;
* configs and layers are fetched in parallel (``max_concurrent_downloads``), streamed into an ingest
  whose ref is containerd's ``MakeRefKey`` (``layer-<digest>``); a rerun opens the same ingest and asks
  for the rest with a ``Range`` request; bytes that do not hash to the digest are refused and the ingest
  is dropped, so nothing wrong is ever committed;
* everything is held by a lease while it is written, so the garbage collector cannot take half a pull.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from pyctr import images as img
from pyctr import mediatypes as mt
from pyctr import platforms as plat
from pyctr.content import Descriptor
from pyctr.errdefs import (
    AlreadyExists,
    Conflict,
    DataLoss,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PyctrError,
    Unavailable,
)
from pyctr.reference import Reference

from .client import BUFSIZE, TRANSIENT_ERRORS, InFlight, RepositoryClient, describe_os_error

log = logging.getLogger("pyctr.distribution")

GENERIC_CONTENT_TYPES = ("", "application/json", "text/plain", "application/octet-stream")


@dataclass
class ProgressEvent:
    """One step of a transfer, for progress bars.

    ``state``: ``resolving``, ``resolved``, ``waiting`` (another writer has the blob), ``downloading``,
    ``uploading``, ``retrying``, ``exists`` (already there), ``mounted``, ``done``, ``error``.
    """

    ref: str  # ingest-style ref: layer-sha256:...
    digest: str
    kind: str
    state: str
    offset: int = 0
    total: int = 0
    resumed_from: int = 0
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


ProgressFn = Callable[[ProgressEvent], None]


@dataclass
class FetchResult:
    """What :meth:`RegistryService.fetch` brought in."""

    name: str
    target: Descriptor
    manifests: list[Descriptor] = field(default_factory=list)
    blobs: int = 0  # blobs in the fetched graph
    fetched: int = 0  # blobs actually downloaded (others were present)
    bytes_total: int = 0  # size of the fetched graph
    bytes_fetched: int = 0  # bytes downloaded in this run
    bytes_resumed: int = 0  # bytes an interrupted earlier run had already ingested
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["target"] = self.target.to_dict()
        d["manifests"] = [m.to_dict() for m in self.manifests]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FetchResult:
        d = dict(d)
        d["target"] = Descriptor.from_dict(d["target"])
        d["manifests"] = [Descriptor.from_dict(m) for m in d.get("manifests", [])]
        return cls(**d)


# -- resolving ---------------------------------------------------------------------------------------


def _media_type(ct: str) -> str:
    return ct.split(";", 1)[0].strip()


def resolve(rc: RepositoryClient, ref: Reference) -> tuple[Descriptor, bytes | None]:
    """The descriptor ``ref`` names on the registry (and the body, when it had to be fetched).

    Tags are resolved with ``HEAD manifests/<tag>``; without ``Docker-Content-Digest`` (or when the
    registry refuses HEAD with 403, or sends a generic content type) with GET, hashing the body.
    """
    obj = ref.digest or ref.tag or "latest"
    headers = {"Accept": mt.MANIFEST_ACCEPT}
    what = f"manifest {obj}" if ref.digest else f"tag {ref.tag!r}"
    try:
        resp = rc.request("HEAD", f"manifests/{obj}", headers, what=what)
        resp.close()
        ct = _media_type(resp.header("Content-Type"))
        dgst = resp.header("Docker-Content-Digest") or ref.digest
        size = resp.header("Content-Length")
        if dgst and size.isdigit() and ct not in GENERIC_CONTENT_TYPES:
            mt.check_supported(ct, f"{rc.where}:{obj}")
            if ref.digest and dgst != ref.digest:
                raise DataLoss(f"{rc.where}: asked for {ref.digest}, the registry answered {dgst}")
            if int(size) > img.MAX_MANIFEST_SIZE:
                raise DataLoss(f"{rc.where}:{obj}: manifest of {size} bytes is over the "
                               f"{img.MAX_MANIFEST_SIZE}-byte limit")
            return Descriptor(ct, dgst, int(size)), None
    except PermissionDenied:
        pass  # some registries refuse HEAD: try GET, which gives the real error if it fails too
    except NotFound:
        if not ref.digest:
            raise NotFound(f"{rc.where}:{obj}: not found (no such tag)") from None
        # a digest may name a blob rather than a manifest
        resp = rc.request("HEAD", f"blobs/{obj}", what=what)
        resp.close()
        return Descriptor(_media_type(resp.header("Content-Type")) or "application/octet-stream", obj,
                          int(resp.header("Content-Length") or 0)), None
    resp = rc.request("GET", f"manifests/{obj}", headers, what=what)
    body = resp.read(img.MAX_MANIFEST_SIZE)
    ct = _media_type(resp.header("Content-Type"))
    if ct in GENERIC_CONTENT_TYPES:
        ct = mt.detect(body)
    mt.check_supported(ct, f"{rc.where}:{obj}")
    dgst = "sha256:" + hashlib.sha256(body).hexdigest()
    if ref.digest and dgst != ref.digest:
        raise DataLoss(f"{rc.where}: manifest {ref.digest} has bytes that hash to {dgst}")
    return Descriptor(ct, dgst, len(body)), body


# -- fetching ----------------------------------------------------------------------------------------


class Fetcher:
    """Fetches one image graph for one namespace.  Thread-safe for its own worker threads."""

    def __init__(
        self,
        rc: RepositoryClient,
        content: Any,
        ns: str,
        ref: Reference,
        *,
        matcher: plat.Matcher,
        limit: int,
        lease: tuple[Any, str] | None,
        concurrency: int = 3,
        progress: ProgressFn | None = None,
        retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        self.rc = rc
        self.content = content
        self.ns = ns
        self.ref = ref
        self.matcher = matcher
        self.limit = limit
        self.lease = lease
        self.concurrency = max(1, concurrency)
        self.progress = progress
        self.retries = retries
        self.backoff = backoff
        self.source_key, _ = img.distribution_source_label(ref.domain, ref.path)
        self._lock = threading.Lock()
        self.result = FetchResult(name=str(ref), target=Descriptor("", "sha256:" + "0" * 64, 0))
        self._seen: set[str] = set()
        self._cancel = threading.Event()  # set when one transfer failed: the others stop early
        self._inflight = InFlight()  # this pull's connections, shut down on cancel

    # -- helpers -------------------------------------------------------------------------------

    def _emit(self, ev: ProgressEvent) -> None:
        if self.progress is not None:
            try:
                self.progress(ev)
            except Exception:  # a broken progress bar must not break the pull
                log.debug("progress callback failed", exc_info=True)

    def _hold(self, dgst: str) -> None:
        if self.lease is not None:
            leases, lease_id = self.lease
            leases.add_resource(self.ns, lease_id, "content", dgst)

    def _labels_for(self, desc: Descriptor, kids: list[Descriptor]) -> dict[str, str]:
        labels = img.child_gc_labels(desc, kids)
        existing = ""
        with contextlib.suppress(NotFound):
            existing = self.content.info(self.ns, desc.digest).labels.get(self.source_key, "")
        labels[self.source_key] = img.merge_distribution_source(existing, self.ref.path)
        return labels

    def _exists(self, dgst: str) -> bool:
        return bool(self.content.exists(self.ns, dgst))

    def _update_labels(self, dgst: str, labels: dict[str, str]) -> None:
        self.content.update(self.ns, dgst, labels, [f"labels.{k}" for k in labels])

    def _count(self, desc: Descriptor, fetched: int, resumed: int, downloaded: bool) -> None:
        with self._lock:
            self.result.blobs += 1
            self.result.bytes_total += desc.size
            self.result.bytes_fetched += fetched
            self.result.bytes_resumed += resumed
            if downloaded:
                self.result.fetched += 1

    def _open_writer(self, desc: Descriptor) -> Any:
        """The ingest writer for ``desc``; None when the blob turned up meanwhile.  Waits while another
        process writes the same blob (its lock), as containerd does."""
        ref = img.ingest_ref(desc)
        waited = False
        while True:
            self._check_cancel()
            if self._exists(desc.digest):
                return None
            try:
                return self.content.writer(self.ns, ref, desc.size, desc.digest)
            except AlreadyExists:
                return None
            except Conflict:
                if not waited:
                    kind = mt.kind(desc.media_type)
                    self._emit(ProgressEvent(ref, desc.digest, kind, "waiting", 0, desc.size))
                    waited = True
                time.sleep(0.1)

    # -- small documents -----------------------------------------------------------------------

    def _get_manifest(self, desc: Descriptor, body: bytes | None) -> bytes:
        """The bytes of a manifest or index: from the store when present, else from the registry."""
        if self._exists(desc.digest):
            return bytes(self.content.read(self.ns, desc.digest))
        if body is None:
            if desc.size > img.MAX_MANIFEST_SIZE:
                raise DataLoss(f"{self.rc.where}: manifest {desc.digest} of {desc.size} bytes is over the "
                               f"{img.MAX_MANIFEST_SIZE}-byte limit")
            resp = self.rc.request("GET", f"manifests/{desc.digest}", {"Accept": mt.MANIFEST_ACCEPT},
                                   what=f"manifest {desc.digest}", inflight=self._inflight)
            body = resp.read(img.MAX_MANIFEST_SIZE)
        got = "sha256:" + hashlib.sha256(body).hexdigest()
        if got != desc.digest or (desc.size and len(body) != desc.size):
            raise DataLoss(f"{self.rc.where}: manifest {desc.digest} arrived as {len(body)} bytes hashing to "
                           f"{got}; refused")
        return body

    def _store_small(self, desc: Descriptor, body: bytes, labels: dict[str, str]) -> None:
        self._hold(desc.digest)
        if self._exists(desc.digest):
            self._update_labels(desc.digest, labels)
            self._count(desc, 0, 0, False)
            return
        w = self._open_writer(desc)
        if w is None:
            self._update_labels(desc.digest, labels)
            self._count(desc, 0, 0, False)
            return
        try:
            if w.offset:
                w.truncate(0)
            w.write(body)
            w.commit(len(body), desc.digest, labels)
        except AlreadyExists:
            self._update_labels(desc.digest, labels)
        except BaseException:
            _quiet_abort(w)
            raise
        self._count(desc, len(body), 0, True)

    # -- blobs ---------------------------------------------------------------------------------

    def fetch_blob(self, desc: Descriptor, labels: dict[str, str]) -> None:
        """Stream one config or layer into the store, resuming a previous ingest with a Range GET."""
        kind = mt.kind(desc.media_type)
        ref = img.ingest_ref(desc)
        self._hold(desc.digest)
        w = self._open_writer(desc)
        if w is None:
            self._update_labels(desc.digest, labels)
            self._count(desc, 0, 0, False)
            self._emit(ProgressEvent(ref, desc.digest, kind, "exists", desc.size, desc.size))
            return
        fetched = 0
        try:
            resumed = w.offset
            if resumed > desc.size:
                w.truncate(0)
                resumed = 0
            self._emit(ProgressEvent(ref, desc.digest, kind, "downloading", resumed, desc.size,
                                     resumed_from=resumed))
            failures = 0
            buf = bytearray(BUFSIZE)
            mv = memoryview(buf)
            while w.offset < desc.size:
                start = w.offset
                try:
                    got, restarted = self._stream(desc, w, mv, start, ref, kind)
                    fetched += got
                    if restarted:
                        resumed = 0  # the server ignored the range: the blob came whole
                except (Unavailable, DeadlineExceeded) as e:
                    if not w.offset:
                        raise
                    raise type(e)(f"{e}; {w.offset} of {desc.size} bytes kept, run the pull again to resume"
                                  ) from None
                except PyctrError:
                    raise
                except TRANSIENT_ERRORS as e:
                    self._check_cancel()
                    moved = w.offset > start
                    failures = 0 if moved else failures + 1
                    if failures > self.retries:
                        cls = DeadlineExceeded if isinstance(e, TimeoutError) else Unavailable
                        raise cls(f"blob {desc.digest} from {self.rc.where}: {describe_os_error(e)} at byte "
                                  f"{w.offset} of {desc.size}; run the pull again to resume") from None
                    self._emit(ProgressEvent(ref, desc.digest, kind, "retrying", w.offset, desc.size,
                                             message=describe_os_error(e)))
                    time.sleep(min(self.backoff * (2 ** failures), 10.0))
            got = w.digest()
            if got != desc.digest:
                _quiet_abort(w)
                raise DataLoss(f"blob {desc.digest} from {self.rc.where}: the bytes hash to {got}; refused, "
                               "nothing committed")
            try:
                w.commit(desc.size, desc.digest, labels)
            except AlreadyExists:
                self._update_labels(desc.digest, labels)
        except DataLoss:
            _quiet_abort(w)  # wrong bytes are never kept for a resume
            raise
        except BaseException:
            # keep what arrived for a resume; an empty ingest is not worth keeping
            _quiet_close(w) if _offset(w) else _quiet_abort(w)
            raise
        self._count(desc, fetched, resumed, True)
        self._emit(ProgressEvent(ref, desc.digest, kind, "done", desc.size, desc.size, resumed_from=resumed))

    def _stream(self, desc: Descriptor, w: Any, mv: memoryview, start: int, ref: str,
                kind: str) -> tuple[int, bool]:
        """GET the blob from ``start`` into ``w``: ``(bytes received, whether it started over)``."""
        headers = {"Range": f"bytes={start}-"} if start else {}
        resp = self.rc.request("GET", f"blobs/{desc.digest}", headers, ok=(200, 206),
                               what=f"blob {desc.digest}", on_retry=self._check_cancel,
                               inflight=self._inflight)
        got = 0
        restarted = False
        try:
            if start:
                if resp.status == 200:
                    w.truncate(0)  # the server ignored the range: start over
                    restarted = True
                else:
                    cr = resp.header("Content-Range")
                    if not cr.startswith(f"bytes {start}-"):
                        raise DataLoss(f"blob {desc.digest}: asked for bytes {start}-, got range {cr!r}")
            last = 0.0
            while True:
                if self._cancel.is_set():
                    raise _Cancelled()
                n = resp.readinto(mv)
                if n == 0:
                    break
                w.write(mv[:n])
                got += n
                if w.offset > desc.size:
                    raise DataLoss(f"blob {desc.digest} from {self.rc.where}: more than the {desc.size} "
                                   "bytes its descriptor says; refused")
                now = time.monotonic()
                if now - last > 0.1:
                    last = now
                    self._emit(ProgressEvent(ref, desc.digest, kind, "downloading", w.offset, desc.size))
            if w.offset < desc.size:
                raise ConnectionResetError(f"connection closed at byte {w.offset} of {desc.size}")
        except BaseException:
            resp.close(reuse=False)
            if self._cancel.is_set():
                raise _Cancelled() from None
            raise
        resp.close()
        return got, restarted

    def _check_cancel(self, *_: object) -> None:
        if self._cancel.is_set():
            raise _Cancelled()

    def cancel(self) -> None:
        """Stop every transfer now: flag them and wake those blocked reading a socket."""
        self._cancel.set()
        self._inflight.abort()

    # -- the graph -----------------------------------------------------------------------------

    def run(self, root: Descriptor, root_body: bytes | None) -> FetchResult:
        t0 = time.monotonic()
        self.result.target = root
        leaves: dict[str, Descriptor] = {}
        self._walk(root, root_body, leaves, depth=0)
        if leaves:
            self._fetch_leaves(list(leaves.values()))
        self.result.seconds = time.monotonic() - t0
        return self.result

    def _walk(self, desc: Descriptor, body: bytes | None, leaves: dict[str, Descriptor], depth: int) -> None:
        if desc.digest in self._seen:
            return
        self._seen.add(desc.digest)
        if depth > 8:
            raise DataLoss(f"{self.rc.where}: indexes nested too deep at {desc.digest}")
        mt.check_supported(desc.media_type, f"{self.rc.where}@{desc.digest}")
        if not (mt.is_index(desc.media_type) or mt.is_manifest(desc.media_type)):
            leaves.setdefault(desc.digest, desc)
            return
        data = self._get_manifest(desc, body)
        kids = img.children(desc, data)
        labels = self._labels_for(desc, kids)
        self._store_small(desc, data, labels)
        if mt.is_index(desc.media_type):
            selected = img.select_manifests(kids, self.matcher, self.limit if depth == 0 else 0)
            selected = [k for k in selected if mt.is_index(k.media_type) or mt.is_manifest(k.media_type)]
            if not selected:
                raise img.no_match_error(f"{self.result.name} ({desc.digest})", kids, self.matcher)
            for k in selected:
                self._walk(k, None, leaves, depth + 1)
        else:
            self.result.manifests.append(desc)
            for k in kids:
                if mt.is_index(k.media_type) or mt.is_manifest(k.media_type):
                    raise DataLoss(f"{self.rc.where}: manifest {desc.digest} lists a manifest as a child")
                leaves.setdefault(k.digest, k)

    def _fetch_leaves(self, leaves: list[Descriptor]) -> None:
        for d in leaves:
            if d.size < 0:
                raise InvalidArgument(f"{d.digest}: negative size")
        # configs first: they are small and an unpack needs them
        leaves.sort(key=lambda d: (not mt.is_config(d.media_type), 0))

        def one(d: Descriptor) -> None:
            labels = {self.source_key: self._merged_source(d.digest)}
            self.fetch_blob(d, labels)

        if self.concurrency == 1 or len(leaves) == 1:
            for d in leaves:
                one(d)
            return
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="pyctr-fetch") as pool:
            futures = [pool.submit(one, d) for d in leaves]
            try:
                _done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            except BaseException:  # Ctrl-C: stop the workers now; their ingests stay for a resume
                self.cancel()
                for f in futures:
                    f.cancel()
                raise
            for f in pending:
                f.cancel()
            errors = [e for f in futures if f.done() and not f.cancelled()
                      and (e := f.exception()) is not None and not isinstance(e, _Cancelled)]
            if errors:
                self.cancel()
                # running transfers stop at their next chunk (keeping their ingests); report the first error
                wait([f for f in futures if not f.cancelled()])
                err = errors[0]
                assert err is not None
                raise err

    def _merged_source(self, dgst: str) -> str:
        try:
            existing = self.content.info(self.ns, dgst).labels.get(self.source_key, "")
        except NotFound:
            existing = ""
        return img.merge_distribution_source(existing, self.ref.path)


class _Cancelled(Exception):
    """Another transfer of the same pull failed; this one stops (its ingest is kept for a resume)."""


def _offset(w: Any) -> int:
    try:
        return int(w.offset)
    except Exception:
        return 0


def _quiet_abort(w: Any) -> None:
    with contextlib.suppress(Exception):
        w.abort()


def _quiet_close(w: Any) -> None:
    with contextlib.suppress(Exception):
        w.close()
