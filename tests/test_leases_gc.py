"""Leases and the garbage collector, over the real stores: SQLite metadata, the local content store and
the native snapshotter.  Each test builds a small graph of objects and checks that a collection removes
exactly the unreferenced ones, records and backend objects alike."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyctr.content import Descriptor
from pyctr.errdefs import AlreadyExists, InvalidArgument, NotFound
from pyctr.images import Image
from pyctr.metadata.containers import Container, ContainerStore, RuntimeInfo
from pyctr.metadata.content import NamespacedContentStore
from pyctr.metadata.db import MetadataDB, now_ns
from pyctr.metadata.gc import collect, label_refs
from pyctr.metadata.images import ImageStore
from pyctr.metadata.leases import (
    LABEL_GC_EXPIRE,
    LABEL_GC_FLAT,
    LeaseManager,
    Resource,
    format_rfc3339,
    parse_rfc3339,
)
from pyctr.plugins.content.local.store import LocalStore
from pyctr.plugins.snapshots.native.native import NativeSnapshotter

HOUR = 3600 * 1_000_000_000
MT_INDEX = "application/vnd.oci.image.index.v1+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class World:
    db: MetadataDB
    backend: LocalStore
    content: NamespacedContentStore
    images: ImageStore
    containers: ContainerStore
    leases: LeaseManager
    native: NativeSnapshotter
    seq: int = 0

    def put(self, ns: str, data: bytes, labels: dict[str, str] | None = None) -> str:
        """Write ``data`` into ``ns`` through the namespaced content store; return its digest."""
        dgst = digest_of(data)
        try:
            w = self.content.writer(ns, f"put-{dgst[7:19]}", total=len(data), expected=dgst)
        except AlreadyExists:  # already in the backend: linked into ns
            if labels:
                self.content.update(ns, dgst, labels)
            return dgst
        w.write(data)
        w.commit(len(data), dgst, labels=labels)
        return dgst

    def image(self, ns: str, name: str, dgst: str, labels: dict[str, str] | None = None) -> None:
        size = self.backend.info(dgst).size
        self.images.create(ns, Image(name=name, target=Descriptor(MT_INDEX, dgst, size), labels=labels or {}))

    def snapshot(self, ns: str, key: str, parent: str = "", *, active: bool = False,
                 labels: dict[str, str] | None = None) -> str:
        """A backend snapshot in the native snapshotter plus its namespace record; returns the backend
        key.  (The record is written directly, with the columns the namespaced snapshotter uses.)"""
        self.seq += 1
        bkey = f"{ns}/{self.seq}/{key}"
        bparent = ""
        if parent:
            row = self.db.query_one("SELECT backend_key FROM snapshots WHERE ns=? AND snapshotter='native' "
                                    "AND key=?", (ns, parent))
            assert row is not None
            bparent = row[0]
        if active:
            self.native.prepare(bkey, bparent)
        else:
            self.native.prepare(f"tmp-{bkey}", bparent)
            self.native.commit(bkey, f"tmp-{bkey}")
        with self.db.tx() as tx:
            tx.execute("CREATE TABLE IF NOT EXISTS snapshots (ns TEXT NOT NULL, snapshotter TEXT NOT NULL, "
                       "key TEXT NOT NULL, backend_key TEXT NOT NULL, parent TEXT NOT NULL DEFAULT '', "
                       "kind TEXT NOT NULL, labels TEXT NOT NULL DEFAULT '{}', created_at INTEGER NOT NULL, "
                       "updated_at INTEGER NOT NULL, PRIMARY KEY (ns, snapshotter, key))")
            tx.execute("INSERT INTO snapshots VALUES(?,?,?,?,?,?,?,?,?)",
                       (ns, "native", key, bkey, parent, "active" if active else "committed",
                        json.dumps(labels or {}), now_ns(), now_ns()))
        return bkey

    def container(self, ns: str, id_: str, snapshot_key: str = "",
                  labels: dict[str, str] | None = None) -> None:
        self.containers.create(ns, Container(id=id_, snapshotter="native" if snapshot_key else "",
                                             snapshot_key=snapshot_key, runtime=RuntimeInfo("pyctr.runc"),
                                             labels=labels or {}))

    def collect(self, **kw: Any) -> Any:
        return collect(self.db, self.backend, {"native": self.native}, **kw)

    def records(self, ns: str) -> set[str]:
        return {i.digest for i in self.content.walk(ns)}

    def blobs(self) -> set[str]:
        return {i.digest for i in self.backend.walk()}

    def backend_snapshots(self) -> set[str]:
        return {i.name for i in self.native.walk()}

    def snapshot_records(self, ns: str) -> set[str]:
        return {r[0] for r in self.db.query("SELECT key FROM snapshots WHERE ns=?", (ns,))}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    db = MetadataDB(tmp_path / "meta.db")
    backend = LocalStore(tmp_path / "content")
    native = NativeSnapshotter(tmp_path / "native")
    w = World(db, backend, NamespacedContentStore(db, backend), ImageStore(db), ContainerStore(db),
              LeaseManager(db), native)
    try:
        yield w
    finally:
        native.close()
        db.close()


def image_tree(w: World, ns: str, tag: str) -> dict[str, str]:
    """An index -> manifest -> (config, layer) tree labelled as a pull labels it."""
    layer = w.put(ns, f"layer {tag}".encode())
    config = w.put(ns, f"config {tag}".encode())
    manifest = w.put(ns, f"manifest {tag}".encode(), {"containerd.io/gc.ref.content.config": config,
                                                       "containerd.io/gc.ref.content.l.0": layer})
    index = w.put(ns, f"index {tag}".encode(), {"containerd.io/gc.ref.content.m.0": manifest})
    return {"index": index, "manifest": manifest, "config": config, "layer": layer}


# ---------------------------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------------------------


def test_label_refs_follow_containerds_spelling() -> None:
    refs, brefs, root = label_refs("ns", {
        "containerd.io/gc.ref.content": "sha256:a",
        "containerd.io/gc.ref.content.l.0": "sha256:b",
        "containerd.io/gc.ref.content/x": "sha256:c",
        "containerd.io/gc.ref.contentious": "sha256:not-a-ref",
        "containerd.io/gc.ref.snapshot.overlayfs": "k1",
        "containerd.io/gc.ref.snapshot.native/extra": "k2",
        "containerd.io/gc.bref.container": "c1",
        "containerd.io/gc.bref.image.x": "img",
        "containerd.io/gc.bref.snapshot.native": "k3",
        "containerd.io/gc.root": "",
        "other": "sha256:z",
    })
    assert sorted(refs) == [("content", "ns", "sha256:a"), ("content", "ns", "sha256:b"),
                            ("content", "ns", "sha256:c"), ("snapshot", "ns", "native/k2"),
                            ("snapshot", "ns", "overlayfs/k1")]
    assert sorted(brefs) == [("container", "ns", "c1"), ("image", "ns", "img"),
                             ("snapshot", "ns", "native/k3")]
    assert root


# ---------------------------------------------------------------------------------------------------
# content reachability
# ---------------------------------------------------------------------------------------------------


def test_gc_removes_exactly_the_unreferenced_content(world: World) -> None:
    tree = image_tree(world, "default", "a")
    world.image("default", "example.com/a:1", tree["index"])
    stray = world.put("default", b"nobody wants me")
    res = world.collect()
    assert res.errors == []
    assert res.removed_content == [stray]
    assert world.records("default") == set(tree.values())
    assert world.blobs() == set(tree.values())
    assert ("content", stray) in res.backend

    world.images.delete("default", "example.com/a:1")
    res = world.collect()
    assert sorted(res.removed_content) == sorted(tree.values())
    assert world.records("default") == set()
    assert world.blobs() == set()


def test_gc_is_per_namespace_and_keeps_blobs_another_namespace_uses(world: World) -> None:
    tree = image_tree(world, "a", "shared")
    world.image("a", "img", tree["index"])
    for d in tree.values():
        world.content.link("b", d)
    res = world.collect()
    assert world.records("a") == set(tree.values())
    assert world.records("b") == set()  # nothing in b references them
    assert set(res.removed_content) == set(tree.values())
    assert world.blobs() == set(tree.values())  # a still has them
    assert not [b for b in res.backend if b[0] == "content"]

    world.images.delete("a", "img")
    world.collect()
    assert world.blobs() == set()


def test_gc_root_and_expire_labels_on_content(world: World) -> None:
    past = format_rfc3339(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    future = format_rfc3339(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    rooted = world.put("default", b"root", {"containerd.io/gc.root": "true"})
    fresh = world.put("default", b"fresh", {LABEL_GC_EXPIRE: future})
    stale = world.put("default", b"stale", {LABEL_GC_EXPIRE: past})
    child = world.put("default", b"child")
    world.content.update("default", rooted, {"containerd.io/gc.root": "true",
                                              "containerd.io/gc.ref.content.x": child})
    res = world.collect()
    assert res.removed_content == [stale]
    assert world.records("default") == {rooted, fresh, child}
    res = world.collect(now=now_ns() + 2 * HOUR)
    assert res.removed_content == [fresh]


def test_back_references_keep_an_object_while_its_referrer_lives(world: World) -> None:
    tree = image_tree(world, "default", "b")
    world.image("default", "img", tree["index"])
    sig = world.put("default", b"a signature", {"containerd.io/gc.bref.content.sig": tree["manifest"]})
    note = world.put("default", b"a note", {"containerd.io/gc.bref.image": "img"})
    world.container("default", "c1")
    by_ctr = world.put("default", b"for c1", {"containerd.io/gc.bref.container": "c1"})
    assert world.collect().removed_content == []
    world.images.delete("default", "img")
    world.containers.delete("default", "c1")
    res = world.collect()
    assert {sig, note, by_ctr} <= set(res.removed_content)
    assert world.records("default") == set()


def test_expired_images_are_collected(world: World) -> None:
    past = format_rfc3339(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
    tree = image_tree(world, "default", "c")
    world.image("default", "old", tree["index"], {LABEL_GC_EXPIRE: past})
    res = world.collect()
    assert res.removed_images == [("default", "old")]
    assert not world.images.exists("default", "old")
    assert world.blobs() == set()


# ---------------------------------------------------------------------------------------------------
# leases
# ---------------------------------------------------------------------------------------------------


def test_lease_keeps_its_resources_until_deleted(world: World) -> None:
    lease = world.leases.create("default", "pull-1")
    tree = image_tree(world, "default", "d")
    world.leases.add_resource("default", lease.id, "content", tree["index"])
    assert world.collect().removed_content == []
    assert world.leases.list_resources("default", "pull-1") == [Resource("content", tree["index"])]
    world.leases.delete("default", "pull-1")
    assert set(world.collect().removed_content) == set(tree.values())


def test_expired_lease_is_removed_with_what_only_it_held(world: World) -> None:
    lease = world.leases.create("default", ttl=3600)
    assert lease.expire_at is not None and not lease.expired()
    blob = world.put("default", b"leased")
    world.leases.add_resource("default", lease.id, "content", blob)
    assert world.collect().removed_content == []
    assert world.collect().next_expiry == lease.expire_at
    res = world.collect(now=now_ns() + 2 * HOUR)
    assert res.next_expiry is None
    assert res.removed_leases == [("default", lease.id)]
    assert res.removed_content == [blob]
    with pytest.raises(NotFound):
        world.leases.get("default", lease.id)


def test_flat_lease_keeps_only_what_it_names(world: World) -> None:
    tree = image_tree(world, "default", "e")
    world.leases.create("default", "flat", {LABEL_GC_FLAT: "true"})
    world.leases.add_resource("default", "flat", "content", tree["index"])
    res = world.collect()
    assert set(res.removed_content) == {tree["manifest"], tree["config"], tree["layer"]}
    assert world.records("default") == {tree["index"]}


def test_open_ingest_keeps_its_expected_digest_until_it_expires(world: World) -> None:
    data = b"being written again"
    dgst = world.put("default", data)
    # a second ingest of the same digest in another namespace: linked at once (shared policy), so
    # use a fresh digest whose ingest stays open
    partial = b"partial upload"
    w = world.content.writer("default", "upload-1", total=len(partial), expected=digest_of(partial))
    w.write(partial[:5])
    w.close()
    res = world.collect()
    assert res.removed_content == [dgst]  # nothing holds the committed one
    assert res.removed_ingests == []
    assert [s.ref for s in world.backend.list_statuses()] == ["default/upload-1"]
    res = world.collect(now=now_ns() + 25 * HOUR)
    assert res.removed_ingests == [("default", "upload-1")]
    assert ("ingest", "default/upload-1") in res.backend
    assert world.backend.list_statuses() == []


def test_lease_api_validation(world: World) -> None:
    with pytest.raises(InvalidArgument):
        world.leases.create("default", "bad id")
    with pytest.raises(InvalidArgument):
        world.leases.create("default", labels={LABEL_GC_EXPIRE: "tomorrow"})
    with pytest.raises(InvalidArgument):
        world.leases.create("default", ttl=-1)
    world.leases.create("default", "x")
    with pytest.raises(AlreadyExists):
        world.leases.create("default", "x")
    with pytest.raises(InvalidArgument):
        world.leases.add_resource("default", "x", "blobs", "k")
    with pytest.raises(NotFound):
        world.leases.add_resource("default", "nope", "content", "k")
    with pytest.raises(NotFound):
        world.leases.delete("other", "x")  # leases are per namespace
    world.leases.create("default", "y", {"team": "a"})
    assert [lease.id for lease in world.leases.list("default", ["labels.team==a"])] == ["y"]
    assert [lease.id for lease in world.leases.list("default", ["id==x", "id==y"])] == ["x", "y"]
    assert world.leases.list("other") == []


def test_rfc3339_round_trip() -> None:
    ts = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert format_rfc3339(ts) == "2026-01-02T03:04:05Z"
    assert parse_rfc3339("2026-01-02T03:04:05Z") == ts
    assert parse_rfc3339("2026-01-02T04:04:05+01:00") == ts
    assert parse_rfc3339("2026-01-02T03:04:05.123456789Z").microsecond == 123456
    with pytest.raises(InvalidArgument):
        parse_rfc3339("2026-01-02 03:04")


# ---------------------------------------------------------------------------------------------------
# snapshots and containers
# ---------------------------------------------------------------------------------------------------


def test_snapshots_reachable_from_containers_and_content_are_kept_and_the_rest_removed_leaves_first(
        world: World) -> None:
    world.snapshot("default", "l1")
    world.snapshot("default", "l2", "l1")
    world.snapshot("default", "c1-rootfs", "l2", active=True)
    world.container("default", "c1", "c1-rootfs")
    # an unpacked image's chain, kept by the config blob's label
    world.snapshot("default", "u1")
    top = world.snapshot("default", "u2", "u1")
    config = world.put("default", b"config u", {"containerd.io/gc.ref.snapshot.native": "u2"})
    world.image("default", "img-u", config)
    # an abandoned chain of three
    x = [world.snapshot("default", "x1"), world.snapshot("default", "x2", "x1"),
         world.snapshot("default", "x3", "x2", active=True)]
    res = world.collect()
    assert res.errors == []
    assert sorted(res.removed_snapshots) == [("native", "x1"), ("native", "x2"), ("native", "x3")]
    assert world.snapshot_records("default") == {"l1", "l2", "c1-rootfs", "u1", "u2"}
    assert not set(x) & world.backend_snapshots()
    assert top in world.backend_snapshots()
    # children went before their parents (the backend refuses otherwise)
    removed = [k for kind, k in res.backend if kind == "snapshot"]
    assert removed == [f"native/{k}" for k in reversed(x)]

    world.containers.delete("default", "c1")
    world.images.delete("default", "img-u")
    res = world.collect()
    assert res.errors == []
    assert world.snapshot_records("default") == set()
    assert world.backend_snapshots() == set()


def test_snapshot_lease_resource(world: World) -> None:
    world.snapshot("default", "base")
    world.snapshot("default", "work", "base", active=True)
    world.leases.create("default", "unpack")
    world.leases.add_resource("default", "unpack", "snapshots/native", "work")
    assert world.collect().removed_snapshots == []
    world.leases.delete_resource("default", "unpack", "snapshots/native", "work")
    assert sorted(world.collect().removed_snapshots) == [("native", "base"), ("native", "work")]


def test_orphans_in_the_backends_are_removed_after_the_grace_period(world: World) -> None:
    data = b"written to the backend without a record"
    w = world.backend.writer("orphan-ref", len(data), digest_of(data))
    w.write(data)
    w.commit(len(data), digest_of(data))
    world.native.prepare("orphan-snap", "")
    world.put("default", b"recorded", {"containerd.io/gc.root": "1"})
    world.snapshot("default", "kept", labels={"containerd.io/gc.root": "1"})
    res = world.collect(orphan_grace=300)  # too young to touch
    assert digest_of(data) in world.blobs() and "orphan-snap" in world.backend_snapshots()
    res = world.collect(orphan_grace=0)
    assert res.errors == []
    assert digest_of(data) in res.removed_content and digest_of(data) not in world.blobs()
    assert ("native", "orphan-snap") in res.removed_snapshots
    assert world.backend_snapshots() == {f"default/{world.seq}/kept"}
    assert len(world.blobs()) == 1


def test_one_failure_does_not_stop_the_collection(world: World) -> None:
    pinned = world.put("default", b"cannot be removed")
    others = [world.put("default", f"removable {i}".encode()) for i in range(3)]
    world.db.conn.execute(
        f"CREATE TRIGGER test_pin BEFORE DELETE ON content WHEN old.digest = '{pinned}' "
        "BEGIN SELECT RAISE(ABORT, 'pinned by the test'); END")
    # a backend snapshot whose child (unrecorded, too young to be an orphan) stops its removal
    parent = world.snapshot("default", "p")
    world.native.prepare("young-child", parent)
    res = world.collect(orphan_grace=300)
    assert set(res.removed_content) == set(others)
    assert any("pinned by the test" in e for e in res.errors)
    assert any(parent in e for e in res.errors)
    assert world.records("default") == {pinned}
    assert world.snapshot_records("default") == set()  # the record went; the backend kept it


def test_gc_works_before_other_tables_exist(tmp_path: Path) -> None:
    db = MetadataDB(tmp_path / "meta.db")
    try:
        db.conn.execute("DROP TABLE IF EXISTS content")
        LeaseManager(db).create("default", "l", ttl=1)
        res = collect(db, None, {}, now=now_ns() + HOUR)
        assert res.removed_leases == [("default", "l")]
        assert res.errors == []
    finally:
        db.close()


def test_sweep_is_one_transaction(world: World) -> None:
    """A reader that started before the collection sees the old state; a collection that fails halfway
    leaves nothing half-removed (the delete statements run in one transaction)."""
    for i in range(5):
        world.put("default", f"blob {i}".encode())
    reader = sqlite3.connect(world.db.path)
    try:
        reader.execute("BEGIN")
        (before,) = reader.execute("SELECT COUNT(*) FROM content").fetchone()
        world.collect()
        (during,) = reader.execute("SELECT COUNT(*) FROM content").fetchone()
        reader.execute("COMMIT")
        (after,) = reader.execute("SELECT COUNT(*) FROM content").fetchone()
    finally:
        reader.close()
    assert (before, during, after) == (5, 5, 0)


def test_blobs_whose_records_were_deleted_by_hand_are_freed(world: World) -> None:
    keep = world.put("default", b"kept", {"containerd.io/gc.root": "1"})
    gone = world.put("default", b"deleted by the user")
    world.content.delete("default", gone)
    res = world.collect()
    assert res.records == []  # no record was left to sweep...
    assert ("content", gone) in res.backend  # ...but the bytes went
    assert world.blobs() == {keep}


def test_dry_run_reports_the_same_and_removes_nothing(world: World) -> None:
    tree = image_tree(world, "default", "dry")
    world.image("default", "img", tree["index"])
    world.images.delete("default", "img")
    world.snapshot("default", "s1")
    world.snapshot("default", "s2", "s1")
    lease = world.leases.create("default", ttl=60)
    before = (world.records("default"), world.blobs(), world.backend_snapshots(), world.snapshot_records("default"))
    dry = world.collect(dry_run=True, now=now_ns() + HOUR)
    assert (world.records("default"), world.blobs(), world.backend_snapshots(),
            world.snapshot_records("default")) == before
    assert world.leases.get("default", lease.id)
    real = world.collect(now=now_ns() + HOUR)
    assert sorted(dry.records) == sorted(real.records)
    assert sorted(dry.backend) == sorted(real.backend)
    assert dry.removed_content == real.removed_content and len(real.removed_content) == 4
    assert world.blobs() == set() and world.backend_snapshots() == set()


def test_a_backend_snapshot_shared_by_two_namespaces_stays_while_one_records_it(world: World) -> None:
    bkey = world.snapshot("a", "layer", labels={"containerd.io/gc.root": "1"})
    with world.db.tx() as tx:  # namespace b linked the same committed layer (containerd.io/snapshot.ref)
        tx.execute("INSERT INTO snapshots VALUES('b', 'native', 'layer', ?, '', 'committed', '{}', 0, 0)",
                   (bkey,))
    res = world.collect()
    assert res.removed_snapshots == [("native", "layer")]  # b's record: nothing references it
    assert bkey in world.backend_snapshots()  # a still records it
    world.db.conn.execute("UPDATE snapshots SET labels='{}' WHERE ns='a'")
    world.collect()
    assert world.backend_snapshots() == set()


def test_collect_refuses_to_run_inside_a_transaction(world: World) -> None:
    from pyctr.errdefs import FailedPrecondition

    blob = world.put("default", b"not yet")
    with pytest.raises(FailedPrecondition, match="inside a metadata transaction"), world.db.tx():
        world.collect()
    assert blob in world.blobs()
