"""What ``pyctr run``, ``exec``, ``logs`` and ``tasks start``/``attach`` do, without the CLI framework.

``run`` makes a container from an image (pulling and unpacking it first when it is missing), starts
its task and, unless detached, attaches: the container's stdout and stderr are the caller's own file
descriptors (no copy), stdin with ``-i``, a real pty with ``-t`` (raw mode, window size forwarded on
SIGWINCH), SIGINT/SIGTERM/SIGHUP/SIGQUIT forwarded to the container.  It returns the container's exit
status.  On any failure what was made so far (task, snapshot, record) is removed, in reverse order.

:func:`fast_main` parses ``pyctr [global options] run ...`` by hand and runs it with nothing but the
core: the typer app (and the pydantic machinery typer builds for every parameter) costs more than
starting a container, and ``run --rm`` must be as quick as ``ctr run --rm``.  Anything it does not
recognise (``--help``, an unknown flag, a malformed value) goes to the typer app, which reports it.
The typer commands in :mod:`pyctr.cli.run` share :data:`RUN_OPTIONS` and call the same functions.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable

TYPE_CHECKING = False  # not typing's: the client side of ``pyctr run`` does without importing typing

if TYPE_CHECKING:
    from typing import Any

    from .client import Client
    from .oci import RunOptions
    from .runtime import ProcessIO, Task

SERVICE_ID = "pyctr.containers.metadata"

_T0 = 0.0


def trace(what: str) -> None:
    """With ``PYCTR_TRACE_RUN=1``, print the milliseconds since the process started to stderr (a cheap
    timeline of ``run`` for latency work)."""
    if os.environ.get("PYCTR_TRACE_RUN"):
        import time

        global _T0
        now = time.perf_counter()
        if not _T0:
            _T0 = now
        print(f"[trace {os.getpid()}] {1000 * (now - _T0):7.1f} ms  {what}", file=sys.stderr)

_L = list[str] | None
#: (parameter, default, type, flag spellings, help) of the options ``run`` and ``containers create`` share.
RUN_OPTIONS: list[tuple[str, Any, Any, tuple[str, ...], str]] = [
    ("tty", False, bool, ("--tty", "-t"), "Allocate a pty for the container."),
    ("env", None, _L, ("--env", "-e"), "Set KEY=VALUE (KEY alone: take it from here, or unset it)."),
    ("env_file", None, _L, ("--env-file",), "Read variables from a file."),
    ("workdir", "", str, ("--workdir", "-w", "--cwd"), "Working directory inside."),
    ("user", "", str, ("--user", "-u"), "USER[:GROUP] or UID[:GID]."),
    ("entrypoint", None, str | None, ("--entrypoint",), "Replace the image's entrypoint ('' clears it)."),
    ("mount", None, _L, ("--mount",),
     "type=bind,src=HOST,dst=PATH[,options=rbind:ro] (or type=tmpfs,dst=PATH)."),
    ("volume", None, _L, ("--volume", "-v"), "HOST:PATH[:ro] bind mount."),
    ("read_only", False, bool, ("--read-only",), "Mount the rootfs read-only."),
    ("hostname", "", str, ("--hostname",), "The container's host name."),
    ("net", "none", str, ("--net", "--network"),
     "none (own namespace, lo only), host, or a network (bridge: the default one; pyctr network ls)."),
    ("publish", None, _L, ("--publish", "-p"),
     "Publish a port: [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp] (joins the default network without --net)."),
    ("net_host", False, bool, ("--net-host",), "Same as --net host (ctr's spelling)."),
    ("privileged", False, bool, ("--privileged",), "All capabilities, host devices, no seccomp or masks."),
    ("cap_add", None, _L, ("--cap-add",), "Add a capability (or ALL)."),
    ("cap_drop", None, _L, ("--cap-drop",), "Drop a capability (or ALL)."),
    ("memory", "", str, ("--memory", "-m", "--memory-limit"), "Memory limit (bytes, or 64m, 1g ...)."),
    ("cpus", "", str, ("--cpus",), "CPU quota in CPUs (0.5, 2)."),
    ("pids_limit", None, int | None, ("--pids-limit",), "Most processes at once."),
    ("label", None, _L, ("--label",), "KEY=VALUE label on the container."),
    ("security_opt", None, _L, ("--security-opt",), "seccomp=unconfined turns the seccomp profile off."),
    ("log_uri", "", str, ("--log-uri",), "Also append the output here (file:///path)."),
    ("snapshotter", "", str, ("--snapshotter",), "Snapshotter for the rootfs."),
    ("runtime", "", str, ("--runtime",), "Runtime plugin (default pyctr.runtime.runc)."),
]
#: ``run``'s own options: (parameter, default, type, flags, help).
RUN_ONLY_OPTIONS: list[tuple[str, Any, Any, tuple[str, ...], str]] = [
    ("rm", False, bool, ("--rm",), "Remove the container when it exits."),
    ("detach", False, bool, ("--detach", "-d"), "Start it and return."),
    ("interactive", False, bool, ("--interactive", "-i"), "Keep stdin open."),
    ("name", "", str, ("--name",), "Container id (default: 12 random hex digits)."),
]


def parse_labels(items: list[str]) -> dict[str, str]:
    from .errdefs import InvalidArgument

    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise InvalidArgument(f"invalid label {item!r}: want KEY=VALUE")
        out[key] = value if sep else ""
    return out


def build_run_options(flags: dict[str, Any], args: list[str] | None) -> tuple[RunOptions, dict[str, str]]:
    """``(RunOptions, container labels)`` from the shared flags and the command after the image."""
    from . import oci
    from .errdefs import InvalidArgument

    env: list[str] = []
    for f in flags.get("env_file") or []:
        env.extend(oci.parse_env_file(f))
    env.extend(flags.get("env") or [])
    mounts = [oci.parse_mount(m) for m in flags.get("mount") or []]
    mounts += [oci.parse_volume(v) for v in flags.get("volume") or []]
    seccomp = True
    for so in flags.get("security_opt") or []:
        key, _, value = so.partition("=")
        if key == "seccomp" and value == "unconfined":
            seccomp = False
        elif key != "no-new-privileges":
            raise InvalidArgument(f"unsupported --security-opt {so!r} (supported: seccomp=unconfined)")
    entry = flags.get("entrypoint")
    net = "host" if flags.get("net_host") else (flags.get("net") or "none")
    ro = oci.RunOptions(
        args=list(args or []),
        entrypoint=None if entry is None else ([entry] if entry else []),
        env=oci.expand_host_env(env),
        workdir=flags.get("workdir") or "",
        user=flags.get("user") or "",
        mounts=mounts,
        read_only=bool(flags.get("read_only")),
        hostname=flags.get("hostname") or "",
        net=net,
        publish=list(flags.get("publish") or []),
        privileged=bool(flags.get("privileged")),
        cap_add=list(flags.get("cap_add") or []),
        cap_drop=list(flags.get("cap_drop") or []),
        memory=oci.parse_size(flags["memory"]) if flags.get("memory") else None,
        cpus=oci.parse_cpus(flags["cpus"]) if flags.get("cpus") else None,
        pids_limit=flags.get("pids_limit"),
        tty=bool(flags.get("tty")),
        seccomp=seccomp,
    )
    return ro, parse_labels(flags.get("label") or [])


def service(client: Client) -> Any:
    return client.plugin("service", SERVICE_ID)


def ensure_image(client: Client, ns: str, image: str) -> None:
    """Pull ``image`` when the namespace does not have it (through the distribution plugin) and unpack
    it."""
    from .errdefs import NotFound, PyctrError

    images = client.plugin("images")
    try:
        images.resolve(ns, image)
        return
    except NotFound:
        pass
    from .reference import parse

    parse(image)  # a malformed reference is an InvalidArgument, not a pull attempt
    try:
        client.plugin("distribution")
    except PyctrError as e:
        raise NotFound(f"image {image!r} not found in namespace {ns!r} and cannot be pulled: {e}") from None
    print(f"pulling {image} ...", file=sys.stderr)
    for _ in images.pull(ns, image):  # fetch, unpack, then the record (in the daemon when remote)
        pass


# -- attaching to a task -----------------------------------------------------------------------------

class Attach(contextlib.ExitStack):
    """Terminal raw mode, signal forwarding and window-size forwarding while a process runs."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty and os.isatty(0)
        self.task: Task | None = None
        self.exec_id = ""

    def setup_signals(self) -> None:
        import signal

        def forward(signum: int, _frame: Any) -> None:
            t = self.task
            if t is not None:
                with contextlib.suppress(Exception):
                    sig = signum
                    if not self.exec_id:
                        from .signals import effective_signal

                        sig = effective_signal(t.pid, signum)
                    t.kill(sig, exec_id=self.exec_id)

        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            old = signal.signal(s, forward)
            self.callback(signal.signal, s, old)
        if self.tty:
            def winch(_signum: int, _frame: Any) -> None:
                self.resize()

            old = signal.signal(signal.SIGWINCH, winch)
            self.callback(signal.signal, signal.SIGWINCH, old)

    def raw(self) -> None:
        if not self.tty:
            return
        import termios
        import tty as _tty

        saved = termios.tcgetattr(0)
        _tty.setraw(0)
        self.callback(termios.tcsetattr, 0, termios.TCSADRAIN, saved)

    def resize(self) -> None:
        t = self.task
        if t is None or not self.tty:
            return
        with contextlib.suppress(Exception):
            size = os.get_terminal_size(0)
            t.resize_pty(size.columns, size.lines, exec_id=self.exec_id)


