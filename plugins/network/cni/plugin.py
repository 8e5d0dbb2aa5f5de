"""Registers ``pyctr.network.cni``: container networks made by the standard CNI plugins (type ``network``).

Configuration (``[plugins."pyctr.network.cni"]``)::

    bin_dirs = ["/usr/lib/cni", "/opt/cni/bin"]   # where the CNI plugins are
    conf_dir = "/etc/pyctr/cni/net.d"            # the networks (CNI .conflist files)
    default_network = "bridge"                   # --net bridge, and -p without --net
    default_subnet = "10.88.0.0/16"              # of the default network, written on first use
    bridge_name = "pyctr0"                       # its Linux bridge
    plugin_timeout = 60.0                        # seconds per CNI plugin call
"""

from __future__ import annotations

import os
from typing import Any

from pyctr.hookspecs import hookimpl
from pyctr.registry import InitContext, PluginType, Registration, SkipPlugin


def _init(ctx: InitContext) -> Any:
    bin_dirs = [str(d) for d in ctx.config["bin_dirs"]]
    if not any(os.path.isfile(os.path.join(d, "bridge")) for d in bin_dirs):
        raise SkipPlugin(f"no CNI plugins in {', '.join(bin_dirs)} (apt-get install containernetworking-plugins)")
    from .manager import NetworkManager

    md = ctx.get(PluginType.METADATA)
    mgr = NetworkManager(
        md.db,
        state=ctx.state,
        bin_dirs=bin_dirs,
        conf_dir=str(ctx.config["conf_dir"]),
        default_network=str(ctx.config["default_network"]),
        default_subnet=str(ctx.config["default_subnet"]),
        bridge_name=str(ctx.config["bridge_name"]),
        plugin_timeout=float(ctx.config["plugin_timeout"]),
    )
    mgr.recover()
    return mgr


@hookimpl
def pyctr_daemon_started(engine: Any) -> None:
    """Crash recovery with the whole picture: detach every container that has no task any more."""
    import logging

    from pyctr.errdefs import NotFound, PyctrError

    try:
        net = engine.plugin("network")
        svc = engine.plugin("service", "pyctr.containers.metadata")
    except PyctrError:
        return

    def alive(ns: str, id_: str) -> bool:
        try:
            svc.get_task(ns, id_)
        except NotFound:
            return False
        return True

    done = net.recover(alive)
    if done:
        logging.getLogger("pyctr.plugin.pyctr.network.cni").info("detached %d containers without a task: %s",
                                                                 len(done), ", ".join(done))


@hookimpl
def pyctr_plugin_registrations() -> list[Registration]:
    return [
        Registration(
            type=PluginType.NETWORK,
            id="pyctr.network.cni",
            init=_init,
            requires=(PluginType.METADATA,),
            config={
                "bin_dirs": ["/usr/lib/cni", "/opt/cni/bin"],
                "conf_dir": "/etc/pyctr/cni/net.d",
                "default_network": "bridge",
                "default_subnet": "10.88.0.0/16",
                "bridge_name": "pyctr0",
                "plugin_timeout": 60.0,
            },
            platforms=("linux/amd64", "linux/arm64", "linux/arm/v7", "linux/ppc64le", "linux/s390x",
                       "linux/riscv64", "linux/386"),
            description="Container networks with the standard CNI plugins: bridge, IPAM, published ports.",
        )
    ]
