"""Benchmark: apply a large real layer (tar and tar+gzip) to an empty directory.

Compares, in the same run: GNU ``tar -xf``/``tar -xzf``, ``tar -I igzip`` (if installed), Python's
``tarfile``, and pyctr's extractor (compiled and pure-Python twin).  The source layer is built once
from the host's own ``/usr`` and cached under ``/var/tmp/pyctr-bench``.

    python bench/bench_extract.py [--repeat 3] [--targets /dev/shm,/var/tmp] [--only gz] [--no-containerd]

With containerd and ctr installed, each target also gets a *containerd vs pyctr import* table: the gzip
layer is wrapped in a one-layer OCI image tar, and whole commands are timed from a fresh store each run
(a private containerd, CRI disabled, root/state under the target; pyctr's --root/--state under the
target; on a disk the stores are removed only after all runs): ``ctr images import --no-unpack`` vs
``ctr images import`` and ``pyctr images import --no-unpack`` vs ``pyctr images import``.  Unpack
time = best with unpack - best without.  containerd decompresses with ``unpigz`` when pigz is on PATH
(printed).  ``--import-only`` runs just these.

Each figure is the best of ``--repeat`` runs, in MB/s of *uncompressed* layer per second of wall time
(output trees are removed only after all runs on a target, and dirty pages are written back before
each run, so one method's deletions or writeback do not slow the next).  Each method runs in a fresh
subprocess, so the pure-Python twin is forced with ``PYCTR_NO_EXTENSIONS=1``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from _servers import start_containerd

CACHE = Path("/var/tmp/pyctr-bench")
SOURCES = ["usr/lib/python3.11", "usr/share/vim", "usr/share/perl", "usr/lib/git-core", "usr/share/i18n"]


def build_layer() -> tuple[Path, Path, Path]:
    CACHE.mkdir(parents=True, exist_ok=True)
    tar, tgz, zst = CACHE / "layer.tar", CACHE / "layer.tar.gz", CACHE / "layer.tar.zst"
    if not tar.exists():
        srcs = [s for s in SOURCES if Path("/", s).exists()]
        tmp = tar.with_suffix(".tmp")
        subprocess.run(["tar", "--format=posix", "--sort=name", "-C", "/", "-cf", str(tmp), *srcs],
                       check=True)
        tmp.rename(tar)
    if not tgz.exists():
        with open(tgz.with_suffix(".tmp"), "wb") as out:
            subprocess.run(["gzip", "-6", "-c", str(tar)], stdout=out, check=True)
        tgz.with_suffix(".tmp").rename(tgz)
    if not zst.exists():
        import zstandard

        with open(tar, "rb") as src, open(zst.with_suffix(".tmp"), "wb") as out:
            zstandard.ZstdCompressor(level=3).copy_stream(src, out)
        zst.with_suffix(".tmp").rename(zst)
    return tar, tgz, zst


PYCTR = (
    "import sys; from pyctr._speedups import tario; "
    "r = tario.apply_layer(sys.argv[1], sys.argv[2]); assert tario.implementation() == sys.argv[3], "
    "tario.implementation()"
)
TARFILE = (
    "import sys, tarfile; t = tarfile.open(sys.argv[1]); "
    "t.extractall(sys.argv[2], numeric_owner=True, filter='fully_trusted')"
)


def methods(tar: Path, tgz: Path, zst: Path) -> list[tuple[str, str, list[str], dict[str, str]]]:
    py = sys.executable
    env_py = {"PYCTR_NO_EXTENSIONS": "1"}
    out: list[tuple[str, str, list[str], dict[str, str]]] = [
        ("tar", "GNU tar -xf", ["tar", "--numeric-owner", "-xf", str(tar), "-C", "{dst}"], {}),
        ("tar", "tarfile", [py, "-c", TARFILE, str(tar), "{dst}"], {}),
        ("tar", "pyctr (c)", [py, "-c", PYCTR, str(tar), "{dst}", "c"], {}),
        ("tar", "pyctr (py twin)", [py, "-c", PYCTR, str(tar), "{dst}", "py"], env_py),
        ("gz", "GNU tar -xzf", ["tar", "--numeric-owner", "-xzf", str(tgz), "-C", "{dst}"], {}),
    ]
    if shutil.which("igzip"):
        out.append(("gz", "tar -I igzip", ["tar", "--numeric-owner", "-I", "igzip", "-xf", str(tgz), "-C",
                                          "{dst}"], {}))
    if shutil.which("pigz"):
        out.append(("gz", "tar -I pigz", ["tar", "--numeric-owner", "-I", "pigz", "-xf", str(tgz), "-C",
                                         "{dst}"], {}))
    out += [
        ("gz", "tarfile (r:gz)", [py, "-c", TARFILE, str(tgz), "{dst}"], {}),
        ("gz", "pyctr (c)", [py, "-c", PYCTR, str(tgz), "{dst}", "c"], {}),
        ("gz", "pyctr (py twin)", [py, "-c", PYCTR, str(tgz), "{dst}", "py"], env_py),
        ("zst", "tar --zstd", ["tar", "--numeric-owner", "--zstd", "-xf", str(zst), "-C", "{dst}"], {}),
        ("zst", "pyctr (c)", [py, "-c", PYCTR, str(zst), "{dst}", "c"], {}),
    ]
    return out


def run_one(argv: list[str], env: dict[str, str], base: str, repeat: int, keep: list[str]) -> float:
    """Best wall time of ``repeat`` runs.  Output trees are kept in ``keep`` and removed after the whole
    target is done: deleting trees on ext4 (mounted with ``discard``) slows writes for minutes after,
    which would bias whichever method runs next.  Dirty pages are written back before each run."""
    best = float("inf")
    for _ in range(repeat):
        dst = tempfile.mkdtemp(prefix="pyctr-bench-", dir=base)
        keep.append(dst)
        cmd = [a.replace("{dst}", dst) for a in argv]
        os.sync()
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env={**os.environ, **env})
        best = min(best, time.perf_counter() - t0)
        if _fstype(base) == "tmpfs":  # memory: no discard effect, remove at once
            shutil.rmtree(keep.pop())
    return best


OCI_REF = "docker.io/library/pyctr-bench-extract:latest"


def build_oci_image(tar: Path, tgz: Path) -> Path:
    """A one-layer OCI layout tar around ``tgz`` (cached next to it)."""
    out = CACHE / "oci-image.tar"
    if out.exists() and out.stat().st_mtime >= tgz.stat().st_mtime:
        return out

    def sha(path: Path) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()

    layer = sha(tgz)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha(tar)]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": "sha256:" + hashlib.sha256(config).hexdigest(), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + layer,
                    "size": tgz.stat().st_size}]}).encode()
    mdig = hashlib.sha256(manifest).hexdigest()
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + mdig,
         "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": OCI_REF}}]}).encode()
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
        def add(name: str, data: bytes) -> None:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", index)
        add(f"blobs/sha256/{hashlib.sha256(config).hexdigest()}", config)
        add(f"blobs/sha256/{mdig}", manifest)
        tf.add(str(tgz), arcname=f"blobs/sha256/{layer}")
    tmp.rename(out)
    return out


def _umount_under(path: str) -> None:
    for line in reversed(Path("/proc/mounts").read_text().splitlines()):
        mnt = line.split()[1]
        if mnt == path or mnt.startswith(path + "/"):
            subprocess.run(["umount", "-l", mnt], capture_output=True)


class Containerd:
    """A private containerd (CRI disabled) with root/state/sockets under ``base``, fresh every start."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock = str(base / "ctd.sock")

    def start(self) -> None:
        self.stop()
        self.base.mkdir(parents=True)
        self.proc = start_containerd(self.base, self.sock)

    def stop(self, remove: bool = True) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None
        _umount_under(str(self.base))
        if remove:
            shutil.rmtree(self.base, ignore_errors=True)


