"""The shim: a small process that supervises one or more containers through runc.

It is started detached (see :func:`pyctr.plugins.runtime.runc.manager.spawn_shim`) with the listening
socket already bound by its parent, so clients may connect at once.  It is the child subreaper of the
containers' processes, reaps them on SIGCHLD, writes each init exit to ``<bundle>/exit`` (fsync +
rename) before anything else, moves stdio bytes (``pyctr._speedups.shimio``), and serves a msgpack
RPC: frames of a 4-byte big-endian length followed by a msgpack map ``{id, method, params}``, answered
by ``{id, result}`` or ``{id, error: {code, message}}``.  File descriptors for stdio come with the
request as SCM_RIGHTS.  The shim exits once it holds no container (after the last delete).

Imports are kept to the minimum (no asyncio, no logging, no dataclasses): the shim's memory is the
per-container cost of pyctr.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import stat
import struct
import sys
import time

import msgpack
from pyctr._speedups import shimio
from pyctr.plugins.runtime.runc import runc as R

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing, json and re stay out of the shim's memory
    from collections.abc import Generator
    from typing import Any

VERSION = 1
_HDR = struct.Struct(">I")
_MAX_FRAME = 16 << 20
_MAX_FDS = 16
_DRAIN_TIMEOUT = 2.0  # seconds to finish copying output after a process exits
_IDLE_EXIT = 10.0  # a shim that never got a container exits after this long
_SWEEP_EVERY = 10.0  # seconds between looks for stopped tasks whose bundle was removed
_F_SETPIPE_SZ = 1031
_PIPE_SIZE = 1 << 20


class ShimError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _log(msg: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"{time.strftime('%Y-%m-%dT%H:%M:%S')} shim[{os.getpid()}] {msg}\n".encode())


def write_atomic(path: str, data: bytes, sync: bool = True) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 255


class Proc:
    """The init process (``exec_id == ""``) or an exec'd process of a container."""

    __slots__ = (
        "console",
        "cont",
        "deadline",
        "exec_id",
        "exit_status",
        "exited_at",
        "final",
        "final_pending",
        "io",
        "pid",
        "pumps",
        "reason",
        "spec",
        "starting",
        "status",
        "stdin_fd",
        "stdin_pump",
        "waiters",
    )

    def __init__(self, cont: Container, exec_id: str, io: dict[str, Any]) -> None:
        self.cont = cont
        self.exec_id = exec_id
        self.io = io
        self.pid = 0
        self.status = "created"
        self.exit_status = 0
        self.exited_at = 0.0
        self.final = False  # exit known and output drained: waiters answered
        self.final_pending = False  # exited while its start was under way: /tasks/exit waits for it
        self.reason = ""
        self.spec: dict[str, Any] | None = None
        self.starting = False  # a start is under way (runc start/exec runs)
        self.console = -1  # pty master
        self.stdin_fd = -1  # our end of the container's stdin pipe
        self.stdin_pump = 0
        self.pumps: set[int] = set()
        self.waiters: list[tuple[Conn, Any]] = []
        self.deadline = 0.0

    def state(self) -> dict[str, Any]:
        c = self.cont
        io = self.io
        return {
            "id": c.id, "namespace": c.ns, "exec_id": self.exec_id, "pid": self.pid, "status": self.status,
            "exit_status": self.exit_status, "exited_at": self.exited_at, "bundle": c.bundle,
            "terminal": bool(io.get("terminal")), "stdin": _show(io.get("stdin")),
            "stdout": _show(io.get("stdout")), "stderr": _show(io.get("stderr")),
            "shim_pid": os.getpid(), "group": c.group, "reason": self.reason,
        }

    def exit_dict(self) -> dict[str, Any]:
        return {"exit_status": self.exit_status, "exited_at": self.exited_at, "pid": self.pid}


def _show(v: Any) -> str:
    if isinstance(v, dict):
        return f"fd:{v.get('fd')}"
    return str(v or "")


class Container:
    __slots__ = ("bundle", "cgroup", "execs", "group", "id", "init", "ns", "publish", "runc")

    def __init__(self, ns: str, id: str, bundle: str, group: str, runc: list[str], publish: str,
                 cgroup: str) -> None:
        self.ns = ns
        self.id = id
        self.bundle = bundle
        self.group = group
        self.runc = runc  # global args: binary --root R --log L --log-format json
        self.publish = publish
        self.cgroup = cgroup
        self.init: Proc = Proc(self, "", {})
        self.execs: dict[str, Proc] = {}

    def proc(self, exec_id: str) -> Proc:
        if not exec_id:
            return self.init
        p = self.execs.get(exec_id)
        if p is None:
            raise ShimError("not_found", f"exec {exec_id!r} not found in task {self.id!r}")
        return p


