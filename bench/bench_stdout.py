"""Container stdout throughput: 1 GiB written by ``dd`` in a busybox container.

    python bench/bench_stdout.py [--mib 1024] [--repeat 3] [--no-ctr]     # as root

Cases (best of ``--repeat``, MB/s = 10^6 bytes per second, timed from task start to exit):

* plain pipe on the host: ``busybox dd ... | cat >/dev/null`` (the ceiling);
* pyctr, stdout handed over (default): the container writes straight into ``cat``'s pipe;
* pyctr, ``stdio_copy``: the shim copies the container's pipe into ``cat``'s pipe (splice), with the
  compiled loop and with the pure-Python twin;
* pyctr, ``stdio_copy`` into a file on tmpfs (O_APPEND: read/write through user space);
* ``ctr run`` with a private containerd (pipe -> shim -> FIFO -> ctr -> /dev/null), when containerd,
  ctr and umoci are installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pyctr.runtime import ProcessIO
from runtime_helpers import busybox_spec, make_busybox_rootfs, runtime


def dd_args(mib: int) -> list[str]:
    return ["dd", "if=/dev/zero", "bs=1M", f"count={mib}"]


def host_pipe(mib: int) -> float:
    bb = shutil.which("busybox") or "busybox"
    t0 = time.perf_counter()
    subprocess.run(f"{bb} dd if=/dev/zero bs=1M count={mib} 2>/dev/null | cat >/dev/null", shell=True,
                   check=True)
    return time.perf_counter() - t0


def pyctr_case(state: Path, rootfs: Path, mib: int, *, copy: bool, to_file: Path | None = None,
               pure: bool = False) -> float:
    env_before = os.environ.get("PYCTR_NO_EXTENSIONS")
    if pure:
        os.environ["PYCTR_NO_EXTENSIONS"] = "1"  # inherited by the zygote and the shims
    try:
        with runtime(state, stdio_copy=copy) as rt:
            spec = busybox_spec(rootfs, dd_args(mib))
            if to_file is not None:
                to_file.unlink(missing_ok=True)
                t = rt.create("bench", "dd", spec, [], ProcessIO(stdout=str(to_file)))
                t0 = time.perf_counter()
                t.start()
                st = t.wait(timeout=600)
                dt = time.perf_counter() - t0
                assert to_file.stat().st_size == mib << 20
                to_file.unlink()
            else:
                cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
                assert cat.stdin is not None
                t = rt.create("bench", "dd", spec, [], ProcessIO(stdout=cat.stdin.fileno()))
                cat.stdin.close()
                t0 = time.perf_counter()
                t.start()
                st = t.wait(timeout=600)
                cat.wait()
                dt = time.perf_counter() - t0
            assert st.exit_status == 0, st
            t.delete()
            return dt
    finally:
        if pure:
            if env_before is None:
                os.environ.pop("PYCTR_NO_EXTENSIONS", None)
            else:
                os.environ["PYCTR_NO_EXTENSIONS"] = env_before


def _oci_tar(rootfs: Path, work: Path) -> Path:
    layout, bundle = work / "layout", work / "bundle"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:latest"], check=True)
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:latest", str(bundle)], check=True,
                   stdout=subprocess.DEVNULL)
    shutil.rmtree(bundle / "rootfs")
    shutil.copytree(rootfs, bundle / "rootfs", symlinks=True)
    subprocess.run(["umoci", "repack", "--image", f"{layout}:latest", str(bundle)], check=True)
    subprocess.run(["umoci", "config", "--image", f"{layout}:latest", "--config.cmd", "sh",
                    "--config.env", "PATH=/bin", "--architecture", "amd64", "--os", "linux"], check=True,
                   stdout=subprocess.DEVNULL)
    tar = work / "bb.tar"
    subprocess.run(["tar", "-C", str(layout), "-cf", str(tar), "."], check=True)
    return tar


class Containerd:
    def __init__(self, work: Path) -> None:
        self.dir = work / "ctd"
        self.dir.mkdir()
        cfg = self.dir / "config.toml"
        cfg.write_text(f"""version = 2
