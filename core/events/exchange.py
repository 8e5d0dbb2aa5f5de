"""The exchange: publish, forward and subscribe, on the compiled dispatch path.

One :class:`Exchange` per process that serves events (the daemon, or an embedded client).  Publishing
validates the topic, fans the envelope out to matching subscribers without ever blocking on them, and
calls the ``pyctr_event_published`` hook so plugins can observe every event.  Subscribers receive
envelopes from a bounded queue; when a slow subscriber's queue is full its new events are dropped and
counted, and it is told how many in an ``/events/overflow`` envelope.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .. import filters as _filters
from .._speedups.eventbus import Bus, Envelope, Matcher, Subscriber
from .envelope import validate_topic

if TYPE_CHECKING:
    import pluggy

log = logging.getLogger("pyctr.events")

DEFAULT_QUEUE_SIZE = 4096


class Subscription:
    """An open subscription: iterate it, or call :meth:`get`; close it when done (or use ``with``)."""

    def __init__(self, exchange: Exchange, sub: Subscriber) -> None:
        self._exchange = exchange
        self._sub = sub

    @property
    def dropped(self) -> int:
        return int(self._sub.dropped)

    def get(self, timeout: float | None = None) -> Envelope | None:
        return self._sub.get(timeout)

    def drain(self, limit: int = 1 << 30) -> list[Envelope]:
        return list(self._sub.drain(limit))

    def fileno(self) -> int:
        return int(self._sub.fileno())

    def __iter__(self) -> Iterator[Envelope]:
        while True:
            env = self._sub.get(None)
            if env is None:
                return
            yield env

    def close(self) -> None:
        self._exchange._bus.unsubscribe(self._sub)
        self._sub.release()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Exchange:
    def __init__(self, plugin_manager: pluggy.PluginManager | None = None) -> None:
        self._bus = Bus()
        self._pm = plugin_manager

    def publish(self, namespace: str, topic: str, event: Mapping[str, Any] | None = None) -> Envelope:
        """Publish ``event`` under ``topic`` in ``namespace``; returns the envelope sent."""
        validate_topic(topic)
        env: Envelope = self._bus.publish(namespace, topic, event)
        self._notify(env)
        return env

    def forward(self, envelope: Envelope | Mapping[str, Any]) -> Envelope:
        """Re-publish an envelope made elsewhere (a shim), keeping its namespace and timestamp."""
        env = envelope if isinstance(envelope, Envelope) else Envelope.from_dict(envelope)
        validate_topic(env.topic)
        self._bus.forward(env)
        self._notify(env)
        return env

    def subscribe(self, filters: Iterable[str] | str | None = None, *, queue_size: int = DEFAULT_QUEUE_SIZE
                  ) -> Subscription:
        """Subscribe to envelopes matching any of ``filters`` (containerd's syntax over ``topic``,
        ``namespace`` and ``event.<field>``); InvalidArgument on a bad filter."""
        matcher = Matcher(_filters.parse(filters))
        return Subscription(self, self._bus.subscribe(matcher, queue_size))

    def stats(self) -> dict[str, dict[str, int]]:
        """Per topic: events published, deliveries, and deliveries dropped on full queues."""
        return {"published": dict(self._bus.published), "delivered": dict(self._bus.delivered),
                "dropped": dict(self._bus.dropped)}

    @property
    def subscribers(self) -> int:
        return int(self._bus.subscribers)

    def _notify(self, env: Envelope) -> None:
        if self._pm is None:
            return
        try:
            self._pm.hook.pyctr_event_published(envelope=env)
        except Exception:
            log.warning("a pyctr_event_published hook failed", exc_info=True)
