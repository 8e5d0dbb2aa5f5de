"""Read one container's cgroup statistics, on cgroup v1 (one hierarchy per controller) and v2 alike.

:func:`read` returns a :class:`CgroupStats`: the same fields whatever the cgroup version (``None``
where the kernel does not tell), plus the version it came from.  It reads only the files it needs,
with plain ``open``/``read`` system calls (no subprocess, no shim), so reading hundreds of
containers stays cheap enough for every metrics scrape.  The figures are the kernel's own counters,
so they survive a restart of pyctr.

Files read::

    v1  <root>/cpuacct/<path>/cpuacct.usage, cpuacct.usage_user, cpuacct.usage_sys, cpuacct.usage_percpu
        <root>/cpu/<path>/cpu.stat                              (throttling)
        <root>/memory/<path>/memory.usage_in_bytes, memory.limit_in_bytes, memory.max_usage_in_bytes,
                             memory.stat, memory.oom_control    (oom_kill: kernels >= 4.13)
        <root>/pids/<path>/pids.current, pids.max
        <root>/blkio/<path>/blkio.throttle.io_service_bytes_recursive, blkio.throttle.io_serviced_recursive
    v2  <root>/<path>/cpu.stat, memory.current, memory.max, memory.peak, memory.stat,
                      memory.swap.current, memory.events, pids.current, pids.max, io.stat

The mode is v2 when ``<root>/cgroup.controllers`` exists and no v1 memory controller is mounted at
``<root>/memory`` (a hybrid host, with v2 mounted at ``<root>/unified``, is v1 for containers).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errdefs import NotFound

CGROUP_ROOT = "/sys/fs/cgroup"

# v1 reports "no limit" as the largest page-aligned signed 64-bit value (or close to it).
_V1_UNLIMITED = 1 << 62

_modes: dict[str, int] = {}


def version(root: str = CGROUP_ROOT) -> int:
    """1 or 2: which cgroup version containers get under ``root`` (cached per root)."""
    v = _modes.get(root)
    if v is None:
        unified = os.path.exists(os.path.join(root, "cgroup.controllers"))
        v1_memory = os.path.exists(os.path.join(root, "memory", "memory.usage_in_bytes"))
        v = 2 if unified and not v1_memory else 1
        _modes[root] = v
    return v


@dataclass
class IODevice:
    """Block I/O of the cgroup on one device."""

    major: int
    minor: int
    read_bytes: int = 0
    write_bytes: int = 0
    read_ops: int = 0
    write_ops: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IODevice:
        return cls(**{f.name: int(d[f.name]) for f in fields(cls) if f.name in d})


@dataclass
class CgroupStats:
    """A container's cgroup figures.  Times in nanoseconds, sizes in bytes; ``None`` when unknown;
    a limit of ``None`` means unlimited."""

    path: str
    version: int
    # cpu
    cpu_usage_ns: int | None = None
    cpu_user_ns: int | None = None
    cpu_system_ns: int | None = None
    cpu_nr_periods: int | None = None
    cpu_nr_throttled: int | None = None
    cpu_throttled_ns: int | None = None
    cpu_per_cpu_ns: list[int] = field(default_factory=list)  # v1 only (cpuacct.usage_percpu)
    # memory
    memory_usage: int | None = None
    memory_limit: int | None = None
    memory_max_usage: int | None = None
    memory_rss: int | None = None
    memory_cache: int | None = None
    memory_swap: int | None = None
    memory_mapped_file: int | None = None
    memory_dirty: int | None = None
    memory_writeback: int | None = None
    memory_shmem: int | None = None
    memory_pgfault: int | None = None
    memory_pgmajfault: int | None = None
    memory_oom_kills: int | None = None
    # pids
    pids_current: int | None = None
    pids_limit: int | None = None
    # block I/O (sums over devices, and per device)
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    io_read_ops: int | None = None
    io_write_ops: int | None = None
    io_devices: list[IODevice] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["io_devices"] = [x.to_dict() for x in self.io_devices]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CgroupStats:
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        kw["io_devices"] = [IODevice.from_dict(x) for x in d.get("io_devices") or []]
        kw["cpu_per_cpu_ns"] = [int(x) for x in d.get("cpu_per_cpu_ns") or []]
        return cls(**kw)


# -- low-level reads -------------------------------------------------------------------------------


def _read(path: str) -> bytes | None:
    """The file's bytes, or None when it does not exist or cannot be read (a cgroup being removed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 65536)
        if len(data) == 65536:
            chunks = [data]
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            data = b"".join(chunks)
        return data
    except OSError:
        return None
    finally:
        os.close(fd)


#: Reads one file: its bytes, or None when it is missing or unreadable.
Reader = Callable[[str], "bytes | None"]


