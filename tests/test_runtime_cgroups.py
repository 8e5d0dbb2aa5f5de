"""Cgroup paths and figures of the runc runtime, on fake v1 and v2 trees (no root needed)."""

from __future__ import annotations

from pathlib import Path

from pyctr.plugins.runtime.runc import cgroups


def _write(p: Path, text: str) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_container_path() -> None:
    assert cgroups.container_path("/pyctr", "default", "web") == "/pyctr/default/web"
    assert cgroups.container_path("pyctr/", "ns", "x") == "/pyctr/ns/x"
    assert cgroups.container_path("", "ns", "x") == "/ns/x"


def test_v1_stats_and_remove(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    leaf = "/pyctr/default/web"
    _write(root / "memory" / leaf[1:] / "memory.usage_in_bytes", "1048576\n")
    _write(root / "memory" / leaf[1:] / "memory.limit_in_bytes", "9223372036854771712\n")
    _write(root / "memory" / leaf[1:] / "memory.max_usage_in_bytes", "2097152\n")
    _write(root / "memory" / leaf[1:] / "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    _write(root / "cpuacct" / leaf[1:] / "cpuacct.usage", "123456789\n")
    _write(root / "pids" / leaf[1:] / "pids.current", "3\n")
    _write(root / "pids" / leaf[1:] / "pids.max", "max\n")
    (root / "cpu,cpuacct").symlink_to("cpuacct")
    assert not cgroups.is_v2(str(root))
    st = cgroups.stats(leaf, str(root))
    assert st["cgroup_version"] == 1
    assert st["memory_usage"] == 1 << 20 and st["memory_limit"] is None and st["memory_max_usage"] == 2 << 20
    assert st["oom_kills"] == 2 and st["cpu_usage_ns"] == 123456789
    assert st["pids_current"] == 3 and st["pids_limit"] is None
    assert cgroups.exists(leaf, str(root))
    # files cannot be removed from a real cgroup: rmdir alone does it; here, empty the fake dirs first
    for d in ("memory", "cpuacct", "pids"):
        for f in (root / d / leaf[1:]).iterdir():
            f.unlink()
    (root / "memory" / leaf[1:] / "child").mkdir()
    cgroups.remove(leaf, str(root))
    assert not cgroups.exists(leaf, str(root))
    assert (root / "memory" / "pyctr" / "default").is_dir(), "parents are left in place"


def test_v2_stats(tmp_path: Path) -> None:
    root = tmp_path / "cg2"
    _write(root / "cgroup.controllers", "cpu memory pids\n")
    d = root / "pyctr" / "ns" / "x"
    _write(d / "memory.current", "4096\n")
    _write(d / "memory.max", "67108864\n")
    _write(d / "memory.events", "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    _write(d / "cpu.stat", "usage_usec 250\nuser_usec 200\nsystem_usec 50\n")
    _write(d / "pids.current", "1\n")
    _write(d / "pids.max", "50\n")
    assert cgroups.is_v2(str(root))
    st = cgroups.stats("/pyctr/ns/x", str(root))
    assert st["cgroup_version"] == 2
    assert (st["memory_usage"], st["memory_limit"], st["oom_kills"]) == (4096, 64 << 20, 1)
    assert st["cpu_usage_ns"] == 250_000 and (st["pids_current"], st["pids_limit"]) == (1, 50)
    assert st["memory_max_usage"] is None
    assert cgroups.procs("/pyctr/ns/x", str(root)) == []
