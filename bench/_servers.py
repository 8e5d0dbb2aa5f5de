"""Private servers the benchmarks compare against: a docker-registry and a containerd on loopback /
under a scratch directory, never the system's."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_registry(base: Path, data: str = "data") -> tuple[subprocess.Popen[bytes], str]:
    """A plain-HTTP docker-registry on 127.0.0.1 storing under ``base/data``; returns (process, host:port)."""
    addr = f"127.0.0.1:{free_port()}"
    cfg = base / "registry.yml"
    cfg.write_text(f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n"
                   f"  filesystem:\n    rootdirectory: {base / data}\nhttp:\n  addr: {addr}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://{addr}/v2/", timeout=1).close()
            return proc, addr
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("docker-registry did not start")


def start_containerd(base: Path, sock: str, tries: int = 200) -> subprocess.Popen[bytes]:
    """containerd with root, state and sockets under ``base`` (CRI disabled), answering on ``sock``."""
    cfg = base / "config.toml"
    cfg.write_text(f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\n'
                   'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                   f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n'
                   f'[debug]\n  address = "{base}/debug.sock"\n')
    proc = subprocess.Popen(["containerd", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(tries):
        if subprocess.run(["ctr", "-a", sock, "version"], capture_output=True).returncode == 0:
            return proc
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("containerd did not start")