def _timed(cmd: list[str]) -> float:
    os.sync()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {(proc.stderr or proc.stdout).strip()[-400:]}")
    return dt


def import_cases(base: str, image: Path, size: int, repeat: int, extractor_gz: float | None) -> None:
    """containerd's vs pyctr's ``images import`` of the one-layer image, with and without unpack."""
    pyctr = shutil.which("pyctr", path=os.path.dirname(sys.executable)) or shutil.which("pyctr")
    scratch = Path(tempfile.mkdtemp(prefix="pyctr-bench-import-", dir=base))
    # on a disk, stores are removed only after all runs (see run_one: deletions slow later writes)
    remove = _fstype(base) == "tmpfs"
    ctd = Containerd(scratch / "ctd")
    best: dict[str, float] = {}
    n = 0
    try:
        def ctr(unpack: bool) -> float:
            nonlocal ctd, n
            n += 1
            ctd = Containerd(scratch / f"ctd{n}")
            ctd.start()
            try:
                return _timed(["ctr", "-a", ctd.sock, "-n", "bench", "images", "import",
                               *([] if unpack else ["--no-unpack"]), str(image)])
            finally:
                ctd.stop(remove)

        def py(unpack: bool) -> float:
            nonlocal n
            n += 1
            root = scratch / f"pyctr{n}"
            try:
                return _timed([str(pyctr), "--root", str(root / "root"), "--state", str(root / "state"),
                               "images", "import", *([] if unpack else ["--no-unpack"]), str(image)])
            finally:
                _umount_under(str(root))
                if remove:
                    shutil.rmtree(root, ignore_errors=True)

        cases = {"ctr images import --no-unpack": lambda: ctr(False),
                 "ctr images import": lambda: ctr(True),
                 "pyctr images import --no-unpack": lambda: py(False),
                 "pyctr images import": lambda: py(True)}
        for _ in range(repeat):  # interleaved
            for name, fn in cases.items():
                if pyctr is None and name.startswith("pyctr"):
                    continue
                best[name] = min(best.get(name, float("inf")), fn())
    finally:
        ctd.stop()
        _umount_under(str(scratch))
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\n### images import of the one-layer gzip image ({image.stat().st_size / 1e6:.0f} MB tar), "
          f"target {base}, best of {repeat}, fresh store each run")
    print(f"containerd decompresses with: {'unpigz (pigz on PATH)' if shutil.which('unpigz') else 'Go gzip'}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| command | seconds |")
    print("|---|---:|")
    for name, t in best.items():
        print(f"| {name} | {t:.3f} |")
    unpack = {}
    for tool, label in (("ctr", "containerd"), ("pyctr", "pyctr")):
        if f"{tool} images import" in best:
            unpack[label] = best[f"{tool} images import"] - best[f"{tool} images import --no-unpack"]
    print("| unpack (with - without) | seconds | MB/s |")
    print("|---|---:|---:|")
    for label, t in unpack.items():
        print(f"| {label} | {t:.3f} | {size / t / 1e6:.0f} |")
    if extractor_gz is not None:
        print(f"| pyctr extractor alone (gz, table above) | {extractor_gz:.3f} | {size / extractor_gz / 1e6:.0f} |")
    if "containerd" in unpack:
        c = unpack["containerd"]
        if "pyctr" in unpack:
            print(f"pyctr/containerd unpack speed (whole import): {c / unpack['pyctr']:.2f}x")
            print(f"pyctr/containerd with-unpack import time: "
                  f"{best['pyctr images import'] / best['ctr images import']:.2f}")
        if extractor_gz is not None:
            print(f"pyctr extractor (c, gz) / containerd unpack speed: {c / extractor_gz:.2f}x")


