"""Benchmark: ``pyctr run --rm IMAGE true`` latency vs ``ctr run --rm`` (a private containerd) vs bare
``runc run``, the same busybox image, interleaved in the same run.

    python bench/bench_run.py [--runs 15] [--warmup 2] [--append bench/RESULTS.md]

The image is built by ``pyctr images build-busybox`` (from the host's busybox-static), exported and
imported into a private containerd; runc gets a bundle with that layer extracted.  Prints the median,
min and max of each and the pyctr/ctr ratio; with ``--append`` adds the table to RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gzip
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

IMAGE = "localhost/busybox:latest"


def pyctr_exe() -> str:
    here = Path(os.path.realpath(sys.executable)).parent / "pyctr"
    return str(here) if here.exists() else (shutil.which("pyctr") or "pyctr")


def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, capture_output=True, check=True, **kw)  # type: ignore[call-overload,no-any-return]


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {p.stderr.decode(errors='replace')[-300:]}")
    return dt


def start_containerd(d: Path) -> tuple[subprocess.Popen[bytes], list[str]]:
    d.mkdir(parents=True)
    sock = d / "c.sock"
    (d / "config.toml").write_text(
        f'version = 2\nroot = "{d}/root"\nstate = "{d}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n'
        f'[debug]\n  address = "{d}/debug.sock"\n'
    )
    log = open(d / "log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(["containerd", "--config", str(d / "config.toml")], stdout=log, stderr=log)
    ctr = ["ctr", "-a", str(sock), "-n", "bench"]
    for _ in range(100):
        if subprocess.run([*ctr, "version"], capture_output=True).returncode == 0:
            return proc, ctr
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("containerd did not start")


def blob_from(t: tarfile.TarFile, name: str) -> bytes:
    f = t.extractfile(name)
    if f is None:
        raise SystemExit(f"{name} missing from the exported archive")
    return f.read()


def runc_bundle(d: Path, layer_tar_gz: bytes) -> Path:
    b = d / "bundle"
    (b / "rootfs").mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer_tar_gz))) as t:
        t.extractall(b / "rootfs", filter="fully_trusted")
    run(["runc", "spec", "--bundle", str(b)])
    spec = json.loads((b / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["true"]
    spec["process"]["env"] = ["PATH=/bin"]
    (b / "config.json").write_text(json.dumps(spec))
    return b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--append", default="", help="append the results table to this markdown file")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pyctr-bench-run-"))
    pyctr = [pyctr_exe(), "--root", str(tmp / "root"), "--state", str(tmp / "state")]
    ctd = None
    try:
        run([*pyctr, "images", "build-busybox"])
        run([*pyctr, "images", "export", str(tmp / "bb.tar"), IMAGE])
        ctd, ctr = start_containerd(tmp / "ctd")
        run([*ctr, "images", "import", str(tmp / "bb.tar")])
        with tarfile.open(tmp / "bb.tar") as t:

            def blob(digest: str) -> bytes:
                f = t.extractfile("blobs/sha256/" + digest.split(":")[1])
                assert f is not None
                return f.read()

            index = json.loads(blob_from(t, "index.json"))
            manifest = json.loads(blob(index["manifests"][0]["digest"]))
            layer = blob(manifest["layers"][0]["digest"])
        bundle = runc_bundle(tmp, layer)
        runc = ["runc", "--root", str(tmp / "runc-root"), "run", "--bundle", str(bundle)]
        cmds = {
            "pyctr run --rm": lambda i: [*pyctr, "run", "--rm", IMAGE, "true"],
            "pyctr run --rm (PYCTR_NO_ZYGOTE=1)": lambda i: ["env", "PYCTR_NO_ZYGOTE=1", *pyctr, "run", "--rm",
                                                            IMAGE, "true"],
            "ctr run --rm": lambda i: [*ctr, "run", "--rm", IMAGE, f"b{i}", "true"],
            "runc run (bare)": lambda i: [*runc, f"r{i}"],
        }
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for i in range(a.warmup + a.runs):
            for name, mk in cmds.items():
                dt = timed(mk(i))
                if i >= a.warmup:
                    times[name].append(dt)
        load = os.getloadavg()[0]
        rows = []
        for name, ts in times.items():
            rows.append((name, statistics.median(ts) * 1000, min(ts) * 1000, max(ts) * 1000))
        ratio = rows[0][1] / rows[2][1]
        lines = [
            "| command | median ms | min ms | max ms |",
            "|---|---:|---:|---:|",
            *(f"| `{n}` | {m:.1f} | {lo:.1f} | {hi:.1f} |" for n, m, lo, hi in rows),
        ]
        summary = (f"pyctr/ctr median ratio {ratio:.2f}; {a.runs} runs each, interleaved, after {a.warmup} "
                   f"warm-up rounds; load average {load:.1f}")
        print("\n".join(lines))
        print(summary)
        if a.append:
            with open(a.append, "a") as f:
                f.write(f"\n## `run --rm IMAGE true` latency (issue 5, `bench/bench_run.py`)\n\n"
                        f"Measured {datetime.date.today()}: a one-layer busybox image "
                        "(`pyctr images build-busybox`), the same in a private containerd 1.6 (CRI off); "
                        "runc 1.1.5 on a bundle with the same rootfs.\n\n"
                        + "\n".join(lines) + f"\n\n{summary}.\n")
    finally:
        if ctd is not None:
            ctd.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                ctd.wait(10)
            if ctd.poll() is None:
                ctd.kill()
        with open("/proc/self/mounts") as f:
            for m in sorted((ln.split()[1] for ln in f if ln.split()[1].startswith(str(tmp))), reverse=True):
                subprocess.run(["umount", "-l", m], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
