"""A real third-party plugin: the distribution in ``tests/data/example_plugin`` is built into a wheel,
installed with pip into a temporary site directory, and the real ``pyctr`` command (with that directory
on ``PYTHONPATH``) lists it, initialises it with its configuration, and uses it as a snapshotter; its
two deliberately broken entry points show up as errors without harming anything else."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

EXAMPLE = Path(__file__).parent / "data" / "example_plugin"


def _conformance() -> type:
    """pyctr's snapshotter conformance suite run against the example's snapshotter (it mounts, so it
    needs root)."""
    sys.path.insert(0, str(EXAMPLE / "src"))
    try:
        from pyctr_example_plugin.snapshotter import DirSnapshotter
    finally:
        sys.path.remove(str(EXAMPLE / "src"))
    from pyctr.testsuite.snapshots import snapshotter_suite

    marks = [pytest.mark.integration,
             pytest.mark.skipif(os.geteuid() != 0, reason="the conformance suite mounts snapshots")]
    return snapshotter_suite(DirSnapshotter, marks=marks, deep_chain=32)


TestExampleSnapshotterConformance = _conformance()


def build_wheel(src: Path, out_dir: Path) -> Path:
    """A PEP 427 wheel of ``src`` from its pyproject.toml: the package files under ``src/``, METADATA,
    WHEEL, entry_points.txt and RECORD (no build backend needed)."""
    project = tomllib.loads((src / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files: dict[str, bytes] = {}
    for path in sorted((src / "src").rglob("*.py")):
        files[path.relative_to(src / "src").as_posix()] = path.read_bytes()
    files[f"{info}/METADATA"] = (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                 f"Summary: {project.get('description', '')}\n").encode()
    files[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: pyctr-tests\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n")
    eps = project.get("entry-points", {})
    files[f"{info}/entry_points.txt"] = "".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()) + "\n"
        for group, entries in eps.items()).encode()
    record = []
    for arc, data in files.items():
        h = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{arc},sha256={h},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    whl = out_dir / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w", zipfile.ZIP_DEFLATED) as z:
        for arc, data in files.items():
            z.writestr(arc, data)
    return whl


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("example-plugin")
    whl = build_wheel(EXAMPLE, work)
    site = work / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", "--target", str(site),
         str(whl)],
        capture_output=True, text=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (site / "pyctr_example_plugin" / "plugin.py").exists()
    assert list(site.glob("pyctr_example_plugin-0.1.0.dist-info/entry_points.txt"))
    return site


@pytest.fixture
def cli(pyctr_cli: Any, site_dir: Path) -> Any:
    """``pyctr`` with the example distribution installed (on PYTHONPATH)."""
    path = os.pathsep.join(p for p in (str(site_dir), os.environ.get("PYTHONPATH", "")) if p)

    def run(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return pyctr_cli(*args, env={"PYTHONPATH": path}, **kw)  # type: ignore[no-any-return]

    return run


def rows(stdout: str) -> dict[str, list[str]]:
    return {line.split()[1]: line.split() for line in stdout.splitlines()[1:] if line.strip()}


def test_listed_with_status_ok_and_the_broken_ones_as_errors(cli: Any) -> None:
    p = cli("plugins", "ls", check=True)
    r = rows(p.stdout)
    assert r["example.snapshot.dirs"][0] == "snapshot"
    assert r["example.snapshot.dirs"][-1] == "ok"
    assert r["example.broken"][-1] == "error"
    assert r["example.typo"][-1] == "error"
    assert r["pyctr.metadata.sqlite"][-1] == "ok"  # the built-ins are unharmed
    d = cli("plugins", "ls", "--detailed", check=True).stdout
    assert "needs libexample, which is not installed" in d
    assert "unknown hooks: pyctr_plugin_registraions" in d
    assert "Example third-party snapshotter" in d


def test_not_listed_without_the_distribution(pyctr_cli: Any) -> None:
    assert "example.snapshot.dirs" not in pyctr_cli("plugins", "ls", check=True).stdout


def test_initialised_with_its_configuration(cli: Any, tmp_root: Any) -> None:
    tmp_root.config.write_text('[plugins."example.snapshot.dirs"]\ngreeting = "hi there"\n')
    cli("plugins", "ls", check=True)
    assert (tmp_root.root / "example.snapshot.dirs" / "initialised").read_text() == "hi there\n"
    tmp_root.config.write_text('[plugins."example.snapshot.dirs"]\ngreeting = 3\n')
    d = cli("plugins", "ls", "-d", check=True).stdout
    block = next(b for b in d.split("\n\n") if "ID:         example.snapshot.dirs" in b)
    assert "Status:     error" in block and "must be str" in block


def test_used_as_a_snapshotter(cli: Any, tmp_root: Any) -> None:
    sn = ("snapshots", "--snapshotter", "dirs")
    cli(*sn, "prepare", "work", check=True)
    root = tmp_root.root / "example.snapshot.dirs"
    index = json.loads((root / "index.json").read_text())["snapshots"]
    (bkey, rec), = index.items()
    assert bkey.endswith("work") and rec["kind"] == "Active"
    (root / "snapshots" / str(rec["id"]) / "hello.txt").write_text("from the first layer\n")
    cli(*sn, "commit", "base", "work", check=True)
    cli(*sn, "prepare", "child", "base", check=True)
    listed = cli(*sn, "ls", check=True).stdout
    assert "base" in listed and "child" in listed
    index = json.loads((root / "index.json").read_text())["snapshots"]
    child = next(r for k, r in index.items() if k.endswith("child"))
    assert (root / "snapshots" / str(child["id"]) / "hello.txt").read_text() == "from the first layer\n"
    # removing the records leaves the bytes to the garbage collector, which uses the plugin too: it
    # runs when the command ends
    cli(*sn, "rm", "child", "base", check=True)
    assert cli(*sn, "ls", "-q", check=True).stdout.split() == []
    assert json.loads((root / "index.json").read_text())["snapshots"] == {}
    assert list((root / "snapshots").iterdir()) == []
    # an explicit collection has nothing left to do
    assert "removed 0 records" in cli("gc", check=True).stdout