class Conn:
    __slots__ = ("buf", "fds", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.fds: list[int] = []


class Shim:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.address: str = cfg["address"]
        self.group: str = cfg.get("group", "")
        self.debug = bool(cfg.get("debug"))
        self.loop = shimio.Loop()
        self.listener = socket.socket(fileno=int(cfg["listen_fd"]))
        self.listener.setblocking(False)
        try:
            self.sock_ino = os.stat(self.address).st_ino
        except OSError:
            self.sock_ino = 0
        self.conns: dict[int, Conn] = {}
        self.containers: dict[tuple[str, str], Container] = {}
        self.by_pid: dict[int, Proc] = {}
        self.early_exits: dict[int, tuple[int, float]] = {}
        self.runc_waits: dict[int, tuple[Generator[int, int, Any], Conn, Any, list[int], str]] = {}
        self.creating: set[tuple[str, str]] = set()
        self.had_container = False
        self.sweep_every = float(cfg.get("sweep", _SWEEP_EVERY))
        self.next_sweep = time.monotonic() + self.sweep_every
        self.started = time.monotonic()
        self.exiting = False
        self.draining: set[Proc] = set()
        self.console_seq = 0
        self.event_sock: socket.socket | None = None
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.sig_r, self.sig_w = r, w

    # -- set-up ------------------------------------------------------------------------------------

    def run(self) -> None:
        shimio.set_subreaper()
        signal.set_wakeup_fd(self.sig_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda s, f: None)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)  # a shim only stops on Shutdown (containers must live on)
        self.loop.watch(self.listener.fileno(), shimio.READ)
        self.loop.watch(self.sig_r, shimio.READ)
        _log(f"serving {self.address} group={self.group!r}")
        errors = 0
        while True:
            try:
                self._iterate()
                errors = 0
            except Exception as e:  # a shim must not die of a bug: its containers would lose their exits
                errors += 1
                _log(f"loop error: {type(e).__name__}: {e}")
                self._reap()
                if errors > 100:
                    time.sleep(0.1)
            if self._should_exit():
                break
        self._shutdown()

    def _iterate(self) -> None:
        events, done = self.loop.poll(self._timeout())
        for fd, _ev in events:
            if fd == self.sig_r:
                self._drain_signals()
                self._reap()
            elif fd == self.listener.fileno():
                self._accept()
            else:
                c = self.conns.get(fd)
                if c is not None:
                    self._read_conn(c)
        for pid in done:
            self._pump_done(pid)
        self._check_drains()
        now = time.monotonic()
        if now >= self.next_sweep:
            self.next_sweep = now + self.sweep_every
            self._sweep()

    def _sweep(self) -> None:
        """Forget stopped tasks whose bundle is gone (their state directory was wiped): nobody can
        delete them any more, and they would keep this shim alive forever."""
        for key, c in list(self.containers.items()):
            p = c.init
            if p.status == "stopped" and p.final and not c.execs and not os.path.isdir(c.bundle):
                _log(f"forgetting {c.ns}/{c.id}: its bundle is gone")
                self._forget(p)
                del self.containers[key]

    def _timeout(self) -> float:
        t = 1.0
        if self.draining:
            now = time.monotonic()
            t = min(t, max(0.0, min(p.deadline for p in self.draining) - now))
        return t

    def _should_exit(self) -> bool:
        if self.containers or self.creating or self.runc_waits:
            return False
        if self.exiting or self.had_container:
            return True
        return time.monotonic() - self.started > _IDLE_EXIT and not self.conns

    def _shutdown(self) -> None:
        with contextlib.suppress(OSError):
            if os.stat(self.address).st_ino == self.sock_ino:  # not a successor's socket
                os.unlink(self.address)
        self.listener.close()
        for c in list(self.conns.values()):
            c.sock.close()
        log = self.cfg.get("log")
        if log and not self.debug:
            with contextlib.suppress(OSError):
                os.unlink(str(log))  # a clean exit: nothing to keep (a crashed shim's log stays)
        else:
            _log("exiting: no containers left")

    # -- signals and exits -------------------------------------------------------------------------

    def _drain_signals(self) -> None:
        try:
            while os.read(self.sig_r, 512):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            w = self.runc_waits.pop(pid, None)
            if w is not None:  # a runc command ended: resume the handler that started it
                self._drive(w[0], w[1], w[2], w[3], w[4], status)
                continue
            code = _exit_code(status)
            now = time.time()
            p = self.by_pid.pop(pid, None)
            if p is None:
                self.early_exits[pid] = (code, now)
                if len(self.early_exits) > 1024:
                    self.early_exits.pop(next(iter(self.early_exits)))
                continue
            self._exited(p, code, now)

    def _exited(self, p: Proc, code: int, when: float) -> None:
        p.status = "stopped"
        p.exit_status = code
        p.exited_at = when
        c = p.cont
        if not p.exec_id:
            # first of all: the exit must survive us and the daemon
            try:
                write_atomic(os.path.join(c.bundle, "exit"),
                             to_json({"exit_status": code, "exited_at": when, "pid": p.pid}))
            except OSError as e:
                _log(f"writing the exit of {c.ns}/{c.id}: {e}")
            if _oom_killed(c.cgroup):
                p.reason = "oom"
                self.publish(c, "/tasks/oom", {"container_id": c.id})
        if p.stdin_pump:
            self.loop.remove_pump(p.stdin_pump)
            p.stdin_pump = 0
        self._close_stdin(p)
        if p.pumps:
            p.deadline = time.monotonic() + _DRAIN_TIMEOUT
            self.draining.add(p)
        else:
            self._final(p)

    def _pump_done(self, pump: int) -> None:
        for c in self.containers.values():
            for p in (c.init, *c.execs.values()):
                if pump in p.pumps:
                    p.pumps.discard(pump)
                    if not p.pumps and p in self.draining:
                        self.draining.discard(p)
                        self._final(p)
                    return
                if pump == p.stdin_pump:
                    p.stdin_pump = 0
                    self._close_stdin(p)
                    return

    def _check_drains(self) -> None:
        if not self.draining:
            return
        now = time.monotonic()
        for p in [p for p in self.draining if p.deadline <= now]:
            self.draining.discard(p)
            for pump in p.pumps:
                self.loop.remove_pump(pump)
            p.pumps.clear()
            self._final(p)

    def _final(self, p: Proc) -> None:
        if p.final:
            return
        if p.starting:  # containerd's rule: an exit is never published before its start
            p.final_pending = True
            return
        p.final = True
        c = p.cont
        _close_all(p.io.pop("_owned", []))
        if p.console >= 0:
            os.close(p.console)
            p.console = -1
        self.publish(c, "/tasks/exit", {"container_id": c.id, "id": p.exec_id or c.id, "pid": p.pid,
                                        "exit_status": p.exit_status, "exited_at": p.exited_at})
        waiters, p.waiters = p.waiters, []
        for conn, rid in waiters:
            self._reply(conn, rid, result={"exit_status": p.exit_status, "exited_at": p.exited_at})

    def _close_stdin(self, p: Proc) -> None:
        if p.stdin_pump:
            self.loop.remove_pump(p.stdin_pump)
            p.stdin_pump = 0
        if p.stdin_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(p.stdin_fd)
            p.stdin_fd = -1

    # -- events --------------------------------------------------------------------------------------

    def publish(self, c: Container, topic: str, event: dict[str, Any]) -> None:
        """The hook every event passes through: the bundle's event log, then the daemon if it listens."""
        env = {"topic": topic, "namespace": c.ns, "event": event, "timestamp": time.time()}
        try:
            fd = os.open(os.path.join(c.bundle, "events.jsonl"),
                         os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, to_json(env) + b"\n")
            finally:
                os.close(fd)
        except OSError:
            pass
        if c.publish:
            if self.event_sock is None:
                self.event_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self.event_sock.setblocking(False)
            # the daemon may be away: then it reads events.jsonl and the exit file when it comes back
            with contextlib.suppress(OSError):
                self.event_sock.sendto(msgpack.packb(env), c.publish)

    # -- RPC -----------------------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                s, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                _log(f"accept: {e}")
                return
            s.settimeout(10.0)
            c = Conn(s)
            self.conns[s.fileno()] = c
            self.loop.watch(s.fileno(), shimio.READ)

    def _drop_conn(self, c: Conn) -> None:
        fd = c.sock.fileno()
        self.loop.unwatch(fd)
        self.conns.pop(fd, None)
        _close_all(c.fds)
        c.fds = []
        for cont in self.containers.values():
            for p in (cont.init, *cont.execs.values()):
                p.waiters = [w for w in p.waiters if w[0] is not c]
        c.sock.close()

    def _read_conn(self, c: Conn) -> None:
        try:
            data, anc, _flags, _addr = c.sock.recvmsg(1 << 16, socket.CMSG_SPACE(_MAX_FDS * 4))
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        except OSError:
            self._drop_conn(c)
            return
        for level, typ, cdata in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                n = len(cdata) - len(cdata) % 4
                c.fds.extend(struct.unpack(f"{n // 4}i", cdata[:n]))
        if not data:
            self._drop_conn(c)
            return
        c.buf += data
        while len(c.buf) >= 4:
            (n,) = _HDR.unpack_from(c.buf)
            if n > _MAX_FRAME:
                self._drop_conn(c)
                return
            if len(c.buf) < 4 + n:
                break
            frame = bytes(c.buf[4:4 + n])
            del c.buf[:4 + n]
            try:
                req = msgpack.unpackb(frame)
            except Exception:
                self._drop_conn(c)
                return
            self._dispatch(c, req)
            if c.sock.fileno() < 0:
                return

    def _reply(self, c: Conn, rid: Any, result: Any = None, error: ShimError | None = None) -> None:
        msg: dict[str, Any] = {"id": rid}
        if error is not None:
            msg["error"] = {"code": error.code, "message": error.message}
        else:
            msg["result"] = result
        data = msgpack.packb(msg)
        try:
            c.sock.sendall(_HDR.pack(len(data)) + data)
        except OSError:
            if c.sock.fileno() >= 0:
                self._drop_conn(c)

    def _dispatch(self, c: Conn, req: dict[str, Any]) -> None:
        rid = req.get("id")
        method = req.get("method", "")
        params = req.get("params") or {}
        if self.debug:
            _log(f"rpc {method} {params!r}")
        nfds = int(params.get("fds", 0) or 0)
        fds, c.fds = c.fds[:nfds], c.fds[nfds:]
        handler = getattr(self, f"rpc_{method}", None)
        if handler is None:
            _close_all(fds)
            self._reply(c, rid, error=ShimError("not_implemented", f"shim: no method {method!r}"))
            return
        try:
            result = handler(params, fds, c, rid)
        except ShimError as e:
            _close_list(fds)
            self._reply(c, rid, error=e)
            return
        except Exception as e:
            _close_list(fds)
            _log(f"{method} failed: {type(e).__name__}: {e}")
            self._reply(c, rid, error=ShimError("internal", f"shim: {method}: {type(e).__name__}: {e}"))
            return
        if hasattr(result, "send"):  # a handler that runs runc: driven by the reaper, never blocking
            self._drive(result, c, rid, fds, method, None)
        elif result is not _PARKED:
            self._reply(c, rid, result=result)

    def _drive(self, gen: Generator[int, int, Any], c: Conn, rid: Any, fds: list[int], method: str,
               value: int | None) -> None:
        """Run a handler until it waits for a process (its pid) or returns (the reply)."""
        try:
            pid = gen.send(value)  # type: ignore[arg-type]
        except StopIteration as stop:
            if stop.value is not _PARKED:
                self._reply(c, rid, result=stop.value)
            return
        except ShimError as e:
            _close_list(fds)
            self._reply(c, rid, error=e)
            return
        except Exception as e:
            _close_list(fds)
            _log(f"{method} failed: {type(e).__name__}: {e}")
            self._reply(c, rid, error=ShimError("internal", f"shim: {method}: {type(e).__name__}: {e}"))
            return
        self.runc_waits[pid] = (gen, c, rid, fds, method)

    def _cont(self, params: dict[str, Any]) -> Container:
        key = (str(params.get("ns", "")), str(params.get("id", "")))
        c = self.containers.get(key)
        if c is None:
            raise ShimError("not_found", f"task {key[1]!r} not found in namespace {key[0]!r}")
        return c

    # -- runc ----------------------------------------------------------------------------------------

    def _runc(self, c: Container, args: list[str], stdio: tuple[int, int, int] | None = None,
              capture: bool = False) -> Generator[int, int, bytes]:
        """Run runc without blocking the shim: yields runc's pid, is resumed with its wait status
        (the reaper hands it over) and returns what runc printed when ``capture``.

        Use as ``out = yield from self._runc(...)`` inside an RPC handler (a generator).
        """
        t0 = time.monotonic()
        argv = [*c.runc, *args]
        log = argv[argv.index("--log") + 1]
        offset = R.log_size(log)
        null = -1
        out = -1
        if stdio is None:
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            stdio = (null, null, null)
        if capture:
            out = os.memfd_create("runc-out", os.MFD_CLOEXEC)
            stdio = (stdio[0], out, stdio[2])
        try:
            actions = [(os.POSIX_SPAWN_DUP2, fd, i) for i, fd in enumerate(stdio)]
            try:
                # the shim ignores SIGPIPE, SIGTERM ...: runc and the containers must not inherit that
                pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=actions,
                                      setsigdef=_DEFAULT_SIGNALS, setsigmask=())
            except OSError as e:
                raise ShimError("failed_precondition", f"cannot run {argv[0]!r}: {e.strerror}") from None
            status = yield pid
            output = b""
            if capture:
                os.lseek(out, 0, os.SEEK_SET)
                chunks = []
                while True:
                    b = os.read(out, 1 << 16)
                    if not b:
                        break
                    chunks.append(b)
                output = b"".join(chunks)
        finally:
            if null >= 0:
                os.close(null)
            if out >= 0:
                os.close(out)
        code = _exit_code(status)
        if self.debug:
            _log(f"runc {args[0]}: exit {code} in {(time.monotonic() - t0) * 1e3:.1f} ms")
        if code != 0:
            msg = R.last_error(log, offset) or f"runc {args[0]} exited with status {code}"
            raise ShimError(_classify(msg), msg)
        return output

    # -- stdio ---------------------------------------------------------------------------------------

    def _setup_io(self, p: Proc, io: dict[str, Any], fds: list[int]) -> tuple[int, int, int]:
        """Open the process's streams; returns the three fds for the container (to close after spawn).

        Fds the shim keeps (destinations, pump sources) go to ``io["_owned"]``.
        """
        owned: list[int] = []
        child: list[int] = []
        io["_owned"] = owned
        extras: list[tuple[int, int]] = []  # (fd, kind) added to stdout and stderr

        def received(v: Any) -> int:
            idx = int(v["fd"])
            if idx >= len(fds):
                raise ShimError("invalid_argument", "stdio fd missing from the request")
            fd = fds[idx]
            fds[idx] = -1
            return fd

        try:
            if io.get("log_uri"):
                uri = str(io["log_uri"])
                if not uri.startswith("file://"):
                    raise ShimError("invalid_argument", f"log uri {uri!r}: only file:///path is supported")
                fd = _open_append(uri[len("file://"):])
                owned.append(fd)
                extras.append((fd, shimio.RAW))
            if io.get("json_log"):
                fd = _open_append(str(io["json_log"]))
                owned.append(fd)
                extras.append((fd, shimio.JSON))
            # stdin
            v = io.get("stdin") or ""
            if isinstance(v, dict):
                src = received(v)
                if io.get("terminal"):
                    src = _private(src, os.O_RDONLY)
                    owned.append(src)
                    p.io["_stdin_src"] = src
                    child.append(-1)
                else:
                    child.append(src)
            elif v:
                path = str(v)
                mode = os.stat(path).st_mode
                if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                    src = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                    owned.append(src)
                    p.io["_stdin_src"] = src
                    child.append(-1)
                else:
                    child.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
            else:
                child.append(-2)
            # stdout, stderr
            dests: list[int] = []
            for name in ("stdout", "stderr"):
                v = io.get(name) or ""
                if isinstance(v, dict):
                    fd = received(v)
                    if io.get("terminal") or extras or io.get("copy"):
                        fd = _private(fd, os.O_WRONLY)
                elif v:
                    fd = _open_out(str(v))
                else:
                    fd = -2
                if fd >= 0:
                    _grow_pipe(fd)  # a pipe or FIFO holds 1 MiB: 16x fewer wake-ups (no-op on others)
                dests.append(fd)
            if io.get("terminal"):
                _close_all([f for f in child if f >= 0])  # the pty is the container's stdio
                for fd in dests:
                    if fd >= 0:
                        owned.append(fd)
                p.io["_term_dests"] = [(dests[0], shimio.RAW)] if dests[0] >= 0 else []
                p.io["_term_dests"] += extras
                return (-2, -2, -2)
            if child[0] == -1:
                r, w = os.pipe2(os.O_CLOEXEC)
                p.stdin_fd = w
                child[0] = r
            for i, name in enumerate(("stdout", "stderr")):
                fd = dests[i]
                if not extras and (not io.get("copy") or fd < 0):
                    child.append(fd)  # straight to the destination: no copy at all
                    continue
                if fd >= 0:
                    owned.append(fd)
                r, w = os.pipe2(os.O_CLOEXEC)
                _grow_pipe(r)
                ds = [(fd, shimio.RAW, name)] if fd >= 0 else []
                ds += [(efd, kind, name) for efd, kind in extras]
                p.io[f"_pump_{name}"] = (r, ds)
                owned.append(r)
                child.append(w)
            return (child[0], child[1], child[2])
        except OSError as e:
            _close_all(owned)
            _close_all([f for f in child if f >= 0])
            raise ShimError("invalid_argument", f"opening stdio: {e}") from None
        except ShimError:
            _close_all(owned)
            _close_all([f for f in child if f >= 0])
            raise

    def _start_pumps(self, p: Proc) -> None:
        for name in ("stdout", "stderr"):
            spec = p.io.pop(f"_pump_{name}", None)
            if spec is not None:
                p.pumps.add(self.loop.add_pump(spec[0], spec[1]))
        src = p.io.pop("_stdin_src", None)
        if src is not None:
            dst = p.console if p.console >= 0 else p.stdin_fd
            if dst >= 0:
                p.stdin_pump = self.loop.add_pump(src, [(dst, shimio.RAW, "stdin")])

    def _spawn_with_io(self, c: Container, p: Proc, io: dict[str, Any], fds: list[int],
                       args_for: Any) -> Generator[int, int, None]:
        """Open stdio, run runc (create or exec) with it, then start the copies."""
        child = self._setup_io(p, io, fds)
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        console_sock = None
        console_path = ""
        try:
            stdio = tuple(null if fd < 0 else fd for fd in child)
            if io.get("terminal"):
                self.console_seq += 1
                console_path = f"{self.address}.c{self.console_seq}"
                console_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(console_path)
                console_sock.bind(console_path)
                console_sock.listen(1)
            yield from self._runc(c, args_for(console_path), stdio=stdio)  # type: ignore[arg-type]
            if console_sock is not None:
                p.console = _recv_console(console_sock)
                dests = p.io.pop("_term_dests", [])
                if dests:
                    p.pumps.add(self.loop.add_pump(p.console, [(fd, k, "stdout") for fd, k in dests]))
                else:
                    p.pumps.add(self.loop.add_pump(p.console, []))
        except BaseException:
            _close_all(p.io.pop("_owned", []))
            if p.stdin_fd >= 0:
                os.close(p.stdin_fd)
                p.stdin_fd = -1
            raise
        finally:
            os.close(null)
            _close_all([fd for fd in set(child) if fd >= 0])
            if console_sock is not None:
                console_sock.close()
                with contextlib.suppress(OSError):
                    os.unlink(console_path)
        self._start_pumps(p)

    def _register_pid(self, p: Proc, pid: int) -> None:
        p.pid = pid
        early = self.early_exits.pop(pid, None)
        if early is not None:
            self._exited(p, *early)
        else:
            self.by_pid[pid] = p

    # -- methods -------------------------------------------------------------------------------------

    def rpc_connect(self, params: dict[str, Any], fds: list[int], conn: Conn, rid: Any) -> Any:
        return {"shim_pid": os.getpid(), "version": VERSION, "group": self.group,
                "tasks": len(self.containers)}

    def rpc_list(self, params: dict[str, Any], fds: list[int], conn: Conn, rid: Any) -> Any:
        return [c.init.state() for c in self.containers.values()]

    def rpc_create(self, params: dict[str, Any], fds: list[int], conn: Conn, rid: Any) -> Any:
        ns, id, bundle = str(params["ns"]), str(params["id"]), str(params["bundle"])
        if (ns, id) in self.containers or (ns, id) in self.creating:
            raise ShimError("already_exists", f"task {id!r} already exists in namespace {ns!r}")
        if self.exiting:
            raise ShimError("unavailable", "shim is shutting down")
        max_tasks = int(params.get("max_tasks") or 0)  # a pool's bound (0: none)
        if max_tasks > 0:
            live = len(self.creating) + sum(1 for c in self.containers.values() if c.init.status != "stopped")
            if live >= max_tasks:
                raise ShimError("resource_exhausted", f"shim already supervises {live} live task(s)")
        r = params.get("runc") or {}
        log = os.path.join(bundle, "log.json")
        c = Container(ns, id, bundle, str(params.get("group", "")),
                      R.global_args(str(r.get("binary", "runc")), str(r["root"]), log),
                      str(params.get("publish", "")), str(params.get("cgroup", "")))
        io = dict(params.get("io") or {})
        c.init.io = io
        pid_file = os.path.join(bundle, "init.pid")
        start = bool(params.get("start"))  # create and start at once (runc run --detach)
        args_for = R.run_args if start else R.create_args
        self.creating.add((ns, id))
        try:
            yield from self._spawn_with_io(c, c.init, io, fds,
                                           lambda cs: args_for(bundle, pid_file, id, cs))
        finally:
            self.creating.discard((ns, id))
            _close_list(fds)
        with open(pid_file) as f:
            pid = int(f.read().strip())
        self.containers[(ns, id)] = c
        self.had_container = True
        created = {"container_id": id, "bundle": bundle, "pid": pid,
                   "io": {k: _show(io.get(k)) for k in ("stdin", "stdout", "stderr")}
                   | {"terminal": bool(io.get("terminal"))}}
        if start:
            # both events before the pid is known to the reaper: an exit that already happened is
            # published after them, in containerd's order
            c.init.pid = pid
            c.init.status = "running"
            self.publish(c, "/tasks/create", created)
            self.publish(c, "/tasks/start", {"container_id": id, "pid": pid})
            self._register_pid(c.init, pid)
        else:
            self._register_pid(c.init, pid)
            self.publish(c, "/tasks/create", created)
        return {"pid": pid, "started": start}

    def rpc_start(self, params: dict[str, Any], fds: list[int], conn: Conn, rid: Any) -> Any:
        c = self._cont(params)
        exec_id = str(params.get("exec_id", ""))
        p = c.proc(exec_id)
        if p.status != "created" or p.starting:
            state = "starting" if p.starting else p.status
            raise ShimError("failed_precondition", f"process {exec_id or c.id!r} is {state}, not created")
        p.starting = True
        try:
            return (yield from self._start(c, p, exec_id))
        finally:
            p.starting = False
            if p.final_pending:
                p.final_pending = False
                self._final(p)

    def _start(self, c: Container, p: Proc, exec_id: str) -> Generator[int, int, Any]:
        if not exec_id:
            yield from self._runc(c, ["start", c.id])
            if p.status == "created":
                p.status = "running"
            self.publish(c, "/tasks/start", {"container_id": c.id, "pid": p.pid})
            return {"pid": p.pid}
        if c.init.status not in ("running", "paused"):
            raise ShimError("failed_precondition", f"task {c.id!r} is {c.init.status}: cannot exec in it")
        spec_file = os.path.join(c.bundle, f"exec-{exec_id}.json")
        pid_file = os.path.join(c.bundle, f"exec-{exec_id}.pid")
        import json

        write_atomic(spec_file, json.dumps(p.spec).encode(), sync=False)
        pfds = p.io.pop("_fds", [])
        try:
            yield from self._spawn_with_io(c, p, p.io, pfds,
                                           lambda cs: R.exec_args(spec_file, pid_file, c.id, cs))
        finally:
            _close_list(pfds)
            with contextlib.suppress(OSError):
                os.unlink(spec_file)
        with open(pid_file) as pf:
            pid = int(pf.read().strip())
        os.unlink(pid_file)
        p.status = "running"
        self._register_pid(p, pid)
        self.publish(c, "/tasks/exec-started", {"container_id": c.id, "exec_id": exec_id, "pid": pid})
        return {"pid": pid}

    def rpc_exec(self, params: dict[str, Any], fds: list[int], conn: Conn, rid: Any) -> Any:
        c = self._cont(params)
        exec_id = str(params.get("exec_id", ""))
        if not exec_id or "/" in exec_id or len(exec_id) > 76:
            raise ShimError("invalid_argument", f"invalid exec id {exec_id!r}")
        if exec_id in c.execs:
            raise ShimError("already_exists", f"exec {exec_id!r} already exists in task {c.id!r}")
        if c.init.status not in ("running", "paused"):
            raise ShimError("failed_precondition", f"task {c.id!r} is {c.init.status}: cannot exec in it")
        p = Proc(c, exec_id, dict(params.get("io") or {}))
        p.spec = dict(params.get("spec") or {})
        p.io["_fds"] = list(fds)
        fds.clear()
        c.execs[exec_id] = p
        self.publish(c, "/tasks/exec-added", {"container_id": c.id, "exec_id": exec_id})
        return {}

    def rpc_state(self, params: dict[str, Any], fds: list[int], conn: Conn, rid: Any) -> Any:
        c = self._cont(params)
        return c.proc(str(params.get("exec_id", ""))).state()

    def rpc_kill(self, params: dict[str, Any], fds: list[int], conn: Conn, rid: Any) -> Any:
        c = self._cont(params)
        exec_id = str(params.get("exec_id", ""))
        p = c.proc(exec_id)
        sig = int(params.get("signal", 15))
        if p.status == "stopped":
            raise ShimError("failed_precondition", f"process {exec_id or c.id!r} has already exited")
        if exec_id:
            if p.status == "created":
                raise ShimError("failed_precondition", f"exec {exec_id!r} has not started")
            os.kill(p.pid, sig)
            return {}
        try:
            yield from self._runc(c, R.kill_args(c.id, sig, bool(params.get("all"))))
        except ShimError as e:
            if R.is_not_running(e.message):
                raise ShimError("failed_precondition", f"process {c.id!r} has already exited") from None
            raise
        return {}

    def rpc_pause(self, params: dict[str, Any], fds: list[int], conn: Conn, rid: Any) -> Any:
        c = self._cont(params)
        if c.init.status != "running":
            raise ShimError("failed_precondition", f"task {c.id!r} is {c.init.status}, not running")
        yield from self._runc(c, ["pause", c.id])
        c.init.status = "paused"
        self.publish(c, "/tasks/paused", {"container_id": c.id})
        return {}

    def rpc_resume(self, params: dict[str, Any], fds: list[int], conn: Conn, rid: Any) -> Any:
        c = self._cont(params)
        if c.init.status != "paused":
            raise ShimError("failed_precondition", f"task {c.id!r} is {c.init.status}, not paused")
        yield from self._runc(c, ["resume", c.id])
        if c.init.status == "paused":
            c.init.status = "running"
        self.publish(c, "/tasks/resumed", {"container_id": c.id})
        return {}

    def rpc_pids(self, params: dict[str, Any], fds: list[int], conn: Conn, rid: Any) -> Any:
        c = self._cont(params)
        if c.init.status == "stopped":
            return []
        out = yield from self._runc(c, ["ps", "--format", "json", c.id], capture=True)
        import json

        pids = json.loads(out or b"[]") or []
        by_pid = {p.pid: p.exec_id for p in c.execs.values() if p.status != "stopped"}
        return [{"pid": pid, "info": {"exec_id": by_pid[pid]} if pid in by_pid else {}} for pid in pids]

    def rpc_stats(self, params: dict[str, Any], fds: list[int], conn: Conn, rid: Any) -> Any:
        c = self._cont(params)
        if c.init.status == "stopped":
            raise ShimError("failed_precondition", f"task {c.id!r} is stopped: no stats")
        from pyctr.plugins.runtime.runc import cgroups  # only when asked

        return cgroups.stats(c.cgroup)

    def rpc_wait(self, params: dict[str, Any], fds: list[int], conn: Conn, rid: Any) -> Any:
        c = self._cont(params)
        p = c.proc(str(params.get("exec_id", "")))
        if p.final:
            return {"exit_status": p.exit_status, "exited_at": p.exited_at}
        p.waiters.append((conn, rid))
        return _PARKED

    def rpc_resize_pty(self, params: dict[str, Any], fds: list[int], conn: Conn, rid: Any) -> Any:
        c = self._cont(params)
        p = c.proc(str(params.get("exec_id", "")))
        if p.console < 0:
            raise ShimError("failed_precondition", f"process {p.exec_id or c.id!r} has no terminal")
        import termios

        ws = struct.pack("HHHH", int(params.get("height", 24)), int(params.get("width", 80)), 0, 0)
        fcntl.ioctl(p.console, termios.TIOCSWINSZ, ws)
        return {}

    def rpc_close_stdin(self, params: dict[str, Any], fds: list[int], conn: Conn, rid: Any) -> Any:
        c = self._cont(params)
        p = c.proc(str(params.get("exec_id", "")))
        if p.stdin_pump:
            # let the copy finish what it already has, then close
            self.loop.remove_pump(p.stdin_pump)
            p.stdin_pump = 0
        self._close_stdin(p)
        return {}

    def rpc_delete(self, params: dict[str, Any], fds: list[int], conn: Conn, rid: Any) -> Any:
        c = self._cont(params)
        exec_id = str(params.get("exec_id", ""))
        force = bool(params.get("force"))
        p = c.proc(exec_id)
        if exec_id:
            if p.status == "running" and not force:
                raise ShimError("failed_precondition", f"exec {exec_id!r} is still running")
            if p.status == "running":
                os.kill(p.pid, signal.SIGKILL)
                self._wait_for(p)
            self._forget(p)
            del c.execs[exec_id]
            return p.exit_dict()
        if p.status in ("running", "paused") and not force:
            raise ShimError("failed_precondition",
                            f"task {c.id!r} is {p.status}: stop it first (kill) or delete with force")
        if p.status != "stopped" or not R.delete_stopped(c.runc[c.runc.index("--root") + 1], c.id):
            try:
                yield from self._runc(c, R.delete_args(c.id, force=force or p.status != "stopped"))
            except ShimError as e:
                if not R.is_not_exist(e.message):
                    raise
        if p.status != "stopped":
            self._wait_for(p)
        for ep in list(c.execs.values()):
            if ep.status != "stopped":
                with contextlib.suppress(OSError):
                    os.kill(ep.pid, signal.SIGKILL)
            self._forget(ep)
        self._forget(p)
        del self.containers[(c.ns, c.id)]
        self.publish(c, "/tasks/delete", {"container_id": c.id, "id": c.id, "pid": p.pid,
                                          "exit_status": p.exit_status, "exited_at": p.exited_at})
        for f in ("exit", "init.pid"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(c.bundle, f))
        return p.exit_dict()

    def _wait_for(self, p: Proc, timeout: float = 10.0) -> None:
        """Reap ``p`` synchronously (after a SIGKILL)."""
        end = time.monotonic() + timeout
        while p.status != "stopped" and time.monotonic() < end:
            self._reap()
            if p.status == "stopped":
                break
            try:
                pid, status = os.waitpid(p.pid, os.WNOHANG)
            except ChildProcessError:
                self.by_pid.pop(p.pid, None)
                self._exited(p, 137, time.time())
                break
            if pid:
                self.by_pid.pop(p.pid, None)
                self._exited(p, _exit_code(status), time.time())
                break
            time.sleep(0.002)

    def _forget(self, p: Proc) -> None:
        self.by_pid.pop(p.pid, None)
        self.draining.discard(p)
        for pump in p.pumps:
            self.loop.remove_pump(pump)
        p.pumps.clear()
        self._close_stdin(p)
        if not p.final:
            self._final(p)
        _close_all(p.io.pop("_owned", []))
        _close_all(p.io.pop("_fds", []))

    def rpc_set_publish(self, params: dict[str, Any], fds: list[int], conn: Conn, rid: Any) -> Any:
        self._cont(params).publish = str(params.get("address", ""))
        return {}

    def rpc_shutdown(self, params: dict[str, Any], fds: list[int], conn: Conn, rid: Any) -> Any:
        if self.containers and not params.get("now"):
            raise ShimError("failed_precondition", f"shim still holds {len(self.containers)} task(s)")
        self.exiting = True
        return {}


