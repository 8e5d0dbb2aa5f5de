"""Start-up is lazy: building the CLI and printing help import no plugin, no prometheus_client, no rich,
no msgpack and no metadata store; a command that needs none of them does not load them either."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from conftest import Roots, child_env

# Modules (and packages) a start-up must not import.
HEAVY = ("pyctr.plugins", "prometheus_client", "rich", "msgpack", "pluggy", "pyctr.metadata", "sqlite3",
         "pyctr._speedups", "zstandard", "isal")
# The nouns' command modules: only the one a command line names is imported.
NOUN_MODULES = ("pyctr.cli.images", "pyctr.cli.containers", "pyctr.cli.tasks", "pyctr.cli.snapshots",
                "pyctr.cli.content", "pyctr.cli.namespaces", "pyctr.cli.leases", "pyctr.cli.plugins")

PROBE = r"""
import contextlib, io, json, sys
args, heavy = json.loads(sys.argv[1]), tuple(json.loads(sys.argv[2]))
sys.argv = ["pyctr", *args]
from pyctr.cli import main
out = io.StringIO()
code = 0
try:
    with contextlib.redirect_stdout(out):
        main()
except SystemExit as e:
    code = e.code or 0
loaded = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy))
print(json.dumps({"code": code, "loaded": loaded, "out": out.getvalue()}))
"""


def probe(*args: str, heavy: tuple[str, ...] = HEAVY) -> dict[str, Any]:
    """Run the CLI in a fresh interpreter with ``args``; what it printed and which heavy modules it
    loaded."""
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(list(args)), json.dumps(heavy)],
                          capture_output=True, text=True, env=child_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


def test_building_the_app_imports_nothing_heavy() -> None:
    code = (f"import json, sys; from pyctr.cli import build_app; build_app(); heavy = {HEAVY!r}; "
            "print(json.dumps(sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') "
            "for h in heavy))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(),
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


@pytest.mark.parametrize("args", [
    ["--help"],
    ["namespaces", "--help"],
    ["leases", "create", "--help"],
    ["images", "--help"],
    ["plugins", "--help"],
    ["gc", "--help"],
])
def test_help_is_lazy(args: list[str]) -> None:
    r = probe(*args)
    assert r["code"] == 0
    assert "Usage:" in r["out"]
    assert r["loaded"] == [], f"pyctr {' '.join(args)} imported {r['loaded']}"


def test_version_loads_no_plugin() -> None:
    r = probe("version")
    assert r["code"] == 0 and "Version:" in r["out"]
    assert r["loaded"] == []


def test_a_metadata_command_loads_only_what_it_needs(tmp_root: Roots) -> None:
    r = probe(*tmp_root.args(), "namespaces", "ls")
    assert r["code"] == 0
    loaded = set(r["loaded"])
    assert not {m for m in loaded if m.split(".")[0] in ("prometheus_client", "rich", "msgpack")}
    assert "pyctr.plugins.metadata.sqlite.plugin" in loaded  # the plugin modules are registered...
    assert not any(m.startswith("pyctr.plugins.runtime.runc.") and not m.endswith(".plugin")
                   for m in loaded)  # ...but the runtime's implementation is never imported


def test_only_the_named_noun_is_built() -> None:
    r = probe("--help", heavy=NOUN_MODULES)
    assert r["loaded"] == []
    for noun in ("images", "containers", "tasks", "snapshots", "content", "namespaces", "leases", "plugins"):
        assert f"  {noun} " in r["out"]  # every noun is still listed
    r = probe("-n", "x", "--root=/nonexistent", "ns", "--help", heavy=NOUN_MODULES)
    assert r["loaded"] == ["pyctr.cli.namespaces"]
    assert "create" in r["out"] and "label" in r["out"]


def test_noun_detection() -> None:
    from pyctr.cli import _noun_in

    assert _noun_in(["--root", "/r", "-n", "x", "images", "ls"]) == "images"
    assert _noun_in(["--root=/r", "--debug", "ns", "ls"]) == "ns"
    assert _noun_in(["-c", "cfg.toml", "gc"]) == "gc"
    assert _noun_in(["--help"]) is None
    assert _noun_in([]) is None


def test_usage_errors_are_one_line_with_exit_2(pyctr_cli: Any) -> None:
    p = pyctr_cli("--no-such-option")
    assert p.returncode == 2
    assert "No such option: --no-such-option" in p.stderr
    assert "Traceback" not in p.stderr
    p = pyctr_cli("namespaces", "create")
    assert p.returncode == 2 and "Missing argument" in p.stderr
