"""The ``pyctr.distribution.registry`` service: ``resolve``, ``fetch`` and ``push`` over the registry API.

Used by the images CLI (``pyctr images pull`` = :meth:`RegistryService.fetch` + image record +
unpack).  Every method takes plain arguments and the namespace explicitly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pyctr import metrics_api
from pyctr import platforms as plat
from pyctr.content import Descriptor
from pyctr.errdefs import InvalidArgument
from pyctr.reference import Reference, parse

from .auth import Credentials, load_docker_credentials, parse_user
from .client import RepositoryClient, RetryPolicy, Timeouts, Transport, make_authorizer
from .hosts import Hosts
from .plugin import CONFIG
from .pull import Fetcher, FetchResult, ProgressFn, resolve

log = logging.getLogger("pyctr.distribution")

#: the plugin's configuration keys and defaults (declared once, in the light plugin module)
DEFAULT_CONFIG: dict[str, Any] = CONFIG

#: label on a fetch's own lease (it expires after ``lease_ttl`` seconds, 24 h as containerd, if the
#: process dies before deleting it)
LEASE_LABEL = "pyctr.io/lease.purpose"


def _as_float(cfg: Mapping[str, Any], key: str) -> float:
    v = cfg.get(key, DEFAULT_CONFIG[key])
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
        raise InvalidArgument(f'[plugins."pyctr.distribution.registry"] {key} must be a non-negative number')
    return float(v)


def _as_int(cfg: Mapping[str, Any], key: str, minimum: int = 0) -> int:
    v = cfg.get(key, DEFAULT_CONFIG[key])
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise InvalidArgument(
            f'[plugins."pyctr.distribution.registry"] {key} must be an integer >= {minimum}')
    return v


class RegistryService:
    """Talks to registries for one pyctr root.  ``metadata`` is the ``metadata`` plugin's store (its
    ``content`` and ``leases`` views are used)."""

    def __init__(self, metadata: Any, config: Mapping[str, Any] | None = None) -> None:
        cfg = {**DEFAULT_CONFIG, **dict(config or {})}
        self.metadata = metadata
        self.config = cfg
        self.max_downloads = _as_int(cfg, "max_concurrent_downloads", 1)
        self.max_uploads = _as_int(cfg, "max_concurrent_uploads", 1)
        self.retries = _as_int(cfg, "retries")
        self.backoff = _as_float(cfg, "retry_backoff")
        self.chunk_size = _as_int(cfg, "upload_chunk_size")
        self.lease_ttl = _as_float(cfg, "lease_ttl")
        self.hosts = Hosts(str(cfg.get("config_path") or ""), cfg.get("hosts") or {})
        self.timeouts = Timeouts(connect=_as_float(cfg, "connect_timeout"),
                                 read=_as_float(cfg, "read_timeout"))
        self.transport = Transport(self.hosts, self.timeouts, max_idle=max(8, self.max_downloads * 2))
        self._auth_cache: dict[tuple[str, str, str], Any] = {}
        self._lock = threading.Lock()

    # -- plumbing ------------------------------------------------------------------------------

    def credentials(self, domain: str, user: str | None) -> Credentials | None:
        if user:
            return parse_user(user)
        return load_docker_credentials(domain)

    def client_for(self, ref: Reference, *, plain_http: bool = False, user: str | None = None,
                   actions: Sequence[str] = ("pull",)) -> RepositoryClient:
        hc = self.hosts.get(ref.domain, plain_http=plain_http, action="push" if "push" in actions else "pull")
        creds = self.credentials(ref.domain, user)
        key = (hc.base_url, creds.username if creds else "", creds.password if creds else "")
        with self._lock:
            authz = self._auth_cache.get(key)
            if authz is None:
                authz = make_authorizer(self.transport, hc, creds)
                self._auth_cache[key] = authz
        return RepositoryClient(self.transport, hc, ref.path, authz, actions,
                                RetryPolicy(retries=self.retries, backoff=self.backoff))

    # -- API -----------------------------------------------------------------------------------

    def resolve(self, ref: str, *, plain_http: bool = False,
                user: str | None = None) -> tuple[str, Descriptor]:
        """``(normalised name, descriptor)`` of ``ref`` on its registry."""
        r = parse(ref)
        desc, _ = resolve(self.client_for(r, plain_http=plain_http, user=user), r)
        return str(r), desc

    def fetch(
        self,
        ns: str,
        ref: str,
        *,
        platforms: Sequence[str] | None = None,
        all_platforms: bool = False,
        plain_http: bool = False,
        user: str | None = None,
        progress: ProgressFn | None = None,
        lease_id: str | None = None,
    ) -> FetchResult:
        """Resolve ``ref`` and fetch its graph (for the host platform, ``platforms``, or all) into the
        namespace's content store.

        Under ``lease_id`` when given (the caller deletes it after recording the image); otherwise
        under a lease of its own, deleted when the fetch ends.  It does not create an image record.
        """
        r = parse(ref)
        matcher = plat.matcher_for(list(platforms or []), all_platforms)
        # the host default takes the single best manifest (containerd's LimitManifests(1));
        # explicit --platform values take every match
        limit = 1 if not platforms and not all_platforms else 0
        rc = self.client_for(r, plain_http=plain_http, user=user)
        leases = self.metadata.leases
        own = lease_id is None
        if own:
            lease_id = leases.create(ns, labels={LEASE_LABEL: "fetch"}, ttl=self.lease_ttl).id
        assert lease_id is not None
        try:
            desc, body = resolve(rc, r)
            fetcher = Fetcher(
                rc, self.metadata.content, ns, r, matcher=matcher, limit=limit, lease=(leases, lease_id),
                concurrency=self.max_downloads, progress=progress, retries=self.retries, backoff=self.backoff,
            )
            result = fetcher.run(desc, body)
            metrics_api.observe_pull(result.bytes_fetched, result.seconds)
            return result
        finally:
            if own:
                try:
                    leases.delete(ns, lease_id)
                except Exception:
                    log.warning("could not delete fetch lease %s", lease_id, exc_info=True)

    def push(
        self,
        ns: str,
        ref: str,
        target: Descriptor,
        *,
        plain_http: bool = False,
        user: str | None = None,
        platforms: Sequence[str] | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        """Push the graph under ``target`` (from the namespace's content store) to ``ref``: blobs first,
        then manifests, then the index.  ``platforms`` limits an index to its matching manifests (see
        :mod:`.push`)."""
        from .push import Pusher

        r = parse(ref)
        rc = self.client_for(r, plain_http=plain_http, user=user, actions=("pull", "push"))
        matcher = plat.matcher_for(list(platforms or []), False) if platforms else None
        t0 = time.monotonic()
        pusher = Pusher(self, rc, self.metadata.content, ns, r, matcher=matcher, progress=progress)
        pusher.run(target)
        metrics_api.observe_push(pusher.bytes_sent, time.monotonic() - t0)

    def close(self) -> None:
        self.transport.close()
