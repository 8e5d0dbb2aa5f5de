"""Image records, per namespace: a name, the descriptor it points at, labels and times.

containerd's ``images.Store`` on SQLite.  A record is only a name for a graph of content; the content
itself (index, manifests, config, layers) lives in the content store and is kept alive by the garbage
collector through the record's target and the ``containerd.io/gc.ref.content.*`` labels on each blob.

Table ``images`` (component ``images``)::

    ns, name, target (JSON OCI descriptor), labels (JSON), created_at, updated_at (ns since the epoch),
    PRIMARY KEY(ns, name)

Deleting a record calls ``db.mutated("delete")`` so the GC scheduler can collect what it held.
``publish(ns, topic, payload)``, when given, is called after each commit with ``/images/create``,
``/images/update`` (payload ``{name, labels}``) and ``/images/delete`` (``{name}``).
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from .. import filters as filters_mod
from ..content import Descriptor, validate_digest
from ..errdefs import AlreadyExists, InvalidArgument, NotFound
from ..images import Image
from .db import MetadataDB, Tx, now_ns, register_migrations
from .namespaces import NamespaceStore

register_migrations("images", [
    """
    CREATE TABLE images (
        ns TEXT NOT NULL,
        name TEXT NOT NULL,
        target TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (ns, name)
    );
    CREATE INDEX images_target ON images(ns, json_extract(target, '$.digest'))
    """,
])

#: containerd caps a label at 4096 bytes (key plus value).
MAX_LABEL_SIZE = 4096
#: Fields :meth:`ImageStore.update` accepts in ``fieldpaths`` (``labels.<key>`` and
#: ``annotations.<key>`` too).
UPDATABLE = ("labels", "target", "annotations")


def validate_image(img: Image) -> None:
    """containerd's ``validateImage``: a name, valid labels, a target with digest, size and media type."""
    if not img.name:
        raise InvalidArgument("an image name must not be empty")
    if len(img.name) > 4096 or any(c in img.name for c in "\n\r\0"):
        raise InvalidArgument(f"invalid image name {img.name[:40]!r}")
    validate_labels(img.labels)
    t = img.target
    validate_digest(t.digest)
    if t.size <= 0:
        raise InvalidArgument(f"image {img.name!r}: target size must be greater than zero")
    if not t.media_type:
        raise InvalidArgument(f"image {img.name!r}: target media type must not be empty")


def validate_labels(labels: Mapping[str, str]) -> None:
    for k, v in labels.items():
        if not k:
            raise InvalidArgument("a label key must not be empty")
        if len(k) + len(v) > MAX_LABEL_SIZE:
            raise InvalidArgument(f"label {k[:40]!r} is longer than {MAX_LABEL_SIZE} bytes")


def _row_to_image(row: Any) -> Image:
    return Image(
        name=row["name"],
        target=Descriptor.from_oci(json.loads(row["target"])),
        labels=dict(json.loads(row["labels"] or "{}")),
        created_at=int(row["created_at"]),
        updated_at=int(row["updated_at"]),
    )


