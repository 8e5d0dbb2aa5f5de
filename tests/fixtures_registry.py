"""Registry fixtures (a pytest plugin, loaded from conftest): a real ``docker-registry`` on 127.0.0.1.

* ``registry_factory`` -- ``registry_factory(kind="plain")`` starts a registry on a free port and
  returns a :class:`RegistryServer` (stopped at the end of the test).  Kinds: ``plain`` (HTTP),
  ``tls`` (HTTPS with a certificate signed by a test CA, ``tls_files``), ``htpasswd`` (basic auth,
  user ``alice``/``secret``, bcrypt from ``htpasswd -B``), ``token`` (the registry's ``auth.token``
  with a token service in the test process that signs RS256 JWTs with a key the registry trusts).
  The server can be ``stop()``-ed, ``kill()``-ed, ``pause()``-d (SIGSTOP), ``resume()``-d and
  ``start()``-ed again on the same port and data.
* ``seeded_registry`` (session) -- a plain registry holding ``test/busybox:1`` (busybox_layout),
  ``test/multi:1`` (multiarch_layout) and ``test/big:1`` (big_layout), pushed with skopeo.  Read only:
  tests that break a registry start their own.
* ``tls_files`` (session) -- ``ca.crt``, ``server.crt``/``server.key`` (SAN IP:127.0.0.1), made with
  the openssl CLI.
* ``pyctr_client_factory`` -- ``make(**registry_plugin_config)`` -> an embedded :class:`pyctr.Client` on
  the test's private root, with ``[plugins."pyctr.distribution.registry"]`` set (closed at teardown).
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

USER, PASSWORD = "alice", "secret"
TOKEN_SERVICE, TOKEN_ISSUER = "pyctr-test", "pyctr-test-issuer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True)
class TLSFiles:
    dir: Path
    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    _need("openssl")
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=pyctr test CA", cwd=d)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                               "extendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    _openssl("req", *ec, "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=pyctr test client",
             cwd=d)
    (d / "client.cnf").write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "client.cert", "-days", "2", "-extfile", "client.cnf", cwd=d)
    return TLSFiles(d, d / "ca.crt", d / "server.crt", d / "server.key", d / "client.cert", d / "client.key")


# -- token service ---------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService:
    """Issues registry tokens (RS256 JWTs with the signing certificate in ``x5c``).

    ``alice``/``secret`` gets what she asks for; anonymous callers get ``pull`` on ``public/*`` only;
    wrong credentials get 401.  ``requests`` records ``(user, scopes)`` of each token request.
    """

    def __init__(self, d: Path) -> None:
        _need("openssl")
        self.dir = d
        d.mkdir(parents=True, exist_ok=True)
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "token.key", "-out", "token.crt",
                 "-days", "2", "-subj", "/CN=pyctr test token signer", cwd=d)
        self.key = d / "token.key"
        self.cert = d / "token.crt"
        der = ssl.PEM_cert_to_DER_cert(self.cert.read_text())
        self.x5c = base64.b64encode(der).decode()
        self.requests: list[tuple[str, list[str]]] = []
        self.port = free_port()
        svc = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                user = ""
                authz = self.headers.get("Authorization", "")
                if authz.startswith("Basic "):
                    u, _, p = base64.b64decode(authz[6:]).decode().partition(":")
                    if (u, p) != (USER, PASSWORD):
                        self.send_response(401)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    user = u
                scopes = q.get("scope", [])
                svc.requests.append((user, scopes))
                body = json.dumps({"token": svc.sign(user, scopes), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def sign(self, user: str, scopes: list[str]) -> str:
        access = []
        for s in scopes:
            for one in s.split(" "):
                parts = one.split(":")
                if len(parts) != 3 or parts[0] != "repository":
                    continue
                actions = parts[2].split(",")
                if not user:
                    actions = [a for a in actions if a == "pull"] if parts[1].startswith("public/") else []
                access.append({"type": "repository", "name": parts[1], "actions": actions})
        now = int(time.time())
        claims = {"iss": TOKEN_ISSUER, "sub": user, "aud": TOKEN_SERVICE, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": os.urandom(8).hex(), "access": access}
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                             input=signing_input.encode(), capture_output=True, check=True).stdout
        return f"{signing_input}.{_b64url(sig)}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- registry --------------------------------------------------------------------------------------


@dataclass
class RegistryServer:
    base: Path
    kind: str = "plain"
    tls: TLSFiles | None = None
    token: TokenService | None = None
    client_certs: bool = False  # TLS that requires a client certificate signed by the test CA
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def blob_path(self, digest: str) -> Path:
        h = digest.split(":", 1)[1]
        return self.data / "docker/registry/v2/blobs/sha256" / h[:2] / h / "data"

    def _config(self) -> str:
        lines = ["version: 0.1", "log:", "  level: error", "  accesslog:", "    disabled: true", "storage:",
                 "  filesystem:", f"    rootdirectory: {self.data}", "  delete:", "    enabled: true",
                 "http:", f"  addr: {self.addr}"]
        if self.tls:
            lines += ["  tls:", f"    certificate: {self.tls.cert}", f"    key: {self.tls.key}"]
            if self.client_certs:
                lines += ["    clientcas:", f"      - {self.tls.ca}"]
        if self.kind == "htpasswd":
            _need("htpasswd")
            pw = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], capture_output=True, text=True,
                                check=True).stdout
            (self.base / "htpasswd").write_text(pw)
            lines += ["auth:", "  htpasswd:", "    realm: pyctr-test", f"    path: {self.base / 'htpasswd'}"]
        if self.kind == "token":
            assert self.token is not None
            lines += ["auth:", "  token:", f"    realm: {self.token.realm}", f"    service: {TOKEN_SERVICE}",
                      f"    issuer: {TOKEN_ISSUER}", f"    rootcertbundle: {self.token.cert}"]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> RegistryServer:
        _need("docker-registry")
        self.base.mkdir(parents=True, exist_ok=True)
        cfg = self.base / "config.yml"
        cfg.write_text(self._config())
        log = open(self.base / "log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=log, stderr=log,
                                         start_new_session=True)
        finally:
            log.close()
        ctx = ssl.create_default_context(cafile=str(self.tls.ca)) if self.tls else None
        if ctx is not None and self.client_certs and self.tls is not None:
            ctx.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(self.base / 'log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.scheme}://{self.addr}/v2/", timeout=1, context=ctx).close()
                return self
            except urllib.error.HTTPError as e:  # 401: up, wants auth
                if e.code == 401:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("docker-registry did not start")

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None:
            self._signal(signal.SIGCONT)
            self._signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self._signal(signal.SIGCONT)
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(5)
            self.proc = None


RegistryFactory = Callable[..., RegistryServer]

ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


def registry_digest(addr: str, repo: str, tag: str) -> str:
    """What a plain registry says ``repo:tag`` is (skopeo may re-serialise an index it copies)."""
    req = urllib.request.Request(f"http://{addr}/v2/{repo}/manifests/{tag}", method="HEAD",
                                 headers={"Accept": ACCEPT})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return str(resp.headers["Docker-Content-Digest"])


@pytest.fixture
def registry_factory(tmp_path: Path, tls_files: TLSFiles) -> Iterator[RegistryFactory]:
    servers: list[RegistryServer] = []
    tokens: list[TokenService] = []

    def make(kind: str = "plain", *, tls: bool | None = None, client_certs: bool = False) -> RegistryServer:
        base = tmp_path / f"registry-{len(servers)}"
        token = None
        if kind == "token":
            token = TokenService(base / "token")
            tokens.append(token)
        use_tls = kind == "tls" if tls is None else tls
        srv = RegistryServer(base, kind, tls_files if use_tls else None, token, client_certs)
        servers.append(srv)
        return srv.start()

    try:
        yield make
    finally:
        for s in servers:
            s.stop()
        for t in tokens:
            t.close()


@dataclass
class SeededRegistry:
    server: RegistryServer
    busybox: Any
    multi: Any
    big: Any
    multi_digest: str = ""

    @property
    def addr(self) -> str:
        return self.server.addr


@pytest.fixture(scope="session")
def seeded_registry(tmp_path_factory: pytest.TempPathFactory, busybox_layout: Any, multiarch_layout: Any,
                    big_layout: Any) -> Iterator[SeededRegistry]:
    from fixtures_images import skopeo_push

    srv = RegistryServer(tmp_path_factory.mktemp("seeded-registry"))
    srv.start()
    try:
        skopeo_push(busybox_layout, f"{srv.addr}/test/busybox:1")
        skopeo_push(multiarch_layout, f"{srv.addr}/test/multi:1")
        skopeo_push(big_layout, f"{srv.addr}/test/big:1")
        yield SeededRegistry(srv, busybox_layout, multiarch_layout, big_layout,
                             registry_digest(srv.addr, "test/multi", "1"))
    finally:
        srv.stop()


@pytest.fixture
def pyctr_client_factory(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    from pyctr.client import Client

    clients: list[Any] = []

    def make(**cfg: Any) -> Any:
        n = len(clients)
        root, state = tmp_path / f"pyctr-root-{n}", tmp_path / f"pyctr-state-{n}"
        root.mkdir()
        state.mkdir()
        conf = tmp_path / f"pyctr-config-{n}.toml"
        cfg.setdefault("config_path", str(tmp_path / "certs.d"))
        conf.write_text(_toml({"plugins": {"pyctr.distribution.registry": cfg}}))
        c = Client(root=str(root), state=str(state), config=str(conf))
        clients.append(c)
        return c

    try:
        yield make
    finally:
        for c in clients:
            c.close()


def _toml(doc: dict[str, Any], prefix: str = "") -> str:
    """Just enough TOML for nested tables of scalars, strings and string lists."""
    scalars, tables = [], []
    for k, v in doc.items():
        key = json.dumps(k) if not k.replace("_", "").isalnum() else k
        if isinstance(v, dict):
            tables.append((key, v))
        else:
            scalars.append(f"{key} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}")
    out = ""
    if scalars:
        out += (f"[{prefix}]\n" if prefix else "") + "\n".join(scalars) + "\n"
    for key, v in tables:
        out += _toml(v, f"{prefix}.{key}" if prefix else key)
    if not scalars and not tables and prefix:
        out += f"[{prefix}]\n"
    return out
