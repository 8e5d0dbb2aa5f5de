"""Shared fixtures for pyctr's tests.

* ``tmp_root`` -- a fresh :class:`Roots` (``root``, ``state``, ``config`` paths) under ``tmp_path``;
  never the system's ``/var/lib/pyctr`` or ``/run/pyctr``.  ``config`` is an empty TOML file, so the
  host's ``/etc/pyctr/config.toml`` never leaks into a test; write to it to configure plugins.
* ``pyctr_cli`` -- runs the real ``pyctr`` console script in a subprocess with ``--root``, ``--state``
  and ``--config`` from ``tmp_root``; returns the :class:`subprocess.CompletedProcess` (text mode).
  ``pyctr_cli("namespaces", "ls")``; keyword arguments: ``input``, ``env`` (extra variables),
  ``check`` (assert exit status 0, showing stderr), ``timeout``.
* ``speedups`` -- session fixture parametrised over the ids ``c`` and ``py`` (multidict's pattern):
  ``speedups.load("tario")`` imports ``pyctr._speedups._tario_c`` or ``_tario_py``; ``speedups.env``
  is the environment for a subprocess that must use that implementation.  The ``c`` case is skipped
  when the extension is not built, unless ``PYCTR_REQUIRE_EXTENSIONS=1`` (then it fails).
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

# Variables that would point a child pyctr at the host's real directories or configuration.
_SCRUB = ("PYCTR_ROOT", "PYCTR_STATE", "PYCTR_ADDRESS", "PYCTR_CONFIG", "PYCTR_NAMESPACE", "PYCTR_DEBUG")

#: The marks of a test module that runs containers: real runc, busybox-static, as root.
RUNS_CONTAINERS = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc"),
    pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="needs busybox-static"),
]


@dataclass(frozen=True)
class Roots:
    """A test's private pyctr directories."""

    root: Path
    state: Path
    config: Path

    def args(self) -> list[str]:
        """The global CLI options that point ``pyctr`` here."""
        return ["--root", str(self.root), "--state", str(self.state), "--config", str(self.config)]


@pytest.fixture
def tmp_root(tmp_path: Path) -> Roots:
    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir()
    state.mkdir()
    config = tmp_path / "config.toml"
    config.write_text("")
    return Roots(root, state, config)


def pyctr_executable() -> str:
    """The ``pyctr`` console script of the interpreter running the tests (not a pyenv shim)."""
    here = Path(sys.executable).parent / "pyctr"
    if here.exists():
        return str(here)
    found = shutil.which("pyctr")
    if found is None:
        pytest.fail("the pyctr console script is not installed (run: pip install -e .)")
    return found


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` without pyctr's location variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.update(extra or {})
    return env


PyctrCli = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def pyctr_cli(tmp_root: Roots) -> PyctrCli:
    exe = pyctr_executable()

    def run(*args: str, input: str | None = None, env: dict[str, str] | None = None, check: bool = False,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([exe, *tmp_root.args(), *args], input=input, capture_output=True, text=True,
                              env=child_env(env), timeout=timeout)
        if check:
            assert proc.returncode == 0, (
                f"pyctr {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    return run


@dataclass(frozen=True)
class Speedups:
    """One implementation of the speedups: ``c`` (Cython) or ``py`` (the pure-Python twins)."""

    name: str

    @property
    def env(self) -> dict[str, str]:
        return child_env({"PYCTR_NO_EXTENSIONS": "1"} if self.name == "py" else {})

    def load(self, module: str) -> ModuleType:
        """``pyctr._speedups._<module>_<c|py>``."""
        full = f"pyctr._speedups._{module}_{self.name}"
        try:
            return importlib.import_module(full)
        except ImportError as e:
            if self.name == "c" and not os.environ.get("PYCTR_REQUIRE_EXTENSIONS"):
                pytest.skip(f"{full} is not built: {e}")
            raise


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox root file system (runc tests; skipped without runc), one per test module."""
    from runtime_helpers import make_busybox_rootfs, need_runc

    need_runc()
    return make_busybox_rootfs(tmp_path_factory.mktemp("bb") / "rootfs")


@pytest.fixture(scope="session", params=["c", "py"])
def speedups(request: Any) -> Iterator[Speedups]:
    yield Speedups(request.param)

# Registry and image fixtures (docker-registry on loopback, umoci/skopeo-built images).
pytest_plugins = ["fixtures_registry", "fixtures_images"]


# -- session hygiene ---------------------------------------------------------------------------------

_SESSION_START = 0.0


def pytest_sessionstart(session: pytest.Session) -> None:
    import time

    global _SESSION_START
    _SESSION_START = time.time() - 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the short shim-socket directories (``/tmp/pyctr-s-<hash>``) that the runtime makes for
    state directories too deep for a socket path (pytest's tmp paths are) once no shim listens in them:
    only those made during this session and holding nothing but their spawn lock."""
    import glob
    import socket
    import stat

    for d in glob.glob("/tmp/pyctr-s-*"):
        try:
            if os.stat(d).st_ctime < _SESSION_START:
                continue
            for name in os.listdir(d):  # sockets nobody listens on any more (a shim or zygote was killed)
                path = os.path.join(d, name)
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    s = socket.socket(socket.AF_UNIX)
                    try:
                        s.connect(path)
                    except ConnectionRefusedError:
                        os.unlink(path)
                    except OSError:
                        pass
                    finally:
                        s.close()
            if set(os.listdir(d)) - {"spawn.lock"}:
                continue
            if os.path.exists(os.path.join(d, "spawn.lock")):
                os.unlink(os.path.join(d, "spawn.lock"))
            os.rmdir(d)
        except OSError:
            continue
