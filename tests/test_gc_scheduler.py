"""The GC scheduler: collections on demand, after deletions, on its timer (so expired leases go on an
idle store), at close in one-shot use; and ``pyctr gc`` / collections at the end of a CLI command."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pyctr.errdefs import Internal
from pyctr.metadata.content import NamespacedContentStore
from pyctr.metadata.db import MetadataDB
from pyctr.metadata.gc import GCResult, collect
from pyctr.metadata.leases import LeaseManager
from pyctr.plugins.content.local.store import LocalStore
from pyctr.plugins.gc.scheduler.plugin import _CONFIG
from pyctr.plugins.gc.scheduler.scheduler import DEFAULTS, GCScheduler


class Store:
    def __init__(self, tmp_path: Path) -> None:
        self.db = MetadataDB(tmp_path / "meta.db")
        self.backend = LocalStore(tmp_path / "content")
        self.content = NamespacedContentStore(self.db, self.backend)
        self.leases = LeaseManager(self.db)
        self.schedulers: list[GCScheduler] = []

    def put(self, data: bytes, labels: dict[str, str] | None = None) -> str:
        dgst = "sha256:" + hashlib.sha256(data).hexdigest()
        w = self.content.writer("default", f"r-{dgst[7:15]}", total=len(data), expected=dgst)
        w.write(data)
        w.commit(len(data), dgst, labels=labels)
        return dgst

    def blobs(self) -> set[str]:
        return {i.digest for i in self.backend.walk()}

    def scheduler(self, **config: Any) -> GCScheduler:
        sched = GCScheduler(lambda: collect(self.db, self.backend, {}), config)
        self.db.add_mutation_hook(sched.mutated)
        self.schedulers.append(sched)
        return sched


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path)
    try:
        yield s
    finally:
        for sched in s.schedulers:
            sched.stop()
        s.db.close()


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_defaults_match_the_plugin_registration() -> None:
    assert DEFAULTS == _CONFIG


def test_collect_runs_now(store: Store) -> None:
    sched = store.scheduler()
    stray = store.put(b"stray")
    res = sched.collect()
    assert res.removed_content == [stray] and store.blobs() == set()
    assert sched.stats()["collections"] == 1 and not sched.running


def test_timer_removes_expired_leases_on_an_idle_store(store: Store) -> None:
    blob = store.put(b"held for a moment")
    lease = store.leases.create("default", ttl=0.5)
    store.leases.add_resource("default", lease.id, "content", blob)
    sched = store.scheduler(interval=0.2, startup_delay_ms=0)
    sched.start()
    assert sched.running
    assert wait_for(lambda: sched.collections >= 1)
    assert blob in store.blobs()  # still leased
    # nothing is deleted or scheduled from now on: only the timer can notice the expiry
    assert wait_for(lambda: blob not in store.blobs())
    assert store.leases.list("default") == []
    sched.stop()
    assert not sched.running


def test_deletion_threshold_triggers_a_collection(store: Store) -> None:
    blob = store.put(b"doomed")
    sched = store.scheduler(interval=0, deletion_threshold=1, startup_delay_ms=60_000)
    sched.start()
    store.content.delete("default", blob)
    assert wait_for(lambda: blob not in store.blobs(), timeout=5)


def test_deletions_mark_the_store_dirty_and_a_collection_follows(store: Store) -> None:
    blob = store.put(b"doomed too")
    sched = store.scheduler(interval=0, startup_delay_ms=60_000)  # deletion_threshold 0: no immediate run
    sched.start()
    time.sleep(0.1)
    assert sched.collections == 0
    store.content.delete("default", blob)
    st = sched.stats()
    assert st["dirty"] or st["collections"] == 1  # (a slow machine may already have collected)
    assert wait_for(lambda: blob not in store.blobs(), timeout=5)  # after the pause interval
    assert 0 < sched.pause_interval < 1


def test_updates_count_towards_the_mutation_threshold(store: Store) -> None:
    sched = store.scheduler(mutation_threshold=3)
    for _ in range(2):
        store.db.mutated("update")
    assert not sched.stats()["dirty"]
    store.db.mutated("update")
    assert sched.stats()["dirty"]


def test_schedule_and_wait(store: Store) -> None:
    blob = store.put(b"wait for me")
    store.content.delete("default", blob)
    sched = store.scheduler(interval=0, startup_delay_ms=60_000, schedule_delay_ms=50)
    sched.start()
    res = sched.schedule_and_wait(timeout=10)
    assert blob in res.removed_content or ("content", blob) in res.backend
    assert blob not in store.blobs()


def test_one_shot_use_collects_at_close(store: Store) -> None:
    blob = store.put(b"one shot")
    sched = store.scheduler()
    store.content.delete("default", blob)
    assert blob in store.blobs()  # no thread: nothing happens yet
    sched.close()
    assert blob not in store.blobs()


def test_collect_on_close_can_be_turned_off(store: Store) -> None:
    blob = store.put(b"stays")
    sched = store.scheduler(collect_on_close=False)
    store.content.delete("default", blob)
    sched.close()
    assert blob in store.blobs()


def test_a_failing_collection_is_reported_and_the_loop_goes_on(tmp_path: Path) -> None:
    calls: list[int] = []

    def flaky() -> GCResult:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database on fire")
        return GCResult()

    sched = GCScheduler(flaky, {"interval": 0, "startup_delay_ms": 60_000})
    sched.start()
    try:
        with pytest.raises(Internal, match="database on fire"):
            sched.schedule_and_wait(timeout=10)
        assert sched.schedule_and_wait(timeout=10).ok
        assert sched.failures == 1 and sched.collections == 1
    finally:
        sched.stop()


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="pause_threshold"):
        GCScheduler(GCResult, {"pause_threshold": 0})


# -- through the plugin and the CLI -----------------------------------------------------------------


def test_client_plugin_collects_on_close(tmp_path: Path) -> None:
    from pyctr.client import Client

    data = b"client blob"
    dgst = "sha256:" + hashlib.sha256(data).hexdigest()
    with Client(root=str(tmp_path / "root"), state=str(tmp_path / "state")) as client:
        meta = client.plugin("metadata")
        w = meta.content.writer("default", "r", total=len(data), expected=dgst)
        w.write(data)
        w.commit(len(data), dgst)
        blob = Path(client.plugin("content").path(dgst))
        assert blob.exists()
        meta.content.delete("default", dgst)  # loads the gc plugin, which hears this deletion
        assert isinstance(client.plugin("gc"), GCScheduler)
        assert blob.exists()
    assert not blob.exists()


def ingest(tmp_root: Any, *blobs: bytes) -> list[str]:
    """Put blobs into the root's default namespace in-process (quicker than one CLI call each)."""
    from pyctr.client import Client

    out = []
    with Client(root=str(tmp_root.root), state=str(tmp_root.state), config=str(tmp_root.config)) as client:
        content = client.plugin("metadata").content
        for i, data in enumerate(blobs):
            dgst = "sha256:" + hashlib.sha256(data).hexdigest()
            w = content.writer("default", f"r{i}", total=len(data), expected=dgst)
            w.write(data)
            w.commit(len(data), dgst)
            out.append(dgst)
    return out


