"""Bulk launches: ``pyctr batch run`` (embedded and through pyctrd) against containerd (``ctr run --rm``
with xargs -P) and bare ``runc run`` of prepared bundles, in one run on this machine; then memory per
sleeping container (shared shims against containerd's shim per container) and the time to remove them.

    python bench/bench_batch.py [--n 200] [--p 8] [--mem-n 50] [--rounds 2] [--append]   # as root

Throughput rows: N busybox ``true`` containers launched and run to completion, P at a time (the
default --parallel of ``pyctr batch run`` is 8 too), whole commands timed (CLI start included), the best
of ``--rounds``.  Bare runc: N bundles written beforehand with the spec pyctr generates (same seccomp
profile, namespaces, mounts) on one shared read-only rootfs, ``runc --root <private> run`` each, with
the same xargs (runc compiles the profile in each; pyctr's batch compiles it once, see
pyctr/seccomp_filter.py); a second set without the profile shows what runc costs without that
compilation (a reference row, not a target).  Memory rows: ``--mem-n`` ``sleep 600`` containers started detached; PSS
(/proc/PID/smaps_rollup) of the shims (pyctr: its group shims and the shim zygote; containerd: its
``containerd-shim-runc-v2`` processes), the daemon's RSS growth, and the drop of MemAvailable, per
container.  Removal: ``pyctr batch rm --label`` against ``ctr task rm -f`` + ``ctr container rm`` with
xargs -P 4.  ``--append`` adds the table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PYCTR = str(Path(os.path.realpath(sys.executable)).parent / "pyctr")
PYCTRD = str(Path(os.path.realpath(sys.executable)).parent / "pyctrd")
IMAGE = "localhost/busybox:latest"
NO_SECCOMP = "bare runc run, no seccomp profile (reference only)"


def sh(cmd: list[str] | str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, shell=isinstance(cmd, str), text=True, capture_output=True, **kw)


def ok(cmd: list[str] | str, **kw: Any) -> str:
    p = sh(cmd, **kw)
    if p.returncode != 0:
        raise SystemExit(f"failed: {cmd}: {p.stderr.strip()[-500:]}")
    return p.stdout


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def mem_available_kb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def settle(seconds: float = 2.0) -> None:
    """Let kernel clean-up of the last block (namespaces, cgroups) finish before the next one."""
    time.sleep(seconds)


class Pyctr:
    def __init__(self, work: Path) -> None:
        self.root, self.state = work / "root", work / "state"
        self.cgroup_parent = f"/pyctr-bench-{uuid.uuid4().hex[:8]}"
        self.config = work / "config.toml"
        self.config.write_text(f'[plugins."pyctr.runtime.runc"]\ncgroup_parent = "{self.cgroup_parent}"\n')
        self.daemon: subprocess.Popen[bytes] | None = None

    def cmd(self, *args: str) -> list[str]:
        return [PYCTR, "--root", str(self.root), "--state", str(self.state), "--config", str(self.config), *args]

    def start_daemon(self) -> int:
        sock = self.state / "pyctr.sock"
        self.daemon = subprocess.Popen(
            [PYCTRD, "--root", str(self.root), "--state", str(self.state), "--config", str(self.config),
             "--address", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        for _ in range(200):
            if sock.exists() and sh(self.cmd("version")).returncode == 0:
                return self.daemon.pid
            time.sleep(0.05)
        raise SystemExit("pyctrd did not start")

    def stop_daemon(self) -> None:
        if self.daemon is not None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(20)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
            self.daemon = None

    def shim_pids(self) -> list[int]:
        tasks = json.loads(ok(self.cmd("tasks", "ls", "-o", "json")) or "[]")
        return sorted({int(t.get("shim_pid") or 0) for t in tasks} - {0})

    def zygote_pid(self) -> int:
        from pyctr.plugins.runtime.runc.manager import RuncRuntime, _ping

        rt = RuncRuntime(self.state / "pyctr.runtime.runc", load=False)
        res = _ping(rt.zygote_address) or {}
        return int(res.get("zygote_pid") or 0)

    def stop_zygote(self) -> None:
        from pyctr.plugins.runtime.runc.manager import RuncRuntime

        with contextlib.suppress(Exception):
            RuncRuntime(self.state / "pyctr.runtime.runc", load=False).stop_zygote()


class Containerd:
    def __init__(self, work: Path) -> None:
        self.dir = work / "ctd"
        self.dir.mkdir()
        self.sock = self.dir / "ctd.sock"
        (self.dir / "config.toml").write_text(f"""version = 2
