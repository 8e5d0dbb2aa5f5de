"""Benchmark: apply a large real layer (tar and tar+gzip) to an empty directory.

Compares, in the same run: GNU ``tar -xf``/``tar -xzf``, ``tar -I igzip`` (if installed), Python's
``tarfile``, and pyctr's extractor (compiled and pure-Python twin).  The source layer is built once
from the host's own ``/usr`` and cached under ``/var/tmp/pyctr-bench``.

    python bench/bench_extract.py [--repeat 3] [--targets /dev/shm,/var/tmp] [--only gz]

Each figure is the best of ``--repeat`` runs, in MB/s of *uncompressed* layer per second of wall time
(output trees are removed only after all runs on a target, and dirty pages are written back before
each run, so one method's deletions or writeback do not slow the next).  Each method runs in a fresh
subprocess, so the pure-Python twin is forced with ``PYCTR_NO_EXTENSIONS=1``.
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


def _fstype(path: str) -> str:
    return subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--targets", default="/dev/shm,/var/tmp")
    ap.add_argument("--only", default="", help="comma list of tar,gz,zst")
    args = ap.parse_args()
    tar, tgz, zst = build_layer()
    size = tar.stat().st_size
    nfiles = int(subprocess.run(f"tar -tf {tar} | wc -l", shell=True, capture_output=True, text=True,
                                check=True).stdout)
    print(f"layer: {size / 1e6:.0f} MB uncompressed, {nfiles} entries, "
          f"gzip {tgz.stat().st_size / 1e6:.0f} MB,"
          f" zstd {zst.stat().st_size / 1e6:.0f} MB; best of {args.repeat}; MB/s of uncompressed layer")
    only = set(filter(None, args.only.split(",")))
    for base in args.targets.split(","):
        print(f"\n## target {base}")
        print(f"| {'format':6} | {'method':18} | {'seconds':>8} | {'MB/s':>6} |")
        print(f"|{'-' * 8}|{'-' * 20}|{'-' * 10}|{'-' * 8}|")
        keep: list[str] = []
        try:
            for fmt, name, argv, env in methods(tar, tgz, zst):
                if only and fmt not in only:
                    continue
                t = run_one(argv, env, base, args.repeat, keep)
                print(f"| {fmt:6} | {name:18} | {t:8.3f} | {size / t / 1e6:6.0f} |", flush=True)
        finally:
            for d in keep:
                shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
