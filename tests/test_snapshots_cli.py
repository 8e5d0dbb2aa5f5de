"""``pyctr snapshots``: the real console script against a private root, with real mounts."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyctr.mount import is_mountpoint, unmount_all_under

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(pyctr_cli, tmp_path: Path) -> Iterator:  # type: ignore[no-untyped-def]
    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return pyctr_cli(*args, check=ok)

    try:
        yield run
    finally:
        unmount_all_under(str(tmp_path))


def _rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines()[1:]]


@pytest.mark.parametrize("sn", ["overlayfs", "native"])
def test_prepare_commit_view_mount(cli, tmp_path: Path, sn: str) -> None:  # type: ignore[no-untyped-def]
    g = ["snapshots", "--snapshotter", sn]
    target = tmp_path / "mnt"
    target.mkdir()
    cmd = cli(*g, "prepare", "--target", str(target), "base-a").stdout.strip()
    assert cmd.startswith("mount ") and cmd.endswith(str(target)), cmd
    subprocess.run(["sh", "-c", cmd], check=True)
    (target / "hello").write_text("world")
    subprocess.run(["umount", str(target)], check=True)
    cli(*g, "commit", "base", "base-a")
    cli(*g, "prepare", "child-a", "base")
    cli(*g, "commit", "child", "child-a", "--label", "containerd.io/snapshot/x=1")
    cli(*g, "view", "v", "child")
    out = cli(*g, "ls").stdout
    assert out.splitlines()[0].split() == ["KEY", "PARENT", "KIND"]
    assert _rows(out) == [["base", "Committed"], ["child", "base", "Committed"], ["v", "child", "View"]]
    cmd = cli(*g, "mounts", str(target), "v").stdout.strip()
    assert cmd.startswith("mount -o ro,rbind " if sn == "native" else "mount -t overlay -o "), cmd
    subprocess.run(["sh", "-c", cmd], check=True)
    try:
        assert (target / "hello").read_text() == "world"
        with pytest.raises(OSError):
            (target / "new").write_text("x")  # a view is read-only
    finally:
        subprocess.run(["umount", str(target)], check=True)
    assert not is_mountpoint(str(target))


def test_inspecting_commands(cli) -> None:  # type: ignore[no-untyped-def]
    cli("snapshots", "prepare", "base-a")
    cli("snapshots", "commit", "base", "base-a")
    cli("snapshots", "prepare", "child-a", "base")
    cli("snapshots", "commit", "child", "child-a", "--label", "containerd.io/snapshot/x=1")
    cli("snapshots", "view", "v", "child")
    assert cli("snapshots", "ls", "-q", "kind==committed").stdout.split() == ["base", "child"]
    info = json.loads(cli("snapshots", "info", "child").stdout)
    assert info["kind"] == "Committed" and info["parent"] == "base"
    root = info["labels"].pop("containerd.io/gc.root")  # made by hand: kept until removed by hand
    assert root.endswith("Z") and info["labels"] == {"containerd.io/snapshot/x": "1"}
    usage = _rows(cli("snapshots", "usage", "-b", "base").stdout)
    assert usage[0][0] == "base" and int(usage[0][1]) >= 4096 and int(usage[0][2]) >= 1, usage
    assert cli("snapshots", "tree").stdout.splitlines() == ["base", "  \\_ child", "    \\_ v"]
    assert cli("snapshots", "label", "child", "a=b").stdout.strip() == (
        f"a=b,containerd.io/gc.root={root},containerd.io/snapshot/x=1")
    mounts = json.loads(cli("snapshots", "mounts", "-o", "json", "/x", "v").stdout)
    assert [m["type"] for m in mounts] == ["overlay"]
    assert mounts[0]["options"][-1].startswith("lowerdir=")


def test_snapshotter_choice_and_namespaces(cli) -> None:  # type: ignore[no-untyped-def]
    cli("snapshots", "prepare", "a")  # the default: overlayfs
    cli("snapshots", "--snapshotter", "native", "prepare", "b")
    cli("snapshots", "prepare", "--snapshotter", "native", "c")  # also on the subcommand
    assert cli("snapshots", "--snapshotter", "overlayfs", "ls", "-q").stdout.split() == ["a"]
    assert cli("snapshots", "ls", "--snapshotter", "native", "-q").stdout.split() == ["b", "c"]
    cli("namespaces", "create", "other", "containerd.io/defaults/snapshotter=native")
    cli("-n", "other", "snapshots", "prepare", "a")  # same key, another namespace, its default snapshotter
    assert cli("-n", "other", "snapshots", "--snapshotter", "native", "ls", "-q").stdout.split() == ["a"]
    assert cli("snapshots", "ls", "-q").stdout.split() == ["a"]
    r = cli("snapshots", "--snapshotter", "zfs", "ls", ok=False)
    assert r.returncode == 3 and "zfs" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_errors_are_one_line_with_exit_codes(cli, tmp_root) -> None:  # type: ignore[no-untyped-def]
    cli("snapshots", "prepare", "a")
    cli("snapshots", "commit", "A", "a")
    cli("snapshots", "prepare", "b", "A")
    cases = [
        (("snapshots", "rm", "A"), 5, "child"),
        (("snapshots", "prepare", "b", "A"), 4, "already exists"),
        (("snapshots", "prepare", "c", "missing"), 3, "does not exist"),
        (("snapshots", "prepare", "c", "b"), 2, "not a committed snapshot"),
        (("snapshots", "mounts", "/x", "A"), 5, "committed"),
        (("snapshots", "commit", "X", "A"), 5, "not active"),
    ]
    for args, code, text in cases:
        r = cli(*args, ok=False)
        assert r.returncode == code, (args, r.returncode, r.stderr)
        assert text in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    r = cli("snapshots", "rm", "b", "A", "A", ok=False)  # in order: b, then A, then A is gone
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and "'A' does not exist" in r.stderr, r.stderr
    assert cli("snapshots", "ls", "-q").stdout == ""
    d = Path(tmp_root.root) / "pyctr.snapshot.overlayfs" / "snapshots"
    assert os.listdir(d) == []  # removed at once, directories included
