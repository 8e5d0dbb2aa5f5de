"""The namespaced content store: per-namespace visibility and labels over one backend blob store.

A blob is stored once per root (by the ``content`` plugin, e.g. ``pyctr.content.local``) and is visible
in a namespace only once written, committed or linked there.  Labels are per namespace.  Deleting
removes only the namespace's record (and reports a deletion to the GC scheduler through
``db.mutated("delete")``); the garbage collector (:mod:`pyctr.metadata.gc`) removes the bytes of blobs
no namespace references.

Tables (component ``content``)::

    content(ns, digest, size, labels JSON, created_at, updated_at)   PRIMARY KEY(ns, digest)
    ingests(ns, ref, expected, expire_at)                             PRIMARY KEY(ns, ref)

An ``ingests`` row exists while a namespace's ingest is open or resumable; ``expire_at`` (now + 24 h,
as containerd) lets the GC keep its expected digest alive meanwhile.  Backend ingest refs are
``<ns>/<ref>``, so two namespaces may use the same ref at once.

Sharing (containerd's default ``shared`` policy): opening a writer with an expected digest that the
backend already holds links the blob into the namespace without sending any bytes and raises
:class:`~pyctr.errdefs.AlreadyExists` (callers copying content treat that as success).  A commit whose
blob the backend already holds (written by another namespace) verifies size and digest and adds the
record.  The backend commit and the record insert run inside one write transaction, so a GC sweep that
holds the database's write lock while it deletes unreferenced blobs never removes a blob being committed.

Every method takes the namespace ``ns`` first.  Events, when ``publish`` is set: ``/content/create``
``{digest, size}`` on commit and ``/content/delete`` ``{digest}`` on delete, after the transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any, BinaryIO

from ..content import ContentStore, Info, Status, Writer, validate_digest
from ..errdefs import AlreadyExists, DataLoss, InvalidArgument, NotFound, PyctrError
from ..filters import Filter, dict_adaptor, labels_adaptor, parse
from ..identifiers import validate_identifier, validate_labels
from .db import MetadataDB, Tx, now_ns, register_migrations

register_migrations("content", [
    """
    CREATE TABLE IF NOT EXISTS content (
        ns TEXT NOT NULL,
        digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (ns, digest)
    );
    CREATE INDEX IF NOT EXISTS content_by_digest ON content(digest);
    CREATE TABLE IF NOT EXISTS ingests (
        ns TEXT NOT NULL,
        ref TEXT NOT NULL,
        expected TEXT NOT NULL DEFAULT '',
        expire_at INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (ns, ref)
    )
    """,
])

#: How long an open ingest keeps its expected digest alive for the GC (containerd: 24 h).
INGEST_EXPIRY_NS = 24 * 3600 * 1_000_000_000

Publish = Callable[[str, str, dict[str, Any]], None]  # (namespace, topic, payload)


def _dumps(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), sort_keys=True)


def _info(row: Any) -> Info:
    return Info(digest=row["digest"], size=row["size"], created_at=row["created_at"],
                updated_at=row["updated_at"], labels=json.loads(row["labels"] or "{}"))


def _rename_ref(e: PyctrError, ns: str, ref: str) -> PyctrError:
    """The backend's error with the backend ref ``<ns>/<ref>`` shown as the user's ``ref``."""
    msg = str(e).replace(repr(f"{ns}/{ref}"), repr(ref))
    if msg == str(e):
        return e
    new = type(e)(msg)
    new.__cause__ = e.__cause__
    return new


def content_adaptor(info: Info) -> Callable[[list[str]], tuple[str, bool]]:
    """containerd's content adaptor: ``digest``, ``size``, ``labels.<key>``."""

    def adapt(path: list[str]) -> tuple[str, bool]:
        if not path:
            return "", False
        head = path[0]
        if head == "digest" and len(path) == 1:
            return info.digest, bool(info.digest)
        if head == "size" and len(path) == 1:
            return str(info.size), True
        if head == "labels":
            return labels_adaptor(info.labels, path[1:])
        return "", False

    return adapt


