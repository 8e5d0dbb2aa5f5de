"""Snapshots: kinds, info, usage, mounts, and the snapshotter interface.

Two layers, as in containerd:

* a *backend* snapshotter (a ``snapshot`` plugin, e.g. ``pyctr.snapshot.overlayfs``) keeps snapshots
  by key, once per root, with no notion of namespaces (:class:`Snapshotter`);
* the *namespaced* view (:class:`pyctr.metadata.snapshots.NamespacedSnapshotter`) keeps per-namespace
  records and maps each key to a backend key ``<ns>/<seq>/<key>``; every call takes ``ns`` first.

A snapshot is *Active* (writable, made by :meth:`Snapshotter.prepare`), a *View* (read-only, made by
:meth:`Snapshotter.view`) or *Committed* (made from an active one by :meth:`Snapshotter.commit`; only
committed snapshots can be parents).  Keys and names share one namespace.  Every object here converts
to and from plain dicts, so it can go over the wire unchanged.

A third-party snapshotter implements :class:`Snapshotter`, registers a ``snapshot`` plugin, and runs
the conformance suite in :mod:`pyctr.testsuite.snapshots` against itself.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .errdefs import InvalidArgument

#: Label prefix of the labels a backend keeps (the others stay in the namespaced metadata only).
INHERITED_LABEL_PREFIX = "containerd.io/snapshot/"
#: The label an unpacker sets on Prepare (and Commit) to the layer's chain ID (remote snapshotters,
#: and snapshots shared across namespaces).
LABEL_SNAPSHOT_REF = "containerd.io/snapshot.ref"
#: Labels a snapshot may carry that snapshotters understand.
LABEL_UID_MAPPING = "containerd.io/snapshot/uidmapping"
LABEL_GID_MAPPING = "containerd.io/snapshot/gidmapping"


class Kind(enum.StrEnum):
    """A snapshot's kind.  The value is containerd's spelling (``View``, ``Active``, ``Committed``);
    filters use :attr:`filter_value` (lower case), as containerd's adaptor does."""

    VIEW = "View"
    ACTIVE = "Active"
    COMMITTED = "Committed"

    @property
    def filter_value(self) -> str:
        return self.value.lower()

    @classmethod
    def parse(cls, value: str | Kind) -> Kind:
        if isinstance(value, Kind):
            return value
        for k in cls:
            if k.value.lower() == str(value).lower():
                return k
        raise InvalidArgument(f"unknown snapshot kind {value!r} (want View, Active or Committed)")


@dataclass
class Info:
    """What a snapshotter knows of one snapshot.  Times are ns since the epoch."""

    kind: Kind
    name: str
    parent: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    created_at: int = 0
    updated_at: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "name": self.name,
            "parent": self.parent,
            "labels": dict(self.labels),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Info:
        return cls(
            kind=Kind.parse(d["kind"]),
            name=str(d["name"]),
            parent=str(d.get("parent") or ""),
            labels=dict(d.get("labels") or {}),
            created_at=int(d.get("created_at") or 0),
            updated_at=int(d.get("updated_at") or 0),
        )

    def filter_fields(self) -> dict[str, Any]:
        """The fields filters see: ``name``, ``parent``, ``kind`` (lower case) and ``labels``."""
        return {"name": self.name, "parent": self.parent, "kind": self.kind.filter_value,
                "labels": dict(self.labels)}


@dataclass
class Usage:
    """Disk space a snapshot uses on its own (not counting its parents): bytes and inodes."""

    size: int = 0
    inodes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "inodes": self.inodes}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Usage:
        return cls(size=int(d.get("size") or 0), inodes=int(d.get("inodes") or 0))

    def add(self, other: Usage) -> Usage:
        return Usage(self.size + other.size, self.inodes + other.inodes)


@dataclass
class Mount:
    """One mount, as ``mount(8)`` would take it: ``type``, ``source``, fstab-style ``options``.

    ``target`` is a path relative to the mount point (empty: the mount point itself).
    """

    type: str
    source: str
    options: list[str] = field(default_factory=list)
    target: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type, "source": self.source, "options": list(self.options)}
        if self.target:
            d["target"] = self.target
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Mount:
        try:
            return cls(
                type=str(d["type"]),
                source=str(d["source"]),
                options=[str(o) for o in d.get("options") or ()],
                target=str(d.get("target") or ""),
            )
        except KeyError as e:
            raise InvalidArgument(f"mount without {e.args[0]!r}: {dict(d)!r}") from None

    @property
    def readonly(self) -> bool:
        """True when the mount is read-only (``ro`` option, or an overlay without an upper dir)."""
        if "ro" in self.options:
            return True
        return self.type == "overlay" and not any(o.startswith("upperdir=") for o in self.options)


