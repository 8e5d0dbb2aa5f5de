"""The ``pyctr`` command line: a typer app with one sub-app per noun, as ``ctr`` has.

Start-up is lazy: building the app imports only typer and the small command modules; a command loads
plugins, msgpack or prometheus_client only when it runs.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer

from ._state import GlobalOptions, global_callback

# (name, module, help). A module exposes ``app`` (a typer.Typer) for a noun, or ``register(app)`` for
# top-level commands.
_NOUNS: list[tuple[str, str, str]] = [
    ("plugins", "pyctr.cli.plugins", "List plugins and their status."),
    ("config", "pyctr.cli.config_cmd", "Show pyctr's configuration."),
    ("content", "pyctr.cli.content", "Manage the content-addressed blob store."),
    ("namespaces", "pyctr.cli.namespaces", "Manage namespaces."),
    ("leases", "pyctr.cli.leases", "Manage leases."),
    ("snapshots", "pyctr.cli.snapshots", "Manage snapshots."),
    ("images", "pyctr.cli.images", "Manage images: pull, push, import, export, unpack."),
    ("containers", "pyctr.cli.containers", "Manage containers."),
    ("tasks", "pyctr.cli.tasks", "Manage tasks (a container's running processes)."),
    ("network", "pyctr.cli.network", "Manage container networks (CNI): ls, create, inspect, rm."),
    ("batch", "pyctr.cli.batch", "Launch and remove containers in bulk."),
]
_TOP_LEVEL: list[str] = [
    "pyctr.cli.gc",
    "pyctr.cli.run",
    "pyctr.cli.version",
    "pyctr.cli.events",
    "pyctr.cli.pull",
    "pyctr.cli.metrics",
]
_ALIASES: dict[str, str] = {"ns": "namespaces", "i": "images", "c": "containers", "t": "tasks"}


# Global options that take a value (so the word after them is not the command).
_VALUE_OPTIONS = {"--root", "--state", "--address", "-a", "--namespace", "-n", "--config", "-c"}


def _noun_in(argv: list[str]) -> str | None:
    """The noun (or alias) ``argv`` runs, skipping the global options; ``None`` when there is none."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return argv[i + 1] if i + 1 < len(argv) else None
        if arg.startswith("-"):
            i += 2 if arg in _VALUE_OPTIONS else 1
            continue
        return arg
    return None


def build_app(only: str | None = None, *, lazy: bool = False) -> typer.Typer:
    """The ``pyctr`` app.  With ``lazy``, only the noun ``only`` (a name or alias) is built for real;
    the other nouns are empty placeholders that still show in ``--help`` (turning every command of
    every noun into a click command costs more than the rest of a short command's start-up)."""
    if only in _ALIASES:
        only = _ALIASES[only]
    app = typer.Typer(
        name="pyctr",
        help="pyctr: a core container runtime for Linux (images, snapshots, containers, tasks).",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(global_callback)
    for name, module, help_ in _NOUNS:
        stub = lazy and name != only
        sub = typer.Typer(no_args_is_help=True) if stub else importlib.import_module(module).app
        app.add_typer(sub, name=name, help=help_)
        for alias, target in _ALIASES.items():
            if target == name and (not lazy or name == only):
                app.add_typer(sub, name=alias, help=help_, hidden=True)
    for module in _TOP_LEVEL:
        importlib.import_module(module).register(app)
    return app


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``pyctr`` console script."""
    from ._errors import run_cli

    args = sys.argv[1:] if argv is None else argv
    return run_cli(build_app(_noun_in(args), lazy=True), args)


__all__ = ["GlobalOptions", "build_app", "main"]
