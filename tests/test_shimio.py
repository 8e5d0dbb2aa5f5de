"""The shim's stdio loop, both implementations: copies, tees, json-file lines, back-pressure, EOF."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import Speedups


@pytest.fixture
def shimio(speedups: Speedups) -> ModuleType:
    return speedups.load("shimio")


@pytest.fixture
def fds() -> Iterator[list[int]]:
    opened: list[int] = []
    yield opened
    for fd in opened:
        with contextlib.suppress(OSError):
            os.close(fd)


def _pipe(fds: list[int]) -> tuple[int, int]:
    r, w = os.pipe()
    fds += [r, w]
    return r, w


def _run(loop: Any, until: Any, timeout: float = 5.0) -> list[int]:
    done: list[int] = []
    end = time.monotonic() + timeout
    while not until(done):
        assert time.monotonic() < end, "the loop did not finish in time"
        _, d = loop.poll(0.05)
        done += d
    return done


def _read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    out = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 1 << 16):
            out += chunk
    return out


def test_pipe_to_pipe_splice_and_eof(shimio: ModuleType, fds: list[int]) -> None:
    src_r, src_w = _pipe(fds)
    dst_r, dst_w = _pipe(fds)
    loop = shimio.Loop()
    pid = loop.add_pump(src_r, [(dst_w, shimio.RAW, "stdout")])
    payload = os.urandom(200_000)
    got = bytearray()
    os.set_blocking(src_w, False)
    os.set_blocking(dst_r, False)
    view = memoryview(payload)
    done: list[int] = []
    end = time.monotonic() + 10
    while pid not in done:
        assert time.monotonic() < end
        if view:
            with contextlib.suppress(BlockingIOError):
                n = os.write(src_w, view[:65536])
                view = view[n:]
            if not view:
                os.close(src_w)
                fds.remove(src_w)
        _, d = loop.poll(0.01)
        done += d
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(dst_r, 1 << 16):
                got += chunk
    got += _read_all(dst_r)
    assert bytes(got) == payload
    assert not loop.pump_active(pid) and loop.pumps() == 0
    loop.close()


def test_tee_to_file_and_json(shimio: ModuleType, fds: list[int], tmp_path: Path) -> None:
    src_r, src_w = _pipe(fds)
    raw = os.open(tmp_path / "raw", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    jl = os.open(tmp_path / "log.json", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    fds += [raw, jl]
    loop = shimio.Loop()
    pid = loop.add_pump(src_r, [(raw, shimio.RAW, "stdout"), (jl, shimio.JSON, "stderr")])
    os.write(src_w, b'line "one"\n\ttwo\\\n')
    loop.poll(0.05)
    os.write(src_w, b"par")
    loop.poll(0.05)
    os.write(src_w, b"tial\x01 \xff end")
    os.close(src_w)
    fds.remove(src_w)
    _run(loop, lambda d: pid in d)
    assert (tmp_path / "raw").read_bytes() == b'line "one"\n\ttwo\\\npartial\x01 \xff end'
    lines = [json.loads(x) for x in (tmp_path / "log.json").read_text().splitlines()]
    assert [e["log"] for e in lines] == ['line "one"\n', "\ttwo\\\n", "partial\x01 \ufffd end"]
    assert {e["stream"] for e in lines} == {"stderr"}
    assert all(e["time"].endswith("Z") for e in lines)
    loop.close()


def test_json_lines_split_long_lines(shimio: ModuleType) -> None:
    partial = bytearray()
    out = shimio.json_lines(b"x" * 40000, "stdout", partial)
    lines = [json.loads(x) for x in out.decode().splitlines()]
    assert len(lines) == 1 and len(lines[0]["log"]) == 40000 and not partial
    out = shimio.json_lines(b"abc", "stdout", partial)
    assert out == b"" and bytes(partial) == b"abc"
    out = shimio.json_lines(b"", "stdout", partial, final=True)
    assert json.loads(out)["log"] == "abc" and not partial


def test_back_pressure_bounds_memory(shimio: ModuleType, fds: list[int]) -> None:
    src_r, src_w = _pipe(fds)
    dst_r, dst_w = _pipe(fds)
    loop = shimio.Loop(bufsize=1 << 16)
    pid = loop.add_pump(src_r, [(dst_w, shimio.RAW, "stdout")])
    os.set_blocking(src_w, False)
    written = 0
    block = b"z" * 65536
    # nobody reads dst: the writer must soon be stopped by full pipes, not by growing buffers
    for _ in range(200):
        try:
            written += os.write(src_w, block)
        except BlockingIOError:
            loop.poll(0.01)
            try:
                written += os.write(src_w, block)
            except BlockingIOError:
                break
        loop.poll(0)
    else:
        pytest.fail(f"the writer was never blocked ({written} bytes accepted)")
    pipe_cap = 2 * 65536 * 16  # two pipes, generous kernel capacity
    assert written <= pipe_cap + (1 << 16), written
    os.close(src_w)
    fds.remove(src_w)
    got = 0
    done: list[int] = []
    end = time.monotonic() + 10
    os.set_blocking(dst_r, False)
    while pid not in done:
        assert time.monotonic() < end
        with contextlib.suppress(BlockingIOError):
            got += len(os.read(dst_r, 1 << 16))
        _, d = loop.poll(0.01)
        done += d
    got += len(_read_all(dst_r))
    assert got == written
    loop.close()


def test_dead_destination_is_dropped(shimio: ModuleType, fds: list[int], tmp_path: Path) -> None:
    src_r, src_w = _pipe(fds)
    dst_r, dst_w = _pipe(fds)
    f = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    fds.append(f)
    os.close(dst_r)
    fds.remove(dst_r)
    loop = shimio.Loop()
    pid = loop.add_pump(src_r, [(dst_w, shimio.RAW, "stdout"), (f, shimio.RAW, "stdout")])
    import signal

    old = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        os.write(src_w, b"still logged\n")
        os.close(src_w)
        fds.remove(src_w)
        _run(loop, lambda d: pid in d)
    finally:
        signal.signal(signal.SIGPIPE, old)
    assert (tmp_path / "f").read_bytes() == b"still logged\n"
    loop.close()


def test_watched_fds_and_socket_destination(shimio: ModuleType, fds: list[int]) -> None:
    a, b = socket.socketpair()
    try:
        src_r, src_w = _pipe(fds)
        loop = shimio.Loop()
        loop.watch(a.fileno(), shimio.READ)
        b.send(b"ping")
        events, _ = loop.poll(1.0)
        assert (a.fileno(), shimio.READ) in events
        assert a.recv(10) == b"ping"
        loop.unwatch(a.fileno())
        b.send(b"again")
        events, _ = loop.poll(0.05)
        assert events == []
        a.recv(10)
        # a pump into a socket (an attached client)
        pid = loop.add_pump(src_r, [(a.fileno(), shimio.RAW, "stdout")])
        os.write(src_w, b"to the client")
        os.close(src_w)
        fds.remove(src_w)
        _run(loop, lambda d: pid in d)
        b.settimeout(2)
        assert b.recv(100) == b"to the client"
        loop.close()
    finally:
        a.close()
        b.close()


def test_remove_pump_stops_copying(shimio: ModuleType, fds: list[int]) -> None:
    src_r, src_w = _pipe(fds)
    dst_r, dst_w = _pipe(fds)
    loop = shimio.Loop()
    pid = loop.add_pump(src_r, [(dst_w, shimio.RAW, "stdout")])
    loop.remove_pump(pid)
    os.write(src_w, b"nobody copies this")
    events, done = loop.poll(0.05)
    assert events == [] and done == []
    assert _read_all(dst_r) == b""
    assert os.read(src_r, 100) == b"nobody copies this"
    loop.close()


def test_set_subreaper_in_child(shimio: ModuleType) -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            shimio.set_subreaper()
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            val = ctypes.c_int(0)
            libc.prctl(37, ctypes.byref(val), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER
            code = 0 if val.value == 1 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_compiled_loaded_when_built() -> None:
    from pyctr._speedups import shimio

    if os.environ.get("PYCTR_NO_EXTENSIONS"):
        pytest.skip("pure Python forced")
    try:
        import pyctr._speedups._shimio_c  # noqa: F401
    except ImportError:
        if os.environ.get("PYCTR_REQUIRE_EXTENSIONS"):
            pytest.fail("the compiled shimio is not built")
        pytest.skip("not built")
    assert shimio.Loop.__module__ == "pyctr._speedups._shimio_c"


