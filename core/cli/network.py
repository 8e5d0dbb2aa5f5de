"""``pyctr network ls|create|inspect|rm``: container networks (CNI configuration lists), as nerdctl's.

Also the small helpers ``containers info`` and ``tasks ls`` use to show a container's address.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._state import opts

if TYPE_CHECKING:
    from ..client import Client

app = typer.Typer(no_args_is_help=True)


def _plugin(ctx: typer.Context) -> Any:
    return opts(ctx).client().plugin("network")


def attachment_info(client: Client, ns: str, container: str) -> dict[str, Any] | None:
    """What ``containers info`` shows of a container's network: ``{network, ip, mac, ports, netns}``;
    None when it has none (or no network plugin is available)."""
    from ..errdefs import PyctrError

    try:
        att = client.plugin("network").attachment(ns, container)
    except PyctrError:
        return None
    if att is None:
        return None
    return {"network": att.network, "ip": att.ip, "mac": att.mac, "netns": att.netns,
            "ports": [str(p) for p in att.ports]}


def addresses(client: Client, ns: str) -> dict[str, str]:
    """``{container id: IP}`` for ``tasks ls``; empty when no network plugin is available."""
    from ..errdefs import PyctrError

    try:
        out: dict[str, str] = client.plugin("network").addresses(ns)
    except PyctrError:
        return {}
    return out


@app.command("ls")
def ls(
    ctx: typer.Context,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print names only.")] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
) -> None:
    """List networks: NAME BRIDGE SUBNET PLUGINS CONTAINERS (* marks the default one)."""
    from .output import table

    plugin = _plugin(ctx)
    nets = plugin.list_networks()
    for problem in plugin.problems():
        print(f"pyctr: warning: {problem}", file=sys.stderr)
    if quiet:
        for n in nets:
            print(n["name"])
        return
    if output == "json":
        print(json.dumps(nets, indent=2, sort_keys=True))
        return
    table(["NAME", "BRIDGE", "SUBNET", "PLUGINS", "CONTAINERS"],
          [(n["name"] + (" *" if n["default"] else ""), n["bridge"] or "-", ",".join(n["subnets"]) or "-",
            ",".join(n["plugins"]), n["containers"]) for n in nets])


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The new network's name.", show_default=False)],
    subnet: Annotated[str, typer.Option("--subnet", help="CIDR (default: a free /24 of 10.89.0.0/16).",
                                        show_default=False)] = "",
    gateway: Annotated[str, typer.Option("--gateway", help="The bridge's address in the subnet.",
                                         show_default=False)] = "",
    bridge: Annotated[str, typer.Option("--bridge", help="Linux bridge name (default: pyctr-<hash>).",
                                        show_default=False)] = "",
    config: Annotated[str, typer.Option("--config", "--file", help="Use this CNI .conflist as it is.",
                                        show_default=False)] = "",
) -> None:
    """Create a bridge network (bridge + host-local IPAM, portmap, firewall), or one from a conflist."""
    from ..errdefs import InvalidArgument

    doc: dict[str, Any] | None = None
    if config:
        try:
            with open(config, encoding="utf-8") as f:
                doc = json.load(f)
        except OSError as e:
            raise InvalidArgument(f"cannot read {config}: {e.strerror}") from None
        except ValueError as e:
            raise InvalidArgument(f"invalid network configuration {config}: not JSON ({e})") from None
    info = _plugin(ctx).create_network(name, subnet=subnet, gateway=gateway, bridge=bridge, config=doc)
    print(info["name"])


@app.command("inspect")
def inspect(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(metavar="NAME...", help="Networks.", show_default=False)],
) -> None:
    """Show networks: configuration, bridge, subnets and attached containers (JSON)."""
    plugin = _plugin(ctx)
    print(json.dumps([plugin.inspect(n) for n in names], indent=2, sort_keys=True))


@app.command("rm")
def rm(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(metavar="NAME...", help="Networks.", show_default=False)],
) -> None:
    """Remove networks (refused while containers are attached); pyctr's bridge goes with it."""
    from .output import each

    plugin = _plugin(ctx)
    each(names, plugin.remove_network)
