"""What the file-based snapshotters share: a small SQLite metastore and the snapshot life cycle.

Each snapshotter keeps, in its plugin root::

    metadata.db             this snapshotter's records (SQLite, WAL; writes under BEGIN IMMEDIATE)
    snapshots/<id>/...      one directory per snapshot, by numeric id (never reused)
    snapshots/new-<pid>-*   a snapshot being made by process <pid>
    snapshots/rm-<id>       a removed snapshot's directory waiting for deletion

:class:`BaseSnapshotter` implements the :class:`~pyctr.snapshots.Snapshotter` protocol over that
layout; a subclass says how a new snapshot's directory is filled (:meth:`BaseSnapshotter._populate`),
which mounts give it (:meth:`BaseSnapshotter._mounts`) and where its own files are
(:meth:`BaseSnapshotter._usage_dir`).  Several processes may use one root at once: every change
is one write transaction, and a directory only gets its final name inside the transaction that
records it, so a crash leaves at most stray directories, which :meth:`BaseSnapshotter.cleanup` removes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyctr.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from pyctr.identifiers import validate_labels
from pyctr.snapshots import Info, Kind, Mount, Usage, apply_label_update, validate_key

from .fsutil import disk_usage, remove_tree

log = logging.getLogger("pyctr.snapshots")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    parent TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    inodes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent)
"""


@dataclass(frozen=True)
class Snapshot:
    """A snapshot as its snapshotter sees it: numeric id, kind, and the ids of its parents, nearest
    first."""

    id: int
    key: str
    kind: Kind
    parent_ids: tuple[int, ...] = ()


class MetaStore:
    """One SQLite file; a connection per thread; write transactions with ``BEGIN IMMEDIATE``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        with self.tx() as conn:
            for stmt in _SCHEMA.split(";\n"):
                conn.execute(stmt)

    @property
    def conn(self) -> sqlite3.Connection:
        c: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if c is None:
            try:
                c = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            except sqlite3.Error as e:
                raise Unavailable(f"cannot open snapshot metadata {self.path}: {e}") from None
            c.row_factory = sqlite3.Row
            c.execute("PRAGMA busy_timeout=30000")
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = c
            with self._lock:
                self._conns.append(c)
        return c

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; nested calls join the outer one."""
        if getattr(self._local, "depth", 0):
            yield self.conn
            return
        from pyctr.metadata.db import write_transaction

        conn = self.conn
        try:
            with write_transaction(conn, f"snapshot metadata {self.path}"):
                self._local.depth = 1
                yield conn
        finally:
            self._local.depth = 0

    def close(self) -> None:
        with self._lock:
            for c in self._conns:
                with contextlib.suppress(sqlite3.Error):
                    c.close()
            self._conns.clear()
        self._local = threading.local()


def _info(row: sqlite3.Row) -> Info:
    return Info(kind=Kind(row["kind"]), name=row["key"], parent=row["parent"],
                labels=json.loads(row["labels"] or "{}"), created_at=row["created_at"],
                updated_at=row["updated_at"])


