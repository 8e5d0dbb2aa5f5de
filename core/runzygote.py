"""The run zygote: a warm, pre-imported Python that ``pyctr run`` hands its work to.

Starting a container costs runc a few milliseconds; importing pyctr's modules costs Python several
times that, on every ``pyctr run``.  After a ``run`` has done its work in-process, it leaves a zygote
behind for its state directory (``<state>/pyctr.runner/zygote.sock``): a ``python -I`` that imported
every module that run needed, then waits.  The next ``pyctr run`` with the same state connects, passes
its argv, environment, working directory and stdin/stdout/stderr (SCM_RIGHTS), and the zygote forks a
child that runs the command exactly as the CLI would (:func:`pyctr.runner.fast_main`) while the CLI
forwards signals to it and exits with the status the child reports.  The child opens its own database
connections and initialises the plugins itself: nothing but imported code is shared.

Safety: the socket is 0600 in a 0700 directory and the zygote serves only its own uid (SO_PEERCRED);
it refuses to fork (and exits) once any source file it imported has changed, so a new version of pyctr
is never served by an old one; it exits after ``idle`` seconds without a request or when its socket is
removed.  ``PYCTR_NO_ZYGOTE=1`` turns it off; a daemon address (``--address``) never uses it.  When the
zygote cannot be reached, or refuses, the CLI runs the command itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import sys

TYPE_CHECKING = False  # not typing's: this is on the client side of every ``pyctr run``
if TYPE_CHECKING:
    from typing import Any

MARKER = "pyctr-run-zygote"
#: The signals a client forwards to the zygote's child (blocked in the zygote across each fork, so one
#: that reaches the child before it has set its handlers waits for them instead of being lost).
_FORWARDED = (2, 15, 1, 3, 28)  # SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH
DEFAULT_IDLE = 30.0
_HDR = struct.Struct(">I")
_SUN_MAX = 100

_BOOT = (
    "import sys,json,os\n"
    "c=json.loads(sys.stdin.read())\n"
    "n=os.open(os.devnull,os.O_RDONLY);os.dup2(n,0);os.close(n)\n"
    "sys.path[:0]=[p for p in c['path'] if p not in sys.path]\n"
    "from pyctr.runzygote import serve\n"
    "serve(c)\n"
)


def socket_path(state: str) -> str:
    d = os.path.join(os.path.abspath(state), "pyctr.runner")
    p = os.path.join(d, "zygote.sock")
    if len(p) > _SUN_MAX:
        import hashlib

        h = hashlib.sha256(os.path.abspath(state).encode()).hexdigest()[:16]
        p = f"/tmp/pyctr-z-{h}.sock"
    return p


def pid_path(sock: str) -> str:
    return sock + ".pid"


def _code_identity() -> list[str]:
    """Which interpreter and which pyctr: a zygote serves only clients that would run the same code."""
    from . import __file__ as init_file

    return [os.path.realpath(sys.executable), os.path.realpath(init_file)]


# -- client side -------------------------------------------------------------------------------------

def _read_messages(s: socket.socket) -> Any:
    buf = b""
    while True:
        try:
            chunk = s.recv(4096)
        except InterruptedError:
            continue
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            with contextlib.suppress(ValueError):
                yield json.loads(line)


def try_run(state: str, argv: list[str]) -> int | None:
    """Run ``argv`` in the state directory's zygote; its exit status, or ``None`` when there is no
    zygote to use (the caller then runs the command itself).

    Signals (Ctrl-C, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH) are caught from before the request goes out
    and forwarded to the zygote's child once it exists: one that arrives in between is not lost (nor
    the command left running with nobody to stop it); if the zygote then does not take the command,
    an interruption ends this one (130) rather than running it here."""
    import signal

    path = socket_path(state)
    child = 0
    pending: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        if child:
            with contextlib.suppress(OSError):
                os.kill(child, signum)
        else:
            pending.append(signum)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    served = False
    try:
        rv = _request(path, argv)
        if rv is None:
            return None
        s = rv
        try:
            for msg in _read_messages(s):
                if "refused" in msg:
                    return None
                if "pid" in msg:
                    child = int(msg["pid"])
                    served = True
                    for signum in pending:
                        with contextlib.suppress(OSError):
                            os.kill(child, signum)
                    pending.clear()
                if "exit" in msg:
                    return int(msg["exit"])
        finally:
            s.close()
        if not child:
            return None  # the zygote went away before forking: nothing has been done yet
        print("pyctr: the run zygote's child ended without an exit status", file=sys.stderr)
        return 255
    finally:
        if not served:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if any(sig != signal.SIGWINCH for sig in pending):
                print("pyctr: interrupted", file=sys.stderr)
                os._exit(130)


def _request(path: str, argv: list[str]) -> socket.socket | None:
    """Connect to the zygote at ``path`` and send it ``argv`` with this process's stdio; None when no
    zygote listens."""
    import array

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.connect(path)
    except OSError:
        s.close()
        return None
    umask = os.umask(0o022)
    os.umask(umask)
    payload = json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd(), "umask": umask,
                          "code": _code_identity()}).encode()
    fds = array.array("i", [0, 1, 2])
    try:
        s.sendmsg([_HDR.pack(len(payload)) + payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
    except OSError:
        s.close()
        return None
    return s


def spawn(state: str, modules: list[str], idle: float = DEFAULT_IDLE) -> None:
    """Start a zygote for ``state`` (in the background) that imports ``modules``; quietly nothing when
    one is already listening or it cannot be started."""
    import subprocess

    path = socket_path(state)
    d = os.path.dirname(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        try:
            sock.bind(path)
        except OSError:
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
                return  # one is there
            except OSError:
                pass
            finally:
                probe.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(64)
        cfg = {"marker": MARKER, "address": path, "listen_fd": sock.fileno(), "idle": idle,
               "modules": modules, "path": [p for p in sys.path if p]}
        # the configuration goes through a pipe: no path of the caller's shows in the command line
        p = subprocess.Popen(
            [os.path.realpath(sys.executable), "-I", "-c", _BOOT, MARKER],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(sock.fileno(),), start_new_session=True, cwd="/",
        )
        assert p.stdin is not None
        with contextlib.suppress(OSError):
            p.stdin.write(json.dumps(cfg).encode())
        with contextlib.suppress(OSError):
            p.stdin.close()
    except OSError:
        pass
    finally:
        sock.close()


def stop(state: str) -> None:
    """Stop the state directory's zygote (tests; it otherwise exits when idle)."""
    import signal

    path = socket_path(state)
    with contextlib.suppress(OSError, ValueError), open(pid_path(path)) as f:
        os.kill(int(f.read().strip()), signal.SIGTERM)
    with contextlib.suppress(OSError):
        os.unlink(path)


