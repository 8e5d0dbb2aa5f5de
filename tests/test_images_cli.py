"""``pyctr images`` through the real console script: ls/-q, import, tag, rm, inspect, export, check,
prune, unpack; errors are one line on stderr with a distinct exit status."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest
from conftest import PyctrCli
from images_helpers import Layout


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    lay = Layout(tmp_path / "lay")
    lay.add(lay.image([{"etc/": None, "etc/hello": b"hello\n"}, {"bin/": None, "bin/x": b"x"}]), "1")
    return lay.tar(tmp_path / "a.tar")


def one_line_error(p: object, code: int | None = None) -> None:
    rc = p.returncode
    err = p.stderr
    assert rc != 0
    if code is not None:
        assert rc == code, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("pyctr: ")


def test_import_ls_tag_inspect_rm(pyctr_cli: PyctrCli, archive: Path) -> None:
    p = pyctr_cli("images", "import", "--no-unpack", "--base-name", "acc/app", str(archive), check=True)
    assert p.stdout.split()[0] == "acc/app:1"
    q = pyctr_cli("images", "ls", "-q", check=True)
    assert q.stdout.splitlines() == ["acc/app:1"]
    pyctr_cli("images", "tag", "acc/app:1", "example.com/app:2", check=True)
    ls = pyctr_cli("images", "ls", check=True).stdout.splitlines()
    assert ls[0].split() == ["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"]
    rows = [r.split() for r in ls[1:]]
    assert [r[0] for r in rows] == ["acc/app:1", "example.com/app:2"]
    assert rows[0][1] == "application/vnd.oci.image.manifest.v1+json"
    assert rows[0][2] == rows[1][2] and rows[0][2].startswith("sha256:")
    assert "linux/amd64" in rows[0]
    # tag onto an existing name needs --force
    one_line_error(pyctr_cli("images", "tag", "acc/app:1", "example.com/app:2"), 4)
    pyctr_cli("images", "tag", "--force", "acc/app:1", "example.com/app:2", check=True)
    ins = json.loads(pyctr_cli("images", "inspect", "example.com/app:2", check=True).stdout)
    assert ins["name"] == "example.com/app:2"
    assert len(ins["layers"]) == 2 and len(ins["chain_ids"]) == 2
    assert ins["check"]["status"] == "complete"
    js = json.loads(pyctr_cli("images", "ls", "-o", "json", check=True).stdout)
    assert js[0]["platforms"] == ["linux/amd64"] and js[0]["size"] > 0
    assert pyctr_cli("images", "label", "acc/app:1", "team=a", "x=1", check=True).stdout.strip() == "team=a,x=1"
    assert pyctr_cli("images", "label", "acc/app:1", "x=", check=True).stdout.strip() == "team=a"
    assert pyctr_cli("images", "ls", "-q", "labels.team==a", check=True).stdout.split() == ["acc/app:1"]
    chk = pyctr_cli("images", "check", check=True).stdout
    assert "complete (4/4)" in chk
    assert pyctr_cli("images", "ls", "-q", "name~=example").stdout.split() == ["example.com/app:2"]
    pyctr_cli("images", "rm", "acc/app:1", check=True)
    assert pyctr_cli("images", "ls", "-q", check=True).stdout.split() == ["example.com/app:2"]
    one_line_error(pyctr_cli("images", "rm", "acc/app:1"), 3)
    # namespaces are separate
    assert pyctr_cli("-n", "other", "images", "ls", "-q", check=True).stdout == ""


def test_export_and_reimport(pyctr_cli: PyctrCli, archive: Path, tmp_path: Path) -> None:
    pyctr_cli("images", "import", "--no-unpack", "--base-name", "acc/app", str(archive), check=True)
    out = tmp_path / "out.tar"
    pyctr_cli("images", "export", str(out), "acc/app:1", check=True)
    with tarfile.open(out) as t:
        names = t.getnames()
    assert {"oci-layout", "index.json", "manifest.json"} <= set(names)
    pyctr_cli("images", "rm", "acc/app:1", check=True)
    p = pyctr_cli("images", "import", "--no-unpack", str(out), check=True)
    assert p.stdout.split()[0] == "acc/app:1"  # the name travelled in io.containerd.image.name
    # export to stdout
    p2 = pyctr_cli("images", "export", "-", "acc/app:1")
    assert p2.returncode == 0 and "index.json" in p2.stdout  # text mode: the tar's member names show


def test_errors_are_one_line(pyctr_cli: PyctrCli, tmp_path: Path) -> None:
    one_line_error(pyctr_cli("images", "import", str(tmp_path / "missing.tar")), 3)
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"garbage" * 200)
    one_line_error(pyctr_cli("images", "import", str(bad)), 10)
    one_line_error(pyctr_cli("images", "inspect", "nope:1"), 3)
    one_line_error(pyctr_cli("images", "unpack", "nope:1"), 3)
    one_line_error(pyctr_cli("images", "export", str(tmp_path / "x.tar"), "nope:1"), 3)
    assert not (tmp_path / "x.tar").exists()
    one_line_error(pyctr_cli("images", "ls", "name~=("), 2)


def test_prune(pyctr_cli: PyctrCli, archive: Path) -> None:
    pyctr_cli("images", "import", "--no-unpack", "--digests", "--base-name", "acc/app", str(archive),
              check=True)
    names = pyctr_cli("images", "ls", "-q", check=True).stdout.split()
    assert len(names) == 2 and any("@sha256:" in n for n in names)
    # without --all: only the digest-only name goes
    removed = pyctr_cli("images", "prune", check=True).stdout.split()
    assert len(removed) == 1 and "@sha256:" in removed[0]
    assert pyctr_cli("images", "ls", "-q", check=True).stdout.split() == ["acc/app:1"]
    assert pyctr_cli("images", "prune", "--all", "--sync", check=True).stdout.split() == ["acc/app:1"]
    assert pyctr_cli("images", "ls", "-q", check=True).stdout == ""


@pytest.mark.integration
def test_import_unpacks_by_default(pyctr_cli: PyctrCli, archive: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    plugins = pyctr_cli("plugins", "ls").stdout
    if "diff" not in plugins:
        pytest.skip("no diff plugin")
    pyctr_cli("images", "import", "--base-name", "acc/app", str(archive), check=True)
    chk = pyctr_cli("images", "check", check=True).stdout
    assert chk.splitlines()[1].split()[-1] == "true"  # unpacked into the default snapshotter
    top = pyctr_cli("images", "unpack", "--snapshotter", "native", "acc/app:1", check=True).stdout.strip()
    assert top.startswith("sha256:")
    ins = json.loads(pyctr_cli("images", "inspect", "acc/app:1", check=True).stdout)
    assert ins["chain_ids"][-1] == top
