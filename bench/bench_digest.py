"""Benchmark: SHA-256 hash + copy of a large file, the Cython path vs the pure-Python twin vs sha256sum,
plus resuming a partial ingest (checkpoint restore vs re-hash).

    python bench/bench_digest.py [--size-mib 1024] [--dir /dev/shm] [--repeat 3]

Prints MB/s (10^6 bytes per second, best of ``--repeat``) and the ratio to the pure-Python twin.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def copy_hash(mod: object, src: Path, dst: Path, want: str) -> None:
    sfd = os.open(src, os.O_RDONLY)
    dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        h = mod.Sha256()  # type: ignore[attr-defined]
        mod.copy_and_hash(sfd, dfd, h)  # type: ignore[attr-defined]
    finally:
        os.close(sfd)
        os.close(dfd)
    assert h.hexdigest() == want


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--dir", default="/dev/shm")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from pyctr._speedups import _digest_c as c
    from pyctr._speedups import _digest_py as py
    from pyctr.plugins.content.local.store import LocalStore

    size = args.size_mib << 20
    work = Path(tempfile.mkdtemp(prefix="pyctr-bench-digest-", dir=args.dir))
    try:
        src, dst = work / "src", work / "dst"
        with open(src, "wb") as f:
            block = os.urandom(1 << 20)
            for i in range(args.size_mib):
                f.write(block[i % 7:] + block[: i % 7])
        want = subprocess.run(["sha256sum", str(src)], capture_output=True, text=True,
                              check=True).stdout.split()[0]
        mb = size / 1e6
        def sha256sum() -> None:
            subprocess.run(["sha256sum", str(src)], capture_output=True, check=True)

        def sha256sum_and_cp() -> None:
            sha256sum()
            shutil.copyfile(src, dst)

        def hashlib_only() -> None:
            with open(src, "rb") as f:
                hashlib.file_digest(f, "sha256")

        cases: list[tuple[str, Callable[[], object]]] = [
            ("cython copy_and_hash (OpenSSL, GIL released)", lambda: copy_hash(c, src, dst, want)),
            ("pure-Python twin copy_and_hash (hashlib)", lambda: copy_hash(py, src, dst, want)),
            ("sha256sum FILE (hash only)", sha256sum),
            ("sha256sum FILE && cp FILE DST (hash + copy)", sha256sum_and_cp),
            ("hashlib.sha256 over the file (hash only)", hashlib_only),
        ]
        rows = [(name, best(fn, args.repeat)) for name, fn in cases]
        py_t = rows[1][1]
        print(f"file: {args.size_mib} MiB in {args.dir}; best of {args.repeat}; CPU: {os.cpu_count()} cores")
        print(f"{'path':48} {'seconds':>8} {'MB/s':>8} {'vs py':>6}")
        for name, t in rows:
            print(f"{name:48} {t:8.3f} {mb / t:8.0f} {py_t / t:6.2f}")

        # resuming an interrupted ingest of the whole file: checkpoint restore vs re-hash
        print()
        print(f"resume of a {args.size_mib} MiB partial ingest (open the writer again):")
        for label, mod in (("cython (restores the checkpoint)", c), ("pure-Python twin (re-hashes)", py)):
            store = LocalStore(work / f"store-{label[:2]}", digest_impl=mod)
            w = store.writer("r")
            with open(src, "rb") as f:
                w.copy_from(f)
            w.close()
            t0 = time.perf_counter()
            w = store.writer("r")
            t = time.perf_counter() - t0
            print(f"  {label:40} {t * 1000:9.1f} ms  (re-read {w.rehashed / 1e6:.0f} MB)")
            assert w.digest() == "sha256:" + want
            w.abort()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
