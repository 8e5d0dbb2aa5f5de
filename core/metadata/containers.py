"""Container records, per namespace: what a container is made of, not whether it runs.

A record holds the container's id, the image it came from, the snapshotter and snapshot key of its
root file system, the runtime (name and options), the OCI runtime spec, labels, extensions and the
created/updated times -- containerd's ``containers.Container``.  Tasks (running processes) belong to
the runtime plugin; this store never touches them.

Table ``containers`` (component ``containers``)::

    ns, id, image, snapshotter, snapshot_key, runtime (JSON {name, options}), spec (JSON),
    labels (JSON), extensions (JSON), created_at, updated_at (ns since the epoch), PRIMARY KEY(ns, id)
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..errdefs import AlreadyExists, InvalidArgument, NotFound
from .db import MetadataDB, now_ns, register_migrations
from .namespaces import NamespaceStore

register_migrations("containers", [
    """
    CREATE TABLE containers (
        ns TEXT NOT NULL,
        id TEXT NOT NULL,
        image TEXT NOT NULL DEFAULT '',
        snapshotter TEXT NOT NULL DEFAULT '',
        snapshot_key TEXT NOT NULL DEFAULT '',
        runtime TEXT NOT NULL DEFAULT '{}',
        spec TEXT NOT NULL DEFAULT '{}',
        labels TEXT NOT NULL DEFAULT '{}',
        extensions TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (ns, id)
    );
    CREATE INDEX containers_image ON containers(ns, image)
    """,
])

# containerd caps a label at 4096 bytes (key plus value).
MAX_LABEL_SIZE = 4096

#: Fields :meth:`ContainerStore.update` accepts in ``fieldpaths`` (``labels.<key>`` too).
UPDATABLE = ("labels", "spec", "snapshotter", "snapshot_key", "image", "runtime", "extensions")


def validate_id(id_: str) -> None:
    from ..identifiers import validate_identifier

    validate_identifier(id_, "container id")


def validate_labels(labels: Mapping[str, str]) -> None:
    for k, v in labels.items():
        if not k:
            raise InvalidArgument("a label key must not be empty")
        if len(k) + len(v) > MAX_LABEL_SIZE:
            raise InvalidArgument(f"label {k!r} is longer than {MAX_LABEL_SIZE} bytes")


@dataclass
class RuntimeInfo:
    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> RuntimeInfo:
        d = d or {}
        return cls(name=str(d.get("name", "")), options=dict(d.get("options") or {}))


@dataclass
class Container:
    """One container record (containerd's ``containers.Container``)."""

    id: str
    image: str = ""
    snapshotter: str = ""
    snapshot_key: str = ""
    runtime: RuntimeInfo = field(default_factory=RuntimeInfo)
    spec: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, Any] = field(default_factory=dict)
    created_at: int = 0
    updated_at: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "image": self.image,
            "snapshotter": self.snapshotter,
            "snapshot_key": self.snapshot_key,
            "runtime": self.runtime.to_dict(),
            "spec": self.spec,
            "labels": dict(self.labels),
            "extensions": dict(self.extensions),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Container:
        return cls(
            id=str(d["id"]),
            image=str(d.get("image", "")),
            snapshotter=str(d.get("snapshotter", "")),
            snapshot_key=str(d.get("snapshot_key", "")),
            runtime=RuntimeInfo.from_dict(d.get("runtime")),
            spec=dict(d.get("spec") or {}),
            labels={str(k): str(v) for k, v in (d.get("labels") or {}).items()},
            extensions=dict(d.get("extensions") or {}),
            created_at=int(d.get("created_at", 0)),
            updated_at=int(d.get("updated_at", 0)),
        )


