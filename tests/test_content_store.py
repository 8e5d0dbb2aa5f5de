"""The local content store and its namespaced view: ingest, resume from a checkpoint, verification,
atomic commit, labels, walk with filters, delete, namespaces -- with both SHA-256 implementations."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from pyctr.errdefs import AlreadyExists, Conflict, DataLoss, FailedPrecondition, InvalidArgument, NotFound
from pyctr.metadata.content import NamespacedContentStore
from pyctr.metadata.db import MetadataDB
from pyctr.plugins.content.local.store import LocalStore
from pyctr.testsuite.content import content_store_suite

from tests.conftest import Speedups


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def impl(speedups: Speedups) -> ModuleType:
    return speedups.load("digest")


@pytest.fixture
def store(tmp_path: Path, impl: ModuleType) -> LocalStore:
    return LocalStore(tmp_path / "content", digest_impl=impl)


@pytest.fixture
def ns_store(tmp_path: Path, store: LocalStore) -> Iterator[NamespacedContentStore]:
    db = MetadataDB(tmp_path / "meta.db")
    try:
        yield NamespacedContentStore(db, store)
    finally:
        db.close()


def leftovers(store: LocalStore) -> tuple[list[str], list[str]]:
    """(blob names, ingest entries) on disk."""
    return sorted(os.listdir(store.blobs)), sorted(os.listdir(store.ingest_root))


# -- backend -------------------------------------------------------------------------------------------


def test_ingest_commit_read(store: LocalStore) -> None:
    data = os.urandom(100_000)
    w = store.writer("r1", total=len(data), expected=sha(data))
    assert w.write(data[:1000]) == 1000
    assert w.write(memoryview(data)[1000:]) == len(data) - 1000
    assert w.offset == len(data) and w.digest() == sha(data)
    st = w.status()
    assert (st.ref, st.offset, st.total, st.expected) == ("r1", len(data), len(data), sha(data))
    info = w.commit()
    assert (info.digest, info.size) == (sha(data), len(data))
    assert leftovers(store) == ([sha(data)[7:]], [])
    mode = os.stat(store.path(sha(data))).st_mode
    assert stat.S_IMODE(mode) == 0o444
    assert store.info(sha(data)).size == len(data)
    assert store.read(sha(data)) == data
    assert store.read(sha(data), 99_990) == data[99_990:]
    assert store.read(sha(data), 10, 20) == data[10:30]
    assert store.read(sha(data), 200_000) == b""
    with store.open(sha(data)) as f:
        assert f.read() == data
    assert [i.digest for i in store.walk()] == [sha(data)]
    assert store.exists(sha(data))
    with pytest.raises(FailedPrecondition):
        w.write(b"more")  # committed writers are closed


def test_commit_of_existing_blob_is_already_exists_and_leaves_no_ingest(store: LocalStore) -> None:
    w = store.writer("a")
    w.write(b"same")
    w.commit()
    with pytest.raises(AlreadyExists):
        store.writer("b", expected=sha(b"same"))
    w = store.writer("c")
    w.write(b"same")
    with pytest.raises(AlreadyExists):
        w.commit()
    assert leftovers(store) == ([sha(b"same")[7:]], [])


def test_resume_reuses_the_hash_state(store: LocalStore, speedups: Speedups) -> None:
    data = os.urandom(3 << 20)
    w = store.writer("big", total=len(data))
    w.write(data[: 2 << 20])
    w.close()
    st = store.status("big")
    assert (st.offset, st.total) == (2 << 20, len(data))
    w = store.writer("big")
    assert w.offset == 2 << 20
    # the compiled hasher restores the checkpoint and reads nothing back; the twin re-hashes
    assert w.rehashed == (0 if speedups.name == "c" else 2 << 20)
    w.write(data[2 << 20:])
    assert w.commit().digest == sha(data)
    assert leftovers(store)[1] == []


def test_resume_does_not_reread_the_prefix(store: LocalStore, speedups: Speedups) -> None:
    """Proof that the checkpoint, not the file, supplies the prefix's hash: scribble over the prefix on
    disk; the compiled path still computes the digest of what was written through the writer."""
    if speedups.name != "c":
        pytest.skip("the pure-Python twin re-hashes the prefix by design")
    data = os.urandom(1 << 20)
    w = store.writer("r")
    w.write(data[:500_000])
    w.close()
    with open(store.ingest_dir("r") / "data", "r+b") as f:
        f.write(b"\0" * 490_000)  # all but the last 10 kB (the checkpoint checks the last 4 KiB)
    w = store.writer("r")
    assert w.rehashed == 0
    w.write(data[500_000:])
    assert w.digest() == sha(data)


def test_corrupt_or_stale_checkpoint_falls_back_to_rehashing(store: LocalStore, speedups: Speedups) -> None:
    data = os.urandom(600_000)
    w = store.writer("r")
    w.write(data[:400_000])
    w.close()
    d = store.ingest_dir("r")
    # stale: bytes reached the file after the last checkpoint (a crash between write and checkpoint)
    with open(d / "data", "ab") as f:
        f.write(data[400_000:500_000])
    w = store.writer("r")
    assert w.offset == 500_000
    assert w.rehashed == (100_000 if speedups.name == "c" else 500_000)
    w.close()
    # corrupt: garbage in the checkpoint
    (d / "hashstate").write_bytes(b"PYSHA256 garbage")
    w = store.writer("r")
    assert w.rehashed == 500_000
    w.close()
    # mismatched: the checkpoint of other bytes, or of a replaced data file
    good = (d / "hashstate").read_bytes()
    with open(d / "data", "r+b") as f:
        f.seek(499_000)
        f.write(b"\xff" * 1000)  # the tail the checkpoint covers changed
    w = store.writer("r")
    assert w.rehashed == 500_000
    assert w.digest() == sha(data[:499_000] + b"\xff" * 1000)
    w.truncate(499_000)
    w.write(data[499_000:500_000])
    w.close()
    good = (d / "hashstate").read_bytes()
    os.rename(d / "data", d / "old")
    (d / "data").write_bytes((d / "old").read_bytes())  # same bytes, another inode
    os.unlink(d / "old")
    w = store.writer("r")
    assert w.rehashed == 500_000
    w.close()
    assert (d / "hashstate").read_bytes() != good
    # a checkpoint covering more than the file holds (the file lost its tail)
    os.truncate(d / "data", 300_000)
    w = store.writer("r")
    assert (w.offset, w.rehashed) == (300_000, 300_000)
    w.write(data[300_000:])
    assert w.commit(expected=sha(data)).digest == sha(data)


def test_periodic_checkpoints(tmp_path: Path, impl: ModuleType, speedups: Speedups) -> None:
    store = LocalStore(tmp_path / "c", checkpoint_bytes=100_000, digest_impl=impl)
    data = os.urandom(250_000)
    src = tmp_path / "src"
    src.write_bytes(data)
    w = store.writer("r")
    with open(src, "rb") as f:
        assert w.copy_from(f) == len(data)
    # checkpoints were written at 100k and 200k without closing: a crashed writer (never closed)
    # loses only the tail
    blob = (store.ingest_dir("r") / "hashstate").read_bytes()
    assert blob.endswith(impl.Sha256(data[:200_000]).state())
    assert w.commit().digest == sha(data)


def test_copy_from_with_limit(store: LocalStore, tmp_path: Path) -> None:
    data = os.urandom(10_000)
    src = tmp_path / "src"
    src.write_bytes(data)
    fd = os.open(src, os.O_RDONLY)
    try:
        w = store.writer("r")
        assert w.copy_from(fd, 4000) == 4000
        assert w.copy_from(fd) == 6000
    finally:
        os.close(fd)
    assert w.commit(size=10_000, expected=sha(data)).digest == sha(data)


def test_truncate(store: LocalStore) -> None:
    w = store.writer("r")
    w.write(b"hello world")
    w.truncate(5)
    assert w.offset == 5 and w.digest() == sha(b"hello")
    w.write(b"!")
    assert w.digest() == sha(b"hello!")
    w.truncate(0)
    assert w.digest() == sha(b"")
    with pytest.raises(InvalidArgument):
        w.truncate(1)
    w.write(b"x")
    assert w.commit().digest == sha(b"x")


@pytest.mark.parametrize("case", ["digest", "size", "algorithm", "malformed", "size-from-open"])
def test_bad_commit_leaves_nothing(store: LocalStore, case: str) -> None:
    data = b"payload"
    total = 99 if case == "size-from-open" else -1
    w = store.writer("r", total=total)
    w.write(data)
    err: type[Exception]
    if case == "digest":
        err, kw = DataLoss, {"expected": sha(b"other")}
    elif case == "size":
        err, kw = DataLoss, {"size": 3}
    elif case == "algorithm":
        err, kw = InvalidArgument, {"expected": "sha512:" + "a" * 128}
    elif case == "malformed":
        err, kw = InvalidArgument, {"expected": "sha256:XYZ"}
    else:
        err, kw = DataLoss, {}
    with pytest.raises(err):
        w.commit(**kw)  # type: ignore[arg-type]
    assert leftovers(store) == ([], [])
    with pytest.raises(NotFound):
        store.status("r")


@pytest.mark.parametrize("expected", ["sha512:" + "a" * 128, "md5:abc", "sha256:short", "nonsense",
                                      "SHA256:" + "a" * 64])
def test_bad_expected_digest_at_open_creates_nothing(store: LocalStore, expected: str) -> None:
    with pytest.raises(InvalidArgument) as ei:
        store.writer("r", expected=expected)
    if expected.startswith(("sha512", "md5")):
        assert "unsupported digest algorithm" in str(ei.value)
    assert leftovers(store) == ([], [])


def test_empty_ref_is_invalid(store: LocalStore) -> None:
    with pytest.raises(InvalidArgument):
        store.writer("")


def test_second_writer_in_process_is_refused(store: LocalStore) -> None:
    w = store.writer("r")
    w.write(b"abc")
    with pytest.raises(Conflict, match="locked"):
        store.writer("r")
    with pytest.raises(Conflict):
        store.abort("r")
    assert store.is_active("r")
    w.close()
    assert not store.is_active("r")
    w2 = store.writer("r")
    assert w2.offset == 3
    w2.abort()
    assert leftovers(store) == ([], [])


def test_writer_in_another_process_is_refused(store: LocalStore, speedups: Speedups) -> None:
    script = textwrap.dedent(f"""
        import sys
        from pyctr.plugins.content.local.store import LocalStore
        w = LocalStore({str(store.root)!r}).writer("shared")
        w.write(b"from the child")
        print("ready", flush=True)
        sys.stdin.readline()
        w.close()
    """)
    with subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True, env=speedups.env) as child:
        try:
            assert child.stdout is not None and child.stdin is not None
            assert child.stdout.readline().strip() == "ready"
            before = leftovers(store)
            with pytest.raises(Conflict, match="another writer"):
                store.writer("shared")
            with pytest.raises(Conflict):
                store.abort("shared")
            assert leftovers(store) == before  # the refused attempt added nothing
            child.stdin.write("\n")
            child.stdin.flush()
            assert child.wait(timeout=30) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    w = store.writer("shared")  # the child's ingest resumes here
    assert w.offset == len(b"from the child")
    w.write(b"!")
    assert w.commit().digest == sha(b"from the child!")


def test_resume_with_different_total_or_expected_is_refused(store: LocalStore) -> None:
    w = store.writer("r", total=10, expected=sha(b"0123456789"))
    w.write(b"01234")
    w.close()
    with pytest.raises(FailedPrecondition, match="total"):
        store.writer("r", total=11)
    with pytest.raises(FailedPrecondition, match="abort it first"):
        store.writer("r", expected=sha(b"x"))
    w = store.writer("r", total=10)
    w.write(b"56789")
    assert w.commit().digest == sha(b"0123456789")


def test_statuses_and_abort(store: LocalStore) -> None:
    for ref in ("b", "a", "ns/c"):
        w = store.writer(ref, total=5)
        w.write(b"12")
        w.close()
    assert [s.ref for s in store.list_statuses()] == ["a", "b", "ns/c"]
    assert [s.ref for s in store.list_statuses("ns/")] == ["ns/c"]
    st = store.status("a")
    assert (st.offset, st.total, st.expected) == (2, 5, "")
    assert st.started_at > 0 and st.updated_at >= st.started_at
    store.abort("a")
    with pytest.raises(NotFound):
        store.abort("a")
    with pytest.raises(NotFound):
        store.status("a")
    assert [s.ref for s in store.list_statuses()] == ["b", "ns/c"]


def test_delete(store: LocalStore) -> None:
    w = store.writer("r")
    w.write(b"x")
    d = w.commit().digest
    store.delete(d)
    assert not store.exists(d)
    with pytest.raises(NotFound):
        store.delete(d)
    with pytest.raises(NotFound):
        store.info(d)
    with pytest.raises(NotFound):
        store.read(d)
    with pytest.raises(InvalidArgument):
        store.info("sha256:nothex")


# -- namespaced ----------------------------------------------------------------------------------------


def ingest(cs: NamespacedContentStore, ns: str, data: bytes, ref: str = "r", **labels: str) -> str:
    w = cs.writer(ns, ref)
    w.write(data)
    return w.commit(labels=labels).digest


def test_namespaces_isolate(ns_store: NamespacedContentStore, store: LocalStore) -> None:
    d = ingest(ns_store, "default", b"secret")
    assert ns_store.exists("default", d)
    assert not ns_store.exists("other", d)
    assert [i.digest for i in ns_store.walk("default")] == [d]
    assert ns_store.walk("other") == []
    for call in (ns_store.info, ns_store.read, ns_store.open, ns_store.delete, ns_store.path):
        with pytest.raises(NotFound):
            call("other", d)
    with pytest.raises(NotFound):
        ns_store.update("other", d, {"a": "b"})
    assert ns_store.read("default", d, 1, 3) == b"ecr"
    # the namespace was created on first write
    assert [r[0] for r in ns_store.db.query("SELECT name FROM namespaces")] == ["default"]


def test_same_ref_in_two_namespaces(ns_store: NamespacedContentStore, store: LocalStore) -> None:
    w1 = ns_store.writer("a", "layer")
    w2 = ns_store.writer("b", "layer")  # no conflict: backend refs are a/layer and b/layer
    w1.write(b"one")
    w2.write(b"two")
    assert [s.ref for s in ns_store.list_statuses("a")] == ["layer"]
    assert ns_store.status("b", "layer").offset == 3
    assert w1.commit().digest == sha(b"one")
    assert w2.commit().digest == sha(b"two")
    assert ns_store.walk("a")[0].digest == sha(b"one")
    assert ns_store.db.query("SELECT * FROM ingests") == []


def test_commit_in_a_second_namespace_adds_the_record(ns_store: NamespacedContentStore,
                                                     store: LocalStore) -> None:
    d = ingest(ns_store, "a", b"shared bytes")
    w = ns_store.writer("b", "r")
    w.write(b"shared bytes")
    info = w.commit(labels={"k": "v"})
    assert (info.digest, info.labels) == (d, {"k": "v"})
    assert ns_store.info("a", d).labels == {}
    assert leftovers(store) == ([d[7:]], [])
    # committing it again in the same namespace: AlreadyExists, and the ingest is gone
    w = ns_store.writer("b", "again")
    w.write(b"shared bytes")
    with pytest.raises(AlreadyExists):
        w.commit()
    assert leftovers(store) == ([d[7:]], [])
    assert ns_store.db.query("SELECT * FROM ingests") == []


def test_shared_policy_links_existing_blob(ns_store: NamespacedContentStore) -> None:
    d = ingest(ns_store, "a", b"blob")
    with pytest.raises(AlreadyExists):
        ns_store.writer("b", "r", total=4, expected=d)
    assert ns_store.exists("b", d)
    with pytest.raises(AlreadyExists):
        ns_store.writer("b", "r", expected=d)
    with pytest.raises(DataLoss):
        ns_store.writer("c", "r", total=5, expected=d)
    assert not ns_store.exists("c", d)


def test_namespaced_mismatch_leaves_nothing(ns_store: NamespacedContentStore, store: LocalStore) -> None:
    w = ns_store.writer("default", "bad", expected=sha(b"something else"))
    w.write(b"payload")
    assert [r["ref"] for r in ns_store.db.query("SELECT ref FROM ingests")] == ["bad"]
    with pytest.raises(DataLoss) as ei:
        w.commit()
    assert "'bad'" in str(ei.value) and "default/bad" not in str(ei.value)
    assert leftovers(store) == ([], [])
    assert ns_store.db.query("SELECT * FROM ingests") == []
    assert ns_store.walk("default") == []
    w = ns_store.writer("default", "bad2")
    w.write(b"payload")
    with pytest.raises(DataLoss):
        w.commit(size=1)
    with pytest.raises(InvalidArgument):
        ns_store.writer("default", "bad3", expected="sha384:" + "0" * 96)
    assert leftovers(store) == ([], [])
    assert ns_store.db.query("SELECT * FROM ingests") == []


def test_namespaced_abort_and_conflict(ns_store: NamespacedContentStore, store: LocalStore) -> None:
    w = ns_store.writer("default", "r")
    w.write(b"abc")
    with pytest.raises(Conflict) as ei:
        ns_store.writer("default", "r")
    assert "default/r" not in str(ei.value)
    w.close()
    ns_store.abort("default", "r")
    with pytest.raises(NotFound):
        ns_store.abort("default", "r")
    assert leftovers(store) == ([], [])
    assert ns_store.db.query("SELECT * FROM ingests") == []


def test_labels_update_semantics(ns_store: NamespacedContentStore) -> None:
    d = ingest(ns_store, "default", b"x", a="1", b="2")
    assert ns_store.info("default", d).labels == {"a": "1", "b": "2"}
    # field paths: set one, remove one (empty value), leave the rest
    info = ns_store.update("default", d, {"c": "3", "a": ""}, ["labels.c", "labels.a"])
    assert info.labels == {"b": "2", "c": "3"}
    # no field paths: replace them all; empty values are dropped
    info = ns_store.update("default", d, {"z": "26", "y": ""})
    assert info.labels == {"z": "26"}
    assert ns_store.info("default", d).labels == {"z": "26"}
    assert ns_store.info("default", d).updated_at >= ns_store.info("default", d).created_at
    with pytest.raises(InvalidArgument):
        ns_store.update("default", d, {}, ["size"])
    with pytest.raises(InvalidArgument):
        ns_store.update("default", d, {"k": "v" * 5000}, ["labels.k"])


def test_walk_filters(ns_store: NamespacedContentStore) -> None:
    d1 = ingest(ns_store, "default", b"one", "r1", kind="layer", **{"a b": "x"})
    d2 = ingest(ns_store, "default", b"three", "r2", kind="config")
    d3 = ingest(ns_store, "default", b"5", "r3")

    def walk(*f: str) -> set[str]:
        return {i.digest for i in ns_store.walk("default", list(f))}

    assert walk() == {d1, d2, d3}
    assert walk("labels.kind") == {d1, d2}
    assert walk("labels.kind==layer") == {d1}
    assert walk("labels.kind!=layer") == {d2, d3}
    assert walk('labels."a b"==x') == {d1}
    assert walk("labels.kind~=^c") == {d2}
    assert walk("size==5") == {d2}
    assert walk(f"digest=={d3}") == {d3}
    assert walk("labels.kind==layer", "size==1") == {d1, d3}
    assert walk("labels.kind==layer,size==1") == set()
    with pytest.raises(InvalidArgument, match="position"):
        ns_store.walk("default", ["labels.kind=="])


def test_delete_removes_only_the_record(ns_store: NamespacedContentStore, store: LocalStore) -> None:
    kinds: list[str] = []
    ns_store.db.add_mutation_hook(kinds.append)
    d = ingest(ns_store, "a", b"data")
    ns_store.link("b", d)
    ns_store.delete("a", d)
    assert "delete" in kinds
    assert not ns_store.exists("a", d)
    assert ns_store.exists("b", d)
    assert store.exists(d)  # the bytes wait for the garbage collector
    with pytest.raises(NotFound):
        ns_store.delete("a", d)


def test_events_are_published_after_commit(ns_store: NamespacedContentStore) -> None:
    events: list[tuple[str, str, dict[str, object]]] = []
    ns_store.publish = lambda ns, topic, payload: events.append((ns, topic, payload))
    d = ingest(ns_store, "default", b"ev")
    ns_store.delete("default", d)
    assert events == [("default", "/content/create", {"digest": d, "size": 2}),
                      ("default", "/content/delete", {"digest": d})]


def test_invalid_namespace(ns_store: NamespacedContentStore) -> None:
    with pytest.raises(InvalidArgument):
        ns_store.writer("bad ns!", "r")
    with pytest.raises(InvalidArgument):
        ns_store.walk("")


def test_leftover_trash_is_cleaned_on_open(tmp_path: Path, impl: ModuleType) -> None:
    store = LocalStore(tmp_path / "c", digest_impl=impl)
    trash = store.ingest_root / ".trash-deadbeef"
    (trash / "sub").mkdir(parents=True)
    (trash / "sub" / "data").write_bytes(b"x")
    LocalStore(tmp_path / "c", digest_impl=impl)
    assert not trash.exists()


# -- the conformance suite, run against the local store with each hasher --------------------------

def _local_c(root: Path) -> LocalStore:
    import pytest as _pytest

    try:
        from pyctr._speedups import _digest_c
    except ImportError:
        if os.environ.get("PYCTR_REQUIRE_EXTENSIONS"):
            raise
        _pytest.skip("the compiled digest module is not built")
    return LocalStore(root, digest_impl=_digest_c)


def _local_py(root: Path) -> LocalStore:
    from pyctr._speedups import _digest_py

    return LocalStore(root, digest_impl=_digest_py)


TestLocalStoreConformanceC = content_store_suite(_local_c, name="local-c")
TestLocalStoreConformancePy = content_store_suite(_local_py, name="local-py")
