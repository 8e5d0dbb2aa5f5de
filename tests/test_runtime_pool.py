"""Pooled shims (``shim_pool_size``) with real runc: tasks created without a group share bounded shims."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyctr.mount import mount_points
from pyctr.plugins.runtime.runc import cgroups
from pyctr.plugins.runtime.runc.manager import RuncRuntime, RuncTask
from pyctr.plugins.runtime.runc.shim_client import ShimClient, ShimFull
from pyctr.runtime import ProcessIO, TaskStatus
from runtime_helpers import (
    bind_mounts,
    busybox_spec,
    need_runc,
    pid_alive,
    runtime,
    shim_pids,
    wait_gone,
)

pytestmark = pytest.mark.integration
NS = "default"


@pytest.fixture
def rt3(tmp_path: Path) -> Iterator[RuncRuntime]:
    need_runc()
    with runtime(tmp_path / "state", shim_pool_size=3) as r:
        yield r


def sleeper(rt: RuncRuntime, id: str, rootfs: Path, group: str | None = None, mounts: bool = False) -> RuncTask:
    t = rt.create(NS, id, busybox_spec(rootfs, ["sleep", "100"]), bind_mounts(rootfs) if mounts else [],
                  ProcessIO(), group=group)
    t.start()
    return t


def remove(t: RuncTask) -> None:
    t.kill(signal.SIGKILL)
    t.wait(timeout=20)
    t.delete()


def test_pool_fills_then_a_new_one_opens(rt3: RuncRuntime, rootfs: Path) -> None:
    tasks = [sleeper(rt3, f"p{i}", rootfs) for i in range(4)]
    states = [t.state() for t in tasks]
    groups = [s.group for s in states]
    assert groups[0] == groups[1] == groups[2] != groups[3], groups
    assert all(g.startswith("pool-") for g in groups)
    assert (rt3.state / ".pools" / NS).read_text().strip() == groups[3]  # the current pool
    assert len({s.shim_pid for s in states}) == 2 and shim_pids(rt3) == {s.shim_pid for s in states}
    first, second = states[0].shim_pid, states[3].shim_pid
    # a full shim refuses a create that asks for its bound, with a code of its own
    c = ShimClient(rt3.shim_address(NS, groups[0]))
    try:
        with pytest.raises(ShimFull):
            c.call("create", {"ns": NS, "id": "x", "bundle": "/nonexistent", "max_tasks": 3,
                              "runc": {"root": "/nonexistent"}})
    finally:
        c.close()
    # a stopped task no longer counts: the next task still goes to the current pool (no rescan)
    remove(tasks[0])
    t5 = sleeper(rt3, "p5", rootfs)
    assert t5.state().group == groups[3] and t5.state().shim_pid == second
    for t in [*tasks[1:3]]:
        remove(t)
    assert wait_gone(first), "the first pool's shim outlived its last task"
    for t in (tasks[3], t5):
        remove(t)
    assert wait_gone(second), "the second pool's shim outlived its last task"
    assert shim_pids(rt3) == set()
    assert not [p for p in mount_points() if p.startswith(str(rt3.state))]


def test_pool_shim_exiting_then_reused_name(rt3: RuncRuntime, rootfs: Path) -> None:
    """The pool's shim exits with its last task; the next create on the same name starts a new shim."""
    a = sleeper(rt3, "a", rootfs, mounts=True)
    group, shim = a.state().group, a.state().shim_pid
    remove(a)
    b = sleeper(rt3, "b", rootfs, mounts=True)  # may race the old shim's exit: retried on a fresh one
    st = b.state()
    assert st.group == group and st.status == TaskStatus.RUNNING
    assert wait_gone(shim) and st.shim_pid != shim
    remove(b)
    assert wait_gone(st.shim_pid)


def test_pool_size_one_is_one_shim_per_task(tmp_path: Path, rootfs: Path) -> None:
    need_runc()
    with runtime(tmp_path / "state", shim_pool_size=1) as rt:
        tasks = [sleeper(rt, f"s{i}", rootfs) for i in range(3)]
        states = [t.state() for t in tasks]
        assert [s.group for s in states] == ["s0", "s1", "s2"]
        assert len({s.shim_pid for s in states}) == 3
        assert not (rt.state / ".pools").exists()
        for t in tasks:
            remove(t)
        assert all(wait_gone(s.shim_pid) for s in states)


