"""Namespaces: identifiers, labels, isolation of objects, and refusing to remove a namespace that still
holds something; through the store and through ``pyctr namespaces``/``pyctr leases``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyctr.content import Descriptor
from pyctr.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pyctr.identifiers import MAX_LENGTH, is_identifier, validate_identifier, validate_labels
from pyctr.images import Image
from pyctr.metadata.content import NamespacedContentStore
from pyctr.metadata.db import MetadataDB
from pyctr.metadata.images import ImageStore
from pyctr.metadata.leases import LeaseManager
from pyctr.metadata.namespaces import Namespace, NamespaceStore
from pyctr.plugins.content.local.store import LocalStore


@pytest.fixture
def db(tmp_path: Path) -> Iterator[MetadataDB]:
    d = MetadataDB(tmp_path / "meta.db")
    try:
        yield d
    finally:
        d.close()


@pytest.mark.parametrize("name", ["default", "k8s.io", "a", "A-1_b.c", "x" * MAX_LENGTH, "moby"])
def test_valid_identifiers(name: str) -> None:
    assert validate_identifier(name) == name and is_identifier(name)


@pytest.mark.parametrize("name", ["", "-a", "a-", "a..b", "a_-b", "a b", "ä", "a/b", "x" * (MAX_LENGTH + 1),
                                  "version", ".hidden"])
def test_invalid_identifiers(name: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_identifier(name, "namespace name")


def test_label_size_limit() -> None:
    assert validate_labels({"k": "v" * 4095}) == {"k": "v" * 4095}
    with pytest.raises(InvalidArgument, match="4096"):
        validate_labels({"k": "v" * 4096})
    with pytest.raises(InvalidArgument):
        validate_labels({"": "v"})


def test_create_get_list_labels(db: MetadataDB) -> None:
    store = NamespaceStore(db)
    ns = store.create("team-a", {"owner": "alice"})
    assert (ns.name, ns.labels) == ("team-a", {"owner": "alice"})
    with pytest.raises(AlreadyExists):
        store.create("team-a")
    store.ensure("team-a")  # idempotent, keeps labels
    store.ensure("team-b")
    assert [n.name for n in store.list()] == ["team-a", "team-b"]
    assert store.get("team-a").labels == {"owner": "alice"}
    assert store.set_labels("team-a", {"tier": "gold", "owner": ""}) == {"tier": "gold"}
    assert store.set_labels("team-a", {"x": "1"}, replace=True) == {"x": "1"}
    assert store.set_label("team-a", "containerd.io/defaults/snapshotter", "native")["x"] == "1"
    with pytest.raises(NotFound):
        store.set_labels("nope", {"a": "b"})
    with pytest.raises(NotFound):
        store.get("nope")
    with pytest.raises(InvalidArgument):
        store.ensure("bad name")
    got = store.get("team-a")
    assert Namespace.from_dict(got.to_dict()) == got


def test_events_are_published_after_commit(db: MetadataDB) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    store = NamespaceStore(db, publish=lambda topic, payload: seen.append((topic, payload)))
    store.create("a")
    store.ensure("a")
    store.set_label("a", "k", "v")
    store.delete("a")
    with pytest.raises(AlreadyExists), db.tx():
        store.create("b")
        store.create("b")  # fails inside one transaction: nothing of it is published
    assert [t for t, _ in seen] == ["/namespaces/create", "/namespaces/update", "/namespaces/delete"]
    assert not store.exists("b")


def test_a_namespace_with_objects_cannot_be_removed(db: MetadataDB, tmp_path: Path) -> None:
    store = NamespaceStore(db)
    content = NamespacedContentStore(db, LocalStore(tmp_path / "content"))
    images = ImageStore(db)
    leases = LeaseManager(db)
    data = b"{}"
    dgst = "sha256:" + hashlib.sha256(data).hexdigest()
    w = content.writer("busy", "r", total=len(data), expected=dgst)
    w.write(data)
    w.commit(len(data), dgst)
    index = Descriptor("application/vnd.oci.image.index.v1+json", dgst, 2)
    images.create("busy", Image("example.com/x:1", index))
    leases.create("busy", "l1")
    assert store.exists("busy")  # the stores created it on first write
    with pytest.raises(FailedPrecondition) as e:
        store.delete("busy")
    msg = str(e.value)
    assert "'busy' must be empty" in msg
    assert "content (1)" in msg and "images (1)" in msg and "leases (1)" in msg
    images.delete("busy", "example.com/x:1")
    content.delete("busy", dgst)
    with pytest.raises(FailedPrecondition, match=r"leases \(1\)"):
        store.delete("busy")
    leases.delete("busy", "l1")
    store.delete("busy")
    assert not store.exists("busy")
    with pytest.raises(NotFound):
        store.delete("busy")


def test_objects_are_invisible_in_other_namespaces(db: MetadataDB, tmp_path: Path) -> None:
    content = NamespacedContentStore(db, LocalStore(tmp_path / "content"))
    leases = LeaseManager(db)
    data = b"only in a"
    dgst = "sha256:" + hashlib.sha256(data).hexdigest()
    w = content.writer("a", "r", total=len(data), expected=dgst)
    w.write(data)
    w.commit(len(data), dgst)
    leases.create("a", "held")
    assert [i.digest for i in content.walk("a")] == [dgst]
    assert content.walk("b") == []
    with pytest.raises(NotFound):
        content.info("b", dgst)
    assert leases.list("b") == []
    with pytest.raises(NotFound):
        leases.get("b", "held")
    NamespaceStore(db).ensure("b")
    NamespaceStore(db).delete("b")  # b is empty whatever a holds


# -- through the CLI --------------------------------------------------------------------------------


def test_cli_namespaces(pyctr_cli: Any) -> None:
    pyctr_cli("namespaces", "create", "team-a", "owner=alice", check=True)
    pyctr_cli("ns", "create", "team-b", check=True)
    ls = pyctr_cli("namespaces", "ls", check=True).stdout.splitlines()
    assert ls[0].split() == ["NAME", "LABELS"]
    assert [line.split() for line in ls[1:]] == [["team-a", "owner=alice"], ["team-b", "-"]]
    assert pyctr_cli("namespaces", "ls", "-q", check=True).stdout.split() == ["team-a", "team-b"]
    labelled = pyctr_cli("namespaces", "label", "team-a", "tier=gold", "owner=", check=True)
    assert labelled.stdout == "tier=gold\n"
    assert pyctr_cli("namespaces", "label", "team-a", check=True).stdout == "tier=gold\n"

    p = pyctr_cli("namespaces", "create", "team-a")
    assert p.returncode == 4 and p.stderr.strip() == "pyctr: namespace 'team-a' already exists"
    p = pyctr_cli("namespaces", "create", "Bad Name")
    assert p.returncode == 2 and "invalid" in p.stderr and "Traceback" not in p.stderr

    pyctr_cli("-n", "team-a", "leases", "create", "--id", "keep", check=True)
    p = pyctr_cli("namespaces", "rm", "team-a", "team-b", "ghost")
    assert p.returncode == 5  # the first failure's code: team-a is not empty
    assert p.stdout.split() == ["team-b"]
    assert "namespace 'team-a' must be empty, but it still has leases (1)" in p.stderr
    assert "namespace 'ghost' not found" in p.stderr
    pyctr_cli("-n", "team-a", "leases", "rm", "keep", check=True)
    assert pyctr_cli("namespaces", "rm", "team-a", check=True).stdout == "team-a\n"
    assert pyctr_cli("namespaces", "ls", "-q", check=True).stdout == ""


def test_cli_leases(pyctr_cli: Any) -> None:
    lid = pyctr_cli("leases", "create", check=True).stdout.strip()
    assert is_identifier(lid)
    pyctr_cli("leases", "create", "--id", "pull", "--expires", "1h30m", "--label", "team=x", check=True)
    pyctr_cli("leases", "create", "--id", "forever", "--expires", "0", check=True)
    out = pyctr_cli("leases", "ls", check=True).stdout.splitlines()
    assert out[0].split() == ["ID", "CREATED", "AT", "LABELS"]
    rows = {line.split()[0]: line for line in out[1:]}
    assert set(rows) == {lid, "pull", "forever"}
    assert "containerd.io/gc.expire=" in rows["pull"] and "team=x" in rows["pull"]
    assert "gc.expire" in rows[lid]  # the default is 24h, as ctr's
    assert rows["forever"].split()[-1] == "-"
    assert pyctr_cli("leases", "ls", "-q", "labels.team==x", check=True).stdout.split() == ["pull"]
    assert pyctr_cli("-n", "other", "leases", "ls", "-q", check=True).stdout == ""
    p = pyctr_cli("leases", "create", "--expires", "soon")
    assert p.returncode == 2 and "invalid duration 'soon'" in p.stderr
    p = pyctr_cli("leases", "rm", "pull", "ghost", "--sync")
    assert p.returncode == 3 and p.stdout.split() == ["pull"] and "lease 'ghost' not found" in p.stderr
    assert sorted(pyctr_cli("leases", "ls", "-q", check=True).stdout.split()) == sorted([lid, "forever"])


def test_parse_duration() -> None:
    from pyctr.cli.leases import parse_duration

    assert parse_duration("24h") == 86400
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("500ms") == 0.5
    assert parse_duration("90") == 90
    for bad in ("", "h", "1x", "1h 30m", "-"):
        with pytest.raises(InvalidArgument):
            parse_duration(bad)


def test_namespaces_a_store_wrote_in_without_creating_them_are_listed(db: MetadataDB) -> None:
    store = NamespaceStore(db)
    store.create("made")
    with db.tx() as tx:  # a store that writes rows without NamespaceStore.ensure
        tx.execute("CREATE TABLE IF NOT EXISTS sandboxes (ns TEXT, id TEXT)")
        tx.execute("INSERT INTO sandboxes VALUES('implicit', 's1')")
    assert store.names() == ["implicit", "made"]
    assert store.exists("implicit") and store.get("implicit").labels == {}
    with pytest.raises(FailedPrecondition, match=r"sandboxes \(1\)"):
        store.delete("implicit")
    assert store.set_labels("implicit", {"a": "b"}) == {"a": "b"}
    db.conn.execute("DELETE FROM sandboxes")
    store.delete("implicit")
    assert store.names() == ["made"]
