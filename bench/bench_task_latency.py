"""Task latency through the runtime API: create + start + wait + delete of ``true`` in busybox.

    python bench/bench_task_latency.py [--n 20]       # as root

Compared in the same run (interleaved, medians) with bare ``runc create``/``start``/wait/``delete``
of the same bundle (the floor: what any shim must pay), with a per-task shim (forked by the zygote)
and with one shared shim (``group``).  The CLI's own start-up is not included (see the acceptance
check 05 for ``pyctr run --rm`` vs ``ctr run --rm``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pyctr.runtime import ProcessIO
from runtime_helpers import busybox_spec, make_busybox_rootfs, runtime


def bare_runc(bundle: Path, root: Path, i: int) -> float:
    t0 = time.perf_counter()
    subprocess.run(["runc", "--root", str(root), "create", "--bundle", str(bundle), f"b{i}"], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(["runc", "--root", str(root), "start", f"b{i}"], check=True)
    while True:  # wait: the state turns "stopped" (runc itself cannot wait for a detached task)
        st = subprocess.run(["runc", "--root", str(root), "state", f"b{i}"], capture_output=True, text=True)
        if json.loads(st.stdout)["status"] == "stopped":
            break
    subprocess.run(["runc", "--root", str(root), "delete", f"b{i}"], check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pyctr-bench-lat-") as d:
        work = Path(d)
        rootfs = make_busybox_rootfs(work / "rootfs")
        spec = busybox_spec(rootfs, ["true"])
        bundle = work / "bundle"
        bundle.mkdir()
        bare_spec = json.loads(json.dumps(spec))  # the same spec (seccomp included)
        bare_spec["linux"] = dict(spec["linux"], cgroupsPath=f"/pyctr-bench-bare-{time.time_ns()}")
        (bundle / "config.json").write_text(json.dumps(bare_spec))
        nosec = json.loads(json.dumps(spec))
        nosec["linux"].pop("seccomp", None)
        times: dict[str, list[float]] = {"bare runc create+start+wait+delete": [],
                                         "pyctr task, own shim (zygote fork)": [],
                                         "pyctr task, shared shim (group)": [],
                                         "pyctr task, shared shim, no seccomp": []}
        # one shim per task for the "own shim" row (the runtime's default pools tasks without a group)
        with runtime(work / "state", shim_pool_size=1) as rt:
            keep = rt.create("bench", "keep", busybox_spec(rootfs, ["sleep", "600"]), [], ProcessIO(),
                             group="g")  # keeps the group's shim alive

            def task(id: str, task_spec: dict[str, Any], group: str | None = None) -> float:
                t0 = time.perf_counter()
                t = rt.create("bench", id, task_spec, [], ProcessIO(), group=group)
                t.start()
                t.wait(timeout=30)
                t.delete()
                return time.perf_counter() - t0

            keep.start()
            for i in range(args.n + 2):
                b = bare_runc(bundle, work / "runc", i)
                own = task(f"t{i}", spec)
                grp = task(f"g{i}", spec, "g")
                ns = task(f"n{i}", nosec, "g")
                if i >= 2:  # warm-up
                    for k, v in zip(times, (b, own, grp, ns), strict=True):
                        times[k].append(v)
            keep.delete(force=True)
        shutil.rmtree(bundle, ignore_errors=True)
        base = statistics.median(times["bare runc create+start+wait+delete"])
        for k, v in times.items():
            m = statistics.median(v)
            print(f"{k:40s} median {m * 1e3:6.1f} ms  (min {min(v) * 1e3:5.1f}, max {max(v) * 1e3:6.1f})  "
                  f"x{m / base:4.2f} of bare runc")


if __name__ == "__main__":
    main()