def test_cli_gc_reports_what_it_removed(pyctr_cli: Any, tmp_root: Any) -> None:
    (dgst,) = ingest(tmp_root, b"cli blob\n")
    pyctr_cli("leases", "create", "--id", "brief", "--expires", "1s", check=True)
    time.sleep(1.1)
    dry = pyctr_cli("gc", "--dry-run", check=True)
    assert dry.stdout.splitlines()[-1].startswith("would remove 2 records")
    assert len(list(tmp_root.root.glob("pyctr.content.local/blobs/sha256/*"))) == 1
    p = pyctr_cli("gc", check=True)
    assert [line.split() for line in p.stdout.splitlines()[:-1]] == [line.split() for line in
                                                                    dry.stdout.splitlines()[:-1]]
    rows = [line.split() for line in p.stdout.splitlines()]
    assert rows[0] == ["TYPE", "NAMESPACE", "NAME"]
    assert ["content", "default", dgst] in rows
    assert ["lease", "default", "brief"] in rows
    assert "removed 2 records (1 content, 0 snapshots, 0 images, 1 leases, 0 ingests), 1 blobs" in p.stdout
    assert not list(tmp_root.root.glob("pyctr.content.local/blobs/sha256/*"))
    assert pyctr_cli("gc", "-q", check=True).stdout.startswith("removed 0 records")


