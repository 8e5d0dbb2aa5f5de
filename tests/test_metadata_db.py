"""The metadata database: WAL, per-component schema migrations (applied once, in order, atomically;
a newer schema refused), write transactions (rollback, nesting, after-commit callbacks)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyctr.errdefs import Unavailable
from pyctr.metadata import db as dbmod
from pyctr.metadata.db import MetadataDB, register_migrations


@pytest.fixture
def component() -> Iterator[str]:
    name = "zz_test_component"
    try:
        yield name
    finally:
        dbmod._MIGRATIONS.pop(name, None)


def version(db: MetadataDB, component: str) -> int | None:
    row = db.query_one("SELECT version FROM schema_versions WHERE component=?", (component,))
    return None if row is None else int(row[0])


def test_wal_and_busy_timeout(tmp_path: Path) -> None:
    db = MetadataDB(tmp_path / "m.db")
    try:
        assert db.query_one("PRAGMA journal_mode")[0] == "wal"  # type: ignore[index]
        assert db.query_one("PRAGMA busy_timeout")[0] >= 1000  # type: ignore[index]
        assert db.query_one("PRAGMA foreign_keys")[0] == 1  # type: ignore[index]
    finally:
        db.close()


def test_migrations_apply_in_order_once_and_later_steps_are_added(tmp_path: Path, component: str) -> None:
    register_migrations(component, ["CREATE TABLE zz (a INTEGER)"])
    db = MetadataDB(tmp_path / "m.db")
    db.conn.execute("INSERT INTO zz VALUES (1)")
    assert version(db, component) == 1
    db.close()
    # a later release appends a step; the data survives, the first step does not run again
    register_migrations(component, ["CREATE TABLE zz (a INTEGER)", "ALTER TABLE zz ADD COLUMN b TEXT DEFAULT 'x'"])
    db = MetadataDB(tmp_path / "m.db")
    try:
        assert version(db, component) == 2
        assert [tuple(r) for r in db.query("SELECT a, b FROM zz")] == [(1, "x")]
    finally:
        db.close()


def test_a_failing_migration_changes_nothing(tmp_path: Path, component: str) -> None:
    register_migrations(component, ["CREATE TABLE zz (a INTEGER)"])
    MetadataDB(tmp_path / "m.db").close()
    register_migrations(component, ["CREATE TABLE zz (a INTEGER)", "CREATE TABLE zz2 (a);\nSELECT nope FROM zz"])
    with pytest.raises(sqlite3.OperationalError):
        MetadataDB(tmp_path / "m.db")
    dbmod._MIGRATIONS.pop(component)
    db = MetadataDB(tmp_path / "m.db")
    try:
        assert version(db, component) == 1
        assert db.query_one("SELECT name FROM sqlite_master WHERE name='zz2'") is None
    finally:
        db.close()


def test_a_newer_schema_is_refused(tmp_path: Path, component: str) -> None:
    register_migrations(component, ["CREATE TABLE zz (a)", "CREATE TABLE zz2 (a)"])
    MetadataDB(tmp_path / "m.db").close()
    register_migrations(component, ["CREATE TABLE zz (a)"])  # an older pyctr
    with pytest.raises(Unavailable, match="newer than this pyctr knows"):
        MetadataDB(tmp_path / "m.db")


def test_transactions(tmp_path: Path, component: str) -> None:
    register_migrations(component, ["CREATE TABLE zz (a INTEGER)"])
    db = MetadataDB(tmp_path / "m.db")
    committed: list[str] = []
    try:
        with pytest.raises(RuntimeError), db.tx() as tx:
            tx.execute("INSERT INTO zz VALUES (1)")
            tx.on_commit(lambda: committed.append("rolled back"))
            raise RuntimeError("boom")
        assert db.query("SELECT * FROM zz") == [] and committed == []
        with db.tx() as tx:
            tx.execute("INSERT INTO zz VALUES (2)")
            with db.tx() as inner:  # joins the outer transaction
                assert inner is tx
                inner.execute("INSERT INTO zz VALUES (3)")
                inner.on_commit(lambda: committed.append("inner"))
            assert committed == []  # not before the outer commit
        assert committed == ["inner"]
        assert [r[0] for r in db.query("SELECT a FROM zz ORDER BY a")] == [2, 3]
    finally:
        db.close()
