#!/usr/bin/env python3
"""Pull of a multi-layer image (>= 100 MB of gzip layers) from a docker-registry on loopback: pyctr
against containerd's ``ctr``, each from a fresh store every run.

* **fetch only**: ``pyctr images pull --plain-http --no-unpack`` vs ``ctr content fetch --plain-http``;
* **full pull** (fetch + unpack into overlayfs): ``pyctr images pull --plain-http`` vs
  ``ctr images pull --plain-http`` -- skipped for pyctr when its unpack is not available.

The image is built once (cached under --cache): four gzip layers of host files (``/usr/lib``,
``/usr/share``, ``/usr/bin``) plus one of random bytes, pushed with skopeo.  containerd runs privately
(CRI disabled) with a fresh root for every run; pyctr gets a fresh --root/--state.  Whole commands are
timed (process start included, as a user sees them); median and min-max of --runs.

    python bench/bench_pull.py --runs 5 [--tmpfs]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from _servers import start_containerd, start_registry

LAYER_SOURCES = [("/usr/lib/x86_64-linux-gnu", 70 << 20), ("/usr/share", 70 << 20), ("/usr/bin", 50 << 20)]
RANDOM_LAYER = 24 << 20


def _tar_dir(root: str, limit: int) -> bytes:
    """A tar of regular files, directories and symlinks under ``root``, stopping at ``limit`` bytes."""
    buf = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                p = os.path.join(dirpath, name)
                try:
                    st = os.lstat(p)
                    if not (os.path.isfile(p) or os.path.islink(p)):
                        continue
                    tf.add(p, arcname=p.lstrip("/"), recursive=False)
                except OSError:
                    continue
                total += st.st_size
                if total >= limit:
                    return buf.getvalue()
    return buf.getvalue()


def build_image(cache: Path) -> Path:
    layout = cache / "bench-pull-layout"
    if (layout / "index.json").exists():
        return layout
    tmp = cache / "bench-pull-layout.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "blobs" / "sha256").mkdir(parents=True)

    def put(data: bytes) -> str:
        h = hashlib.sha256(data).hexdigest()
        (tmp / "blobs" / "sha256" / h).write_bytes(data)
        return "sha256:" + h

    layers, diff_ids = [], []
    tars = [_tar_dir(src, limit) for src, limit in LAYER_SOURCES]
    rnd = io.BytesIO()
    with tarfile.open(fileobj=rnd, mode="w") as tf:
        ti = tarfile.TarInfo("random.bin")
        ti.size = RANDOM_LAYER
        tf.addfile(ti, io.BytesIO(os.urandom(RANDOM_LAYER)))
    tars.append(rnd.getvalue())
    for t in tars:
        gz = gzip.compress(t, compresslevel=6, mtime=0)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(gz),
                       "size": len(gz)})
        diff_ids.append("sha256:" + hashlib.sha256(t).hexdigest())
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(config),
                   "size": len(config)},
        "layers": layers}).encode()
    md = put(manifest)
    (tmp / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (tmp / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": len(manifest),
         "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))
    tmp.rename(layout)
    return layout


class Containerd:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def sock(self) -> str:
        return str(self.base / "ctd.sock")

    def start(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
        self.base.mkdir(parents=True)
        self.proc = start_containerd(self.base, self.sock, tries=100)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(20)
            self.proc = None
        # overlay snapshots may still be mounted under the root
        for line in reversed(Path("/proc/mounts").read_text().splitlines()):
            mnt = line.split()[1]
            if mnt.startswith(str(self.base)):
                subprocess.run(["umount", "-l", mnt], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])}... failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return dt


def _pyctr_clean(root: Path) -> None:
    for line in reversed(Path("/proc/mounts").read_text().splitlines()):
        mnt = line.split()[1]
        if mnt.startswith(str(root)):
            subprocess.run(["umount", "-l", mnt], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cache", default="/tmp/pyctr-bench-cache")
    ap.add_argument("--dir", default=None, help="scratch (default: a temp dir under /tmp)")
    ap.add_argument("--tmpfs", action="store_true",
                    help="scratch under /dev/shm: pyctr's --root/--state, containerd's root/state and the "
                         "registry's storage all live on tmpfs")
    ap.add_argument("--pyctr", default=shutil.which("pyctr", path=os.path.dirname(sys.executable))
                    or shutil.which("pyctr") or "pyctr")
    args = ap.parse_args()
    if args.tmpfs:
        args.dir = "/dev/shm"
    for tool in ("docker-registry", "skopeo", "containerd", "ctr"):
        if shutil.which(tool) is None:
            raise SystemExit(f"needs {tool}")
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    layout = build_image(cache)
    idx = json.loads((layout / "index.json").read_text())
    mdesc = idx["manifests"][0]
    manifest = json.loads((layout / "blobs" / "sha256" / mdesc["digest"][7:]).read_bytes())
    total = sum(ly["size"] for ly in manifest["layers"]) + manifest["config"]["size"] + mdesc["size"]
    base = Path(tempfile.mkdtemp(prefix="bench-pull-", dir=args.dir))
    reg, addr = start_registry(base, "registry")
    ctd = Containerd(base / "ctd")
    ref = f"{addr}/bench/pull:1"
    results: dict[str, list[float]] = {}
    try:
        subprocess.run(["skopeo", "copy", "-q", "--preserve-digests", "--dest-tls-verify=false",
                        f"oci:{layout}:latest", f"docker://{ref}"], check=True)
        print(f"image: {len(manifest['layers'])} gzip layers, {total / 1e6:.1f} MB; registry {addr}; "
              f"scratch {base}; load {os.getloadavg()[0]:.2f}", flush=True)

        def pyctr(*extra: str) -> float:
            root = base / "pyctr"
            _pyctr_clean(root)
            try:
                return timed([args.pyctr, "--root", str(root / "root"), "--state", str(root / "state"),
                              "images", "pull", "--plain-http", *extra, ref])
            finally:
                _pyctr_clean(root)

        def ctr(*cmd: str) -> float:
            ctd.start()
            try:
                return timed(["ctr", "-a", ctd.sock, "-n", "bench", *cmd])
            finally:
                ctd.stop()

        cases = {
            "pyctr images pull --no-unpack (fetch only)": lambda: pyctr("--no-unpack"),
            "ctr content fetch (fetch only)": lambda: ctr("content", "fetch", "--plain-http", ref),
            "pyctr images pull (fetch + unpack)": lambda: pyctr(),
            "ctr images pull (fetch + unpack)": lambda: ctr("images", "pull", "--plain-http", ref),
        }
        for _ in range(args.runs):  # interleaved, so machine load hits every case alike
            for name, fn in cases.items():
                if name in results and not results[name]:
                    continue
                try:
                    results.setdefault(name, []).append(fn())
                except RuntimeError as e:
                    print(f"{name}: not measured: {e}", flush=True)
                    results[name] = []
    finally:
        ctd.stop()
        reg.terminate()
        reg.wait(10)
        shutil.rmtree(base, ignore_errors=True)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"| command ({total / 1e6:.0f} MB, {args.runs} runs) | median s | min-max s | MB/s (median) |")
    print("|---|---:|---:|---:|")
    for name, ts in results.items():
        if not ts:
            print(f"| {name} | n/a | | |")
            continue
        med = statistics.median(ts)
        print(f"| {name} | {med:.2f} | {min(ts):.2f}-{max(ts):.2f} | {total / med / 1e6:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