def _fstype(path: str) -> str:
    return subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--targets", default="/dev/shm,/var/tmp")
    ap.add_argument("--only", default="", help="comma list of tar,gz,zst")
    ap.add_argument("--no-containerd", action="store_true", help="skip the containerd/pyctr import cases")
    ap.add_argument("--import-only", action="store_true", help="only the containerd/pyctr import cases")
    args = ap.parse_args()
    tar, tgz, zst = build_layer()
    size = tar.stat().st_size
    nfiles = int(subprocess.run(f"tar -tf {tar} | wc -l", shell=True, capture_output=True, text=True,
                                check=True).stdout)
    print(f"layer: {size / 1e6:.0f} MB uncompressed, {nfiles} entries, "
          f"gzip {tgz.stat().st_size / 1e6:.0f} MB,"
          f" zstd {zst.stat().st_size / 1e6:.0f} MB; best of {args.repeat}; MB/s of uncompressed layer")
    only = set(filter(None, args.only.split(",")))
    with_ctd = not args.no_containerd and shutil.which("containerd") and shutil.which("ctr")
    image = build_oci_image(tar, tgz) if with_ctd else None
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs")
    for base in args.targets.split(","):
        pyctr_gz: float | None = None
        if args.import_only:
            assert image is not None, "--import-only needs containerd and ctr"
            import_cases(base, image, size, args.repeat, None)
            continue
        print(f"\n## target {base}")
        print(f"| {'format':6} | {'method':18} | {'seconds':>8} | {'MB/s':>6} |")
        print(f"|{'-' * 8}|{'-' * 20}|{'-' * 10}|{'-' * 8}|")
        keep: list[str] = []
        try:
            for fmt, name, argv, env in methods(tar, tgz, zst):
                if only and fmt not in only:
                    continue
                t = run_one(argv, env, base, args.repeat, keep)
                if (fmt, name) == ("gz", "pyctr (c)"):
                    pyctr_gz = t
                print(f"| {fmt:6} | {name:18} | {t:8.3f} | {size / t / 1e6:6.0f} |", flush=True)
        finally:
            for d in keep:
                shutil.rmtree(d, ignore_errors=True)
        if image is not None and (not only or "gz" in only):
            import_cases(base, image, size, args.repeat, pyctr_gz)


if __name__ == "__main__":
    main()