def mounts_to_dicts(mounts: Iterable[Mount]) -> list[dict[str, Any]]:
    return [m.to_dict() for m in mounts]


def mounts_from_dicts(items: Iterable[Mapping[str, Any]]) -> list[Mount]:
    return [Mount.from_dict(d) for d in items]


def filter_inherited_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """The labels a backend snapshotter receives: ``containerd.io/snapshot/*`` and
    ``containerd.io/snapshot.ref`` (containerd's ``FilterInheritedLabels``)."""
    if not labels:
        return {}
    return {
        k: v for k, v in labels.items() if k.startswith(INHERITED_LABEL_PREFIX) or k == LABEL_SNAPSHOT_REF
    }


def validate_key(key: str, what: str = "snapshot key") -> str:
    """A key or name must be a non-empty string without NUL bytes."""
    if not isinstance(key, str) or not key:
        raise InvalidArgument(f"{what} must not be empty")
    if "\x00" in key:
        raise InvalidArgument(f"{what} {key!r} contains a NUL byte")
    return key


@runtime_checkable
class Snapshotter(Protocol):
    """A backend snapshotter (no namespaces).

    * :meth:`prepare` makes an *Active* snapshot ``key`` on top of the committed ``parent`` (``""``: an
      empty one) and returns the mounts that give its writable tree; an existing key is AlreadyExists,
      a missing parent NotFound, a parent that is not committed InvalidArgument.
    * :meth:`view` is the same, read-only (a *View*).
    * :meth:`commit` turns the active ``key`` into the committed ``name``; ``key`` goes away.
    * :meth:`remove` removes a snapshot; one with children is FailedPrecondition.
    * :meth:`mounts` returns the mounts of an active or view snapshot (FailedPrecondition otherwise).
    * :meth:`update` changes labels only: with ``fieldpaths`` (``labels`` or ``labels.<key>``) only those
      labels are replaced, otherwise all of them; returns the new info.
    * :meth:`usage` is this snapshot's own disk use (not its parents').
    * :meth:`walk` yields every snapshot matching any of ``filters`` (containerd filter syntax over
      ``name``, ``parent``, ``kind`` and ``labels.<key>``).
    * :meth:`close` releases resources; an optional ``cleanup()`` removes leftovers of removed snapshots.
    """

    def stat(self, key: str) -> Info: ...

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info: ...

    def usage(self, key: str) -> Usage: ...

    def mounts(self, key: str) -> list[Mount]: ...

    def prepare(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]: ...

    def view(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]: ...

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None: ...

    def remove(self, key: str) -> None: ...

    def walk(self, filters: Sequence[str] = ()) -> Iterator[Info]: ...

    def close(self) -> None: ...


def apply_label_update(
    current: Mapping[str, str], new: Mapping[str, str], fieldpaths: Sequence[str]
) -> dict[str, str]:
    """Labels after an update: all of ``new`` when no field paths are given (or ``labels`` is one),
    otherwise only the named ``labels.<key>`` (a key absent from ``new`` or empty there is removed).

    Field paths other than ``labels``/``labels.<key>`` are InvalidArgument: only labels can change.
    """
    if not fieldpaths:
        return {k: v for k, v in new.items() if v != ""}
    out = dict(current)
    for fp in fieldpaths:
        if fp == "labels":
            return {k: v for k, v in new.items() if v != ""}
        if fp.startswith("labels."):
            k = fp[len("labels."):]
            if new.get(k):
                out[k] = new[k]
            else:
                out.pop(k, None)
            continue
        raise InvalidArgument(f"cannot update {fp!r} of a snapshot: only labels can change")
    return out


__all__ = [
    "INHERITED_LABEL_PREFIX",
    "LABEL_SNAPSHOT_REF",
    "Info",
    "Kind",
    "Mount",
    "Snapshotter",
    "Usage",
    "apply_label_update",
    "filter_inherited_labels",
    "mounts_from_dicts",
    "mounts_to_dicts",
    "validate_key",
]
