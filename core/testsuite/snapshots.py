"""The snapshotter conformance suite (containerd's ``core/snapshots/testsuite``), for pytest.

Every check is a plain function ``check_<name>(sn, work)`` taking a fresh snapshotter and a scratch
directory; :data:`CHECKS` lists them.  :func:`snapshotter_suite` turns a *factory* (a function from an
empty root directory to a snapshotter) into a pytest test class running them all, one test each,
with every mount made under the scratch directory taken down afterwards, even on failure::

    # tests/test_my_snapshotter.py in a plugin's repository
    import pytest
    from pyctr.testsuite.snapshots import snapshotter_suite
    from acme_snapshotter import ZfsSnapshotter

    TestZfs = snapshotter_suite(lambda root: ZfsSnapshotter(root), marks=[pytest.mark.integration])

The checks mount what the snapshotter returns (with :func:`pyctr.mount.mount_all`), so they need
root.  ``deep_chain`` sets how many layers :func:`check_deep_chain` stacks (containerd checks 128).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PyctrError
from ..mount import mount_all, unmount, unmount_all_under
from ..snapshots import Info, Kind, Mount, Snapshotter, Usage

Factory = Callable[[Path], Snapshotter]
Check = Callable[[Snapshotter, Path], None]

#: How many layers :func:`check_deep_chain` stacks; change with ``snapshotter_suite(deep_chain=...)``.
DEEP_CHAIN = 128


# -- helpers ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def mounted(mounts: Sequence[Mount], work: Path, name: str = "mnt") -> Iterator[Path]:
    """Mount ``mounts`` at a fresh directory under ``work``; unmount on the way out."""
    target = work / name
    n = 0
    while target.exists():
        n += 1
        target = work / f"{name}{n}"
    target.mkdir(parents=True)
    mount_all(mounts, str(target))
    try:
        yield target
    finally:
        unmount(str(target), lazy=True, all_layers=True)


def _raises(exc: type[BaseException], fn: Callable[[], Any], what: str) -> BaseException:
    try:
        fn()
    except exc as e:
        return e
    except BaseException as e:  # the wrong error
        raise AssertionError(f"{what}: expected {exc.__name__}, got {type(e).__name__}: {e}") from e
    raise AssertionError(f"{what}: expected {exc.__name__}, nothing was raised")


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def _read_tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> text; directories as ``"<dir>"``)."""
    out: dict[str, str] = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "<dir>"
        for f in files:
            p = os.path.join(dirpath, f)
            rel = os.path.relpath(p, root)
            out[rel] = "<link>" + os.readlink(p) if os.path.islink(p) else Path(p).read_text()
    return out


def _commit_layer(sn: Snapshotter, work: Path, name: str, parent: str, files: dict[str, str],
                  remove: Sequence[str] = ()) -> None:
    """Prepare on ``parent``, write ``files``, delete ``remove``, commit as ``name``."""
    key = f"{name}-active"
    with mounted(sn.prepare(key, parent), work) as root:
        _write(root, files)
        for rel in remove:
            p = root / rel
            if p.is_dir() and not p.is_symlink():
                import shutil

                shutil.rmtree(p)
            else:
                p.unlink()
    sn.commit(name, key)


# -- checks ----------------------------------------------------------------------------------------


def check_basic(sn: Snapshotter, work: Path) -> None:
    """Prepare, write, commit; a child sees the parent's files and its own changes."""
    _commit_layer(sn, work, "base", "", {"a": "1", "dir/b": "2"})
    _commit_layer(sn, work, "next", "base", {"c": "3", "a": "changed"}, remove=["dir/b"])
    with mounted(sn.view("v", "next"), work) as root:
        tree = _read_tree(root)
    assert tree == {"a": "changed", "c": "3", "dir": "<dir>"}, tree
    with mounted(sn.view("v0", "base"), work) as root:
        assert _read_tree(root) == {"a": "1", "dir": "<dir>", "dir/b": "2"}


def check_stat_active(sn: Snapshotter, work: Path) -> None:
    sn.prepare("active", "", {"containerd.io/snapshot/x": "y"})
    info = sn.stat("active")
    assert info.kind == Kind.ACTIVE and info.name == "active" and info.parent == "", info
    assert info.labels == {"containerd.io/snapshot/x": "y"}, info.labels
    assert info.created_at > 0 and info.updated_at >= info.created_at


