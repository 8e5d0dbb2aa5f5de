"""Container networking with the real CNI plugins (bridge, host-local, portmap, firewall), real network
namespaces, real runc: ``pyctr run --net``/``-p``, ``pyctr network``, cleanup and recovery.

Every test uses its own conf_dir, state (IPAM data, namespace files), a bridge named ``pyctrt<random>``
and a private /24 no route of the host covers; traffic goes only to 127.0.0.1 and to the containers'
addresses on that bridge.  The teardown removes the containers, the namespace files and the bridge,
then checks that links, addresses and iptables rules are back to what they were before the test.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import RUNS_CONTAINERS, Roots, child_env, pyctr_executable
from pyctr.errdefs import InvalidArgument
from pyctr.network import PortMapping, check_run_network, parse_publish, requested_network
from pyctr.plugins.network.cni.cni import CNI, CNIError, Runtime, parse_conflist, result_ip
from pyctr.plugins.network.cni.manager import bridge_conflist, resolv_conf
from pyctr.plugins.runtime.runc import cgroups

CNI_BIN = "/usr/lib/cni"
IMAGE = "localhost/busybox:latest"
# Chains and jumps the CNI plugins create once per host and share between networks (never removed by
# a DEL): their presence after a test is not a leak.
_SHARED = re.compile(r"CNI-HOSTPORT-(DNAT|SNAT|SETMARK|MASQ)\b|CNI-FORWARD\b|CNI-ADMIN\b")
_IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+")


# -- pure parts ---------------------------------------------------------------------------------------

def test_parse_publish() -> None:
    assert parse_publish("8080:80") == PortMapping(8080, 80, "tcp", "")
    assert parse_publish("127.0.0.1:8080:80/udp") == PortMapping(8080, 80, "udp", "127.0.0.1")
    assert parse_publish("[::1]:53:53/udp") == PortMapping(53, 53, "udp", "::1")
    assert str(parse_publish("127.0.0.1:8080:80")) == "127.0.0.1:8080->80/tcp"
    for bad in ("80", "0:80", "70000:80", "a:80", "1.2.3:80:80", "8080:80/icmp", "127.0.0.1::80"):
        with pytest.raises(InvalidArgument):
            parse_publish(bad)


def test_net_and_publish_together() -> None:
    assert requested_network({"net": "none"}) is None
    assert requested_network({"net": "host"}) is None
    assert requested_network({"net": "none", "publish": ["80:80"]}) == "bridge"
    assert requested_network({"net": "mynet"}) == "mynet"
    with pytest.raises(InvalidArgument, match="--net host"):
        check_run_network("host", ["80:80"])
    with pytest.raises(InvalidArgument, match="twice"):
        check_run_network("bridge", ["80:80", "127.0.0.1:80:81"])
    assert len(check_run_network("bridge", ["80:80", "80:80/udp", "81:80"])) == 3
    with pytest.raises(InvalidArgument):
        check_run_network("bad name!", [])
    a, b = PortMapping(80, 80, "tcp", "127.0.0.1"), PortMapping(80, 81, "tcp", "127.0.0.2")
    assert not a.conflicts(b) and a.conflicts(PortMapping(80, 1)) and not a.conflicts(PortMapping(80, 1, "udp"))


def test_conflist_checks() -> None:
    conf = parse_conflist(bridge_conflist("n1", "br-x", "10.1.2.0/24"))
    assert conf.plugin_types() == ["bridge", "portmap", "firewall"]
    single = parse_conflist({"cniVersion": "0.4.0", "name": "one", "type": "bridge"})
    assert single.plugins == [{"type": "bridge"}]
    for bad, msg in [([], "JSON object"), ({"cniVersion": "1.0.0", "plugins": [{"type": "x"}]}, "name"),
                     ({"cniVersion": "9", "name": "n", "plugins": [{"type": "x"}]}, "cniVersion"),
                     ({"cniVersion": "1.0.0", "name": "n", "plugins": []}, "plugins"),
                     ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../x"}]}, "not a name")]:
        with pytest.raises(InvalidArgument, match=msg):
            parse_conflist(bad)


def test_plugin_config_chaining_and_capabilities() -> None:
    conf = parse_conflist(bridge_conflist("n1", "br-x", "10.1.2.0/24"))
    rt = Runtime("c1", "/x", capability_args={"portMappings": [{"hostPort": 1}], "bandwidth": {}})
    first = CNI([CNI_BIN]).plugin_config(conf, conf.plugins[0], rt, None)
    assert first["name"] == "n1" and first["cniVersion"] == "1.0.0"
    assert "prevResult" not in first and "runtimeConfig" not in first
    pm = CNI([CNI_BIN]).plugin_config(conf, conf.plugins[1], rt, {"ips": []})
    assert pm["prevResult"] == {"ips": []} and pm["runtimeConfig"] == {"portMappings": [{"hostPort": 1}]}


def test_plugin_errors_are_one_line(tmp_path: Path) -> None:
    plugin = tmp_path / "failing"
    plugin.write_text("#!/bin/sh\ncat >/dev/null\ncat <<'EOF'\n"
                      '{"code": 7, "msg": "no\\nway", "details": "x"}\nEOF\nexit 1\n')
    plugin.chmod(0o755)
    conf = parse_conflist({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "failing"}]})
    with pytest.raises(CNIError, match=r"^CNI plugin failing ADD failed \(network n\): no way: x$"):
        CNI([str(tmp_path)]).add(conf, Runtime("c", "/x"))


def test_result_ip_and_resolv_conf(tmp_path: Path) -> None:
    res = {"interfaces": [{"name": "br"}, {"name": "eth0", "mac": "aa:bb", "sandbox": "/x"}],
           "ips": [{"address": "fd00::2/64", "interface": 1}, {"address": "10.1.2.3/24", "gateway": "10.1.2.1",
                                                                "interface": 1}]}
    assert result_ip(res) == ("10.1.2.3", "10.1.2.1", "aa:bb")
    host = tmp_path / "resolv.conf"
    host.write_text("nameserver 127.0.0.53\nnameserver 192.0.2.1 # x\nsearch a.example b.example\n"
                    "options ndots:2\n")
    assert resolv_conf({}, str(host)) == ("nameserver 192.0.2.1\nsearch a.example b.example\n"
                                          "options ndots:2\n")
    host.write_text("nameserver 127.0.0.1\n")
    assert resolv_conf({}, str(host)).startswith("nameserver 8.8.8.8\n")
    assert resolv_conf({"nameservers": ["10.0.0.1"]}, str(host)) == "nameserver 10.0.0.1\n"


# -- with real plugins ------------------------------------------------------------------------------------

_ROOT_MARKS = [
    *RUNS_CONTAINERS,
    pytest.mark.skipif(not os.path.exists(f"{CNI_BIN}/bridge"), reason="needs containernetworking-plugins"),
    pytest.mark.skipif(shutil.which("iptables-save") is None, reason="needs iptables"),
]


def needs_root(fn: Any) -> Any:
    for m in reversed(_ROOT_MARKS):
        fn = m(fn)
    return fn


def _host_networks() -> list[ipaddress.IPv4Network]:
    out = []
    for line in subprocess.run(["ip", "-4", "-o", "route", "show", "table", "all"], capture_output=True,
                               text=True, check=False).stdout.splitlines():
        dst = line.split()[0] if line.split() else ""
        if dst in ("default", "broadcast", "local", "unreachable") or not dst[:1].isdigit():
            dst = line.split()[1] if len(line.split()) > 1 and line.split()[0] in ("broadcast", "local") else ""
        with contextlib.suppress(ValueError):
            if dst:
                out.append(ipaddress.IPv4Network(dst, strict=False))
    return out


def _free_subnet() -> str:
    used = _host_networks()
    for _ in range(200):
        cand = ipaddress.IPv4Network(f"10.{random.randint(150, 250)}.{random.randint(0, 255)}.0/24")
        if not any(cand.overlaps(u) for u in used):
            return str(cand)
    raise RuntimeError("no free test subnet")


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {ln.split(":")[1].strip().split("@")[0] for ln in out.splitlines() if ":" in ln}


def _addrs() -> set[str]:
    out = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    return {" ".join(ln.split()[1:4]) for ln in out.splitlines()}


def _rules() -> set[str]:
    """iptables rules that could be a container's (CNI chains and jumps), without counters."""
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    keep = set()
    for ln in out.splitlines():
        if ln.startswith("#") or "CNI" not in ln:
            continue
        if _SHARED.search(ln) and "CNI-DN-" not in ln and not _IPV4.search(ln):
            continue  # the shared chains' declarations and fixed jumps
        keep.add(re.sub(r"\[\d+:\d+\]", "", ln).strip())
    return keep


