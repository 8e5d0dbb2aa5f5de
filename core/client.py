"""``pyctr.Client``: one API over the embedded core or the daemon.

``Client(root=..., state=...)`` runs the core in this process; ``Client(address=...)`` talks to
``pyctrd`` over its unix socket.  The same calls work in both modes::

    from pyctr import Client

    with Client(root="/tmp/demo/root", state="/tmp/demo/state") as c:
        images = c.plugin("images")
        for img in images.list(c.namespace, []):
            print(img.name)

In remote mode :meth:`Client.plugin` returns a proxy for the daemon's plugin: its methods take the
same arguments and return the same values.  ``namespace`` (default ``default``) is the namespace
services are called with by the CLI and by convenience methods here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from . import config as _config
from .engine import Engine

DEFAULT_NAMESPACE = "default"


class Client:
    def __init__(
        self,
        *,
        root: str | None = None,
        state: str | None = None,
        address: str | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        config: str | _config.Config | None = None,
        connect_timeout: float = 2.0,
    ) -> None:
        self.namespace = namespace
        self.address = address
        self._conn: Any = None
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        if address:
            from .rpc.client import Connection

            self._conn = Connection(address, connect_timeout=connect_timeout)
            self.config = _config.Config()
            return
        cfg = config if isinstance(config, _config.Config) else _config.load(config, root=root, state=state)
        if root:
            cfg.root = os.path.abspath(root)
        if state:
            cfg.state = os.path.abspath(state)
        self.config = cfg

    @property
    def remote(self) -> bool:
        """True when this client talks to a daemon."""
        return self._conn is not None

    @property
    def engine(self) -> Any:
        """The core: an :class:`~pyctr.engine.Engine` in this process, or a proxy for the daemon's."""
        if self._conn is not None:
            return self._conn.root.engine
        with self._lock:
            if self._engine is None:
                self._engine = Engine(self.config)
            return self._engine

    def plugin(self, type_: str, name: str | None = None) -> Any:
        """The plugin of ``type_`` (by short name when several are loaded, e.g. snapshotters)."""
        if self._conn is not None:
            return self._conn.root.plugin(type_, name)
        return self.engine.plugin(type_, name)

    def version(self) -> dict[str, Any] | None:
        """The daemon's version information, or None for an embedded client."""
        if self._conn is None:
            return None
        v: dict[str, Any] = self._conn.root.version()
        return v

    def subscribe(self, filters: Iterable[str] | str | None = None) -> Iterator[dict[str, Any]]:
        """Events as envelope dicts (``timestamp``, ``namespace``, ``topic``, ``event``), live.

        Remote clients see every event the daemon publishes; an embedded client sees the events of its
        own process only.
        """
        flt = [filters] if isinstance(filters, str) else list(filters or [])
        if self._conn is not None:
            it: Iterator[dict[str, Any]] = self._conn.root.subscribe_events(flt)
            return it
        sub = self.engine.events.subscribe(flt)

        def gen() -> Iterator[dict[str, Any]]:
            with sub:
                for env in sub:
                    yield env.to_dict()

        return gen()

    def batch_run(self, specs: Iterable[Any] | None = None, **kw: Any) -> Any:
        """Launch containers in bulk (see :mod:`pyctr.batch`): ``specs`` (:class:`~pyctr.batch.BatchSpec`
        or dicts) or ``image=``, ``args=``, ``count=``; also ``parallel``, ``rm``, ``detach``,
        ``group_size``, ``labels``, ``batch_id``, ``mode``, ``rootfs``.  Yields a
        :class:`~pyctr.batch.BatchResult` per container as it finishes (and
        :class:`~pyctr.batch.BatchProgress` ticks with ``progress=True``); closing the iterator
        (:class:`~pyctr.batch.BatchStream`) early stops the batch and cleans up."""
        from .batch import batch_results

        return batch_results(self, specs, **kw)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        if self._conn is not None:
            self._conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