def check_stat_committed(sn: Snapshotter, work: Path) -> None:
    sn.prepare("a", "")
    sn.commit("A", "a", {"containerd.io/snapshot/c": "1"})
    info = sn.stat("A")
    assert info.kind == Kind.COMMITTED and info.name == "A", info
    assert info.labels == {"containerd.io/snapshot/c": "1"}, info.labels
    _raises(NotFound, lambda: sn.stat("a"), "stat of a committed snapshot's old key")
    sn.prepare("b", "A")
    assert sn.stat("b").parent == "A"


def check_stat_in_walk(sn: Snapshotter, work: Path) -> None:
    sn.prepare("a", "")
    sn.commit("A", "a")
    sn.prepare("b", "A")
    sn.view("v", "A")
    walked = {i.name: i for i in sn.walk()}
    assert set(walked) == {"A", "b", "v"}, set(walked)
    for name, info in walked.items():
        assert sn.stat(name) == info, (sn.stat(name), info)


def check_walk_filters(sn: Snapshotter, work: Path) -> None:
    sn.prepare("a", "", {"containerd.io/snapshot/l": "1"})
    sn.commit("A", "a", {"containerd.io/snapshot/l": "1"})
    sn.prepare("b", "A")
    sn.view("v", "A", {"containerd.io/snapshot/l": "2"})

    def names(*filters: str) -> set[str]:
        return {i.name for i in sn.walk(list(filters))}

    assert names("kind==committed") == {"A"}
    assert names("kind==active") == {"b"}
    assert names("kind==view") == {"v"}
    assert names("parent==A") == {"b", "v"}
    assert names("name==b") == {"b"}
    assert names('labels."containerd.io/snapshot/l"==1') == {"A"}
    assert names('labels."containerd.io/snapshot/l"') == {"A", "v"}
    assert names("kind==active", "kind==view") == {"b", "v"}  # ORed
    assert names("parent==A,kind==view") == {"v"}  # ANDed
    assert names() == {"A", "b", "v"}


def check_transitivity(sn: Snapshotter, work: Path) -> None:
    """A file written in layer 1 and changed in layer 2 reads as layer 2 wrote it."""
    _commit_layer(sn, work, "l1", "", {"f": "one"})
    _commit_layer(sn, work, "l2", "l1", {"f": "two"})
    with mounted(sn.prepare("top", "l2"), work) as root:
        assert (root / "f").read_text() == "two"


def check_file_from_lower_layer(sn: Snapshotter, work: Path) -> None:
    _commit_layer(sn, work, "l1", "", {"deep/dir/file": "lower"})
    _commit_layer(sn, work, "l2", "l1", {"other": "x"})
    with mounted(sn.prepare("top", "l2"), work) as root:
        assert (root / "deep/dir/file").read_text() == "lower"
        (root / "deep/dir/file").write_text("upper")  # copy-up must work
    with mounted(sn.view("v", "l2"), work) as root:
        assert (root / "deep/dir/file").read_text() == "lower"  # the committed layer is untouched


def check_remove_directory_in_lower_layer(sn: Snapshotter, work: Path) -> None:
    _commit_layer(sn, work, "l1", "", {"d/x": "1", "d/sub/y": "2", "keep": "k"})
    _commit_layer(sn, work, "l2", "l1", {}, remove=["d"])
    _commit_layer(sn, work, "l3", "l2", {"d/new": "n"})
    with mounted(sn.view("v", "l3"), work) as root:
        assert _read_tree(root) == {"keep": "k", "d": "<dir>", "d/new": "n"}, _read_tree(root)


def check_view_read_only(sn: Snapshotter, work: Path) -> None:
    _commit_layer(sn, work, "l1", "", {"f": "1"})
    _commit_layer(sn, work, "l2", "l1", {"g": "2"})
    for key, parent in (("v1", "l1"), ("v2", "l2")):
        with mounted(sn.view(key, parent), work) as root:
            try:
                (root / "new").write_text("x")
            except OSError as e:
                assert e.errno == errno.EROFS, e
            else:
                raise AssertionError(f"a view of {parent} is writable")
    with mounted(sn.view("v0", ""), work) as root:
        try:
            (root / "new").write_text("x")
        except OSError as e:
            assert e.errno == errno.EROFS, e
        else:
            raise AssertionError("an empty view is writable")