_PARKED = object()
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXFSZ,
                    signal.SIGCHLD)


_ESC = {i: f"\\u{i:04x}" for i in range(32)} | {34: '\\"', 92: "\\\\", 10: "\\n", 13: "\\r", 9: "\\t"}


def _enc(v: Any, out: list[str]) -> None:
    if isinstance(v, str):
        out.append('"' + v.translate(_ESC) + '"')
    elif v is None or isinstance(v, bool):
        out.append("null" if v is None else ("true" if v else "false"))
    elif isinstance(v, (int, float)):
        out.append(repr(v))
    elif isinstance(v, dict):
        out.append("{")
        for i, (k, x) in enumerate(v.items()):
            if i:
                out.append(",")
            _enc(str(k), out)
            out.append(":")
            _enc(x, out)
        out.append("}")
    elif isinstance(v, (list, tuple)):
        out.append("[")
        for i, x in enumerate(v):
            if i:
                out.append(",")
            _enc(x, out)
        out.append("]")
    else:
        _enc(str(v), out)


def to_json(v: Any) -> bytes:
    """JSON for the shim's plain data (the json module would pull in re: 2 MB and 5 ms per shim)."""
    out: list[str] = []
    _enc(v, out)
    return "".join(out).encode()


def _classify(message: str) -> str:
    if R.is_command_not_found(message):
        return "command_not_found"
    if R.is_not_exist(message):
        return "not_found"
    return "failed_precondition"


