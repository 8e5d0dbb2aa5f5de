"""Namespaces: the tenants every record belongs to, with labels, as containerd's namespace store.

A namespace comes into being when something is first written in it (:meth:`NamespaceStore.ensure`,
which every store calls inside its write transaction) or explicitly (:meth:`NamespaceStore.create`).
Objects in one namespace are invisible in another; that is each store's business (every table is keyed
by ``ns``).  A namespace that still holds objects cannot be removed: :meth:`NamespaceStore.delete`
names what is left.

Table ``namespaces`` (component ``namespaces``)::

    name TEXT PRIMARY KEY, labels TEXT (JSON object), created_at, updated_at (ns since the epoch)

Labels ``containerd.io/defaults/snapshotter`` and ``containerd.io/defaults/runtime`` set the
namespace's default snapshotter and runtime, as in containerd.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errdefs import AlreadyExists, FailedPrecondition, NotFound
from ..identifiers import validate_identifier, validate_labels
from .db import MetadataDB, Tx, now_ns, register_migrations

register_migrations("namespaces", [
    """
    CREATE TABLE IF NOT EXISTS namespaces (
        name TEXT PRIMARY KEY,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    )
    """,
])

LABEL_DEFAULT_SNAPSHOTTER = "containerd.io/defaults/snapshotter"
LABEL_DEFAULT_RUNTIME = "containerd.io/defaults/runtime"

#: Tables whose rows belong to a namespace but that are not named in a "still has" message on their own
#: (they hang off another object: a lease's resources go with the lease).
_DEPENDENT_TABLES = frozenset({"lease_resources", "namespaces"})
#: How a table is named in the "namespace still has ..." message.
_FRIENDLY = {"content": "content", "ingests": "ingests", "images": "images", "containers": "containers",
             "snapshots": "snapshots", "leases": "leases", "sandboxes": "sandboxes"}


@dataclass
class Namespace:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    created_at: int = 0
    updated_at: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "labels": dict(self.labels), "created_at": self.created_at,
                "updated_at": self.updated_at}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Namespace:
        return cls(name=str(d["name"]), labels=dict(d.get("labels") or {}),
                   created_at=int(d.get("created_at") or 0), updated_at=int(d.get("updated_at") or 0))


def _row(row: sqlite3.Row) -> Namespace:
    return Namespace(row["name"], json.loads(row["labels"] or "{}"), row["created_at"], row["updated_at"])


def namespaced_tables(conn: sqlite3.Connection | Tx) -> dict[str, str]:
    """Every table with a namespace column, mapped to that column's name (``ns`` or ``namespace``)."""
    out: dict[str, str] = {}
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
        if name.startswith("sqlite_"):
            continue
        cols = {r[1] for r in conn.execute(f'PRAGMA table_info("{name}")').fetchall()}
        for col in ("ns", "namespace"):
            if col in cols:
                out[name] = col
                break
    return out