def check_root_permission(sn: Snapshotter, work: Path) -> None:
    """The root of a new empty snapshot is a directory with mode 0755."""
    with mounted(sn.prepare("a", ""), work) as root:
        mode = stat.S_IMODE(os.stat(root).st_mode)
        assert mode == 0o755, oct(mode)


def check_chown_and_modes(sn: Snapshotter, work: Path) -> None:
    """Owners, modes (setuid too), symlinks, hard links, devices, FIFOs, xattrs and times survive
    into children and views."""
    key = "l1-active"
    with mounted(sn.prepare(key, ""), work) as root:
        (root / "owned").write_text("o")
        os.chown(root / "owned", 1234, 5678)
        (root / "suid").write_text("s")
        os.chmod(root / "suid", 0o4755)
        (root / "dir").mkdir()
        os.chmod(root / "dir", 0o1770)
        os.chown(root / "dir", 42, 43)
        os.symlink("owned", root / "link")
        os.link(root / "owned", root / "hard")
        os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.mkfifo(root / "fifo", 0o600)
        os.setxattr(root / "owned", "user.test", b"value")
        os.utime(root / "owned", ns=(1_000_000_000, 2_000_000_000))
    sn.commit("l1", key)
    with mounted(sn.prepare("l2-active", "l1"), work) as root:
        (root / "other").write_text("x")
    sn.commit("l2", "l2-active")
    for parent in ("l1", "l2"):
        with mounted(sn.view(f"v-{parent}", parent), work) as root:
            st = os.lstat(root / "owned")
            assert (st.st_uid, st.st_gid) == (1234, 5678), (st.st_uid, st.st_gid)
            assert st.st_mtime_ns == 2_000_000_000, st.st_mtime_ns
            assert os.getxattr(root / "owned", "user.test") == b"value"
            assert stat.S_IMODE(os.lstat(root / "suid").st_mode) == 0o4755
            dst = os.lstat(root / "dir")
            assert stat.S_IMODE(dst.st_mode) == 0o1770 and (dst.st_uid, dst.st_gid) == (42, 43)
            assert os.readlink(root / "link") == "owned"
            assert os.lstat(root / "hard").st_ino == st.st_ino, "hard link lost"
            nst = os.lstat(root / "null")
            assert stat.S_ISCHR(nst.st_mode) and nst.st_rdev == os.makedev(1, 3)
            assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)


def check_directory_permission_on_commit(sn: Snapshotter, work: Path) -> None:
    with mounted(sn.prepare("a", ""), work) as root:
        (root / "d").mkdir()
        os.chmod(root / "d", 0o700)
        os.chown(root / "d", 10, 20)
    sn.commit("A", "a")
    with mounted(sn.prepare("b", "A"), work) as root:
        (root / "d" / "f").write_text("x")  # copy-up of d
        st = os.stat(root / "d")
        assert stat.S_IMODE(st.st_mode) == 0o700 and (st.st_uid, st.st_gid) == (10, 20)
    sn.commit("B", "b")
    with mounted(sn.view("v", "B"), work) as root:
        st = os.stat(root / "d")
        assert stat.S_IMODE(st.st_mode) == 0o700 and (st.st_uid, st.st_gid) == (10, 20)


def check_errors(sn: Snapshotter, work: Path) -> None:
    """The error kinds containerd's snapshotters return."""
    sn.prepare("a", "")
    _raises(AlreadyExists, lambda: sn.prepare("a", ""), "prepare of an existing key")
    _raises(AlreadyExists, lambda: sn.view("a", ""), "view of an existing key")
    _raises(NotFound, lambda: sn.prepare("b", "missing"), "prepare on a missing parent")
    _raises(InvalidArgument, lambda: sn.prepare("b", "a"), "prepare on an active parent")
    sn.commit("A", "a")
    _raises(NotFound, lambda: sn.commit("A2", "a"), "commit of a committed key")
    sn.prepare("b", "A")
    _raises(AlreadyExists, lambda: sn.commit("A", "b"), "commit to an existing name")
    sn.view("v", "A")
    _raises(FailedPrecondition, lambda: sn.commit("V", "v"), "commit of a view")
    _raises(AlreadyExists, lambda: sn.prepare("A", ""), "keys and names share one namespace")
    _raises(FailedPrecondition, lambda: sn.mounts("A"), "mounts of a committed snapshot")
    _raises(NotFound, lambda: sn.mounts("missing"), "mounts of a missing snapshot")
    _raises(NotFound, lambda: sn.stat("missing"), "stat of a missing snapshot")
    _raises(NotFound, lambda: sn.usage("missing"), "usage of a missing snapshot")
    _raises(NotFound, lambda: sn.remove("missing"), "remove of a missing snapshot")
    _raises(FailedPrecondition, lambda: sn.remove("A"), "remove of a snapshot with children")
    assert sn.stat("A").kind == Kind.COMMITTED  # still there


