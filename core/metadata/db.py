"""SQLite under the root: connections, transactions, per-component schema migrations.

Every component that keeps records (namespaces, content, images, containers, snapshots, leases, ...)
owns its tables and declares them as a list of migrations with :func:`register_migrations`; the
database applies what is missing when it opens, in one transaction per component, and records the
version in ``schema_versions``.  Several processes may use one database at once: WAL mode, a busy
timeout, and write transactions opened with ``BEGIN IMMEDIATE`` keep them consistent.

Write transactions run callbacks registered with :meth:`Tx.on_commit` after the commit succeeds
(events are published only for committed changes, as containerd does).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errdefs import Internal, Unavailable

log = logging.getLogger("pyctr.metadata")

_MIGRATIONS: dict[str, list[str]] = {}
_BUSY_TIMEOUT_MS = 30_000


def register_migrations(component: str, migrations: list[str]) -> None:
    """Declare ``component``'s schema as an ordered list of SQL scripts (append-only, never edit one)."""
    _MIGRATIONS[component] = migrations


class Tx:
    """A write transaction: the connection plus after-commit callbacks."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._after: list[Callable[[], None]] = []

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, params: Any) -> sqlite3.Cursor:
        return self.conn.executemany(sql, params)

    def on_commit(self, fn: Callable[[], None]) -> None:
        self._after.append(fn)


class MetadataDB:
    """One SQLite database file, shared by threads (a connection each) and processes."""

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        self._synchronous = synchronous
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._mutation_hooks: list[Callable[[str], None]] = []
        self.migrate()

    # -- connections ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as e:
            raise Unavailable(f"cannot open the metadata database {self.path}: {e}") from None
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            self._conns.append(conn)
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        c: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if c is None:
            c = self._connect()
            self._local.conn = c
        return c

    @contextlib.contextmanager
    def tx(self) -> Iterator[Tx]:
        """A write transaction (``BEGIN IMMEDIATE``); nested calls join the outer one."""
        depth = getattr(self._local, "depth", 0)
        if depth:
            yield self._local.tx
            return
        conn = self.conn
        tx = Tx(conn)
        try:
            with write_transaction(conn, f"metadata database {self.path}"):
                self._local.depth, self._local.tx = 1, tx
                yield tx
        finally:
            self._local.depth = 0
        for fn in tx._after:
            try:
                fn()
            except Exception:
                log.warning("after-commit callback failed", exc_info=True)

    @property
    def in_transaction(self) -> bool:
        """Whether this thread is inside :meth:`tx`."""
        return bool(getattr(self._local, "depth", 0))

    def query(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        """Run a read-only statement (inside the current transaction, if any)."""
        return self.conn.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Any = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(sql, params).fetchone()
        return row

    # -- mutation notifications (the GC scheduler listens) -------------------------------------

    def add_mutation_hook(self, fn: Callable[[str], None]) -> None:
        self._mutation_hooks.append(fn)

    def mutated(self, kind: str) -> None:
        """Say that records were deleted (``kind="delete"``) or changed (``"update"``).  A hook added by
        a hook while they run (the GC scheduler, initialised on the first deletion) hears this call
        too."""
        for fn in self._mutation_hooks:  # by index: hooks appended meanwhile are called as well
            try:
                fn(kind)
            except Exception:
                log.warning("mutation hook failed", exc_info=True)

    # -- schema --------------------------------------------------------------------------------

    def migrate(self) -> None:
        conn = self.conn
        _begin(conn)
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_versions "
                         "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        for component, steps in sorted(_MIGRATIONS.items()):
            self._migrate_component(component, steps)

    def ensure_schema(self, component: str) -> None:
        """Apply ``component``'s migrations if it registered after this database opened."""
        self._migrate_component(component, _MIGRATIONS.get(component, []))

    def _migrate_component(self, component: str, steps: list[str]) -> None:
        conn = self.conn
        row = conn.execute("SELECT version FROM schema_versions WHERE component=?", (component,)).fetchone()
        if row is not None and row[0] >= len(steps):
            if row[0] > len(steps):
                raise Unavailable(
                    f"metadata database {self.path} has {component} schema version {row[0]}, newer than this "
                    f"pyctr knows ({len(steps)}); upgrade pyctr"
                )
            return
        if conn.in_transaction:
            # Called inside a write transaction (a store made on first use within db.tx()): migrate in
            # a savepoint of that transaction, which already holds the write lock.
            conn.execute("SAVEPOINT pyctr_migrate")
            try:
                self._apply(conn, component, steps)
                conn.execute("RELEASE pyctr_migrate")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK TO pyctr_migrate")
                    conn.execute("RELEASE pyctr_migrate")
                raise
            return
        _begin(conn)
        try:
            self._apply(conn, component, steps)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _apply(conn: sqlite3.Connection, component: str, steps: list[str]) -> None:
        row = conn.execute("SELECT version FROM schema_versions WHERE component=?", (component,)).fetchone()
        have = row[0] if row else 0
        for sql in steps[have:]:
            for stmt in _split(sql):
                conn.execute(stmt)
        conn.execute(
            "INSERT INTO schema_versions(component, version) VALUES(?, ?) "
            "ON CONFLICT(component) DO UPDATE SET version=excluded.version",
            (component, len(steps)),
        )

    def close(self) -> None:
        with self._lock:
            for c in self._conns:
                with contextlib.suppress(sqlite3.Error):
                    c.close()
            self._conns.clear()
        self._local = threading.local()


def _begin(conn: sqlite3.Connection, what: str = "the metadata database") -> None:
    # BEGIN IMMEDIATE takes the write lock now, so the busy timeout applies here and not at a later
    # statement that cannot be retried; SQLITE_BUSY past the timeout is retried a few times more.
    for attempt in range(5):
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise
            time.sleep(0.05 * (attempt + 1))
    raise Unavailable(f"{what} stayed locked by another process for too long")


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection, what: str) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` (retried while another process holds the lock), then COMMIT, or ROLLBACK
    when the block raises; a failed COMMIT is rolled back and raised as Internal.  Shared by every
    SQLite store of pyctr (the metadata database, the snapshotters' own)."""
    _begin(conn, what)
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise Internal(f"{what}: commit failed: {e}") from None


def _split(script: str) -> list[str]:
    return [s.strip() for s in script.split(";\n") if s.strip()]


def now_ns() -> int:
    return time.time_ns()