root = "{self.dir}/root"
state = "{self.dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[debug]
  address = "{self.dir}/debug.sock"
""")
        self.proc = subprocess.Popen(["containerd", "--config", str(self.dir / "config.toml")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.dir / "log", "wb"),  # noqa: SIM115
                                     start_new_session=True)
        self.ctr = ["ctr", "-a", str(self.sock), "-n", "bench"]
        for _ in range(100):
            if sh([*self.ctr, "version"], timeout=5).returncode == 0:
                return
            time.sleep(0.1)
        raise SystemExit("containerd did not start")

    def shim_pids(self) -> list[int]:
        out = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                cmdline = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline and cmdline[0].endswith(b"containerd-shim-runc-v2") and str(self.sock).encode() in cmdline:
                out.append(int(d.name))
        return out

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            for cid in ok([*self.ctr, "containers", "ls", "-q"]).split():
                sh([*self.ctr, "task", "rm", "-f", cid])
                sh([*self.ctr, "containers", "rm", cid])
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in self.shim_pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for line in reversed(Path("/proc/mounts").read_text().splitlines()):
            mp = line.split()[1]
            if mp.startswith(str(self.dir)):
                sh(["umount", "-l", mp])


def xargs(n: int, p: int, argv: list[str]) -> None:
    """``seq n | xargs -P p -I{} argv...`` (``{}`` in argv is the number)."""
    subprocess.run(["xargs", "-P", str(p), "-I{}", *argv], input="\n".join(str(i) for i in range(n)) + "\n",
                   text=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def bare_runc_bundles(pc: Pyctr, work: Path, n: int, seccomp: bool = True) -> tuple[Path, Path]:
    """N bundles with the spec pyctr generates for ``true`` (read back from a record) on one shared
    read-only copy of the image's root file system (without the seccomp profile: ``seccomp=False``)."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from runtime_helpers import make_busybox_rootfs

    rootfs = work / "bare-rootfs"
    if not rootfs.exists():
        make_busybox_rootfs(rootfs)  # the same files as the image's
    ok(pc.cmd("containers", "create", IMAGE, "spec-src", "true"))
    info = json.loads(ok(pc.cmd("containers", "info", "spec-src")))
    ok(pc.cmd("containers", "rm", "spec-src"))
    spec = info.get("spec") or info.get("Spec")
    spec["root"] = {"path": str(rootfs), "readonly": True}
    if not seccomp:
        spec["linux"].pop("seccomp", None)
    bundles = work / ("bundles" if seccomp else "bundles-noseccomp")
    bundles.mkdir()
    for i in range(n):
        b = bundles / f"b{i}"
        b.mkdir()
        s = json.loads(json.dumps(spec))
        s["linux"]["cgroupsPath"] = f"{pc.cgroup_parent}-bare/c{i}"
        s["hostname"] = f"c{i}"
        (b / "config.json").write_text(json.dumps(s))
    return bundles, work / "runc-root"


