"""Tasks per second through one shared shim: ``true`` created, started, waited and deleted by P
threads at once in one group (the shim runs runc without blocking, so creates overlap).

    python bench/bench_group_throughput.py [--n 24] [--p 1 4 8]      # as root
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pyctr.runtime import ProcessIO
from runtime_helpers import busybox_spec, make_busybox_rootfs, runtime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--p", type=int, nargs="+", default=[1, 4, 8])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pyctr-bench-grp-") as d:
        rootfs = make_busybox_rootfs(Path(d) / "rootfs")
        with runtime(Path(d) / "state") as rt:
            spec = busybox_spec(rootfs, ["true"])
            keep = rt.create("bench", "keep", busybox_spec(rootfs, ["sleep", "600"]), [], ProcessIO(),
                             group="g")
            keep.start()

            def one(i: int) -> None:
                t = rt.create("bench", f"t{i}", spec, [], ProcessIO(), group="g")
                t.start()
                t.wait(timeout=60)
                t.delete()

            for p in args.p:
                t0 = time.perf_counter()
                with ThreadPoolExecutor(p) as ex:
                    list(ex.map(one, range(p * 1000, p * 1000 + args.n)))
                dt = time.perf_counter() - t0
                print(f"P={p:2d}: {args.n} tasks through one shim in {dt:.2f} s = {args.n / dt:5.1f} tasks/s")
            keep.delete(force=True)


if __name__ == "__main__":
    main()
