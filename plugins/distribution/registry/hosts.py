"""Per-registry host configuration: scheme, TLS (CA, client certificate, verification), extra headers.

Sources, later ones winning:

1. defaults: ``https`` with the system trust store; ``docker.io`` is served by ``registry-1.docker.io``;
2. a ``certs.d``-style directory (``config_path``, default ``/etc/pyctr/certs.d``)::

       <config_path>/<host[:port]>/ca.crt          extra CA (any *.crt is loaded, as Docker does)
       <config_path>/<host[:port]>/client.cert     client certificate (any *.cert with its *.key)
       <config_path>/<host[:port]>/client.key

   and containerd's ``<config_path>/<host[:port]>/hosts.toml`` (a subset: ``server``, ``ca``,
   ``client``, ``skip_verify``, ``header``, ``[host."URL"]`` with ``capabilities`` and
   ``override_path``; the first host entry able to do the action is used, e.g. a pull mirror);

3. the plugin's ``hosts`` table::

       [plugins."pyctr.distribution.registry".hosts."127.0.0.1:5000"]
       plain_http = true          # talk HTTP, not HTTPS
       insecure = false           # HTTPS without verifying the certificate
       ca = "/path/ca.pem"        # extra CA file (or a list)
       client_cert = "/path/c.pem"
       client_key = "/path/k.pem"
       headers = { "X-Meta" = "1" }

4. the caller's ``plain_http`` (``--plain-http``), which applies to the host being pulled from.
"""

from __future__ import annotations

import os
import ssl
import threading
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pyctr.errdefs import InvalidArgument

DOCKER_HUB = "docker.io"
DOCKER_HUB_HOST = "registry-1.docker.io"
DEFAULT_CONFIG_PATH = "/etc/pyctr/certs.d"

_HOST_KEYS = {"plain_http", "insecure", "ca", "client_cert", "client_key", "headers", "host"}


@dataclass(frozen=True)
class HostConfig:
    """How to reach one registry."""

    domain: str  # the name in references (docker.io, 127.0.0.1:5000)
    host: str  # the network address (registry-1.docker.io, 127.0.0.1:5000)
    scheme: str = "https"
    insecure: bool = False
    ca_files: tuple[str, ...] = ()
    client_cert: str = ""
    client_key: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    api_root: str = "/v2"  # path of the registry API on the host (hosts.toml ``override_path``)

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}{self.api_root}"