def throughput(args: argparse.Namespace, work: Path, pc: Pyctr, ctd: Containerd | None) -> list[tuple[str, float]]:
    n, p = args.n, args.p
    rows: list[tuple[str, float]] = []
    best: dict[str, float] = {}

    def keep(name: str, dt: float) -> None:
        best[name] = min(best.get(name, float("inf")), dt)

    bundles, runc_root = bare_runc_bundles(pc, work, n)
    plain, _ = bare_runc_bundles(pc, work, n, seccomp=False)
    ok(pc.cmd("batch", "run", "--count", "5", "--rm", IMAGE, "true"))
    for r in range(args.rounds):
        settle()
        keep("pyctr batch run --rm (embedded)", timed(lambda: ok(pc.cmd(
            "batch", "run", "--count", str(n), "--parallel", str(p), "--rm", IMAGE, "true"))))
        settle()
        keep("bare runc run (prepared bundles)", timed(lambda: xargs(n, p, [
            "runc", "--root", str(runc_root), "run", "--bundle", f"{bundles}/b{{}}", f"bench-{r}-{{}}"])))  # noqa: B023
        settle()
        keep(NO_SECCOMP, timed(lambda: xargs(n, p, [
            "runc", "--root", str(runc_root), "run", "--bundle", f"{plain}/b{{}}", f"plain-{r}-{{}}"])))  # noqa: B023
        if ctd is not None:
            settle()
            keep("ctr run --rm (containerd)", timed(lambda: xargs(n, p, [
                *ctd.ctr, "run", "--rm", IMAGE, f"b{r}-{{}}", "true"])))  # noqa: B023
    pc.start_daemon()
    try:
        ok(pc.cmd("batch", "run", "--count", "5", "--rm", IMAGE, "true"))
        for _ in range(args.rounds):
            settle()
            keep("pyctr batch run --rm (via pyctrd)", timed(lambda: ok(pc.cmd(
                "batch", "run", "--count", str(n), "--parallel", str(p), "--rm", IMAGE, "true"))))
    finally:
        pc.stop_daemon()
    for name in ("pyctr batch run --rm (embedded)", "pyctr batch run --rm (via pyctrd)",
                 "bare runc run (prepared bundles)", NO_SECCOMP, "ctr run --rm (containerd)"):
        if name in best:
            rows.append((name, n / best[name]))
    return rows


def memory(args: argparse.Namespace, pc: Pyctr, ctd: Containerd | None) -> dict[str, dict[str, float]]:
    n = args.mem_n
    out: dict[str, dict[str, float]] = {}
    pc.stop_zygote()
    daemon = pc.start_daemon()
    try:
        time.sleep(1.0)
        rss0 = rss_kb(daemon)
        settle()
        avail0 = mem_available_kb()
        t_start = timed(lambda: ok(pc.cmd("batch", "run", "--count", str(n), "--detach", "--label", "bench=mem",
                                          IMAGE, "sleep", "600")))
        time.sleep(2.0)
        shims = pc.shim_pids()
        zyg = pc.zygote_pid()
        out["pyctr"] = {
            "shims": len(shims),
            "shim_pss_mb": (sum(pss_kb(s) for s in shims) + (pss_kb(zyg) if zyg else 0)) / 1024 / n,
            "daemon_growth_mb": (rss_kb(daemon) - rss0) / 1024 / n,
            "avail_drop_mb": (avail0 - mem_available_kb()) / 1024 / n,
            "start_s": t_start,
            "remove_s": timed(lambda: ok(pc.cmd("batch", "rm", "-q", "--label", "bench=mem"))),
        }
    finally:
        pc.stop_daemon()
    if ctd is not None:
        rss0 = rss_kb(ctd.proc.pid)
        settle()
        avail0 = mem_available_kb()
        t_start = timed(lambda: xargs(n, 4, [*ctd.ctr, "run", "-d", IMAGE, "m{}", "sleep", "600"]))
        time.sleep(2.0)
        shims = ctd.shim_pids()
        out["containerd"] = {
            "shims": len(shims),
            "shim_pss_mb": sum(pss_kb(s) for s in shims) / 1024 / n,
            "daemon_growth_mb": (rss_kb(ctd.proc.pid) - rss0) / 1024 / n,
            "avail_drop_mb": (avail0 - mem_available_kb()) / 1024 / n,
            "start_s": t_start,
            "remove_s": timed(lambda: (xargs(n, 4, [*ctd.ctr, "task", "rm", "-f", "m{}"]),
                                       xargs(n, 4, [*ctd.ctr, "container", "rm", "m{}"]))),  # type: ignore[func-returns-value]
        }
    return out