def test_cli_rm_frees_the_bytes_when_the_command_ends(pyctr_cli: Any, tmp_root: Any, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"freed at exit\n")
    dgst = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    pyctr_cli("content", "ingest", "--ref", "x", "--expected-digest", dgst, input=blob.read_text(), check=True)
    assert len(list(tmp_root.root.glob("pyctr.content.local/blobs/sha256/*"))) == 1
    pyctr_cli("content", "rm", dgst, check=True)
    assert list(tmp_root.root.glob("pyctr.content.local/blobs/sha256/*")) == []


def test_cli_gc_exits_non_zero_when_something_cannot_be_removed(pyctr_cli: Any, tmp_root: Any) -> None:
    digests = ingest(tmp_root, b"blob 0\n", b"blob 1\n", b"blob 2\n")
    conn = sqlite3.connect(tmp_root.root / "pyctr.metadata.sqlite" / "meta.db")
    conn.execute(f"CREATE TRIGGER pin BEFORE DELETE ON content WHEN old.digest = '{digests[0]}' "
                 "BEGIN SELECT RAISE(ABORT, 'pinned by the test'); END")
    conn.close()
    p = pyctr_cli("gc")
    assert p.returncode == 1
    assert "pinned by the test" in p.stderr and "Traceback" not in p.stderr
    assert ["content", "default", digests[1]] in [line.split() for line in p.stdout.splitlines()]
    assert [b.name for b in tmp_root.root.glob("pyctr.content.local/blobs/sha256/*")] == [digests[0][7:]]


def test_metrics(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from pyctr.client import Client
    from pyctr.plugins.gc.scheduler.plugin import pyctr_metrics_collectors

    with Client(root=str(tmp_path / "root"), state=str(tmp_path / "state")) as client:
        sched = client.plugin("gc")
        meta = client.plugin("metadata")
        data = b"counted"
        dgst = "sha256:" + hashlib.sha256(data).hexdigest()
        w = meta.content.writer("default", "r", total=len(data), expected=dgst)
        w.write(data)
        w.commit(len(data), dgst)
        sched.collect()
        reg = CollectorRegistry()
        for c in pyctr_metrics_collectors(client.engine):
            reg.register(c)
        text = generate_latest(reg).decode()
    assert 'pyctr_gc_collections_total{status="ok"} 1.0' in text
    assert 'pyctr_gc_removed_total{kind="content"} 1.0' in text
    assert 'pyctr_gc_removed_total{kind="content (backend)"} 1.0' in text
    assert "pyctr_gc_seconds_total" in text


def test_the_daemon_hooks_start_and_stop_the_timer(tmp_path: Path) -> None:
    from pyctr.config import Config
    from pyctr.engine import Engine

    engine = Engine(Config(root=str(tmp_path / "root"), state=str(tmp_path / "state")))
    try:
        sched = engine.plugin("gc")
        assert not sched.running  # embedded use never starts it
        engine.pm.hook.pyctr_daemon_started(engine=engine)
        assert sched.running
        engine.pm.hook.pyctr_daemon_stopping(engine=engine)
        assert not sched.running
    finally:
        engine.close()


def test_a_daemons_scheduler_does_not_collect_at_close(store: Store) -> None:
    blob = store.put(b"left for the next start")
    sched = store.scheduler(interval=0, startup_delay_ms=60_000)
    sched.start()
    sched.stop()  # the daemon stops it on shutdown...
    store.content.delete("default", blob)
    sched.close()  # ...and closing does not run a collection on the way out
    assert blob in store.blobs()


def test_the_next_expiry_is_collected_when_it_falls_due(store: Store) -> None:
    blob = store.put(b"until the lease expires")
    lease = store.leases.create("default", ttl=0.6)
    store.leases.add_resource("default", lease.id, "content", blob)
    sched = store.scheduler(interval=0, startup_delay_ms=0)  # no periodic timer at all
    sched.start()
    assert wait_for(lambda: sched.collections >= 1)
    first = sched.last_result
    assert first is not None and first.next_expiry == lease.expire_at
    assert wait_for(lambda: blob not in store.blobs(), timeout=5)
    assert sched.collections == 2 and store.leases.list("default") == []
