"""``pyctr events``: stream events live, one line each."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("events")
    def events(
        ctx: typer.Context,
        filters: Annotated[list[str] | None, typer.Argument(
            help='Filters in containerd\'s syntax over topic, namespace and event.<field>, e.g. '
                 '\'topic~="/tasks/"\' or \'namespace==default\'; several are ORed.')] = None,
        filter_opt: Annotated[list[str] | None, typer.Option("--filter", "-f", help="A filter (repeatable).")
                              ] = None,
        format_: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
    ) -> None:
        """Print events as they happen: TIME NAMESPACE TOPIC PAYLOAD (needs the daemon for events from
        other processes)."""
        import json
        import sys
        from datetime import UTC, datetime

        from ..errdefs import InvalidArgument
        from ._state import opts

        if format_ not in ("text", "json"):
            raise InvalidArgument(f"invalid --format {format_!r}: want text or json")
        o = opts(ctx)
        client = o.client()
        if not client.remote:
            print("pyctr: warning: no pyctrd answers; showing only this process's events "
                  "(start pyctrd to see every event)", file=sys.stderr)
        flts = [*(filters or []), *(filter_opt or [])]
        for env in client.subscribe(flts):
            if format_ == "json":
                line = json.dumps(env, sort_keys=True, default=str)
            else:
                ts = datetime.fromtimestamp(env["timestamp"] / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
                payload = json.dumps(env.get("event") or {}, sort_keys=True, default=str)
                line = f"{ts} {env['namespace']} {env['topic']} {payload}"
            print(line, flush=True)
