"""Leases: named holds on content, snapshots and ingests, so the garbage collector keeps them.

As containerd's lease manager: a lease has an id, labels and a creation time, and holds resources of the
types ``content`` (key: a digest), ``snapshots/<snapshotter>`` (key: a snapshot key) and ``ingests``
(key: an ingest ref).  A lease expires at the time in its ``containerd.io/gc.expire`` label (RFC 3339);
an expired lease holds nothing and the collector removes it.  A lease labelled ``containerd.io/gc.flat``
keeps only the objects it names, not what they reference.

Tables (component ``leases``)::

    leases(ns, id, labels JSON, created_at)                      PRIMARY KEY(ns, id)
    lease_resources(ns, lease, type, key)                       PRIMARY KEY(ns, lease, type, key)
"""

from __future__ import annotations

import builtins
import datetime as _dt
import json
import re
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errdefs import AlreadyExists, InvalidArgument, NotFound
from ..identifiers import validate_identifier, validate_labels
from .db import MetadataDB, Tx, now_ns, register_migrations

register_migrations("leases", [
    """
    CREATE TABLE IF NOT EXISTS leases (
        ns TEXT NOT NULL,
        id TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        PRIMARY KEY (ns, id)
    );
    CREATE TABLE IF NOT EXISTS lease_resources (
        ns TEXT NOT NULL,
        lease TEXT NOT NULL,
        type TEXT NOT NULL,
        key TEXT NOT NULL,
        PRIMARY KEY (ns, lease, type, key),
        FOREIGN KEY (ns, lease) REFERENCES leases(ns, id) ON DELETE CASCADE
    )
    """,
])

LABEL_GC_EXPIRE = "containerd.io/gc.expire"
LABEL_GC_FLAT = "containerd.io/gc.flat"

#: Resource types a lease can hold; ``snapshots/<name>`` names a snapshotter.
RESOURCE_CONTENT = "content"
RESOURCE_INGESTS = "ingests"
RESOURCE_SNAPSHOTS_PREFIX = "snapshots/"


def format_rfc3339(ts: _dt.datetime) -> str:
    """``ts`` in UTC as RFC 3339 (``2026-01-02T03:04:05Z``; fractional seconds only when present)."""
    utc = ts.astimezone(_dt.UTC)
    if utc.microsecond:
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")


_FRACTION = re.compile(r"(\.\d{1,6})\d*")


def parse_rfc3339(value: str) -> _dt.datetime:
    """An RFC 3339 timestamp (``Z`` or an offset; up to nanosecond fractions) as an aware datetime."""
    text = value.strip()
    if not re.match(r"^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d", text):
        raise InvalidArgument(f"invalid RFC 3339 time {value!r}")
    text = _FRACTION.sub(lambda m: m.group(1), text, count=1)
    if text[-1] in "zZ":
        text = text[:-1] + "+00:00"
    try:
        ts = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(f"invalid RFC 3339 time {value!r}") from None
    if ts.tzinfo is None:
        raise InvalidArgument(f"RFC 3339 time {value!r} has no time zone (add Z or an offset)")
    return ts


def expire_at_ns(labels: Mapping[str, str]) -> int | None:
    """The ``containerd.io/gc.expire`` time in ns since the epoch; ``None`` if absent or unparsable
    (containerd ignores an invalid value and treats the object as not expiring)."""
    value = labels.get(LABEL_GC_EXPIRE)
    if not value:
        return None
    try:
        ts = parse_rfc3339(value)
    except InvalidArgument:
        return None
    return int(ts.timestamp()) * 1_000_000_000 + ts.microsecond * 1000


def validate_resource_type(type_: str) -> str:
    if type_ in (RESOURCE_CONTENT, RESOURCE_INGESTS):
        return type_
    if type_.startswith(RESOURCE_SNAPSHOTS_PREFIX) and len(type_) > len(RESOURCE_SNAPSHOTS_PREFIX):
        return type_
    raise InvalidArgument(
        f"invalid lease resource type {type_!r} (want content, ingests or snapshots/<snapshotter>)"
    )


@dataclass
class Lease:
    id: str
    created_at: int = 0
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def expire_at(self) -> int | None:
        """When the lease expires (ns since the epoch), or ``None``."""
        return expire_at_ns(self.labels)

    def expired(self, now: int | None = None) -> bool:
        exp = self.expire_at
        return exp is not None and exp < (now_ns() if now is None else now)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "created_at": self.created_at, "labels": dict(self.labels)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Lease:
        return cls(id=str(d["id"]), created_at=int(d.get("created_at") or 0),
                   labels=dict(d.get("labels") or {}))


@dataclass(frozen=True)
class Resource:
    type: str
    key: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "key": self.key}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Resource:
        return cls(type=str(d["type"]), key=str(d["key"]))


def random_id() -> str:
    """A fresh lease id, as containerd's ``WithRandomID``: nanoseconds plus random hex."""
    return f"{now_ns() % 1_000_000_000}-{secrets.token_hex(4)}"


def _row(row: sqlite3.Row) -> Lease:
    return Lease(row["id"], row["created_at"], json.loads(row["labels"] or "{}"))


