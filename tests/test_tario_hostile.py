"""Hostile layers: nothing a layer says may create, modify, chmod, chown or set times outside the root.

Each case applies a layer into ``<tmp>/root`` next to a canary tree ``<tmp>/canary`` that every
escape would target by absolute path, by ``..`` or through symlinks; afterwards the canary (contents,
modes, owners, times, xattrs, link counts) and the temporary directory's listing must be unchanged.
Both extractors run every case, with ``openat2`` and with the ``O_PATH`` walk fallback.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _tario_util import E, describe, make_tar
from pyctr._speedups import tario
from pyctr.errdefs import InvalidArgument, PyctrError

# Ownership, device nodes and trusted.* xattrs need root (the project's tests run as root).
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: ownership, devices, xattrs")



@pytest.fixture(params=["openat2", "walk"])
def apply(request: Any, speedups: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    mod = speedups.load("tario")
    monkeypatch.setattr(tario, "_impl", lambda: mod)
    old = mod.use_openat2(request.param == "openat2")
    request.addfinalizer(lambda: mod.use_openat2(old))

    def run(layer: bytes, root: Path, **kw: Any) -> Any:
        return tario.apply_layer(io.BytesIO(layer), root, **kw)

    return run


def _cases(c: str) -> dict[str, list[E]]:
    f = f"{c}/f"
    return {
        "dotdot": [E("../../canary/f", data=b"pwn"), E("../canary/new", data=b"pwn")],
        "dotdot-pax": [E("x", data=b"pwn", pax={"path": "../../../canary/f"})],
        "absolute": [E(f, data=b"pwn"), E(f"{c}/new", data=b"pwn")],
        "symlink-abs-write-through": [E("esc", "sym", link=c), E("esc/f", data=b"pwn"),
                                      E("esc/new", data=b"pwn")],
        "symlink-rel-write-through": [E("esc", "sym", link="../../../../../../../.." + c),
                                      E("esc/f", data=b"pwn", mode=0o777, uid=99)],
        "symlink-dotdot-chain": [E("a/", "dir"), E("a/up", "sym", link="../.."),
                                 E("a/up/canary/f", data=b"pwn")],
        "nested-symlinks": [E("a", "sym", link="b/../../.."), E("b/", "dir"), E("a/canary/f", data=b"pwn")],
        "symlink-to-root": [E("r", "sym", link="/"), E("r/canary/f", data=b"pwn")],
        "symlink-file-overwrite": [E("s", "sym", link=f), E("s", data=b"pwn", mode=0o777)],
        "symlink-file-metadata": [E("s", "sym", link=f, mode=0o777, uid=99, mtime=5,
                                    pax={"SCHILY.xattr.user.x": "1"})],
        "hardlink-dotdot": [E("h", "hard", link="../../canary/f")],
        "hardlink-absolute": [E("h", "hard", link=f)],
        "hardlink-through-symlink": [E("esc", "sym", link=c), E("h", "hard", link="esc/f")],
        "hardlink-to-symlink": [E("s", "sym", link=f), E("h", "hard", link="s"),
                                E("h2", "hard", link="s", mode=0o777)],
        "dir-replaced-by-symlink": [E("d/", "dir"), E("d/x", data=b"x"), E("d", "sym", link=c),
                                    E("d/f", data=b"pwn"), E("d/sub/", "dir", mode=0o777)],
        "dir-over-symlink": [E("esc", "sym", link=c), E("esc/", "dir", mode=0o777, uid=99)],
        "dir-through-symlink": [E("esc", "sym", link=c), E("esc/sub/", "dir", mode=0o777, uid=99, mtime=7)],
        "dir-time-then-symlink": [E("d/", "dir", mtime=3), E("d", "sym", link=c)],
        "device-through-symlink": [E("esc", "sym", link=c), E("esc/null", "chr", dev=(1, 3)),
                                   E("esc/fifo", "fifo")],
        "whiteout-through-symlink": [E("esc", "sym", link=c), E("esc/.wh.f"), E("esc/.wh.sub")],
        "opaque-through-symlink": [E("esc", "sym", link=c), E("esc/.wh..wh..opq")],
        "whiteout-dotdot": [E("../canary/.wh.f"), E("x/../../canary/.wh.sub")],
        "symlink-loop": [E("l1", "sym", link="l2"), E("l2", "sym", link="l1"), E("l1/f", data=b"pwn")],
        "gnu-longlink-hardlink": [E("h" * 120, "hard", link="../" * 40 + "canary/f")],
    }


CASE_NAMES = sorted(_cases("/c"))


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    root, canary = tmp_path / "root", tmp_path / "canary"
    root.mkdir()
    (canary / "sub").mkdir(parents=True)
    (canary / "f").write_bytes(b"keep")
    (canary / "sub" / "g").write_bytes(b"keep")
    os.chmod(canary / "f", 0o600)
    os.utime(canary / "f", (1000, 1000))
    os.utime(canary / "sub", (2000, 2000))
    return root, canary


@pytest.mark.parametrize("whiteouts", ["native", "overlay"])
@pytest.mark.parametrize("case", CASE_NAMES)
def test_layer_cannot_escape(apply: Callable[..., Any], tmp_path: Path, case: str, whiteouts: str) -> None:
    root, canary = _setup(tmp_path)
    entries = _cases(str(canary))[case]
    fmt = tarfile.GNU_FORMAT if case.startswith("gnu") else tarfile.PAX_FORMAT
    before = describe(canary, dir_times=True)
    before_nlink = os.stat(canary / "f").st_nlink
    before_top = describe(canary.parent, times=False)
    before_top = {k: v for k, v in before_top.items() if not k.startswith(("root", "canary/"))}
    try:
        apply(make_tar(entries, fmt=fmt), root, whiteouts=whiteouts)
    except PyctrError as e:  # refusing is fine; escaping is not
        assert isinstance(e, InvalidArgument), e
    assert describe(canary, dir_times=True) == before
    assert os.stat(canary / "f").st_nlink == before_nlink
    top = describe(canary.parent, times=False)
    assert {k: v for k, v in top.items() if not k.startswith(("root", "canary/"))} == before_top


def test_escapes_land_inside_the_root(apply: Callable[..., Any], tmp_path: Path) -> None:
    root, canary = _setup(tmp_path)
    cases = _cases(str(canary))
    apply(make_tar(cases["symlink-abs-write-through"]), root)
    assert (root / str(canary).lstrip("/") / "f").read_bytes() == b"pwn"
    root2 = tmp_path / "root2"
    root2.mkdir()
    apply(make_tar(cases["dotdot"]), root2)
    assert (root2 / "canary/f").read_bytes() == b"pwn"
    root3 = tmp_path / "root3"
    root3.mkdir()
    apply(make_tar(cases["hardlink-to-symlink"]), root3)
    assert os.readlink(root3 / "h") == str(canary / "f")  # a link to the symlink, not its target


@pytest.mark.parametrize("field", ["path", "linkpath", "SCHILY.xattr.user.a\0b"])
def test_nul_bytes_refused(apply: Callable[..., Any], tmp_path: Path, field: str) -> None:
    root, _ = _setup(tmp_path)
    pax = {field: "x"} if field.startswith("SCHILY") else {field: "ok\0/../../canary/f"}
    with pytest.raises(InvalidArgument):
        apply(make_tar([E("s", "sym", link="t", pax=pax) if field == "linkpath" else E("f", pax=pax)]), root)
    assert not (root / "ok").exists()


def test_symlink_loop_is_refused(apply: Callable[..., Any], tmp_path: Path) -> None:
    root, canary = _setup(tmp_path)
    with pytest.raises(InvalidArgument):
        apply(make_tar(_cases(str(canary))["symlink-loop"]), root)
