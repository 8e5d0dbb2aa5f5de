"""Snapshots per namespace, over a backend snapshotter (containerd's ``metadata/snapshot.go``).

Each namespace sees its own snapshots: a record ``(ns, snapshotter, key)`` maps the key to a backend
key ``<ns>/<seq>/<key>`` (so two namespaces may use the same key), and keeps the parent (a key in the
same namespace), the kind, all labels, and times.  Only ``containerd.io/snapshot/*`` and
``containerd.io/snapshot.ref`` labels reach the backend.

Table ``snapshots`` (component ``snapshots``)::

    ns, snapshotter, key, backend_key, parent, kind, labels (JSON), created_at, updated_at
    PRIMARY KEY (ns, snapshotter, key)

Backend calls run inside the metadata write transaction (as containerd holds its lock), so the
collector never sees a half-made snapshot; a backend snapshot whose record failed to commit is an
orphan the collector removes.

**Removal.** :meth:`NamespacedSnapshotter.remove` refuses a snapshot with children
(FailedPrecondition), deletes the record, and removes the backend snapshot right away when no record
in any namespace still names it; otherwise (or if the backend refuses) the garbage collector does it
later (:func:`pyctr.metadata.gc.collect`).

**Sharing by chain ID** (``containerd.io/snapshot.ref``).  :meth:`NamespacedSnapshotter.prepare` with
the label ``containerd.io/snapshot.ref=<chainID>``: if this namespace already has a snapshot named
``<chainID>``, or the backend holds a committed snapshot for that chain ID on the same backend parent
(committed in another namespace, or by a remote snapshotter), that snapshot is linked into this
namespace under the name ``<chainID>`` and :class:`~pyctr.errdefs.AlreadyExists` is raised: the
unpacker then skips fetching and applying that layer.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ..errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PyctrError
from ..identifiers import validate_labels
from ..snapshots import (
    LABEL_SNAPSHOT_REF,
    Info,
    Kind,
    Mount,
    Snapshotter,
    Usage,
    apply_label_update,
    filter_inherited_labels,
    validate_key,
)
from .db import MetadataDB, Tx, now_ns, register_migrations

log = logging.getLogger("pyctr.snapshots")

register_migrations("snapshots", [
    """
    CREATE TABLE IF NOT EXISTS snapshots (
        ns TEXT NOT NULL,
        snapshotter TEXT NOT NULL,
        key TEXT NOT NULL,
        backend_key TEXT NOT NULL,
        parent TEXT NOT NULL DEFAULT '',
        kind TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (ns, snapshotter, key)
    );
    CREATE INDEX IF NOT EXISTS snapshots_by_parent ON snapshots(ns, snapshotter, parent);
    CREATE INDEX IF NOT EXISTS snapshots_by_backend_key ON snapshots(snapshotter, backend_key);
    CREATE TABLE IF NOT EXISTS snapshot_sequences (
        snapshotter TEXT PRIMARY KEY,
        seq INTEGER NOT NULL
    )
    """,
])

Publish = Callable[[str, str, dict[str, Any]], None]


def _dumps(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), sort_keys=True)


def _info(row: sqlite3.Row) -> Info:
    return Info(kind=Kind.parse(row["kind"]), name=row["key"], parent=row["parent"],
                labels=json.loads(row["labels"] or "{}"), created_at=row["created_at"],
                updated_at=row["updated_at"])


class NamespacedSnapshotter:
    """The snapshots of one snapshotter (``name``, e.g. ``overlayfs``), per namespace.

    Every method takes the namespace first.  ``publish(ns, topic, payload)``, when set, is called
    after each committed change with containerd's topics ``/snapshot/prepare`` (``key``, ``parent``,
    ``snapshotter``), ``/snapshot/commit`` (``key``, ``name``, ``snapshotter``) and
    ``/snapshot/remove`` (``key``, ``snapshotter``).  ``lease=`` on the writing calls holds the
    snapshot under that lease (resource ``snapshots/<name>``), as a lease in containerd's context does.
    """

    def __init__(self, db: MetadataDB, name: str, backend: Snapshotter,
                 publish: Publish | None = None) -> None:
        from .namespaces import NamespaceStore

        self.db = db
        self.name = name
        self.backend = backend
        self.publish = publish
        self._namespaces = NamespaceStore(db)
        db.ensure_schema("snapshots")

    # -- helpers ---------------------------------------------------------------------------------

    def _get(self, conn: sqlite3.Connection | Tx, ns: str, key: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = conn.execute(
            "SELECT * FROM snapshots WHERE ns=? AND snapshotter=? AND key=?", (ns, self.name, key)).fetchone()
        return row

    def _require(self, conn: sqlite3.Connection | Tx, ns: str, key: str) -> sqlite3.Row:
        row = self._get(conn, ns, key)
        if row is None:
            raise NotFound(f"snapshot {key!r} does not exist in namespace {ns!r} (snapshotter {self.name})")
        return row

    def _next_key(self, tx: Tx, ns: str, key: str) -> str:
        row = tx.execute(
            "INSERT INTO snapshot_sequences(snapshotter, seq) VALUES(?, 1) "
            "ON CONFLICT(snapshotter) DO UPDATE SET seq = seq + 1 RETURNING seq", (self.name,)).fetchone()
        return f"{ns}/{int(row[0])}/{key}"

    def _insert(self, tx: Tx, ns: str, key: str, bkey: str, parent: str, kind: Kind,
                labels: Mapping[str, str], now: int) -> None:
        tx.execute(
            "INSERT INTO snapshots(ns, snapshotter, key, backend_key, parent, kind, labels, created_at, "
            "updated_at) VALUES(?,?,?,?,?,?,?,?,?)",
            (ns, self.name, key, bkey, parent, kind.value, _dumps(dict(labels)), now, now))

    def _lease(self, tx: Tx, ns: str, lease: str | None, key: str, *, remove: str = "") -> None:
        if not lease:
            return
        from .leases import RESOURCE_SNAPSHOTS_PREFIX, LeaseManager

        lm = LeaseManager(self.db)
        rtype = f"{RESOURCE_SNAPSHOTS_PREFIX}{self.name}"
        lm.add_resource(ns, lease, rtype, key)
        if remove:
            lm.delete_resource(ns, lease, rtype, remove)

    def _on_commit(self, tx: Tx, ns: str, topic: str, payload: dict[str, Any]) -> None:
        publish = self.publish
        if publish is not None:
            tx.on_commit(lambda: publish(ns, topic, payload))

    def _find_shared(self, target: str, bparent: str) -> Info | None:
        """A committed backend snapshot for chain ID ``target`` on backend parent ``bparent``: labelled
        ``containerd.io/snapshot.ref=<target>``, or committed under the name ``<ns>/<seq>/<target>``."""
        filters = [f"kind==committed,parent=={json.dumps(bparent)}"] if bparent else ["kind==committed"]
        for info in self.backend.walk(filters):
            if info.kind != Kind.COMMITTED or info.parent != bparent:
                continue  # the backend did not apply the filter
            parts = info.name.split("/", 2)
            if info.labels.get(LABEL_SNAPSHOT_REF) == target or (len(parts) == 3 and parts[2] == target):
                return info
        return None

    # -- reads -----------------------------------------------------------------------------------

    def stat(self, ns: str, key: str) -> Info:
        return _info(self._require(self.db.conn, ns, key))

    def backend_key(self, ns: str, key: str) -> str:
        """The backend's key for ``key`` (``<ns>/<seq>/<key>``)."""
        return str(self._require(self.db.conn, ns, key)["backend_key"])

    def usage(self, ns: str, key: str) -> Usage:
        row = self._require(self.db.conn, ns, key)
        return self.backend.usage(row["backend_key"])

    def mounts(self, ns: str, key: str) -> list[Mount]:
        row = self._require(self.db.conn, ns, key)
        if row["kind"] == Kind.COMMITTED.value:
            raise FailedPrecondition(
                f"snapshot {key!r} is committed: only active and view snapshots have mounts")
        return self.backend.mounts(row["backend_key"])

    def walk(self, ns: str, filters: Sequence[str] | str = ()) -> Iterator[Info]:
        """This namespace's snapshots that match any of ``filters`` (containerd's grammar over ``name``,
        ``parent``, ``kind`` -- lower case -- and ``labels.<key>``), oldest first."""
        from ..filters import parse

        flt = parse([filters] if isinstance(filters, str) else list(filters))
        rows = self.db.query("SELECT * FROM snapshots WHERE ns=? AND snapshotter=? ORDER BY created_at, key",
                             (ns, self.name))
        for row in rows:
            info = _info(row)
            if flt.match_dict(info.filter_fields()):
                yield info

    # -- writes ----------------------------------------------------------------------------------

    def prepare(self, ns: str, key: str, parent: str = "", labels: Mapping[str, str] | None = None, *,
                lease: str | None = None) -> list[Mount]:
        """Make the active snapshot ``key`` on the committed ``parent``; returns its mounts.

        AlreadyExists if ``key`` exists, or -- with ``containerd.io/snapshot.ref=<chainID>`` -- when the
        committed snapshot for that chain ID was found and linked in as ``<chainID>``."""
        return self._create(ns, Kind.ACTIVE, key, parent, labels, lease)

    def view(self, ns: str, key: str, parent: str = "", labels: Mapping[str, str] | None = None, *,
             lease: str | None = None) -> list[Mount]:
        """Make the read-only snapshot ``key`` of the committed ``parent``; returns its mounts."""
        return self._create(ns, Kind.VIEW, key, parent, labels, lease)

    def _create(self, ns: str, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None,
                lease: str | None) -> list[Mount]:
        validate_key(key)
        lbls = validate_labels(dict(labels or {}), "snapshot label")
        target = lbls.get(LABEL_SNAPSHOT_REF, "")
        linked = ""
        mounts: list[Mount] = []
        with self.db.tx() as tx:
            self._namespaces.ensure(ns)
            if target and self._get(tx, ns, target) is not None:
                self._lease(tx, ns, lease, target)
                linked = target
            else:
                if self._get(tx, ns, key) is not None:
                    raise AlreadyExists(f"snapshot {key!r} already exists in namespace {ns!r}")
                bparent = ""
                if parent:
                    prow = self._get(tx, ns, parent)
                    if prow is None:
                        raise NotFound(f"parent snapshot {parent!r} does not exist in namespace {ns!r}")
                    if prow["kind"] != Kind.COMMITTED.value:
                        raise InvalidArgument(
                            f"parent {parent!r} is not a committed snapshot (it is {prow['kind']})")
                    bparent = prow["backend_key"]
                now = now_ns()
                shared = self._find_shared(target, bparent) if target else None
                if shared is None:
                    bkey = self._next_key(tx, ns, key)
                    inherited = filter_inherited_labels(lbls)
                    try:
                        if kind == Kind.ACTIVE:
                            mounts = self.backend.prepare(bkey, bparent, inherited)
                        else:
                            mounts = self.backend.view(bkey, bparent, inherited)
                    except AlreadyExists:
                        # A remote snapshotter found the layer: it committed it itself.
                        shared = self._find_shared(target, bparent) if target else None
                        if shared is None:
                            raise
                if shared is not None:
                    if self._get(tx, ns, target) is None:
                        self._insert(tx, ns, target, shared.name, parent, Kind.COMMITTED, lbls, now)
                    self._lease(tx, ns, lease, target)
                    linked = target
                else:
                    self._insert(tx, ns, key, bkey, parent, kind, lbls, now)
                    self._lease(tx, ns, lease, key)
                    self._on_commit(tx, ns, "/snapshot/prepare",
                                    {"key": key, "parent": parent, "snapshotter": self.name})
        if linked:
            raise AlreadyExists(f"target snapshot {linked!r} already exists in namespace {ns!r}")
        return mounts

    def commit(self, ns: str, name: str, key: str, labels: Mapping[str, str] | None = None, *,
               lease: str | None = None) -> None:
        """Commit the active snapshot ``key`` as ``name`` (``key`` goes away); ``labels`` are the committed
        snapshot's labels."""
        validate_key(name, "snapshot name")
        lbls = validate_labels(dict(labels or {}), "snapshot label")
        with self.db.tx() as tx:
            self._namespaces.ensure(ns)
            row = self._require(tx, ns, key)
            if row["kind"] != Kind.ACTIVE.value:
                raise FailedPrecondition(
                    f"snapshot {key!r} is not active (it is {row['kind']}): only active snapshots can be "
                    "committed")
            if self._get(tx, ns, name) is not None:
                raise AlreadyExists(f"snapshot {name!r} already exists in namespace {ns!r}")
            nbkey = self._next_key(tx, ns, name)
            self.backend.commit(nbkey, row["backend_key"], filter_inherited_labels(lbls))
            tx.execute("DELETE FROM snapshots WHERE ns=? AND snapshotter=? AND key=?", (ns, self.name, key))
            self._insert(tx, ns, name, nbkey, row["parent"], Kind.COMMITTED, lbls, now_ns())
            self._lease(tx, ns, lease, name, remove=key)
            self._on_commit(tx, ns, "/snapshot/commit", {"key": key, "name": name, "snapshotter": self.name})

    def update(self, ns: str, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """Change the labels of ``info.name`` (all of them, or only ``labels.<key>`` field paths)."""
        with self.db.tx() as tx:
            row = self._require(tx, ns, info.name)
            labels = apply_label_update(json.loads(row["labels"] or "{}"), info.labels, fieldpaths)
            labels = validate_labels(labels, "snapshot label")
            now = now_ns()
            tx.execute("UPDATE snapshots SET labels=?, updated_at=? WHERE ns=? AND snapshotter=? AND key=?",
                       (_dumps(labels), now, ns, self.name, info.name))
            binfo = Info(kind=Kind.parse(row["kind"]), name=row["backend_key"],
                         labels=filter_inherited_labels(labels))
            bpaths = [p for p in fieldpaths if p == "labels" or p.startswith("labels.")]
            try:
                self.backend.update(binfo, bpaths)
            except NotFound:
                log.warning("snapshot %s/%s has no backend snapshot %s", ns, info.name, row["backend_key"])
            return _info(self._require(tx, ns, info.name))

    def remove(self, ns: str, key: str) -> None:
        """Remove ``key`` from the namespace: FailedPrecondition if it has children.  The backend
        snapshot goes at once when nothing else names it, otherwise at the next collection."""
        with self.db.tx() as tx:
            row = self._require(tx, ns, key)
            n = tx.execute("SELECT COUNT(*) FROM snapshots WHERE ns=? AND snapshotter=? AND parent=?",
                           (ns, self.name, key)).fetchone()[0]
            if n:
                raise FailedPrecondition(
                    f"cannot remove snapshot {key!r}: it has {n} child snapshot(s); remove them first")
            tx.execute("DELETE FROM snapshots WHERE ns=? AND snapshotter=? AND key=?", (ns, self.name, key))
            bkey = row["backend_key"]
            shared = tx.execute("SELECT 1 FROM snapshots WHERE snapshotter=? AND backend_key=? LIMIT 1",
                                (self.name, bkey)).fetchone()
            if shared is None:
                try:
                    self.backend.remove(bkey)
                except NotFound:
                    pass
                except PyctrError as e:  # children in the backend, a busy mount...: the collector retries
                    log.info("backend snapshot %s stays until the next collection: %s", bkey, e)
            self._on_commit(tx, ns, "/snapshot/remove", {"key": key, "snapshotter": self.name})
        self.db.mutated("delete")

    def close(self) -> None:
        """Nothing to release: the database and the backend belong to their plugins."""


__all__ = ["NamespacedSnapshotter"]