def test_explicit_and_default_group_are_not_pooled(tmp_path: Path, rootfs: Path) -> None:
    need_runc()
    with runtime(tmp_path / "state", shim_pool_size=2) as rt:
        tasks = [sleeper(rt, f"g{i}", rootfs, group="batch") for i in range(3)]
        assert {t.state().group for t in tasks} == {"batch"} and len({t.state().shim_pid for t in tasks}) == 1
        assert not (rt.state / ".pools").exists()
        for t in tasks:
            remove(t)
    with runtime(tmp_path / "state2", shim_pool_size=2, default_group="shared") as rt:
        tasks = [sleeper(rt, f"d{i}", rootfs) for i in range(3)]
        assert {t.state().group for t in tasks} == {"shared"} and len({t.state().shim_pid for t in tasks}) == 1
        for t in tasks:
            remove(t)


def test_concurrent_creates_respect_the_bound(tmp_path: Path, rootfs: Path) -> None:
    need_runc()
    with runtime(tmp_path / "state", shim_pool_size=2) as rt:
        made: list[RuncTask] = []
        errors: list[BaseException] = []

        def make(i: int) -> None:
            try:
                made.append(sleeper(rt, f"c{i}", rootfs))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=make, args=(i,)) for i in range(6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors, errors
        per_shim: dict[int, int] = {}
        for t in made:
            per_shim[t.state().shim_pid] = per_shim.get(t.state().shim_pid, 0) + 1
        assert sum(per_shim.values()) == 6 and max(per_shim.values()) <= 2, per_shim
        for t in made:
            remove(t)
        assert all(wait_gone(p) for p in per_shim)


def test_killed_pool_shim_settles_all_its_tasks_on_load(tmp_path: Path, rootfs: Path) -> None:
    need_runc()
    state = tmp_path / "state"
    with runtime(state, shim_pool_size=3) as rt1:
        tasks = [sleeper(rt1, f"k{i}", rootfs, mounts=True) for i in range(3)]
        shim = tasks[0].state().shim_pid
        assert {t.state().shim_pid for t in tasks} == {shim}
        pids = [t.pid for t in tasks]
        rt1.close()  # the "daemon" goes away; the shim stays
        os.kill(shim, signal.SIGKILL)  # the shim rt1's runtime started (its pid from its own answer)
        assert wait_gone(shim)
        with runtime(state, shim_pool_size=3) as rt2:
            got = sorted((e.event["container_id"], e.event["exit_status"]) for e in rt2.loaded)
            assert got == [("k0", 255), ("k1", 255), ("k2", 255)]
            for i, pid in enumerate(pids):
                assert wait_gone(pid), "a container outlived its dead pool shim"
                st = rt2.get(NS, f"k{i}").state()
                assert st.status == TaskStatus.STOPPED and st.reason == "shim died"
                assert not cgroups.exists(rt2.cgroup_path(NS, f"k{i}"))
                assert str(rt2.bundle(NS, f"k{i}").rootfs) not in mount_points()
            # the pool's name is still current: the next task starts a new shim under it
            t = sleeper(rt2, "after", rootfs)
            assert t.state().group == tasks[0].state().group and t.state().shim_pid != shim
            assert pid_alive(t.state().shim_pid)
            for i in range(3):
                assert rt2.get(NS, f"k{i}").delete().exit_status == 255
            remove(t)


def test_plugin_default_pool_size(tmp_path: Path) -> None:
    need_runc()
    from pyctr.plugins.runtime.runc.plugin import pyctr_plugin_registrations

    (reg,) = pyctr_plugin_registrations()
    assert reg.config["shim_pool_size"] == 32
    rt = RuncRuntime(tmp_path / "state", load=False)
    try:
        assert rt.shim_pool_size == 32
    finally:
        rt.close()
