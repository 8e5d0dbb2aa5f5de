"""``pyctr.Client``: one API over the embedded core or the daemon.

``Client(root=..., state=...)`` runs the core in this process; ``Client(address=...)`` talks to
``pyctrd`` over its unix socket.  Every call takes the client's namespace (``namespace=``, default
``default``) unless given another.
"""

from __future__ import annotations

import os
from typing import Any

from . import config as _config
from .engine import Engine
from .errdefs import InvalidArgument

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
    ) -> None:
        if address:
            raise InvalidArgument("remote clients need the daemon, which this version of pyctr does not ship yet")
        self.namespace = namespace
        cfg = config if isinstance(config, _config.Config) else _config.load(config, root=root, state=state)
        if root:
            cfg.root = os.path.abspath(root)
        if state:
            cfg.state = os.path.abspath(state)
        self.config = cfg
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine(self.config)
        return self._engine

    def plugin(self, type_: str, name: str | None = None) -> Any:
        return self.engine.plugin(type_, name)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