class NamespacedContentStore:
    """Namespaced views of the backend ``content`` plugin (see the module docstring)."""

    def __init__(self, db: MetadataDB, backend: ContentStore, *, publish: Publish | None = None,
                 sharing_policy: str = "shared") -> None:
        if sharing_policy not in ("shared", "isolated"):
            raise InvalidArgument(
                f"content sharing policy must be shared or isolated, not {sharing_policy!r}")
        self.db = db
        self.backend = backend
        self.publish = publish
        self.sharing_policy = sharing_policy
        db.ensure_schema("content")
        from .namespaces import NamespaceStore

        self._namespaces = NamespaceStore(db)

    # -- helpers -----------------------------------------------------------------------------------

    def _ensure_ns(self, ns: str) -> None:
        """Create ``ns`` on first write (joins the caller's transaction)."""
        self._namespaces.ensure(ns)

    def _row(self, ns: str, dgst: str) -> Any:
        validate_identifier(ns, "namespace")
        validate_digest(dgst)
        row = self.db.query_one("SELECT * FROM content WHERE ns=? AND digest=?", (ns, dgst))
        if row is None:
            raise NotFound(f"content {dgst} not found in namespace {ns!r}")
        return row

    def _on_commit(self, tx: Tx, ns: str, topic: str, payload: dict[str, Any]) -> None:
        publish = self.publish
        if publish is not None:
            tx.on_commit(lambda: publish(ns, topic, payload))

    def _insert(self, tx: Tx, ns: str, dgst: str, size: int, labels: Mapping[str, str]) -> tuple[Info, bool]:
        """Add the namespace's record; returns (info, created) -- created is False if it existed."""
        self._ensure_ns(ns)
        now = now_ns()
        cur = tx.execute(
            "INSERT INTO content(ns, digest, size, labels, created_at, updated_at) VALUES(?,?,?,?,?,?) "
            "ON CONFLICT(ns, digest) DO NOTHING", (ns, dgst, size, _dumps(dict(labels)), now, now))
        if cur.rowcount:
            self._on_commit(tx, ns, "/content/create", {"digest": dgst, "size": size})
            return Info(dgst, size, now, now, dict(labels)), True
        row = tx.execute("SELECT * FROM content WHERE ns=? AND digest=?", (ns, dgst)).fetchone()
        return _info(row), False

    # -- blobs -------------------------------------------------------------------------------------

    def info(self, ns: str, dgst: str) -> Info:
        return _info(self._row(ns, dgst))

    def exists(self, ns: str, dgst: str) -> bool:
        try:
            self._row(ns, dgst)
        except NotFound:
            return False
        return True

    def read(self, ns: str, dgst: str, offset: int = 0, size: int = -1) -> bytes:
        self._row(ns, dgst)
        return self.backend.read(dgst, offset, size)

    def open(self, ns: str, dgst: str) -> BinaryIO:
        self._row(ns, dgst)
        return self.backend.open(dgst)

    def path(self, ns: str, dgst: str) -> str:
        """The blob's file (read-only): for tools that need a path, such as a decompressor."""
        self._row(ns, dgst)
        return self.backend.path(dgst)

    def walk(self, ns: str, filters: Iterable[str] | str | Filter | None = None) -> list[Info]:
        """The namespace's blobs matching ``filters`` (containerd syntax on ``digest``, ``size``,
        ``labels.<key>``; several filters are ORed), by digest."""
        validate_identifier(ns, "namespace")
        flt = filters if isinstance(filters, Filter) else parse(filters)
        rows = self.db.query("SELECT * FROM content WHERE ns=? ORDER BY digest", (ns,))
        return [i for i in (_info(r) for r in rows) if flt.match(content_adaptor(i))]

    def update(self, ns: str, dgst: str, labels: Mapping[str, str],
               fieldpaths: Iterable[str] | None = None) -> Info:
        """Change labels, containerd's way: with no ``fieldpaths`` the labels are replaced by ``labels``;
        ``labels`` replaces them too; ``labels.<key>`` sets that key from ``labels`` (an empty or missing
        value removes it).  Labels with an empty value are never stored.  Other fields cannot change."""
        validate_identifier(ns, "namespace")
        validate_digest(dgst)
        with self.db.tx() as tx:
            row = tx.execute("SELECT * FROM content WHERE ns=? AND digest=?", (ns, dgst)).fetchone()
            if row is None:
                raise NotFound(f"content {dgst} not found in namespace {ns!r}")
            current: dict[str, str] = json.loads(row["labels"] or "{}")
            paths = list(fieldpaths or [])
            if not paths:
                new = {k: v for k, v in labels.items() if v}
            else:
                new = dict(current)
                for fp in paths:
                    if fp == "labels":
                        new = {k: v for k, v in labels.items() if v}
                    elif fp.startswith("labels."):
                        key = fp[len("labels."):]
                        value = labels.get(key, "")
                        if value:
                            new[key] = value
                        else:
                            new.pop(key, None)
                    else:
                        raise InvalidArgument(
                            f"cannot update {fp!r} of content {dgst}: only labels can change")
            new = validate_labels(new, "content label")
            now = now_ns()
            tx.execute("UPDATE content SET labels=?, updated_at=? WHERE ns=? AND digest=?",
                       (_dumps(new), now, ns, dgst))
            info = Info(dgst, row["size"], row["created_at"], now, new)
        self.db.mutated("update")
        return info

    def delete(self, ns: str, dgst: str) -> None:
        """Remove the namespace's record (NotFound if it has none); the GC removes unreferenced bytes."""
        validate_identifier(ns, "namespace")
        validate_digest(dgst)
        with self.db.tx() as tx:
            cur = tx.execute("DELETE FROM content WHERE ns=? AND digest=?", (ns, dgst))
            if not cur.rowcount:
                raise NotFound(f"content {dgst} not found in namespace {ns!r}")
            self._on_commit(tx, ns, "/content/delete", {"digest": dgst})
        self.db.mutated("delete")

    def link(self, ns: str, dgst: str, labels: Mapping[str, str] | None = None) -> Info:
        """Make a blob the backend already holds visible in ``ns`` (NotFound if the backend lacks it)."""
        validate_identifier(ns, "namespace")
        info = self.backend.info(validate_digest(dgst))
        lbls = validate_labels(dict(labels or {}), "content label")
        with self.db.tx() as tx:
            out, _ = self._insert(tx, ns, dgst, info.size, lbls)
        return out

    # -- ingests -----------------------------------------------------------------------------------

    def writer(self, ns: str, ref: str, total: int = -1, expected: str = "") -> NamespacedWriter:
        """Open or resume the ingest ``ref`` in ``ns``.

        :raises AlreadyExists: ``expected`` is already in the namespace -- or, under the shared policy,
            was in the backend and has just been linked into the namespace.
        :raises Conflict: another writer holds ``ref`` in this namespace.
        :raises InvalidArgument: empty ref, malformed digest, unsupported algorithm.
        """
        validate_identifier(ns, "namespace")
        if not ref:
            raise InvalidArgument("an ingest ref must not be empty")
        if expected:
            validate_digest(expected)
            if self.exists(ns, expected):
                raise AlreadyExists(f"content {expected} already exists in namespace {ns!r}")
            if self.sharing_policy == "shared" and self.backend.exists(expected):
                have = self.backend.info(expected)
                if total > 0 and have.size != total:
                    raise DataLoss(f"content {expected} exists with size {have.size}, not {total}")
                self.link(ns, expected)
                raise AlreadyExists(f"content {expected} already exists")
        try:
            bw = self.backend.writer(f"{ns}/{ref}", total, expected)
        except PyctrError as e:
            raise _rename_ref(e, ns, ref) from None
        try:
            with self.db.tx() as tx:
                self._ensure_ns(ns)
                tx.execute(
                    "INSERT INTO ingests(ns, ref, expected, expire_at) VALUES(?,?,?,?) "
                    "ON CONFLICT(ns, ref) DO UPDATE SET expected=excluded.expected, "
                    "expire_at=excluded.expire_at",
                    (ns, ref, bw.status().expected, now_ns() + INGEST_EXPIRY_NS))
        except BaseException:
            bw.close()
            raise
        return NamespacedWriter(self, ns, ref, bw)

    def _drop_ingest(self, ns: str, ref: str) -> None:
        with self.db.tx() as tx:
            tx.execute("DELETE FROM ingests WHERE ns=? AND ref=?", (ns, ref))

    def status(self, ns: str, ref: str) -> Status:
        validate_identifier(ns, "namespace")
        try:
            st = self.backend.status(f"{ns}/{ref}")
        except PyctrError as e:
            raise _rename_ref(e, ns, ref) from None
        st.ref = ref
        return st

    def list_statuses(self, ns: str, filters: Iterable[str] | str | None = None) -> list[Status]:
        """The namespace's ingests (filters on ``ref``, ``expected``, ``total``, ``offset``)."""
        validate_identifier(ns, "namespace")
        flt = parse(filters)
        prefix = f"{ns}/"
        out = []
        for st in self.backend.list_statuses(prefix):
            if not st.ref.startswith(prefix):
                continue
            st.ref = st.ref[len(prefix):]
            if flt.match(dict_adaptor(st.to_dict())):
                out.append(st)
        return out

    def abort(self, ns: str, ref: str) -> None:
        """Remove an ingest (NotFound if there is none, Conflict if a writer is active on it)."""
        validate_identifier(ns, "namespace")
        try:
            self.backend.abort(f"{ns}/{ref}")
        except NotFound:
            self._drop_ingest(ns, ref)
            raise NotFound(f"no ingest with ref {ref!r} in namespace {ns!r}") from None
        except PyctrError as e:
            raise _rename_ref(e, ns, ref) from None
        self._drop_ingest(ns, ref)