def scale(n: int, pc: Pyctr) -> dict[str, float]:
    """N sleeping containers at once through pyctrd: launched (detached, shared shims), listed, scraped
    for metrics and removed, while a thread times small calls (``version``) to the daemon."""
    import threading

    from pyctr import Client

    daemon = pc.start_daemon()
    lat: list[float] = []
    stop = threading.Event()

    def prober() -> None:
        with Client(address=str(pc.state / "pyctr.sock")) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                c.version()
                lat.append(time.perf_counter() - t0)
                time.sleep(0.02)

    th = threading.Thread(target=prober, daemon=True)
    th.start()
    out: dict[str, float] = {}
    try:
        fds0 = len(os.listdir(f"/proc/{daemon}/fd"))
        out["start_s"] = timed(lambda: ok(pc.cmd("batch", "run", "--count", str(n), "--detach", "--parallel", "8",
                                                 "--label", "bench=scale", IMAGE, "sleep", "3600")))
        tasks = json.loads(ok(pc.cmd("tasks", "ls", "-o", "json")))
        out["running"] = sum(1 for t in tasks if t.get("status") == "running")
        out["shims"] = len({t.get("shim_pid") for t in tasks})
        out["ls_s"] = timed(lambda: ok(pc.cmd("containers", "ls", "-q")))
        out["tasks_ls_s"] = timed(lambda: ok(pc.cmd("tasks", "ls", "-q")))
        metrics = sh(pc.cmd("metrics"))
        out["metrics_s"] = timed(lambda: sh(pc.cmd("metrics")))
        out["metrics_ok"] = float(metrics.returncode == 0)
        out["daemon_fds"] = len(os.listdir(f"/proc/{daemon}/fd")) - fds0
        kinds: dict[str, int] = {}
        for fd in os.listdir(f"/proc/{daemon}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{daemon}/fd/{fd}")
                kind = target.split(":")[0] if ":" in target else "/".join(target.split("/")[:4])
                kinds[kind] = kinds.get(kind, 0) + 1
        print("daemon fds by kind:", sorted(kinds.items(), key=lambda kv: -kv[1])[:6], file=sys.stderr)
        shims = [int(t["shim_pid"]) for t in tasks if t.get("shim_pid")]
        out["shim_fds_max"] = max((len(os.listdir(f"/proc/{p}/fd")) for p in set(shims)), default=0)
        out["remove_s"] = timed(lambda: ok(pc.cmd("batch", "rm", "-q", "--label", "bench=scale")))
        out["left_containers"] = len(ok(pc.cmd("containers", "ls", "-q")).split())
        out["left_mounts"] = sum(1 for ln in Path("/proc/mounts").read_text().splitlines()
                                 if ln.split()[1].startswith(str(pc.root.parent)))
        time.sleep(3)
        out["left_shims"] = len(pc.shim_pids())
    finally:
        stop.set()
        th.join()
        pc.stop_daemon()
    lat.sort()
    out["calls"] = len(lat)
    out["p50_ms"] = 1000 * lat[len(lat) // 2] if lat else 0.0
    out["p99_ms"] = 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0.0
    out["max_ms"] = 1000 * lat[-1] if lat else 0.0
    return out


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="pyctr-bench-batch-"))
    try:
        yield d
    finally:
        for line in reversed(Path("/proc/mounts").read_text().splitlines()):
            mp = line.split()[1]
            if mp.startswith(str(d)):
                sh(["umount", "-l", mp])
        shutil.rmtree(d, ignore_errors=True)


def oci_archive(pc: Pyctr, work: Path) -> Path:
    tar = work / "busybox.tar"
    ok(pc.cmd("images", "export", str(tar), IMAGE))
    return tar