root = "{self.dir}/root"
state = "{self.dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.dir}/ctd.sock"
[ttrpc]
  address = "{self.dir}/ctd.sock.ttrpc"
[debug]
  address = "{self.dir}/debug.sock"
""")
        self.log = open(self.dir / "log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(["containerd", "--config", str(cfg)], stdout=self.log, stderr=self.log)
        self.ctr = ["ctr", "-a", f"{self.dir}/ctd.sock", "-n", "bench"]
        for _ in range(100):
            if subprocess.run([*self.ctr, "version"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("containerd did not start")

    def run(self, image: str, mib: int, n: int) -> float:
        t0 = time.perf_counter()
        subprocess.run([*self.ctr, "run", "--rm", image, f"dd{n}", *dd_args(mib)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - t0

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        subprocess.run(f"awk '$2 ~ \"^{self.dir}\" {{print $2}}' /proc/mounts | sort -r | xargs -r umount -l",
                       shell=True, check=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-ctr", action="store_true")
    args = ap.parse_args()
    mib, rep = args.mib, args.repeat
    nbytes = mib << 20
    with tempfile.TemporaryDirectory(prefix="pyctr-bench-out-") as d:
        work = Path(d)
        rootfs = make_busybox_rootfs(work / "rootfs")
        shm = Path(tempfile.mkdtemp(prefix="pyctr-bench-", dir="/dev/shm"))
        results: list[tuple[str, float]] = []

        def best(label: str, fn: Any) -> None:
            times = [fn(i) for i in range(rep)]
            results.append((label, min(times)))
            print(f"{label:62s} {min(times):6.3f} s  {nbytes / min(times) / 1e6:7.0f} MB/s", flush=True)

        try:
            best("host: busybox dd | cat >/dev/null", lambda i: host_pipe(mib))
            best("pyctr: stdout handed over (container -> cat's pipe)",
                 lambda i: pyctr_case(work / f"s1{i}", rootfs, mib, copy=False))
            best("pyctr: stdio_copy, shim splices pipe -> cat's pipe (Cython)",
                 lambda i: pyctr_case(work / f"s2{i}", rootfs, mib, copy=True))
            best("pyctr: stdio_copy, shim splices pipe -> cat's pipe (pure Python)",
                 lambda i: pyctr_case(work / f"s3{i}", rootfs, mib, copy=True, pure=True))
            best("pyctr: stdio_copy, shim copies to a tmpfs file (Cython)",
                 lambda i: pyctr_case(work / f"s4{i}", rootfs, mib, copy=True, to_file=shm / "out"))
            best("pyctr: stdio_copy, shim copies to a tmpfs file (pure Python)",
                 lambda i: pyctr_case(work / f"s5{i}", rootfs, mib, copy=True, to_file=shm / "out",
                                      pure=True))
            if not args.no_ctr and all(shutil.which(x) for x in ("containerd", "ctr", "umoci")):
                tar = _oci_tar(rootfs, work)
                ctd = Containerd(work)
                try:
                    subprocess.run([*ctd.ctr, "images", "import", "--base-name", "bench/bb", str(tar)],
                                   check=True, stdout=subprocess.DEVNULL)
                    image = subprocess.run([*ctd.ctr, "images", "ls", "-q"], capture_output=True, text=True,
                                           check=True).stdout.split()[0]
                    ctd.run(image, 16, 999)  # warm
                    best("ctr run --rm (pipe -> shim -> FIFO -> ctr -> /dev/null; whole command)",
                         lambda i: ctd.run(image, mib, i))
                finally:
                    ctd.close()
        finally:
            shutil.rmtree(shm, ignore_errors=True)
        base = results[0][1]
        print("\nratio to the plain host pipe (higher is better):")
        for label, t in results:
            print(f"  {label:62s} {base / t:5.2f}")


if __name__ == "__main__":
    main()