class NamespacedWriter:
    """A backend writer whose commit also records the blob in the namespace."""

    def __init__(self, store: NamespacedContentStore, ns: str, ref: str, backend_writer: Writer) -> None:
        self.store = store
        self.ns = ns
        self.ref = ref
        self.backend_writer = backend_writer

    @property
    def offset(self) -> int:
        return self.backend_writer.offset

    def write(self, data: bytes | memoryview) -> int:
        return self.backend_writer.write(data)

    def copy_from(self, src: int | IO[bytes], limit: int = -1) -> int:
        """Append what ``src`` yields (all, or ``limit`` bytes); see the backend writer's ``copy_from``."""
        bw: Any = self.backend_writer
        if hasattr(bw, "copy_from"):
            return int(bw.copy_from(src, limit))
        import os

        fd = src if isinstance(src, int) else src.fileno()
        n = 0
        while limit < 0 or n < limit:
            chunk = os.read(fd, 1 << 20 if limit < 0 else min(1 << 20, limit - n))
            if not chunk:
                break
            bw.write(chunk)
            n += len(chunk)
        return n

    def digest(self) -> str:
        return self.backend_writer.digest()

    def __pyctr_release__(self) -> None:
        """The RPC client that held this writer went away: close it, keeping the ingest resumable."""
        self.close()

    def truncate(self, size: int) -> None:
        self.backend_writer.truncate(size)

    def status(self) -> Status:
        st = self.backend_writer.status()
        st.ref = self.ref
        return st

    def commit(self, size: int = -1, expected: str = "", labels: Mapping[str, str] | None = None) -> Info:
        """Verify and publish the blob, then record it in the namespace.

        :raises DataLoss: size or digest mismatch (nothing is left behind).
        :raises InvalidArgument: bad expected digest or labels (nothing is left behind).
        :raises AlreadyExists: the namespace already had this blob (the ingest is removed).
        """
        store = self.store
        try:
            lbls = validate_labels(dict(labels or {}), "content label")
        except InvalidArgument:
            self.abort()
            raise
        try:
            with store.db.tx() as tx:
                try:
                    info = self.backend_writer.commit(size, expected, lbls)
                    dgst, blob_size = info.digest, info.size
                except AlreadyExists:
                    # verified, and already held by the backend (another namespace wrote it)
                    dgst = self.backend_writer.digest()
                    blob_size = store.backend.info(dgst).size
                tx.execute("DELETE FROM ingests WHERE ns=? AND ref=?", (self.ns, self.ref))
                out, created = store._insert(tx, self.ns, dgst, blob_size, lbls)
        except (DataLoss, InvalidArgument) as e:
            store._drop_ingest(self.ns, self.ref)
            raise _rename_ref(e, self.ns, self.ref) from None
        if not created:
            raise AlreadyExists(f"content {dgst} already exists in namespace {self.ns!r}")
        return out

    def close(self) -> None:
        """Keep the ingest for a later resume."""
        self.backend_writer.close()

    def abort(self) -> None:
        self.backend_writer.abort()
        self.store._drop_ingest(self.ns, self.ref)

    def __enter__(self) -> NamespacedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
