"""RPC and remote events: round-trip latency of a small call, calls per second with 8 concurrent
clients, and events per second delivered to a remote subscriber, against a real pyctrd started here.

    python bench/bench_rpc.py [--calls N] [--events N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from pyctr import Client


def start_daemon(d: str) -> tuple[subprocess.Popen[bytes], str]:
    sock = os.path.join(d, "state", "pyctr.sock")
    exe = os.path.join(os.path.dirname(sys.executable), "pyctrd")
    proc = subprocess.Popen([exe, "--root", f"{d}/root", "--state", f"{d}/state", "--address", sock,
                             "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(sock)
            s.close()
            return proc, sock
        except OSError:
            time.sleep(0.05)
    raise SystemExit("pyctrd did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--events", type=int, default=20000)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="pyctr-bench-rpc-")
    proc, sock = start_daemon(d)
    try:
        c = Client(address=sock)
        for _ in range(200):
            c.version()
        lat = []
        for _ in range(a.calls):
            t0 = time.perf_counter()
            c.version()
            lat.append((time.perf_counter() - t0) * 1e6)
        lat.sort()
        print(f"small call round trip: p50 {statistics.median(lat):.0f} us, p99 {lat[int(len(lat) * .99)]:.0f} us")

        def worker(n: int) -> None:
            cl = Client(address=sock)
            for _ in range(n):
                cl.version()
            cl.close()

        per = a.calls // 8
        ts = [threading.Thread(target=worker, args=(per,)) for _ in range(8)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        print(f"8 concurrent clients (threads of one process): {8 * per / (time.perf_counter() - t0):,.0f} calls/s")

        procs = []
        code = (f"from pyctr import Client\nc=Client(address={sock!r})\n"
                f"for _ in range({per}): c.version()\n")
        t0 = time.perf_counter()
        for _ in range(8):
            procs.append(subprocess.Popen([sys.executable, "-c", code]))
        for p in procs:
            p.wait()
        print(f"8 concurrent client processes: {8 * per / (time.perf_counter() - t0):,.0f} calls/s "
              "(includes their start-up)")

        got = 0
        sub = Client(address=sock)
        stream = sub.subscribe(['topic=="/bench/event"'])
        done = threading.Event()

        def consume() -> None:
            nonlocal got
            for _env in stream:
                got += 1
                if got >= a.events:
                    done.set()
                    return

        th = threading.Thread(target=consume, daemon=True)
        th.start()
        while c.engine.events.subscribers < 1:
            time.sleep(0.01)
        # publish inside the daemon, in one call, so the figure is the delivery path, not the publisher's RPCs
        root = c._conn.root
        t0 = time.perf_counter()
        for _ in range(a.events // 1000):
            for _ in range(1000):
                root.publish_event("default", "/bench/event", {"i": 1})
        done.wait(120)
        dt = time.perf_counter() - t0
        print(f"events to a remote subscriber: {got:,} in {dt:.2f} s = {got / dt:,.0f} events/s "
              "(each published by its own RPC call)")
        sub.close()
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
