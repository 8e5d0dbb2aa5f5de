"""The ``pyctr run`` fast path: its argv parser, its entry-point scan and signal choice (unit tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from importlib.metadata import entry_points as stdlib_entry_points
from pathlib import Path

import pytest
from pyctr.errdefs import InvalidArgument
from pyctr.runner import _Unsupported, build_run_options, entry_points, parse_run_argv
from pyctr.signals import effective_signal, parse_signal


def test_parse_run_argv_globals_flags_image_and_command() -> None:
    g, flags, image, args = parse_run_argv(
        ["--root", "/r", "--state=/s", "-n", "ns1", "--debug", "run", "--rm", "-it", "-e", "A=1", "-eB=2",
         "--memory", "64m", "--name=web", "-v", "/a:/b", "--pids-limit", "5", "img:1", "sh", "-c", "x -y"])
    assert g == {"root": "/r", "state": "/s", "namespace": "ns1", "debug": True}
    assert flags == {"rm": True, "interactive": True, "tty": True, "env": ["A=1", "B=2"], "memory": "64m",
                     "name": "web", "volume": ["/a:/b"], "pids_limit": 5}
    assert (image, args) == ("img:1", ["sh", "-c", "x -y"])
    # options after the image belong to the command; "--" ends the options
    assert parse_run_argv(["run", "img", "--rm"])[3] == ["--rm"]
    assert parse_run_argv(["run", "--", "-img-"])[2] == "-img-"


@pytest.mark.parametrize("argv", [
    ["images", "ls"], ["run"], ["run", "--rm"], ["run", "--help", "img"], ["-h", "run", "img"],
    ["run", "--bogus", "img"], ["run", "-x", "img"], ["run", "--pids-limit", "many", "img"],
    ["run", "--rm=yes", "img"], ["--root"],
])
def test_parse_run_argv_leaves_the_rest_to_typer(argv: list[str]) -> None:
    with pytest.raises(_Unsupported):
        parse_run_argv(argv)


def test_build_run_options() -> None:
    ro, labels = build_run_options({"env": ["X=1"], "label": ["a=b"], "net_host": True, "entrypoint": "",
                                    "security_opt": ["seccomp=unconfined"], "memory": "1g"}, ["ls"])
    assert (ro.net, ro.entrypoint, ro.seccomp, ro.memory, ro.args) == ("host", [], False, 1 << 30, ["ls"])
    assert labels == {"a": "b"}
    with pytest.raises(InvalidArgument):
        build_run_options({"security_opt": ["apparmor=x"]}, [])


def test_entry_points_match_importlib_metadata() -> None:
    mine = entry_points("pyctr.plugins")
    theirs = [(e.name, e.value) for e in stdlib_entry_points(group="pyctr.plugins")]
    assert sorted(mine) == sorted(theirs) and mine


def test_entry_points_first_distribution_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for base, value in (("a", "first:mod"), ("b", "second:mod")):
        d = tmp_path / base / "demo_dist-1.0.dist-info"
        d.mkdir(parents=True)
        (d / "entry_points.txt").write_text(f"[other]\nx = y\n\n[grp]\nplug = {value}\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "none")])
    assert entry_points("grp") == [("plug", "first:mod")]
    assert entry_points("missing") == []


def test_parse_signal() -> None:
    assert parse_signal("KILL") == parse_signal("SIGKILL") == parse_signal("kill") == parse_signal("9") == 9
    assert parse_signal("TERM") == 15
    for bad in ("NOPE", "0", "999"):
        with pytest.raises(InvalidArgument):
            parse_signal(bad)


def test_effective_signal_only_changes_what_an_init_would_drop() -> None:
    # a process that is not a namespace's init gets the signal as it is
    assert effective_signal(os.getpid(), signal.SIGTERM) == signal.SIGTERM
    assert effective_signal(0, signal.SIGTERM) == signal.SIGTERM
    assert effective_signal(os.getpid(), signal.SIGWINCH) == signal.SIGWINCH
    # the init of a new pid namespace that does not handle SIGTERM: SIGKILL instead
    if os.geteuid() != 0:
        pytest.skip("needs root for a pid namespace")
    p = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "sleep", "30"])
    try:
        child = 0
        for _ in range(100):
            kids = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
            if kids:
                child = int(kids[0])
                break
            time.sleep(0.05)
        assert child
        assert effective_signal(child, signal.SIGTERM) == signal.SIGKILL
        assert effective_signal(child, signal.SIGUSR1) == signal.SIGKILL
        assert effective_signal(child, signal.SIGCONT) == signal.SIGCONT
    finally:
        p.kill()
        p.wait()
