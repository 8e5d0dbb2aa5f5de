"""Container cgroups: the path pyctr gives runc, figures for ``stats``, and clean-up.

runc creates the cgroup from the spec's ``linux.cgroupsPath`` (cgroupfs driver) and applies
``linux.resources``; ``runc delete`` removes it.  pyctr removes it too when a shim died.
Works on cgroup v1 (one hierarchy per controller, the hybrid layout of this machine) and v2.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

TYPE_CHECKING = False  # not typing's: the shim imports this module when it deletes a task
if TYPE_CHECKING:
    from typing import Any

CGROUP_ROOT = "/sys/fs/cgroup"


def is_v2(root: str = CGROUP_ROOT) -> bool:
    return os.path.exists(os.path.join(root, "cgroup.controllers"))


def container_path(parent: str, ns: str, id: str) -> str:
    """``<parent>/<ns>/<id>``, absolute (``/pyctr/default/web``)."""
    parent = "/" + parent.strip("/") if parent.strip("/") else ""
    return f"{parent}/{ns}/{id}"


def _dirs(path: str, root: str = CGROUP_ROOT) -> list[str]:
    """Every directory of ``path`` (one per v1 hierarchy, or the v2 one)."""
    rel = path.lstrip("/")
    if is_v2(root):
        return [os.path.join(root, rel)]
    out = []
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    for name in names:
        d = os.path.join(root, name)
        if os.path.islink(d) or not os.path.isdir(d):
            continue
        out.append(os.path.join(d, rel))
    return out


def exists(path: str, root: str = CGROUP_ROOT) -> bool:
    return any(os.path.isdir(d) for d in _dirs(path, root))


def remove(path: str, root: str = CGROUP_ROOT) -> None:
    """Remove the cgroup ``path`` (and any child) in every hierarchy; it must hold no process.

    Parents (``/pyctr/<ns>``) stay, as containerd leaves them: removing them would race with a
    container being created beside.
    """
    for d in _dirs(path, root):
        _rmdir_tree(d)


def remove_dirs(dirs: Iterable[str], tries: int = 5) -> bool:
    """Remove cgroup directories (children first), retrying a few milliseconds while the last
    processes of a container are still exiting; False if one stays."""
    import time

    left = [d for d in dirs if not _rmdir_tree(d)]
    delay = 0.001
    for _ in range(tries - 1):
        if not left:
            break
        time.sleep(delay)
        delay *= 2
        left = [d for d in left if not _rmdir_tree(d)]
    return not left


def _rmdir_tree(d: str) -> bool:
    """Remove ``d`` and its child cgroups; whether it is gone."""
    try:
        entries = list(os.scandir(d))
    except FileNotFoundError:
        return True
    except OSError:
        return False
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            _rmdir_tree(entry.path)
    try:
        os.rmdir(d)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


def procs(path: str, root: str = CGROUP_ROOT) -> list[int]:
    """Processes in the cgroup (from the first hierarchy that has it)."""
    for d in _dirs(path, root):
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            continue
    return []


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _int(v: str | None) -> int | None:
    if v is None or v == "max":
        return None
    try:
        return int(v)
    except ValueError:
        return None


def _kv(text: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        k, _, v = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[k] = int(v)
    return out


def stats(path: str, root: str = CGROUP_ROOT) -> dict[str, Any]:
    """Figures for a container's cgroup: memory (usage, limit, max, oom kills), cpu (ns), pids."""
    rel = path.lstrip("/")
    out: dict[str, Any] = {"cgroup": path, "cgroup_version": 2 if is_v2(root) else 1}
    if is_v2(root):
        d = os.path.join(root, rel)
        out["memory_usage"] = _int(_read(os.path.join(d, "memory.current")))
        out["memory_limit"] = _int(_read(os.path.join(d, "memory.max")))
        out["memory_max_usage"] = _int(_read(os.path.join(d, "memory.peak")))
        out["oom_kills"] = _kv(_read(os.path.join(d, "memory.events"))).get("oom_kill", 0)
        cpu = _kv(_read(os.path.join(d, "cpu.stat")))
        out["cpu_usage_ns"] = cpu["usage_usec"] * 1000 if "usage_usec" in cpu else None
        out["pids_current"] = _int(_read(os.path.join(d, "pids.current")))
        out["pids_limit"] = _int(_read(os.path.join(d, "pids.max")))
        return out
    mem = os.path.join(root, "memory", rel)
    out["memory_usage"] = _int(_read(os.path.join(mem, "memory.usage_in_bytes")))
    limit = _int(_read(os.path.join(mem, "memory.limit_in_bytes")))
    out["memory_limit"] = None if limit is not None and limit >= (1 << 62) else limit
    out["memory_max_usage"] = _int(_read(os.path.join(mem, "memory.max_usage_in_bytes")))
    out["oom_kills"] = _kv(_read(os.path.join(mem, "memory.oom_control"))).get("oom_kill", 0)
    out["cpu_usage_ns"] = _int(_read(os.path.join(root, "cpuacct", rel, "cpuacct.usage")))
    out["pids_current"] = _int(_read(os.path.join(root, "pids", rel, "pids.current")))
    out["pids_limit"] = _int(_read(os.path.join(root, "pids", rel, "pids.max")))
    return out
