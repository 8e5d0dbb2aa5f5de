"""Registers ``pyctr.distribution.registry``: pull from and push to OCI / Docker v2 registries."""

from __future__ import annotations

from typing import Any

from pyctr.hookspecs import hookimpl
from pyctr.registry import InitContext, PluginType, Registration

#: ``[plugins."pyctr.distribution.registry"]`` keys and their defaults
CONFIG: dict[str, Any] = {
    "max_concurrent_downloads": 3,  # layers fetched in parallel per pull
    "max_concurrent_uploads": 3,  # blobs uploaded in parallel per push
    "config_path": "/etc/pyctr/certs.d",  # <host[:port]>/{ca.crt, client.cert, client.key, hosts.toml}
    "connect_timeout": 15.0,  # seconds for TCP connect + TLS handshake
    "read_timeout": 30.0,  # seconds without a byte before a transfer counts as stalled
    "retries": 3,  # retries on 5xx, 429, dropped connections and timeouts (backoff doubles)
    "retry_backoff": 0.5,  # first backoff, seconds
    "upload_chunk_size": 0,  # 0: monolithic blob uploads; N: PATCH chunks of N bytes
    "lease_ttl": 86400,  # seconds a fetch's own lease outlives a crashed process (containerd: 24 h)
    "hosts": {},  # per registry: {plain_http, insecure, ca, client_cert, client_key, headers, host}
}


def _init(ctx: InitContext) -> Any:
    from .service import RegistryService

    return RegistryService(ctx.get(PluginType.METADATA), ctx.config)


@hookimpl
def pyctr_plugin_registrations() -> list[Registration]:
    return [
        Registration(
            type=PluginType.DISTRIBUTION,
            id="pyctr.distribution.registry",
            init=_init,
            requires=(PluginType.METADATA,),
            config=CONFIG,
            description="Resolve, pull and push images over the OCI distribution API (auth, TLS, resume).",
        )
    ]