# -- the zygote --------------------------------------------------------------------------------------

def _source_mtimes() -> dict[str, int]:
    out: dict[str, int] = {}
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if f and (name == "pyctr" or name.startswith("pyctr.")):
            with contextlib.suppress(OSError):
                out[f] = os.stat(f).st_mtime_ns
    return out


def _stale(mtimes: dict[str, int]) -> bool:
    for f, m in mtimes.items():
        try:
            if os.stat(f).st_mtime_ns != m:
                return True
        except OSError:
            return True
    return False


def _preload(modules: list[str]) -> None:
    import importlib

    for name in modules:
        if name == "__main__" or name.startswith("__mp_"):
            continue
        with contextlib.suppress(BaseException):
            importlib.import_module(name)
    with contextlib.suppress(BaseException):
        from . import mount

        mount._lib()  # load libc now rather than in every child
    with contextlib.suppress(BaseException):
        from . import registry, runner

        # plugin modules found and registered, for the child's engine to take
        registry.PREBUILT_PLUGIN_MANAGER[:] = [runner.quick_plugin_manager()]


def serve(cfg: dict[str, Any]) -> None:
    """The zygote's main loop (see the module docstring)."""
    import signal
    import time

    _preload(list(cfg.get("modules") or []))
    path = str(cfg["address"])
    idle = float(cfg.get("idle") or DEFAULT_IDLE)
    listener = socket.socket(fileno=int(cfg["listen_fd"]))
    listener.settimeout(1.0)
    try:
        ino = os.stat(path).st_ino
    except OSError:
        return
    with contextlib.suppress(OSError), open(pid_path(path), "w") as f:
        f.write(str(os.getpid()))
    mtimes = _source_mtimes()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    children: set[int] = set()
    last = time.monotonic()
    try:
        while True:
            for pid in list(children):
                with contextlib.suppress(ChildProcessError):
                    done, _ = os.waitpid(pid, os.WNOHANG)
                    if not done:
                        continue
                children.discard(pid)
            try:
                if os.stat(path).st_ino != ino:
                    return  # our socket was removed or replaced
            except OSError:
                return
            if not children and time.monotonic() - last > idle:
                return
            try:
                conn, _ = listener.accept()
            except (TimeoutError, InterruptedError):
                continue
            last = time.monotonic()
            with conn:
                stale = _stale(mtimes)
                pid = _handle(conn, listener, refuse=stale)
                if pid:
                    children.add(pid)
            if stale:
                return
    finally:
        for p in (path, pid_path(path)):
            with contextlib.suppress(OSError):
                if p != path or os.stat(path).st_ino == ino:
                    os.unlink(p)


