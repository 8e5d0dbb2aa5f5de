"""Start and stop a real ``pyctrd`` for tests (private root, state and socket under tmp)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from conftest import Roots, child_env


def pyctrd_executable() -> str:
    return str(Path(sys.executable).parent / "pyctrd")


def wait_for_socket(path: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"pyctrd exited with {proc.returncode} before it listened")
        if os.path.exists(path):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(path)
                return
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.05)
    raise AssertionError(f"pyctrd did not listen on {path} within {timeout}s")


@contextlib.contextmanager
def running_daemon(roots: Roots, *extra: str, log: Path | None = None) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    sock = str(roots.state / "pyctr.sock")
    logf = open(log or roots.root.parent / "pyctrd.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [pyctrd_executable(), "--root", str(roots.root), "--state", str(roots.state), "--config",
         str(roots.config), "--address", sock, *extra],
        stdout=logf, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True)
    try:
        wait_for_socket(sock, proc)
        yield proc, sock
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        logf.close()