class LeaseManager:
    """Create, list and delete leases and their resources; every method takes the namespace first.

    ``publish(ns, topic, payload)``, when set, is called after commit; deletes report ``db.mutated``
    so the garbage collector's scheduler hears of them."""

    def __init__(self, db: MetadataDB,
                 publish: Callable[[str, str, dict[str, Any]], None] | None = None) -> None:
        from .namespaces import NamespaceStore

        self.db = db
        self.publish = publish
        self._namespaces = NamespaceStore(db)
        db.ensure_schema("leases")

    def create(
        self,
        ns: str,
        id: str | None = None,
        labels: Mapping[str, str] | None = None,
        *,
        expire_at: _dt.datetime | None = None,
        ttl: float | None = None,
    ) -> Lease:
        """Create a lease (``id=None``: a random id).  ``ttl`` (seconds from now) or ``expire_at`` sets
        the ``containerd.io/gc.expire`` label."""
        lease_id = random_id() if id is None else validate_identifier(id, "lease id")
        lbls = dict(labels or {})
        if ttl is not None and expire_at is not None:
            raise InvalidArgument("give a lease either ttl or expire_at, not both")
        if ttl is not None:
            if ttl <= 0:
                raise InvalidArgument(f"lease expiry must be in the future, not {ttl} seconds from now")
            expire_at = _dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=ttl)
        if expire_at is not None:
            if expire_at.tzinfo is None:
                raise InvalidArgument("a lease's expire_at must carry a time zone")
            lbls[LABEL_GC_EXPIRE] = format_rfc3339(expire_at)
        elif LABEL_GC_EXPIRE in lbls:
            parse_rfc3339(lbls[LABEL_GC_EXPIRE])  # a typo must not silently mean "never expires"
        lbls = validate_labels(lbls, "lease label")
        now = now_ns()
        with self.db.tx() as tx:
            self._namespaces.ensure(ns)
            if tx.execute("SELECT 1 FROM leases WHERE ns=? AND id=?", (ns, lease_id)).fetchone():
                raise AlreadyExists(f"lease {lease_id!r} already exists in namespace {ns!r}")
            tx.execute("INSERT INTO leases(ns, id, labels, created_at) VALUES(?,?,?,?)",
                       (ns, lease_id, _dumps(lbls), now))
            self._on_commit(tx, ns, "/leases/create", {"id": lease_id})
        return Lease(lease_id, now, lbls)

    def get(self, ns: str, id: str) -> Lease:
        row = self.db.query_one("SELECT * FROM leases WHERE ns=? AND id=?", (ns, id))
        if row is None:
            raise NotFound(f"lease {id!r} not found in namespace {ns!r}")
        return _row(row)

    def list(self, ns: str, filters: Sequence[str] = ()) -> list[Lease]:
        """Leases in ``ns``, oldest first; ``filters`` use containerd's grammar on ``id`` and
        ``labels.<key>`` (several filters are ORed, as in containerd)."""
        rows = self.db.query("SELECT * FROM leases WHERE ns=? ORDER BY created_at, id", (ns,))
        leases = [_row(r) for r in rows]
        if not filters:
            return leases
        from ..filters import parse

        flt = parse(list(filters))
        return [lease for lease in leases if flt.match_dict({"id": lease.id, "labels": lease.labels})]

    def delete(self, ns: str, id: str) -> None:
        """Remove the lease (its resources go with it; what only it held is left to the collector)."""
        with self.db.tx() as tx:
            tx.execute("DELETE FROM lease_resources WHERE ns=? AND lease=?", (ns, id))
            cur = tx.execute("DELETE FROM leases WHERE ns=? AND id=?", (ns, id))
            if cur.rowcount == 0:
                raise NotFound(f"lease {id!r} not found in namespace {ns!r}")
            self._on_commit(tx, ns, "/leases/delete", {"id": id})
        self.db.mutated("delete")

    def add_resource(self, ns: str, id: str, type: str, key: str) -> None:
        """Hold ``key`` of ``type`` under the lease (idempotent)."""
        validate_resource_type(type)
        if not key:
            raise InvalidArgument("a lease resource needs a key")
        with self.db.tx() as tx:
            self._require(tx, ns, id)
            tx.execute("INSERT OR IGNORE INTO lease_resources(ns, lease, type, key) VALUES(?,?,?,?)",
                       (ns, id, type, key))

    def delete_resource(self, ns: str, id: str, type: str, key: str) -> None:
        """Release ``key`` of ``type`` from the lease (a resource it does not hold is not an error)."""
        validate_resource_type(type)
        with self.db.tx() as tx:
            self._require(tx, ns, id)
            cur = tx.execute("DELETE FROM lease_resources WHERE ns=? AND lease=? AND type=? AND key=?",
                             (ns, id, type, key))
            changed = cur.rowcount > 0
        if changed:
            self.db.mutated("delete")

    def list_resources(self, ns: str, id: str) -> builtins.list[Resource]:
        self._require(self.db.conn, ns, id)
        rows = self.db.query(
            "SELECT type, key FROM lease_resources WHERE ns=? AND lease=? ORDER BY type, key", (ns, id))
        return [Resource(r["type"], r["key"]) for r in rows]

    def add_resources(self, ns: str, id: str, resources: Iterable[Resource]) -> None:
        with self.db.tx():
            for r in resources:
                self.add_resource(ns, id, r.type, r.key)

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _require(conn: sqlite3.Connection | Tx, ns: str, id: str) -> None:
        if conn.execute("SELECT 1 FROM leases WHERE ns=? AND id=?", (ns, id)).fetchone() is None:
            raise NotFound(f"lease {id!r} not found in namespace {ns!r}")

    def _on_commit(self, tx: Tx, ns: str, topic: str, payload: dict[str, Any]) -> None:
        publish = self.publish
        if publish is not None:
            tx.on_commit(lambda: publish(ns, topic, payload))


def _dumps(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), sort_keys=True)
