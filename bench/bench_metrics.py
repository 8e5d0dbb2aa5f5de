"""Benchmark: the cost of one ``/v1/metrics`` scrape with 200 running containers.

    python bench/bench_metrics.py [--mode containers|cgroups] [-n 200] [--repeat 20] [--append bench/RESULTS.md]

``containers`` (default): an embedded engine runs ``-n`` busybox ``sleep`` containers with real runc
(one shim group, a memory and a pids limit each); a scrape is ``PrometheusMetrics.render_bytes()``
exactly as the HTTP endpoint calls it: list the runtime's tasks from its state files, read every
container's cgroup (v1: 13 files in 5 hierarchies; v2: 10 files), the daemon families, render the text.

``cgroups``: ``-n`` bare cgroups (every v1 controller pyctr reads, or v2) with one sleeping process
each, read by the container collector alone (no runtime): the cgroup read + render cost.

Prints the median, min and max scrape time, and the time of the cgroup reads alone (the collector's
own gauge).  Needs root.  Everything it creates is removed at the end, even on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CG = "/sys/fs/cgroup"
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "blkio")


def busybox_rootfs(dest: Path) -> Path:
    bb = shutil.which("busybox")
    if bb is None:
        raise SystemExit("busybox-static is needed (apt-get install busybox-static)")
    for d in ("bin", "etc", "tmp", "proc", "dev", "sys", "run"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(bb, dest / "bin" / "busybox")
    for a in ("sh", "sleep"):
        os.symlink("busybox", dest / "bin" / a)
    (dest / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (dest / "etc" / "group").write_text("root:x:0:\n")
    return dest


@contextlib.contextmanager
def containers(n: int, work: Path) -> Iterator[Any]:
    """An embedded engine with ``n`` running busybox containers; yields the metrics plugin."""
    from pyctr import config as _config
    from pyctr.engine import Engine
    from pyctr.oci import RunOptions, generate_spec
    from pyctr.runtime import ProcessIO

    parent = f"/pyctr-bench-{uuid.uuid4().hex[:8]}"
    (work / "config.toml").write_text(f'[plugins."pyctr.runtime.runc"]\ncgroup_parent = "{parent}"\n')
    cfg = _config.load(str(work / "config.toml"), root=str(work / "root"), state=str(work / "state"))
    engine = Engine(cfg)
    rt = engine.plugin("runtime")
    rootfs = busybox_rootfs(work / "rootfs")
    ids: list[str] = []
    try:
        t0 = time.perf_counter()
        for i in range(n):
            spec = generate_spec({"config": {"Cmd": ["sleep", "3600"], "Env": ["PATH=/bin"]}}, str(rootfs),
                                 RunOptions(memory=64 << 20, pids_limit=16))
            spec["root"]["path"] = str(rootfs)
            spec["linux"].pop("cgroupsPath", None)
            cid = f"c{i:04d}"
            task = rt.create("bench", cid, spec, [], ProcessIO(), group="bench")
            ids.append(cid)
            task.start()
        print(f"started {n} containers in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        yield engine.plugin("metrics")
    finally:
        for cid in ids:
            with contextlib.suppress(Exception):
                t = rt.get("bench", cid)
                t.kill(int(signal.SIGKILL))
        for cid in ids:
            with contextlib.suppress(Exception):
                rt.get("bench", cid).delete(force=True)
        with contextlib.suppress(Exception):
            rt.stop_zygote()
        engine.close()
        _rmtree_cgroups(parent)


@contextlib.contextmanager
def bare_cgroups(n: int) -> Iterator[Any]:
    """``n`` cgroups with a sleeping process each; yields a metrics object with ``render_bytes``."""
    from pyctr import cgroups
    from pyctr.plugins.metrics.prometheus.collector import ContainerCollector, TaskRef

    parent = f"/pyctr-bench-{uuid.uuid4().hex[:8]}"
    v2 = cgroups.version() == 2
    procs: list[subprocess.Popen[bytes]] = []
    refs: list[TaskRef] = []
    try:
        if v2:
            Path(f"{CG}{parent}").mkdir()
            Path(f"{CG}{parent}/cgroup.subtree_control").write_text("+memory +pids +cpu +io")
        for i in range(n):
            path = f"{parent}/c{i:04d}"
            dirs = [Path(f"{CG}{path}")] if v2 else [Path(f"{CG}/{c}{path}") for c in V1_CONTROLLERS]
            for d in dirs:
                d.mkdir(parents=True)
            p = subprocess.Popen(["sleep", "3600"])
            procs.append(p)
            for d in dirs:
                (d / "cgroup.procs").write_text(str(p.pid))
            refs.append(TaskRef("bench", f"c{i:04d}", path, "running"))
        cc = ContainerCollector(lambda: refs)

        class M:
            containers = cc

            @staticmethod
            def render_bytes() -> bytes:
                return cc.exposition().encode()

        yield M
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        time.sleep(0.1)
        _rmtree_cgroups(parent)


def _rmtree_cgroups(parent: str) -> None:
    for base in [Path(CG + parent), *(Path(f"{CG}/{c}{parent}") for c in os.listdir(CG))]:
        if not base.is_dir():
            continue
        for d in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            base.rmdir()


def measure(render: Callable[[], bytes], cc: Any, repeat: int) -> tuple[list[float], list[float], int]:
    render()  # warm-up: first lookups, device names
    totals, reads = [], []
    size = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        body = render()
        totals.append(time.perf_counter() - t0)
        reads.append(cc.last_duration)
        size = len(body)
    return totals, reads, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("containers", "cgroups"), default="containers")
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--naive", action="store_true",
                    help="for comparison: open/read/close every file and render through prometheus_client")
    ap.add_argument("--append", help="append the result table to this markdown file")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (cgroups, runc)")
    from pyctr import cgroups

    with tempfile.TemporaryDirectory(prefix="pyctr-bench-metrics-") as tmp:
        ctx = containers(a.n, Path(tmp)) if a.mode == "containers" else bare_cgroups(a.n)
        with ctx as m:
            cc = m.containers
            render = m.render_bytes
            if a.naive:
                from prometheus_client import CollectorRegistry, generate_latest

                cc.reader.max_fds = 0
                reg = CollectorRegistry(auto_describe=False)
                reg.register(cc)

                def render() -> bytes:
                    return generate_latest(reg)

            totals, reads, size = measure(render, cc, a.repeat)
            seen = cc.last_count
    if seen != a.n:
        raise SystemExit(f"the scrape saw {seen} containers, not {a.n}")
    ms = [x * 1000 for x in totals]
    rms = [x * 1000 for x in reads]
    mode = a.mode + (" (naive)" if a.naive else "")
    line = (f"| {mode} | {a.n} | cgroup v{cgroups.version()} | {statistics.median(ms):.1f} | {min(ms):.1f} | "
            f"{max(ms):.1f} | {statistics.median(rms):.1f} | {size // 1024} KiB |")
    print(f"{a.n} containers ({mode}), {a.repeat} scrapes: median {statistics.median(ms):.1f} ms "
          f"(min {min(ms):.1f}, max {max(ms):.1f}); cgroup reads alone median {statistics.median(rms):.1f} ms; "
          f"exposition {size} bytes")
    if a.append:
        with open(a.append, "a") as f:
            f.write(f"\n<!-- bench_metrics {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')} -->\n")
            f.write(line + "\n")


if __name__ == "__main__":
    main()
