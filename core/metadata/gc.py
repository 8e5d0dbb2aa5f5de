"""The garbage collector: mark what images, containers and leases reach, sweep the rest.

containerd's collector (``core/metadata/gc.go``), over the SQLite tables, in every namespace:

**Roots**: images whose ``containerd.io/gc.expire`` is absent or in the future; every container; what
an unexpired lease holds (``content``, ``snapshots/<sn>``, ``ingests``); ingests whose ``expire_at`` is
in the future; content and snapshots labelled ``containerd.io/gc.root`` or with a ``gc.expire`` in the
future.

**Edges**: image -> its target; container -> ``<snapshotter>/<snapshot_key>``; snapshot -> its parent;
ingest -> its expected digest; labels ``containerd.io/gc.ref.content[.<x>|/<x>]=<digest>``,
``containerd.io/gc.ref.snapshot.<sn>[/<x>]=<key>`` and ``containerd.io/gc.ref.image[.<x>]=<name>`` on any
object; back-references ``containerd.io/gc.bref.{container,content,image,snapshot.<sn>}`` on an object
make it reachable from the object they name.  A lease labelled ``containerd.io/gc.flat`` keeps the
objects it holds (and a snapshot's parents) but not what their labels reference.

**Sweep**: in one write transaction (held from the mark on, so nothing changes in between), every
unreachable record goes (content records, snapshot records
children first, expired images, expired leases, expired ingests); containers are never collected.  After
the commit the backends are cleaned: a blob that no namespace records any more is deleted from the
content backend, a backend snapshot whose record went is removed (leaves first), and backend blobs and
snapshots that no record names at all (orphans), older than a grace period, go too.  A failure on one
object is recorded in :attr:`GCResult.errors` and the collection goes on.  ``dry_run`` runs the same
sweep and rolls it back, and touches no backend: the result says what a collection would remove.

Tables are read only if they exist, so the collector works whichever stores are installed.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errdefs import FailedPrecondition, NotFound
from .db import MetadataDB, Tx, now_ns
from .leases import LABEL_GC_EXPIRE, LABEL_GC_FLAT, RESOURCE_SNAPSHOTS_PREFIX, expire_at_ns

log = logging.getLogger("pyctr.gc")

LABEL_GC_ROOT = "containerd.io/gc.root"
LABEL_GC_REF_CONTENT = "containerd.io/gc.ref.content"
LABEL_GC_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot."
LABEL_GC_REF_IMAGE = "containerd.io/gc.ref.image"
LABEL_GC_BREF_CONTAINER = "containerd.io/gc.bref.container"
LABEL_GC_BREF_CONTENT = "containerd.io/gc.bref.content"
LABEL_GC_BREF_IMAGE = "containerd.io/gc.bref.image"
LABEL_GC_BREF_SNAPSHOT = "containerd.io/gc.bref.snapshot."

__all__ = [
    "LABEL_GC_BREF_CONTAINER",
    "LABEL_GC_BREF_CONTENT",
    "LABEL_GC_BREF_IMAGE",
    "LABEL_GC_BREF_SNAPSHOT",
    "LABEL_GC_EXPIRE",
    "LABEL_GC_FLAT",
    "LABEL_GC_REF_CONTENT",
    "LABEL_GC_REF_IMAGE",
    "LABEL_GC_REF_SNAPSHOT",
    "LABEL_GC_ROOT",
    "GCResult",
    "collect",
]

#: Backend blobs and snapshots with no record are removed only once older than this (seconds).  0, as
#: containerd: every store creates a backend object and its record inside one write transaction, and
#: the cleanup holds the write lock, so an object without a record is garbage.  Raise it if some code
#: writes to a backend first and records later.
DEFAULT_ORPHAN_GRACE = 0.0

CONTENT, SNAPSHOT, IMAGE, CONTAINER, INGEST = "content", "snapshot", "image", "container", "ingest"

# A node is (kind, namespace, key); a snapshot's key is "<snapshotter>/<key>".
Node = tuple[str, str, str]


@dataclass
class GCResult:
    """What one collection removed.

    :ivar removed_content: digests whose records were removed (in any namespace) or whose orphaned
        blobs were deleted from the backend.
    :ivar removed_snapshots: ``(snapshotter, key)`` of removed snapshot records, and
        ``(snapshotter, backend key)`` of orphaned backend snapshots removed.
    :ivar records: every record removed, as ``(kind, namespace, key)``; kind is one of ``content``,
        ``snapshot`` (key ``<sn>/<key>``), ``image``, ``lease``, ``ingest``.
    :ivar backend: backend objects deleted, as ``("content", digest)`` or ``("snapshot", "<sn>/<key>")``.
    :ivar errors: one line per object that could not be removed (the rest were).
    :ivar next_expiry: the earliest expiry still to come (a lease's, an image's, an ingest's, a
        ``gc.expire`` label's), in ns since the epoch: when a collection will next find something new.
    """

    removed_content: list[str] = field(default_factory=list)
    removed_snapshots: list[tuple[str, str]] = field(default_factory=list)
    removed_images: list[tuple[str, str]] = field(default_factory=list)
    removed_leases: list[tuple[str, str]] = field(default_factory=list)
    removed_ingests: list[tuple[str, str]] = field(default_factory=list)
    records: list[tuple[str, str, str]] = field(default_factory=list)
    backend: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    duration: float = 0.0
    next_expiry: int | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "removed_content": list(self.removed_content),
            "removed_snapshots": [list(x) for x in self.removed_snapshots],
            "removed_images": [list(x) for x in self.removed_images],
            "removed_leases": [list(x) for x in self.removed_leases],
            "removed_ingests": [list(x) for x in self.removed_ingests],
            "records": [list(x) for x in self.records],
            "backend": [list(x) for x in self.backend],
            "errors": list(self.errors),
            "duration": self.duration,
            "next_expiry": self.next_expiry,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GCResult:
        return cls(
            removed_content=list(d.get("removed_content") or []),
            removed_snapshots=[(str(a), str(b)) for a, b in d.get("removed_snapshots") or []],
            removed_images=[(str(a), str(b)) for a, b in d.get("removed_images") or []],
            removed_leases=[(str(a), str(b)) for a, b in d.get("removed_leases") or []],
            removed_ingests=[(str(a), str(b)) for a, b in d.get("removed_ingests") or []],
            records=[(str(a), str(b), str(c)) for a, b, c in d.get("records") or []],
            backend=[(str(a), str(b)) for a, b in d.get("backend") or []],
            errors=list(d.get("errors") or []),
            duration=float(d.get("duration") or 0.0),
            next_expiry=int(d["next_expiry"]) if d.get("next_expiry") else None,
        )


# ---------------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------------


def _named(key: str, prefix: str) -> bool:
    """``key`` is ``prefix`` itself or ``prefix`` followed by ``.`` or ``/`` and a name."""
    return key == prefix or (key.startswith(prefix) and key[len(prefix)] in "./")


def _snapshotter_of(key: str, prefix: str) -> str:
    return key[len(prefix):].split("/", 1)[0]


def label_refs(ns: str, labels: Mapping[str, str]) -> tuple[list[Node], list[Node], bool]:
    """The references in ``labels``: ``(refs, back_refs, is_root)``.

    ``refs`` are the objects this one keeps alive; ``back_refs`` the objects that keep this one alive;
    ``is_root`` says the object is labelled ``containerd.io/gc.root``.
    """
    refs: list[Node] = []
    brefs: list[Node] = []
    root = False
    for k, v in labels.items():
        if not k.startswith("containerd.io/gc."):
            continue
        if k == LABEL_GC_ROOT:
            root = True
        elif k.startswith(LABEL_GC_REF_SNAPSHOT):
            sn = _snapshotter_of(k, LABEL_GC_REF_SNAPSHOT)
            if sn and v:
                refs.append((SNAPSHOT, ns, f"{sn}/{v}"))
        elif _named(k, LABEL_GC_REF_CONTENT):
            if v:
                refs.append((CONTENT, ns, v))
        elif _named(k, LABEL_GC_REF_IMAGE):
            if v:
                refs.append((IMAGE, ns, v))
        elif k.startswith(LABEL_GC_BREF_SNAPSHOT):
            sn = _snapshotter_of(k, LABEL_GC_BREF_SNAPSHOT)
            if sn and v:
                brefs.append((SNAPSHOT, ns, f"{sn}/{v}"))
        elif _named(k, LABEL_GC_BREF_CONTENT):
            if v:
                brefs.append((CONTENT, ns, v))
        elif _named(k, LABEL_GC_BREF_IMAGE):
            if v:
                brefs.append((IMAGE, ns, v))
        elif _named(k, LABEL_GC_BREF_CONTAINER) and v:
            brefs.append((CONTAINER, ns, v))
    return refs, brefs, root


# ---------------------------------------------------------------------------------------------------
# The graph
# ---------------------------------------------------------------------------------------------------


@dataclass
class _Graph:
    """Every record of the store, as nodes and edges."""

    labels: dict[Node, dict[str, str]] = field(default_factory=dict)
    parent: dict[Node, Node] = field(default_factory=dict)  # snapshot -> parent snapshot
    # image -> content, container -> snapshot, ingest -> content (its expected digest)
    target: dict[Node, Node] = field(default_factory=dict)
    backend_key: dict[Node, str] = field(default_factory=dict)  # snapshot -> backend key
    brefs: dict[Node, list[Node]] = field(default_factory=dict)  # X -> objects X keeps (back-references)
    roots: list[tuple[Node, bool]] = field(default_factory=list)  # (node, flat)
    leases_expired: list[tuple[str, str]] = field(default_factory=list)
    next_expiry: int | None = None  # the earliest expiry still to come (ns since the epoch)
    by_kind: dict[str, list[Node]] = field(default_factory=dict)


def _tables(tx: Tx) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for (name,) in tx.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
        out[name] = {r[1] for r in tx.execute(f'PRAGMA table_info("{name}")').fetchall()}
    return out


def _labels(raw: Any) -> dict[str, str]:
    if not raw:
        return {}
    try:
        v = json.loads(raw)
    except (TypeError, ValueError):
        return {}
    return {str(k): str(x) for k, x in v.items()} if isinstance(v, dict) else {}


def _ns_time(value: Any) -> int | None:
    """An ``expire_at`` column: ns since the epoch (seconds are accepted too); 0 or NULL is none."""
    if value is None or value == "":
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    if n <= 0:
        return None
    return n if n > 10**14 else n * 1_000_000_000


def _load(tx: Tx, now: int) -> tuple[_Graph, dict[str, set[str]]]:
    g = _Graph()
    tables = _tables(tx)

    def add(node: Node, labels: dict[str, str]) -> None:
        g.labels[node] = labels
        g.by_kind.setdefault(node[0], []).append(node)
        _, brefs, _ = label_refs(node[1], labels)
        for b in brefs:
            g.brefs.setdefault(b, []).append(node)

    def future(exp: int | None) -> bool:
        """``exp`` is a time still to come (remembered: the earliest one is when to collect next)."""
        if exp is None or exp < now:
            return False
        if g.next_expiry is None or exp < g.next_expiry:
            g.next_expiry = exp
        return True

    def live(labels: Mapping[str, str]) -> bool:
        return future(expire_at_ns(labels))

    # leases: what an unexpired lease holds is a root
    if "leases" in tables:
        held: dict[tuple[str, str], list[tuple[str, str]]] = {}
        if "lease_resources" in tables:
            for r in tx.execute("SELECT ns, lease, type, key FROM lease_resources").fetchall():
                held.setdefault((r["ns"], r["lease"]), []).append((r["type"], r["key"]))
        for r in tx.execute("SELECT ns, id, labels FROM leases").fetchall():
            ns, lid, labels = r["ns"], r["id"], _labels(r["labels"])
            exp = expire_at_ns(labels)
            if exp is not None and not future(exp):
                g.leases_expired.append((ns, lid))
                continue
            flat = LABEL_GC_FLAT in labels
            for type_, key in held.get((ns, lid), []):
                if type_ == "content":
                    g.roots.append(((CONTENT, ns, key), flat))
                elif type_ == "ingests":
                    g.roots.append(((INGEST, ns, key), flat))
                elif type_ == "images":
                    g.roots.append(((IMAGE, ns, key), flat))
                elif type_.startswith(RESOURCE_SNAPSHOTS_PREFIX):
                    g.roots.append(((SNAPSHOT, ns, f"{type_[len(RESOURCE_SNAPSHOTS_PREFIX):]}/{key}"), flat))

    if "images" in tables:
        for r in tx.execute("SELECT * FROM images").fetchall():
            node = (IMAGE, r["ns"], r["name"])
            labels = _labels(r["labels"]) if "labels" in tables["images"] else {}
            add(node, labels)
            exp = expire_at_ns(labels)
            if exp is None or future(exp):
                g.roots.append((node, False))
            dgst = _target_digest(r["target"] if "target" in tables["images"] else None)
            if not dgst and "target_digest" in tables["images"]:
                dgst = r["target_digest"]
            if dgst:
                g.target[node] = (CONTENT, r["ns"], dgst)

    if "containers" in tables:
        cols = tables["containers"]
        for r in tx.execute("SELECT * FROM containers").fetchall():
            node = (CONTAINER, r["ns"], r["id"])
            add(node, _labels(r["labels"]) if "labels" in cols else {})
            g.roots.append((node, False))
            sn = r["snapshotter"] if "snapshotter" in cols else ""
            key = r["snapshot_key"] if "snapshot_key" in cols else ""
            if sn and key:
                g.target[node] = (SNAPSHOT, r["ns"], f"{sn}/{key}")

    if "ingests" in tables:
        cols = tables["ingests"]
        for r in tx.execute("SELECT * FROM ingests").fetchall():
            node = (INGEST, r["ns"], r["ref"])
            add(node, {})
            exp_at = _ns_time(r["expire_at"]) if "expire_at" in cols else None
            if future(exp_at):
                g.roots.append((node, False))
            expected = r["expected"] if "expected" in cols else ""
            if expected:
                g.target[node] = (CONTENT, r["ns"], expected)

    if "content" in tables:
        for r in tx.execute("SELECT ns, digest, labels FROM content").fetchall():
            node = (CONTENT, r["ns"], r["digest"])
            labels = _labels(r["labels"])
            add(node, labels)
            if LABEL_GC_ROOT in labels or live(labels):
                g.roots.append((node, False))

    if "snapshots" in tables:
        cols = tables["snapshots"]
        for r in tx.execute("SELECT * FROM snapshots").fetchall():
            sn, key = r["snapshotter"], r["key"]
            node = (SNAPSHOT, r["ns"], f"{sn}/{key}")
            labels = _labels(r["labels"]) if "labels" in cols else {}
            add(node, labels)
            g.backend_key[node] = (r["backend_key"] if "backend_key" in cols else "") or key
            parent = r["parent"] if "parent" in cols else ""
            if parent:
                g.parent[node] = (SNAPSHOT, r["ns"], f"{sn}/{parent}")
            if LABEL_GC_ROOT in labels or live(labels):
                g.roots.append((node, False))
    return g, tables


def _target_digest(raw: Any) -> str:
    if not raw:
        return ""
    try:
        d = json.loads(raw)
    except (TypeError, ValueError):
        return str(raw) if str(raw).startswith("sha256:") else ""
    if isinstance(d, dict):
        return str(d.get("digest") or "")
    return ""


def _mark(g: _Graph) -> set[Node]:
    """Every node reachable from the roots (flat roots reach their parents but not their labels)."""
    full: set[Node] = set()
    flat_only: set[Node] = set()
    stack: list[tuple[Node, bool]] = list(g.roots)
    while stack:
        node, flat = stack.pop()
        if node in full or (flat and node in flat_only):
            continue
        (flat_only if flat else full).add(node)
        for b in g.brefs.get(node, ()):
            stack.append((b, False))
        kind = node[0]
        if kind == SNAPSHOT:
            parent = g.parent.get(node)
            if parent is not None:
                stack.append((parent, flat))
        elif kind in (IMAGE, CONTAINER):
            tgt = g.target.get(node)
            if tgt is not None:
                stack.append((tgt, flat and kind == IMAGE))
        elif kind == INGEST:
            tgt = g.target.get(node)
            if tgt is not None:
                stack.append((tgt, False))
        if not flat or kind == CONTAINER:
            refs, _, _ = label_refs(node[1], g.labels.get(node, {}))
            stack.extend((r, False) for r in refs)
    return full | flat_only


def _depth(node: Node, parent: Mapping[Node, Node]) -> int:
    d, seen = 0, {node}
    cur = parent.get(node)
    while cur is not None and cur not in seen:
        seen.add(cur)
        d += 1
        cur = parent.get(cur)
    return d


# ---------------------------------------------------------------------------------------------------
# Collection
# ---------------------------------------------------------------------------------------------------


def collect(
    db: MetadataDB,
    content_backend: Any = None,
    snapshot_backends: Mapping[str, Any] | None = None,
    *,
    now: int | None = None,
    orphan_grace: float = DEFAULT_ORPHAN_GRACE,
    remove_orphans: bool = True,
    dry_run: bool = False,
) -> GCResult:
    """Run one collection over every namespace of ``db``.

    :param content_backend: the backend ``content`` plugin (its ``delete(digest)``, and ``walk()`` for
        orphans); ``None`` leaves blobs alone.
    :param snapshot_backends: backend snapshotters by short name (``remove(key)``, ``walk()``,
        optionally ``cleanup()``); a snapshotter missing here keeps its backend snapshots.
    :param now: the time expiry is measured against (ns since the epoch; default: now).
    :param orphan_grace: backend objects with no record are removed only when older than this (s).
    :param dry_run: report what would be removed and remove nothing (the sweep runs and is rolled back).
    """
    if db.in_transaction:
        # the sweep would join the caller's transaction and the backends be cleaned before it commits
        raise FailedPrecondition("garbage collection cannot run inside a metadata transaction")
    started = time.monotonic()
    res = GCResult()
    when = now_ns() if now is None else now
    removed_snaps: list[tuple[Node, str]] = []  # (node, backend key), leaves first
    removed_digests: set[str] = set()
    gone_content: set[tuple[str, str]] = set()  # (ns, digest) records swept
    try:
        with db.tx() as tx:
            tables = _sweep(tx, when, res, removed_snaps, removed_digests, gone_content)
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    res.removed_content = sorted(removed_digests)

    # -- after the commit: the backends ---------------------------------------------------------
    if content_backend is not None:
        _clean_content(db, content_backend, gone_content, res, when, dry_run=dry_run,
                       orphans=remove_orphans and "content" in tables, grace=orphan_grace)
        for ns, ref in res.removed_ingests:  # the namespaced store's backend ref is "<ns>/<ref>"
            if dry_run:
                continue
            try:
                content_backend.abort(f"{ns}/{ref}")
            except NotFound:
                continue
            except Exception as e:
                res.errors.append(f"cannot abort ingest {ref!r} in namespace {ns}: {e}")
                continue
            res.backend.append(("ingest", f"{ns}/{ref}"))
    for sn, backend in (snapshot_backends or {}).items():
        mine = [(node[1], node[2].split("/", 1)[1], bkey) for node, bkey in removed_snaps
                if node[2].split("/", 1)[0] == sn]
        _clean_snapshots(db, sn, backend, mine, res, when, dry_run=dry_run,
                         orphans=remove_orphans and "snapshots" in tables, grace=orphan_grace)
    res.duration = time.monotonic() - started
    if (res.records or res.backend or res.errors) and not dry_run:
        log.info("gc: removed %d records and %d backend objects in %.3fs (%d errors)",
                 len(res.records), len(res.backend), res.duration, len(res.errors))
    return res


class _DryRun(Exception):
    """Rolls a dry run's sweep back."""


def _sweep(tx: Tx, when: int, res: GCResult, removed_snaps: list[tuple[Node, str]], removed_digests: set[str],
           gone_content: set[tuple[str, str]]) -> dict[str, set[str]]:
    """Mark, then delete every unreachable record (in ``tx``); returns the tables seen."""
    g, tables = _load(tx, when)
    res.next_expiry = g.next_expiry
    reachable = _mark(g)

    def delete(sql: str, params: tuple[Any, ...], what: str) -> bool:
        try:
            tx.execute(sql, params)
            return True
        except sqlite3.Error as e:
            res.errors.append(f"cannot remove {what}: {e}")
            return False

    for ns, lid in g.leases_expired:
        what = f"lease {lid} in namespace {ns}"
        ok = "lease_resources" not in tables or delete(
            "DELETE FROM lease_resources WHERE ns=? AND lease=?", (ns, lid), what)
        if ok and delete("DELETE FROM leases WHERE ns=? AND id=?", (ns, lid), what):
            res.removed_leases.append((ns, lid))
            res.records.append(("lease", ns, lid))
    sweeps = ((IMAGE, "images", "name", res.removed_images),
              (INGEST, "ingests", "ref", res.removed_ingests),
              (CONTENT, "content", "digest", None))
    for kind, table, col, out in sweeps:
        for node in g.by_kind.get(kind, []):
            if node in reachable or not delete(f"DELETE FROM {table} WHERE ns=? AND {col}=?", node[1:],
                                               f"{kind} {node[2]} in namespace {node[1]}"):
                continue
            res.records.append(node)
            if out is not None:
                out.append((node[1], node[2]))
            else:
                removed_digests.add(node[2])
                gone_content.add((node[1], node[2]))
    dead = [n for n in g.by_kind.get(SNAPSHOT, []) if n not in reachable]
    dead.sort(key=lambda n: _depth(n, g.parent), reverse=True)  # children before their parents
    for node in dead:
        sn, _, key = node[2].partition("/")
        if delete("DELETE FROM snapshots WHERE ns=? AND snapshotter=? AND key=?",
                  (node[1], sn, key), f"snapshot {sn}/{key} in namespace {node[1]}"):
            res.removed_snapshots.append((sn, key))
            res.records.append(node)
            removed_snaps.append((node, g.backend_key.get(node, key)))
    return tables


def _has_table(tx: Tx, name: str) -> bool:
    row = tx.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone()
    return row is not None


def _clean_content(db: MetadataDB, backend: Any, gone: set[tuple[str, str]], res: GCResult, now: int, *,
                   orphans: bool, grace: float, dry_run: bool = False) -> None:
    """Delete the blobs no record names any more (those whose records ``gone`` were swept, and, with
    ``orphans``, any other), under a write transaction, so no other process records a blob between
    the check and the delete."""
    with db.tx() as tx:
        has_table = _has_table(tx, "content")
        recorded: set[str] = set()
        if has_table:
            recorded = {d for ns, d in tx.execute("SELECT ns, digest FROM content").fetchall()
                        if (ns, d) not in gone}  # (a dry run's swept records are still there)
        candidates = sorted({d for _, d in gone} - recorded)
        if orphans and has_table and hasattr(backend, "walk"):
            cutoff = now - int(grace * 1e9)
            try:
                for info in backend.walk():
                    if info.digest not in recorded and info.digest not in candidates and _older(info, cutoff):
                        candidates.append(info.digest)
                        res.removed_content.append(info.digest)
            except Exception as e:
                res.errors.append(f"cannot list the content backend's blobs: {e}")
        for dgst in candidates:
            if dry_run:
                if not hasattr(backend, "exists") or backend.exists(dgst):
                    res.backend.append(("content", dgst))
                continue
            try:
                backend.delete(dgst)
            except NotFound:
                continue
            except Exception as e:
                res.errors.append(f"cannot delete blob {dgst}: {e}")
                continue
            res.backend.append(("content", dgst))
    res.removed_content = sorted(set(res.removed_content))


def _older(info: Any, cutoff: int) -> bool:
    created = getattr(info, "created_at", None) or getattr(info, "updated_at", None)
    if not created:
        return True
    created = int(created)
    if created < 10**14:  # seconds
        created *= 1_000_000_000
    return created < cutoff


def _clean_snapshots(db: MetadataDB, sn: str, backend: Any, gone: list[tuple[str, str, str]], res: GCResult,
                     now: int, *, orphans: bool, grace: float, dry_run: bool = False) -> None:
    """Remove the backend snapshots of the swept records ``gone`` (``(ns, key, backend key)``, leaves
    first) that no other record shares, and with ``orphans`` any other without a record."""
    gone_keys = {(ns, key) for ns, key, _ in gone}
    with db.tx() as tx:
        has_table = _has_table(tx, "snapshots")
        recorded: set[str] = set()
        if has_table:
            cols = {r[1] for r in tx.execute('PRAGMA table_info("snapshots")').fetchall()}
            col = "backend_key" if "backend_key" in cols else "key"
            rows = tx.execute(f"SELECT ns, key, {col} FROM snapshots WHERE snapshotter=?", (sn,)).fetchall()
            recorded = {r[2] for r in rows if (r[0], r[1]) not in gone_keys}
        todo = [bkey for _, _, bkey in gone if bkey not in recorded]
        if orphans and has_table and hasattr(backend, "walk"):
            todo = _snapshot_orphans(sn, backend, recorded, todo, now - int(grace * 1e9), res)
        for bkey in todo:
            if dry_run:
                res.backend.append(("snapshot", f"{sn}/{bkey}"))
                continue
            try:
                backend.remove(bkey)
            except NotFound:
                continue
            except Exception as e:
                res.errors.append(f"cannot remove snapshot {bkey!r} from snapshotter {sn}: {e}")
                continue
            res.backend.append(("snapshot", f"{sn}/{bkey}"))
    cleanup = getattr(backend, "cleanup", None)
    if callable(cleanup) and not dry_run:
        try:
            cleanup()
        except Exception as e:
            res.errors.append(f"snapshotter {sn} cleanup failed: {e}")


def _snapshot_orphans(sn: str, backend: Any, recorded: set[str], removed: list[str], cutoff: int,
                      res: GCResult) -> list[str]:
    """``removed`` plus the backend snapshots no record names, older than the cutoff, whose children all
    go too; ordered leaves first by the backend's own parent links."""
    try:
        infos = list(backend.walk())
    except Exception as e:
        res.errors.append(f"cannot list snapshotter {sn}'s snapshots: {e}")
        return removed
    parent = {i.name: i.parent for i in infos}
    children: dict[str, list[str]] = {}
    for i in infos:
        if i.parent:
            children.setdefault(i.parent, []).append(i.name)
    going = set(removed)
    orphans = {i.name for i in infos if i.name not in recorded and i.name not in going and _older(i, cutoff)}
    # Keep an orphan with a child that stays (the child would be left without its parent).
    changed = True
    while changed:
        changed = False
        for name in list(orphans):
            if any(c not in orphans and c not in going for c in children.get(name, [])):
                orphans.discard(name)
                changed = True

    def depth(name: str) -> int:
        d, seen, cur = 0, {name}, parent.get(name)
        while cur and cur not in seen:
            seen.add(cur)
            d, cur = d + 1, parent.get(cur)
        return d

    res.removed_snapshots.extend((sn, k) for k in sorted(orphans))
    return sorted(going | orphans, key=depth, reverse=True)
