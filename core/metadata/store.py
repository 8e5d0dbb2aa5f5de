"""The metadata store: the database plus the namespaced views every service uses.

Built by the ``pyctr.metadata.sqlite`` plugin.  Views are made on first use:

* :attr:`MetadataStore.namespaces` -- :class:`pyctr.metadata.namespaces.NamespaceStore`
* :attr:`MetadataStore.content` -- :class:`pyctr.metadata.content.NamespacedContentStore` over the
  backend ``content`` plugin
* :meth:`MetadataStore.snapshotter` -- :class:`pyctr.metadata.snapshots.NamespacedSnapshotter` over a
  backend ``snapshot`` plugin, by name
* :attr:`MetadataStore.leases` -- :class:`pyctr.metadata.leases.LeaseManager`
"""

from __future__ import annotations

import logging
import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any

from .db import MetadataDB

if TYPE_CHECKING:
    from ..registry import Registry
    from .content import NamespacedContentStore
    from .leases import LeaseManager
    from .namespaces import NamespaceStore
    from .snapshots import NamespacedSnapshotter

log = logging.getLogger("pyctr.metadata")

DEFAULT_SNAPSHOTTER = "overlayfs"


class MetadataStore:
    def __init__(self, db: MetadataDB, registry: Registry) -> None:
        self.db = db
        self._registry = registry
        self._snapshotters: dict[str, NamespacedSnapshotter] = {}
        self._lock = threading.Lock()
        self._gc_loaded = False
        db.add_mutation_hook(self._load_gc_on_delete)

    def _load_gc_on_delete(self, kind: str) -> None:
        """On the first deletion, initialise the ``gc`` plugin(s): a scheduler hooks itself onto this
        database as it initialises, and so hears this deletion too (hooks added while the hooks run are
        called in the same round), which it collects later -- or when closed, in one-shot use."""
        if kind != "delete" or self._gc_loaded:
            return
        self._gc_loaded = True
        try:
            self._registry.get_all("gc")
        except Exception:
            log.warning("cannot load the garbage collector", exc_info=True)

    @cached_property
    def namespaces(self) -> NamespaceStore:
        from .namespaces import NamespaceStore

        return NamespaceStore(self.db, publish=self._publish_global)

    @cached_property
    def content(self) -> NamespacedContentStore:
        from .content import NamespacedContentStore

        return NamespacedContentStore(self.db, self._registry.get("content"), publish=self.publish)

    @cached_property
    def leases(self) -> LeaseManager:
        from .leases import LeaseManager

        return LeaseManager(self.db, publish=self.publish)

    def publish(self, ns: str, topic: str, payload: dict[str, Any]) -> None:
        """Publish an event on the process's exchange (stores call this after their commits)."""
        self._registry.events.publish(ns, topic, payload)

    def _publish_global(self, topic: str, payload: dict[str, Any]) -> None:
        self._registry.events.publish(str(payload.get("name", "")), topic, payload)

    def snapshotter(self, name: str | None = None) -> NamespacedSnapshotter:
        """The namespaced view of the snapshot plugin named ``name`` (default: overlayfs, else the first
        snapshotter that loaded)."""
        from .snapshots import NamespacedSnapshotter

        if name is None:
            name = self.default_snapshotter()
        with self._lock:
            sn = self._snapshotters.get(name)
            if sn is None:
                backend = self._registry.get_named("snapshot", name)
                short = name.rsplit(".", 1)[-1]
                sn = NamespacedSnapshotter(self.db, short, backend, publish=self.publish)
                self._snapshotters[name] = sn
            return sn

    def snapshotter_names(self) -> list[str]:
        return list(self._registry.get_all("snapshot"))

    def default_snapshotter(self) -> str:
        names = self.snapshotter_names()
        if DEFAULT_SNAPSHOTTER in names or not names:
            return DEFAULT_SNAPSHOTTER
        return names[0]

    def close(self) -> None:
        self.db.close()

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"MetadataStore has no attribute {name!r}")
