"""Seccomp profiles compiled once per batch (:mod:`pyctr.seccomp_filter`): the program decides every
system call as the one runc builds, and a batch's containers run under it.

The unit tests evaluate compiled programs with a classic-BPF interpreter; the end-to-end test reads
the filters of real containers (one started by runc with the profile, one by a batch through the
helper) with ``PTRACE_SECCOMP_GET_FILTER`` and compares their decisions over every system call
number of three architectures and a set of argument values.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import child_env
from pyctr import seccomp_filter
from pyctr.oci import RunOptions, generate_spec
from seccomp_helpers import (
    AUDIT_ARCH_AARCH64,
    AUDIT_ARCH_I386,
    AUDIT_ARCH_X86_64,
    X32_BIT,
    decisions,
    process_filter,
    run_bpf,
    seccomp_data,
)
from test_batch import IMAGE, Env, env  # noqa: F401 -- the fixture

ALLOW = 0x7FFF0000
KILL_THREAD = 0x00000000
EPERM = 0x00050000 | errno.EPERM
ENOSYS = 0x00050000 | errno.ENOSYS

NR_X86_64 = {"read": 0, "write": 1, "getpid": 39, "clone": 56, "personality": 135, "mount": 165,
             "process_madvise": 440}
NR_I386 = {"read": 3, "getpid": 20}


def _libseccomp() -> None:
    try:
        seccomp_filter._libseccomp()
    except seccomp_filter.CompileError as e:
        pytest.skip(str(e))
    if os.uname().machine != "x86_64":
        pytest.skip("system call numbers below are x86_64's")


def _profile(**over: Any) -> dict[str, Any]:
    prof: dict[str, Any] = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "syscalls": [
            {"names": ["read", "write", "getpid", "no_such_call"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["process_madvise"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EINVAL},
        ],
    }
    prof.update(over)
    return prof


def _decide(program: bytes, nr: int, arch: int = AUDIT_ARCH_X86_64, args: tuple[int, ...] = (0,) * 6) -> int:
    return run_bpf(program, seccomp_data(nr, arch, args))


def test_decisions_of_a_compiled_profile() -> None:
    _libseccomp()
    prog = seccomp_filter.compile_profile(_profile())
    x = AUDIT_ARCH_X86_64
    assert _decide(prog, NR_X86_64["read"]) == ALLOW
    assert _decide(prog, NR_X86_64["getpid"]) == ALLOW
    assert _decide(prog, NR_X86_64["mount"]) == EPERM  # not listed: the default action
    assert _decide(prog, NR_X86_64["personality"], x, (8, 0, 0, 0, 0, 0)) == ALLOW
    assert _decide(prog, NR_X86_64["personality"], x, (9, 0, 0, 0, 0, 0)) == EPERM
    assert _decide(prog, NR_X86_64["clone"], x, (0x11, 0, 0, 0, 0, 0)) == ALLOW  # no namespace flag
    assert _decide(prog, NR_X86_64["clone"], x, (0x10000000, 0, 0, 0, 0, 0)) == EPERM  # CLONE_NEWUSER
    assert _decide(prog, NR_X86_64["process_madvise"]) == 0x00050000 | errno.EINVAL  # its own errno
    # above the highest call the profile names (process_madvise, 440): ENOSYS, not the default
    assert _decide(prog, 441) == ENOSYS and _decide(prog, 1000) == ENOSYS
    assert _decide(prog, 439) == EPERM
    # the 32-bit ABI: its own numbers, its own highest (i386 process_madvise is 440 too)
    assert _decide(prog, NR_I386["read"], AUDIT_ARCH_I386) == ALLOW
    assert _decide(prog, NR_I386["getpid"], AUDIT_ARCH_I386) == ALLOW
    assert _decide(prog, 1000, AUDIT_ARCH_I386) == ENOSYS
    # x32 is not listed: its calls go to libseccomp's program, which refuses them (bad architecture)
    assert _decide(prog, X32_BIT | NR_X86_64["read"]) not in (ALLOW, ENOSYS)
    # an architecture the profile does not list: killed, as libseccomp does under runc
    assert _decide(prog, 0, AUDIT_ARCH_AARCH64) == KILL_THREAD


def test_x32_listed_gets_its_own_enosys_threshold() -> None:
    _libseccomp()
    prog = seccomp_filter.compile_profile(_profile(architectures=["SCMP_ARCH_X86_64", "SCMP_ARCH_X32"]))
    assert _decide(prog, X32_BIT | NR_X86_64["read"]) == ALLOW
    assert _decide(prog, X32_BIT | NR_X86_64["mount"]) == EPERM
    assert _decide(prog, X32_BIT | 1000) == ENOSYS
    assert _decide(prog, 1000) == ENOSYS
    assert _decide(prog, NR_X86_64["read"]) == ALLOW


def test_no_enosys_stub_where_runc_puts_none() -> None:
    _libseccomp()
    # a permissive default action, or ENOSYS as the default errno: the program is libseccomp's alone
    allow = seccomp_filter.compile_profile(_profile(defaultAction="SCMP_ACT_ALLOW", syscalls=[
        {"names": ["mount"], "action": "SCMP_ACT_ERRNO"}]))
    assert _decide(allow, NR_X86_64["mount"]) == EPERM
    assert _decide(allow, 1000) == ALLOW
    enosys = seccomp_filter.compile_profile(_profile(defaultErrnoRet=errno.ENOSYS))
    assert _decide(enosys, NR_X86_64["mount"]) == ENOSYS
    assert _decide(enosys, NR_X86_64["read"]) == ALLOW


def test_rules_testing_one_argument_twice_are_split_as_runc_splits_them() -> None:
    _libseccomp()
    # two conditions on argument 0: runc adds one rule per condition (either one allows)
    prog = seccomp_filter.compile_profile(_profile(syscalls=[
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}]))
    x = AUDIT_ARCH_X86_64
    assert _decide(prog, NR_X86_64["personality"], x, (0,) * 6) == ALLOW
    assert _decide(prog, NR_X86_64["personality"], x, (8,) * 6) == ALLOW
    assert _decide(prog, NR_X86_64["personality"], x, (9,) * 6) == EPERM


def test_what_is_left_to_runc() -> None:
    spec = generate_spec({"config": {"Cmd": ["true"]}}, None, RunOptions(args=["true"]))
    assert seccomp_filter.loadable(spec)

    def variant(**linux_seccomp: Any) -> dict[str, Any]:
        s = json.loads(json.dumps(spec))
        s["linux"]["seccomp"].update(linux_seccomp)
        return s

    assert not seccomp_filter.loadable(variant(flags=["SECCOMP_FILTER_FLAG_LOG"]))
    assert not seccomp_filter.loadable(variant(listenerPath="/run/agent.sock"))
    assert not seccomp_filter.loadable(variant(architectures=["SCMP_ARCH_S390X"]))
    notify = variant()
    notify["linux"]["seccomp"]["syscalls"].append({"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"})
    assert not seccomp_filter.loadable(notify)
    no_nnp = json.loads(json.dumps(spec))
    no_nnp["process"]["noNewPrivileges"] = False  # only runc may load it before dropping privileges
    assert not seccomp_filter.loadable(no_nnp)
    unconfined = generate_spec({"config": {"Cmd": ["true"]}}, None, RunOptions(args=["true"], seccomp=False))
    assert not seccomp_filter.loadable(unconfined)
    with pytest.raises(seccomp_filter.CompileError, match="SCMP_ACT_NOTIFY"):
        seccomp_filter.compile_profile(notify["linux"]["seccomp"])


# -- end to end: real containers ------------------------------------------------------------------

def _wait_file(path: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = path.read_text()
        except OSError:
            text = ""
        if text.strip():
            return text
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear")


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
@pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc")
def test_batch_containers_run_under_the_filter_runc_would_load(env: Env, tmp_path: Path) -> None:  # noqa: F811
    _libseccomp()
    if seccomp_filter.exec_helper() is None:
        pytest.fail("pyctr-seccomp-exec was not built (setup.py build_ext)")
    out = tmp_path / "out"
    out.mkdir()
    tools = tmp_path / "tools"
    tools.mkdir()
    busybox = shutil.which("busybox")
    assert busybox
    shutil.copy2(busybox, tools / "sleep")  # busybox runs the applet its name says
    # the reference: a container whose profile runc compiles
    env.ok("run", "-d", "--name", "ref", IMAGE, "sleep", "120")
    ref_pid = next(int(ln.split()[1]) for ln in env.ok("tasks", "ls").splitlines()[1:] if ln.split()[0] == "ref")
    entries = [
        {"id": "sc-helper", "args": ["sleep", "120"]},
        {"id": "sc-probe", "args": ["sh", "-c", "ls /proc/$$/fd > /out/fds; cat /proc/$$/cmdline > /out/cmdline;"
                                   " grep -e Seccomp -e NoNewPrivs /proc/self/status > /out/status"],
         "mounts": [f"type=bind,src={out},dst=/out"]},
        # a command under a mount of the entry: the helper cannot know it is there; runc compiles
        {"id": "sc-runc", "args": ["/tools/sleep", "120"], "mounts": [f"type=bind,src={tools},dst=/tools"]},
    ]
    proc = subprocess.Popen(env.cmd("batch", "run", "--name", "sc", "--spec", "-", "--format", "json", IMAGE),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env())
    assert proc.stdin is not None
    proc.stdin.write("".join(json.dumps(e) + "\n" for e in entries))
    proc.stdin.close()
    try:
        bundles = env.runtime_state / ".batch" / "default" / "sc"
        pids = {cid: int(_wait_file(bundles / cid / "init.pid")) for cid in ("sc-helper", "sc-runc")}
        helper_cfg = json.loads((bundles / "sc-helper" / "config.json").read_text())
        runc_cfg = json.loads((bundles / "sc-runc" / "config.json").read_text())
        assert "seccomp" not in helper_cfg["linux"] and helper_cfg["process"]["args"][0] == "/proc/self/fd/4"
        assert "seccomp" in runc_cfg["linux"] and runc_cfg["process"]["args"] == ["/tools/sleep", "120"]
        # the process is the command (the helper exec'ed it), under one filter, no_new_privs
        for pid in pids.values():
            deadline = time.monotonic() + 10
            while Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] not in (b"sleep", b"/tools/sleep"):
                assert time.monotonic() < deadline, "the container's process never became its command"
                time.sleep(0.05)
            st = _status(pid)
            assert st["Seccomp"] == "2" and st["Seccomp_filters"] == "1" and st["NoNewPrivs"] == "1"
        ref = list(decisions(process_filter(ref_pid)))
        assert ref == list(decisions(process_filter(pids["sc-helper"])))
        assert ref == list(decisions(process_filter(pids["sc-runc"])))
        # the record keeps the spec as asked for: the profile and the command
        info = json.loads(env.ok("containers", "info", "sc-helper"))
        spec = info.get("spec") or info.get("Spec")
        assert spec["process"]["args"] == ["sleep", "120"] and spec["linux"]["seccomp"]["syscalls"]
        # what the command sees: its own argv, stdio only, the filter
        assert (out / "cmdline").read_bytes().split(b"\0")[:2] == [b"sh", b"-c"]
        fds = _wait_file(out / "fds").split()  # (busybox sh keeps a copy of stdout at 10 while redirecting)
        assert {"0", "1", "2"} <= set(fds) and not {"3", "4"} & set(fds)  # the helper's two are closed
        status = (out / "status").read_text()
        assert "Seccomp:\t2" in status and "Seccomp_filters:\t1" in status
    finally:
        try:
            proc.send_signal(signal.SIGINT)  # Ctrl-C: the batch kills its containers and cleans up
            proc.stdin = None
            proc.communicate(timeout=60)
        finally:
            env.run("containers", "rm", "-f", "ref")
            env.run("batch", "rm", "--label", "pyctr.batch.id=sc")
    env.assert_nothing_left()
