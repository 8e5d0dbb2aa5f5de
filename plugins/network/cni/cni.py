"""Calling CNI plugins as the CNI specification says (``SPEC.md``, versions 0.4.0 and 1.0.0).

A plugin is an executable found by its ``type`` in the plugin directories.  It gets the command and
the container in environment variables (``CNI_COMMAND``, ``CNI_CONTAINERID``, ``CNI_NETNS``,
``CNI_IFNAME``, ``CNI_PATH``), its network configuration as JSON on stdin, and answers with a result
(ADD) or an error (``{"code", "msg", "details"}``) as JSON on stdout.

A *network configuration list* (``.conflist``) chains plugins: on ADD each plugin gets the previous
one's result as ``prevResult``, and the last result is the attachment's; DEL runs the plugins in
reverse order, each with the ADD's final result as ``prevResult``.  ``runtimeConfig`` carries the
arguments a plugin declared in ``capabilities`` (``portMappings`` for portmap).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyctr.errdefs import InvalidArgument, NotFound, PyctrError, Unavailable

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
CONF_EXTENSIONS = (".conflist", ".conf", ".json")


class CNIError(Unavailable):
    """A CNI plugin failed; the message names the plugin and says what it reported."""


@dataclass
class ConfList:
    """A network configuration list: ``name``, ``cniVersion`` and the chained ``plugins``."""

    name: str
    cni_version: str
    plugins: list[dict[str, Any]]
    raw: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.raw) if self.raw else {
            "cniVersion": self.cni_version, "name": self.name, "plugins": copy.deepcopy(self.plugins)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "") -> ConfList:
        return parse_conflist(d, path)

    def plugin_types(self) -> list[str]:
        return [str(p.get("type", "")) for p in self.plugins]


def parse_conflist(doc: Any, where: str = "") -> ConfList:
    """Check a conflist (or a single network configuration, which becomes a one-plugin list) and
    return it.  InvalidArgument names what is wrong."""
    src = f" in {where}" if where else ""
    if not isinstance(doc, Mapping):
        raise InvalidArgument(f"invalid network configuration{src}: want a JSON object")
    d = dict(doc)
    if "plugins" not in d and "type" in d:  # a single .conf
        plugin = {k: v for k, v in d.items() if k not in ("name", "cniVersion")}
        d = {"cniVersion": d.get("cniVersion", ""), "name": d.get("name", ""), "plugins": [plugin]}
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"invalid network configuration{src}: \"name\" is missing")
    version = d.get("cniVersion")
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise InvalidArgument(f"invalid network configuration{src}: cniVersion {version!r} is not one of "
                              f"{', '.join(SUPPORTED_VERSIONS)}")
    plugins = d.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise InvalidArgument(f"invalid network configuration{src}: \"plugins\" must be a non-empty list")
    for i, p in enumerate(plugins):
        if not isinstance(p, Mapping) or not isinstance(p.get("type"), str) or not p.get("type"):
            raise InvalidArgument(f"invalid network configuration{src}: plugin {i} has no \"type\"")
        if "/" in str(p["type"]) or str(p["type"]).startswith("."):
            raise InvalidArgument(f"invalid network configuration{src}: plugin type {p['type']!r} is not a name")
    return ConfList(name=name, cni_version=version, plugins=[dict(p) for p in plugins], raw=d, path=where)


def load_file(path: str | os.PathLike[str]) -> ConfList:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise NotFound(f"cannot read network configuration {p}: {e.strerror}") from None
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"invalid network configuration {p}: not JSON ({e})") from None
    return parse_conflist(doc, str(p))


def conf_files(conf_dir: str | os.PathLike[str]) -> list[Path]:
    """The configuration files of a directory, in the order libcni reads them (by name)."""
    d = Path(conf_dir)
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        return []
    return [d / n for n in names if n.endswith(CONF_EXTENSIONS) and not n.startswith(".")]


def find_plugin(type_: str, bin_dirs: Sequence[str]) -> str:
    for d in bin_dirs:
        p = os.path.join(d, type_)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    raise NotFound(f"CNI plugin {type_!r} not found in {', '.join(bin_dirs)} "
                   "(apt-get install containernetworking-plugins)")


def check_plugins(conf: ConfList, bin_dirs: Sequence[str]) -> None:
    """Every plugin of ``conf`` (and its IPAM plugin) is installed; InvalidArgument otherwise."""
    for p in conf.plugins:
        types = [str(p["type"])]
        ipam = p.get("ipam")
        if isinstance(ipam, Mapping) and ipam.get("type"):
            types.append(str(ipam["type"]))
        for t in types:
            try:
                find_plugin(t, bin_dirs)
            except NotFound as e:
                raise InvalidArgument(f"network {conf.name!r}: {e}") from None


@dataclass
class Runtime:
    """The container side of a call: ``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS``
    and the capability arguments (``runtimeConfig``)."""

    container_id: str
    netns: str
    ifname: str = "eth0"
    args: Sequence[tuple[str, str]] = ()
    capability_args: Mapping[str, Any] = field(default_factory=dict)


class CNI:
    """Runs plugins from ``bin_dirs``; ``timeout`` seconds per plugin call."""

    def __init__(self, bin_dirs: Iterable[str], *, timeout: float = 60.0) -> None:
        self.bin_dirs = [str(d) for d in bin_dirs]
        self.timeout = timeout

    def _env(self, command: str, rt: Runtime) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": rt.container_id,
            "CNI_NETNS": rt.netns,
            "CNI_IFNAME": rt.ifname,
            "CNI_PATH": os.pathsep.join(self.bin_dirs),
        })
        if rt.args:
            env["CNI_ARGS"] = ";".join(f"{k}={v}" for k, v in rt.args)
        else:
            env.pop("CNI_ARGS", None)
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        return env

    def plugin_config(self, conf: ConfList, plugin: Mapping[str, Any], rt: Runtime,
                      prev_result: Mapping[str, Any] | None) -> dict[str, Any]:
        """What one plugin of the list reads on stdin (libcni's ``buildOneConfig``)."""
        cfg = copy.deepcopy(dict(plugin))
        cfg["name"] = conf.name
        cfg["cniVersion"] = conf.cni_version
        if prev_result is not None:
            cfg["prevResult"] = copy.deepcopy(dict(prev_result))
        caps = plugin.get("capabilities")
        if isinstance(caps, Mapping):
            rc = {k: v for k, v in rt.capability_args.items() if caps.get(k)}
            if rc:
                cfg["runtimeConfig"] = copy.deepcopy(rc)
        return cfg

    def exec(self, command: str, conf: ConfList, plugin: Mapping[str, Any], rt: Runtime,
             prev_result: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run one plugin; its result (``{}`` when it printed nothing, as DEL does)."""
        type_ = str(plugin["type"])
        path = find_plugin(type_, self.bin_dirs)
        stdin = json.dumps(self.plugin_config(conf, plugin, rt, prev_result)).encode()
        try:
            proc = subprocess.run([path], input=stdin, capture_output=True, env=self._env(command, rt),
                                  timeout=self.timeout, check=False, cwd="/")
        except subprocess.TimeoutExpired:
            raise CNIError(f"CNI plugin {type_} ({command}, network {conf.name}) did not answer within "
                           f"{self.timeout:g} s") from None
        except OSError as e:
            raise CNIError(f"cannot run CNI plugin {path}: {e.strerror}") from None
        out = proc.stdout.strip()
        if proc.returncode != 0:
            raise CNIError(f"CNI plugin {type_} {command} failed (network {conf.name}): "
                           f"{_error_text(out, proc.stderr)}")
        if not out:
            return {}
        try:
            res = json.loads(out)
        except ValueError:
            raise CNIError(f"CNI plugin {type_} {command} printed something that is not JSON") from None
        if not isinstance(res, dict):
            raise CNIError(f"CNI plugin {type_} {command} printed {type(res).__name__}, not an object")
        return res

    def add(self, conf: ConfList, rt: Runtime) -> dict[str, Any]:
        """ADD through the whole list; the final result.  If a plugin fails, the plugins already run are
        not undone here: call :meth:`delete` (DEL must succeed on a partial ADD)."""
        result: dict[str, Any] | None = None
        for p in conf.plugins:
            result = self.exec("ADD", conf, p, rt, result)
        return result or {}

    def delete(self, conf: ConfList, rt: Runtime, prev_result: Mapping[str, Any] | None = None, *,
               skip_types: Sequence[str] = ()) -> None:
        """DEL through the list in reverse order.  Every plugin is called even if one fails; the first
        failure is raised afterwards.  ``skip_types``: plugins known to have done nothing at ADD."""
        first: PyctrError | None = None
        prev = prev_result if prev_result and conf.cni_version not in ("0.3.0", "0.3.1") else None
        for p in reversed(conf.plugins):
            if p.get("type") in skip_types:
                continue
            try:
                self.exec("DEL", conf, p, rt, prev)
            except PyctrError as e:
                first = first or e
        if first is not None:
            raise first

    def check(self, conf: ConfList, rt: Runtime, prev_result: Mapping[str, Any]) -> None:
        """CHECK through the list (CNI 0.4.0 and later)."""
        for p in conf.plugins:
            self.exec("CHECK", conf, p, rt, prev_result)


def _error_text(stdout: bytes, stderr: bytes) -> str:
    try:
        err = json.loads(stdout)
    except ValueError:
        err = None
    if isinstance(err, Mapping) and err.get("msg"):
        msg = str(err["msg"])
        if err.get("details"):
            msg += f": {err['details']}"
        return " ".join(msg.split())
    text = (stdout or stderr).decode("utf-8", "replace").strip()
    return " ".join(text.split())[:300] or "no message"


def result_ip(result: Mapping[str, Any]) -> tuple[str, str, str]:
    """``(ip, gateway, mac)`` of the container's first IPv4 address in a CNI result (0.3.0 and later),
    falling back to IPv6."""
    ifaces = result.get("interfaces") or []
    best: tuple[str, str, str] | None = None
    for ip in result.get("ips") or []:
        addr = str(ip.get("address", "")).split("/", 1)[0]
        if not addr:
            continue
        mac = ""
        idx = ip.get("interface")
        if isinstance(idx, int) and 0 <= idx < len(ifaces):
            mac = str(ifaces[idx].get("mac") or "")
        cand = (addr, str(ip.get("gateway") or ""), mac)
        if ":" not in addr:
            return cand
        best = best or cand
    return best or ("", "", "")


__all__ = ["CNI", "CNIError", "ConfList", "Runtime", "check_plugins", "conf_files", "find_plugin",
           "load_file", "parse_conflist", "result_ip"]
