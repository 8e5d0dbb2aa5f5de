"""Every hook a pyctr plugin can implement, in one place.

Plugins are ordinary Python distributions that name a module in the entry-point group
``pyctr.plugins``; pyctr's own built-in plugins are registered the same way, through the project's own
entry points.  The module implements hooks with :data:`pyctr.hookimpl`::

    from pyctr import hookimpl
    from pyctr.registry import Registration, PluginType

    @hookimpl
    def pyctr_plugin_registrations() -> list[Registration]:
        return [Registration(type=PluginType.SNAPSHOT, id="acme.snapshot.zfs", init=_init)]

Hook names carry the ``pyctr_`` prefix and read noun-then-verb.  Hooks marked *historic* are replayed
to plugins registered late; *firstresult* hooks stop at the first non-``None`` answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .events.envelope import Envelope
    from .registry import Registration

hookspec = pluggy.HookspecMarker("pyctr")
hookimpl = pluggy.HookimplMarker("pyctr")

# ---------------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------------


@hookspec
def pyctr_plugin_registrations() -> list[Registration]:
    """Return the plugins this module provides.

    Each :class:`~pyctr.registry.Registration` names the plugin's type and id, what it requires, its
    default configuration, the platforms it supports and the function that initialises it.  The core's
    registry orders all registrations by their requirements and initialises them on first use.

    :return: a list of registrations (possibly empty).
    """
    raise NotImplementedError


# ---------------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------------


@hookspec
def pyctr_event_published(envelope: Envelope) -> None:
    """Called in the publishing process for every event published on the bus.

    Runs on the publisher's thread after the event has been queued to subscribers; keep it fast and
    never raise (an exception is logged and swallowed).

    :param envelope: the event's envelope (timestamp, namespace, topic, payload).
    """


# ---------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------


@hookspec
def pyctr_metrics_collectors(engine: Any) -> list[Any]:
    """Return extra prometheus_client collectors to serve at ``/v1/metrics``.

    :param engine: the running :class:`pyctr.engine.Engine`, for access to plugins.
    :return: a list of objects with a ``collect()`` method, as prometheus_client expects.
    """
    raise NotImplementedError


# ---------------------------------------------------------------------------------------------------
# Daemon life cycle
# ---------------------------------------------------------------------------------------------------


@hookspec
def pyctr_daemon_started(engine: Any) -> None:
    """Called once in ``pyctrd`` after every plugin has been initialised and the socket listens.

    Start background work here (timers, watchers, reconnecting to live shims).  Embedded clients never
    call it.

    :param engine: the daemon's :class:`pyctr.engine.Engine`.
    """


@hookspec
def pyctr_daemon_stopping(engine: Any) -> None:
    """Called once when ``pyctrd`` shuts down, before plugins are closed.  Stop background work here.

    :param engine: the daemon's :class:`pyctr.engine.Engine`.
    """