class Hosts:
    """Builds :class:`HostConfig` records and their TLS contexts (cached, thread-safe)."""

    def __init__(self, config_path: str = DEFAULT_CONFIG_PATH,
                 hosts: Mapping[str, Any] | None = None) -> None:
        self.config_path = config_path
        self.table: dict[str, dict[str, Any]] = {}
        for name, cfg in (hosts or {}).items():
            if not isinstance(cfg, Mapping):
                raise InvalidArgument(f"hosts.{name!r} must be a table")
            unknown = set(cfg) - _HOST_KEYS
            if unknown:
                raise InvalidArgument(
                    f"hosts.{name!r}: unknown key(s) {', '.join(sorted(unknown))} "
                    f"(known: {', '.join(sorted(_HOST_KEYS))})"
                )
            self.table[name] = dict(cfg)
        self._ctx: dict[tuple[Any, ...], ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def _certs_dir(self, domain: str) -> Path | None:
        if not self.config_path:
            return None
        for name in (domain, domain.replace(":", "_")):
            d = Path(self.config_path) / name
            if d.is_dir():
                return d
        if domain == DOCKER_HUB:
            d = Path(self.config_path) / DOCKER_HUB_HOST
            if d.is_dir():
                return d
        return None

    def get(self, domain: str, *, plain_http: bool = False, action: str = "pull") -> HostConfig:
        """The endpoint for ``action`` (``pull``, ``resolve`` or ``push``) on ``domain``."""
        hc = self._get(domain, plain_http=plain_http)
        d = self._certs_dir(domain)
        if d is not None and (d / "hosts.toml").is_file():
            hc = _apply_hosts_toml(hc, d / "hosts.toml", action, plain_http)
        return hc

    def _get(self, domain: str, *, plain_http: bool = False) -> HostConfig:
        host = DOCKER_HUB_HOST if domain == DOCKER_HUB else domain
        cfg = self.table.get(domain) or self.table.get(host) or {}
        cas: list[str] = []
        cert = key = ""
        d = self._certs_dir(domain)
        if d is not None:
            for f in sorted(d.iterdir()):
                if f.suffix == ".crt":
                    cas.append(str(f))
                elif f.suffix == ".cert":
                    k = f.with_suffix(".key")
                    if not k.exists():
                        raise InvalidArgument(f"{f}: client certificate without its key {k.name}")
                    cert, key = str(f), str(k)
        extra_ca = cfg.get("ca") or []
        cas.extend([extra_ca] if isinstance(extra_ca, str) else [str(x) for x in extra_ca])
        cert = str(cfg.get("client_cert") or cert)
        key = str(cfg.get("client_key") or key)
        if bool(cert) != bool(key):
            raise InvalidArgument(f"registry {domain}: client_cert and client_key go together")
        scheme = "http" if (plain_http or cfg.get("plain_http")) else "https"
        return HostConfig(
            domain=domain,
            host=str(cfg.get("host") or host),
            scheme=scheme,
            insecure=bool(cfg.get("insecure", False)),
            ca_files=tuple(cas),
            client_cert=cert,
            client_key=key,
            headers={str(k): str(v) for k, v in (cfg.get("headers") or {}).items()},
        )

    def ssl_context(self, hc: HostConfig) -> ssl.SSLContext:
        key = (hc.insecure, hc.ca_files, hc.client_cert, hc.client_key)
        with self._lock:
            ctx = self._ctx.get(key)
            if ctx is None:
                ctx = make_ssl_context(hc)
                self._ctx[key] = ctx
            return ctx


_TOML_KEYS = {"server", "ca", "client", "skip_verify", "header", "capabilities", "override_path", "host"}


def _toml_files(v: Any, base: Path, what: str) -> list[str]:
    if v is None:
        return []
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        raise InvalidArgument(f"{base / 'hosts.toml'}: {what} must be a path or a list of paths")
    return [str(base / x) if not os.path.isabs(x) else x for x in items]


def _toml_client(v: Any, base: Path) -> tuple[str, str]:
    """``client = "both.pem"`` | ``["cert.pem", "key.pem"]`` | ``[["cert.pem", "key.pem"]]`` (first)."""
    if v is None:
        return "", ""
    if isinstance(v, list) and v and isinstance(v[0], list):
        v = v[0]
    files = _toml_files(v, base, "client")
    if len(files) == 1:
        return files[0], files[0]
    if len(files) == 2:
        return files[0], files[1]
    raise InvalidArgument(f"{base / 'hosts.toml'}: client wants a file or [cert, key]")


def _endpoint(hc: HostConfig, url: str, t: Mapping[str, Any], base: Path, plain_http: bool) -> HostConfig:
    parts = urllib.parse.urlsplit(url if "://" in url else f"https://{url}")
    if not parts.netloc:
        raise InvalidArgument(f"{base / 'hosts.toml'}: bad server or host URL {url!r}")
    path = parts.path.rstrip("/")
    api_root = path if t.get("override_path") else f"{path}/v2"
    cert, key = _toml_client(t.get("client"), base)
    return replace(
        hc,
        host=parts.netloc,
        scheme="http" if (parts.scheme == "http" or plain_http) else "https",
        insecure=bool(t.get("skip_verify", hc.insecure)),
        ca_files=(*hc.ca_files, *_toml_files(t.get("ca"), base, "ca")),
        client_cert=cert or hc.client_cert,
        client_key=key or hc.client_key,
        headers={**hc.headers, **{str(k): str(v) for k, v in (t.get("header") or {}).items()}},
        api_root=api_root,
    )


def _apply_hosts_toml(hc: HostConfig, path: Path, action: str, plain_http: bool) -> HostConfig:
    """containerd's ``hosts.toml`` (a subset): ``server``, ``ca``, ``client``, ``skip_verify``,
    ``header`` and ``[host."URL"]`` entries with ``capabilities`` and ``override_path``.  The first host
    entry whose capabilities include ``action`` is used, else ``server``.  (containerd also falls back
    from one endpoint to the next on errors; pyctr uses the one chosen.)"""
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InvalidArgument(f"{path}: {e}") from None
    unknown = set(doc) - _TOML_KEYS
    if unknown:
        raise InvalidArgument(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    base = path.parent
    top = _endpoint(hc, str(doc.get("server") or f"{hc.scheme}://{hc.host}"), doc, base, plain_http)
    hosts = doc.get("host") or {}
    if not isinstance(hosts, dict):
        raise InvalidArgument(f"{path}: host must be a table of [host.\"URL\"] entries")
    for url, t in hosts.items():
        if not isinstance(t, dict):
            raise InvalidArgument(f"{path}: [host.{url!r}] must be a table")
        caps = t.get("capabilities", ["pull", "resolve", "push"])
        if action in caps:
            return _endpoint(top, url, t, base, plain_http)
    return top


def make_ssl_context(hc: HostConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    try:
        for ca in hc.ca_files:
            ctx.load_verify_locations(cafile=ca)
        if hc.client_cert:
            ctx.load_cert_chain(hc.client_cert, hc.client_key)
    except (OSError, ssl.SSLError) as e:
        raise InvalidArgument(f"registry {hc.domain}: cannot load TLS files: {e}") from None
    if hc.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def default_ssl_context() -> ssl.SSLContext:
    """For redirects to hosts with no configuration (blob storage): the system trust store."""
    return ssl.create_default_context()


def env_config_path() -> str:
    return os.environ.get("PYCTR_CERTS_D", DEFAULT_CONFIG_PATH)
