"""Event bus: events per second and publish-to-deliver latency, Cython against the pure-Python twin,
in the same run.

    python bench/bench_events.py [--events N]

Throughput: one publisher thread publishes N events while each subscriber drains its queue from its
own thread (queues sized so nothing is dropped); rate = N / time until every subscriber has all N.
Latency: single events published one at a time to a subscriber blocked in ``get()`` on another thread;
p50/p99 of (receive time - envelope timestamp).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import threading
import time
from typing import Any


def throughput(mod: Any, n: int, nsubs: int) -> float:
    bus = mod.Bus()
    subs = [bus.subscribe(mod.Matcher(), n + 16) for _ in range(nsubs)]
    counts = [0] * nsubs
    done = threading.Event()

    def drain(i: int) -> None:
        s = subs[i]
        while counts[i] < n:
            got = s.drain(4096)
            if not got:
                time.sleep(0.0005)
            counts[i] += len(got)

    ts = [threading.Thread(target=drain, args=(i,)) for i in range(nsubs)]
    payload = {"container_id": "c1", "pid": 4242, "exit_status": 0}
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    pub = bus.publish
    for _ in range(n):
        pub("default", "/tasks/exit", payload)
    for t in ts:
        t.join()
    done.set()
    return n / (time.perf_counter() - t0)


def publish_only(mod: Any, n: int) -> float:
    """Publish rate with one subscriber whose queue takes everything (no consumer thread)."""
    bus = mod.Bus()
    bus.subscribe(mod.Matcher(), n + 16)
    payload = {"container_id": "c1", "pid": 4242, "exit_status": 0}
    pub = bus.publish
    t0 = time.perf_counter()
    for _ in range(n):
        pub("default", "/tasks/exit", payload)
    return n / (time.perf_counter() - t0)


def latency(mod: Any, n: int, nsubs: int) -> tuple[float, float]:
    bus = mod.Bus()
    subs = [bus.subscribe(mod.Matcher(), 1024) for _ in range(nsubs)]
    lat: list[float] = []
    ready = threading.Barrier(nsubs + 1)

    def wait(s: Any, record: bool) -> None:
        ready.wait()
        for _ in range(n):
            env = s.get(5)
            if record:
                lat.append((time.time_ns() - env.timestamp) / 1000)

    ts = [threading.Thread(target=wait, args=(s, i == nsubs - 1)) for i, s in enumerate(subs)]
    for t in ts:
        t.start()
    ready.wait()
    for _ in range(n):
        bus.publish("default", "/tasks/exit", {"pid": 1})
        time.sleep(0.0002)
    for t in ts:
        t.join()
    lat.sort()
    return statistics.median(lat), lat[int(len(lat) * 0.99) - 1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    a = ap.parse_args()
    mods = {"c": importlib.import_module("pyctr._speedups._eventbus_c"),
            "py": importlib.import_module("pyctr._speedups._eventbus_py")}
    res: dict[str, dict[str, Any]] = {}
    for name, mod in mods.items():
        r: dict[str, Any] = {}
        r["publish_only_1"] = publish_only(mod, a.events)
        r["throughput_1"] = throughput(mod, a.events, 1)
        r["throughput_16"] = throughput(mod, a.events // 10, 16)
        r["latency_1"] = latency(mod, 2000, 1)
        r["latency_16"] = latency(mod, 1000, 16)
        res[name] = r
    print(f"{'measure':<40}{'cython':>14}{'python':>14}{'ratio':>8}")
    for key, label in (("publish_only_1", "publish, 1 subscriber (events/s)"),
                       ("throughput_1", "publish+deliver, 1 subscriber (ev/s)"),
                       ("throughput_16", "publish+deliver, 16 subscribers (ev/s)")):
        c, p = res["c"][key], res["py"][key]
        print(f"{label:<40}{c:>14,.0f}{p:>14,.0f}{c / p:>7.1f}x")
    for key, label in (("latency_1", "latency p50/p99, 1 sub (us)"),
                       ("latency_16", "latency p50/p99, 16 subs (us)")):
        c, p = res["c"][key], res["py"][key]
        print(f"{label:<40}{c[0]:>6.0f}/{c[1]:<7.0f}{p[0]:>6.0f}/{p[1]:<7.0f}")


if __name__ == "__main__":
    main()