def _close_list(fds: list[int]) -> None:
    """Close the request's fds not handed on, and mark them closed (never twice: numbers are reused)."""
    for i, fd in enumerate(fds):
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
            fds[i] = -1


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def _open_append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


def _private(fd: int, flags: int) -> int:
    """A new open file description for a caller's pipe or terminal (``/proc/self/fd/N``), so that
    the loop's O_NONBLOCK never reaches the caller's shell.  Anything else is kept as it is: files
    (never in non-blocking mode; reopening would lose O_APPEND and the offset) and sockets."""
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
            return fd
        nfd = os.open(f"/proc/self/fd/{fd}", flags | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return fd
    os.close(fd)
    return nfd


def _open_out(path: str) -> int:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return _open_append(path)
    if stat.S_ISFIFO(mode):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno != errno.ENXIO:  # no reader yet: keep the FIFO open ourselves
                raise
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        os.set_blocking(fd, True)  # the container may get it as it is: it expects blocking writes
        return fd
    # O_APPEND (stdout and stderr may share the file); splice refuses it, so a copy goes through
    # user space
    return _open_append(path)


def _grow_pipe(fd: int) -> None:
    """Raise a pipe's capacity to 1 MiB (pipes only; anything else refuses with EBADF)."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)


def _recv_console(sock: socket.socket) -> int:
    sock.settimeout(5.0)
    conn, _ = sock.accept()
    try:
        conn.settimeout(5.0)
        _msg, anc, _f, _a = conn.recvmsg(4096, socket.CMSG_SPACE(4))
        for level, typ, data in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                fd: int = struct.unpack("i", data[:4])[0]
                os.set_inheritable(fd, False)
                return fd
    finally:
        conn.close()
    raise ShimError("internal", "runc sent no console")


def _oom_killed(cgroup: str) -> bool:
    """Whether the kernel OOM-killed a process of the container's cgroup (v1 and v2)."""
    if not cgroup:
        return False
    for path in (f"/sys/fs/cgroup/memory{cgroup}/memory.oom_control",
                 f"/sys/fs/cgroup{cgroup}/memory.events"):
        try:
            with open(path) as f:
                for line in f:
                    k, _, v = line.partition(" ")
                    if k == "oom_kill" and int(v) > 0:
                        return True
        except (OSError, ValueError):
            continue
    return False


class Zygote:
    """A warm parent that forks shims on request (``spawn``): a shim then starts in about a
    millisecond instead of an interpreter start, and shares the zygote's pages (PSS per shim falls).

    Requests use the shim framing; ``spawn`` carries the shim's listening socket as SCM_RIGHTS and
    the shim's configuration.  The shim is forked twice (so that init, not the zygote, is its parent)
    and starts a new session.  The zygote exits after ``idle`` seconds without a request, or when
    its socket path no longer leads to it.
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.address = str(cfg["address"])
        self.idle = float(cfg.get("idle", 120.0))
        self.listener = socket.socket(fileno=int(cfg["listen_fd"]))
        self.ino = os.stat(self.address).st_ino
        self.code = str(cfg.get("code", ""))
        self.state = str(cfg.get("state", ""))
        self.stale = False

    def run(self) -> None:
        import gc
        import json  # noqa: F401  (preloaded: shared by every shim forked from here)
        import termios  # noqa: F401

        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forked shims are reaped by the kernel
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        gc.collect()
        gc.freeze()  # keep the collector's hands off the pages the shims share
        _log(f"zygote serving {self.address}")
        last = time.monotonic()
        self.listener.settimeout(min(2.0, self.idle))
        while True:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                if time.monotonic() - last > self.idle or not self._still_mine():
                    break
                continue
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            last = time.monotonic()
            with conn:
                conn.settimeout(5.0)
                try:
                    self._serve(conn)
                except Exception as e:
                    _log(f"zygote: {type(e).__name__}: {e}")
            if self.stale:
                _log("zygote exiting (stale code)")
                return
        _log("zygote exiting (idle, or its state directory is gone)")
        with contextlib.suppress(OSError):
            if self._sock_is_mine():
                os.unlink(self.address)

    def _still_mine(self) -> bool:
        """The socket path still leads here, and the state directory it serves still exists."""
        return self._sock_is_mine() and (not self.state or os.path.isdir(self.state))

    def _sock_is_mine(self) -> bool:
        try:
            return os.stat(self.address).st_ino == self.ino
        except OSError:
            return False

    def _serve(self, conn: socket.socket) -> None:
        data, anc, _f, _a = conn.recvmsg(1 << 16, socket.CMSG_SPACE(4 * _MAX_FDS))
        fds: list[int] = []
        for level, typ, cdata in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                n = len(cdata) - len(cdata) % 4
                fds.extend(struct.unpack(f"{n // 4}i", cdata[:n]))
        try:
            while len(data) < 4 or len(data) < 4 + _HDR.unpack_from(data)[0]:
                more = conn.recv(1 << 16)
                if not more:
                    return
                data += more
            req = msgpack.unpackb(data[4:4 + _HDR.unpack_from(data)[0]])
            rid = req.get("id")
            if req.get("method") == "connect":
                reply: dict[str, Any] = {"id": rid, "result": {"zygote_pid": os.getpid()}}
            elif req.get("method") == "spawn" and req["params"].get("code") != self.code:
                # pyctr was upgraded (or edited) since this zygote started: make way for a new one
                reply = {"id": rid, "error": {"code": "failed_precondition", "message": "zygote: stale code"}}
                with contextlib.suppress(OSError):
                    if self._sock_is_mine():
                        os.unlink(self.address)
                self.stale = True
            elif req.get("method") == "spawn" and len(fds) == 1:
                cfg = dict(req["params"]["cfg"])
                cfg["listen_fd"] = fds[0]
                pid = self._fork_shim(cfg)
                reply = {"id": rid, "result": {"pid": pid}}
            else:
                reply = {"id": rid, "error": {"code": "invalid_argument", "message": "zygote: bad request"}}
            out = msgpack.packb(reply)
            conn.sendall(_HDR.pack(len(out)) + out)
        finally:
            _close_all(fds)

    def _fork_shim(self, cfg: dict[str, Any]) -> int:
        """Fork a shim (one fork: the zygote ignores SIGCHLD, so the kernel reaps its shims; a shim
        whose zygote is gone belongs to init)."""
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                self.listener.close()
                log = cfg.get("log")
                if log:
                    fd = os.open(str(log), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                    os.dup2(fd, 2)
                    os.close(fd)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                Shim(cfg).run()
            finally:
                os._exit(0)
        return pid


def main(cfg: dict[str, Any] | str) -> None:
    """Run a shim (or a zygote, ``cfg["zygote"]``); ``cfg`` is its configuration (or that as hex
    msgpack, from the command line)."""
    if isinstance(cfg, str):
        cfg = msgpack.unpackb(bytes.fromhex(cfg))
    assert isinstance(cfg, dict)
    if cfg.get("zygote"):
        os.umask(0o022)
        Zygote(cfg).run()
        os._exit(0)
    os.umask(0o022)
    Shim(cfg).run()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