def _dumps(labels: Mapping[str, str]) -> str:
    return json.dumps(dict(labels), separators=(",", ":"), sort_keys=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BaseSnapshotter:
    """The snapshot life cycle over ``<root>/snapshots/<id>`` and ``<root>/metadata.db``.

    :param root: the snapshotter's directory (made if missing).
    :param sync_remove: delete a removed snapshot's files at once (default); otherwise they wait for
        :meth:`cleanup` (which the garbage collector calls).
    """

    def __init__(self, root: str | os.PathLike[str], *, sync_remove: bool = True) -> None:
        self.root = os.path.abspath(root)
        self.snapshots_dir = os.path.join(self.root, "snapshots")
        os.makedirs(self.snapshots_dir, mode=0o700, exist_ok=True)
        self.sync_remove = sync_remove
        self.ms = MetaStore(os.path.join(self.root, "metadata.db"))

    # -- what subclasses provide -----------------------------------------------------------------

    def _populate(self, tmp: str, kind: Kind, parent_ids: tuple[int, ...]) -> None:
        raise NotImplementedError

    def _mounts(self, s: Snapshot) -> list[Mount]:
        raise NotImplementedError

    def _usage_dir(self, sid: int) -> str:
        return self.snapshot_dir(sid)

    def _extra_labels(self, sid: int) -> dict[str, str]:
        return {}

    # -- paths -----------------------------------------------------------------------------------

    def snapshot_dir(self, sid: int) -> str:
        return os.path.join(self.snapshots_dir, str(sid))

    # -- reads -----------------------------------------------------------------------------------

    def _row(self, conn: sqlite3.Connection, key: str) -> sqlite3.Row:
        row: sqlite3.Row | None = conn.execute("SELECT * FROM snapshots WHERE key=?", (key,)).fetchone()
        if row is None:
            raise NotFound(f"snapshot {key!r} does not exist")
        return row

    def _chain(self, conn: sqlite3.Connection, key: str) -> tuple[int, ...]:
        rows = conn.execute(
            "WITH RECURSIVE chain(id, parent, depth) AS ("
            " SELECT id, parent, 0 FROM snapshots WHERE key=?"
            " UNION ALL SELECT s.id, s.parent, c.depth + 1 FROM snapshots s JOIN chain c ON s.key = c.parent"
            ") SELECT id FROM chain ORDER BY depth", (key,)).fetchall()
        return tuple(r[0] for r in rows)

    def _snapshot(self, conn: sqlite3.Connection, key: str) -> Snapshot:
        row = self._row(conn, key)
        chain = self._chain(conn, key)
        return Snapshot(id=row["id"], key=key, kind=Kind(row["kind"]), parent_ids=chain[1:])

    def stat(self, key: str) -> Info:
        return _info(self._row(self.ms.conn, key))

    def get_snapshot(self, key: str) -> Snapshot:
        """The id, kind and parent ids of ``key``."""
        return self._snapshot(self.ms.conn, key)

    def mounts(self, key: str) -> list[Mount]:
        s = self._snapshot(self.ms.conn, key)
        if s.kind == Kind.COMMITTED:
            raise FailedPrecondition(
                f"snapshot {key!r} is committed: only active and view snapshots have mounts"
            )
        return self._mounts(s)

    def usage(self, key: str) -> Usage:
        row = self._row(self.ms.conn, key)
        if row["kind"] == Kind.COMMITTED.value:
            return Usage(row["size"], row["inodes"])
        return disk_usage(self._usage_dir(row["id"]))

    def walk(self, filters: Sequence[str] = ()) -> Iterator[Info]:
        from pyctr.filters import parse

        f = parse(list(filters))
        rows = self.ms.conn.execute("SELECT * FROM snapshots ORDER BY id").fetchall()
        for row in rows:
            info = _info(row)
            if f.match_dict(info.filter_fields()):
                yield info

    # -- writes ----------------------------------------------------------------------------------

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        with self.ms.tx() as conn:
            row = self._row(conn, info.name)
            labels = apply_label_update(json.loads(row["labels"] or "{}"), info.labels, fieldpaths)
            labels = validate_labels(labels, "snapshot label")
            now = time.time_ns()
            conn.execute("UPDATE snapshots SET labels=?, updated_at=? WHERE id=?",
                         (_dumps(labels), now, row["id"]))
            return _info(self._row(conn, info.name))

    def prepare(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        return self._create(Kind.VIEW, key, parent, labels)

    def _check_parent(self, conn: sqlite3.Connection, parent: str) -> tuple[int, ...]:
        try:
            prow = self._row(conn, parent)
        except NotFound:
            raise NotFound(f"parent snapshot {parent!r} does not exist") from None
        if prow["kind"] != Kind.COMMITTED.value:
            raise InvalidArgument(f"parent {parent!r} is not a committed snapshot (it is {prow['kind']})")
        return self._chain(conn, parent)

    def _create(self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None) -> list[Mount]:
        validate_key(key)
        lbls = validate_labels(dict(labels or {}), "snapshot label")
        conn = self.ms.conn
        parent_ids: tuple[int, ...] = ()
        if conn.execute("SELECT 1 FROM snapshots WHERE key=?", (key,)).fetchone():
            raise AlreadyExists(f"snapshot {key!r} already exists")
        if parent:
            parent_ids = self._check_parent(conn, parent)
        tmp = tempfile.mkdtemp(prefix=f"new-{os.getpid()}-", dir=self.snapshots_dir)
        final = ""
        try:
            try:
                self._populate(tmp, kind, parent_ids)
            except FileNotFoundError as e:
                raise NotFound(f"parent snapshot {parent!r} went away while it was copied: {e}") from None
            with self.ms.tx() as conn:
                if conn.execute("SELECT 1 FROM snapshots WHERE key=?", (key,)).fetchone():
                    raise AlreadyExists(f"snapshot {key!r} already exists")
                if parent and self._check_parent(conn, parent) != parent_ids:
                    raise NotFound(f"parent snapshot {parent!r} changed while {key!r} was being made")
                now = time.time_ns()
                cur = conn.execute(
                    "INSERT INTO snapshots(key, parent, kind, labels, created_at, updated_at) "
                    "VALUES(?,?,?,?,?,?)",
                    (key, parent, kind.value, _dumps(lbls), now, now))
                sid = int(cur.lastrowid or 0)
                extra = self._extra_labels(sid)
                if extra:
                    conn.execute("UPDATE snapshots SET labels=? WHERE id=?", (_dumps({**lbls, **extra}), sid))
                dest = self.snapshot_dir(sid)
                if os.path.lexists(dest):  # a stray directory from a transaction that never committed
                    remove_tree(dest)
                os.rename(tmp, dest)
                final = dest
        except BaseException:
            remove_tree(tmp)
            if final:  # renamed, then the commit failed
                remove_tree(final)
            raise
        return self._mounts(Snapshot(sid, key, kind, parent_ids))

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        validate_key(name, "snapshot name")
        lbls = validate_labels(dict(labels or {}), "snapshot label")
        with self.ms.tx() as conn:
            row = self._row(conn, key)
            if row["kind"] != Kind.ACTIVE.value:
                raise FailedPrecondition(f"snapshot {key!r} is not active (it is {row['kind']}): only active "
                                         "snapshots can be committed")
            if conn.execute("SELECT 1 FROM snapshots WHERE key=?", (name,)).fetchone():
                raise AlreadyExists(f"snapshot {name!r} already exists")
            usage = disk_usage(self._usage_dir(row["id"]))
            lbls = {**lbls, **self._extra_labels(row["id"])}
            now = time.time_ns()
            conn.execute(
                "UPDATE snapshots SET key=?, kind=?, labels=?, created_at=?, updated_at=?, size=?, inodes=? "
                "WHERE id=?",
                (name, Kind.COMMITTED.value, _dumps(lbls), now, now, usage.size, usage.inodes, row["id"]))

    def remove(self, key: str) -> None:
        with self.ms.tx() as conn:
            row = self._row(conn, key)
            n = conn.execute("SELECT COUNT(*) FROM snapshots WHERE parent=?", (key,)).fetchone()[0]
            if n:
                raise FailedPrecondition(f"cannot remove snapshot {key!r}: it has {n} child snapshot(s)")
            conn.execute("DELETE FROM snapshots WHERE id=?", (row["id"],))
            sid = row["id"]
            doomed = os.path.join(self.snapshots_dir, f"rm-{sid}")
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.snapshot_dir(sid), doomed)
        if self.sync_remove:
            remove_tree(doomed)

    def cleanup(self) -> list[str]:
        """Remove directories no snapshot owns (removed snapshots, interrupted prepares of processes
        that are gone); returns their names."""
        with self.ms.tx() as conn:
            ids = {str(r[0]) for r in conn.execute("SELECT id FROM snapshots")}
            stray: list[str] = []
            for name in os.listdir(self.snapshots_dir):
                if name in ids:
                    continue
                if name.startswith("new-"):
                    pid = name.split("-")[1]
                    if pid.isdigit() and (int(pid) == os.getpid() or _pid_alive(int(pid))):
                        continue
                stray.append(name)
        for name in stray:
            remove_tree(os.path.join(self.snapshots_dir, name))
        return stray

    def close(self) -> None:
        self.ms.close()