def foreground_io(interactive: bool, tty: bool, json_log: str = "", log_uri: str = "") -> ProcessIO:
    from .runtime import ProcessIO

    return ProcessIO(stdin=0 if interactive else "", stdout=1, stderr=2, terminal=tty, json_log=json_log,
                     log_uri=log_uri)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class FifoIO:
    """The stdio of a process a daemon runs: FIFOs in a private temporary directory that the shim opens,
    copied to and from this process's own stdin, stdout and stderr (file descriptors cannot cross the
    daemon's socket).  The read ends are open before the task is created, so the shim's non-blocking
    opens find a reader; stdin is written once the shim has opened its end."""

    def __init__(self, interactive: bool, tty: bool) -> None:
        import tempfile

        self.dir = tempfile.mkdtemp(prefix="pyctr-fifo-")
        self.paths: dict[str, str] = {}
        for name in ["stdout", *([] if tty else ["stderr"]), *(["stdin"] if interactive else [])]:
            path = os.path.join(self.dir, name)
            os.mkfifo(path, 0o600)
            self.paths[name] = path
        self.tty = tty
        self._readers = {n: os.open(self.paths[n], os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                         for n in ("stdout", "stderr") if n in self.paths}
        self._threads: list[Any] = []

    def process_io(self, json_log: str = "", log_uri: str = "") -> ProcessIO:
        from .runtime import ProcessIO

        return ProcessIO(stdin=self.paths.get("stdin", ""), stdout=self.paths["stdout"],
                         stderr=self.paths.get("stderr", ""), terminal=self.tty, json_log=json_log,
                         log_uri=log_uri)

    def start(self) -> None:
        import threading

        for name, fd in self._readers.items():
            t = threading.Thread(target=self._copy_out, args=(fd, 1 if name == "stdout" else 2), daemon=True)
            t.start()
            self._threads.append(t)
        if "stdin" in self.paths:
            threading.Thread(target=self._copy_in, daemon=True).start()

    @staticmethod
    def _copy_out(fd: int, dst: int) -> None:
        import select

        poller = select.poll()
        poller.register(fd, select.POLLIN)
        try:
            while True:
                poller.poll()  # returns once a writer has written, or has come and gone
                try:
                    data = os.read(fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not data:
                    return
                _write_all(dst, data)
        except OSError:
            return
        finally:
            os.close(fd)

    def _copy_in(self) -> None:
        try:
            fd = os.open(self.paths["stdin"], os.O_WRONLY | os.O_CLOEXEC)  # once the shim reads
        except OSError:
            return
        try:
            while True:
                data = os.read(0, 1 << 16)
                if not data:
                    return
                _write_all(fd, data)
        except OSError:
            return
        finally:
            os.close(fd)

    def finish(self, timeout: float = 10.0) -> None:
        """Wait for the output to drain (the shim closes its ends when the process is deleted), then
        remove the FIFOs; a reader or writer still waiting is released first."""
        import time

        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for name, path in self.paths.items():
            flags = os.O_RDONLY if name == "stdin" else os.O_WRONLY
            with contextlib.suppress(OSError):
                os.close(os.open(path, flags | os.O_NONBLOCK))  # release a thread blocked on the other end
        for t in self._threads:
            t.join(1.0)
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


def attached(task: Task, tty: bool, exec_id: str = "", on_started: Callable[[], None] | None = None, *,
             started: bool = False) -> int:
    """Start the created process (unless ``started``) attached to this terminal, forward signals and
    resizes, and return its exit status."""
    with Attach(tty) as att:
        att.task, att.exec_id = task, exec_id
        att.setup_signals()
        att.raw()
        att.resize()  # the pty exists once the process is created: size it before it runs, as ctr does
        if not started:
            task.start(exec_id)
        if on_started is not None:
            on_started()
        if exec_id:
            att.resize()  # an exec's pty only exists once it has started
        while True:
            try:
                return int(task.wait(exec_id=exec_id).exit_status)
            except InterruptedError:
                continue


def new_id() -> str:
    import secrets

    return secrets.token_hex(6)


def cleanup(svc: Any, ns: str, cid: str, *, remove_container: bool, task: Task | None = None) -> None:
    """Delete the task (and the container with its snapshot); errors here must not hide the first."""
    if task is not None:
        try:
            task.delete(force=True)
        except Exception as e:
            import logging

            logging.getLogger("pyctr.cli").debug("deleting task %s: %s", cid, e)
        trace("task deleted")
        if not remove_container:
            svc.release_network(ns, cid, quiet=True)
    if remove_container:
        try:
            svc.delete_container(ns, cid, force=True)
        except Exception as e:
            print(f"pyctr: cleaning up container {cid}: {e}", file=sys.stderr)


def run_task_attached(svc: Any, ns: str, cid: str, task: Task, tty: bool, *, remove_container: bool,
                      already_started: bool = False) -> int:
    """Start a created task (unless ``already_started``) attached to this terminal; always delete the task
    afterwards (and the container when asked, or when the start failed)."""
    started: list[bool] = []
    try:
        return attached(task, tty, on_started=lambda: started.append(True), started=already_started)
    finally:
        trace("exited")
        cleanup(svc, ns, cid, remove_container=remove_container or not started, task=task)
        trace("cleaned up")


def log_file(svc: Any, ns: str, cid: str) -> str:
    p = svc.log_path(ns, cid)
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return str(p)


def run_container(client: Client, ns: str, image: str, args: list[str] | None, *, rm: bool = False,
                  detach: bool = False, interactive: bool = False, name: str = "",
                  flags: dict[str, Any] | None = None) -> int:
    """``pyctr run``: the exit status of the container (0 after starting a detached one)."""
    from .errdefs import InvalidArgument

    flags = flags or {}
    if rm and detach:
        raise InvalidArgument("--rm and --detach cannot be used together")
    ro, labels = build_run_options(flags, args)
    trace("options")
    svc = service(client)
    trace("service")
    cid = name or new_id()
    ensure_image(client, ns, image)
    trace("image")
    svc.create_container(ns, cid, image, ro.to_dict(), snapshotter=flags.get("snapshotter") or None,
                         runtime=flags.get("runtime") or "", labels=labels)
    trace("container created")
    log_uri = flags.get("log_uri") or ""
    try:
        if detach:
            from .runtime import ProcessIO

            io = ProcessIO(json_log=log_file(svc, ns, cid), log_uri=log_uri, terminal=ro.tty)
            svc.start_task(ns, cid, io)
            print(cid)
            return 0
        json_log = "" if rm else log_file(svc, ns, cid)
        fifos = FifoIO(interactive, ro.tty) if client.remote else None
        if fifos is not None:
            fifos.start()
            io = fifos.process_io(json_log, log_uri)
        else:
            io = foreground_io(interactive, ro.tty, json_log, log_uri)
        # Without a tty nothing has to happen between create and start (a pty is sized in between):
        # create and start in one runc invocation.
        one_step = not ro.tty
        try:
            task = svc.create_task(ns, cid, io, start=True) if one_step else svc.create_task(ns, cid, io)
        except BaseException:
            if fifos is not None:
                fifos.finish(0)
            raise
        trace("task created")
    except BaseException:
        cleanup(svc, ns, cid, remove_container=True)
        raise
    try:
        return run_task_attached(svc, ns, cid, task, ro.tty, remove_container=rm, already_started=one_step)
    finally:
        if fifos is not None:
            fifos.finish()


def exec_in_container(client: Client, ns: str, container: str, args: list[str], *, detach: bool = False,
                      interactive: bool = False, tty: bool = False, exec_id: str = "", cwd: str = "",
                      user: str = "", env: list[str] | None = None) -> int:
    """``pyctr exec``: the exit status of the process (0 after starting a detached one)."""
    from .oci import expand_host_env
    from .runtime import ProcessIO

    svc = service(client)
    fifos = FifoIO(interactive, tty) if client.remote and not detach else None
    if fifos is not None:
        fifos.start()
        io = fifos.process_io()
    else:
        io = ProcessIO() if detach else foreground_io(interactive, tty)
    try:
        task, eid = svc.exec_process(ns, container, list(args), io, exec_id=exec_id, tty=tty,
                                     env=expand_host_env(env or []), cwd=cwd, user=user)
    except BaseException:
        if fifos is not None:
            fifos.finish(0)
        raise
    if detach:
        try:
            task.start(eid)
        except BaseException:
            with contextlib.suppress(Exception):
                task.delete(exec_id=eid, force=True)
            raise
        print(eid)
        return 0
    try:
        return attached(task, tty, eid)
    finally:
        with contextlib.suppress(Exception):
            task.delete(exec_id=eid, force=True)
        if fifos is not None:
            fifos.finish()


def follow_log(path: str, *, follow: bool, tail: int | None, running: Callable[[], bool],
               timestamps: bool = False) -> None:
    """Print a docker json-file log (``{"log", "stream", "time"}`` lines) to stdout and stderr; with
    ``follow``, keep reading until ``running()`` is false and the file has no more."""
    import json
    import time

    def emit(line: bytes) -> None:
        try:
            rec = json.loads(line)
        except ValueError:
            return
        text = str(rec.get("log", ""))
        if timestamps:
            text = f"{rec.get('time', '')} {text}"
        out = sys.stderr if rec.get("stream") == "stderr" else sys.stdout
        out.write(text)
        out.flush()

    try:
        f = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        if not follow:
            return
        while not os.path.exists(path):
            if not running():
                return
            time.sleep(0.05)
        f = open(path, "rb")  # noqa: SIM115
        tail = None  # the log appeared after we started: all of it is new
    with f:
        lines = f.read().split(b"\n")
        partial = lines.pop()
        if tail is not None:
            lines = lines[-tail:] if tail > 0 else []
        for line in lines:
            if line:
                emit(line)
        if not follow:
            return
        idle = 0.0
        while True:
            chunk = f.read()
            if chunk:
                partial += chunk
                *done, partial = partial.split(b"\n")
                for line in done:
                    if line:
                        emit(line)
                idle = 0.0
                continue
            if idle >= 0.2:
                idle = 0.0
                if not running():
                    rest = f.read()
                    if rest:
                        partial += rest
                        continue
                    return
            time.sleep(0.05)
            idle += 0.05


def show_logs(client: Client, ns: str, container: str, *, follow: bool = False, tail: int | None = None,
              timestamps: bool = False) -> None:
    from .errdefs import NotFound

    svc = service(client)
    svc.get(ns, container)

    def running() -> bool:
        try:
            return str(svc.get_task(ns, container).state().status) in ("running", "paused", "created")
        except NotFound:
            return False

    follow_log(str(svc.log_path(ns, container)), follow=follow, tail=tail, running=running,
               timestamps=timestamps)


# -- the fast path ---------------------------------------------------------------------------------

def entry_points(group: str) -> list[tuple[str, str]]:
    """``(name, value)`` of the entry points in ``group`` of every distribution on ``sys.path``, read
    straight from ``*.dist-info/entry_points.txt`` (the first distribution of a name wins, as
    :mod:`importlib.metadata` decides).  Importing :mod:`importlib.metadata` alone (it pulls in the
    ``email`` package) costs more than this whole scan."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for base in sys.path:
        base = base or "."
        try:
            names = sorted(os.listdir(base))
        except OSError:
            continue
        for n in names:
            if not n.endswith((".dist-info", ".egg-info")):
                continue
            dist = n.rsplit(".", 1)[0].split("-", 1)[0].lower().replace(".", "_").replace("-", "_")
            if dist in seen:
                continue
            seen.add(dist)
            try:
                with open(os.path.join(base, n, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                continue
            section = ""
            for line in text.splitlines():
                line = line.strip()
                if not line or line[0] in "#;":
                    continue
                if line.startswith("["):
                    section = line.strip("[]").strip()
                elif section == group and "=" in line:
                    name, value = line.split("=", 1)
                    out.append((name.strip(), value.strip()))
    return out


def quick_plugin_manager() -> Any:
    """The plugin manager :func:`pyctr.registry.make_plugin_manager` makes, with the entry points found
    by :func:`entry_points` (a module that fails to import is recorded as the registry does)."""
    import importlib

    from .registry import ENTRY_POINT_GROUP, LOAD_ERRORS, make_plugin_manager

    pm = make_plugin_manager(load_entrypoints=False)
    for name, value in entry_points(ENTRY_POINT_GROUP):
        if pm.get_plugin(name) is not None or pm.is_blocked(name):
            continue
        try:
            pm.register(importlib.import_module(value.split(":", 1)[0].strip()), name=name)
        except Exception as e:
            LOAD_ERRORS[name] = f"cannot load {value}: {type(e).__name__}: {e}"
    pm.check_pending()
    return pm


_GLOBAL_VALUE = {"--root": "root", "--state": "state", "--address": "address", "-a": "address",
                 "--namespace": "namespace", "-n": "namespace", "--config": "config", "-c": "config"}
_GLOBAL_ENV = {"root": "PYCTR_ROOT", "state": "PYCTR_STATE", "address": "PYCTR_ADDRESS",
               "namespace": "PYCTR_NAMESPACE", "config": "PYCTR_CONFIG"}


class _Unsupported(Exception):
    """The fast parser does not handle this command line: let the typer app do it."""


def _flag_table() -> dict[str, tuple[str, Any]]:
    table: dict[str, tuple[str, Any]] = {}
    for name, _default, type_, flags, _help in RUN_OPTIONS + RUN_ONLY_OPTIONS:
        for f in flags:
            table[f] = (name, type_)
    return table


def _take_value(argv: list[str], i: int, tok: str) -> tuple[str, int]:
    if "=" in tok and tok.startswith("--"):
        return tok.split("=", 1)[1], i + 1
    if i + 1 >= len(argv):
        raise _Unsupported
    return argv[i + 1], i + 2


def parse_globals(argv: list[str]) -> tuple[dict[str, Any], int]:
    """The global options leading ``argv`` and the index of the command after them."""
    g: dict[str, Any] = {"debug": False}
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--debug":
            g["debug"] = True
            i += 1
            continue
        key = tok.split("=", 1)[0] if tok.startswith("--") else tok
        if key in _GLOBAL_VALUE:
            g[_GLOBAL_VALUE[key]], i = _take_value(argv, i, tok)
            continue
        break
    return g, i


#: Commands a zygote runs through the typer application (no fast path of their own), by their words.
ZYGOTE_CLI_COMMANDS = (("batch", "run"),)
#: What a zygote started for them imports ahead (their imports follow from these).
ZYGOTE_CLI_PRELOAD = ("pyctr.cli", "pyctr.cli._errors", "pyctr.cli.batch", "pyctr.batch", "pyctr.client",
                      "pyctr.engine", "pyctr.oci", "pyctr.mount", "pyctr.usergroup", "pyctr.metadata.db",
                      "pyctr.plugins.containers.metadata.service", "pyctr.plugins.runtime.runc.manager",
                      "pyctr.plugins.snapshots.overlayfs.overlayfs", "pyctr.plugins.images.metadata.service",
                      "pyctr.plugins.content.local.store", "pyctr.plugins.gc.scheduler.scheduler",
                      "pyctr.metadata.store", "pyctr.metadata.snapshots", "pyctr.metadata.content",
                      "pyctr.metadata.leases", "pyctr.metadata.gc", "pyctr.events.exchange", "pyctr.seccomp_default",
                      "pyctr.seccomp_filter",
                      "pyctr.cli.output", "pyctr._speedups.digest", "pyctr._speedups.eventbus", "typer", "sqlite3",
                      "concurrent.futures.thread")


def parse_run_argv(argv: list[str]) -> tuple[dict[str, Any], dict[str, Any], str, list[str]]:
    """``(global options, run flags, image, command)`` of ``[globals] run [flags] IMAGE [CMD...]``;
    :class:`_Unsupported` for anything else."""
    g, i = parse_globals(argv)
    if i >= len(argv) or argv[i] != "run":
        raise _Unsupported
    i += 1
    table = _flag_table()
    flags: dict[str, Any] = {}
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            i += 1
            break
        if not tok.startswith("-") or tok == "-":
            break
        key = tok.split("=", 1)[0] if tok.startswith("--") else tok
        if key in table:
            name, type_ = table[key]
            if type_ is bool:
                if "=" in tok:
                    raise _Unsupported
                flags[name] = True
                i += 1
                continue
            value, i = _take_value(argv, i, tok)
            if type_ == _L:
                flags.setdefault(name, []).append(value)
            elif type_ == int | None:
                try:
                    flags[name] = int(value)
                except ValueError:
                    raise _Unsupported from None
            else:
                flags[name] = value
            continue
        if not tok.startswith("--") and len(tok) > 2:
            # combined short flags (-it, -dit) or -eVALUE
            first = "-" + tok[1]
            if first in table and table[first][1] is not bool:
                name, type_ = table[first]
                if type_ == _L:
                    flags.setdefault(name, []).append(tok[2:])
                else:
                    raise _Unsupported
                i += 1
                continue
            for ch in tok[1:]:
                entry = table.get("-" + ch)
                if entry is None or entry[1] is not bool:
                    raise _Unsupported
                flags[entry[0]] = True
            i += 1
            continue
        raise _Unsupported
    if i >= len(argv):
        raise _Unsupported  # no image: let typer say so
    return g, flags, argv[i], argv[i + 1:]


def fast_main(argv: list[str], *, close: bool = True) -> int | None:
    """Run ``pyctr run ...`` without the typer app; ``None`` when this command line is not one the fast
    path handles (then the caller runs the full CLI).  ``close=False`` leaves the client open for a
    caller that exits the process at once (closing SQLite checkpoints its WAL, which costs more than
    the rest of the teardown; the next open of the database does it instead)."""
    try:
        g, flags, image, args = parse_run_argv(argv)
    except _Unsupported:
        return None
    trace("fast path")
    from .errdefs import PyctrError

    for k, env in _GLOBAL_ENV.items():
        if k not in g and os.environ.get(env):
            g[k] = os.environ[env]
    debug = bool(g.get("debug") or os.environ.get("PYCTR_DEBUG"))
    if debug:
        import logging

        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
        os.environ["PYCTR_DEBUG"] = "1"
    client = None
    try:
        from .client import Client

        client = Client(root=g.get("root"), state=g.get("state"), address=g.get("address"),
                        namespace=g.get("namespace") or "default", config=g.get("config"))
        if not client.remote and not os.environ.get("PYCTR_NO_PLUGIN_AUTOLOAD"):
            from .engine import Engine
            from .registry import take_prebuilt_plugin_manager

            pm = take_prebuilt_plugin_manager() or quick_plugin_manager()
            client._engine = Engine(client.config, pm)
        trace("engine")
        run_flags = {k: v for k, v in flags.items() if k not in ("rm", "detach", "interactive", "name")}
        return run_container(client, client.namespace, image, args, rm=bool(flags.get("rm")),
                             detach=bool(flags.get("detach")), interactive=bool(flags.get("interactive")),
                             name=str(flags.get("name") or ""), flags=run_flags)
    except PyctrError as e:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"pyctr: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("pyctr: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:
        if debug:
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"pyctr: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    finally:
        if client is not None and close:
            client.close()


def _zygote_state(argv: list[str]) -> str:
    """The state directory whose run zygote serves this command line ("" for none: not a fast-path
    ``run``, a daemon address, or ``PYCTR_NO_ZYGOTE``)."""
    if os.environ.get("PYCTR_NO_ZYGOTE") or os.environ.get("PYCTR_ADDRESS"):
        return ""
    try:
        g, _flags, _image, _args = parse_run_argv(argv)
    except _Unsupported:
        try:
            g, i = parse_globals(argv)
        except _Unsupported:
            return ""
        if tuple(argv[i:i + 2]) not in ZYGOTE_CLI_COMMANDS or "--help" in argv[i:]:
            return ""
    if g.get("address"):
        return ""
    state = g.get("state") or os.environ.get("PYCTR_STATE")
    if state:
        return str(state)
    from .config import DEFAULT_STATE

    return DEFAULT_STATE


def main(argv: list[str] | None = None) -> Any:
    """The ``pyctr`` console script: the fast path for ``run``, the typer app for everything else."""
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:  # Ctrl-C before a command's own handling began (start-up)
        print("pyctr: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str]) -> Any:
    trace("main")
    state = _zygote_state(argv)
    if state:
        from . import runzygote

        rv = runzygote.try_run(state, argv)
        if rv is not None:
            trace("zygote child done")
            os._exit(rv)
    rv = fast_main(argv, close=False)
    if rv is not None:
        for f in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                f.flush()
        if state:
            from . import runzygote

            runzygote.spawn(state, sorted(sys.modules))
        os._exit(rv)
    if state:
        # a command the zygote serves, run here because none was warm: start one now, beside this
        # command (it imports on the other CPU while this one works), so that the next is served
        from . import runzygote

        runzygote.spawn(state, list(ZYGOTE_CLI_PRELOAD))
    from .cli import main as cli_main

    return cli_main(argv)


#: Set in a zygote's child: the process ends by returning to the zygote's code, never ``os._exit``.
IN_ZYGOTE_CHILD = False


def exit_now(code: int) -> None:
    """End the process with ``code`` at once, skipping interpreter teardown (and the engine's close:
    closing SQLite checkpoints its WAL, which the next open does anyway).  In a zygote's child, leave
    through :class:`SystemExit` so the zygote reports the status to the waiting client."""
    for f in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            f.flush()
    if IN_ZYGOTE_CHILD:
        raise SystemExit(code)
    os._exit(code)
