"""Registry authentication: credentials, ``WWW-Authenticate`` challenges, basic and bearer tokens.

* Credentials come from ``--user user[:password]`` or from Docker's ``config.json`` (``auths``:
  ``auth`` = base64 ``user:password``, or ``username``/``password``, or ``identitytoken``), found in
  ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``.
* On a 401 the challenge is parsed.  ``Basic`` sends the credentials; ``Bearer`` fetches a token from
  the realm for the scope (``repository:<name>:pull[,push]``): POST OAuth2 when there is an identity
  token, otherwise GET with basic credentials (or anonymously), as containerd does.
* Tokens are cached per (realm, service, scope set) until ``expires_in`` runs out, so a pull of many
  blobs asks the token service once.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyctr.errdefs import InvalidArgument, PermissionDenied

DOCKER_HUB_AUTH_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")
#: containerd's minimum token lifetime when the server gives none
DEFAULT_TOKEN_TTL = 60.0


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def __bool__(self) -> bool:
        return bool(self.username or self.identity_token)

    def __repr__(self) -> str:  # never print a secret
        return f"Credentials(username={self.username!r})"


def parse_user(user: str) -> Credentials:
    """``user:password`` (``--user``); a lone ``user`` reads the password from ``PYCTR_PASSWORD``."""
    name, sep, password = user.partition(":")
    if not name:
        raise InvalidArgument("--user wants user:password")
    if not sep:
        password = os.environ.get("PYCTR_PASSWORD", "")
        if not password:
            raise InvalidArgument("--user without a password: use --user user:password or set PYCTR_PASSWORD")
    return Credentials(name, password)


def docker_config_path() -> Path:
    d = os.environ.get("DOCKER_CONFIG")
    return Path(d) / "config.json" if d else Path.home() / ".docker" / "config.json"


def load_docker_credentials(domain: str, path: Path | None = None) -> Credentials | None:
    """The credentials for ``domain`` in Docker's ``config.json``, or None."""
    path = path or docker_config_path()
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"cannot read registry credentials from {path}: {e}") from None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        return None
    keys = DOCKER_HUB_AUTH_KEYS if domain in DOCKER_HUB_AUTH_KEYS else (domain,)
    entry: Any = None
    for k in keys:
        for cand in (k, f"https://{k}", f"http://{k}", f"https://{k}/v1/", f"https://{k}/v2/"):
            if cand in auths:
                entry = auths[cand]
                break
        if entry is not None:
            break
    if not isinstance(entry, dict):
        return None
    if entry.get("identitytoken"):
        return Credentials(str(entry.get("username") or ""), "", str(entry["identitytoken"]))
    if entry.get("auth"):
        try:
            raw = base64.b64decode(str(entry["auth"])).decode()
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgument(f"{path}: the 'auth' of {domain} is not base64 user:password") from None
        user, _, password = raw.partition(":")
        return Credentials(user, password)
    if entry.get("username"):
        return Credentials(str(entry["username"]), str(entry.get("password") or ""))
    return None


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "basic" or "bearer"
    params: dict[str, str] = field(default_factory=dict)


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM_RE = re.compile(rf"\s*({_TOKEN})\s*=\s*(?:\"((?:[^\"\\]|\\.)*)\"|({_TOKEN}))\s*(,)?")
_SCHEME_RE = re.compile(rf"\s*({_TOKEN})(?:\s+|$)")


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse one ``WWW-Authenticate`` value (possibly several challenges)."""
    out: list[Challenge] = []
    pos = 0
    while pos < len(header):
        m = _SCHEME_RE.match(header, pos)
        if not m:
            break
        scheme = m.group(1).lower()
        pos = m.end()
        params: dict[str, str] = {}
        while pos < len(header):
            pm = _PARAM_RE.match(header, pos)
            if not pm:
                break
            value = pm.group(2) if pm.group(2) is not None else pm.group(3)
            params[pm.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            pos = pm.end()
            if not pm.group(4):
                break
        out.append(Challenge(scheme, params))
        while pos < len(header) and header[pos] in ", ":
            pos += 1
    return out


def scope_for(repository: str, actions: Iterable[str]) -> str:
    return f"repository:{repository}:{','.join(actions)}"


TokenFetcher = Callable[[str, str, dict[str, str], bytes | None], tuple[int, bytes]]
"""``(method, url, headers, body) -> (status, body)``: how the authorizer talks to a token service."""


class Authorizer:
    """Holds the challenge learnt from one registry host and the tokens it gave, per scope set."""

    def __init__(self, domain: str, credentials: Credentials | None, fetch: TokenFetcher) -> None:
        self.domain = domain
        self.credentials = credentials
        self._fetch = fetch
        self._challenge: Challenge | None = None
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()
        self.token_requests = 0  # counted for tests and --debug

    @property
    def challenge(self) -> Challenge | None:
        return self._challenge

    def learn(self, header: str) -> bool:
        """Record the challenge of a 401.  False when it cannot be answered (no usable scheme)."""
        for ch in parse_www_authenticate(header):
            if ch.scheme == "bearer" and ch.params.get("realm"):
                self._challenge = ch
                return True
            if ch.scheme == "basic":
                if not self.credentials:
                    return False
                self._challenge = ch
                return True
        return False

    def header(self, scopes: Iterable[str], *, refresh: bool = False) -> str | None:
        """The ``Authorization`` value for a request needing ``scopes`` (None before any challenge)."""
        ch = self._challenge
        if ch is None:
            return None
        if ch.scheme == "basic":
            return self.credentials.basic_header() if self.credentials else None
        scope = " ".join(sorted(set(scopes)))
        realm, service = ch.params["realm"], ch.params.get("service", "")
        key = (realm, service, scope)
        with self._lock:
            hit = self._tokens.get(key)
            if hit and not refresh and hit[1] > time.monotonic():
                return f"Bearer {hit[0]}"
            token, ttl = self._get_token(realm, service, scope)
            self._tokens[key] = (token, time.monotonic() + max(ttl - 5.0, 1.0))
            return f"Bearer {token}"

    def _get_token(self, realm: str, service: str, scope: str) -> tuple[str, float]:
        self.token_requests += 1
        creds = self.credentials
        if creds and creds.identity_token:
            form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                    "client_id": "pyctr-client", "service": service}
            if scope:
                form["scope"] = scope
            status, body = self._fetch("POST", realm, {"Content-Type": "application/x-www-form-urlencoded"},
                                       urllib.parse.urlencode(form).encode())
            if status == 200:
                return _token_from(body, self.domain)
            if status not in (400, 401, 404, 405):
                raise PermissionDenied(f"{self.domain}: token service {realm} answered {status}")
        query = {"service": service} if service else {}
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        for s in scope.split(" ") if scope else []:
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"scope": s})
        headers: dict[str, str] = {}
        if creds and creds.username:
            headers["Authorization"] = creds.basic_header()
        status, body = self._fetch("GET", url, headers, None)
        if status == 200:
            return _token_from(body, self.domain)
        if status in (401, 403):
            who = f"as {creds.username!r}" if creds and creds.username else "anonymously"
            raise PermissionDenied(f"{self.domain}: the token service refused {who} ({status}); check --user")
        raise PermissionDenied(f"{self.domain}: token service {realm} answered {status}")


def _token_from(body: bytes, domain: str) -> tuple[str, float]:
    try:
        doc = json.loads(body)
        token = doc.get("token") or doc.get("access_token")
        ttl = float(doc.get("expires_in") or DEFAULT_TOKEN_TTL)
    except (ValueError, AttributeError, TypeError):
        raise PermissionDenied(f"{domain}: the token service sent no JSON token") from None
    if not token or not isinstance(token, str):
        raise PermissionDenied(f"{domain}: the token service sent no token")
    return token, ttl
