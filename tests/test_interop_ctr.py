"""The same busybox image run by pyctr and by ``ctr run`` (a private containerd) prints the same things:
the same process environment, user, working directory, root file system, capabilities and limits."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RUNS_CONTAINERS, Roots, child_env, pyctr_executable

pytestmark = [
    *RUNS_CONTAINERS,
    pytest.mark.skipif(shutil.which("containerd") is None or shutil.which("ctr") is None,
                       reason="needs containerd and ctr"),
]

IMAGE = "localhost/busybox:latest"
PROBE = (
    "id; pwd; ls /; env | sort; ulimit -n; "
    "grep -E '^(Cap(Bnd|Eff|Prm)|NoNewPrivs|Seccomp):' /proc/self/status | sed 's/^Seccomp:.*/Seccomp: -/'; "
    "ls /dev | sort; cat /etc/passwd"
)


def _procs_mentioning(needle: bytes) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
    return out


def _unmount_under(path: Path) -> None:
    with open("/proc/self/mounts") as f:
        targets = [ln.split()[1] for ln in f if ln.split()[1].startswith(str(path))]
    for t in sorted(targets, reverse=True):
        subprocess.run(["umount", "-l", t], check=False)


@pytest.fixture
def ctr(tmp_path: Path) -> Iterator[list[str]]:
    """``ctr`` talking to a private containerd under ``tmp_path`` (namespace unique to the test)."""
    d = tmp_path / "ctd"
    d.mkdir()
    sock = d / "c.sock"
    (d / "config.toml").write_text(
        f'version = 2\nroot = "{d}/root"\nstate = "{d}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n'
        f'[debug]\n  address = "{d}/debug.sock"\n'
    )
    log = open(d / "log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(["containerd", "--config", str(d / "config.toml")], stdout=log, stderr=log)
    argv = ["ctr", "-a", str(sock), "-n", f"interop{uuid.uuid4().hex[:8]}"]
    try:
        for _ in range(100):
            if subprocess.run([*argv, "version"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            pytest.fail("containerd did not start: " + (d / "log").read_text()[-500:])
        yield argv
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for pid in _procs_mentioning(str(sock).encode()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _unmount_under(d)
        _remove_cgroups(argv[-1])  # containerd leaves its namespace's cgroup directories behind


def _remove_cgroups(name: str) -> None:
    """Remove the cgroup tree ``/<name>`` in every hierarchy (v1 controllers, or the v2 root), leaves first."""
    base = Path("/sys/fs/cgroup")
    roots = [base / name] if (base / "cgroup.controllers").exists() else [c / name for c in base.iterdir()]
    for top in roots:
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -len(t[0])):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def test_pyctr_and_ctr_print_the_same(ctr: list[str], tmp_root: Roots, tmp_path: Path) -> None:
    parent = f"/pyctr-test-{uuid.uuid4().hex[:10]}"
    tmp_root.config.write_text(f'[plugins."pyctr.runtime.runc"]\ncgroup_parent = "{parent}"\n')
    pyctr = [pyctr_executable(), *tmp_root.args()]

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, env=child_env(), timeout=120)

    try:
        assert run([*pyctr, "images", "build-busybox"]).returncode == 0
        tar = tmp_path / "bb.tar"
        p = run([*pyctr, "images", "export", str(tar), IMAGE])
        assert p.returncode == 0, p.stderr
        p = run([*ctr, "images", "import", str(tar)])
        assert p.returncode == 0, p.stderr
        for i, cmd in enumerate([["echo", "hello"], ["sh", "-c", PROBE], ["sh", "-c", "exit 3"]]):
            mine = run([*pyctr, "run", "--rm", IMAGE, *cmd])
            theirs = run([*ctr, "run", "--rm", IMAGE, f"c{i}", *cmd])
            assert mine.returncode == theirs.returncode, (mine.stderr, theirs.stderr)
            assert mine.stdout == theirs.stdout
        assert "hello" in run([*pyctr, "run", "--rm", IMAGE, "echo", "hello"]).stdout
    finally:
        _unmount_under(tmp_root.root)
        _unmount_under(tmp_root.state)
        from pyctr.plugins.runtime.runc.manager import RuncRuntime

        rt = RuncRuntime(tmp_root.state / "pyctr.runtime.runc", load=False)
        with contextlib.suppress(Exception):
            rt.stop_zygote()
        for pid in _procs_mentioning(str(rt.sock_dir).encode().hex().encode()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for ctrl in [Path("/sys/fs/cgroup"), *Path("/sys/fs/cgroup").iterdir()]:
            base = ctrl / parent.strip("/")
            if base.is_dir():
                for sub in sorted((q for q in base.rglob("*") if q.is_dir()), key=lambda q: -len(q.parts)):
                    os.rmdir(sub)
                os.rmdir(base)
