"""The runc runtime with real runc: lifecycle, stdio, TTY, exec, groups, dead shims, restarts."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyctr.errdefs import AlreadyExists, DeadlineExceeded, FailedPrecondition, NotFound
from pyctr.mount import mount_points
from pyctr.plugins.runtime.runc import cgroups
from pyctr.plugins.runtime.runc.manager import RuncRuntime
from pyctr.runtime import CommandNotFound, ProcessIO, RuntimeEvent, TaskStatus
from runtime_helpers import (
    bind_mounts,
    busybox_spec,
    cgroup_parent_for,
    need_runc,
    pid_alive,
    runtime,
    shim_pids,
    wait_gone,
)

pytestmark = pytest.mark.integration
NS = "default"


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[RuncRuntime]:
    need_runc()
    with runtime(tmp_path / "state") as r:
        yield r


def test_exit_code_and_separate_streams(rt: RuncRuntime, rootfs: Path, tmp_path: Path) -> None:
    out, err = tmp_path / "out", tmp_path / "err"
    spec = busybox_spec(rootfs, ["sh", "-c", "echo to-out; echo to-err >&2; exit 7"])
    t = rt.create(NS, "c1", spec, [], ProcessIO(stdout=str(out), stderr=str(err)))
    assert t.state().status == TaskStatus.CREATED
    cg = rt.cgroup_path(NS, "c1")
    assert cg == f"{rt.cgroup_parent}/default/c1" and cgroups.exists(cg)
    assert t.start() == t.pid > 0
    st = t.wait(timeout=20)
    assert st.exit_status == 7
    assert out.read_text() == "to-out\n" and err.read_text() == "to-err\n"
    s = t.state()
    assert s.status == TaskStatus.STOPPED and s.exit_status == 7 and s.exited_at == st.exited_at
    assert json.loads((rt.bundle(NS, "c1").path / "exit").read_text())["exit_status"] == 7
    assert t.delete().exit_status == 7
    assert not cgroups.exists(cg), "runc delete left the cgroup"
    assert not rt.bundle(NS, "c1").path.exists()
    with pytest.raises(NotFound):
        rt.get(NS, "c1")


def test_kill_signals(rt: RuncRuntime, rootfs: Path) -> None:
    t = rt.create(NS, "k", busybox_spec(rootfs, ["sh", "-c", "trap 'exit 42' TERM; sleep 100 & wait"]), [],
                  ProcessIO())
    t.start()
    time.sleep(0.2)
    t.kill(signal.SIGTERM)
    assert t.wait(timeout=20).exit_status == 42
    with pytest.raises(FailedPrecondition, match="already exited"):
        t.kill(signal.SIGKILL)
    t.delete()

    t = rt.create(NS, "k2", busybox_spec(rootfs, ["sleep", "100"]), [], ProcessIO())
    t.start()
    t.kill(signal.SIGKILL, all=True)
    assert t.wait(timeout=20).exit_status == 128 + signal.SIGKILL
    t.delete()


def test_stdin_fifo_and_passed_fds(rt: RuncRuntime, rootfs: Path, tmp_path: Path) -> None:
    # FIFO stdin (copied by the shim) and a FIFO stdout the caller reads
    fin, fout = tmp_path / "in", tmp_path / "outfifo"
    os.mkfifo(fin)
    os.mkfifo(fout)
    rfd = os.open(fout, os.O_RDONLY | os.O_NONBLOCK)
    try:
        io = ProcessIO(stdin=str(fin), stdout=str(fout))
        t = rt.create(NS, "cat", busybox_spec(rootfs, ["cat"]), [], io)
        t.start()
        with open(fin, "wb") as w:
            w.write(b"piped through a fifo\n")
        assert t.wait(timeout=20).exit_status == 0
        os.set_blocking(rfd, True)
        assert os.read(rfd, 4096) == b"piped through a fifo\n"
    finally:
        os.close(rfd)
    t.delete()

    # the caller's own fds (embedded mode): handed to the container, no copy
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        t = rt.create(NS, "cat2", busybox_spec(rootfs, ["sh", "-c", "cat; echo done"]), [],
                      ProcessIO(stdin=in_r, stdout=out_w, stderr=out_w))
        os.close(in_r)
        os.close(out_w)
        t.start()
        os.write(in_w, b"hello fds\n")
        os.close(in_w)
        assert t.wait(timeout=20).exit_status == 0
        data = b""
        while chunk := os.read(out_r, 4096):
            data += chunk
        assert data == b"hello fds\ndone\n"
    finally:
        for fd in (in_w, out_r):
            with contextlib.suppress(OSError):
                os.close(fd)
    t.delete()


def test_json_log_and_log_uri(rt: RuncRuntime, rootfs: Path, tmp_path: Path) -> None:
    jl, raw, out = tmp_path / "log.json", tmp_path / "raw.log", tmp_path / "out"
    spec = busybox_spec(rootfs, ["sh", "-c", "echo a; echo b >&2; printf 'no-newline'"])
    t = rt.create(NS, "logs", spec, [], ProcessIO(stdout=str(out), json_log=str(jl), log_uri=f"file://{raw}"))
    t.start()
    assert t.wait(timeout=20).exit_status == 0
    lines = [json.loads(x) for x in jl.read_text().splitlines()]
    got = sorted((e["stream"], e["log"]) for e in lines)
    assert got == [("stderr", "b\n"), ("stdout", "a\n"), ("stdout", "no-newline")]
    assert all(e["time"].endswith("Z") and "T" in e["time"] for e in lines)
    assert out.read_text() == "a\nno-newline"
    assert sorted(raw.read_text()) == sorted("a\nb\nno-newline")  # both streams, interleaved
    t.delete()


def test_tty_console_and_resize(rt: RuncRuntime, rootfs: Path) -> None:
    r, w = os.pipe()
    try:
        spec = busybox_spec(rootfs, ["sh", "-c", "sleep 0.5; tty; stty size"], tty=True)
        t = rt.create(NS, "tty", spec, [], ProcessIO(stdout=w, terminal=True))
        os.close(w)
        t.start()
        t.resize_pty(120, 40)
        assert t.wait(timeout=20).exit_status == 0
        data = b""
        while chunk := os.read(r, 4096):
            data += chunk
    finally:
        os.close(r)
    assert data.replace(b"\r", b"").split(b"\n")[:2] == [b"/dev/pts/0", b"40 120"]
    t.delete()


def test_exec_pause_resume_pids(rt: RuncRuntime, rootfs: Path, tmp_path: Path) -> None:
    t = rt.create(NS, "ex", busybox_spec(rootfs, ["sleep", "100"]), [], ProcessIO())
    t.start()
    out = tmp_path / "exec.out"
    t.exec("e1", {"args": ["sh", "-c", "echo from-exec; exit 3"], "cwd": "/", "env": ["PATH=/bin"],
                  "user": {"uid": 0, "gid": 0}}, ProcessIO(stdout=str(out)))
    assert t.state("e1").status == TaskStatus.CREATED
    with pytest.raises(AlreadyExists):
        t.exec("e1", {"args": ["true"], "cwd": "/"}, ProcessIO())
    pid = t.start("e1")
    assert pid > 0
    assert t.wait(timeout=20, exec_id="e1").exit_status == 3
    assert out.read_text() == "from-exec\n"
    assert t.state("e1").status == TaskStatus.STOPPED
    assert t.delete(exec_id="e1").exit_status == 3
    ev = [json.loads(x) for x in (rt.bundle(NS, "ex").path / "events.jsonl").read_text().splitlines()]
    order = [(e["topic"], e["event"].get("exec_id") or e["event"].get("id")) for e in ev]
    assert order.index(("/tasks/exec-added", "e1")) < order.index(("/tasks/exec-started", "e1")) \
        < order.index(("/tasks/exit", "e1"))
    with pytest.raises(NotFound):
        t.state("e1")
    with pytest.raises(CommandNotFound):
        t.exec("e2", {"args": ["/no/such/cmd"], "cwd": "/"}, ProcessIO())
        t.start("e2")

    assert t.pid in [p.pid for p in t.pids()]
    t.pause()
    assert t.state().status == TaskStatus.PAUSED
    t.resume()
    assert t.state().status == TaskStatus.RUNNING
    st = t.stats()
    assert st["pids_current"] >= 1 and st["memory_usage"] > 0
    from pyctr.plugins.runtime.runc.shim_client import ShimClient

    c = ShimClient(t.address)
    try:
        via_shim = c.call("stats", {"ns": NS, "id": "ex"})
    finally:
        c.close()
    assert via_shim["cgroup"] == st["cgroup"] and via_shim["pids_current"] >= 1
    with pytest.raises(DeadlineExceeded):
        t.wait(timeout=0.3)
    with pytest.raises(FailedPrecondition, match="running"):
        t.delete()
    t.kill(signal.SIGKILL)
    t.wait(timeout=20)
    with pytest.raises(FailedPrecondition):
        t.exec("late", {"args": ["true"], "cwd": "/"}, ProcessIO())
    t.delete()


def test_missing_command_is_127_and_leaves_nothing(rt: RuncRuntime, rootfs: Path) -> None:
    spec = busybox_spec(rootfs, ["/no/such/cmd"])
    with pytest.raises(CommandNotFound) as ei:
        rt.create(NS, "bad", spec, bind_mounts(rootfs), ProcessIO())
    assert ei.value.exit_code == 127
    assert "/no/such/cmd" in str(ei.value) and "\n" not in str(ei.value)
    assert not rt.bundle(NS, "bad").path.exists()
    assert not cgroups.exists(rt.cgroup_path(NS, "bad"))
    assert not any(m.startswith(str(rt.state)) for m in mount_points())
    assert shim_pids(rt) == set()


def test_rootfs_mounts_and_already_exists(rt: RuncRuntime, rootfs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = busybox_spec(rootfs, ["sh", "-c", "ls /bin/busybox; sleep 100"])
    t = rt.create(NS, "m", spec, bind_mounts(rootfs), ProcessIO(stdout=str(out)))
    bundle_rootfs = str(rt.bundle(NS, "m").rootfs)
    assert bundle_rootfs in mount_points()
    with pytest.raises(AlreadyExists):
        rt.create(NS, "m", spec, bind_mounts(rootfs), ProcessIO())
    t.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not out.read_text():
        time.sleep(0.02)
    assert out.read_text() == "/bin/busybox\n"
    t.delete(force=True)
    assert bundle_rootfs not in mount_points()


def test_group_shares_one_shim(rt: RuncRuntime, rootfs: Path) -> None:
    tasks = [rt.create(NS, f"g{i}", busybox_spec(rootfs, ["sleep", "100"]), [], ProcessIO(), group="batch")
             for i in range(4)]
    for t in tasks:
        t.start()
    pids = {t.state().shim_pid for t in tasks}
    assert len(pids) == 1
    shim = pids.pop()
    assert {t.state().group for t in tasks} == {"batch"}
    for t in tasks[:-1]:
        t.kill(signal.SIGKILL)
        t.wait(timeout=20)
        t.delete()
    assert pid_alive(shim)
    tasks[-1].kill(signal.SIGKILL)
    tasks[-1].wait(timeout=20)
    tasks[-1].delete()
    assert wait_gone(shim), "the shim did not exit after its last task"
    logs = [p.name for p in (rt.state / "shims").iterdir()]
    assert set(logs) <= {"zygote.log"}, logs  # a cleanly exited shim leaves no log behind


def test_shim_killed_is_detected(rt: RuncRuntime, rootfs: Path) -> None:
    t = rt.create(NS, "victim", busybox_spec(rootfs, ["sleep", "100"]), bind_mounts(rootfs), ProcessIO())
    t.start()
    shim = t.state().shim_pid
    cpid = t.pid
    os.kill(shim, signal.SIGKILL)
    assert wait_gone(shim)
    st = t.state()
    assert st.status == TaskStatus.STOPPED and st.exit_status == 255 and st.reason == "shim died"
    assert wait_gone(cpid), "the container process outlived its dead shim's clean-up"
    assert not cgroups.exists(rt.cgroup_path(NS, "victim"))
    assert str(rt.bundle(NS, "victim").rootfs) not in mount_points()
    with pytest.raises(FailedPrecondition):
        t.kill(signal.SIGKILL)
    assert t.wait(timeout=1).exit_status == 255
    assert t.delete().exit_status == 255
    assert not rt.bundle(NS, "victim").path.exists()


def test_restart_learns_exits(tmp_path: Path, rootfs: Path) -> None:
    need_runc()
    state = tmp_path / "state"
    rt1 = RuncRuntime(state, cgroup_parent=cgroup_parent_for(state), shim_pool_size=1)
    try:
        a = rt1.create(NS, "a", busybox_spec(rootfs, ["sh", "-c", "sleep 0.3; exit 5"]), [], ProcessIO())
        a.start()
        b = rt1.create(NS, "b", busybox_spec(rootfs, ["sh", "-c", "sleep 0.3; exit 6"]), [], ProcessIO())
        b.start()
        c = rt1.create(NS, "c", busybox_spec(rootfs, ["sleep", "100"]), [], ProcessIO())
        c.start()
        shim_b = b.state().shim_pid
    finally:
        rt1.close()  # the "daemon" goes away; the shims stay
    time.sleep(0.8)
    os.kill(shim_b, signal.SIGKILL)  # b's shim dies after b exited: the exit file tells
    assert wait_gone(shim_b)
    with runtime(state) as rt2:
        got: list[RuntimeEvent] = []
        rt2.set_publisher(got.append)
        seen = [(e.topic, e.event["container_id"], e.event["exit_status"]) for e in got]
        assert seen == [("/tasks/exit", "b", 6)]
        assert {t.id for t in rt2.tasks(NS)} == {"a", "b", "c"}
        sa = rt2.get(NS, "a").state()
        assert (sa.status, sa.exit_status) == (TaskStatus.STOPPED, 5)
        assert rt2.get(NS, "a").wait(timeout=5).exit_status == 5
        sb = rt2.get(NS, "b").state()
        assert (sb.status, sb.exit_status, sb.reason) == (TaskStatus.STOPPED, 6, "")
        assert rt2.get(NS, "c").state().status == TaskStatus.RUNNING
        # events from live shims reach the publisher of the new runtime
        rt2.get(NS, "c").kill(signal.SIGKILL)
        assert rt2.get(NS, "c").wait(timeout=20).exit_status == 137
        def c_exit() -> bool:
            return any(e.topic == "/tasks/exit" and e.event["container_id"] == "c" for e in got)

        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not c_exit():
            time.sleep(0.02)
        assert c_exit()
        for id in ("a", "b", "c"):
            rt2.get(NS, id).delete()
        assert rt2.tasks(NS) == []


def test_event_order_and_publisher(rt: RuncRuntime, rootfs: Path) -> None:
    got: list[RuntimeEvent] = []
    lock = threading.Lock()

    def pub(e: RuntimeEvent) -> None:
        with lock:
            got.append(e)

    rt.set_publisher(pub)
    t = rt.create(NS, "ev", busybox_spec(rootfs, ["true"]), [], ProcessIO())
    t.start()
    t.wait(timeout=20)
    log = rt.bundle(NS, "ev").path / "events.jsonl"
    topics = [json.loads(x)["topic"] for x in log.read_text().splitlines()]
    assert topics == ["/tasks/create", "/tasks/start", "/tasks/exit"]
    t.delete()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(got) < 4:
        time.sleep(0.02)
    assert [e.topic for e in got] == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    assert all(e.namespace == NS and e.event["container_id"] == "ev" for e in got)


def test_resources_applied(rt: RuncRuntime, rootfs: Path) -> None:
    spec = busybox_spec(rootfs, ["sleep", "100"], memory=64 << 20, pids_limit=50)
    t = rt.create(NS, "res", spec, [], ProcessIO())
    t.start()
    st = t.stats()
    assert st["memory_limit"] == 64 << 20
    assert st["pids_limit"] == 50
    t.delete(force=True)
    assert not cgroups.exists(rt.cgroup_path(NS, "res"))


def test_plugin_registration(tmp_path: Path) -> None:
    need_runc()
    from pyctr.config import Config
    from pyctr.engine import Engine

    cfg = Config(root=str(tmp_path / "root"), state=str(tmp_path / "state"))
    eng = Engine(cfg)
    try:
        rt = eng.plugin("runtime")
        assert isinstance(rt, RuncRuntime)
        assert rt.state == tmp_path / "state" / "pyctr.runtime.runc"
        assert rt.runc_root == rt.state / "runc"
    finally:
        eng.close()
        if str(rt.sock_dir).startswith("/tmp/pyctr-s-"):
            shutil.rmtree(rt.sock_dir, ignore_errors=True)


def test_stdio_copy_mode(tmp_path: Path, rootfs: Path) -> None:
    """With stdio_copy the shim copies (splice) instead of handing the destinations over."""
    need_runc()
    with runtime(tmp_path / "state", stdio_copy=True) as rt:
        r, w = os.pipe()
        ours = f"pipe:[{os.fstat(w).st_ino}]"
        out = tmp_path / "out"
        try:
            cmd = "head -c 300000 /dev/zero; readlink /proc/self/fd/1 >&2"
            spec = busybox_spec(rootfs, ["sh", "-c", cmd])
            t = rt.create(NS, "cp", spec, [], ProcessIO(stdout=w, stderr=str(out)))
            os.close(w)
            t.start()
            data = b""
            while chunk := os.read(r, 1 << 16):
                data += chunk
        finally:
            os.close(r)
        assert t.wait(timeout=20).exit_status == 0
        assert data == b"\0" * 300000
        theirs = out.read_text().strip()
        assert theirs.startswith("pipe:[") and theirs != ours  # the shim's pipe, copied to ours
        t.delete()


def test_oom_is_reported(rt: RuncRuntime, rootfs: Path) -> None:
    spec = busybox_spec(rootfs, ["sh", "-c", "head -c 200000000 /dev/zero | tail; exit 3"], memory=16 << 20)
    t = rt.create(NS, "oom", spec, [], ProcessIO())
    t.start()
    t.wait(timeout=60)
    st = t.state()
    assert st.reason == "oom", st
    topics = [json.loads(x)["topic"] for x in (rt.bundle(NS, "oom").path / "events.jsonl").read_text().splitlines()]
    assert topics.index("/tasks/oom") < topics.index("/tasks/exit")
    t.delete()


def test_close_stdin_ends_input(rt: RuncRuntime, rootfs: Path, tmp_path: Path) -> None:
    fin, out = tmp_path / "in", tmp_path / "out"
    os.mkfifo(fin)
    t = rt.create(NS, "cs", busybox_spec(rootfs, ["sh", "-c", "cat; echo closed"]), [],
                  ProcessIO(stdin=str(fin), stdout=str(out)))
    t.start()
    w = os.open(fin, os.O_WRONLY)  # we keep the writer open: cat sees no EOF ...
    try:
        os.write(w, b"kept open\n")
        with pytest.raises(DeadlineExceeded):
            t.wait(timeout=0.5)
        t.close_stdin()  # ... until the shim closes the container's stdin
        assert t.wait(timeout=20).exit_status == 0
    finally:
        os.close(w)
    assert out.read_text() == "kept open\nclosed\n"
    t.delete()


def test_exec_with_tty(rt: RuncRuntime, rootfs: Path) -> None:
    t = rt.create(NS, "et", busybox_spec(rootfs, ["sleep", "100"]), [], ProcessIO())
    t.start()
    r, w = os.pipe()
    try:
        t.exec("tty", {"args": ["sh", "-c", "sleep 0.3; tty; stty size"], "cwd": "/", "env": ["PATH=/bin"]},
               ProcessIO(stdout=w, terminal=True))
        os.close(w)
        t.start("tty")
        t.resize_pty(100, 30, exec_id="tty")
        assert t.wait(timeout=20, exec_id="tty").exit_status == 0
        data = b""
        while chunk := os.read(r, 4096):
            data += chunk
    finally:
        os.close(r)
    lines = data.replace(b"\r", b"").split(b"\n")
    assert lines[0].startswith(b"/dev/pts/") and lines[1] == b"30 100"
    t.delete(force=True)


def test_concurrent_creates_in_one_group(rt: RuncRuntime, rootfs: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> int:
        t = rt.create(NS, f"p{i}", busybox_spec(rootfs, ["sh", "-c", f"exit {i}"]), [], ProcessIO(), group="batch")
        t.start()
        code = t.wait(timeout=30).exit_status
        t.delete()
        return code

    with ThreadPoolExecutor(4) as ex:
        assert list(ex.map(one, range(12))) == list(range(12))
    assert rt.tasks(NS) == []
    assert shim_pids(rt) == set()


def test_errors_on_stopped_task_leave_nothing(rt: RuncRuntime, rootfs: Path) -> None:
    t = rt.create(NS, "st", busybox_spec(rootfs, ["true"]), bind_mounts(rootfs), ProcessIO())
    t.start()
    t.wait(timeout=20)
    shim = t.state().shim_pid
    with pytest.raises(FailedPrecondition) as e1:
        t.kill(signal.SIGTERM)
    with pytest.raises(FailedPrecondition) as e2:
        t.exec("x", {"args": ["true"], "cwd": "/"}, ProcessIO())
    with pytest.raises(FailedPrecondition) as e3:
        t.start()
    for e in (e1, e2, e3):
        assert "\n" not in str(e.value) and "st" in str(e.value)
    t.delete()
    assert wait_gone(shim)
    assert not rt.bundle(NS, "st").path.exists()
    assert not cgroups.exists(rt.cgroup_path(NS, "st"))
    assert not any(m.startswith(str(rt.state)) for m in mount_points())
    with pytest.raises(NotFound):
        rt.get(NS, "st").state()


def test_zygote_forks_shims_and_recovers(tmp_path: Path, rootfs: Path) -> None:
    need_runc()
    with runtime(tmp_path / "state", zygote_idle=1.0, shim_pool_size=1) as rt:
        t = rt.create(NS, "z1", busybox_spec(rootfs, ["true"]), [], ProcessIO())  # cold shim, zygote starts
        t.start()
        t.wait(timeout=20)
        t.delete()
        deadline = time.monotonic() + 5
        info = None
        while time.monotonic() < deadline and not info:
            info = rt.client(rt.zygote_address).ping(timeout=1.0)
            time.sleep(0.05)
        assert info and info["zygote_pid"] > 0
        zpid = int(info["zygote_pid"])
        t = rt.create(NS, "z2", busybox_spec(rootfs, ["sleep", "100"]), [], ProcessIO())
        shim = t.state().shim_pid
        with open(f"/proc/{shim}/stat") as f:
            assert int(f.read().rsplit(") ", 1)[1].split()[1]) == zpid, "the shim was not forked by the zygote"
        os.kill(zpid, signal.SIGKILL)  # a dead zygote: the next shim starts cold, a new zygote follows
        assert wait_gone(zpid)
        t.start()
        assert t.state().status == TaskStatus.RUNNING and t.state().shim_pid == shim  # outlives its parent
        t2 = rt.create(NS, "z3", busybox_spec(rootfs, ["true"]), [], ProcessIO())
        info = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not info:
            info = rt.client(rt.zygote_address).ping(timeout=1.0)
            time.sleep(0.05)
        assert info and int(info["zygote_pid"]) != zpid
        t2.start()
        assert t2.wait(timeout=20).exit_status == 0
        t2.delete()
        t.delete(force=True)
        assert wait_gone(int(info["zygote_pid"]), timeout=8), "an idle zygote did not exit"


def test_load_spares_creates_in_flight(tmp_path: Path) -> None:
    need_runc()
    state = tmp_path / "state"
    b = state / "default" / "half"
    b.mkdir(parents=True)
    (b / "config.json").write_text("{}")  # a create in flight: no shim.json yet
    rt = RuncRuntime(state, cgroup_parent=cgroup_parent_for(state))
    try:
        assert b.exists(), "load() removed a bundle another process may be creating"
        with pytest.raises(AlreadyExists):
            rt.create(NS, "half", {"process": {"args": ["true"]}}, [], ProcessIO())
    finally:
        rt.close()
    old = time.time() - 3600
    os.utime(b / "config.json", (old, old))
    with runtime(state):
        assert not b.exists(), "load() left an abandoned bundle"


def test_default_group_shares_a_shim(tmp_path: Path, rootfs: Path) -> None:
    need_runc()
    with runtime(tmp_path / "state", default_group="shared") as rt:
        a = rt.create(NS, "a", busybox_spec(rootfs, ["sleep", "100"]), [], ProcessIO())
        b = rt.create(NS, "b", busybox_spec(rootfs, ["sleep", "100"]), [], ProcessIO())
        c = rt.create(NS, "c", busybox_spec(rootfs, ["sleep", "100"]), [], ProcessIO(), group="own")
        assert a.state().shim_pid == b.state().shim_pid != c.state().shim_pid
        assert a.state().group == "shared" and c.state().group == "own"
        for t in (a, b, c):
            t.delete(force=True)


def test_stale_zygote_is_replaced(tmp_path: Path, rootfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need_runc()
    from pyctr.plugins.runtime.runc import manager

    with runtime(tmp_path / "state") as rt:
        monkeypatch.setattr(manager, "_code_id", lambda: "older-code")
        rt._start_zygote()
        deadline = time.monotonic() + 5
        old = None
        while time.monotonic() < deadline and not old:
            old = rt.client(rt.zygote_address).ping(timeout=1.0)
            time.sleep(0.05)
        assert old
        monkeypatch.undo()
        t = rt.create(NS, "s", busybox_spec(rootfs, ["true"]), [], ProcessIO())
        assert wait_gone(int(old["zygote_pid"])), "the stale zygote did not leave"
        t.start()
        assert t.wait(timeout=20).exit_status == 0
        t.delete()
        new = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not new:
            new = rt.client(rt.zygote_address).ping(timeout=1.0)
            time.sleep(0.05)
        assert new and new["zygote_pid"] != old["zygote_pid"]


def test_copy_into_callers_file_appends(tmp_path: Path, rootfs: Path) -> None:
    """A caller's file (``> out``) given as an fd keeps its offset and O_APPEND when the shim copies."""
    need_runc()
    out = tmp_path / "out"
    out.write_text("before\n")
    with runtime(tmp_path / "state", stdio_copy=True) as rt:
        fd = os.open(out, os.O_WRONLY | os.O_APPEND)
        try:
            t = rt.create(NS, "ap", busybox_spec(rootfs, ["echo", "after"]), [], ProcessIO(stdout=fd))
        finally:
            os.close(fd)
        t.start()
        assert t.wait(timeout=20).exit_status == 0
        t.delete()
    assert out.read_text() == "before\nafter\n"


