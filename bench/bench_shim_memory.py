"""Shim memory: PSS of pyctr's shims with N sleeping busybox containers, grouped vs one shim each.

    python bench/bench_shim_memory.py --n 50            # as root; needs runc and busybox-static

PSS comes from /proc/PID/smaps_rollup (shared pages split between the processes sharing them).
"Grouped" puts all N containers in one shim (``group=``), "per-container" gives each its own.
Also prints the cost of one idle shim (no container) and MemAvailable's drop per container.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pyctr.runtime import ProcessIO
from runtime_helpers import busybox_spec, make_busybox_rootfs, runtime


def pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def mem_available_kb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def run(n: int, grouped: bool, rootfs: Path, workdir: Path) -> dict[str, float]:
    state = workdir / ("g" if grouped else "s")
    with runtime(state) as rt:
        before = mem_available_kb()
        t0 = time.perf_counter()
        tasks = []
        for i in range(n):
            t = rt.create("bench", f"c{i}", busybox_spec(rootfs, ["sleep", "600"]), [], ProcessIO(),
                          group="all" if grouped else None)
            t.start()
            tasks.append(t)
        started = time.perf_counter() - t0
        time.sleep(1.0)
        shims = sorted({t.state().shim_pid for t in tasks})
        pss = sum(pss_kb(p) for p in shims)
        rss = sum(rss_kb(p) for p in shims)
        cont_pss = sum(pss_kb(t.pid) for t in tasks) / n
        z = rt.client(rt.zygote_address).ping(timeout=1.0)
        zygote_pss = pss_kb(int(z["zygote_pid"])) if z else 0
        after = mem_available_kb()
        t1 = time.perf_counter()
        for t in tasks:
            t.kill(signal.SIGKILL)
        for t in tasks:
            t.wait(timeout=30)
            t.delete()
        removed = time.perf_counter() - t1
    return {"shims": len(shims), "shim_pss_kb": pss, "shim_rss_kb": rss, "per_container_pss_kb": pss / n,
            "container_pss_kb": cont_pss, "memavail_drop_per_container_kb": (before - after) / n,
            "start_s": started, "remove_s": removed, "zygote_pss_kb": zygote_pss}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pyctr-bench-mem-") as d:
        work = Path(d)
        rootfs = make_busybox_rootfs(work / "rootfs")
        impl = "py" if os.environ.get("PYCTR_NO_EXTENSIONS") else "c"
        print(f"{args.n} sleeping busybox containers, shimio={impl}")
        for grouped in (True, False):
            r = run(args.n, grouped, rootfs, work)
            label = "one shim for all (group)" if grouped else "one shim per container"
            print(f"{label:28s} shims={r['shims']:3d}  shim PSS total {r['shim_pss_kb'] / 1024:7.2f} MB  "
                  f"RSS total {r['shim_rss_kb'] / 1024:7.1f} MB  "
                  f"PSS/container {r['per_container_pss_kb'] / 1024:.3f} MB  "
                  f"container PSS {r['container_pss_kb']:.0f} kB  "
                  f"MemAvailable drop/container {r['memavail_drop_per_container_kb'] / 1024:.2f} MB  "
                  f"start {r['start_s']:.2f} s  remove {r['remove_s']:.2f} s  "
                  f"(zygote PSS {r['zygote_pss_kb'] / 1024:.2f} MB)")


if __name__ == "__main__":
    main()
