"""Container networking as the core sees it: what ``--net``/``-p`` ask for, and what an attachment is.

The work itself (network namespaces, CNI plugins, port publishing) belongs to a ``network`` plugin
(:mod:`pyctr.plugins.network.cni`).  This module holds only the pure parts other areas share:

* :func:`parse_publish` -- ``-p [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp]`` as a :class:`PortMapping`;
* :func:`validate_net` and :func:`requested_network` -- what ``--net`` and ``-p`` mean together:
  ``none`` (the default: a private network namespace with only ``lo``, made by runc, no plugin
  involved), ``host`` (the host's namespace), or a network name (``bridge`` is the default network),
  which ``-p`` implies when ``--net`` is not given;
* :class:`Attachment` -- one container's attachment to a network (its namespace file, address and
  published ports), convertible to and from plain dicts.

A network plugin offers (see :class:`NetworkPlugin`): ``attach(ns, id, spec, run_options) -> spec``
(called before the task is created; returns the spec with the network namespace path and the
generated ``/etc/resolv.conf``, ``/etc/hosts`` and ``/etc/hostname`` bind mounts), ``detach(ns, id)``
(idempotent), ``attachment(ns, id)``, ``attachments(ns)``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errdefs import InvalidArgument

#: ``--net`` values that need no network plugin.
BUILTIN_MODES = ("none", "host")
#: The name ``--net`` uses for the default network (and ``-p`` without ``--net`` implies).
DEFAULT_NETWORK = "bridge"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
_PUBLISH_RE = re.compile(
    r"^(?:(?P<ip>\[[0-9A-Fa-f:.]+\]|[0-9.]+):)?(?P<host>\d+)?:(?P<cont>\d+)(?:/(?P<proto>[A-Za-z]+))?$"
)


def validate_network_name(name: str) -> str:
    """A network name: letters, digits, ``_``, ``.``, ``-``; at most 63 characters."""
    if not _NAME_RE.match(name or ""):
        raise InvalidArgument(f"invalid network name {name!r}: use letters, digits, '_', '.' and '-' "
                              "(at most 63 characters)")
    return name


def validate_net(net: str) -> str:
    """``none``, ``host`` or a network name."""
    if net in BUILTIN_MODES:
        return net
    try:
        return validate_network_name(net)
    except InvalidArgument:
        raise InvalidArgument(f"invalid --net {net!r}: want none, host or a network name") from None


@dataclass(frozen=True)
class PortMapping:
    """A published port: ``host_ip:host_port`` on the host forwards to ``container_port``."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"host_port": self.host_port, "container_port": self.container_port,
                "protocol": self.protocol, "host_ip": self.host_ip}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PortMapping:
        return cls(int(d["host_port"]), int(d["container_port"]), str(d.get("protocol") or "tcp"),
                   str(d.get("host_ip") or ""))

    def cni(self) -> dict[str, Any]:
        """The ``portMappings`` entry CNI's portmap plugin reads."""
        out: dict[str, Any] = {"hostPort": self.host_port, "containerPort": self.container_port,
                               "protocol": self.protocol}
        if self.host_ip:
            out["hostIP"] = self.host_ip
        return out

    def conflicts(self, other: PortMapping) -> bool:
        """Both would take the same host port (an empty or any-address host IP overlaps every IP)."""
        if self.host_port != other.host_port or self.protocol != other.protocol:
            return False
        any_ = ("", "0.0.0.0", "::")
        return self.host_ip in any_ or other.host_ip in any_ or self.host_ip == other.host_ip

    def __str__(self) -> str:
        ip = f"[{self.host_ip}]" if ":" in self.host_ip else self.host_ip
        return f"{ip + ':' if ip else ''}{self.host_port}->{self.container_port}/{self.protocol}"


def _port(text: str, spec: str) -> int:
    n = int(text)
    if not 1 <= n <= 65535:
        raise InvalidArgument(f"invalid -p {spec!r}: port {n} is out of range (1-65535)")
    return n