def test_shim_rpc_rejects_bad_requests(rt: RuncRuntime) -> None:
    import socket
    import struct

    from pyctr.errdefs import NotImplementedErr
    from pyctr.plugins.runtime.runc.shim_client import ShimClient

    address, fresh = rt.ensure_shim(NS, "rpc")
    assert fresh
    c = ShimClient(address)
    try:
        info = c.call("connect", {})
        assert info["tasks"] == 0 and info["group"] == "rpc"
        with pytest.raises(NotImplementedErr):
            c.call("checkpoint", {})
        with pytest.raises(NotFound):
            c.call("state", {"ns": NS, "id": "nope"})
        for junk in (b"\x00\x00\x00\x03abc", struct.pack(">I", 1 << 30) + b"x"):
            s = socket.socket(socket.AF_UNIX)
            s.connect(address)
            s.sendall(junk)
            s.settimeout(5)
            assert s.recv(10) == b""  # dropped
            s.close()
        assert c.call("connect", {})["shim_pid"] == info["shim_pid"]  # still serving
        c.call("shutdown", {})
        assert wait_gone(int(info["shim_pid"]))
    finally:
        c.close()


def test_group_shim_replaced_after_crash(rt: RuncRuntime, rootfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task whose group shim died, while a new shim now serves the group, reads as stopped (255)."""
    from pyctr.plugins.runtime.runc import manager

    a = rt.create(NS, "old", busybox_spec(rootfs, ["sleep", "100"]), [], ProcessIO(), group="grp")
    a.start()
    shim = a.state().shim_pid
    os.kill(shim, signal.SIGKILL)
    assert wait_gone(shim)
    b = rt.create(NS, "new", busybox_spec(rootfs, ["sleep", "100"]), [], ProcessIO(), group="grp")
    assert b.state().shim_pid != shim
    monkeypatch.setattr(manager, "_CREATE_GRACE", 0.0)  # "old" is not a create in flight
    st = rt.get(NS, "old").state()
    assert (st.status, st.exit_status, st.reason) == (TaskStatus.STOPPED, 255, "shim died")
    rt.get(NS, "old").delete()
    b.delete(force=True)


def test_zygote_leaves_with_its_state_directory(tmp_path: Path, rootfs: Path) -> None:
    need_runc()
    state = tmp_path / "state"
    with runtime(state) as rt:
        rt._start_zygote()
        info = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not info:
            info = rt.client(rt.zygote_address).ping(timeout=1.0)
            time.sleep(0.05)
        assert info
        zpid = int(info["zygote_pid"])
        moved = tmp_path / "moved"
        state.rename(moved)  # as if the state directory were deleted
        try:
            assert wait_gone(zpid, timeout=6), "the zygote outlived its state directory"
            assert not os.path.exists(rt.zygote_address)
        finally:
            moved.rename(state)


def test_events_reach_the_exchange(rt: RuncRuntime, rootfs: Path) -> None:
    """What pyctrd wires (pyctr_daemon_started): shim events forwarded to the event exchange."""
    from pyctr.events.exchange import Exchange
    from pyctr.plugins.runtime.runc.plugin import forwarder

    ex = Exchange()
    sub = ex.subscribe('topic~="/tasks/"')
    rt.set_publisher(forwarder(ex))
    t = rt.create(NS, "fw", busybox_spec(rootfs, ["sh", "-c", "exit 4"]), [], ProcessIO())
    t.start()
    t.wait(timeout=20)
    t.delete()
    got = []
    while len(got) < 4:
        env = sub.get(timeout=5)
        assert env is not None, f"only {got} arrived"
        got.append((env.topic, env.namespace, env.event.get("exit_status")))
    assert got == [("/tasks/create", NS, None), ("/tasks/start", NS, None), ("/tasks/exit", NS, 4),
                   ("/tasks/delete", NS, 4)]
    rt.set_publisher(None)


def test_shim_forgets_stopped_tasks_whose_bundle_is_gone(tmp_path: Path, rootfs: Path) -> None:
    need_runc()
    import shutil as sh

    with runtime(tmp_path / "state", shim_sweep=0.3) as rt:
        t = rt.create(NS, "gone", busybox_spec(rootfs, ["true"]), [], ProcessIO())
        t.start()
        t.wait(timeout=20)
        shim = t.state().shim_pid
        rt._remove_runc_state(NS, "gone")
        sh.rmtree(rt.bundle(NS, "gone").path)  # the state directory was wiped under a stopped task
        assert wait_gone(shim, timeout=5), "the shim kept a task nobody can delete"


def test_stopped_task_deleted_without_runc_only_in_the_plain_case(tmp_path: Path, rootfs: Path) -> None:
    """A stopped task's delete removes its cgroups and runc state itself (no ``runc delete``), but
    leaves anything runc must do (poststop hooks) and running tasks to runc."""
    from pyctr.plugins.runtime.runc import runc as R

    calls = tmp_path / "runc-calls"
    wrapper = tmp_path / "runc-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >>{calls}\nexec {shutil.which("runc")} "$@"\n')
    wrapper.chmod(0o755)
    with runtime(tmp_path / "state", runc_binary=str(wrapper)) as rt:
        root = Path(rt.runc_root_for(NS))

        def deletes(id: str) -> int:
            return sum(1 for line in calls.read_text().splitlines() if " delete" in line and line.endswith(id))

        plain = rt.create(NS, "plain", busybox_spec(rootfs, ["true"]), bind_mounts(rootfs), ProcessIO())
        plain.start()
        plain.wait(timeout=20)
        assert (root / "plain" / "state.json").exists() and cgroups.exists(rt.cgroup_path(NS, "plain"))
        plain.delete()
        assert deletes("plain") == 0
        assert not (root / "plain").exists() and not cgroups.exists(rt.cgroup_path(NS, "plain"))
        assert R.delete_stopped(str(root), "plain")  # already gone: nothing to do

        marker = tmp_path / "poststop-ran"
        spec = busybox_spec(rootfs, ["true"])
        spec["hooks"] = {"poststop": [{"path": "/bin/sh", "args": ["sh", "-c", f"touch {marker}"]}]}
        hooked = rt.create(NS, "hooked", spec, bind_mounts(rootfs), ProcessIO())
        hooked.start()
        hooked.wait(timeout=20)
        assert not R.delete_stopped(str(root), "hooked")
        assert (root / "hooked" / "state.json").exists() and cgroups.exists(rt.cgroup_path(NS, "hooked"))
        hooked.delete()
        assert deletes("hooked") == 1 and marker.exists()  # runc ran the hook
        assert not (root / "hooked").exists() and not cgroups.exists(rt.cgroup_path(NS, "hooked"))

        live = rt.create(NS, "live", busybox_spec(rootfs, ["sleep", "30"]), bind_mounts(rootfs), ProcessIO())
        live.start()
        assert not R.delete_stopped(str(root), "live")
        assert (root / "live" / "state.json").exists() and cgroups.exists(rt.cgroup_path(NS, "live"))
        live.kill(signal.SIGKILL)
        live.wait(timeout=20)
        live.delete()
        assert not (root / "live").exists() and not cgroups.exists(rt.cgroup_path(NS, "live"))
