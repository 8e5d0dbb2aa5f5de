"""``pyctr.cgroups``: the v2 reader on recorded cgroup v2 files (tests/data/cgroupv2), the v1 reader
on real cgroups of this machine (created under /sys/fs/cgroup/<controller>/pyctr-test-<random> and
removed in teardown, with a process of ours inside that allocates memory and burns CPU)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyctr import cgroups
from pyctr.cgroups import CgroupStats
from pyctr.errdefs import NotFound

V2_ROOT = str(Path(__file__).parent / "data" / "cgroupv2")
MiB = 1024 * 1024

# -- cgroup v2, recorded files ---------------------------------------------------------------------


def test_version_detection(tmp_path: Path) -> None:
    assert cgroups.version(V2_ROOT) == 2
    hybrid = tmp_path / "hybrid"
    (hybrid / "memory").mkdir(parents=True)
    (hybrid / "memory" / "memory.usage_in_bytes").write_text("0\n")
    (hybrid / "cgroup.controllers").write_text("")
    assert cgroups.version(str(hybrid)) == 1
    (tmp_path / "v1only" / "memory").mkdir(parents=True)
    (tmp_path / "v1only" / "memory" / "memory.usage_in_bytes").write_text("0\n")
    assert cgroups.version(str(tmp_path / "v1only")) == 1


def test_v2_reader_on_recorded_files() -> None:
    st = cgroups.read("/pyctr/default/web", V2_ROOT)
    assert st.version == 2 and st.path == "/pyctr/default/web"
    assert (st.cpu_usage_ns, st.cpu_user_ns, st.cpu_system_ns) == (2_500_000_000, 2_000_000_000, 500_000_000)
    assert (st.cpu_nr_periods, st.cpu_nr_throttled, st.cpu_throttled_ns) == (120, 45, 1_800_000_000)
    assert (st.memory_usage, st.memory_limit, st.memory_max_usage) == (26345472, 64 * MiB, 31457280)
    assert (st.memory_rss, st.memory_cache, st.memory_swap) == (20971520, 4096000, 4096)
    assert (st.memory_mapped_file, st.memory_dirty, st.memory_writeback, st.memory_shmem) == (1228800, 4096, 0, 8192)
    assert (st.memory_pgfault, st.memory_pgmajfault, st.memory_oom_kills) == (6318, 3, 2)
    assert (st.pids_current, st.pids_limit) == (3, None)  # "max": unlimited
    assert [(d.major, d.minor, d.read_bytes, d.write_bytes, d.read_ops, d.write_ops) for d in st.io_devices] == [
        (8, 0, 1048576, 4096, 12, 1), (253, 0, 0, 8192, 0, 2)]
    assert (st.io_read_bytes, st.io_write_bytes, st.io_read_ops, st.io_write_ops) == (1048576, 12288, 12, 3)
    assert cgroups.populated("/pyctr/default/web", V2_ROOT) and not cgroups.frozen("/pyctr/default/web", V2_ROOT)


def test_v2_unlimited_memory_and_missing_files() -> None:
    st = cgroups.read("/pyctr/default/paused", V2_ROOT)
    assert st.memory_limit is None and st.memory_max_usage is None  # no memory.peak (kernel < 5.19)
    assert st.pids_limit == 100 and st.memory_oom_kills == 0
    assert st.cpu_nr_periods is None  # no cpu controller: only the core cpu.stat keys
    assert st.io_devices == [] and st.io_read_bytes == 0
    assert st.cpu_per_cpu_ns == []  # v2 has no per-CPU figures
    assert cgroups.frozen("/pyctr/default/paused", V2_ROOT)
    assert not cgroups.populated("/pyctr/default/gone", V2_ROOT)


def test_missing_cgroup_is_not_found() -> None:
    with pytest.raises(NotFound):
        cgroups.read("/pyctr/default/nothing", V2_ROOT)
    with pytest.raises(NotFound):
        cgroups.read("/../etc", V2_ROOT)
    with pytest.raises(NotFound):
        cgroups.read("/pyctr/nothing", "/sys/fs/cgroup-none", cgroup_version=1)


def test_stats_round_trip_through_dicts() -> None:
    st = cgroups.read("/pyctr/default/web", V2_ROOT)
    d = st.to_dict()
    assert d["io_devices"][0] == {"major": 8, "minor": 0, "read_bytes": 1048576, "write_bytes": 4096,
                                  "read_ops": 12, "write_ops": 1}
    assert CgroupStats.from_dict(d) == st
    import msgpack

    assert CgroupStats.from_dict(msgpack.unpackb(msgpack.packb(d))) == st


def test_reader_keeps_files_open_and_sees_changes(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    shutil.copytree(V2_ROOT, root)
    r = cgroups.CgroupReader(str(root), max_fds=1000)
    first = r.read("/pyctr/default/web")
    assert first == cgroups.read("/pyctr/default/web", V2_ROOT)
    opened = r.open_files
    assert opened >= 9  # memory.peak etc. stay open; nothing is opened again on the next read
    (root / "pyctr/default/web/memory.current").write_text("12345\n")
    assert r.read("/pyctr/default/web").memory_usage == 12345 and r.open_files == opened
    r.read("/pyctr/default/paused")
    paused_files = r.open_files - opened
    assert paused_files > 0
    r.retain(["/pyctr/default/paused"])
    assert r.open_files == paused_files
    r.close()
    assert r.open_files == 0


def test_reader_fd_budget(tmp_path: Path) -> None:
    r = cgroups.CgroupReader(V2_ROOT, max_fds=3)
    assert r.read("/pyctr/default/web") == cgroups.read("/pyctr/default/web", V2_ROOT)
    assert r.open_files == 3
    r.close()
    assert r.open_files == 0


# -- cgroup v1, real cgroups -----------------------------------------------------------------------

V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "blkio", "freezer")


@dataclass
class V1Group:
    path: str  # /pyctr-test-xxxx
    dirs: list[Path]

    def write(self, controller: str, name: str, value: str) -> None:
        Path(f"/sys/fs/cgroup/{controller}{self.path}/{name}").write_text(value)

    def add(self, pid: int) -> None:
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(pid))


def _v1_available() -> bool:
    return os.geteuid() == 0 and cgroups.version() == 1 and all(
        os.path.isdir(f"/sys/fs/cgroup/{c}") for c in V1_CONTROLLERS)


@pytest.fixture
def v1group() -> Iterator[V1Group]:
    if not _v1_available():
        pytest.skip("needs root and cgroup v1 controllers")
    path = f"/pyctr-test-{uuid.uuid4().hex[:10]}"
    dirs = [Path(f"/sys/fs/cgroup/{c}{path}") for c in V1_CONTROLLERS]
    for d in dirs:
        d.mkdir()
    g = V1Group(path, dirs)
    try:
        yield g
    finally:
        for d in dirs:
            procs = (d / "cgroup.procs").read_text().split() if d.exists() else []
            for pid in procs:  # only ever our own child, started below
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
        for d in dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


CHILD = r"""
import sys, time
sys.stdin.readline()                       # wait until the parent moved us into the cgroup
data = b"a" * int(sys.argv[1])             # touched pages: charged to the cgroup
end = time.monotonic() + float(sys.argv[2])  # spin in user space (vDSO clock) for this wall time
while time.monotonic() < end:
    pass