class NamespaceStore:
    """Namespaces and their labels.  ``publish(topic, payload)``, when set, is called after each
    committed change with containerd's topics (``/namespaces/create|update|delete``)."""

    def __init__(self, db: MetadataDB, publish: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.db = db
        self.publish = publish
        db.ensure_schema("namespaces")

    # -- writes --------------------------------------------------------------------------------

    def create(self, name: str, labels: Mapping[str, str] | None = None) -> Namespace:
        """Create ``name``; :class:`AlreadyExists` if it exists."""
        validate_identifier(name, "namespace name")
        lbls = validate_labels(dict(labels or {}), "namespace label")
        now = now_ns()
        with self.db.tx() as tx:
            if tx.execute("SELECT 1 FROM namespaces WHERE name=?", (name,)).fetchone():
                raise AlreadyExists(f"namespace {name!r} already exists")
            tx.execute("INSERT INTO namespaces(name, labels, created_at, updated_at) VALUES(?,?,?,?)",
                       (name, _dumps(lbls), now, now))
            self._on_commit(tx, "/namespaces/create", {"name": name, "labels": lbls})
        return Namespace(name, lbls, now, now)

    def ensure(self, name: str) -> None:
        """Create ``name`` if it does not exist (idempotent; joins the caller's transaction)."""
        validate_identifier(name, "namespace name")
        now = now_ns()
        with self.db.tx() as tx:
            cur = tx.execute(
                "INSERT INTO namespaces(name, labels, created_at, updated_at) VALUES(?, '{}', ?, ?) "
                "ON CONFLICT(name) DO NOTHING", (name, now, now))
            if cur.rowcount:
                self._on_commit(tx, "/namespaces/create", {"name": name, "labels": {}})

    def set_labels(self, name: str, labels: Mapping[str, str], *, replace: bool = False) -> dict[str, str]:
        """Merge ``labels`` into the namespace's (an empty value removes that label), or replace them all
        with ``replace=True``; returns the labels now set."""
        validate_identifier(name, "namespace name")
        with self.db.tx() as tx:
            row = tx.execute("SELECT labels FROM namespaces WHERE name=?", (name,)).fetchone()
            if row is None:
                if name not in self._implicit(tx):
                    raise NotFound(f"namespace {name!r} not found")
                self.ensure(name)
                row = tx.execute("SELECT labels FROM namespaces WHERE name=?", (name,)).fetchone()
            current: dict[str, str] = {} if replace else json.loads(row["labels"] or "{}")
            for k, v in labels.items():
                if v == "":
                    current.pop(k, None)
                else:
                    current[k] = v
            current = validate_labels(current, "namespace label")
            tx.execute("UPDATE namespaces SET labels=?, updated_at=? WHERE name=?",
                       (_dumps(current), now_ns(), name))
            self._on_commit(tx, "/namespaces/update", {"name": name, "labels": current})
        return current

    def set_label(self, name: str, key: str, value: str) -> dict[str, str]:
        """Set one label (an empty ``value`` removes it)."""
        return self.set_labels(name, {key: value})

    def delete(self, name: str) -> None:
        """Remove an empty namespace: :class:`NotFound` if it does not exist, :class:`FailedPrecondition`
        naming what is left (images, containers, content, snapshots, leases, ...) if it is not empty."""
        with self.db.tx() as tx:
            left = self._contents(tx, name)
            if not left and tx.execute("SELECT 1 FROM namespaces WHERE name=?", (name,)).fetchone() is None:
                raise NotFound(f"namespace {name!r} not found")
            if left:
                what = ", ".join(f"{kind} ({n})" for kind, n in left.items())
                raise FailedPrecondition(
                    f"namespace {name!r} must be empty, but it still has {what}; remove them first"
                )
            tx.execute("DELETE FROM namespaces WHERE name=?", (name,))
            self._on_commit(tx, "/namespaces/delete", {"name": name})

    # -- reads ---------------------------------------------------------------------------------

    def get(self, name: str) -> Namespace:
        row = self.db.query_one("SELECT * FROM namespaces WHERE name=?", (name,))
        if row is None:
            if name in self._implicit(self.db.conn):
                return Namespace(name)
            raise NotFound(f"namespace {name!r} not found")
        return _row(row)

    def exists(self, name: str) -> bool:
        if self.db.query_one("SELECT 1 FROM namespaces WHERE name=?", (name,)) is not None:
            return True
        return name in self._implicit(self.db.conn)

    def list(self) -> list[Namespace]:
        """Every namespace, by name: those created, and those a store wrote objects in without creating
        the namespace first (listed with no labels)."""
        found = {r["name"]: _row(r) for r in self.db.query("SELECT * FROM namespaces")}
        for name in self._implicit(self.db.conn) - set(found):
            found[name] = Namespace(name)
        return [found[n] for n in sorted(found)]

    def names(self) -> builtins.list[str]:
        return [n.name for n in self.list()]

    def labels(self, name: str) -> dict[str, str]:
        return self.get(name).labels

    def contents(self, name: str) -> dict[str, int]:
        """What the namespace holds: a count per kind of object (empty when the namespace is empty)."""
        return self._contents(self.db.conn, name)

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _implicit(conn: sqlite3.Connection | Tx) -> set[str]:
        """Namespaces that hold objects, whether or not they have a row of their own."""
        out: set[str] = set()
        for table, col in namespaced_tables(conn).items():
            if table not in _DEPENDENT_TABLES:
                out.update(r[0] for r in conn.execute(f'SELECT DISTINCT "{col}" FROM "{table}"').fetchall())
        return out

    @staticmethod
    def _contents(conn: sqlite3.Connection | Tx, name: str) -> dict[str, int]:
        left: dict[str, int] = {}
        for table, col in sorted(namespaced_tables(conn).items()):
            if table in _DEPENDENT_TABLES:
                continue
            (n,) = conn.execute(f'SELECT COUNT(*) FROM "{table}" WHERE "{col}"=?', (name,)).fetchone()
            if n:
                left[_FRIENDLY.get(table, table)] = n
        return left

    def _on_commit(self, tx: Tx, topic: str, payload: dict[str, Any]) -> None:
        publish = self.publish
        if publish is not None:
            tx.on_commit(lambda: publish(topic, payload))


def _dumps(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), sort_keys=True)