def _int(data: bytes | None) -> int | None:
    if data is None:
        return None
    data = data.strip()
    if data == b"max":
        return None
    try:
        return int(data)
    except ValueError:
        return None


def _kv(data: bytes | None) -> dict[bytes, int]:
    """``key value`` lines (memory.stat, cpu.stat, memory.events, memory.oom_control)."""
    out: dict[bytes, int] = {}
    if not data:
        return out
    for line in data.split(b"\n"):
        k, _, v = line.partition(b" ")
        if v:
            try:
                out[k] = int(v)
            except ValueError:
                continue
    return out


def _devices(by_dev: dict[tuple[int, int], IODevice], major_minor: bytes) -> IODevice | None:
    ma, _, mi = major_minor.partition(b":")
    try:
        key = (int(ma), int(mi))
    except ValueError:
        return None
    dev = by_dev.get(key)
    if dev is None:
        dev = by_dev[key] = IODevice(*key)
    return dev


def _blkio_v1(data: bytes | None, by_dev: dict[tuple[int, int], IODevice], what: str) -> bool:
    """``8:0 Read 4096`` lines of a v1 blkio file into ``by_dev`` (bytes or ops); whether it was read."""
    if data is None:
        return False
    for line in data.split(b"\n"):
        parts = line.split()
        if len(parts) != 3 or parts[1] not in (b"Read", b"Write"):
            continue
        dev = _devices(by_dev, parts[0])
        if dev is None:
            continue
        n = int(parts[2])
        if parts[1] == b"Read":
            if what == "bytes":
                dev.read_bytes += n
            else:
                dev.read_ops += n
        elif what == "bytes":
            dev.write_bytes += n
        else:
            dev.write_ops += n
    return True


def _io_v2(data: bytes | None, by_dev: dict[tuple[int, int], IODevice]) -> bool:
    """``8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0`` lines of io.stat into ``by_dev``."""
    if data is None:
        return False
    for line in data.split(b"\n"):
        parts = line.split()
        if not parts:
            continue
        dev = _devices(by_dev, parts[0])
        if dev is None:
            continue
        for kv in parts[1:]:
            k, _, v = kv.partition(b"=")
            try:
                n = int(v)
            except ValueError:
                continue
            if k == b"rbytes":
                dev.read_bytes += n
            elif k == b"wbytes":
                dev.write_bytes += n
            elif k == b"rios":
                dev.read_ops += n
            elif k == b"wios":
                dev.write_ops += n
    return True


def _io_totals(st: CgroupStats, by_dev: dict[tuple[int, int], IODevice]) -> None:
    st.io_devices = [by_dev[k] for k in sorted(by_dev)]
    st.io_read_bytes = sum(d.read_bytes for d in st.io_devices)
    st.io_write_bytes = sum(d.write_bytes for d in st.io_devices)
    st.io_read_ops = sum(d.read_ops for d in st.io_devices)
    st.io_write_ops = sum(d.write_ops for d in st.io_devices)


# -- readers ---------------------------------------------------------------------------------------


def _rel(path: str) -> str:
    rel = path.strip("/")
    if not rel or ".." in rel.split("/"):
        raise NotFound(f"invalid cgroup path {path!r}")
    return rel


def read(path: str, root: str = CGROUP_ROOT, cgroup_version: int | None = None, rd: Reader = _read
         ) -> CgroupStats:
    """The statistics of the cgroup ``path`` (``/pyctr/default/web``) under ``root``.

    :param rd: how files are read (:meth:`CgroupReader.read` keeps them open between calls).
    :raises NotFound: the cgroup does not exist (the container is gone).
    """
    v = cgroup_version or version(root)
    return read_v2(path, root, rd) if v == 2 else read_v1(path, root, rd)