def check_remove(sn: Snapshotter, work: Path) -> None:
    sn.prepare("a", "")
    sn.commit("A", "a")
    sn.prepare("b", "A")
    sn.view("v", "A")
    sn.remove("v")
    _raises(FailedPrecondition, lambda: sn.remove("A"), "remove with an active child")
    sn.remove("b")
    sn.remove("A")
    assert list(sn.walk()) == []
    sn.prepare("a", "")  # the key is free again
    assert sn.stat("a").kind == Kind.ACTIVE


def check_update(sn: Snapshotter, work: Path) -> None:
    sn.prepare("a", "", {"containerd.io/snapshot/one": "1", "containerd.io/snapshot/two": "2"})
    created = sn.stat("a")
    new = sn.update(Info(Kind.ACTIVE, "a", labels={"containerd.io/snapshot/three": "3"}))
    assert new.labels == {"containerd.io/snapshot/three": "3"}, new.labels  # all labels replaced
    assert new.updated_at >= created.updated_at and new.created_at == created.created_at
    new = sn.update(Info(Kind.ACTIVE, "a", labels={"containerd.io/snapshot/four": "4"}),
                    ["labels.containerd.io/snapshot/four"])
    assert new.labels == {"containerd.io/snapshot/three": "3", "containerd.io/snapshot/four": "4"}
    new = sn.update(Info(Kind.ACTIVE, "a", labels={}), ["labels.containerd.io/snapshot/three"])
    assert new.labels == {"containerd.io/snapshot/four": "4"}, new.labels
    assert sn.stat("a").labels == new.labels
    _raises(InvalidArgument, lambda: sn.update(Info(Kind.ACTIVE, "a"), ["parent"]), "update of the parent")
    _raises(NotFound, lambda: sn.update(Info(Kind.ACTIVE, "missing", labels={"x": "y"})), "update of missing")


def check_usage(sn: Snapshotter, work: Path) -> None:
    with mounted(sn.prepare("a", ""), work) as root:
        empty = sn.usage("a")
        (root / "big").write_bytes(os.urandom(256 * 1024))
        (root / "d").mkdir()
        (root / "d" / "small").write_text("x")
        grown = sn.usage("a")
    assert isinstance(grown, Usage)
    assert grown.size >= empty.size + 256 * 1024, (empty, grown)
    assert grown.inodes >= empty.inodes + 3, (empty, grown)
    sn.commit("A", "a")
    committed = sn.usage("A")
    assert committed.size >= 256 * 1024 and committed.inodes >= 3, committed
    with mounted(sn.prepare("b", "A"), work) as root:
        (root / "more").write_bytes(os.urandom(64 * 1024))
    child = sn.usage("b")
    assert child.size >= 64 * 1024, child


def check_prepare_view_mounts(sn: Snapshotter, work: Path) -> None:
    """prepare and view return what mounts() returns later."""
    sn.prepare("a", "")
    sn.commit("A", "a")
    m1 = sn.prepare("b", "A")
    m2 = sn.view("v", "A")
    assert [m.to_dict() for m in m1] == [m.to_dict() for m in sn.mounts("b")]
    assert [m.to_dict() for m in m2] == [m.to_dict() for m in sn.mounts("v")]
    assert all(m.readonly for m in m2), m2
    assert not any(m.readonly for m in m1), m1


def check_close_twice(sn: Snapshotter, work: Path) -> None:
    sn.close()
    sn.close()