def _purge_rules(prefix: str) -> list[str]:
    """Delete iptables rules that name an address starting with ``prefix``, then the CNI chains they
    jump to; the rules deleted."""
    import shlex

    done: list[str] = []
    for _ in range(3):
        found = False
        for table in ("nat", "filter"):
            out = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True,
                                 check=False).stdout
            chains = []
            for ln in out.splitlines():
                if not ln.startswith("-A ") or prefix not in ln:
                    continue
                found = True
                args = shlex.split(ln)[1:]
                subprocess.run(["iptables", "-w", "-t", table, "-D", *args], capture_output=True, check=False)
                done.append(ln)
                target = args[args.index("-j") + 1] if "-j" in args else ""
                if target.startswith("CNI-") and not _SHARED.search(target):
                    chains.append(target)
            for ch in dict.fromkeys(chains):
                for op in ("-F", "-X"):
                    subprocess.run(["iptables", "-w", "-t", table, op, ch], capture_output=True, check=False)
        if not found:
            break
    return done


@dataclass
class Net:
    roots: Roots
    bridge: str
    subnet: str
    conf_dir: Path
    cgroup_parent: str
    ns: str = "default"

    def cmd(self, *args: str) -> list[str]:
        return [pyctr_executable(), *self.roots.args(), "-n", self.ns, *args]

    def run(self, *args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(*args), input=input, capture_output=True, text=True, env=child_env(),
                              timeout=timeout)

    def ok(self, *args: str) -> str:
        p = self.run(*args)
        assert p.returncode == 0, f"pyctr {' '.join(args)} exited {p.returncode}: {p.stderr}"
        return p.stdout

    def fails(self, code: int, *args: str) -> str:
        """Run a command that must fail with ``code`` and a one-line message; the message."""
        p = self.run(*args)
        assert p.returncode == code, f"pyctr {' '.join(args)}: exit {p.returncode}, stderr {p.stderr!r}"
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pyctr: ") and "Traceback" not in p.stderr, p.stderr
        return lines[0]

    @property
    def net_state(self) -> Path:
        return self.roots.state / "pyctr.network.cni"

    def ip_of(self, cid: str) -> str:
        info = json.loads(self.ok("containers", "info", cid))
        ip = str(info["network"]["ip"])
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(self.subnet) or info["network"]["network"] != \
            "bridge"
        return ip

    def attachments(self) -> list[dict[str, Any]]:
        from pyctr.metadata.db import MetadataDB

        db = MetadataDB(self.roots.root / "pyctr.metadata.sqlite" / "meta.db")
        try:
            db.ensure_schema("network")
            return [dict(r) for r in db.query("SELECT ns, id, network, ip FROM network_attachments")]
        finally:
            db.close()

    def bridge_members(self) -> list[str]:
        if not os.path.exists(f"/sys/class/net/{self.bridge}"):
            return []
        out = subprocess.run(["ip", "-o", "link", "show", "master", self.bridge], capture_output=True, text=True,
                             check=False).stdout
        return [ln.split(":")[1].strip() for ln in out.splitlines() if ":" in ln]

    def assert_clean(self) -> None:
        """Every attachment gone: no record, no namespace file or mount, no veth on the bridge, no rule
        or IPAM reservation for the test's subnet."""
        assert self.attachments() == []
        netns_dir = self.net_state / "netns"
        left = [str(p) for p in netns_dir.rglob("*") if p.is_file()] if netns_dir.exists() else []
        assert left == [], f"namespace files left: {left}"
        with open("/proc/self/mounts") as f:
            assert [ln for ln in f if str(self.net_state) in ln] == []
        assert self.bridge_members() == [], "veths left on the bridge"
        prefix = self.subnet.rsplit(".", 1)[0] + "."
        assert [r for r in _rules() if prefix in r] == []
        ipam = self.net_state / "ipam"
        reserved = [p.name for p in ipam.rglob("*") if p.name.startswith(prefix)] if ipam.exists() else []
        assert reserved == [], f"IP addresses still reserved: {reserved}"


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def net(tmp_root: Roots) -> Iterator[Net]:
    bridge = "pyctrt" + uuid.uuid4().hex[:8]
    subnet = _free_subnet()
    conf_dir = tmp_root.root.parent / "net.d"
    parent = f"/pyctr-test-{uuid.uuid4().hex[:10]}"
    tmp_root.config.write_text(
        f'[plugins."pyctr.runtime.runc"]\ncgroup_parent = "{parent}"\n'
        f'[plugins."pyctr.network.cni"]\nconf_dir = "{conf_dir}"\nbridge_name = "{bridge}"\n'
        f'default_subnet = "{subnet}"\n')
    links0, addrs0, rules0 = _links(), _addrs(), _rules()
    n = Net(tmp_root, bridge, subnet, conf_dir, parent)
    try:
        n.ok("images", "build-busybox")
        yield n
    finally:
        try:
            for t in json.loads(n.run("tasks", "ls", "-o", "json").stdout or "[]"):
                _kill(int(t["pid"]))
            for cid in n.run("containers", "ls", "-q").stdout.split():
                n.run("containers", "rm", "--force", cid)
        except Exception:
            pass
        with contextlib.suppress(Exception):
            from pyctr.plugins.runtime.runc.manager import RuncRuntime

            RuncRuntime(tmp_root.state / "pyctr.runtime.runc", load=False).stop_zygote()
        with contextlib.suppress(Exception):
            from pyctr import runzygote

            runzygote.stop(str(tmp_root.state))
        members = n.bridge_members()
        with open("/proc/self/mounts") as f:
            mine = [ln.split()[1] for ln in f if ln.split()[1].startswith((str(tmp_root.root), str(tmp_root.state)))]
        for m in sorted(mine, reverse=True):
            subprocess.run(["umount", "-l", m], check=False)
        for name in [*members, n.bridge]:
            if os.path.exists(f"/sys/class/net/{name}"):
                subprocess.run(["ip", "link", "delete", name], check=False, capture_output=True)
        leaked = _purge_rules(n.subnet.rsplit(".", 1)[0] + ".")  # only after a failure: reported below
        for conf in conf_dir.glob("*.conflist") if conf_dir.exists() else []:
            try:
                doc = json.loads(conf.read_text())
            except ValueError:
                continue
            for p in doc.get("plugins", []):
                br = p.get("bridge")
                if br and br.startswith("pyctr-") and os.path.exists(f"/sys/class/net/{br}"):
                    subprocess.run(["ip", "link", "delete", br], check=False, capture_output=True)
        cgroups.remove(parent)  # every hierarchy, children first; what still holds a process stays
    # The host is as it was (links and addresses of other runs are not ours to judge: only ours count;
    # our veths were checked on the bridge by the tests' assert_clean).
    ours = re.compile(r"^(pyctrt|pyctr-)")
    assert {x for x in _links() - links0 if ours.search(x)} == set(), "links left"
    assert {a for a in _addrs() - addrs0 if n.bridge in a or n.subnet.rsplit(".", 1)[0] + "." in a} == set()
    assert {r for r in _rules() - rules0 if n.subnet.rsplit(".", 1)[0] + "." in r or "CNI-" in r} == set(), \
        "iptables rules left"
    assert leaked == [], f"iptables rules of the test's subnet were left (removed now): {leaked}"


