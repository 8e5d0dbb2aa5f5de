"""``pyctr run``, ``exec``, ``logs``, ``tasks`` and ``containers`` end to end: the real console script, real
runc, real overlayfs, real cgroups, a busybox image built from the host's busybox-static.

Each test has its own root, state (so its own runc --root and shim sockets) and cgroup parent; the
teardown kills what the test started (by PID), unmounts what is left under its directories and removes
its cgroups, even when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import RUNS_CONTAINERS, Roots, child_env, pyctr_executable
from runtime_helpers import state_pids

pytestmark = RUNS_CONTAINERS

IMAGE = "localhost/busybox:latest"
USER_IMAGE = "localhost/busybox:user"
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass
class Env:
    roots: Roots
    cgroup_parent: str
    ns: str = "default"

    def cmd(self, *args: str) -> list[str]:
        return [pyctr_executable(), *self.roots.args(), "-n", self.ns, *args]

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(*args), input=input, capture_output=True, text=True, env=child_env(),
                              timeout=60)

    def ok(self, *args: str, input: str | None = None) -> str:
        p = self.run(*args, input=input)
        assert p.returncode == 0, f"pyctr {' '.join(args)} exited {p.returncode}: {p.stderr}"
        return p.stdout

    def tasks(self) -> list[dict[str, object]]:
        return json.loads(self.ok("tasks", "ls", "-o", "json"))  # type: ignore[no-any-return]

    def mounts_under(self) -> list[str]:
        here = (str(self.roots.root), str(self.roots.state))
        with open("/proc/self/mounts") as f:
            return [ln.split()[1] for ln in f if ln.split()[1].startswith(here)]

    def cgroup_dirs(self, cid: str) -> list[Path]:
        out = []
        for ctrl in CGROUP_ROOT.iterdir():
            p = ctrl / self.cgroup_parent.strip("/") / self.ns / cid
            if p.exists():
                out.append(p)
        p = CGROUP_ROOT / self.cgroup_parent.strip("/") / self.ns / cid
        if p.exists():
            out.append(p)
        return out

    def _runtime(self) -> Any:
        from pyctr.plugins.runtime.runc.manager import RuncRuntime

        return RuncRuntime(self.roots.state / "pyctr.runtime.runc", load=False)

    def shim_pids(self, *, with_zygote: bool = False) -> list[int]:
        """Shim processes of this test's state; the shim zygote (shared by every container) only if
        asked."""
        return state_pids(self.roots.state, with_zygote=with_zygote)

    def stop_zygote(self) -> None:
        self._runtime().stop_zygote()

    def assert_nothing_left(self, cid: str) -> None:
        assert self.ok("containers", "ls", "-q").split() == [], "container records left"
        assert cid not in self.ok("tasks", "ls", "-q").split(), "task left"
        assert self.mounts_under() == [], "mounts left"
        assert self.cgroup_dirs(cid) == [], "cgroups left"
        deadline = time.monotonic() + 5
        while self.shim_pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.shim_pids() == [], "shim processes left"
        active = [ln for ln in self.ok("snapshots", "ls").splitlines()[1:] if "Committed" not in ln]
        assert active == [], f"snapshots left: {active}"


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def env(tmp_root: Roots) -> Iterator[Env]:
    parent = f"/pyctr-test-{uuid.uuid4().hex[:10]}"
    tmp_root.config.write_text(f'[plugins."pyctr.runtime.runc"]\ncgroup_parent = "{parent}"\n')
    e = Env(tmp_root, parent)
    try:
        e.ok("images", "build-busybox")
        e.ok("images", "build-busybox", "--name", USER_IMAGE, "--user", "nobody", "--workdir", "/tmp")
        yield e
    finally:
        try:
            for t in e.tasks():
                _kill(int(t["pid"]))  # type: ignore[call-overload]
            for cid in e.run("containers", "ls", "-q").stdout.split():
                e.run("containers", "rm", "--force", cid)
        except Exception:
            pass
        with contextlib.suppress(Exception):
            e.stop_zygote()
        with contextlib.suppress(Exception):
            from pyctr import runzygote

            runzygote.stop(str(e.roots.state))
        for pid in e.shim_pids(with_zygote=True):
            _kill(pid)
        for m in sorted(e.mounts_under(), reverse=True):
            subprocess.run(["umount", "-l", m], check=False)
        for ctrl in [CGROUP_ROOT, *CGROUP_ROOT.iterdir()]:
            base = ctrl / parent.strip("/")
            if base.is_dir():
                for d in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    os.rmdir(d)
                os.rmdir(base)


def test_run_echo_then_nothing_is_left(env: Env) -> None:
    p = env.run("run", "--rm", "--name", "echo1", IMAGE, "echo", "hello")
    assert (p.returncode, p.stdout, p.stderr) == (0, "hello\n", "")
    env.assert_nothing_left("echo1")


def test_exit_code_and_stdin(env: Env) -> None:
    assert env.run("run", "--rm", IMAGE, "sh", "-c", "exit 7").returncode == 7
    p = env.run("run", "--rm", "-i", IMAGE, "cat", input="piped\nlines\n")
    assert (p.returncode, p.stdout) == (0, "piped\nlines\n")
    # without -i the container's stdin is empty
    p = env.run("run", "--rm", IMAGE, "cat", input="not passed\n")
    assert (p.returncode, p.stdout) == (0, "")


def test_missing_command_exits_127_with_one_line(env: Env) -> None:
    p = env.run("run", "--rm", "--name", "nocmd", IMAGE, "/no/such/cmd")
    assert p.returncode == 127
    assert "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("pyctr: ") and "/no/such/cmd" in last
    env.assert_nothing_left("nocmd")


def test_bad_input_is_one_line_and_leaves_nothing(env: Env) -> None:
    p = env.run("run", "--rm", "--name", "bad1", "Not//A:Valid::Ref", "true")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    p = env.run("run", "--rm", "--name", "bad2", "localhost/nothing-here:1", "true")
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) >= 1 and "Traceback" not in p.stderr
    p = env.run("run", "--rm", "--name", "bad3", "--user", "ghost", IMAGE, "true")
    assert p.returncode == 3 and "ghost" in p.stderr and "Traceback" not in p.stderr
    env.assert_nothing_left("bad3")


def test_detached_lifecycle(env: Env) -> None:
    out = env.ok("run", "-d", "--name", "sleeper", IMAGE, "sleep", "300")
    assert out.strip() == "sleeper"
    rows = [ln.split() for ln in env.ok("tasks", "ls").splitlines()]
    assert rows[0] == ["TASK", "PID", "STATUS"]
    row = next(r for r in rows if r[0] == "sleeper")
    assert row[2] == "RUNNING" and Path(f"/proc/{row[1]}").exists()
    # a name in use
    p = env.run("run", "-d", "--name", "sleeper", IMAGE, "true")
    assert p.returncode == 4 and "already exists" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    # a running task is not removed without --force
    p = env.run("containers", "rm", "sleeper")
    assert p.returncode == 5 and "--force" in p.stderr
    # SIGTERM to an init that does not handle it still stops it (as SIGKILL)
    env.ok("tasks", "kill", "sleeper")
    assert env.ok("tasks", "wait", "sleeper").strip() == "137"
    assert [r.split()[2] for r in env.ok("tasks", "ls").splitlines()[1:]] == ["STOPPED"]
    p = env.run("tasks", "kill", "-s", "KILL", "sleeper")
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    p = env.run("exec", "sleeper", "true")
    assert p.returncode == 5 and "not running" in p.stderr
    env.ok("tasks", "rm", "sleeper")
    env.ok("containers", "rm", "sleeper")
    env.assert_nothing_left("sleeper")


def test_signal_handled_by_init_is_delivered(env: Env) -> None:
    script = "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.1; done"
    env.ok("run", "-d", "--name", "trapper", IMAGE, "sh", "-c", script)
    deadline = time.monotonic() + 10
    while "ready" not in env.ok("logs", "trapper") and time.monotonic() < deadline:
        time.sleep(0.1)
    env.ok("tasks", "kill", "-s", "SIGTERM", "trapper")
    assert env.ok("tasks", "wait", "trapper").strip() == "3"
    assert env.ok("logs", "trapper") == "ready\ngot-term\n"
    env.ok("containers", "rm", "--force", "trapper")


def test_exec_pause_resume_logs(env: Env) -> None:
    env.ok("run", "-d", "--name", "box", IMAGE, "sh", "-c", "echo out; echo err >&2; sleep 300")
    assert env.ok("exec", "box", "echo", "from-exec") == "from-exec\n"
    assert env.run("exec", "box", "sh", "-c", "exit 9").returncode == 9
    assert env.ok("exec", "-i", "box", "cat", input="in-exec\n") == "in-exec\n"
    assert env.ok("exec", "--user", "nobody", "box", "id", "-u") == "65534\n"
    p = env.run("logs", "box")
    assert (p.stdout, p.stderr) == ("out\n", "err\n")
    env.ok("tasks", "pause", "box")
    assert env.ok("tasks", "ls").split()[-1] == "PAUSED"
    env.ok("tasks", "resume", "box")
    assert env.ok("tasks", "ls").split()[-1] == "RUNNING"
    pids = env.ok("tasks", "ps", "box").split()
    assert pids[:2] == ["PID", "INFO"] and len(pids) >= 4
    env.ok("tasks", "kill", "-s", "9", "box")
    assert env.ok("tasks", "wait", "box").strip() == "137"
    env.ok("containers", "rm", "--force", "box")
    env.assert_nothing_left("box")


def test_user_and_workdir_from_image_and_flags(env: Env) -> None:
    out = env.ok("run", "--rm", USER_IMAGE, "sh", "-c", "id -u; id -g; pwd")
    assert out == "65534\n65534\n/tmp\n"
    out = env.ok("run", "--rm", "-u", "0:0", "-w", "/root", USER_IMAGE, "sh", "-c", "id -u; pwd")
    assert out == "0\n/root\n"
    script = "echo $FOO; hostname"
    out = env.ok("run", "--rm", "-e", "FOO=bar", "--hostname", "boxy", IMAGE, "sh", "-c", script)
    assert out == "bar\nboxy\n"


def test_read_only_rootfs(env: Env) -> None:
    p = env.run("run", "--rm", "--read-only", IMAGE, "touch", "/x")
    assert p.returncode != 0 and "Read-only" in p.stdout + p.stderr
    assert env.run("run", "--rm", IMAGE, "touch", "/x").returncode == 0


def test_resource_limits_visible_inside(env: Env) -> None:
    script = ("cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; "
              "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max; "
              "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max")
    out = env.ok("run", "--rm", "--memory", "64m", "--pids-limit", "20", "--cpus", "0.5", IMAGE, "sh", "-c", script)
    assert out == f"{64 << 20}\n20\n50000\n"
    caps = env.ok("run", "--rm", "--privileged", IMAGE, "grep", "CapEff", "/proc/self/status").split()[1]
    assert int(caps, 16) == int(Path("/proc/self/status").read_text().split("CapBnd:")[1].split()[0], 16)


def test_seccomp_default_and_unconfined(env: Env) -> None:
    # unshare(2) of a user namespace needs no capability, but the default profile forbids it
    p = env.run("run", "--rm", IMAGE, "unshare", "-U", "true")
    assert p.returncode != 0 and "not permitted" in p.stderr
    p = env.run("run", "--rm", "--security-opt", "seccomp=unconfined", IMAGE, "unshare", "-U", "true")
    assert p.returncode == 0, p.stderr


def test_containers_create_info_label(env: Env) -> None:
    env.ok("containers", "create", "--label", "app=web", IMAGE, "made", "echo", "hi")
    assert env.ok("containers", "ls", "-q").split() == ["made"]
    info = json.loads(env.ok("containers", "info", "made"))
    assert info["image"] == IMAGE and info["labels"] == {"app": "web"}
    assert info["spec"]["process"]["args"] == ["echo", "hi"]
    assert env.ok("containers", "label", "made", "tier=1", "app=").strip() == "tier=1"
    assert env.ok("containers", "ls", "labels.tier==1", "-q").split() == ["made"]
    assert env.run("tasks", "start", "made").stdout == "hi\n"
    env.ok("containers", "rm", "made")
    env.assert_nothing_left("made")


def test_run_pulls_a_missing_image(env: Env, seeded_registry: Any) -> None:
    addr = seeded_registry.server.addr
    with open(env.roots.config, "a") as f:
        f.write(f'\n[plugins."pyctr.distribution.registry".hosts."{addr}"]\nplain_http = true\n')
    p = env.run("run", "--rm", "--name", "pulled", f"{addr}/test/busybox:1", "echo", "from-the-registry")
    assert (p.returncode, p.stdout) == (0, "from-the-registry\n"), p.stderr
    assert f"{addr}/test/busybox:1" in env.ok("images", "ls", "-q").split()
    env.assert_nothing_left("pulled")


def test_logs_follow_and_attach(env: Env) -> None:
    env.ok("run", "-d", "--name", "talker", IMAGE, "sh", "-c", "for i in 1 2 3; do echo l$i; sleep 0.3; done")
    p = env.run("logs", "-f", "talker")
    assert (p.returncode, p.stdout) == (0, "l1\nl2\nl3\n")
    assert env.ok("logs", "--tail", "1", "talker") == "l3\n"
    env.ok("containers", "rm", "talker")
    env.ok("run", "-d", "--name", "att", IMAGE, "sh", "-c", "sleep 1; echo late; exit 3")
    p = env.run("tasks", "attach", "att")
    assert (p.returncode, p.stdout) == (3, "late\n")
    env.ok("containers", "rm", "att")
    env.assert_nothing_left("att")


def test_run_zygote_serves_later_runs(env: Env) -> None:
    from pyctr import runzygote

    sock = runzygote.socket_path(str(env.roots.state))
    assert env.ok("run", "--rm", IMAGE, "echo", "one") == "one\n"  # runs in-process, leaves a zygote
    deadline = time.monotonic() + 20
    while not os.path.exists(runzygote.pid_path(sock)) and time.monotonic() < deadline:
        time.sleep(0.1)
    zpid = int(Path(runzygote.pid_path(sock)).read_text())
    assert b"pyctr-run-zygote" in Path(f"/proc/{zpid}/cmdline").read_bytes()
    assert str(env.roots.state).encode() not in Path(f"/proc/{zpid}/cmdline").read_bytes()
    # served by the zygote: the exit status, stdin, relative paths and signals go through it
    code = "import sys; from pyctr import runzygote; sys.exit(runzygote.try_run(sys.argv[1], sys.argv[2:]))"
    argv = [*env.roots.args(), "-n", env.ns, "run", "--rm", "-i", IMAGE, "sh", "-c", "cat; exit 5"]
    p = subprocess.run([os.path.realpath(sys.executable), "-c", code, str(env.roots.state), *argv],
                       input="through-zygote\n", capture_output=True, text=True, env=child_env(), timeout=60)
    assert (p.returncode, p.stdout) == (5, "through-zygote\n"), p.stderr
    proc = subprocess.Popen(env.cmd("run", "--rm", "--name", "zsig", IMAGE, "sleep", "60"), env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while "zsig" not in env.ok("tasks", "ls", "-q").split() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 137
    assert Path(f"/proc/{zpid}").exists()
    env.assert_nothing_left("zsig")
    # PYCTR_NO_ZYGOTE=1 runs in-process
    p = subprocess.run(env.cmd("run", "--rm", IMAGE, "echo", "two"), capture_output=True, text=True,
                       env=child_env({"PYCTR_NO_ZYGOTE": "1"}), timeout=60)
    assert (p.returncode, p.stdout) == (0, "two\n")


def test_run_zygote_staleness(tmp_path: Path) -> None:
    from pyctr import runzygote

    f = tmp_path / "m.py"
    f.write_text("x = 1\n")
    mt = {str(f): f.stat().st_mtime_ns}
    assert not runzygote._stale(mt)
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 1_000_000))
    assert runzygote._stale(mt)
    f.unlink()
    assert runzygote._stale(mt)
    assert all(k.endswith((".py", ".so")) for k in runzygote._source_mtimes())  # sources and built speedups


@pytest.mark.skipif(shutil.which("script") is None, reason="needs script(1) for a pty")
def test_tty_gets_a_pty_of_the_callers_size(env: Env) -> None:
    import shlex

    cmd = shlex.join(env.cmd("run", "--rm", "-t", IMAGE, "sh", "-c", "tty; stty size; echo $TERM; exit 4"))
    p = subprocess.run(["script", "-qec", f"stty cols 77 rows 21; {cmd}", "/dev/null"], capture_output=True,
                       text=True, env=child_env(), timeout=60)
    lines = [ln.strip() for ln in p.stdout.splitlines() if ln.strip()]
    assert p.returncode == 4, p.stdout + p.stderr
    assert lines[-3:] == ["/dev/pts/0", "21 77", "xterm"]


def test_run_and_exec_through_the_daemon(env: Env) -> None:
    from daemon_helpers import running_daemon

    with running_daemon(env.roots) as (_proc, sock):
        def remote(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
            return subprocess.run([pyctr_executable(), "--address", sock, "-n", env.ns, *args], input=input,
                                  capture_output=True, text=True, env=child_env(), timeout=60)

        p = remote("run", "--rm", IMAGE, "sh", "-c", "echo out; echo err >&2; exit 3")
        assert (p.returncode, p.stdout, p.stderr) == (3, "out\n", "err\n")
        p = remote("run", "--rm", "-i", IMAGE, "cat", input="over-fifos\n")
        assert (p.returncode, p.stdout) == (0, "over-fifos\n")
        assert remote("run", "-d", "--name", "rd", IMAGE, "sleep", "60").returncode == 0
        p = remote("exec", "-i", "rd", "sh", "-c", "cat; exit 6", input="exec-in\n")
        assert (p.returncode, p.stdout) == (6, "exec-in\n")
        assert remote("containers", "rm", "--force", "rd").returncode == 0
    assert list(Path("/tmp").glob("pyctr-fifo-*")) == [] or all(
        not any(d.iterdir()) for d in Path("/tmp").glob("pyctr-fifo-*"))
    env.assert_nothing_left("rd")
