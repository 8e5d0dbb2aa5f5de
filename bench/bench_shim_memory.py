"""Memory per running container: pyctr (default pooled shims, and one shim per container) against
containerd, in one run on this machine.

    python bench/bench_shim_memory.py --n 50 [--p 4] [--no-containerd] [--append]   # as root

Each layout starts its daemon (``pyctrd``, or a private containerd on a scratch directory, never the
system's), then N ``sleep 600`` busybox containers detached, P at a time, with the ordinary CLI:
``pyctr run -d --name cN IMAGE sleep 600`` / ``ctr run -d IMAGE cN sleep 600``.  Per container it
reports the PSS (/proc/PID/smaps_rollup, shared pages split between the processes sharing them) of
the shims (pyctr: its shims and the shim zygote; containerd: its ``containerd-shim-runc-v2``
processes), the daemon's RSS growth, their sum, and the drop of MemAvailable; the ratio is the sum
against containerd's.  The pyctr layouts: the default (tasks without a shim group share pooled shims
of ``shim_pool_size`` = 32 live tasks) and ``shim_pool_size = 1`` (one shim per container, as
containerd).  ``--append`` adds the table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_batch
from bench_batch import (
    HERE,
    IMAGE,
    Containerd,
    Pyctr,
    cleanup_cgroups,
    containerd_with_image,
    mem_available_kb,
    ok,
    pss_kb,
    rss_kb,
    settle,
    timed,
    workdir,
    xargs,
)

# this interpreter's own scripts (a virtual environment's pyctr, not the one its base interpreter has)
_BIN = Path(sys.executable).parent
if (_BIN / "pyctr").exists() and (_BIN / "pyctrd").exists():
    bench_batch.PYCTR, bench_batch.PYCTRD = str(_BIN / "pyctr"), str(_BIN / "pyctrd")


def measure_pyctr(pc: Pyctr, n: int, p: int, pool_size: int) -> dict[str, float]:
    pc.config.write_text(f'[plugins."pyctr.runtime.runc"]\ncgroup_parent = "{pc.cgroup_parent}"\n'
                         f"shim_pool_size = {pool_size}\n")
    pc.stop_zygote()
    daemon = pc.start_daemon()
    try:
        ok(pc.cmd("run", "--rm", IMAGE, "true"))  # the daemon's first run (imports, caches) is not per container
        time.sleep(1.0)
        rss0 = rss_kb(daemon)
        settle()
        avail0 = mem_available_kb()
        t_start = timed(lambda: xargs(n, p, pc.cmd("run", "-d", "--name", "m{}", IMAGE, "sleep", "600")))
        time.sleep(2.0)
        shims = pc.shim_pids()
        zyg = pc.zygote_pid()
        avail1 = mem_available_kb()
        running = ok(pc.cmd("tasks", "ls", "-q")).split()
        out = {
            "running": float(len(running)),
            "shims": float(len(shims)),
            "shim_pss_mb": (sum(pss_kb(s) for s in shims) + (pss_kb(zyg) if zyg else 0)) / 1024 / n,
            "daemon_growth_mb": (rss_kb(daemon) - rss0) / 1024 / n,
            "avail_drop_mb": (avail0 - avail1) / 1024 / n,
            "start_s": t_start,
        }
        out["remove_s"] = timed(lambda: xargs(n, p, pc.cmd("containers", "rm", "-f", "m{}")))
        return out
    finally:
        pc.stop_daemon()
        pc.stop_zygote()


def measure_containerd(ctd: Containerd, n: int, p: int) -> dict[str, float]:
    rss0 = rss_kb(ctd.proc.pid)
    settle()
    avail0 = mem_available_kb()
    t_start = timed(lambda: xargs(n, p, [*ctd.ctr, "run", "-d", IMAGE, "m{}", "sleep", "600"]))
    time.sleep(2.0)
    shims = ctd.shim_pids()
    avail1 = mem_available_kb()
    out = {
        "running": float(len(ok([*ctd.ctr, "tasks", "ls", "-q"]).split())),
        "shims": float(len(shims)),
        "shim_pss_mb": sum(pss_kb(s) for s in shims) / 1024 / n,
        "daemon_growth_mb": (rss_kb(ctd.proc.pid) - rss0) / 1024 / n,
        "avail_drop_mb": (avail0 - avail1) / 1024 / n,
        "start_s": t_start,
    }
    out["remove_s"] = timed(lambda: (xargs(n, p, [*ctd.ctr, "task", "rm", "-f", "m{}"]),  # type: ignore[func-returns-value]
                                     xargs(n, p, [*ctd.ctr, "container", "rm", "m{}"])))
    return out


def table(n: int, rows: dict[str, dict[str, float]]) -> list[str]:
    ref = next((r for name, r in rows.items() if name.startswith("containerd")), None)
    lines = [f"| layout ({n} `sleep 600` containers) | running | shims | shim PSS /container | daemon growth "
             "/container | sum /container | vs containerd | MemAvailable drop /container | start | remove |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        total = r["shim_pss_mb"] + r["daemon_growth_mb"]
        ratio = ""
        if ref:
            ref_total = ref["shim_pss_mb"] + ref["daemon_growth_mb"]
            ratio = f"{total / ref_total:.2f}x" if ref_total > 0 else ""
            ratio += f" (avail {r['avail_drop_mb'] / ref['avail_drop_mb']:.2f}x)" if ref["avail_drop_mb"] > 0 else ""
        lines.append(f"| {name} | {r['running']:.0f} | {r['shims']:.0f} | {r['shim_pss_mb']:.2f} MB | "
                     f"{r['daemon_growth_mb']:.3f} MB | {total:.2f} MB | {ratio} | {r['avail_drop_mb']:.2f} MB | "
                     f"{r['start_s']:.1f} s | {r['remove_s']:.1f} s |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50, help="containers per layout")
    ap.add_argument("--p", type=int, default=4, help="launched (and removed) this many at a time")
    ap.add_argument("--no-containerd", action="store_true")
    ap.add_argument("--append", action="store_true", help="append the table to bench/RESULTS.md")
    args = ap.parse_args()
    rows: dict[str, dict[str, float]] = {}
    with workdir() as work:
        pc = Pyctr(work)
        ctd: Containerd | None = None
        try:
            ok(pc.cmd("images", "build-busybox"))
            if not args.no_containerd and shutil.which("containerd"):
                ctd = containerd_with_image(pc, work)
            load0 = os.getloadavg()
            rows["pyctr, default (pooled shims, shim_pool_size=32)"] = measure_pyctr(pc, args.n, args.p, 32)
            settle()
            rows["pyctr, one shim per container (shim_pool_size=1)"] = measure_pyctr(pc, args.n, args.p, 1)
            if ctd is not None:
                settle()
                rows["containerd 1.6 (`ctr run -d`, containerd-shim-runc-v2)"] = measure_containerd(
                    ctd, args.n, args.p)
            load1 = os.getloadavg()
        finally:
            pc.stop_daemon()
            pc.stop_zygote()
            if ctd is not None:
                ctd.stop()
            with contextlib.suppress(Exception):
                cleanup_cgroups([pc.cgroup_parent])
    cmd = "python bench/bench_shim_memory.py " + " ".join(sys.argv[1:])
    head = (f"{time.strftime('%Y-%m-%d %H:%M')}, `{cmd}`, load average {load0[0]:.1f} before and "
            f"{load1[0]:.1f} after (1 min)")
    lines = table(args.n, rows)
    print(head)
    print("\n".join(lines))
    if args.append:
        with open(HERE / "RESULTS.md", "a") as f:
            f.write(f"\n### Memory per container ({head})\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
