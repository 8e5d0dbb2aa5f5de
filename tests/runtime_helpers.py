"""Helpers for the runc runtime tests: a busybox rootfs, OCI specs, and a runtime that cleans up."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyctr.errdefs import PyctrError
from pyctr.oci import RunOptions, generate_spec
from pyctr.plugins.runtime.runc import cgroups
from pyctr.plugins.runtime.runc.manager import RuncRuntime


def need_runc() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed")
    if shutil.which("busybox") is None:
        pytest.skip("busybox-static is not installed")


def make_busybox_rootfs(dest: Path) -> Path:
    """A busybox root file system (busybox-static and its applet links), as acc_busybox builds."""
    bb = shutil.which("busybox")
    assert bb is not None
    for d in ("bin", "etc", "tmp", "root", "proc", "dev", "sys", "run"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    shutil.copy2(bb, dest / "bin" / "busybox")
    applets = subprocess.run([bb, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for a in applets:
        if a != "busybox":
            os.symlink("busybox", dest / "bin" / a)
    (dest / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
    (dest / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    return dest


def busybox_spec(rootfs: Path, args: list[str], **opts: Any) -> dict[str, Any]:
    spec = generate_spec({"config": {"Cmd": args, "Env": ["PATH=/bin"]}}, str(rootfs),
                         RunOptions(**opts))
    spec["root"]["path"] = str(rootfs)
    spec["linux"].pop("cgroupsPath", None)  # the runtime's own: <cgroup_parent>/<ns>/<id>
    return spec


def bind_mounts(rootfs: Path) -> list[dict[str, Any]]:
    """rootfs_mounts that bind the prepared busybox tree (read-only) as the bundle's rootfs."""
    return [{"type": "bind", "source": str(rootfs), "options": ["rbind", "ro"]}]


def shim_pids(rt: RuncRuntime) -> set[int]:
    pids = set()
    for ns, id in rt._all_ids():
        rec = rt.bundle(ns, id).read("shim.json") or {}
        with contextlib.suppress(PyctrError):
            info = rt.client(str(rec.get("address", ""))).ping(timeout=2.0)
            if info:
                pids.add(int(info["shim_pid"]))
    return pids


def state_pids(state: Path, *, with_zygote: bool = False, exclude: tuple[int, ...] = ()) -> list[int]:
    """Shim processes of the pyctr state directory ``state`` (their command line carries its socket
    directory, or the state itself); the shim zygote (a warm parent that forks shims) only if asked."""
    from pyctr.plugins.runtime.runc.manager import _ping

    rt = RuncRuntime(state / "pyctr.runtime.runc", load=False)
    needles = [str(rt.sock_dir).encode().hex().encode(), str(state).encode()]
    zygote = int((_ping(rt.zygote_address) or {}).get("zygote_pid") or 0)
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid() or int(d.name) in exclude:
            continue
        try:
            cmdline = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if any(n in cmdline for n in needles) and (with_zygote or int(d.name) != zygote):
            pids.append(int(d.name))
    return pids


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not pid_alive(pid):
            return True
        time.sleep(0.02)
    return False


def teardown(rt: RuncRuntime) -> None:
    """Remove every task of ``rt`` whatever its state: kill, runc delete, unmount, cgroup, shims."""
    shims = shim_pids(rt)
    for ns, id in rt._all_ids():
        cg = rt.cgroup_path(ns, id)
        try:
            rt.get(ns, id).delete(force=True)
        except Exception:
            with contextlib.suppress(Exception):
                rt._remove_runc_state(ns, id)
            with contextlib.suppress(Exception):
                rt.bundle(ns, id).remove()
        with contextlib.suppress(Exception):
            cgroups.remove(cg)
    rt.stop_zygote()
    rt.close()
    for pid in shims:
        if not wait_gone(pid, 3.0):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        from pyctr.mount import unmount_all_under

        unmount_all_under(str(rt.state))
    if str(rt.sock_dir).startswith("/tmp/pyctr-s-"):
        shutil.rmtree(rt.sock_dir, ignore_errors=True)
    if rt.cgroup_parent.startswith("/pyctr-test-"):
        for d in cgroups._dirs(rt.cgroup_parent):
            for sub in sorted(Path(d).glob("*"), reverse=True):
                if sub.is_dir():
                    with contextlib.suppress(OSError):
                        sub.rmdir()
            with contextlib.suppress(OSError):
                os.rmdir(d)


def cgroup_parent_for(state: Path) -> str:
    """A cgroup parent of the test's own, so parallel runs never share a cgroup."""
    return f"/pyctr-test-{abs(hash(str(state))) % 10**8}"


@contextlib.contextmanager
def runtime(state: Path, **kw: Any) -> Iterator[RuncRuntime]:
    kw.setdefault("cgroup_parent", cgroup_parent_for(state))
    rt = RuncRuntime(state, **kw)
    try:
        yield rt
    finally:
        teardown(rt)
