"""pyctr.metadata.snapshots: per-namespace snapshot records over a real backend (native: no mounts
needed, so these run without root privileges beyond file ownership)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyctr.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pyctr.metadata.db import MetadataDB
from pyctr.metadata.snapshots import NamespacedSnapshotter
from pyctr.plugins.snapshots.native import NativeSnapshotter
from pyctr.snapshots import LABEL_SNAPSHOT_REF, Info, Kind

REF = LABEL_SNAPSHOT_REF


class Env:
    def __init__(self, tmp: Path) -> None:
        self.db = MetadataDB(tmp / "meta.db")
        self.backend = NativeSnapshotter(tmp / "native")
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.sn = NamespacedSnapshotter(self.db, "native", self.backend,
                                        publish=lambda ns, topic, p: self.events.append((ns, topic, p)))

    def backend_names(self) -> list[str]:
        return sorted(i.name for i in self.backend.walk())


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.backend.close()
        e.db.close()


def _layer(env: Env, ns: str, chain: str, parent: str = "", labels: dict[str, str] | None = None,
           commit_labels: dict[str, str] | None = None) -> None:
    """Unpack-style: prepare with snapshot.ref=<chain>, write a file, commit as <chain>."""
    key = f"extract-{ns}-{chain}"
    lbls = {REF: chain, **(labels or {})}
    mounts = env.sn.prepare(ns, key, parent, lbls)
    Path(mounts[0].source, chain).write_text(chain)
    env.sn.commit(ns, chain, key, lbls if commit_labels is None else commit_labels)


def test_namespaces_are_separate(env: Env) -> None:
    env.sn.prepare("ns1", "k")
    env.sn.prepare("ns2", "k", labels={"x": "2"})
    assert env.backend_names() == ["ns1/1/k", "ns2/2/k"]
    assert env.sn.backend_key("ns2", "k") == "ns2/2/k"
    assert env.sn.stat("ns2", "k").labels == {"x": "2"}
    assert [i.name for i in env.sn.walk("ns3")] == []
    env.sn.commit("ns1", "K", "k")
    with pytest.raises(NotFound):
        env.sn.prepare("ns2", "child", "K")  # a parent from another namespace is not visible
    with pytest.raises(NotFound):
        env.sn.stat("ns2", "K")


def test_only_inherited_labels_reach_the_backend(env: Env) -> None:
    labels = {"containerd.io/snapshot/a": "1", REF: "c", "containerd.io/gc.root": "x", "mine": "y"}
    env.sn.prepare("ns", "k", labels=labels)
    assert env.sn.stat("ns", "k").labels == labels
    assert env.backend.stat("ns/1/k").labels == {"containerd.io/snapshot/a": "1", REF: "c"}
    info = env.sn.update("ns", Info(Kind.ACTIVE, "k", labels={"containerd.io/snapshot/b": "2", "other": "z"}),
                         ["labels.containerd.io/snapshot/b", "labels.other", "labels.mine"])
    assert info.labels == {"containerd.io/snapshot/a": "1", REF: "c", "containerd.io/gc.root": "x",
                           "containerd.io/snapshot/b": "2", "other": "z"}
    assert env.backend.stat("ns/1/k").labels == {"containerd.io/snapshot/a": "1", REF: "c",
                                                 "containerd.io/snapshot/b": "2"}
    with pytest.raises(InvalidArgument):
        env.sn.update("ns", Info(Kind.ACTIVE, "k"), ["kind"])


def test_kinds_parents_and_errors(env: Env) -> None:
    env.sn.prepare("ns", "a")
    with pytest.raises(AlreadyExists):
        env.sn.prepare("ns", "a")
    with pytest.raises(InvalidArgument, match="not a committed"):
        env.sn.view("ns", "v", "a")
    with pytest.raises(NotFound):
        env.sn.prepare("ns", "b", "missing")
    env.sn.commit("ns", "A", "a", {"l": "1"})
    with pytest.raises(NotFound):
        env.sn.stat("ns", "a")
    assert env.sn.stat("ns", "A").labels == {"l": "1"}
    env.sn.view("ns", "v", "A")
    with pytest.raises(FailedPrecondition):
        env.sn.commit("ns", "V", "v")
    with pytest.raises(FailedPrecondition):
        env.sn.mounts("ns", "A")
    assert env.sn.mounts("ns", "v")[0].options == ["ro", "rbind"]
    assert {i.name for i in env.sn.walk("ns", "parent==A")} == {"v"}
    assert {i.name for i in env.sn.walk("ns", ["kind==committed", "kind==view"])} == {"A", "v"}
    assert env.sn.usage("ns", "A").inodes >= 1


def test_remove(env: Env) -> None:
    env.sn.prepare("ns", "a")
    env.sn.commit("ns", "A", "a")
    env.sn.prepare("ns", "b", "A")
    with pytest.raises(FailedPrecondition, match="child"):
        env.sn.remove("ns", "A")
    env.sn.remove("ns", "b")
    env.sn.remove("ns", "A")
    assert env.backend_names() == []  # nothing else named them: gone at once
    with pytest.raises(NotFound):
        env.sn.remove("ns", "A")
    assert [t for _, t, _ in env.events].count("/snapshot/remove") == 2


def test_events_only_for_committed_changes(env: Env) -> None:
    env.sn.prepare("ns", "a", labels={"x": "1"})
    with pytest.raises(AlreadyExists):
        env.sn.prepare("ns", "a")
    env.sn.commit("ns", "A", "a")
    env.sn.prepare("ns", "b", "A")
    env.sn.remove("ns", "b")
    assert env.events == [
        ("ns", "/snapshot/prepare", {"key": "a", "parent": "", "snapshotter": "native"}),
        ("ns", "/snapshot/commit", {"key": "a", "name": "A", "snapshotter": "native"}),
        ("ns", "/snapshot/prepare", {"key": "b", "parent": "A", "snapshotter": "native"}),
        ("ns", "/snapshot/remove", {"key": "b", "snapshotter": "native"}),
    ]


def test_backend_failure_leaves_no_record(env: Env) -> None:
    def broken(key: str, parent: str = "", labels: Any = None) -> Any:
        raise OSError(28, "No space left on device")

    env.backend.prepare = broken  # type: ignore[method-assign]
    with pytest.raises(OSError):
        env.sn.prepare("ns", "a")
    assert list(env.sn.walk("ns")) == []
    assert env.events == []


def test_chain_id_sharing_across_namespaces(env: Env) -> None:
    _layer(env, "ns1", "sha256:c1")
    _layer(env, "ns1", "sha256:c2", "sha256:c1")
    before = env.backend_names()
    # ns2 unpacks the same image: each layer is found, linked in, and reported as AlreadyExists
    with pytest.raises(AlreadyExists, match="sha256:c1"):
        env.sn.prepare("ns2", "extract-x", "", {REF: "sha256:c1"})
    with pytest.raises(AlreadyExists, match="sha256:c2"):
        env.sn.prepare("ns2", "extract-y", "sha256:c1", {REF: "sha256:c2"})
    assert env.backend_names() == before  # nothing new in the backend
    infos = {i.name: i for i in env.sn.walk("ns2")}
    assert set(infos) == {"sha256:c1", "sha256:c2"}
    assert infos["sha256:c2"].parent == "sha256:c1" and infos["sha256:c2"].kind == Kind.COMMITTED
    assert env.sn.backend_key("ns2", "sha256:c2") == env.sn.backend_key("ns1", "sha256:c2")
    # the same chain ID again in ns2: already there
    with pytest.raises(AlreadyExists):
        env.sn.prepare("ns2", "extract-z", "", {REF: "sha256:c1"})
    # a different parent is a different chain: a fresh snapshot
    env.sn.prepare("ns2", "other", "", {REF: "sha256:c3"})
    # ns2 can build on the shared layers, and sees their files
    mounts = env.sn.view("ns2", "v", "sha256:c2")
    assert sorted(p.name for p in Path(mounts[0].source).iterdir()) == ["sha256:c1", "sha256:c2"]
    env.sn.remove("ns2", "v")
    # removing ns1's records keeps what ns2 still names
    env.sn.remove("ns1", "sha256:c2")
    env.sn.remove("ns1", "sha256:c1")
    assert len(env.backend_names()) == 3
    env.sn.remove("ns2", "sha256:c2")
    env.sn.remove("ns2", "sha256:c1")
    env.sn.remove("ns2", "other")
    assert env.backend_names() == []


def test_sharing_without_labels_on_commit(env: Env) -> None:
    """A committed snapshot named after the chain ID is found even when commit carried no labels."""
    _layer(env, "ns1", "sha256:c1", commit_labels={})
    with pytest.raises(AlreadyExists):
        env.sn.prepare("ns2", "extract", "", {REF: "sha256:c1"})
    assert env.sn.stat("ns2", "sha256:c1").kind == Kind.COMMITTED


def test_no_sharing_of_active_snapshots(env: Env) -> None:
    env.sn.prepare("ns1", "extract", "", {REF: "sha256:c1"})  # not committed yet
    env.sn.prepare("ns2", "extract", "", {REF: "sha256:c1"})  # so ns2 makes its own
    assert env.backend_names() == ["ns1/1/extract", "ns2/2/extract"]


def test_leases_hold_snapshots(env: Env) -> None:
    from pyctr.metadata.leases import LeaseManager

    lm = LeaseManager(env.db)
    lm.create("ns", "unpack")
    env.sn.prepare("ns", "a", lease="unpack")
    assert [(r.type, r.key) for r in lm.list_resources("ns", "unpack")] == [("snapshots/native", "a")]
    env.sn.commit("ns", "A", "a", lease="unpack")
    assert [(r.type, r.key) for r in lm.list_resources("ns", "unpack")] == [("snapshots/native", "A")]
    with pytest.raises(NotFound):
        env.sn.prepare("ns", "b", lease="missing")
    assert [i.name for i in env.sn.walk("ns")] == ["A"]  # the failed prepare left nothing


def test_garbage_collection(env: Env) -> None:
    from pyctr.metadata.gc import collect

    env.sn.prepare("ns", "a", labels={"containerd.io/gc.root": "2026-01-01T00:00:00Z"})
    env.sn.commit("ns", "A", "a")  # no root: collectable
    env.sn.prepare("ns", "kept", "", {"containerd.io/gc.root": "x"})
    env.sn.prepare("ns", "child", "A", {"containerd.io/gc.root": "x"})  # keeps A through its parent
    collect(env.db, None, {"native": env.backend})
    assert {i.name for i in env.sn.walk("ns")} == {"A", "kept", "child"}
    env.sn.remove("ns", "child")
    res = collect(env.db, None, {"native": env.backend})
    assert {i.name for i in env.sn.walk("ns")} == {"kept"}
    assert ("native", "A") in res.removed_snapshots
    assert env.backend_names() == ["ns/3/kept"]  # seq 2 went to the commit of A


def test_namespace_with_snapshots_cannot_be_deleted(env: Env) -> None:
    from pyctr.metadata.namespaces import NamespaceStore

    env.sn.prepare("ns", "a")
    store = NamespaceStore(env.db)
    with pytest.raises(FailedPrecondition, match="snapshots"):
        store.delete("ns")
    env.sn.remove("ns", "a")
    store.delete("ns")