def _dumps(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


class ImageStore:
    """CRUD over the ``images`` table; every method takes the namespace explicitly."""

    def __init__(self, db: MetadataDB,
                 publish: Callable[[str, str, dict[str, Any]], None] | None = None) -> None:
        self.db = db
        self.publish = publish
        self._namespaces = NamespaceStore(db)
        db.ensure_schema("images")

    def _on_commit(self, tx: Tx, ns: str, topic: str, payload: dict[str, Any]) -> None:
        publish = self.publish
        if publish is not None:
            tx.on_commit(lambda: publish(ns, topic, payload))

    # -- reads ---------------------------------------------------------------------------------

    def get(self, ns: str, name: str) -> Image:
        row = self.db.query_one("SELECT * FROM images WHERE ns=? AND name=?", (ns, name))
        if row is None:
            raise NotFound(f"image {name!r} not found in namespace {ns!r}")
        return _row_to_image(row)

    def exists(self, ns: str, name: str) -> bool:
        return self.db.query_one("SELECT 1 FROM images WHERE ns=? AND name=?", (ns, name)) is not None

    def list(self, ns: str, filters: Iterable[str] = ()) -> list[Image]:
        """Images in ``ns`` matching any of ``filters`` (containerd's grammar on ``name``,
        ``target.digest``, ``target.mediatype``, ``labels.<k>``, ``annotations.<k>``), sorted by name."""
        rows = self.db.query("SELECT * FROM images WHERE ns=? ORDER BY name", (ns,))
        imgs = [_row_to_image(r) for r in rows]
        flt = [f for f in filters if f]
        if not flt:
            return imgs
        f = filters_mod.parse(flt)
        return [i for i in imgs if f.match(filters_mod.dict_adaptor(_adapt(i)))]

    def by_target(self, ns: str, digest: str) -> builtins.list[Image]:
        rows = self.db.query(
            "SELECT * FROM images WHERE ns=? AND json_extract(target, '$.digest')=? ORDER BY name",
            (ns, digest),
        )
        return [_row_to_image(r) for r in rows]

    def namespaces_in_use(self) -> builtins.list[str]:
        return [r[0] for r in self.db.query("SELECT DISTINCT ns FROM images ORDER BY ns")]

    # -- writes --------------------------------------------------------------------------------

    def create(self, ns: str, img: Image) -> Image:
        """Create a record; AlreadyExists if the name is taken."""
        validate_image(img)
        now = now_ns()
        out = replace(img, created_at=img.created_at or now, updated_at=now, labels=dict(img.labels))
        with self.db.tx() as tx:
            self._namespaces.ensure(ns)
            if tx.execute("SELECT 1 FROM images WHERE ns=? AND name=?", (ns, img.name)).fetchone():
                raise AlreadyExists(f"image {img.name!r} already exists in namespace {ns!r}")
            tx.execute(
                "INSERT INTO images(ns, name, target, labels, created_at, updated_at) VALUES(?,?,?,?,?,?)",
                (ns, out.name, _dumps(out.target.to_oci()), _dumps(out.labels), out.created_at,
                 out.updated_at),
            )
            self._on_commit(tx, ns, "/images/create", {"name": out.name, "labels": dict(out.labels)})
        return out

    def update(self, ns: str, img: Image, fieldpaths: Iterable[str] = ()) -> Image:
        """Update ``labels``/``labels.<k>``, ``target`` or ``annotations``/``annotations.<k>`` (the
        target's); no ``fieldpaths`` means labels and target.  NotFound if the record is missing."""
        paths = list(fieldpaths)
        with self.db.tx() as tx:
            row = tx.execute("SELECT * FROM images WHERE ns=? AND name=?", (ns, img.name)).fetchone()
            if row is None:
                raise NotFound(f"image {img.name!r} not found in namespace {ns!r}")
            cur = _row_to_image(row)
            labels = dict(cur.labels)
            target = cur.target
            if not paths:
                labels = dict(img.labels)
                target = img.target
            for p in paths:
                if p == "labels":
                    labels = dict(img.labels)
                elif p.startswith("labels."):
                    k = p[len("labels."):]
                    if img.labels.get(k):
                        labels[k] = img.labels[k]
                    else:
                        labels.pop(k, None)
                elif p == "target":
                    target = img.target
                elif p == "annotations":
                    target = replace(target, annotations=dict(img.target.annotations))
                elif p.startswith("annotations."):
                    k = p[len("annotations."):]
                    ann = dict(target.annotations)
                    if img.target.annotations.get(k):
                        ann[k] = img.target.annotations[k]
                    else:
                        ann.pop(k, None)
                    target = replace(target, annotations=ann)
                else:
                    raise InvalidArgument(
                        f"cannot update field {p!r} of an image (only {', '.join(UPDATABLE)})")
            out = replace(cur, labels={k: v for k, v in labels.items() if v != ""}, target=target,
                          updated_at=now_ns())
            validate_image(out)
            tx.execute(
                "UPDATE images SET target=?, labels=?, updated_at=? WHERE ns=? AND name=?",
                (_dumps(out.target.to_oci()), _dumps(out.labels), out.updated_at, ns, out.name),
            )
            self._on_commit(tx, ns, "/images/update", {"name": out.name, "labels": dict(out.labels)})
        if target.digest != cur.target.digest:
            self.db.mutated("update")
        return out

    def create_or_update(self, ns: str, img: Image) -> tuple[Image, bool]:
        """Create the record, or point an existing one at ``img.target`` with ``img.labels`` merged
        over its labels.  Returns the record and whether it was created."""
        validate_image(img)
        with self.db.tx() as tx:
            row = tx.execute("SELECT * FROM images WHERE ns=? AND name=?", (ns, img.name)).fetchone()
            if row is None:
                return self.create(ns, img), True
            cur = _row_to_image(row)
            merged = replace(img, labels={**cur.labels, **img.labels})
            return self.update(ns, merged, ("labels", "target")), False

    def delete(self, ns: str, name: str) -> Image:
        """Remove the record (only the record: the GC collects the content it held)."""
        with self.db.tx() as tx:
            row = tx.execute("SELECT * FROM images WHERE ns=? AND name=?", (ns, name)).fetchone()
            if row is None:
                raise NotFound(f"image {name!r} not found in namespace {ns!r}")
            tx.execute("DELETE FROM images WHERE ns=? AND name=?", (ns, name))
            self._on_commit(tx, ns, "/images/delete", {"name": name})
        self.db.mutated("delete")
        return _row_to_image(row)


def _adapt(img: Image) -> dict[str, Any]:
    return {
        "name": img.name,
        "target": {"digest": img.target.digest, "mediatype": img.target.media_type,
                   "size": str(img.target.size)},
        "labels": dict(img.labels),
        "annotations": dict(img.target.annotations),
    }


__all__ = ["UPDATABLE", "ImageStore", "validate_image", "validate_labels"]