def _row_to_container(row: Any) -> Container:
    return Container(
        id=row["id"],
        image=row["image"],
        snapshotter=row["snapshotter"],
        snapshot_key=row["snapshot_key"],
        runtime=RuntimeInfo.from_dict(json.loads(row["runtime"])),
        spec=json.loads(row["spec"]),
        labels=json.loads(row["labels"]),
        extensions=json.loads(row["extensions"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _dumps(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), sort_keys=True)


class ContainerStore:
    """CRUD over the ``containers`` table; every method takes the namespace explicitly."""

    def __init__(self, db: MetadataDB,
                 publish: Callable[[str, str, dict[str, Any]], None] | None = None) -> None:
        """``publish(ns, topic, payload)``, when given, is called after each commit with
        ``/containers/create``, ``/containers/update`` or ``/containers/delete`` (containerd's payloads)."""
        self.db = db
        self.publish = publish
        db.ensure_schema("containers")

    def _event(self, tx: Any, ns: str, topic: str, payload: dict[str, Any]) -> None:
        publish = self.publish
        if publish is not None:
            tx.on_commit(lambda: publish(ns, topic, payload))

    def create(self, ns: str, c: Container) -> Container:
        """Insert ``c``; :class:`AlreadyExists` if the id is taken in ``ns``."""
        validate_id(c.id)
        validate_labels(c.labels)
        if not c.runtime.name:
            raise InvalidArgument(f"container {c.id!r} needs a runtime name")
        now = now_ns()
        out = replace(c, created_at=now, updated_at=now)
        with self.db.tx() as tx:
            NamespaceStore(self.db).ensure(ns)
            if tx.execute("SELECT 1 FROM containers WHERE ns=? AND id=?", (ns, c.id)).fetchone():
                raise AlreadyExists(f"container {c.id!r} already exists in namespace {ns!r}")
            tx.execute(
                "INSERT INTO containers(ns, id, image, snapshotter, snapshot_key, runtime, spec, labels, "
                "extensions, created_at, updated_at) VALUES(?,?,?,?,?,?,?,?,?,?,?)",
                (ns, out.id, out.image, out.snapshotter, out.snapshot_key, _dumps(out.runtime.to_dict()),
                 _dumps(out.spec), _dumps(out.labels), _dumps(out.extensions), now, now),
            )
            self._event(tx, ns, "/containers/create",
                        {"id": out.id, "image": out.image, "runtime": out.runtime.to_dict()})
        return out

    def get(self, ns: str, id_: str) -> Container:
        row = self.db.query_one("SELECT * FROM containers WHERE ns=? AND id=?", (ns, id_))
        if row is None:
            raise NotFound(f"container {id_!r} not found in namespace {ns!r}")
        return _row_to_container(row)

    def exists(self, ns: str, id_: str) -> bool:
        return self.db.query_one("SELECT 1 FROM containers WHERE ns=? AND id=?", (ns, id_)) is not None

    def list(self, ns: str, filters: Iterable[str] = ()) -> list[Container]:
        """Containers in ``ns`` matching any of ``filters`` (containerd's filter grammar on the fields
        ``id``, ``image``, ``runtime.name``, ``snapshotter``, ``snapshot_key`` and ``labels.<key>``)."""
        rows = self.db.query("SELECT * FROM containers WHERE ns=? ORDER BY id", (ns,))
        items = [_row_to_container(r) for r in rows]
        flt = [f for f in filters if f]
        if not flt:
            return items
        from ..filters import parse

        parsed = parse(flt)
        from ..filters import match_dict

        return [c for c in items if match_dict(_adapt(c), parsed)]

    def update(self, ns: str, c: Container, fieldpaths: Iterable[str] = ()) -> Container:
        """Write ``c``'s fields named in ``fieldpaths`` (all updatable fields when empty); a label path
        ``labels.<key>`` sets or removes (empty value) one label."""
        paths = list(fieldpaths)
        with self.db.tx() as tx:
            row = tx.execute("SELECT * FROM containers WHERE ns=? AND id=?", (ns, c.id)).fetchone()
            if row is None:
                raise NotFound(f"container {c.id!r} not found in namespace {ns!r}")
            cur = _row_to_container(row)
            if not paths:
                paths = ["labels", "spec", "snapshot_key", "image", "runtime", "extensions"]
                if c.snapshotter != cur.snapshotter:
                    raise InvalidArgument("a container's snapshotter cannot be changed")
            for p in paths:
                if p.startswith("labels."):
                    key = p[len("labels."):]
                    val = c.labels.get(key, "")
                    if val:
                        cur.labels[key] = val
                    else:
                        cur.labels.pop(key, None)
                elif p == "labels":
                    cur.labels = {k: v for k, v in c.labels.items() if v}
                elif p in ("spec", "image", "runtime", "extensions", "snapshot_key"):
                    setattr(cur, p, getattr(c, p))
                elif p == "snapshotter":
                    if c.snapshotter != cur.snapshotter:
                        raise InvalidArgument("a container's snapshotter cannot be changed")
                else:
                    raise InvalidArgument(f"cannot update field {p!r} of a container")
            validate_labels(cur.labels)
            cur.updated_at = now_ns()
            tx.execute(
                "UPDATE containers SET image=?, snapshot_key=?, runtime=?, spec=?, labels=?, extensions=?, "
                "updated_at=? WHERE ns=? AND id=?",
                (cur.image, cur.snapshot_key, _dumps(cur.runtime.to_dict()), _dumps(cur.spec),
                 _dumps(cur.labels), _dumps(cur.extensions), cur.updated_at, ns, c.id),
            )
            self._event(tx, ns, "/containers/update",
                        {"id": cur.id, "image": cur.image, "labels": dict(cur.labels),
                         "snapshot_key": cur.snapshot_key})
        return cur

    def set_labels(self, ns: str, id_: str, labels: Mapping[str, str]) -> Container:
        """Set (non-empty value) or remove (empty value) each of ``labels``."""
        c = Container(id=id_, labels=dict(labels))
        return self.update(ns, c, [f"labels.{k}" for k in labels])

    def delete(self, ns: str, id_: str) -> None:
        with self.db.tx() as tx:
            cur = tx.execute("DELETE FROM containers WHERE ns=? AND id=?", (ns, id_))
            if cur.rowcount == 0:
                raise NotFound(f"container {id_!r} not found in namespace {ns!r}")
            self._event(tx, ns, "/containers/delete", {"id": id_})
        self.db.mutated("delete")

    def namespaces_in_use(self) -> builtins.list[str]:
        return [r[0] for r in self.db.query("SELECT DISTINCT ns FROM containers")]


def _adapt(c: Container) -> dict[str, Any]:
    return {
        "id": c.id,
        "image": c.image,
        "runtime": {"name": c.runtime.name},
        "snapshotter": c.snapshotter,
        "snapshot_key": c.snapshot_key,
        "labels": c.labels,
    }
