"""Registers ``pyctr.distribution.registry``: pull from and push to OCI / Docker v2 registries."""

from __future__ import annotations

from typing import Any

from pyctr.hookspecs import hookimpl
from pyctr.registry import InitContext, PluginType, Registration

CONFIG: dict[str, Any] = {
    "max_concurrent_downloads": 3,
    "max_concurrent_uploads": 3,
    "config_path": "/etc/pyctr/certs.d",
    "connect_timeout": 15.0,
    "read_timeout": 30.0,
    "retries": 3,
    "retry_backoff": 0.5,
    "upload_chunk_size": 0,
    "lease_ttl": 86400,
    "hosts": {},
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
