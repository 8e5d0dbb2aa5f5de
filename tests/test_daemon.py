"""pyctrd and the RPC: the socket, the protocol, errors, concurrency, disconnects, shutdown; and the same
client calls in embedded and remote modes."""

from __future__ import annotations

import os
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from conftest import PyctrCli, Roots, child_env
from daemon_helpers import pyctrd_executable, running_daemon
from pyctr import Client
from pyctr.errdefs import AlreadyExists, FailedPrecondition, NotFound, Unavailable


def _frame(msg: dict[str, Any]) -> bytes:
    body = msgpack.packb(msg, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def _read(s: socket.socket) -> Any:
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        assert chunk, "connection closed"
        head += chunk
    (n,) = struct.unpack(">I", head)
    body = b""
    while len(body) < n:
        body += s.recv(n - len(body))
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


@pytest.fixture
def daemon(tmp_root: Roots) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    with running_daemon(tmp_root) as d:
        yield d


@pytest.fixture(params=["embedded", "remote"])
def client(request: Any, tmp_root: Roots) -> Iterator[Client]:
    if request.param == "embedded":
        with Client(root=str(tmp_root.root), state=str(tmp_root.state), config=str(tmp_root.config)) as c:
            yield c
    else:
        with running_daemon(tmp_root) as (_, sock), Client(address=sock) as c:
            yield c


# -- the same behaviour in both modes ---------------------------------------------------------------


def test_namespaces_in_both_modes(client: Client) -> None:
    ns = client.plugin("metadata").namespaces
    ns.create("team-a", {"owner": "me"})
    with pytest.raises(AlreadyExists):
        ns.create("team-a", {})
    assert "team-a" in [n.name if hasattr(n, "name") else n for n in ns.list()]
    with pytest.raises(NotFound):
        ns.delete("nope")


def test_content_write_read_in_both_modes(client: Client) -> None:
    store = client.plugin("metadata").content
    w = store.writer("default", "ref-1", -1, "")
    w.write(b"hello ")
    w.write(b"world")
    info = w.commit(-1, "", {"k": "v"})
    assert info.size == 11 and info.labels == {"k": "v"}
    assert store.read("default", info.digest, 0, -1) == b"hello world"
    assert not store.exists("other", info.digest)
    assert [i.digest for i in store.walk("default", ['labels.k==v'])] == [info.digest]


def test_plugin_statuses_in_both_modes(client: Client) -> None:
    statuses = client.engine.plugin_statuses()
    ids = {s.registration.id: s.status.value for s in statuses}
    assert ids["pyctr.content.local"] == "ok"
    assert ids["pyctr.metadata.sqlite"] == "ok"


# -- the daemon --------------------------------------------------------------------------------------


def test_socket_permissions(daemon: tuple[subprocess.Popen[bytes], str]) -> None:
    _, sock = daemon
    mode = stat.S_IMODE(os.stat(sock).st_mode)
    assert mode & 0o007 == 0, oct(mode)  # never world-accessible
    assert mode == 0o660
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    assert stat.S_IMODE(os.stat(os.path.dirname(sock)).st_mode) & 0o022 == 0


def test_version_has_client_and_server(daemon: tuple[subprocess.Popen[bytes], str], pyctr_cli: PyctrCli) -> None:
    _, sock = daemon
    out = pyctr_cli("--address", sock, "version", check=True).stdout
    assert "Client:" in out and "Server:" in out and f"PID:      {daemon[0].pid}" in out


def test_cli_finds_the_daemon_by_itself(daemon: tuple[subprocess.Popen[bytes], str], pyctr_cli: PyctrCli) -> None:
    out = pyctr_cli("version", check=True).stdout  # --state points at the daemon's state
    assert "Server:" in out


def test_address_without_daemon_fails_clearly(pyctr_cli: PyctrCli, tmp_root: Roots) -> None:
    p = pyctr_cli("--address", str(tmp_root.state / "none.sock"), "namespaces", "ls")
    assert p.returncode == Unavailable.exit_code
    assert "no pyctrd answers" in p.stderr and "Traceback" not in p.stderr


def test_second_daemon_refused(daemon: tuple[subprocess.Popen[bytes], str], tmp_root: Roots) -> None:
    _, sock = daemon
    p = subprocess.run([pyctrd_executable(), "--root", str(tmp_root.root), "--state", str(tmp_root.state),
                        "--config", str(tmp_root.config), "--address", sock + "2"],
                       capture_output=True, text=True, env=child_env(), timeout=30)
    assert p.returncode == FailedPrecondition.exit_code
    assert "another pyctrd" in p.stderr and str(tmp_root.root) in p.stderr


def test_raw_protocol_and_errors(daemon: tuple[subprocess.Popen[bytes], str]) -> None:
    _, sock = daemon
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    try:
        s.sendall(_frame({"t": "hello", "v": 1}))
        hello = _read(s)
        assert hello["t"] == "hello" and hello["v"] == 1
        s.sendall(_frame({"t": "call", "id": 1, "h": 0, "n": "health", "a": [], "k": {}}))
        assert _read(s) == {"t": "res", "id": 1, "v": "SERVING"}
        s.sendall(_frame({"t": "call", "id": 2, "h": 0, "n": "_private", "a": [], "k": {}}))
        r = _read(s)
        assert r["t"] == "err" and r["c"] == "invalid_argument"
        s.sendall(_frame({"t": "call", "id": 3, "h": 0, "n": "plugin", "a": ["nosuchtype"], "k": {}}))
        r = _read(s)
        assert r["t"] == "err" and r["c"] == "not_found" and "nosuchtype" in r["m"]
        s.sendall(_frame({"t": "call", "id": 4, "h": 0, "n": "health", "a": [], "k": {},
                          "dl": time.time_ns() - 1}))
        r = _read(s)
        assert r["t"] == "err" and r["c"] == "deadline_exceeded"
        s.sendall(_frame({"t": "call", "id": 5, "h": 77, "n": "x", "a": [], "k": {}}))
        r = _read(s)
        assert r["t"] == "err" and r["c"] == "not_found"
    finally:
        s.close()


def test_many_concurrent_clients(daemon: tuple[subprocess.Popen[bytes], str]) -> None:
    _, sock = daemon
    errors: list[BaseException] = []
    shared = Client(address=sock)

    def worker(i: int) -> None:
        try:
            own = Client(address=sock)
            ns = own.plugin("metadata").namespaces
            for j in range(20):
                ns.create(f"w{i}-{j}", {})
                assert shared.version()["pid"] > 0
            own.close()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    names = {n.name for n in shared.plugin("metadata").namespaces.list()}
    assert {f"w{i}-{j}" for i in range(8) for j in range(20)} <= names
    shared.close()


def test_events_stream_and_disconnect_releases_subscription(daemon: tuple[subprocess.Popen[bytes], str]) -> None:
    _, sock = daemon
    watcher = Client(address=sock)
    stream = watcher.subscribe(['topic=="/namespaces/create"'])
    got: list[dict[str, Any]] = []
    t = threading.Thread(target=lambda: got.append(next(iter(stream))), daemon=True)
    t.start()
    other = Client(address=sock)
    deadline = time.monotonic() + 10
    while other.engine.events.subscribers < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    other.plugin("metadata").namespaces.create("evented", {})
    t.join(10)
    assert got and got[0]["topic"] == "/namespaces/create" and got[0]["event"]["name"] == "evented"
    watcher.close()  # disconnect mid-stream
    deadline = time.monotonic() + 10
    while other.engine.events.subscribers and time.monotonic() < deadline:
        time.sleep(0.05)
    assert other.engine.events.subscribers == 0
    other.close()


def test_stuck_client_does_not_stall_others(daemon: tuple[subprocess.Popen[bytes], str]) -> None:
    _, sock = daemon
    stuck = socket.socket(socket.AF_UNIX)
    stuck.connect(sock)
    stuck.sendall(_frame({"t": "hello", "v": 1})[:3])  # half a frame, then silence
    c = Client(address=sock)
    t0 = time.monotonic()
    for _ in range(20):
        c.version()
    assert time.monotonic() - t0 < 5
    c.close()
    stuck.close()


def test_sigterm_shuts_down_cleanly(tmp_root: Roots) -> None:
    with running_daemon(tmp_root) as (proc, sock):
        c = Client(address=sock)
        assert c.version()["pid"] == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert not os.path.exists(sock)
        with pytest.raises(Unavailable):
            c.version()
        c.close()
