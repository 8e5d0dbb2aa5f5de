"""``pyctr tasks``: start, ls, kill, exec, ps, pause, resume, attach, wait, rm, metrics (ctr's spellings)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ._state import opts
from .run import exec_, service

app = typer.Typer(no_args_is_help=True)

_ID = Annotated[str, typer.Argument(metavar="ID", help="Container id.", show_default=False)]


@app.command("start")
def start(
    ctx: typer.Context,
    container: _ID,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Start it and return.")] = False,
    interactive: Annotated[bool, typer.Option("--interactive", "-i", help="Keep stdin open.")] = False,
    null_io: Annotated[bool, typer.Option("--null-io", help="Send output nowhere.")] = False,
    log_uri: Annotated[str, typer.Option("--log-uri", help="Also append output here (file:///path).",
                                         show_default=False)] = "",
) -> None:
    """Start a container's task; attached (exit status = the task's) unless -d."""
    from ..runner import foreground_io, run_task_attached
    from ..runtime import ProcessIO

    o = opts(ctx)
    svc = service(o.client())
    ns = o.namespace
    c = svc.get(ns, container)
    tty = bool((c.spec.get("process") or {}).get("terminal"))
    log = svc.log_path(ns, container)
    json_log = ""
    if not null_io:
        log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        json_log = str(log)
    if detach:
        svc.start_task(ns, container, ProcessIO(json_log=json_log, log_uri=log_uri, terminal=tty))
        return
    task = svc.create_task(ns, container, foreground_io(interactive, tty, json_log, log_uri))
    raise typer.Exit(run_task_attached(svc, ns, container, task, tty, remove_container=False))


@app.command("ls")
def ls(
    ctx: typer.Context,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print ids only.")] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
) -> None:
    """List tasks: TASK PID STATUS, and IP when a task is attached to a network."""
    from .output import table

    o = opts(ctx)
    states = service(o.client()).list_tasks(o.namespace)
    if quiet:
        for s in states:
            print(s.id)
        return
    if output == "json":
        print(json.dumps([s.to_dict() for s in states], indent=2, sort_keys=True))
        return
    from .network import addresses

    ips = addresses(o.client(), o.namespace) if states else {}
    if not any(s.id in ips for s in states):  # the IP column only when some task has an address
        table(["TASK", "PID", "STATUS"], [(s.id, s.pid, str(s.status).upper()) for s in states])
        return
    table(["TASK", "PID", "STATUS", "IP"], [(s.id, s.pid, str(s.status).upper(), ips.get(s.id, "-"))
                                             for s in states])


@app.command("kill")
def kill(
    ctx: typer.Context,
    container: _ID,
    signal_: Annotated[str, typer.Option("--signal", "-s", help="Signal name or number.")] = "SIGTERM",
    all_: Annotated[bool, typer.Option("--all", "-a", help="Every process in the container.")] = False,
    exec_id: Annotated[str, typer.Option("--exec-id", help="Signal this exec'd process.",
                                         show_default=False)] = "",
) -> None:
    """Signal a task (default SIGTERM; to a container init that would drop it, SIGKILL)."""
    from ..signals import parse_signal

    o = opts(ctx)
    service(o.client()).kill_task(o.namespace, container, parse_signal(signal_), all=all_, exec_id=exec_id)


app.command("exec", context_settings={"allow_interspersed_args": False})(exec_)


@app.command("ps")
def ps(ctx: typer.Context, container: _ID) -> None:
    """List a task's processes: PID INFO."""
    from .output import table

    o = opts(ctx)
    procs = service(o.client()).get_task(o.namespace, container).pids()
    table(["PID", "INFO"], [(p.pid, json.dumps(dict(p.info)) if p.info else "-") for p in procs])


@app.command("pause")
def pause(ctx: typer.Context, container: _ID) -> None:
    """Freeze every process of a task."""
    o = opts(ctx)
    service(o.client()).get_task(o.namespace, container).pause()


@app.command("resume")
def resume(ctx: typer.Context, container: _ID) -> None:
    """Thaw a paused task."""
    o = opts(ctx)
    service(o.client()).get_task(o.namespace, container).resume()


@app.command("attach")
def attach(ctx: typer.Context, container: _ID) -> None:
    """Follow a running task's output (signals are forwarded) and exit with its status."""
    from ..errdefs import NotFound
    from ..runner import Attach, follow_log

    o = opts(ctx)
    svc = service(o.client())
    ns = o.namespace
    task = svc.get_task(ns, container)

    def running() -> bool:
        try:
            return str(task.state().status) in ("running", "paused", "created")
        except NotFound:
            return False

    with Attach(False) as att:
        att.task = task
        att.setup_signals()
        follow_log(str(svc.log_path(ns, container)), follow=True, tail=0, running=running)
    raise typer.Exit(int(task.wait().exit_status))


@app.command("wait")
def wait(
    ctx: typer.Context,
    container: _ID,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Give up after this many seconds.",
                                                  show_default=False)] = None,
    exec_id: Annotated[str, typer.Option("--exec-id", help="Wait for this exec'd process.",
                                         show_default=False)] = "",
) -> None:
    """Wait for a task to exit; print its exit status."""
    o = opts(ctx)
    st = service(o.client()).get_task(o.namespace, container).wait(timeout=timeout, exec_id=exec_id)
    print(st.exit_status)


@app.command("rm")
def rm(
    ctx: typer.Context,
    containers: Annotated[list[str], typer.Argument(metavar="ID...", help="Container ids.",
                                                    show_default=False)],
    force: Annotated[bool, typer.Option("--force", "-f", help="Kill a running task first.")] = False,
    exec_id: Annotated[str, typer.Option("--exec-id", help="Delete this exec'd process only.",
                                         show_default=False)] = "",
) -> None:
    """Delete stopped tasks (a running one needs --force)."""
    from .output import each

    o = opts(ctx)
    svc = service(o.client())
    each(containers, lambda cid: svc.delete_task(o.namespace, cid, force=force, exec_id=exec_id))


@app.command("metrics")
def metrics(
    ctx: typer.Context,
    container: _ID,
    output: Annotated[str, typer.Option("--format", "--output", "-o", help="table or json.")] = "table",
) -> None:
    """A task's current cgroup statistics (CPU, memory, pids, block I/O), read as /v1/metrics does."""
    from ..errdefs import PyctrError
    from .metrics import stats_rows
    from .output import table

    o = opts(ctx)
    client = o.client()
    try:
        plugin = client.plugin("metrics")
    except PyctrError:  # no metrics plugin: the runtime's own figures
        stats = service(client).get_task(o.namespace, container).stats()
    else:
        stats = plugin.container_stats(o.namespace, container)
    if output == "json":
        print(json.dumps(stats, indent=2, sort_keys=True, default=str))
        return
    table(["METRIC", "VALUE"], stats_rows(stats))