def containerd_with_image(pc: Pyctr, work: Path) -> Containerd:
    """A private containerd holding pyctr's busybox image as IMAGE (exported and imported), warmed up
    by one ``ctr run --rm``; stopped again if that fails."""
    ctd = Containerd(work)
    try:
        ok([*ctd.ctr, "images", "import", "--base-name", "localhost/busybox", str(oci_archive(pc, work))])
        names = ok([*ctd.ctr, "images", "ls", "-q"]).split()
        if IMAGE not in names:
            ok([*ctd.ctr, "images", "tag", names[0], IMAGE])
        ok([*ctd.ctr, "run", "--rm", IMAGE, "warm", "true"])
    except BaseException:
        ctd.stop()
        raise
    return ctd


def cleanup_cgroups(prefixes: list[str]) -> None:
    from pyctr.plugins.runtime.runc import cgroups

    for prefix in prefixes:
        cgroups.remove(prefix)  # every hierarchy, children first


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--p", type=int, default=8)
    ap.add_argument("--mem-n", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-containerd", action="store_true")
    ap.add_argument("--scale", type=int, default=0, help="only the scale run: N sleeping containers at once")
    ap.add_argument("--append", action="store_true", help="append the table to bench/RESULTS.md")
    args = ap.parse_args()
    with workdir() as work:
        pc = Pyctr(work)
        ok(pc.cmd("images", "build-busybox"))
        if args.scale:
            try:
                res = scale(args.scale, pc)
            finally:
                pc.stop_daemon()
                pc.stop_zygote()
                cleanup_cgroups([pc.cgroup_parent])
            text = f"Scale: {args.scale} sleeping containers through pyctrd: " + ", ".join(
                f"{k} {v:.3g}" for k, v in res.items())
            print(text)
            if args.append:
                cmd = "python bench/bench_batch.py " + " ".join(sys.argv[1:])
                with open(HERE / "RESULTS.md", "a") as f:
                    f.write(f"\n### Batch scale run ({time.strftime('%Y-%m-%d %H:%M')}): `{cmd}`\n\n{text}\n")
            return
        ctd = None
        try:
            if not args.no_containerd and shutil.which("containerd"):
                ctd = containerd_with_image(pc, work)
            load0 = os.getloadavg()[0]
            rows = throughput(args, work, pc, ctd)
            mem = memory(args, pc, ctd)
            load1 = os.getloadavg()[0]
        finally:
            pc.stop_daemon()
            pc.stop_zygote()
            if ctd is not None:
                ctd.stop()
            cleanup_cgroups([pc.cgroup_parent, pc.cgroup_parent + "-bare"])
    rates = dict(rows)
    ctr = rates.get("ctr run --rm (containerd)")
    runc = rates.get("bare runc run (prepared bundles)")
    lines = [f"N={args.n} busybox `true`, P={args.p}, best of {args.rounds} (load average {load0:.1f} -> {load1:.1f})",
             "", "| launcher | containers/s | vs containerd | vs bare runc |", "|---|---|---|---|"]
    for name, rate in rows:
        lines.append(f"| {name} | {rate:.1f} | {rate / ctr:.2f}x | {rate / runc:.2f}x |" if ctr and runc else
                     f"| {name} | {rate:.1f} | | |")
    lines += ["", f"{args.mem_n} sleeping containers (`sleep 600`, detached), per container:", "",
              "| | shims | shim PSS (MB) | daemon RSS growth (MB) | MemAvailable drop (MB) | start all (s) "
              "| remove all (s) |", "|---|---|---|---|---|---|---|"]
    for who, m in mem.items():
        lines.append(f"| {who} | {m['shims']:.0f} | {m['shim_pss_mb']:.2f} | {m['daemon_growth_mb']:.2f} | "
                     f"{m['avail_drop_mb']:.2f} | {m['start_s']:.2f} | {m['remove_s']:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.append:
        cmd = "python bench/bench_batch.py " + " ".join(sys.argv[1:])
        with open(HERE / "RESULTS.md", "a") as f:
            f.write(f"\n### Batch launch run ({time.strftime('%Y-%m-%d %H:%M')}): `{cmd}`\n\n{table}\n")


if __name__ == "__main__":
    main()
