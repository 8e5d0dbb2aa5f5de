"""Several processes on one root at once: writers creating namespaces, labels, leases and content while
a garbage collector runs in a loop; afterwards the database is consistent, no update was lost, nothing
a lease held was collected, and the garbage is gone."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import child_env

WORKERS = 4
ROUNDS = 20
HOT = 50


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def worker(root: str, wid: int, rounds: int) -> None:
    """One writer process."""
    from pyctr.metadata.content import NamespacedContentStore
    from pyctr.metadata.db import MetadataDB
    from pyctr.metadata.leases import LeaseManager
    from pyctr.metadata.namespaces import NamespaceStore
    from pyctr.plugins.content.local.store import LocalStore

    db = MetadataDB(Path(root) / "meta.db")
    spaces, leases = NamespaceStore(db), LeaseManager(db)
    content = NamespacedContentStore(db, LocalStore(Path(root) / "content"))
    spaces.ensure("shared")
    (Path(root) / f"ready-{wid}").touch()
    while not os.path.exists(Path(root) / "start"):  # all writers start together
        time.sleep(0.001)
    for _ in range(HOT):  # a hot counter: without the transaction, increments would get lost
        with db.tx():
            count = int(spaces.labels("shared").get("hot", "0"))
            spaces.set_labels("shared", {"hot": str(count + 1)})
    for j in range(rounds):
        spaces.create(f"w{wid}-{j}", {"by": str(wid)})
        with db.tx():  # read-modify-write of one label, atomically
            spaces.ensure("shared")
            count = int(spaces.labels("shared").get("count", "0"))
            spaces.set_labels("shared", {"count": str(count + 1), f"w{wid}": str(j)})
        kept = f"kept {wid} {j}".encode()
        # the lease holds the digest before the bytes arrive, so a collection in between keeps them
        leases.create("shared", f"w{wid}-{j}", {"worker": str(wid)})
        leases.add_resource("shared", f"w{wid}-{j}", "content", digest(kept))
        for data, ref in ((kept, f"k{wid}-{j}"), (f"garbage {wid} {j}".encode(), f"g{wid}-{j}")):
            w = content.writer("shared", ref, total=len(data), expected=digest(data))
            w.write(data)
            w.commit(len(data), digest(data))
    db.close()


def collector(root: str, stop: str) -> None:
    """Collect garbage in a loop until ``stop`` exists; print the errors seen, as JSON."""
    from pyctr.metadata.db import MetadataDB
    from pyctr.metadata.gc import collect
    from pyctr.plugins.content.local.store import LocalStore

    db = MetadataDB(Path(root) / "meta.db")
    backend = LocalStore(Path(root) / "content")
    errors: list[str] = []
    runs = 0
    while not os.path.exists(stop):
        errors += collect(db, backend, {}).errors
        runs += 1
    db.close()
    print(json.dumps({"errors": errors, "runs": runs}))


def spawn(tests_dir: Path, call: str) -> subprocess.Popen[str]:
    path = [str(tests_dir), os.environ.get("PYTHONPATH", "")]
    env = child_env({"PYTHONPATH": os.pathsep.join(p for p in path if p)})
    return subprocess.Popen([sys.executable, "-c", f"import test_concurrency as t; {call}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_writers_and_collector(tmp_path: Path) -> None:
    from pyctr.metadata.content import NamespacedContentStore
    from pyctr.metadata.db import MetadataDB
    from pyctr.metadata.gc import collect
    from pyctr.metadata.leases import LeaseManager
    from pyctr.metadata.namespaces import NamespaceStore
    from pyctr.plugins.content.local.store import LocalStore

    here = Path(__file__).parent
    root, stop = str(tmp_path), str(tmp_path / "stop")
    MetadataDB(tmp_path / "meta.db").close()  # create the file once, so the writers race on rows
    gc_proc = spawn(here, f"t.collector({root!r}, {stop!r})")
    writers = [spawn(here, f"t.worker({root!r}, {i}, {ROUNDS})") for i in range(WORKERS)]
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("ready-*"))) < WORKERS and time.monotonic() < deadline:
            time.sleep(0.01)
        (tmp_path / "start").touch()
        for p in writers:
            _, err = p.communicate(timeout=240)
            assert p.returncode == 0, err
        time.sleep(0.2)
    finally:
        Path(stop).touch()
        for p in writers:
            if p.poll() is None:
                p.kill()
        gc_out, gc_err = gc_proc.communicate(timeout=60)
    assert gc_proc.returncode == 0, gc_err
    report = json.loads(gc_out.splitlines()[-1])
    assert report["errors"] == []
    assert report["runs"] > 0

    db = MetadataDB(tmp_path / "meta.db")
    backend = LocalStore(tmp_path / "content")
    try:
        assert db.query("PRAGMA integrity_check")[0][0] == "ok"
        spaces = NamespaceStore(db)
        names = set(spaces.names())
        assert names == {"shared"} | {f"w{i}-{j}" for i in range(WORKERS) for j in range(ROUNDS)}
        assert all(spaces.labels(f"w{i}-0") == {"by": str(i)} for i in range(WORKERS))
        shared = spaces.labels("shared")
        assert shared["count"] == str(WORKERS * ROUNDS)  # no lost update
        assert shared["hot"] == str(WORKERS * HOT)
        assert all(shared[f"w{i}"] == str(ROUNDS - 1) for i in range(WORKERS))

        leases = LeaseManager(db)
        held = {lease.id: leases.list_resources("shared", lease.id) for lease in leases.list("shared")}
        assert len(held) == WORKERS * ROUNDS
        kept = {digest(f"kept {i} {j}".encode()) for i in range(WORKERS) for j in range(ROUNDS)}
        assert {r.key for rs in held.values() for r in rs} == kept
        content = NamespacedContentStore(db, backend)
        # nothing a lease held was collected, whenever the collector ran
        assert kept <= {i.digest for i in content.walk("shared")}
        assert kept <= {i.digest for i in backend.walk()}
        # a last collection removes all the garbage, and only it
        collect(db, backend, {})
        assert {i.digest for i in content.walk("shared")} == kept
        assert {i.digest for i in backend.walk()} == kept
    finally:
        db.close()
