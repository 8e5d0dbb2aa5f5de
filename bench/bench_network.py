"""Benchmark: what a networked container costs over ``--net none``, and a 200-container leak check.

    python bench/bench_network.py [--runs 15] [--warmup 2] [--batch 200] [--append bench/RESULTS.md]

Interleaved, the same busybox image (``pyctr images build-busybox``), real runc and the real CNI
plugins (bridge + host-local, portmap, firewall) on a private bridge ``pyctrb<random>`` and subnet:

* ``pyctr run --rm IMAGE true`` (``--net none``: runc makes the namespace, lo only, no plugin);
* ``pyctr run --rm --net bridge IMAGE true`` (namespace, CNI ADD, the task, CNI DEL);
* ``pyctr run --rm -p 127.0.0.1:PORT:80 IMAGE true`` (the same plus portmap's rules).

Then ``--batch N`` containers are started detached on the network (every tenth publishing a port),
removed again, and the host's links, addresses and CNI iptables rules are compared with before.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

IMAGE = "localhost/busybox:latest"
_SHARED = re.compile(r"CNI-HOSTPORT-(DNAT|SNAT|SETMARK|MASQ)\b|CNI-FORWARD\b|CNI-ADMIN\b")
_IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+")


def pyctr_exe() -> str:
    here = Path(os.path.realpath(sys.executable)).parent / "pyctr"
    return str(here) if here.exists() else (shutil.which("pyctr") or "pyctr")


def host_snapshot() -> tuple[set[str], set[str], set[str]]:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    keep = set()
    for ln in rules.splitlines():
        if ln.startswith("#") or "CNI" not in ln:
            continue
        if _SHARED.search(ln) and "CNI-DN-" not in ln and not _IPV4.search(ln):
            continue
        keep.add(re.sub(r"\[\d+:\d+\]", "", ln).strip())
    return ({ln.split(":")[1].strip().split("@")[0] for ln in links.splitlines() if ":" in ln},
            {" ".join(ln.split()[1:4]) for ln in addrs.splitlines()}, keep)


def free_subnet() -> str:
    routes = subprocess.run(["ip", "-4", "-o", "route", "show", "table", "all"], capture_output=True, text=True,
                            check=False).stdout
    used = []
    for ln in routes.splitlines():
        for tok in ln.split()[:2]:
            with contextlib.suppress(ValueError):
                used.append(ipaddress.IPv4Network(tok, strict=False))
    for _ in range(100):
        cand = ipaddress.IPv4Network(f"10.{random.randint(150, 250)}.{random.randint(0, 63) * 4}.0/22")
        if not any(cand.overlaps(u) for u in used):
            return str(cand)
    raise SystemExit("no free subnet")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pyctr:
    def __init__(self, d: Path, bridge: str, subnet: str) -> None:
        self.d = d
        cfg = d / "config.toml"
        cfg.write_text(f'[plugins."pyctr.network.cni"]\nconf_dir = "{d}/net.d"\nbridge_name = "{bridge}"\n'
                       f'default_subnet = "{subnet}"\n'
                       f'[plugins."pyctr.runtime.runc"]\ncgroup_parent = "/pyctr-bench-{bridge}"\n')
        self.base = [pyctr_exe(), "--root", str(d / "root"), "--state", str(d / "state"), "--config", str(cfg)]

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([*self.base, *args], capture_output=True, text=True, check=False)
        if check and p.returncode != 0:
            raise SystemExit(f"pyctr {' '.join(args)} failed: {p.stderr.strip()[-300:]}")
        return p

    def timed(self, *args: str) -> float:
        t0 = time.perf_counter()
        self(*args)
        return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=200, help="containers for the leak check (0: skip)")
    ap.add_argument("--append", default="", help="append the results to this markdown file")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    bridge = "pyctrb" + uuid.uuid4().hex[:8]
    subnet = free_subnet()
    d = Path(tempfile.mkdtemp(prefix="pyctr-bench-net-"))
    p = Pyctr(d, bridge, subnet)
    before = host_snapshot()
    results: dict[str, list[float]] = {"none": [], "bridge": [], "bridge -p": []}
    batch_line = ""
    try:
        p("images", "build-busybox")
        cases = {
            "none": lambda: p.timed("run", "--rm", IMAGE, "true"),
            "bridge": lambda: p.timed("run", "--rm", "--net", "bridge", IMAGE, "true"),
            "bridge -p": lambda: p.timed("run", "--rm", "-p", f"127.0.0.1:{free_port()}:80", IMAGE, "true"),
        }
        for _ in range(a.warmup):
            for fn in cases.values():
                fn()
        for _ in range(a.runs):
            for name, fn in cases.items():
                results[name].append(fn())
        if a.batch:
            t0 = time.perf_counter()
            for i in range(a.batch):
                extra = ["-p", f"127.0.0.1:{free_port()}:80"] if i % 10 == 0 else []
                p("run", "-d", "--name", f"b{i}", "--net", "bridge", *extra, IMAGE, "sleep", "600")
            started = time.perf_counter() - t0
            members = subprocess.run(["ip", "-o", "link", "show", "master", bridge], capture_output=True,
                                     text=True, check=False).stdout.count("\n")
            t0 = time.perf_counter()
            for i in range(a.batch):
                p("containers", "rm", "--force", f"b{i}")
            removed = time.perf_counter() - t0
            left = subprocess.run(["ip", "-o", "link", "show", "master", bridge], capture_output=True, text=True,
                                  check=False).stdout.count("\n")
            subprocess.run(["ip", "link", "delete", bridge], capture_output=True, check=False)
            after = host_snapshot()
            same = before == after
            batch_line = (f"{a.batch} containers on the bridge ({a.batch // 10} publishing a port): started in "
                          f"{started:.1f} s ({started / a.batch * 1000:.0f} ms each, {members} veths on the "
                          f"bridge), removed in {removed:.1f} s ({removed / a.batch * 1000:.0f} ms each), "
                          f"{left} veths left; links, addresses and CNI iptables rules afterwards "
                          f"{'identical to before' if same else 'DIFFERENT from before'}")
            if not same:
                batch_line += (f" (links {sorted(after[0] ^ before[0])}, addrs {sorted(after[1] ^ before[1])}, "
                               f"rules {sorted(after[2] ^ before[2])})")
    finally:
        for cid in p("containers", "ls", "-q", check=False).stdout.split():
            p("containers", "rm", "--force", cid, check=False)
        with contextlib.suppress(Exception):
            from pyctr import runzygote

            runzygote.stop(str(d / "state"))
        with contextlib.suppress(Exception):
            from pyctr.plugins.runtime.runc.manager import RuncRuntime

            RuncRuntime(d / "state" / "pyctr.runtime.runc", load=False).stop_zygote()
        if os.path.exists(f"/sys/class/net/{bridge}"):
            subprocess.run(["ip", "link", "delete", bridge], capture_output=True, check=False)
        with open("/proc/self/mounts") as f:
            for m in sorted((ln.split()[1] for ln in f if ln.split()[1].startswith(str(d))), reverse=True):
                subprocess.run(["umount", "-l", m], check=False)
        shutil.rmtree(d, ignore_errors=True)

    med = {k: statistics.median(v) * 1000 for k, v in results.items()}
    rows = [f"| {k} | {med[k]:.0f} | {min(v) * 1000:.0f} | {max(v) * 1000:.0f} | {med[k] - med['none']:+.0f} |"
            for k, v in results.items()]
    load = os.getloadavg()[0]
    text = "\n".join([
        "\n## Networking: a container on the CNI bridge vs `--net none` (issue 9, `bench/bench_network.py`)\n",
        f"{datetime.date.today()}, {a.runs} runs each after {a.warmup} warm-up, interleaved; load average "
        f"{load:.1f} on {os.cpu_count()} cores.  `pyctr run --rm IMAGE true` (busybox), real runc, the Debian "
        "CNI plugins (bridge + host-local, portmap, firewall) on a private bridge.\n",
        "| --net | median ms | min ms | max ms | over none (median ms) |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        *([batch_line + ".", ""] if batch_line else []),
    ])
    print(text)
    if a.append:
        with open(a.append, "a", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