class CgroupReader:
    """Reads cgroups again and again cheaply: the files of every cgroup read stay open and are read
    again with ``pread`` at offset 0 (the kernel regenerates a cgroup file's text for every read from
    offset 0), which costs a quarter of open + read + close.

    At most ``max_fds`` descriptors are kept (by default a quarter of RLIMIT_NOFILE, or half of what
    it leaves above 1024 when that is more); beyond that files are opened per read.  :meth:`retain`
    closes the files of cgroups no longer asked for.  Not thread-safe: one scraper at a time (the
    metrics plugin holds a lock).
    """

    _MISSING = -1

    def __init__(self, root: str = CGROUP_ROOT, max_fds: int | None = None) -> None:
        self.root = root
        if max_fds is None:
            import resource

            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            soft = 1 << 20 if soft == resource.RLIM_INFINITY else soft
            max_fds = max(soft // 4, (soft - 1024) // 2)
        self.max_fds = max_fds
        self._fds: dict[str, dict[str, int]] = {}  # cgroup path -> file path -> fd (or _MISSING)
        self._open = 0
        self._current: dict[str, int] = {}

    def read(self, path: str, cgroup_version: int | None = None) -> CgroupStats:
        self._current = self._fds.setdefault(path, {})
        try:
            return read(path, self.root, cgroup_version, self._pread)
        except NotFound:
            self._drop(path)
            raise

    def frozen(self, path: str, cgroup_version: int | None = None) -> bool:
        """Whether the cgroup is frozen (a paused container), from a file kept open too."""
        rel = _rel(path)
        self._current = self._fds.setdefault(path, {})
        if (cgroup_version or version(self.root)) == 2:
            return bool(_kv(self._pread(f"{self.root}/{rel}/cgroup.events")).get(b"frozen"))
        data = self._pread(f"{self.root}/freezer/{rel}/freezer.state")
        return data is not None and data.strip() in (b"FROZEN", b"FREEZING")

    def _pread(self, file: str) -> bytes | None:
        files = self._current
        fd = files.get(file)
        if fd == self._MISSING:
            return None
        if fd is not None:
            try:
                data = os.pread(fd, 65536, 0)
                if len(data) < 65536:
                    return data
            except OSError:
                pass  # ENODEV: the cgroup was removed (and maybe made again): open it afresh
            os.close(fd)
            del files[file]
            self._open -= 1
        if self._open >= self.max_fds:
            return _read(file)
        try:
            fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            if os.path.isdir(os.path.dirname(file)):
                files[file] = self._MISSING  # this kernel has no such file: do not look again
            return None
        files[file] = fd
        self._open += 1
        try:
            data = os.pread(fd, 65536, 0)
        except OSError:
            return None
        return data if len(data) < 65536 else _read(file)

    def _drop(self, path: str) -> None:
        for fd in (self._fds.pop(path, None) or {}).values():
            if fd != self._MISSING:
                os.close(fd)
                self._open -= 1

    def retain(self, paths: Iterable[str]) -> None:
        """Close the files of every cgroup not in ``paths``."""
        keep = set(paths)
        for path in [p for p in self._fds if p not in keep]:
            self._drop(path)

    @property
    def open_files(self) -> int:
        return self._open

    def close(self) -> None:
        self.retain(())


def read_v1(path: str, root: str = CGROUP_ROOT, rd: Reader = _read) -> CgroupStats:
    rel = _rel(path)
    st = CgroupStats(path=path, version=1)
    mem = f"{root}/memory/{rel}/"
    usage = _int(rd(mem + "memory.usage_in_bytes"))
    if usage is None and not os.path.isdir(mem):
        raise NotFound(f"cgroup {path} not found")
    st.memory_usage = usage
    limit = _int(rd(mem + "memory.limit_in_bytes"))
    st.memory_limit = None if limit is None or limit >= _V1_UNLIMITED else limit
    st.memory_max_usage = _int(rd(mem + "memory.max_usage_in_bytes"))
    ms = _kv(rd(mem + "memory.stat"))
    if ms:
        def g(name: bytes) -> int | None:
            v = ms.get(b"total_" + name)
            return ms.get(name) if v is None else v

        st.memory_rss = g(b"rss")
        st.memory_cache = g(b"cache")
        st.memory_swap = g(b"swap")
        st.memory_mapped_file = g(b"mapped_file")
        st.memory_dirty = g(b"dirty")
        st.memory_writeback = g(b"writeback")
        st.memory_shmem = g(b"shmem")
        st.memory_pgfault = g(b"pgfault")
        st.memory_pgmajfault = g(b"pgmajfault")
    oom = _kv(rd(mem + "memory.oom_control"))
    if oom:
        st.memory_oom_kills = oom.get(b"oom_kill")
    cpuacct = f"{root}/cpuacct/{rel}/"
    st.cpu_usage_ns = _int(rd(cpuacct + "cpuacct.usage"))
    st.cpu_user_ns = _int(rd(cpuacct + "cpuacct.usage_user"))
    st.cpu_system_ns = _int(rd(cpuacct + "cpuacct.usage_sys"))
    percpu = rd(cpuacct + "cpuacct.usage_percpu")
    if percpu:
        try:
            st.cpu_per_cpu_ns = [int(x) for x in percpu.split()]
        except ValueError:
            st.cpu_per_cpu_ns = []
    if st.cpu_usage_ns is not None and st.cpu_user_ns is None:
        ticks = _kv(rd(cpuacct + "cpuacct.stat"))  # USER_HZ ticks on kernels without usage_user
        hz = os.sysconf("SC_CLK_TCK") or 100
        if b"user" in ticks:
            st.cpu_user_ns = ticks[b"user"] * 1_000_000_000 // hz
        if b"system" in ticks:
            st.cpu_system_ns = ticks[b"system"] * 1_000_000_000 // hz
    cs = _kv(rd(f"{root}/cpu/{rel}/cpu.stat"))
    if cs:
        st.cpu_nr_periods = cs.get(b"nr_periods")
        st.cpu_nr_throttled = cs.get(b"nr_throttled")
        st.cpu_throttled_ns = cs.get(b"throttled_time")
    pids = f"{root}/pids/{rel}/"
    st.pids_current = _int(rd(pids + "pids.current"))
    st.pids_limit = _int(rd(pids + "pids.max"))
    blkio = f"{root}/blkio/{rel}/"
    by_dev: dict[tuple[int, int], IODevice] = {}
    if _blkio_v1(rd(blkio + "blkio.throttle.io_service_bytes_recursive"), by_dev, "bytes"):
        _blkio_v1(rd(blkio + "blkio.throttle.io_serviced_recursive"), by_dev, "ops")
        _io_totals(st, by_dev)
    return st


def read_v2(path: str, root: str = CGROUP_ROOT, rd: Reader = _read) -> CgroupStats:
    rel = _rel(path)
    st = CgroupStats(path=path, version=2)
    d = f"{root}/{rel}/"
    cs = _kv(rd(d + "cpu.stat"))
    if not cs and not os.path.isdir(d):
        raise NotFound(f"cgroup {path} not found")
    if b"usage_usec" in cs:
        st.cpu_usage_ns = cs[b"usage_usec"] * 1000
    if b"user_usec" in cs:
        st.cpu_user_ns = cs[b"user_usec"] * 1000
    if b"system_usec" in cs:
        st.cpu_system_ns = cs[b"system_usec"] * 1000
    st.cpu_nr_periods = cs.get(b"nr_periods")
    st.cpu_nr_throttled = cs.get(b"nr_throttled")
    if b"throttled_usec" in cs:
        st.cpu_throttled_ns = cs[b"throttled_usec"] * 1000
    st.memory_usage = _int(rd(d + "memory.current"))
    st.memory_limit = _int(rd(d + "memory.max"))  # "max" -> None
    st.memory_max_usage = _int(rd(d + "memory.peak"))  # kernels >= 5.19
    ms = _kv(rd(d + "memory.stat"))
    if ms:
        st.memory_rss = ms.get(b"anon")
        st.memory_cache = ms.get(b"file")
        st.memory_mapped_file = ms.get(b"file_mapped")
        st.memory_dirty = ms.get(b"file_dirty")
        st.memory_writeback = ms.get(b"file_writeback")
        st.memory_shmem = ms.get(b"shmem")
        st.memory_pgfault = ms.get(b"pgfault")
        st.memory_pgmajfault = ms.get(b"pgmajfault")
    st.memory_swap = _int(rd(d + "memory.swap.current"))
    ev = _kv(rd(d + "memory.events"))
    if ev:
        st.memory_oom_kills = ev.get(b"oom_kill", 0)
    st.pids_current = _int(rd(d + "pids.current"))
    st.pids_limit = _int(rd(d + "pids.max"))
    by_dev: dict[tuple[int, int], IODevice] = {}
    if _io_v2(rd(d + "io.stat"), by_dev):
        _io_totals(st, by_dev)
    return st


def populated(path: str, root: str = CGROUP_ROOT, cgroup_version: int | None = None) -> bool:
    """Whether the cgroup exists and holds at least one process."""
    rel = _rel(path)
    if (cgroup_version or version(root)) == 2:
        ev = _kv(_read(f"{root}/{rel}/cgroup.events"))
        return bool(ev.get(b"populated"))
    for ctrl in ("pids", "memory", "cpuacct"):
        data = _read(f"{root}/{ctrl}/{rel}/cgroup.procs")
        if data is not None:
            return bool(data.strip())
    return False


def frozen(path: str, root: str = CGROUP_ROOT, cgroup_version: int | None = None) -> bool:
    """Whether the cgroup is frozen (a paused container)."""
    rel = _rel(path)
    if (cgroup_version or version(root)) == 2:
        return bool(_kv(_read(f"{root}/{rel}/cgroup.events")).get(b"frozen"))
    data = _read(f"{root}/freezer/{rel}/freezer.state")
    return data is not None and data.strip() in (b"FROZEN", b"FREEZING")


_DEVICE_NAMES: dict[tuple[int, int], str] = {}


def device_name(major: int, minor: int) -> str:
    """``/dev/<name>`` of a block device (from /sys/dev/block/M:m/uevent), cached; ``M:m`` if unknown."""
    key = (major, minor)
    name = _DEVICE_NAMES.get(key)
    if name is None:
        name = f"{major}:{minor}"
        data = _read(f"/sys/dev/block/{major}:{minor}/uevent")
        for line in (data or b"").split(b"\n"):
            if line.startswith(b"DEVNAME="):
                name = "/dev/" + line[8:].decode(errors="replace")
                break
        _DEVICE_NAMES[key] = name
    return name