def _http_get(port: int, path: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return str(r.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@needs_root
def test_published_port_peers_dns_and_cleanup(net: Net) -> None:
    port = _free_port()
    net.ok("run", "-d", "--name", "web", "-p", f"127.0.0.1:{port}:8080", IMAGE, "httpd", "-f", "-p", "8080",
           "-h", "/etc")
    net.ok("run", "-d", "--name", "peer", "--net", "bridge", IMAGE, "sleep", "300")
    # the default network was written on first use, with the configured bridge and subnet
    conf = json.loads((net.conf_dir / "bridge.conflist").read_text())
    assert conf["plugins"][0]["bridge"] == net.bridge
    assert conf["plugins"][0]["ipam"]["ranges"][0][0]["subnet"] == net.subnet

    # the host reaches the server through the published port on 127.0.0.1; the file it serves is the
    # container's generated /etc/hostname
    assert _http_get(port, "/hostname") == "web\n"
    web_ip, peer_ip = net.ip_of("web"), net.ip_of("peer")
    assert web_ip != peer_ip
    rows = [ln.split() for ln in net.ok("tasks", "ls").splitlines()]
    assert rows[0] == ["TASK", "PID", "STATUS", "IP"]
    assert {r[0]: r[3] for r in rows[1:]} == {"web": web_ip, "peer": peer_ip}

    # container to container by IP, both ways
    assert net.ok("exec", "peer", "wget", "-q", "-O", "-", f"http://{web_ip}:8080/hostname") == "web\n"
    assert net.run("exec", "web", "ping", "-c", "1", "-W", "5", peer_ip).returncode == 0

    # DNS configuration: resolv.conf without loopback servers, hosts names the container, hostname
    resolv = net.ok("exec", "peer", "cat", "/etc/resolv.conf")
    assert resolv.startswith("nameserver ") and "nameserver 127." not in resolv
    hosts = net.ok("exec", "peer", "cat", "/etc/hosts")
    assert "127.0.0.1\tlocalhost" in hosts and f"{peer_ip}\tpeer" in hosts
    assert net.ok("exec", "peer", "hostname") == "peer\n"
    # inside: lo and eth0, the default route through the bridge
    addrs = net.ok("exec", "peer", "ip", "-o", "-4", "addr")
    assert "lo" in addrs and f"eth0    inet {peer_ip}/" in addrs.replace("\\", "")
    assert "default via" in net.ok("exec", "peer", "ip", "route")

    # a port already published: one line, nothing left of the second container
    msg = net.fails(4, "run", "-d", "--name", "web2", "-p", f"127.0.0.1:{port}:80", IMAGE, "sleep", "30")
    assert "already published" in msg and "web" in msg
    assert sorted(net.ok("containers", "ls", "-q").split()) == ["peer", "web"]
    assert len(net.attachments()) == 2

    # removal in the acceptance's order: kill, tasks rm, containers rm
    for c in ("web", "peer"):
        net.ok("tasks", "kill", "-s", "KILL", c)
    for c in ("web", "peer"):
        net.ok("tasks", "wait", c)
        net.ok("tasks", "rm", c)
        assert c not in {a["id"] for a in net.attachments()}, "tasks rm must detach"
        net.ok("containers", "rm", c)
    net.assert_clean()
    with pytest.raises(OSError):
        _http_get(port, "/hostname", timeout=0)


@needs_root
def test_run_rm_attached_and_default_none(net: Net) -> None:
    # no --net: a private namespace with lo only, made by runc (no network plugin, no attachment)
    out = net.ok("run", "--rm", IMAGE, "ip", "-o", "link")
    assert [ln.split(":")[1].strip() for ln in out.splitlines()] == ["lo"]
    assert not (net.conf_dir / "bridge.conflist").exists()
    # --net bridge with --rm: attached while it runs, detached when it ends
    out = net.ok("run", "--rm", "--name", "once", "--net", "bridge", IMAGE, "ip", "-o", "-4", "addr", "show", "eth0")
    prefix = net.subnet.rsplit(".", 1)[0] + "."
    assert f"inet {prefix}" in out
    # an attached run without --rm: the task is deleted at the end and the network released with it
    net.ok("run", "--name", "kept", "--net", "bridge", IMAGE, "true")
    assert net.attachments() == []
    net.ok("containers", "rm", "kept")
    net.assert_clean()


@needs_root
def test_bad_input_is_one_line_and_leaves_nothing(net: Net, tmp_path: Path) -> None:
    links0 = _links()
    assert "not found" in net.fails(3, "run", "--rm", "--name", "b1", "--net", "nosuch", IMAGE, "true")
    assert "-p" in net.fails(2, "run", "--rm", "--name", "b2", "-p", "99999:80", IMAGE, "true")
    assert "--net host" in net.fails(2, "run", "--rm", "--name", "b3", "--net", "host", "-p", "8080:80",
                                     IMAGE, "true")
    assert net.ok("containers", "ls", "-q") == ""
    bad = tmp_path / "bad.conflist"
    bad.write_text('{"cniVersion": "1.0.0", "name": "badnet", "plugins": [{"type": "nosuchplugin"}]}')
    assert "nosuchplugin" in net.fails(2, "network", "create", "badnet", "--config", str(bad))
    bad.write_text("{not json")
    assert "not JSON" in net.fails(2, "network", "create", "badnet", "--config", str(bad))
    assert "overlaps" in net.fails(5, "network", "create", "clash", "--subnet", net.subnet)
    assert "loopback" in net.fails(2, "network", "create", "clash", "--subnet", "127.0.0.0/8")
    assert not any(net.conf_dir.glob("*")) if net.conf_dir.exists() else True
    # an invalid file in the directory is reported by ls and does not hide the others
    net.conf_dir.mkdir(exist_ok=True)
    (net.conf_dir / "broken.conflist").write_text("{")
    p = net.run("network", "ls")
    assert p.returncode == 0 and "broken.conflist" in p.stderr and "bridge *" in p.stdout
    assert "could not be read" in net.fails(3, "run", "--rm", "--net", "broken", IMAGE, "true")
    assert net.ok("containers", "ls", "-q") == ""
    assert net.attachments() == [] and _links() - links0 == set()
    net.assert_clean()


@needs_root
def test_named_network_lifecycle(net: Net) -> None:
    subnet = _free_subnet()
    assert net.ok("network", "create", "appnet", "--subnet", subnet).strip() == "appnet"
    assert "already exists" in net.fails(4, "network", "create", "appnet", "--subnet", subnet)
    assert "not a bridge" in net.fails(2, "network", "create", "other", "--bridge", "lo")
    assert "belongs to network 'bridge'" in net.fails(5, "network", "create", "other", "--bridge", net.bridge)
    info = json.loads(net.ok("network", "inspect", "appnet"))[0]
    bridge = info["bridge"]
    assert info["subnets"] == [subnet] and bridge.startswith("pyctr-") and len(bridge) <= 15
    rows = {ln.split()[0]: ln.split() for ln in net.ok("network", "ls").splitlines()[1:]}
    assert set(rows) == {"appnet", "bridge"} and rows["appnet"][-1] == "0"
    net.ok("run", "-d", "--name", "a1", "--net", "appnet", IMAGE, "sleep", "300")
    ip = net.ip_of("a1")
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(subnet)
    assert json.loads(net.ok("network", "inspect", "appnet"))[0]["containers"][0]["ip"] == ip
    assert "attached" in net.fails(5, "network", "rm", "appnet")
    net.ok("containers", "rm", "--force", "a1")
    assert os.path.exists(f"/sys/class/net/{bridge}")
    net.ok("network", "rm", "appnet")
    assert not os.path.exists(f"/sys/class/net/{bridge}")
    assert "not found" in net.fails(3, "network", "rm", "appnet")
    net.assert_clean()


@needs_root
def test_recovery_after_crashes(net: Net) -> None:
    from pyctr import Client
    from pyctr.oci import RunOptions

    port = _free_port()
    # 1. pyctr died between attaching and creating the task: the container's removal detaches it
    with Client(root=str(net.roots.root), state=str(net.roots.state), config=str(net.roots.config)) as c:
        svc = c.plugin("service", "pyctr.containers.metadata")
        ro = RunOptions(args=["true"], net="bridge", publish=[f"127.0.0.1:{port}:80"])
        cont = svc.create_container("default", "crash1", IMAGE, ro)
        spec = c.plugin("network").attach("default", "crash1", cont.spec, ro.to_dict())
        assert any(n.get("path") for n in spec["linux"]["namespaces"] if n["type"] == "network")
        # 2. a second one whose namespace vanished (the state directory was lost)
        ro2 = RunOptions(args=["true"], net="bridge")
        cont2 = svc.create_container("default", "crash2", IMAGE, ro2)
        c.plugin("network").attach("default", "crash2", cont2.spec, ro2.to_dict())
    assert len(net.attachments()) == 2 and len(net.bridge_members()) == 2
    ns2 = net.net_state / "netns" / "default" / "crash2"
    subprocess.run(["umount", str(ns2)], check=True)
    ns2.unlink()
    # any pyctr command that loads the network plugin recovers crash2; creating crash1's task re-attaches
    net.ok("network", "ls")
    assert [a["id"] for a in net.attachments()] == ["crash1"]
    net.ok("tasks", "start", "-d", "crash1")
    assert [a["id"] for a in net.attachments()] == ["crash1"] and len(net.bridge_members()) == 1
    # 3. what pyctrd does when it starts: detach attachments whose container has no task
    with Client(root=str(net.roots.root), state=str(net.roots.state), config=str(net.roots.config)) as c:
        svc = c.plugin("service", "pyctr.containers.metadata")
        cont3 = svc.create_container("default", "crash3", IMAGE, ro2)
        c.plugin("network").attach("default", "crash3", cont3.spec, ro2.to_dict())

        def alive(ns: str, id_: str) -> bool:
            return any(t.id == id_ for t in svc.list_tasks(ns))

        assert c.plugin("network").recover(alive) == []  # too young: it may be getting its task
        assert c.plugin("network").recover(alive, min_age=0) == ["default/crash3"]
    assert [a["id"] for a in net.attachments()] == ["crash1"] and len(net.bridge_members()) == 1
    net.ok("containers", "rm", "crash3")
    net.ok("containers", "rm", "--force", "crash1")
    net.ok("containers", "rm", "crash2")
    net.assert_clean()


@needs_root
def test_same_port_raced_by_two_runs(net: Net) -> None:
    port = _free_port()
    argv = ["run", "-d", "-p", f"127.0.0.1:{port}:8080", IMAGE, "httpd", "-f", "-p", "8080", "-h", "/etc"]
    procs = [subprocess.Popen(net.cmd(*argv[:2], "--name", f"race{i}", *argv[2:]), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=child_env()) for i in range(3)]
    results = [(p.wait(60), p.stderr.read()) for p in procs]
    for p in procs:
        for f in (p.stdout, p.stderr):
            if f is not None:
                f.close()
    winners = [i for i, (code, _) in enumerate(results) if code == 0]
    assert len(winners) == 1, results
    assert all("already" in err for code, err in results if code != 0), results
    assert net.ok("containers", "ls", "-q").split() == [f"race{winners[0]}"]
    assert _http_get(port, "/hostname") == f"race{winners[0]}\n"
    net.ok("containers", "rm", "--force", f"race{winners[0]}")
    net.assert_clean()


@needs_root
def test_through_the_daemon(net: Net) -> None:
    from daemon_helpers import running_daemon

    port = _free_port()
    with running_daemon(net.roots) as (_proc, sock):
        d = ["--address", sock]
        net.ok(*d, "run", "-d", "--name", "dweb", "-p", f"127.0.0.1:{port}:8080", IMAGE, "httpd", "-f", "-p",
               "8080", "-h", "/etc")
        assert _http_get(port, "/hostname") == "dweb\n"
        info = json.loads(net.ok(*d, "containers", "info", "dweb"))
        assert info["network"]["ports"] == [f"127.0.0.1:{port}->8080/tcp"]
        assert info["network"]["ip"] in net.ok(*d, "tasks", "ls")
        assert "1" in net.ok(*d, "network", "ls").splitlines()[1].split()[-1]
        net.ok(*d, "containers", "rm", "--force", "dweb")
    net.assert_clean()


@needs_root
def test_failed_attach_is_undone(net: Net, tmp_path: Path) -> None:
    """A chain whose second plugin refuses ADD: the bridge plugin's veth, address, NAT rule and IPAM
    reservation are undone (DEL), the namespace and the record go, and run fails with one line."""
    bindir = tmp_path / "cni-bin"
    bindir.mkdir()
    refuse = bindir / "refuse"
    refuse.write_text('#!/bin/sh\ncat >/dev/null\nif [ "$CNI_COMMAND" = ADD ]; then\n'
                      '  echo \'{"cniVersion": "1.0.0", "code": 100, "msg": "refused by the test"}\'\n  exit 1\nfi\n')
    refuse.chmod(0o755)
    text = net.roots.config.read_text().replace(
        '[plugins."pyctr.network.cni"]\n', f'[plugins."pyctr.network.cni"]\nbin_dirs = ["{bindir}", "{CNI_BIN}"]\n')
    net.roots.config.write_text(text)
    subnet = _free_subnet()
    bridge = "pyctr-" + uuid.uuid4().hex[:8]
    doc = bridge_conflist("failnet", bridge, subnet)
    doc["plugins"] = [doc["plugins"][0], {"type": "refuse"}]
    conf = tmp_path / "failnet.conflist"
    conf.write_text(json.dumps(doc))
    net.ok("network", "create", "failnet", "--config", str(conf))
    msg = net.fails(6, "run", "--rm", "--name", "f1", "--net", "failnet", IMAGE, "true")
    assert "refused by the test" in msg
    assert net.ok("containers", "ls", "-q") == ""
    assert os.path.exists(f"/sys/class/net/{bridge}")  # the bridge plugin did run
    members = subprocess.run(["ip", "-o", "link", "show", "master", bridge], capture_output=True, text=True,
                             check=False).stdout
    assert members == ""
    prefix = subnet.rsplit(".", 1)[0] + "."
    assert [r for r in _rules() if prefix in r] == []
    ipam = net.net_state / "ipam" / "failnet"
    assert [p.name for p in ipam.iterdir() if p.name.startswith(prefix)] == [] if ipam.exists() else True
    net.assert_clean()
    net.ok("network", "rm", "failnet")
    assert not os.path.exists(f"/sys/class/net/{bridge}")


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_netns_create_and_remove(tmp_path: Path) -> None:
    from pyctr.errdefs import AlreadyExists
    from pyctr.plugins.network.cni import netns

    path = str(tmp_path / "ns" / "one")
    host_ns = os.stat("/proc/self/ns/net").st_ino
    netns.create(path)
    try:
        assert netns.exists(path)
        assert os.stat(path).st_ino != host_ns
        out = subprocess.run(["nsenter", f"--net={path}", "ip", "-o", "link"], capture_output=True, text=True,
                             check=True).stdout
        assert [ln.split(":")[1].strip() for ln in out.splitlines()] == ["lo"] and "UP" in out
        with pytest.raises(AlreadyExists):
            netns.create(path)
        # this process (and its threads) stayed in the host's namespace
        assert os.stat("/proc/self/ns/net").st_ino == host_ns
    finally:
        netns.remove(path)
    assert not netns.exists(path) and not os.path.exists(path)
    netns.remove(path)  # nothing there: not an error