def check_deep_chain(sn: Snapshotter, work: Path, depth: int | None = None) -> None:
    """``depth`` committed layers, each adding one file; the top mounts and shows them all."""
    n = depth or DEEP_CHAIN
    parent = ""
    for i in range(n):
        key = f"layer-{i}-active"
        with mounted(sn.prepare(key, parent), work) as root:
            (root / f"f{i}").write_text(str(i))
        sn.commit(f"layer-{i}", key)
        parent = f"layer-{i}"
    with mounted(sn.prepare("top", parent), work) as root:
        names = {p.name for p in root.iterdir()}
        assert names == {f"f{i}" for i in range(n)}, sorted(set(range(n)) - {int(x[1:]) for x in names})
        (root / "f0").write_text("changed")
    with mounted(sn.view("top-view", parent), work) as root:
        assert len(list(root.iterdir())) == n


def check_concurrent_prepare(sn: Snapshotter, work: Path) -> None:
    """Threads preparing at once: distinct keys all succeed; one key succeeds exactly once."""
    sn.prepare("base-a", "")
    sn.commit("base", "base-a")
    errors: list[BaseException] = []
    wins: list[str] = []
    lock = threading.Lock()

    def distinct(i: int) -> None:
        try:
            sn.prepare(f"k{i}", "base")
        except BaseException as e:
            with lock:
                errors.append(e)

    def same(i: int) -> None:
        try:
            sn.prepare("same", "base")
            with lock:
                wins.append(str(i))
        except AlreadyExists:
            pass
        except BaseException as e:
            with lock:
                errors.append(e)

    threads = [threading.Thread(target=distinct, args=(i,)) for i in range(8)]
    threads += [threading.Thread(target=same, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(wins) == 1, wins
    names = {i.name for i in sn.walk()}
    assert names == {"base", "same", *(f"k{i}" for i in range(8))}, names


CHECKS: dict[str, Check] = {
    name[len("check_"):]: fn
    for name, fn in sorted(globals().items())
    if name.startswith("check_") and callable(fn)
}


def run_check(factory: Factory, name: str, work: Path, *, deep_chain: int | None = None) -> None:
    """Run one check against a fresh snapshotter rooted in ``work/root``; everything mounted under
    ``work`` is unmounted afterwards, and the snapshotter closed, whatever happens."""
    root = work / "root"
    root.mkdir(parents=True, exist_ok=True)
    scratch = work / "scratch"
    scratch.mkdir(exist_ok=True)
    sn = factory(root)
    try:
        if name == "deep_chain":
            check_deep_chain(sn, scratch, deep_chain)
        else:
            CHECKS[name](sn, scratch)
    finally:
        try:
            unmount_all_under(str(work))
        finally:
            with contextlib.suppress(PyctrError):
                sn.close()


def snapshotter_suite(factory: Factory, *, name: str = "", marks: Sequence[Any] = (),
                      skip: Sequence[str] = (), deep_chain: int | None = None) -> type:
    """A pytest test class with one ``test_<check>`` per check in :data:`CHECKS`.

    :param factory: makes a snapshotter in the empty directory it is given.
    :param marks: pytest marks for every test (``pytest.mark.integration``).
    :param skip: names of checks this snapshotter cannot pass (reported as skipped, with the name).
    :param deep_chain: layers for ``deep_chain`` (default :data:`DEEP_CHAIN`).
    """
    import pytest

    def make(check: str) -> Callable[..., None]:
        def test(self: Any, tmp_path: Path) -> None:
            if check in skip:
                pytest.skip(f"{check} is not supported by this snapshotter")
            run_check(factory, check, tmp_path, deep_chain=deep_chain)

        test.__name__ = f"test_{check}"
        test.__doc__ = CHECKS[check].__doc__
        for m in marks:
            test = m(test)
        return test

    attrs: dict[str, Any] = {f"test_{c}": make(c) for c in CHECKS}
    attrs["__doc__"] = f"The snapshotter conformance suite{' for ' + name if name else ''}."
    return type(f"SnapshotterSuite{name.title().replace('-', '')}", (), attrs)


__all__ = [
    "CHECKS",
    "DEEP_CHAIN",
    "Factory",
    "mounted",
    "run_check",
    "snapshotter_suite",
]
