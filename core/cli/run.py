"""Top-level ``pyctr run``, ``pyctr exec`` and ``pyctr logs``.

``run`` makes a container from an image (pulling and unpacking it first when it is missing), starts
its task and, unless ``-d``, attaches: the container's stdout and stderr are the caller's own file
descriptors (no copy), stdin with ``-i``, a real pty with ``-t`` (raw mode, window size forwarded on
SIGWINCH), SIGINT/SIGTERM forwarded to the container.  It exits with the container's exit status.
On any failure what was made so far (task, snapshot, record) is removed again, in reverse order.

This module is imported on every ``pyctr`` start: keep its top level to typer and the standard library;
the service, the spec generator and the runtime load only when a command runs.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._state import opts

if TYPE_CHECKING:
    from ..client import Client
    from ..oci import RunOptions
    from ..runtime import ProcessIO, Task

SERVICE_ID = "pyctr.containers.metadata"

# -- the options run and containers create share -----------------------------------------------------

_L = list[str] | None
# (parameter, default, type, flag spellings, help) of the options run and containers create share
_RUN_OPTIONS: list[tuple[str, Any, Any, tuple[str, ...], str]] = [
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
    ("net", "none", str, ("--net", "--network"), "none (own namespace, lo only) or host."),
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
RUN_OPTION_PARAMS: list[inspect.Parameter] = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                      annotation=Annotated[type_, typer.Option(*flags, help=help_, show_default=False)])
    for name, default, type_, flags, help_ in _RUN_OPTIONS
]
_RUN_OPTION_NAMES = [p.name for p in RUN_OPTION_PARAMS]


def with_run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``fn`` the shared options: its signature gets :data:`RUN_OPTION_PARAMS`, and it receives
    them gathered in one ``run_flags`` dict."""
    sig = inspect.signature(fn, eval_str=True)
    own = [p for p in sig.parameters.values() if p.name != "run_flags"]
    params = own + [p for p in RUN_OPTION_PARAMS if p.name not in sig.parameters]

    def wrapper(**kwargs: Any) -> Any:
        flags = {k: kwargs.pop(k) for k in list(kwargs) if k in _RUN_OPTION_NAMES and k not in sig.parameters}
        return fn(run_flags=flags, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def build_run_options(flags: dict[str, Any], args: list[str] | None) -> tuple[RunOptions, dict[str, str]]:
    """``(RunOptions, container labels)`` from the shared flags and the command after the image."""
    from .. import oci
    from ..errdefs import InvalidArgument
    from .output import parse_labels

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
        elif key == "no-new-privileges":
            continue
        else:
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
    """Pull ``image`` when the namespace does not have it (through the distribution plugin)."""
    from ..errdefs import NotFound

    images = client.plugin("images")
    try:
        images.resolve(ns, image)
        return
    except NotFound:
        pass
    try:
        dist = client.plugin("distribution")
    except Exception as e:
        raise NotFound(f"image {image!r} not found in namespace {ns!r} and cannot be pulled: {e}") from None
    print(f"pulling {image} ...", file=sys.stderr)
    dist.pull(ns, image)


# -- attaching to a task -----------------------------------------------------------------------------

class _Attach(contextlib.ExitStack):
    """Terminal raw mode, signal forwarding and window-size forwarding for the duration of a run."""

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
                    t.kill(signum, exec_id=self.exec_id)

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
    from ..runtime import ProcessIO

    return ProcessIO(stdin=0 if interactive else "", stdout=1, stderr=2, terminal=tty, json_log=json_log,
                     log_uri=log_uri)


def wait_attached(task: Task, att: _Attach, exec_id: str = "") -> int:
    """Start the (created) process, forward signals and resizes, and wait for its exit status."""
    att.task, att.exec_id = task, exec_id
    att.setup_signals()
    att.raw()
    task.start(exec_id)
    att.resize()
    while True:
        try:
            return int(task.wait(exec_id=exec_id).exit_status)
        except InterruptedError:
            continue


# -- commands ----------------------------------------------------------------------------------------

def run(
    ctx: typer.Context,
    image: Annotated[str, typer.Argument(help="Image reference.", show_default=False)],
    args: Annotated[list[str] | None, typer.Argument(help="Command and arguments (default: the image's).",
                                                     show_default=False)] = None,
    rm: Annotated[bool, typer.Option("--rm", help="Remove the container when it exits.")] = False,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Start it and return.")] = False,
    interactive: Annotated[bool, typer.Option("--interactive", "-i", help="Keep stdin open.")] = False,
    name: Annotated[str, typer.Option("--name", help="Container id (default: 12 random hex digits).",
                                      show_default=False)] = "",
    *,
    run_flags: dict[str, Any],
) -> None:
    """Run a command in a new container: IMAGE [CMD...]."""
    from ..errdefs import InvalidArgument

    o = opts(ctx)
    client = o.client()
    ns = o.namespace
    if rm and detach:
        raise InvalidArgument("--rm and --detach cannot be used together")
    ro, labels = build_run_options(run_flags, args)
    svc = service(client)
    cid = name or _new_id()
    ensure_image(client, ns, image)
    svc.create_container(ns, cid, image, ro, snapshotter=run_flags.get("snapshotter") or None,
                         runtime=run_flags.get("runtime") or "", labels=labels)
    log_uri = run_flags.get("log_uri") or ""
    try:
        if detach:
            from ..runtime import ProcessIO

            log = svc.log_path(ns, cid)
            log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            svc.start_task(ns, cid, ProcessIO(json_log=str(log), log_uri=log_uri, terminal=ro.tty))
            print(cid)
            return
        json_log = ""
        if not rm:
            log = svc.log_path(ns, cid)
            log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            json_log = str(log)
        task = svc.create_task(ns, cid, foreground_io(interactive, ro.tty, json_log, log_uri))
    except BaseException:
        _cleanup(svc, ns, cid, remove_container=True)
        raise
    code = _run_attached(svc, ns, cid, task, ro.tty, remove_container=rm)
    raise typer.Exit(code)


def _new_id() -> str:
    import secrets

    return secrets.token_hex(6)


def _cleanup(svc: Any, ns: str, cid: str, *, remove_container: bool, task: Task | None = None) -> None:
    """Delete the task (and the container with its snapshot); errors here must not hide the first."""
    import logging

    log = logging.getLogger("pyctr.cli")
    if task is not None:
        try:
            task.delete(force=True)
        except Exception as e:
            log.debug("deleting task %s: %s", cid, e)
    if remove_container:
        try:
            svc.delete_container(ns, cid, force=True)
        except Exception as e:
            print(f"pyctr: cleaning up container {cid}: {e}", file=sys.stderr)


def _run_attached(svc: Any, ns: str, cid: str, task: Task, tty: bool, *, remove_container: bool) -> int:
    """Start the created task attached to this terminal; always delete the task afterwards (and the
    container when asked, or when the start failed)."""
    started = False
    try:
        with _Attach(tty) as att:
            att.task = task
            att.setup_signals()
            att.raw()
            task.start()
            started = True
            att.resize()
            return int(task.wait().exit_status)
    finally:
        _cleanup(svc, ns, cid, remove_container=remove_container or not started, task=task)


def exec_(
    ctx: typer.Context,
    container: Annotated[str, typer.Argument(metavar="ID", help="Container id.", show_default=False)],
    args: Annotated[list[str], typer.Argument(metavar="CMD...", help="Command and arguments.",
                                              show_default=False)],
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Start it and return.")] = False,
    interactive: Annotated[bool, typer.Option("--interactive", "-i", help="Keep stdin open.")] = False,
    tty: Annotated[bool, typer.Option("--tty", "-t", help="Allocate a pty.")] = False,
    exec_id: Annotated[str, typer.Option("--exec-id", help="Id of the process (default: random).",
                                         show_default=False)] = "",
    cwd: Annotated[str, typer.Option("--workdir", "-w", "--cwd", help="Working directory.",
                                     show_default=False)] = "",
    user: Annotated[str, typer.Option("--user", "-u", help="USER[:GROUP] or UID[:GID].",
                                      show_default=False)] = "",
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="Set KEY=VALUE.",
                                                  show_default=False)] = None,
) -> None:
    """Run another command in a running container: ID CMD..."""
    from ..oci import expand_host_env
    from ..runtime import ProcessIO

    o = opts(ctx)
    svc = service(o.client())
    io = ProcessIO() if detach else foreground_io(interactive, tty)
    task, eid = svc.exec_process(o.namespace, container, list(args), io, exec_id=exec_id, tty=tty,
                                 env=expand_host_env(env or []), cwd=cwd, user=user)
    if detach:
        try:
            task.start(eid)
        except BaseException:
            with contextlib.suppress(Exception):
                task.delete(exec_id=eid, force=True)
            raise
        print(eid)
        return
    code = 255
    try:
        with _Attach(tty) as att:
            code = wait_attached(task, att, eid)
    finally:
        with contextlib.suppress(Exception):
            task.delete(exec_id=eid, force=True)
    raise typer.Exit(code)


