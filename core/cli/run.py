"""Top-level ``pyctr run``, ``pyctr exec`` and ``pyctr logs`` (typer front ends of :mod:`pyctr.runner`).

``pyctr run`` normally never reaches this module: the console script's fast path
(:func:`pyctr.runner.fast_main`) handles it without typer.  These commands serve ``--help``, command
lines the fast path leaves alone, and ``CliRunner``-style callers.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..runner import RUN_ONLY_OPTIONS, RUN_OPTIONS
from ._state import opts

if TYPE_CHECKING:
    from ..client import Client

RUN_OPTION_PARAMS: list[inspect.Parameter] = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                      annotation=Annotated[type_, typer.Option(*flags, help=help_, show_default=False)])
    for name, default, type_, flags, help_ in RUN_OPTIONS
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


def service(client: Client) -> Any:
    from ..runner import service as _service

    return _service(client)


_RUN_HELP = {name: (flags, help_) for name, _d, _t, flags, help_ in RUN_ONLY_OPTIONS}


def _o(name: str) -> Any:
    flags, help_ = _RUN_HELP[name]
    return typer.Option(*flags, help=help_, show_default=False)


def run(
    ctx: typer.Context,
    image: Annotated[str, typer.Argument(help="Image reference.", show_default=False)],
    args: Annotated[list[str] | None, typer.Argument(help="Command and arguments (default: the image's).",
                                                     show_default=False)] = None,
    rm: Annotated[bool, _o("rm")] = False,
    detach: Annotated[bool, _o("detach")] = False,
    interactive: Annotated[bool, _o("interactive")] = False,
    name: Annotated[str, _o("name")] = "",
    *,
    run_flags: dict[str, Any],
) -> None:
    """Run a command in a new container: IMAGE [CMD...]; exits with the container's status."""
    from ..runner import run_container

    o = opts(ctx)
    client = o.client()
    code = run_container(client, o.namespace, image, args, rm=rm, detach=detach, interactive=interactive,
                         name=name, flags=run_flags)
    raise typer.Exit(code)


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
    """Run another command in a running container: ID CMD...; exits with its status."""
    from ..runner import exec_in_container

    o = opts(ctx)
    code = exec_in_container(o.client(), o.namespace, container, list(args), detach=detach,
                             interactive=interactive, tty=tty, exec_id=exec_id, cwd=cwd, user=user, env=env)
    raise typer.Exit(code)


def logs(
    ctx: typer.Context,
    container: Annotated[str, typer.Argument(metavar="ID", help="Container id.", show_default=False)],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow until the task exits.")] = False,
    tail: Annotated[int | None, typer.Option("--tail", "-n", help="Only the last N lines.",
                                             show_default=False)] = None,
    timestamps: Annotated[bool, typer.Option("--timestamps", help="Prefix each line with its time.")] = False,
) -> None:
    """Print a container's output (kept for containers run without --rm)."""
    from ..runner import show_logs

    o = opts(ctx)
    show_logs(o.client(), o.namespace, container, follow=follow, tail=tail, timestamps=timestamps)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level app."""
    ctx_settings = {"allow_interspersed_args": False}
    app.command("run", context_settings=ctx_settings)(with_run_options(run))
    app.command("exec", context_settings=ctx_settings)(exec_)
    app.command("logs")(logs)