def parse_publish(spec: str) -> PortMapping:
    """``[HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp]`` (docker's ``-p``).  The host port is required:
    pyctr picks no random ports."""
    m = _PUBLISH_RE.match(spec.strip())
    if not m:
        raise InvalidArgument(f"invalid -p {spec!r}: want [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp]")
    if m.group("host") is None:
        raise InvalidArgument(f"invalid -p {spec!r}: give the host port (HOSTPORT:CONTAINERPORT)")
    proto = (m.group("proto") or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise InvalidArgument(f"invalid -p {spec!r}: protocol must be tcp, udp or sctp")
    ip = (m.group("ip") or "").strip("[]")
    if ip:
        try:
            ip = str(ipaddress.ip_address(ip))
        except ValueError:
            raise InvalidArgument(f"invalid -p {spec!r}: {ip!r} is not an IP address") from None
    return PortMapping(_port(m.group("host"), spec), _port(m.group("cont"), spec), proto, ip)


def requested_network(run_options: Mapping[str, Any] | None) -> str | None:
    """The network a container's run options ask to join: ``None`` for ``none``/``host`` without
    ports, the named network, or :data:`DEFAULT_NETWORK` when ports are published without ``--net``."""
    ro = run_options or {}
    net = str(ro.get("net") or "none")
    publish = list(ro.get("publish") or [])
    if net == "host":
        return None
    if net == "none":
        return DEFAULT_NETWORK if publish else None
    return net


def wants_network(run_options: Mapping[str, Any] | None) -> bool:
    """Whether a container needs the network plugin at all (cheap: no plugin is loaded to answer)."""
    return requested_network(run_options) is not None


def check_run_network(net: str, publish: list[str]) -> list[PortMapping]:
    """Validate ``--net`` and ``-p`` together; the parsed port mappings."""
    validate_net(net)
    ports = [parse_publish(p) for p in publish]
    if ports and net == "host":
        raise InvalidArgument("-p publishes ports of a container network; with --net host the container "
                              "uses the host's ports directly")
    for i, a in enumerate(ports):
        for b in ports[:i]:
            if a.conflicts(b):
                raise InvalidArgument(f"host port {a.host_port}/{a.protocol} is published twice")
    return ports


@dataclass
class Attachment:
    """A container's attachment to a network."""

    namespace: str
    container_id: str
    network: str
    netns: str
    ifname: str = "eth0"
    ip: str = ""
    mac: str = ""
    gateway: str = ""
    ports: list[PortMapping] = field(default_factory=list)
    state: str = "attaching"
    created_at: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "container_id": self.container_id, "network": self.network,
                "netns": self.netns, "ifname": self.ifname, "ip": self.ip, "mac": self.mac,
                "gateway": self.gateway, "ports": [p.to_dict() for p in self.ports], "state": self.state,
                "created_at": self.created_at}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Attachment:
        return cls(namespace=str(d["namespace"]), container_id=str(d["container_id"]),
                   network=str(d["network"]), netns=str(d.get("netns") or ""),
                   ifname=str(d.get("ifname") or "eth0"), ip=str(d.get("ip") or ""),
                   mac=str(d.get("mac") or ""), gateway=str(d.get("gateway") or ""),
                   ports=[PortMapping.from_dict(p) for p in d.get("ports") or []],
                   state=str(d.get("state") or ""), created_at=int(d.get("created_at") or 0))


class NetworkPlugin(Protocol):
    """What the containers service calls (``registry.get("network")``)."""

    def attach(self, ns: str, id: str, spec: Mapping[str, Any],
               run_options: Mapping[str, Any]) -> dict[str, Any]: ...

    def detach(self, ns: str, id: str) -> bool: ...

    def attachment(self, ns: str, id: str) -> Attachment | None: ...

    def attachments(self, ns: str | None = None) -> list[Attachment]: ...


__all__ = ["BUILTIN_MODES", "DEFAULT_NETWORK", "Attachment", "NetworkPlugin", "PortMapping",
           "check_run_network", "parse_publish", "requested_network", "validate_net",
           "validate_network_name", "wants_network"]
