"""Per-registry host configuration: scheme, TLS (CA, client certificate, verification), extra headers.

Sources, later ones winning:

1. defaults: ``https`` with the system trust store; ``docker.io`` is served by ``registry-1.docker.io``;
2. a ``certs.d``-style directory (``config_path``, default ``/etc/pyctr/certs.d``)::

       <config_path>/<host[:port]>/ca.crt          extra CA (any *.crt is loaded, as Docker does)
       <config_path>/<host[:port]>/client.cert     client certificate (any *.cert with its *.key)
       <config_path>/<host[:port]>/client.key

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
from collections.abc import Mapping
from dataclasses import dataclass, field
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

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"


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

    def get(self, domain: str, *, plain_http: bool = False) -> HostConfig:
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
