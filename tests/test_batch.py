"""``pyctr batch``: many containers at once, with real runc, overlayfs and cgroups; nothing may be left.

Each test has its own root, state, runc root and cgroup parent.
"""

from __future__ import annotations

import contextlib
import json
import os
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
from daemon_helpers import running_daemon
from pyctr.plugins.runtime.runc import cgroups
from runtime_helpers import state_pids

pytestmark = RUNS_CONTAINERS

IMAGE = "localhost/busybox:latest"
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass
class Env:
    roots: Roots
    cgroup_parent: str

    def cmd(self, *args: str) -> list[str]:
        return [pyctr_executable(), *self.roots.args(), *args]

    def run(self, *args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(*args), input=input, capture_output=True, text=True, env=child_env(),
                              timeout=timeout)

    def ok(self, *args: str, input: str | None = None) -> str:
        p = self.run(*args, input=input)
        assert p.returncode == 0, f"pyctr {' '.join(args)} exited {p.returncode}: {p.stderr}"
        return p.stdout

    @property
    def runtime_state(self) -> Path:
        return self.roots.state / "pyctr.runtime.runc"

    def mounts_under(self) -> list[str]:
        here = (str(self.roots.root), str(self.roots.state))
        with open("/proc/self/mounts") as f:
            return [ln.split()[1] for ln in f if ln.split()[1].startswith(here)]

    def cgroups_left(self) -> list[Path]:
        """Container cgroups (``<parent>/default/<id>``) in any hierarchy."""
        out = []
        for ctrl in [CGROUP_ROOT, *CGROUP_ROOT.iterdir()]:
            base = ctrl / self.cgroup_parent.strip("/") / "default"
            if base.is_dir():
                out.extend(p for p in base.rglob("*") if p.is_dir())
        return out

    def bundles_left(self) -> list[str]:
        out = []
        for d in (self.runtime_state / "default", self.runtime_state / ".batch" / "default"):
            out += sorted(os.listdir(d)) if d.is_dir() else []
        return out

    def runc_states_left(self) -> list[str]:
        """runc's container states: the runtime's, and those of direct batches (in their scratch)."""
        roots = [self.runtime_state / "runc" / "default", *(self.runtime_state / ".batch" / "default").glob("*/runc")]
        return sorted(c for d in roots if d.is_dir() for c in os.listdir(d))

    def shim_pids(self, *, with_zygote: bool = False, exclude: tuple[int, ...] = ()) -> list[int]:
        return state_pids(self.roots.state, with_zygote=with_zygote, exclude=exclude)

    def assert_nothing_left(self, daemon: int = 0) -> None:
        assert self.ok("containers", "ls", "-q").split() == [], "container records left"
        assert self.mounts_under() == [], "mounts left"
        assert self.bundles_left() == [], "bundles left"
        assert self.runc_states_left() == [], "runc state left"
        assert self.cgroups_left() == [], "cgroups left"
        deadline = time.monotonic() + 5
        while self.shim_pids(exclude=(daemon,)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.shim_pids(exclude=(daemon,)) == [], "shim processes left"
        active = [ln for ln in self.ok("snapshots", "ls").splitlines()[1:] if "Committed" not in ln]
        assert active == [], f"snapshots left: {active}"


@pytest.fixture
def env(tmp_root: Roots) -> Iterator[Env]:
    parent = f"/pyctr-test-{uuid.uuid4().hex[:10]}"
    tmp_root.config.write_text(f'[plugins."pyctr.runtime.runc"]\ncgroup_parent = "{parent}"\n')
    e = Env(tmp_root, parent)
    try:
        e.ok("images", "build-busybox")
        yield e
    finally:
        with contextlib.suppress(Exception):
            e.run("batch", "rm", "--label", "pyctr.batch.id")
        with contextlib.suppress(Exception):
            from pyctr.plugins.runtime.runc.manager import RuncRuntime

            RuncRuntime(e.runtime_state, load=False).stop_zygote()
        with contextlib.suppress(Exception):
            from pyctr import runzygote

            runzygote.stop(str(e.roots.state))  # ``batch run`` leaves a warm zygote, as ``run`` does
        for pid in e.shim_pids(with_zygote=True):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for m in sorted(e.mounts_under(), reverse=True):
            subprocess.run(["umount", "-l", m], check=False)
        cgroups.remove(parent)  # every hierarchy, children first; what still holds a process stays


def _finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[str, str]:
    """Wait for ``proc`` (a CLI child) and collect its output; on a timeout, fail with the process tree
    for the diagnosis (the child killed and its pipes closed either way)."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        tree = subprocess.run(["ps", "-eo", "pid,ppid,stat,wchan:20,etimes,args", "--forest"], capture_output=True,
                              text=True).stdout
        proc.kill()
        _out, err = proc.communicate()
        pytest.fail(f"pyctr {proc.args!r} still running after {timeout} s\nstderr: {err}\n{tree}")


def _lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in out.splitlines() if ln.strip()]


def test_batch_rm_runs_all_and_leaves_nothing(env: Env) -> None:
    p = env.run("batch", "run", "--count", "20", "--parallel", "8", "--rm", "--format", "json", IMAGE, "true")
    assert p.returncode == 0, p.stderr
    res = _lines(p.stdout)
    assert len(res) == 20
    assert {r["exit_status"] for r in res} == {0}
    assert all(r["pid"] > 0 and r["started_at"] > 0 and r["duration"] > 0 and not r["error"] for r in res)
    assert len({r["id"] for r in res}) == 20
    assert "20 exited" in p.stderr.splitlines()[-1]
    env.assert_nothing_left()


def test_one_bad_command_fails_alone(env: Env) -> None:
    spec = "\n".join(json.dumps(d) for d in [
        {"args": ["true"]}, {"args": ["/no/such/cmd"], "id": "bad"}, {"args": ["sh", "-c", "exit 3"], "id": "three"},
        {"args": ["true"]}]) + "\n"
    p = env.run("batch", "run", "--rm", "--format", "json", "--spec", "-", IMAGE, input=spec)
    assert p.returncode == 1, p.stderr  # one entry failed
    res = {r["id"]: r for r in _lines(p.stdout)}
    assert len(res) == 4
    assert res["bad"]["exit_status"] == 127 and "/no/such/cmd" in res["bad"]["error"]
    assert res["three"]["exit_status"] == 3 and not res["three"]["error"]
    assert sorted(r["exit_status"] for r in res.values()) == [0, 0, 3, 127]
    env.assert_nothing_left()


def test_spec_entries_env_args_labels_then_rm_by_label(env: Env, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "marker").write_text("x")
    spec = tmp_path / "batch.jsonl"
    spec.write_text("".join(json.dumps(d) + "\n" for d in [
        {"id": "e1", "env": ["CODE=4"], "args": ["sh", "-c", "exit $CODE"], "labels": {"role": "a"}},
        {"id": "e2", "env": {"CODE": "5"}, "args": ["sh", "-c", "exit $CODE"], "labels": {"role": "b"}},
        {"id": "e3", "args": ["sh", "-c", "test -f /data/marker && exit 6"], "resources": {"memory": "64m"},
         "mounts": [f"type=bind,src={data},dst=/data,options=rbind:ro"]},
    ]))
    p = env.run("batch", "run", "--format", "json", "--spec", str(spec), "--label", "team=x", IMAGE)
    assert p.returncode == 0, p.stderr
    res = {r["id"]: r["exit_status"] for r in _lines(p.stdout)}
    assert res == {"e1": 4, "e2": 5, "e3": 6}
    # without --rm the containers stay (their tasks are gone), labelled
    infos = {c["id"]: c for c in json.loads(env.ok("containers", "ls", "-o", "json"))}
    assert set(infos) == {"e1", "e2", "e3"}
    assert infos["e1"]["labels"]["role"] == "a" and infos["e2"]["labels"]["team"] == "x"
    assert infos["e3"]["spec"]["linux"]["resources"]["memory"]["limit"] == 64 << 20
    assert env.mounts_under() == [] and env.bundles_left() == []
    p = env.run("batch", "rm", "--label", "team=x")
    assert p.returncode == 0, p.stderr
    assert sorted(p.stdout.split()) == ["e1", "e2", "e3"]
    env.assert_nothing_left()


def test_detach_in_shared_shims_then_rm_by_label(env: Env) -> None:
    p = env.run("batch", "run", "--count", "6", "--detach", "--group-size", "3", "--label", "farm=1",
                "--name", "det", IMAGE, "sleep", "600")
    assert p.returncode == 0, p.stderr
    ids = p.stdout.split()
    assert sorted(ids) == [f"det-{i}" for i in range(6)]
    listed = env.ok("tasks", "ls").splitlines()[1:]
    assert len(listed) == 6 and all("RUNNING" in ln for ln in listed)
    assert len(env.shim_pids()) == 2  # two groups of three
    p = env.run("batch", "rm", "--label", "farm=1")
    assert p.returncode == 0, p.stderr
    env.assert_nothing_left()


def test_sigint_stops_the_batch_and_leaves_nothing(env: Env) -> None:
    proc = subprocess.Popen(env.cmd("batch", "run", "--count", "200", "--parallel", "4", "--rm", "--format",
                                    "json", IMAGE, "sleep", "30"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        deadline = time.monotonic() + 20
        while len(env.runc_states_left()) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(env.runc_states_left()) >= 4, "the batch did not start its containers"
        proc.send_signal(signal.SIGINT)
        out, err = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert len(_lines(out)) < 200
    env.assert_nothing_left()


def test_through_the_daemon(env: Env) -> None:
    from pyctr import Client
    from pyctr.batch import BatchProgress, BatchResult

    with running_daemon(env.roots) as (proc, sock):
        # the CLI finds the daemon's socket in the state directory and streams through it
        p = env.run("batch", "run", "--count", "10", "--rm", "--format", "json", IMAGE, "true")
        assert p.returncode == 0, p.stderr
        assert [r["exit_status"] for r in _lines(p.stdout)] == [0] * 10
        with Client(address=sock) as c:
            got = list(c.batch_run(image=IMAGE, args=["sh", "-c", "exit 2"], count=3, rm=True, progress=True))
            results = [r for r in got if isinstance(r, BatchResult)]
            assert [r.exit_status for r in results] == [2, 2, 2]
            assert isinstance(got[-1], BatchProgress) and got[-1].exited == 3
            # closing the stream early stops the batch in the daemon and removes what it made
            it = c.batch_run(image=IMAGE, args=["sleep", "30"], count=50, parallel=4, rm=True)
            deadline = time.monotonic() + 20
            while len(env.runc_states_left()) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            it.close()
            deadline = time.monotonic() + 20
            while (env.ok("containers", "ls", "-q").split() or env.runc_states_left()) and \
                    time.monotonic() < deadline:
                time.sleep(0.1)
        env.assert_nothing_left(daemon=proc.pid)


def test_a_later_batch_clears_what_a_killed_batch_left(env: Env) -> None:
    proc = subprocess.Popen(env.cmd("batch", "run", "--count", "4", "--name", "dead", IMAGE, "sleep", "30"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env())
    try:
        deadline = time.monotonic() + 20
        while len(env.runc_states_left()) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(env.runc_states_left()) == 4
    finally:
        proc.kill()  # no clean-up at all: mounts, runc state, bundles and records stay
        proc.wait()
    assert env.mounts_under() != []
    p = env.run("batch", "run", "--rm", IMAGE, "true")
    assert p.returncode == 0, p.stderr
    assert env.mounts_under() == [] and env.bundles_left() == []
    deadline = time.monotonic() + 10
    while env.runc_states_left() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert env.runc_states_left() == []
    # the dead batch's records are still there, for batch rm
    assert sorted(env.ok("containers", "ls", "-q").split()) == [f"dead-{i}" for i in range(4)]
    env.ok("batch", "rm", "dead")
    env.assert_nothing_left()


def test_batch_run_served_by_the_zygote(env: Env) -> None:
    """``batch run`` leaves a warm zygote behind (as ``run`` does); the next ``batch run`` is its
    child: results, exit status, usage errors and Ctrl-C go through it, and nothing is left."""
    from pyctr import runzygote

    sock = runzygote.socket_path(str(env.roots.state))
    assert [r["exit_status"] for r in _lines(env.ok("batch", "run", "--count", "2", "--rm", "--format", "json",
                                                   IMAGE, "true"))] == [0, 0]
    deadline = time.monotonic() + 20
    while not os.path.exists(runzygote.pid_path(sock)) and time.monotonic() < deadline:
        time.sleep(0.1)
    zpid = int(Path(runzygote.pid_path(sock)).read_text())
    # try_run returns None when the zygote does not serve the command line: these are served
    code = "import sys; from pyctr import runzygote; sys.exit(runzygote.try_run(sys.argv[1], sys.argv[2:]))"

    def served(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([os.path.realpath(sys.executable), "-c", code, str(env.roots.state),
                               *env.roots.args(), *args], capture_output=True, text=True, env=child_env(), timeout=60)

    p = served("batch", "run", "--count", "3", "--rm", "--format", "json", "--name", "zb", IMAGE, "sh", "-c", "exit 4")
    assert p.returncode == 0, p.stderr
    assert sorted((r["id"], r["exit_status"]) for r in _lines(p.stdout)) == [(f"zb-{i}", 4) for i in range(3)]
    p = served("batch", "run", "--count", "1", "--no-such-flag", IMAGE, "true")
    assert p.returncode == 2 and "no-such-flag" in p.stderr
    p = served("batch", "run", "--count", "2", "--rm", "no/such:image", "true")
    assert p.returncode != 0 and "Traceback" not in p.stderr and p.stderr.strip()
    proc = subprocess.Popen(env.cmd("batch", "run", "--count", "50", "--parallel", "2", "--rm", "--format", "json",
                                    IMAGE, "sleep", "30"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        deadline = time.monotonic() + 20
        while len(env.runc_states_left()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(env.runc_states_left()) >= 2, "the batch did not start its containers"
        proc.send_signal(signal.SIGINT)
        _out, err = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == 130, err
    assert Path(f"/proc/{zpid}").exists()  # the zygote served it and lives on
    env.assert_nothing_left()


def _overlays_under(env: Env) -> list[dict[str, str]]:
    """The overlay mounts under the test's state directory, by option."""
    out = []
    with open("/proc/self/mounts") as f:
        for ln in f:
            _dev, where, fstype, opts = ln.split()[:4]
            if fstype == "overlay" and where.startswith(str(env.roots.state)):
                out.append({"where": where, **dict(o.split("=", 1) for o in opts.split(",") if "=" in o)})
    return out


def _fstype(path: str) -> str:
    best, kind = "", ""
    with open("/proc/self/mounts") as f:
        for ln in f:
            where, fstype = ln.split()[1:3]
            if (path == where or path.startswith(where.rstrip("/") + "/")) and len(where) >= len(best):
                best, kind = where, fstype
    return kind


def test_rm_batch_writable_layers_on_tmpfs(env: Env) -> None:
    """With --rm each container's writable layer is on the batch's tmpfs over one view of the image:
    no snapshot of its own, a fresh root file system each, writes charged to its memory limit, and
    nothing left afterwards (the view included)."""
    image_snapshots = set(env.ok("snapshots", "ls", "-q").split())
    proc = subprocess.Popen(env.cmd("batch", "run", "--count", "3", "--rm", "--format", "json", "--name", "tf",
                                    IMAGE, "sh", "-c", "test ! -e /marker && touch /marker && rm /etc/passwd "
                                    "&& echo x >/root/f && sleep 30"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        deadline = time.monotonic() + 20
        while len(env.runc_states_left()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(env.runc_states_left()) == 3
        overlays = _overlays_under(env)
        assert len(overlays) == 3
        for o in overlays:
            assert _fstype(o["upperdir"]) == "tmpfs" and _fstype(o["workdir"]) == "tmpfs"
        infos = {c["id"]: c for c in json.loads(env.ok("containers", "ls", "-o", "json"))}
        assert sorted(infos) == ["tf-0", "tf-1", "tf-2"] and {c["snapshot_key"] for c in infos.values()} == {""}
        extra = set(env.ok("snapshots", "ls", "-q").split()) - image_snapshots
        assert extra == {"tf-lower-0"}  # one view for the batch, none per container
        for tid in ("tf-0", "tf-1", "tf-2"):  # end them: each wrote to its own fresh root file system
            pid = int(Path(env.runtime_state / ".batch" / "default" / "tf" / tid / "init.pid").read_text())
            os.kill(pid, signal.SIGKILL)
        out, err = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert sorted((r["id"], r["exit_status"]) for r in _lines(out)) == [(f"tf-{i}", 137) for i in range(3)], err
    assert set(env.ok("snapshots", "ls", "-q").split()) == image_snapshots
    env.assert_nothing_left()
    # what a container writes to its root file system is memory, counted against its limit
    spec = json.dumps({"id": "big", "args": ["dd", "if=/dev/zero", "of=/big", "bs=1M", "count=256"],
                       "resources": {"memory": "32m"}}) + "\n"
    p = env.run("batch", "run", "--rm", "--format", "json", "--spec", "-", IMAGE, input=spec)
    assert [r["exit_status"] for r in _lines(p.stdout)] == [137], p.stderr
    env.assert_nothing_left()


def test_rootfs_choice(env: Env) -> None:
    """--rootfs snapshot gives --rm containers active snapshots; tmpfs without --rm is refused."""
    proc = subprocess.Popen(env.cmd("batch", "run", "--count", "2", "--rm", "--rootfs", "snapshot", "--name", "sn",
                                    IMAGE, "sleep", "30"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env())
    try:
        deadline = time.monotonic() + 20
        while len(env.runc_states_left()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {"sn-0", "sn-1"} <= set(env.ok("snapshots", "ls", "-q").split())
        assert all(_fstype(o["upperdir"]) != "tmpfs" for o in _overlays_under(env))
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    env.assert_nothing_left()
    p = env.run("batch", "run", "--count", "1", "--rootfs", "tmpfs", IMAGE, "true")
    assert p.returncode == 2 and "--rm" in p.stderr and "Traceback" not in p.stderr
    p = env.run("batch", "run", "--count", "1", "--rm", "--rootfs", "ram", IMAGE, "true")
    assert p.returncode == 2 and "tmpfs or snapshot" in p.stderr
    env.assert_nothing_left()


def test_batch_rm_clears_a_killed_rm_batch(env: Env) -> None:
    """A --rm batch killed outright leaves mounts, runc state, its tmpfs and its image view: the next
    ``batch rm`` (as the next batch run would) clears them, with the records."""
    proc = subprocess.Popen(env.cmd("batch", "run", "--count", "3", "--rm", "--name", "gone", IMAGE, "sleep", "30"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env())
    try:
        deadline = time.monotonic() + 20
        while len(env.runc_states_left()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(env.runc_states_left()) == 3
    finally:
        proc.kill()
        proc.wait()
    assert "gone-lower-0" in env.ok("snapshots", "ls", "-q").split()
    assert len(env.mounts_under()) == 4  # the batch's tmpfs and three rootfs
    assert sorted(env.ok("batch", "rm", "gone").split()) == ["gone-0", "gone-1", "gone-2"]
    assert "gone-lower-0" not in env.ok("snapshots", "ls", "-q").split()
    env.assert_nothing_left()
