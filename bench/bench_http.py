#!/usr/bin/env python3
"""Which HTTP client should the registry client use?  Measured over loopback against docker-registry.

Starts a private ``docker-registry`` on 127.0.0.1 (a free port, scratch under --dir), uploads one random
blob of --size-mib, then for each client library:

* **throughput**: GET the blob, streaming it through SHA-256 as a pull does (and once without hashing,
  to see the client's own ceiling), best of --repeat runs, MB/s;
* **connection reuse**: --small sequential ``HEAD /v2/<repo>/blobs/<digest>`` on one keep-alive client,
  requests per second (pyctr's transport and urllib3 also print how many connections they opened);
* **streaming**: peak Python allocations (tracemalloc) while streaming the blob once (a client that
  buffered the body would show its size).

Candidates: the standard library's ``http.client`` (with a 1 MiB ``readinto`` loop, the way
pyctr's transport reads, and with plain ``read(65536)``), ``pyctr``'s own transport (``http.client``
plus pooling), ``urllib3``, ``httpx`` (h11) when importable (e.g. ``pip install --target DIR httpx`` and
``PYTHONPATH=DIR``), and ``curl -o /dev/null`` as an outside reference.

    python bench/bench_http.py --size-mib 200 --repeat 3
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from _servers import start_registry

BUF = 1 << 20


def upload(addr: str, repo: str, data: bytes) -> str:
    dgst = "sha256:" + hashlib.sha256(data).hexdigest()
    conn = http.client.HTTPConnection(addr, timeout=60, blocksize=BUF)
    conn.request("POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
    r = conn.getresponse()
    r.read()
    loc = r.headers["Location"]
    sep = "&" if "?" in loc else "?"
    path = loc.split(addr, 1)[-1] + f"{sep}digest={dgst}"
    conn.request("PUT", path, body=data, headers={"Content-Length": str(len(data)),
                                                  "Content-Type": "application/octet-stream"})
    r = conn.getresponse()
    r.read()
    assert r.status == 201, r.status
    conn.close()
    return dgst


# -- clients -----------------------------------------------------------------------------------------

Getter = Callable[[str, bool], int]


def stdlib_readinto(addr: str) -> tuple[Getter, Callable[[str], None], Callable[[], None]]:
    conn = http.client.HTTPConnection(addr, timeout=30, blocksize=BUF)
    buf = bytearray(BUF)
    mv = memoryview(buf)

    def get(path: str, hash_: bool) -> int:
        conn.request("GET", path)
        r = conn.getresponse()
        h = hashlib.sha256()
        n = 0
        while True:
            k = r.readinto(mv)
            if not k:
                break
            if hash_:
                h.update(mv[:k])
            n += k
        return n

    def head(path: str) -> None:
        conn.request("HEAD", path)
        r = conn.getresponse()
        r.read()

    return get, head, conn.close


def stdlib_read(addr: str) -> tuple[Getter, Callable[[str], None], Callable[[], None]]:
    conn = http.client.HTTPConnection(addr, timeout=30)

    def get(path: str, hash_: bool) -> int:
        conn.request("GET", path)
        r = conn.getresponse()
        h = hashlib.sha256()
        n = 0
        while True:
            b = r.read(65536)
            if not b:
                break
            if hash_:
                h.update(b)
            n += len(b)
        return n

    def head(path: str) -> None:
        conn.request("HEAD", path)
        conn.getresponse().read()

    return get, head, conn.close


def pyctr_transport(addr: str) -> tuple[Getter, Callable[[str], None], Callable[[], None]]:
    from pyctr.plugins.distribution.registry.client import Transport

    t = Transport()
    buf = bytearray(BUF)
    mv = memoryview(buf)

    def get(path: str, hash_: bool) -> int:
        r = t.request("GET", f"http://{addr}{path}", {})
        h = hashlib.sha256()
        n = 0
        while True:
            k = r.readinto(mv)
            if not k:
                break
            if hash_:
                h.update(mv[:k])
            n += k
        return n

    def head(path: str) -> None:
        t.request("HEAD", f"http://{addr}{path}", {}).close()

    def close() -> None:
        print(f"    (pyctr transport opened {t.connections_made} connections)")
        t.close()

    return get, head, close


def urllib3_client(addr: str) -> tuple[Getter, Callable[[str], None], Callable[[], None]]:
    import urllib3

    pool = urllib3.HTTPConnectionPool("127.0.0.1", int(addr.split(":")[1]), maxsize=1, timeout=30)

    def get(path: str, hash_: bool) -> int:
        r = pool.request("GET", path, preload_content=False, decode_content=False)
        h = hashlib.sha256()
        n = 0
        for chunk in r.stream(BUF):
            if hash_:
                h.update(chunk)
            n += len(chunk)
        r.release_conn()
        return n

    def head(path: str) -> None:
        pool.request("HEAD", path).release_conn()

    def close() -> None:
        print(f"    (urllib3 opened {pool.num_connections} connections)")
        pool.close()

    return get, head, close


def httpx_client(addr: str) -> tuple[Getter, Callable[[str], None], Callable[[], None]]:
    import httpx

    client = httpx.Client(base_url=f"http://{addr}", timeout=30)

    def get(path: str, hash_: bool) -> int:
        h = hashlib.sha256()
        n = 0
        with client.stream("GET", path) as r:
            for chunk in r.iter_raw(BUF):
                if hash_:
                    h.update(chunk)
                n += len(chunk)
        return n

    def head(path: str) -> None:
        client.head(path)

    return get, head, client.close


CLIENTS: dict[str, Callable[[str], tuple[Getter, Callable[[str], None], Callable[[], None]]]] = {
    "http.client readinto 1 MiB": stdlib_readinto,
    "http.client read(64 KiB)": stdlib_read,
    "pyctr Transport (http.client + pool)": pyctr_transport,
    "urllib3 stream(1 MiB)": urllib3_client,
    "httpx iter_raw(1 MiB)": httpx_client,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--small", type=int, default=500, help="HEAD requests for the reuse test")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = ap.parse_args()
    if shutil.which("docker-registry") is None:
        raise SystemExit("needs docker-registry")
    base = Path(tempfile.mkdtemp(prefix="bench-http-", dir=args.dir))
    proc, addr = start_registry(base)
    try:
        size = args.size_mib << 20
        print(f"uploading a {args.size_mib} MiB random blob to {addr} ...", flush=True)
        dgst = upload(addr, "bench/blob", os.urandom(size))
        path = f"/v2/bench/blob/blobs/{dgst}"
        clients = {}
        for name, factory in CLIENTS.items():
            try:
                clients[name] = factory(addr)
            except ImportError as e:
                print(f"{name}: not available ({e})")
        best_h = dict.fromkeys(clients, float("inf"))
        best_raw = dict.fromkeys(clients, float("inf"))
        best_rps = dict.fromkeys(clients, 0.0)
        for get, _, _ in clients.values():
            get(path, True)  # warm the page cache and the connection
        # rounds interleave the clients, so load from other work on the machine hits them all alike
        for _ in range(args.repeat):
            for name, (get, head, _) in clients.items():
                t0 = time.perf_counter()
                assert get(path, True) == size
                best_h[name] = min(best_h[name], time.perf_counter() - t0)
                t0 = time.perf_counter()
                assert get(path, False) == size
                best_raw[name] = min(best_raw[name], time.perf_counter() - t0)
                t0 = time.perf_counter()
                for _ in range(args.small):
                    head(path)
                best_rps[name] = max(best_rps[name], args.small / (time.perf_counter() - t0))
        peak: dict[str, int] = {}
        for name, (get, _, close) in clients.items():
            tracemalloc.start()
            get(path, True)
            peak[name] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            close()
        rows = [(n, size / best_h[n] / 1e6, size / best_raw[n] / 1e6, best_rps[n], peak[n]) for n in clients]
        for name, mbs, raw, rps, pk in rows:
            print(f"{name}: {mbs:.0f} MB/s with sha256, {raw:.0f} MB/s raw, {rps:.0f} HEAD/s, "
                  f"peak Python allocations while streaming {pk >> 10} KiB", flush=True)
        if shutil.which("curl"):
            best = float("inf")
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                subprocess.run(["curl", "-sS", "-o", "/dev/null", f"http://{addr}{path}"], check=True)
                best = min(best, time.perf_counter() - t0)
            print(f"curl -o /dev/null (reference): {size / best / 1e6:.0f} MB/s")
        base_rate = rows[0][2] if rows else 1.0
        print()
        print("| client | MB/s (sha256) | MB/s (raw) | raw vs http.client | HEAD req/s (keep-alive) |"
              " peak allocations |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, mbs, raw, rps, pk in rows:
            print(f"| {name} | {mbs:.0f} | {raw:.0f} | {raw / base_rate:.2f} | {rps:.0f} | {pk >> 10} KiB |")
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