def _recv_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    import array

    conn.settimeout(10.0)
    fds = array.array("i")
    msg, anc, _flags, _addr = conn.recvmsg(_HDR.size, socket.CMSG_LEN(3 * fds.itemsize))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    if len(msg) < _HDR.size:
        raise OSError("short request")
    (n,) = _HDR.unpack(msg)
    body = b""
    while len(body) < n:
        chunk = conn.recv(n - len(body))
        if not chunk:
            raise OSError("short request")
        body += chunk
    return json.loads(body), list(fds)


def _send(conn: socket.socket, obj: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps(obj).encode() + b"\n")


def _handle(conn: socket.socket, listener: socket.socket, *, refuse: bool) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    try:
        req, fds = _recv_request(conn)
    except (OSError, ValueError):
        return 0
    try:
        if refuse or uid != os.getuid() or len(fds) != 3 or req.get("code") != _code_identity():
            _send(conn, {"refused": "stale" if refuse else "not served"})
            return 0
        import signal

        signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
        try:
            pid = os.fork()
            if pid == 0:
                listener.close()
                _child(conn, req, fds)  # never returns; unblocks the signals once its handlers are set
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
        _send(conn, {"pid": pid})
        return pid
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def _child(conn: socket.socket, req: dict[str, Any], fds: list[int]) -> None:
    import io
    import signal

    rc = 255
    try:
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD, signal.SIGWINCH):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a fresh interpreter
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)  # a signal that came meanwhile lands now
        conn.settimeout(None)
        os.chdir(str(req.get("cwd") or "/"))
        os.umask(int(req.get("umask", 0o022)))
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in dict(req.get("env") or {}).items()})
        from . import runner

        runner.IN_ZYGOTE_CHILD = True
        runner._T0 = 0.0
        runner.trace("zygote child")
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                      line_buffering=os.isatty(1), write_through=False)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                      errors="backslashreplace", line_buffering=True)
        from .runner import fast_main

        argv = [str(a) for a in req.get("argv") or []]
        got = fast_main(argv, close=False)
        if got is None:  # a command without a fast path (``batch run``): the typer application
            from .cli import main as cli_main

            got = cli_main(argv)
        rc = got if isinstance(got, int) else 0
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:  # Ctrl-C before the command's own handling began
        with contextlib.suppress(Exception):
            print("pyctr: interrupted", file=sys.stderr)
        rc = 130
    except BaseException as e:  # report instead of dying silently
        with contextlib.suppress(Exception):
            print(f"pyctr: {type(e).__name__}: {e}", file=sys.stderr)
        rc = 1
    finally:
        for f in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                f.flush()
        _send(conn, {"exit": rc})
        os._exit(rc)