if len(sys.argv) > 3:                      # 1 MiB of direct reads (no page cache) from a file on a disk
    import mmap, os
    buf = mmap.mmap(-1, 65536)
    fd = os.open(sys.argv[3], os.O_RDONLY | os.O_DIRECT)
    for i in range(16):
        os.preadv(fd, [buf], i * 65536)
    os.close(fd)
print("ready", flush=True)
sys.stdin.readline()
"""


def _disk_file(d: Path) -> tuple[int, int, str] | None:
    """A 1 MiB file under ``d`` and (major, minor) of the block device holding it, when it is on one."""
    f = d / "blocks"
    f.write_bytes(os.urandom(MiB))
    st = os.stat(f)
    ma, mi = os.major(st.st_dev), os.minor(st.st_dev)
    if ma == 0 or not os.path.exists(f"/sys/dev/block/{ma}:{mi}"):
        return None  # tmpfs, overlay...: no block I/O to see
    return ma, mi, str(f)


def _child(group: V1Group, nbytes: int, burn: float, device: str = "") -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-S", "-c", CHILD, str(nbytes), str(burn), *([device] if device else [])],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    group.add(p.pid)
    assert p.stdin is not None
    p.stdin.write("go\n")
    p.stdin.flush()
    return p


def _reap(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        p.kill()
    p.wait()
    for f in (p.stdin, p.stdout):
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()


@pytest.mark.integration
def test_v1_reader_on_a_real_cgroup(v1group: V1Group, tmp_path: Path) -> None:
    v1group.write("memory", "memory.limit_in_bytes", str(64 * MiB))
    v1group.write("pids", "pids.max", "50")
    v1group.write("cpu", "cpu.cfs_period_us", "100000")
    v1group.write("cpu", "cpu.cfs_quota_us", "20000")  # a fifth of a CPU: the spin is throttled
    before = cgroups.read(v1group.path)
    assert before.version == 1 and before.pids_current == 0 and before.cpu_usage_ns == 0
    dev = _disk_file(tmp_path)
    if dev is not None:
        # recent kernels count v1 blkio.throttle figures only for groups with a throttle rule
        v1group.write("blkio", "blkio.throttle.read_bps_device", f"{dev[0]}:{dev[1]} {1 << 40}")
    p = _child(v1group, 20 * MiB, 0.6, dev[2] if dev else "")
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        st = cgroups.read(v1group.path)
        assert st.memory_limit == 64 * MiB and st.pids_limit == 50 and st.pids_current == 1
        assert st.memory_usage is not None and st.memory_usage >= 20 * MiB
        assert st.memory_rss is not None and st.memory_rss >= 18 * MiB
        assert st.memory_max_usage is not None and st.memory_max_usage >= st.memory_usage
        assert st.cpu_usage_ns is not None and st.cpu_usage_ns >= 50_000_000
        assert st.cpu_user_ns is not None and st.cpu_user_ns > 0
        assert len(st.cpu_per_cpu_ns) >= 1 and sum(st.cpu_per_cpu_ns) >= 0.9 * st.cpu_usage_ns
        assert st.cpu_system_ns is not None
        # CFS bandwidth is on (periods counted); whether a period was throttled depends on the load
        assert st.cpu_nr_periods and st.cpu_nr_throttled is not None and st.cpu_throttled_ns is not None
        assert st.memory_oom_kills == 0
        if dev is not None:
            io = [d for d in st.io_devices if (d.major, d.minor) == dev[:2]]
            assert io and io[0].read_bytes >= MiB and io[0].read_ops >= 1, st.io_devices
            assert st.io_read_bytes is not None and st.io_read_bytes >= MiB
        assert cgroups.populated(v1group.path) and not cgroups.frozen(v1group.path)
        # the figures are the kernel's: a fresh read (a restarted daemon) sees the same totals
        again = cgroups.read(v1group.path)
        assert again.cpu_usage_ns is not None and again.cpu_usage_ns >= st.cpu_usage_ns
        # files kept open are read afresh (pread at 0 regenerates a cgroup file)
        reader = cgroups.CgroupReader()
        try:
            assert reader.read(v1group.path).memory_limit == 64 * MiB
            v1group.write("memory", "memory.limit_in_bytes", str(48 * MiB))
            assert reader.read(v1group.path).memory_limit == 48 * MiB
            assert reader.open_files >= 12
        finally:
            reader.close()
    finally:
        _reap(p)
    deadline = time.monotonic() + 5
    while cgroups.populated(v1group.path) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not cgroups.populated(v1group.path)
    # a cgroup removed and made again under the same path: the reader's old files fail (ENODEV) and
    # it opens the new ones
    reader = cgroups.CgroupReader()
    try:
        assert reader.read(v1group.path).memory_limit == 48 * MiB
        memdir = Path(f"/sys/fs/cgroup/memory{v1group.path}")
        memdir.rmdir()
        memdir.mkdir()
        v1group.write("memory", "memory.limit_in_bytes", str(32 * MiB))
        assert reader.read(v1group.path).memory_limit == 32 * MiB
        memdir.rmdir()  # gone: NotFound, and the reader lets go of its files
        with pytest.raises(NotFound):
            reader.read(v1group.path)
        assert reader.open_files == 0
    finally:
        reader.close()


@pytest.mark.integration
def test_v1_oom_kill_is_counted(v1group: V1Group) -> None:
    v1group.write("memory", "memory.limit_in_bytes", str(16 * MiB))
    with contextlib.suppress(OSError):  # no swap accounting on some kernels
        v1group.write("memory", "memory.memsw.limit_in_bytes", str(16 * MiB))
    p = _child(v1group, 64 * MiB, 0)
    try:
        assert p.wait(20) == -9
    finally:
        _reap(p)
    st = cgroups.read(v1group.path)
    assert st.memory_oom_kills is not None and st.memory_oom_kills >= 1


def test_reading_is_cheap() -> None:
    # recorded files: the parse must stay far below a millisecond per container
    t0 = time.perf_counter()
    for _ in range(200):
        cgroups.read("/pyctr/default/web", V2_ROOT)
    assert time.perf_counter() - t0 < 0.5


def test_device_names_are_cached() -> None:
    name = cgroups.device_name(999999, 999999)
    assert name == "999999:999999"
    assert cgroups.device_name(999999, 999999) is name
