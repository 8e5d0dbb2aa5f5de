"""Container networks with the standard CNI plugins: the ``pyctr.network.cni`` plugin's instance.

:class:`NetworkManager` keeps the networks (CNI configuration lists in ``conf_dir``), attaches
containers to them and detaches them again:

* **attach** (before the task is created): reserve the attachment and its ports in the metadata
  database (conflicting ports are refused there, before any plugin runs), create a network namespace
  pinned at ``<state>/netns/<ns>/<id>``, run CNI ADD through the network's plugin chain (``bridge`` +
  ``host-local`` IPAM, ``portmap`` with the ``-p`` mappings, ``firewall``), write the container's
  ``resolv.conf``, ``hosts`` and ``hostname`` under ``<state>/containers/<ns>/<id>/`` and return the
  OCI spec with the namespace path and those files bind-mounted.  A failure undoes every step.
* **detach** (task deleted, ``--rm``, container removed): CNI DEL in reverse plugin order with the
  configuration and result recorded at ADD (so a changed or removed file does not matter), then the
  namespace and the files go, then the record.
* **recovery**: an attachment whose namespace vanished (the host rebooted, the state directory was
  wiped) is detached when the plugin starts.

The default network (``bridge``) is written on first use: bridge ``pyctr0``, ``10.88.0.0/16``,
NAT to the outside, host-local IPAM with its data under the plugin's state directory.

Table ``network_attachments`` (component ``network``)::

    ns, id, network, netns, ifname, ip, mac, gateway, ports (JSON list), conf (JSON conflist used),
    result (JSON CNI result), state (attaching | attached), created_at; PRIMARY KEY (ns, id)
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import ipaddress
import json
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pyctr.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PyctrError
from pyctr.metadata.db import MetadataDB, now_ns, register_migrations
from pyctr.mount import mount_points
from pyctr.network import (
    Attachment,
    PortMapping,
    check_run_network,
    requested_network,
    validate_network_name,
)

from . import netns
from .cni import CNI, CNIError, ConfList, Runtime, check_plugins, conf_files, load_file, parse_conflist, result_ip

log = logging.getLogger("pyctr.plugin.pyctr.network.cni")

register_migrations("network", [
    """
    CREATE TABLE network_attachments (
        ns TEXT NOT NULL,
        id TEXT NOT NULL,
        network TEXT NOT NULL,
        netns TEXT NOT NULL,
        ifname TEXT NOT NULL DEFAULT 'eth0',
        ip TEXT NOT NULL DEFAULT '',
        mac TEXT NOT NULL DEFAULT '',
        gateway TEXT NOT NULL DEFAULT '',
        ports TEXT NOT NULL DEFAULT '[]',
        conf TEXT NOT NULL DEFAULT '{}',
        result TEXT NOT NULL DEFAULT '{}',
        state TEXT NOT NULL DEFAULT 'attaching',
        created_at INTEGER NOT NULL,
        PRIMARY KEY (ns, id)
    );
    CREATE INDEX network_attachments_network ON network_attachments(network)
    """,
])

T = TypeVar("T")

CNI_VERSION = "1.0.0"
#: CNI calls per ADD or DEL when a plugin fails for a passing reason (a failed ADD is undone before the
#: next attempt): iptables on nf_tables answers EBUSY when other processes change rules at the same time.
RETRIES = 3
_TRANSIENT = re.compile(r"busy|exit status 4|temporarily unavailable|xtables lock|try again", re.IGNORECASE)
IFNAME = "eth0"
#: An attachment still "attaching" this long after it began belongs to a process that died.
STALE_ATTACHING_NS = 600 * 1_000_000_000
#: Where subnets of networks created without ``--subnet`` come from (/24 each).
AUTO_SUBNET_POOL = "10.89.0.0/16"
_ETC_FILES = ("resolv.conf", "hosts", "hostname")
#: Chains the CNI plugins share between containers (never a container's own).
_SHARED_CHAIN = re.compile(r"CNI-(HOSTPORT-(DNAT|SNAT|SETMARK|MASQ)|FORWARD|ADMIN)$")


def bridge_conflist(name: str, bridge: str, subnet: str, gateway: str = "") -> dict[str, Any]:
    """A bridge network as nerdctl and podman make them: bridge + host-local, portmap, firewall."""
    net = ipaddress.ip_network(subnet, strict=False)
    rng: dict[str, Any] = {"subnet": str(net)}
    if gateway:
        rng["gateway"] = gateway
    default_route = "0.0.0.0/0" if net.version == 4 else "::/0"
    return {
        "cniVersion": CNI_VERSION,
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {"type": "host-local", "ranges": [[rng]], "routes": [{"dst": default_route}]},
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "firewall"},
        ],
    }


def _atomic_write(path: Path, data: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _host_routes_v4() -> list[ipaddress.IPv4Network]:
    out: list[ipaddress.IPv4Network] = []
    try:
        with open("/proc/net/route", encoding="ascii") as f:
            next(f, None)
            for line in f:
                parts = line.split()
                if len(parts) < 8:
                    continue
                dest = int(parts[1], 16).to_bytes(4, "little")
                mask = int(parts[7], 16).to_bytes(4, "little")
                if mask == b"\0\0\0\0":
                    continue  # the default route overlaps everything
                with contextlib.suppress(ValueError):
                    out.append(ipaddress.IPv4Network(
                        f"{ipaddress.IPv4Address(dest)}/{ipaddress.IPv4Address(mask)}", strict=False))
    except OSError:
        pass
    return out


def conf_subnets(conf: ConfList) -> list[str]:
    out: list[str] = []
    for p in conf.plugins:
        ipam = p.get("ipam")
        if not isinstance(ipam, Mapping):
            continue
        for rs in ipam.get("ranges") or []:
            for r in rs if isinstance(rs, list) else []:
                if isinstance(r, Mapping) and r.get("subnet"):
                    out.append(str(r["subnet"]))
        if ipam.get("subnet"):
            out.append(str(ipam["subnet"]))
    return out


def conf_bridge(conf: ConfList) -> str:
    for p in conf.plugins:
        if p.get("type") == "bridge":
            return str(p.get("bridge") or "cni0")
    return ""


def _link_exists(name: str) -> bool:
    return bool(name) and os.path.exists(f"/sys/class/net/{name}")


def _retried(what: str, container_id: str, call: Callable[[], T]) -> T:
    """``call()``, made up to :data:`RETRIES` times while it fails with a CNI error that looks passing
    (:data:`_TRANSIENT`)."""
    for attempt in range(RETRIES):
        try:
            return call()
        except CNIError as e:
            if attempt + 1 == RETRIES or not _TRANSIENT.search(str(e)):
                raise
            log.info("CNI %s of %s failed (%s); trying again", what, container_id, e)
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


class NetworkManager:
    """The ``network`` plugin: networks from ``conf_dir``, attachments in the metadata database."""

    def __init__(self, db: MetadataDB, *, state: Path, bin_dirs: Sequence[str], conf_dir: str,
                 default_network: str = "bridge", default_subnet: str = "10.88.0.0/16",
                 bridge_name: str = "pyctr0", plugin_timeout: float = 60.0) -> None:
        self.db = db
        db.ensure_schema("network")
        self.state = Path(state)
        self.bin_dirs = [str(b) for b in bin_dirs]
        self.conf_dir = Path(conf_dir)
        self.default_network = validate_network_name(default_network)
        try:
            ipaddress.ip_network(default_subnet, strict=False)
        except ValueError:
            raise InvalidArgument(f"default_subnet {default_subnet!r} is not a network (e.g. 10.88.0.0/16)") \
                from None
        self.default_subnet = default_subnet
        if not bridge_name or len(bridge_name) > 15 or "/" in bridge_name:
            raise InvalidArgument(f"bridge_name {bridge_name!r} must be 1 to 15 characters, no '/'")
        self.bridge_name = bridge_name
        self.cni = CNI(self.bin_dirs, timeout=plugin_timeout)

    # -- paths and ids ---------------------------------------------------------------------------

    def netns_path(self, ns: str, id_: str) -> str:
        return str(self.state / "netns" / ns / id_)

    def files_dir(self, ns: str, id_: str) -> Path:
        return self.state / "containers" / ns / id_

    @property
    def ipam_dir(self) -> Path:
        return self.state / "ipam"

    @staticmethod
    def cni_container_id(ns: str, id_: str) -> str:
        """Unique per (namespace, id), readable in iptables comments and IPAM files."""
        h = hashlib.sha256(f"{ns}/{id_}".encode()).hexdigest()[:12]
        return f"{id_}-{h}"

    # -- networks --------------------------------------------------------------------------------

    def _scan(self) -> tuple[dict[str, ConfList], list[str]]:
        """Valid networks by name (the first file of a name wins, as libcni), and the problems."""
        nets: dict[str, ConfList] = {}
        problems: list[str] = []
        for f in conf_files(self.conf_dir):
            try:
                conf = load_file(f)
            except PyctrError as e:
                problems.append(str(e))
                continue
            nets.setdefault(conf.name, conf)
        return nets, problems

    def _default_conf(self) -> ConfList:
        doc = bridge_conflist(self.default_network, self.bridge_name, self.default_subnet)
        return parse_conflist(doc, str(self.conf_dir / f"{self.default_network}.conflist"))

    def networks(self) -> dict[str, ConfList]:
        """Every network by name; the default one too, even before its file is written."""
        nets, _ = self._scan()
        nets.setdefault(self.default_network, self._default_conf())
        return nets

    def problems(self) -> list[str]:
        """One line per configuration file that could not be used."""
        return self._scan()[1]

    def network(self, name: str) -> ConfList:
        """The network ``name``; the default network's file is written here on first use."""
        nets, problems = self._scan()
        conf = nets.get(name)
        if conf is not None:
            return conf
        if name == self.default_network:
            conf = self._default_conf()
            path = Path(conf.path)
            if not path.exists():
                _atomic_write(path, json.dumps(conf.to_dict(), indent=2) + "\n")
            return conf
        hint = f"; {len(problems)} file(s) in {self.conf_dir} could not be read" if problems else ""
        raise NotFound(f"network {name!r} not found (pyctr network ls lists them; pyctr network create "
                       f"makes one{hint})")

    def _effective(self, conf: ConfList) -> ConfList:
        """``conf`` as it is run: host-local IPAM keeps its data under this plugin's state."""
        doc = copy.deepcopy(conf.to_dict())
        for p in doc["plugins"]:
            ipam = p.get("ipam")
            if isinstance(ipam, dict) and ipam.get("type") == "host-local" and not ipam.get("dataDir"):
                ipam["dataDir"] = str(self.ipam_dir)
        return parse_conflist(doc, conf.path)

    def _used_subnets(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for conf in self.networks().values():
            for s in conf_subnets(conf):
                with contextlib.suppress(ValueError):
                    out.append(ipaddress.ip_network(s, strict=False))
        out.extend(_host_routes_v4())
        return out

    def _free_subnet(self) -> str:
        used = self._used_subnets()
        for cand in ipaddress.ip_network(AUTO_SUBNET_POOL).subnets(new_prefix=24):
            if not any(cand.version == u.version and cand.overlaps(u) for u in used):
                return str(cand)
        raise FailedPrecondition(f"no free /24 left in {AUTO_SUBNET_POOL}: give --subnet")

    def create_network(self, name: str, *, subnet: str = "", gateway: str = "", bridge: str = "",
                       config: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write a new network: a bridge network (``subnet``/``gateway``/``bridge`` or chosen), or the
        conflist ``config`` as given (checked: JSON shape, CNI version, plugins installed)."""
        validate_network_name(name)
        if name in self.networks():
            raise AlreadyExists(f"network {name!r} already exists")
        if config is not None:
            if subnet or gateway or bridge:
                raise InvalidArgument("give either a configuration file or --subnet/--gateway/--bridge")
            doc = dict(config)
            if doc.get("name") not in (None, name):
                raise InvalidArgument(f"the configuration names its network {doc.get('name')!r}, not {name!r}")
            doc["name"] = name
        else:
            if subnet:
                try:
                    net = ipaddress.ip_network(subnet, strict=False)
                except ValueError:
                    raise InvalidArgument(f"invalid --subnet {subnet!r}: want a CIDR such as 10.90.0.0/24") \
                        from None
                if net.is_loopback or net.is_multicast or net.is_link_local or net.prefixlen > 30:
                    raise InvalidArgument(f"invalid --subnet {subnet!r}: want a private range such as "
                                          "10.90.0.0/24 (not loopback, link-local or multicast; /30 at most)")
                for u in self._used_subnets():
                    if net.version == u.version and net.overlaps(u):
                        raise FailedPrecondition(f"subnet {net} overlaps {u}, already in use")
                subnet = str(net)
            else:
                subnet = self._free_subnet()
            if gateway:
                try:
                    gw = ipaddress.ip_address(gateway)
                except ValueError:
                    raise InvalidArgument(f"invalid --gateway {gateway!r}") from None
                if gw not in ipaddress.ip_network(subnet):
                    raise InvalidArgument(f"gateway {gateway} is not in subnet {subnet}")
            if bridge and (len(bridge) > 15 or "/" in bridge):
                raise InvalidArgument(f"invalid --bridge {bridge!r}: 1 to 15 characters, no '/'")
            bridge = bridge or "pyctr-" + hashlib.sha256(name.encode()).hexdigest()[:8]
            if _link_exists(bridge) and not os.path.isdir(f"/sys/class/net/{bridge}/bridge"):
                raise InvalidArgument(f"--bridge {bridge}: a link of that name exists and is not a bridge")
            users = [n for n, c in self.networks().items() if conf_bridge(c) == bridge]
            if users:
                raise FailedPrecondition(f"bridge {bridge} already belongs to network {users[0]!r}")
            doc = bridge_conflist(name, bridge, subnet, gateway)
        path = self.conf_dir / f"{name}.conflist"
        conf = parse_conflist(doc, str(path))
        check_plugins(conf, self.bin_dirs)
        if path.exists():
            raise AlreadyExists(f"{path} already exists (a file of another name holds network {name!r}?)")
        _atomic_write(path, json.dumps(conf.to_dict(), indent=2) + "\n")
        return self.inspect(name)

    def remove_network(self, name: str) -> None:
        """Remove a network's file (and its bridge, when pyctr's and unused).  Refused while containers
        are attached to it."""
        nets, _ = self._scan()
        conf = nets.get(name)
        if conf is None:
            raise NotFound(f"network {name!r} not found")
        users = [a.container_id for a in self.attachments() if a.network == name]
        if users:
            raise FailedPrecondition(f"network {name!r} has containers attached ({', '.join(users[:5])}): "
                                     "remove them first")
        os.unlink(conf.path)
        br = conf_bridge(conf)
        if br and _link_exists(br):
            subprocess.run(["ip", "link", "delete", br, "type", "bridge"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, timeout=30)
        shutil.rmtree(self.ipam_dir / name, ignore_errors=True)

    def inspect(self, name: str) -> dict[str, Any]:
        conf = self.networks().get(name)
        if conf is None:
            raise NotFound(f"network {name!r} not found")
        return {
            "name": name,
            "file": conf.path if os.path.exists(conf.path) else "",
            "default": name == self.default_network,
            "plugins": conf.plugin_types(),
            "bridge": conf_bridge(conf),
            "subnets": conf_subnets(conf),
            "config": conf.to_dict(),
            "containers": [a.to_dict() for a in self.attachments() if a.network == name],
        }

    def list_networks(self) -> list[dict[str, Any]]:
        counts: dict[str, int] = {}
        for a in self.attachments():
            counts[a.network] = counts.get(a.network, 0) + 1
        out = []
        for name, conf in sorted(self.networks().items()):
            out.append({"name": name, "default": name == self.default_network, "bridge": conf_bridge(conf),
                        "subnets": conf_subnets(conf), "plugins": conf.plugin_types(),
                        "containers": counts.get(name, 0)})
        return out

    # -- attachment records ----------------------------------------------------------------------

    @staticmethod
    def _row(row: Any) -> Attachment:
        return Attachment(namespace=row["ns"], container_id=row["id"], network=row["network"],
                          netns=row["netns"], ifname=row["ifname"], ip=row["ip"], mac=row["mac"],
                          gateway=row["gateway"],
                          ports=[PortMapping.from_dict(p) for p in json.loads(row["ports"] or "[]")],
                          state=row["state"], created_at=int(row["created_at"]))

    def attachment(self, ns: str, id: str) -> Attachment | None:
        row = self.db.query_one("SELECT * FROM network_attachments WHERE ns=? AND id=?", (ns, id))
        return None if row is None else self._row(row)

    def attachments(self, ns: str | None = None) -> list[Attachment]:
        if ns is None:
            rows = self.db.query("SELECT * FROM network_attachments ORDER BY ns, id")
        else:
            rows = self.db.query("SELECT * FROM network_attachments WHERE ns=? ORDER BY id", (ns,))
        return [self._row(r) for r in rows]

    def addresses(self, ns: str) -> dict[str, str]:
        """``{container id: IP}`` of the attached containers of ``ns``."""
        rows = self.db.query("SELECT id, ip FROM network_attachments WHERE ns=? AND ip != ''", (ns,))
        return {r["id"]: r["ip"] for r in rows}

    def _reserve(self, att: Attachment, conf: ConfList) -> None:
        with self.db.tx() as tx:
            if tx.execute("SELECT 1 FROM network_attachments WHERE ns=? AND id=?",
                          (att.namespace, att.container_id)).fetchone():
                raise AlreadyExists(f"container {att.container_id!r} is already attached to a network")
            if att.ports:
                for row in tx.execute("SELECT ns, id, ports FROM network_attachments WHERE ports != '[]'"):
                    for p in json.loads(row["ports"]):
                        other = PortMapping.from_dict(p)
                        for mine in att.ports:
                            if mine.conflicts(other):
                                raise AlreadyExists(f"host port {mine.host_port}/{mine.protocol} is already "
                                                    f"published by container {row['id']!r}")
            tx.execute(
                "INSERT INTO network_attachments(ns, id, network, netns, ifname, ports, conf, state, created_at)"
                " VALUES(?, ?, ?, ?, ?, ?, ?, 'attaching', ?)",
                (att.namespace, att.container_id, att.network, att.netns, att.ifname,
                 json.dumps([p.to_dict() for p in att.ports]), json.dumps(conf.to_dict()), att.created_at))

    def _forget(self, ns: str, id_: str) -> None:
        with self.db.tx() as tx:
            tx.execute("DELETE FROM network_attachments WHERE ns=? AND id=?", (ns, id_))

    # -- attach / detach ------------------------------------------------------------------------

    def attach(self, ns: str, id: str, spec: Mapping[str, Any],
               run_options: Mapping[str, Any]) -> dict[str, Any]:
        """Attach container ``ns/id`` as its run options ask (``net``, ``publish``) and return ``spec``
        changed to use the new network namespace and the generated ``/etc`` files.  Run options that
        ask for no network give ``spec`` back unchanged.  The caller guarantees the container has no
        task: an attachment left from a crashed call is detached first."""
        name = requested_network(run_options)
        if name is None:
            return copy.deepcopy(dict(spec))
        ports = check_run_network(str(run_options.get("net") or "none"),
                                  [str(p) for p in run_options.get("publish") or []])
        conf = self._effective(self.network(name))
        if ports and not any((p.get("capabilities") or {}).get("portMappings") for p in conf.plugins):
            raise InvalidArgument(f"network {name!r} cannot publish ports: none of its plugins has the "
                                  "portMappings capability (add portmap)")
        check_plugins(conf, self.bin_dirs)
        _check_host_ports(ports)
        if self.attachment(ns, id) is not None:
            self.detach(ns, id)
        path = self.netns_path(ns, id)
        att = Attachment(ns, id, name, path, IFNAME, ports=ports, created_at=now_ns())
        self._reserve(att, conf)
        rt = self._runtime(att)
        made_ns = False
        try:
            if os.path.lexists(path):  # a namespace file nobody records: left by a crash
                netns.remove(path)
            netns.create(path)
            made_ns = True
            result = self._add(conf, rt)
            att.ip, att.gateway, att.mac = result_ip(result)
            hostname = str(spec.get("hostname") or id[:12])
            self._write_files(ns, id, hostname, att.ip, result)
            with self.db.tx() as tx:
                tx.execute("UPDATE network_attachments SET ip=?, mac=?, gateway=?, result=?, state='attached'"
                           " WHERE ns=? AND id=?", (att.ip, att.mac, att.gateway, json.dumps(result), ns, id))
        except BaseException:
            if made_ns:
                with contextlib.suppress(Exception):
                    self._del(conf, rt)
            with contextlib.suppress(Exception):
                netns.remove(path)
            shutil.rmtree(self.files_dir(ns, id), ignore_errors=True)
            with contextlib.suppress(Exception):
                self._forget(ns, id)
            raise
        return self._spec_with(spec, att)

    def _add(self, conf: ConfList, rt: Runtime) -> dict[str, Any]:
        """CNI ADD; a failure is undone (DEL), and tried again when it looks passing (:data:`_TRANSIENT`)."""

        def add() -> dict[str, Any]:
            try:
                return self.cni.add(conf, rt)
            except CNIError:
                with contextlib.suppress(PyctrError):
                    self._del(conf, rt)
                raise

        return _retried("ADD", rt.container_id, add)

    def _del(self, conf: ConfList, rt: Runtime, prev_result: Mapping[str, Any] | None = None,
             skip: Sequence[str] = ()) -> None:
        """CNI DEL, tried again when it fails for a passing reason."""
        _retried("DEL", rt.container_id, lambda: self.cni.delete(conf, rt, prev_result, skip_types=skip))

    def _runtime(self, att: Attachment, netns_path: str | None = None) -> Runtime:
        caps: dict[str, Any] = {}
        if att.ports:
            caps["portMappings"] = [p.cni() for p in att.ports]
        return Runtime(container_id=self.cni_container_id(att.namespace, att.container_id),
                       netns=att.netns if netns_path is None else netns_path, ifname=att.ifname,
                       args=[("IgnoreUnknown", "1")], capability_args=caps)

    def detach(self, ns: str, id: str) -> bool:
        """CNI DEL, then the namespace, the files and the record go.  False when ``ns/id`` was not
        attached (what a crash may have left is still removed).  A failing DEL raises and keeps
        everything, so that a later call can try again."""
        row = self.db.query_one("SELECT * FROM network_attachments WHERE ns=? AND id=?", (ns, id))
        path = self.netns_path(ns, id) if row is None else str(row["netns"])
        if row is None:
            with contextlib.suppress(Exception):
                netns.remove(path)
            shutil.rmtree(self.files_dir(ns, id), ignore_errors=True)
            return False
        att = self._row(row)
        conf = parse_conflist(json.loads(row["conf"]))
        result = json.loads(row["result"] or "{}") or None
        alive = netns.exists(path)
        # portmap's ADD without mappings changes nothing, but its DEL runs a dozen iptables commands:
        # skip it for a container that published no port (state "attached": the ADD got that far).
        skip = ("portmap",) if not att.ports and att.state == "attached" else ()
        self._del(conf, self._runtime(att, path if alive else ""), result, skip)
        if not alive:
            # Without the namespace the bridge plugin cannot learn the address whose NAT rules it made
            # (it reads them from the container's interface): remove the rules tagged with the container.
            purge_iptables(self.cni_container_id(ns, id))
        netns.remove(path)
        shutil.rmtree(self.files_dir(ns, id), ignore_errors=True)
        self._forget(ns, id)
        return True

    def recover(self, alive: Callable[[str, str], bool] | None = None, *, min_age: float = 60.0) -> list[str]:
        """Detach what a crash left: attachments whose namespace is gone (or, with ``alive``, whose
        container has no task any more, if attached more than ``min_age`` seconds ago: a younger one
        may be getting its task right now).  Returns ``ns/id`` of those detached."""
        done: list[str] = []
        atts = self.attachments()
        if not atts:
            return done
        cutoff = now_ns() - STALE_ATTACHING_NS
        young = now_ns() - int(min_age * 1e9)
        mounted = set(mount_points())  # read once: a netns file is alive while it is a mount point
        for a in atts:
            if a.state == "attaching" and a.created_at > cutoff:
                continue  # another process is attaching it right now
            gone = os.path.realpath(a.netns) not in mounted
            if not gone and alive is not None and a.created_at < young:
                gone = not alive(a.namespace, a.container_id)
            if not gone:
                continue
            try:
                self.detach(a.namespace, a.container_id)
                done.append(f"{a.namespace}/{a.container_id}")
            except PyctrError as e:
                log.warning("cannot detach %s/%s from %s: %s", a.namespace, a.container_id, a.network, e)
        return done

    # -- the container's view ---------------------------------------------------------------------

    def _write_files(self, ns: str, id_: str, hostname: str, ip: str, result: Mapping[str, Any]) -> None:
        d = self.files_dir(ns, id_)
        d.mkdir(parents=True, exist_ok=True, mode=0o755)
        _atomic_write(d / "resolv.conf", resolv_conf(result.get("dns") or {}))
        hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        if ip:
            hosts += f"{ip}\t{hostname}\n"
        _atomic_write(d / "hosts", hosts)
        _atomic_write(d / "hostname", hostname + "\n")

    def _spec_with(self, spec: Mapping[str, Any], att: Attachment) -> dict[str, Any]:
        out = copy.deepcopy(dict(spec))
        linux = out.setdefault("linux", {})
        nss = [n for n in linux.get("namespaces") or [] if n.get("type") != "network"]
        nss.append({"type": "network", "path": att.netns})
        linux["namespaces"] = nss
        mounts = list(out.get("mounts") or [])
        taken = {os.path.normpath(str(m.get("destination", ""))) for m in mounts}
        d = self.files_dir(att.namespace, att.container_id)
        for name in _ETC_FILES:
            dest = f"/etc/{name}"
            if dest not in taken:
                mounts.append({"destination": dest, "type": "bind", "source": str(d / name),
                               "options": ["rbind", "rprivate", "ro"]})
        out["mounts"] = mounts
        return out

    def close(self) -> None:
        pass


def resolv_conf(dns: Mapping[str, Any], host_file: str = "/etc/resolv.conf") -> str:
    """The container's ``resolv.conf``: the CNI result's DNS settings, or the host's without loopback
    name servers (which mean nothing inside the container), or public ones when none is left."""
    servers = [str(s) for s in dns.get("nameservers") or []]
    search = [str(s) for s in dns.get("search") or []]
    options = [str(s) for s in dns.get("options") or []]
    if not servers:
        try:
            with open(host_file, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            lines = []
        for line in lines:
            parts = line.split("#", 1)[0].split()
            if len(parts) < 2:
                continue
            if parts[0] == "nameserver":
                try:
                    if not ipaddress.ip_address(parts[1].split("%", 1)[0]).is_loopback:
                        servers.append(parts[1])
                except ValueError:
                    continue
            elif parts[0] in ("search", "domain") and not search:
                search = parts[1:]
            elif parts[0] == "options" and not options:
                options = parts[1:]
    if not servers:
        servers = ["8.8.8.8", "8.8.4.4"]
    text = "".join(f"nameserver {s}\n" for s in servers)
    if search:
        text += "search " + " ".join(search) + "\n"
    if options:
        text += "options " + " ".join(options) + "\n"
    return text


def purge_iptables(cni_id: str) -> list[str]:
    """Delete the iptables rules whose comment names CNI container ``cni_id`` (``id: "<cni_id>"``, as
    the CNI plugins tag them) and the per-container chains they jump to; the rules deleted."""
    if shutil.which("iptables-save") is None:
        return []
    tag = f'id: \\"{cni_id}\\"'
    done: list[str] = []
    for table in ("nat", "filter", "mangle"):
        out = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True, check=False,
                             timeout=30).stdout
        rules = [ln for ln in out.splitlines() if ln.startswith("-A ") and tag in ln]
        chains: list[str] = []
        for ln in rules:
            args = shlex.split(ln)[1:]
            if "-j" in args:
                target = args[args.index("-j") + 1]
                if target.startswith("CNI-") and target not in chains and not _SHARED_CHAIN.match(target):
                    chains.append(target)
            proc = subprocess.run(["iptables", "-w", "-t", table, "-D", *args], capture_output=True,
                                  check=False, timeout=30)
            if proc.returncode == 0:
                done.append(ln)
        for ch in chains:
            subprocess.run(["iptables", "-w", "-t", table, "-F", ch], capture_output=True, check=False, timeout=30)
            subprocess.run(["iptables", "-w", "-t", table, "-X", ch], capture_output=True, check=False, timeout=30)
    if done:
        log.info("removed %d iptables rules left for %s", len(done), cni_id)
    return done


def _check_host_ports(ports: Sequence[PortMapping]) -> None:
    """Refuse a host port a process on the host listens on (portmap would silently take it over)."""
    for p in ports:
        if p.protocol not in ("tcp", "udp"):
            continue
        ip = p.host_ip or "0.0.0.0"
        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
        kind = socket.SOCK_STREAM if p.protocol == "tcp" else socket.SOCK_DGRAM
        with socket.socket(fam, kind) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((ip, p.host_port))
            except OSError as e:
                if e.errno == 98:  # EADDRINUSE
                    raise AlreadyExists(f"host port {ip}:{p.host_port}/{p.protocol} is already in use") \
                        from None
                if e.errno == 99:  # EADDRNOTAVAIL
                    raise InvalidArgument(f"host address {ip} of -p is not an address of this host") from None
                raise


__all__ = ["NetworkManager", "bridge_conflist", "resolv_conf"]