def follow_log(path: str, *, follow: bool, tail: int | None, running: Callable[[], bool],
               timestamps: bool = False) -> None:
    """Print a docker json-file log (``{"log", "stream", "time"}`` lines) to stdout and stderr."""
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
            time.sleep(0.1)
        f = open(path, "rb")  # noqa: SIM115
    with f:
        data = f.read()
        lines = data.split(b"\n")
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


def logs(
    ctx: typer.Context,
    container: Annotated[str, typer.Argument(metavar="ID", help="Container id.", show_default=False)],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow until the task exits.")] = False,
    tail: Annotated[int | None, typer.Option("--tail", "-n", help="Only the last N lines.",
                                             show_default=False)] = None,
    timestamps: Annotated[bool, typer.Option("--timestamps", help="Prefix each line with its time.")] = False,
) -> None:
    """Print a container's output (kept for containers run without --rm)."""
    from ..errdefs import NotFound

    o = opts(ctx)
    svc = service(o.client())
    ns = o.namespace
    svc.get(ns, container)

    def running() -> bool:
        try:
            return str(svc.get_task(ns, container).state().status) in ("running", "paused", "created")
        except NotFound:
            return False

    follow_log(str(svc.log_path(ns, container)), follow=follow, tail=tail, running=running,
               timestamps=timestamps)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level app."""
    ctx_settings = {"allow_interspersed_args": False}
    app.command("run", context_settings=ctx_settings)(with_run_options(run))
    app.command("exec", context_settings=ctx_settings)(exec_)
    app.command("logs")(logs)
