"""The in-process core: configuration, the plugin manager and the plugin registry, assembled.

The daemon runs one :class:`Engine`; an embedded :class:`pyctr.Client` runs its own.  Plugins are
initialised lazily, on first use, so a CLI call that lists content never starts a runtime plugin.
"""

from __future__ import annotations

import logging
import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any

from .config import Config
from .errdefs import FailedPrecondition
from .registry import PluginStatus, Registry, make_plugin_manager, take_prebuilt_plugin_manager

if TYPE_CHECKING:
    import pluggy

    from .events.exchange import Exchange

log = logging.getLogger("pyctr.engine")


class Engine:
    def __init__(self, config: Config, plugin_manager: pluggy.PluginManager | None = None) -> None:
        self.config = config
        if plugin_manager is None:
            plugin_manager = take_prebuilt_plugin_manager() or make_plugin_manager()
        self.pm = plugin_manager
        self.registry = Registry(config, self.pm)
        self.registry.events_source = lambda: self.events
        self.registry.load_from_plugin_manager()
        known = {r.id for r in self.registry.registrations()}
        config.warn_unknown_plugins(known)
        self._closed = False
        self._lock = threading.Lock()
        # As containerd: a required plugin that is missing or fails to load stops everything, at once.
        for pid in config.required_plugins:
            if pid not in known:
                raise FailedPrecondition(f"required plugin {pid} is not installed (required_plugins in "
                                         f"{config.path or 'the configuration'})")
            self.registry.status(pid)

    @cached_property
    def events(self) -> Exchange:
        """This process's event exchange (services publish here; subscribers read from here)."""
        from .events.exchange import Exchange

        return Exchange(self.pm)

    def plugin(self, type_: str, name: str | None = None) -> Any:
        """The plugin of ``type_`` (by short name or id when several exist)."""
        if name is None:
            return self.registry.get(type_)
        return self.registry.get_named(type_, name)

    def plugins(self, type_: str) -> dict[str, Any]:
        return self.registry.get_all(type_)

    def plugin_statuses(self) -> list[PluginStatus]:
        return self.registry.init_all()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.registry.close()
