"""The event bus's dispatch path (both implementations) and the exchange on top of it."""

from __future__ import annotations

import threading
import time
from types import ModuleType
from typing import Any

import pytest
from conftest import Speedups
from pyctr import filters
from pyctr.errdefs import InvalidArgument
from pyctr.events.exchange import Exchange


@pytest.fixture
def bus(speedups: Speedups) -> ModuleType:
    return speedups.load("eventbus")


def _sub(mod: ModuleType, b: Any, *flts: str, maxsize: int = 1024) -> Any:
    return b.subscribe(mod.Matcher(filters.parse(list(flts)) if flts else None), maxsize)


def test_fan_out_with_filters(bus: ModuleType) -> None:
    b = bus.Bus()
    everything = _sub(bus, b)
    tasks = _sub(bus, b, 'topic~="^/tasks/"')
    exits_in_ns = _sub(bus, b, 'topic=="/tasks/exit",namespace==other')
    or_ed = _sub(bus, b, 'topic=="/images/create"', "namespace==other")
    by_payload = _sub(bus, b, "event.container_id==c1")
    b.publish("default", "/tasks/exit", {"container_id": "c1", "exit_status": 3})
    b.publish("other", "/tasks/exit", {"container_id": "c2"})
    b.publish("default", "/images/create", {"name": "x"})
    b.publish("other", "/containers/create", {"id": "y"})

    def topics(s: Any) -> list[tuple[str, str]]:
        return [(e.namespace, e.topic) for e in s.drain()]

    assert topics(everything) == [("default", "/tasks/exit"), ("other", "/tasks/exit"),
                                  ("default", "/images/create"), ("other", "/containers/create")]
    assert topics(tasks) == [("default", "/tasks/exit"), ("other", "/tasks/exit")]
    assert topics(exits_in_ns) == [("other", "/tasks/exit")]
    assert topics(or_ed) == [("other", "/tasks/exit"), ("default", "/images/create"),
                             ("other", "/containers/create")]
    assert topics(by_payload) == [("default", "/tasks/exit")]
    assert b.published == {"/tasks/exit": 2, "/images/create": 1, "/containers/create": 1}
    assert b.delivered["/tasks/exit"] == 2 + 2 + 1 + 1 + 1


def test_ne_and_presence(bus: ModuleType) -> None:
    b = bus.Bus()
    ne = _sub(bus, b, "namespace!=default")
    has = _sub(bus, b, "event.pid")
    b.publish("default", "/tasks/start", {"pid": 12})
    b.publish("k8s.io", "/tasks/delete", {})
    assert [e.namespace for e in ne.drain()] == ["k8s.io"]
    assert [e.topic for e in has.drain()] == ["/tasks/start"]


def test_slow_subscriber_overflow_is_counted_and_reported(bus: ModuleType) -> None:
    b = bus.Bus()
    slow = _sub(bus, b, maxsize=4)
    fast = _sub(bus, b, maxsize=100)
    for i in range(10):
        b.publish("default", "/tasks/exit", {"i": i})
    assert len(fast) == 10  # the slow one never held the fast one back
    assert slow.dropped == 6
    first = slow.get_nowait()
    assert first.topic == bus.OVERFLOW_TOPIC and first.event == {"dropped": 6}
    assert [e.event["i"] for e in slow.drain()] == [0, 1, 2, 3]
    assert b.dropped == {"/tasks/exit": 6}
    assert slow.get_nowait() is None


def test_blocking_get_wakes_on_publish(bus: ModuleType) -> None:
    b = bus.Bus()
    s = _sub(bus, b)
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(s.get(5)))
    t.start()
    time.sleep(0.05)
    b.publish("default", "/tasks/start", {"pid": 1})
    t.join(5)
    assert got and got[0].topic == "/tasks/start"
    assert s.get(0.01) is None  # times out empty


def test_eventfd_readable_when_non_empty(bus: ModuleType) -> None:
    import os
    import select

    b = bus.Bus()
    s = _sub(bus, b)
    fd = s.fileno()
    try:
        assert select.select([fd], [], [], 0)[0] == []
        b.publish("default", "/tasks/start", {})
        b.publish("default", "/tasks/exit", {})
        assert select.select([fd], [], [], 1)[0] == [fd]
        os.eventfd_read(fd)
        assert len(s.drain()) == 2
        assert select.select([fd], [], [], 0)[0] == []
    finally:
        s.close()
        s.release()


def test_unsubscribe_stops_delivery_and_wakes_reader(bus: ModuleType) -> None:
    b = bus.Bus()
    s = _sub(bus, b)
    assert b.subscribers == 1
    b.unsubscribe(s)
    assert b.subscribers == 0
    b.publish("default", "/tasks/start", {})
    assert s.get(0.5) is None and s.closed


def test_envelope_round_trip(bus: ModuleType) -> None:
    env = bus.Envelope(123, "ns", "/tasks/exit", {"exit_status": 1})
    assert bus.Envelope.from_dict(env.to_dict()) == env
    assert env.to_dict() == {"timestamp": 123, "namespace": "ns", "topic": "/tasks/exit",
                             "event": {"exit_status": 1}}


def test_exchange_validates_topics_and_filters() -> None:
    ex = Exchange()
    with pytest.raises(InvalidArgument):
        ex.publish("default", "tasks/exit", {})
    with pytest.raises(InvalidArgument):
        ex.publish("default", "/tasks/ex it", {})
    with pytest.raises(InvalidArgument):
        ex.subscribe(['topic=="unterminated'])
    with ex.subscribe('topic=="/tasks/exit"') as sub:
        ex.publish("default", "/tasks/exit", {"container_id": "a"})
        env = sub.get(1)
        assert env is not None and env.event == {"container_id": "a"}
        forwarded = ex.forward({"timestamp": 5, "namespace": "n2", "topic": "/tasks/exit", "event": {}})
        assert sub.get(1) == forwarded and forwarded.timestamp == 5
    assert ex.subscribers == 0
    assert ex.stats()["published"]["/tasks/exit"] == 2


def test_exchange_calls_plugin_hook() -> None:
    import pluggy
    from pyctr import hookspecs

    seen: list[str] = []

    class Plugin:
        @hookspecs.hookimpl
        def pyctr_event_published(self, envelope: Any) -> None:
            seen.append(envelope.topic)

    pm = pluggy.PluginManager("pyctr")
    pm.add_hookspecs(hookspecs)
    pm.register(Plugin())
    Exchange(pm).publish("default", "/images/create", {"name": "x"})
    assert seen == ["/images/create"]


def test_compiled_bus_is_in_use_when_built() -> None:
    import os

    from pyctr._speedups import eventbus

    if os.environ.get("PYCTR_NO_EXTENSIONS"):
        assert eventbus.IMPLEMENTATION == "py"
    elif os.environ.get("PYCTR_REQUIRE_EXTENSIONS"):
        assert eventbus.IMPLEMENTATION == "c"
