"""Authentication and TLS against a real docker-registry: htpasswd (basic), token auth (bearer JWTs from
a token service the registry trusts), HTTPS with a test CA (certs.d, hosts table, client certificates)."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures_images import skopeo_push
from fixtures_registry import PASSWORD, USER, RegistryFactory, TLSFiles
from pyctr.errdefs import PermissionDenied, PyctrError, Unavailable
from pyctr.plugins.distribution.registry.auth import (
    Credentials,
    load_docker_credentials,
    parse_user,
    parse_www_authenticate,
)

pytestmark = pytest.mark.integration
ClientFactory = Callable[..., Any]
CREDS = f"{USER}:{PASSWORD}"


def _fetch(c: Any, ref: str, **kw: Any) -> Any:
    return c.plugin("distribution").fetch("default", ref, **kw)


# -- pure parsing ----------------------------------------------------------------------------------


def test_parse_www_authenticate() -> None:
    (ch,) = parse_www_authenticate(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push"')
    assert ch.scheme == "bearer"
    assert ch.params == {"realm": "https://auth.example/token", "service": "registry.example",
                         "scope": "repository:a/b:pull,push"}
    chs = parse_www_authenticate('Basic realm="x y", Bearer realm="r"')
    assert [c.scheme for c in chs] == ["basic", "bearer"]
    assert chs[0].params["realm"] == "x y"
    assert parse_www_authenticate('Basic realm="q\\"uote"')[0].params["realm"] == 'q"uote'


def test_credentials_sources(tmp_path: Path) -> None:
    assert parse_user("bob:pa:ss") == Credentials("bob", "pa:ss")
    with pytest.raises(PyctrError):
        parse_user(":x")
    cfg = tmp_path / "config.json"
    auth = base64.b64encode(b"carol:pw").decode()
    cfg.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": auth},
        "127.0.0.1:5000": {"username": "dave", "password": "pw2"},
        "reg.example": {"identitytoken": "tok"},
    }}))
    assert load_docker_credentials("docker.io", cfg) == Credentials("carol", "pw")
    assert load_docker_credentials("127.0.0.1:5000", cfg) == Credentials("dave", "pw2")
    assert load_docker_credentials("reg.example", cfg) == Credentials("", "", "tok")
    assert load_docker_credentials("other.example", cfg) is None
    assert "pw" not in repr(Credentials("eve", "pw"))


# -- basic auth ------------------------------------------------------------------------------------


@pytest.fixture
def htpasswd_registry(registry_factory: RegistryFactory, busybox_layout: Any) -> Any:
    srv = registry_factory("htpasswd")
    skopeo_push(busybox_layout, f"{srv.addr}/private/bb:1", creds=CREDS)
    return srv


def test_basic_auth(htpasswd_registry: Any, pyctr_client_factory: ClientFactory, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    ref = f"{htpasswd_registry.addr}/private/bb:1"
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nodocker"))
    c = pyctr_client_factory()
    with pytest.raises(PermissionDenied) as ei:
        _fetch(c, ref, plain_http=True)
    msg = str(ei.value)
    assert "\n" not in msg and htpasswd_registry.addr in msg and "private/bb" in msg and "--user" in msg
    with pytest.raises(PermissionDenied) as ei:
        _fetch(c, ref, plain_http=True, user=f"{USER}:wrong")
    assert repr(USER) in str(ei.value)
    res = _fetch(c, ref, plain_http=True, user=CREDS)
    assert res.blobs >= 3
    # credentials from Docker's config.json
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "config.json").write_text(json.dumps(
        {"auths": {htpasswd_registry.addr: {"auth": base64.b64encode(CREDS.encode()).decode()}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    c2 = pyctr_client_factory()
    assert _fetch(c2, ref, plain_http=True).target.digest == res.target.digest


# -- token auth ------------------------------------------------------------------------------------


def test_token_auth(registry_factory: RegistryFactory, busybox_layout: Any, big_layout: Any,
                    pyctr_client_factory: ClientFactory, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nodocker"))
    srv = registry_factory("token")
    skopeo_push(busybox_layout, f"{srv.addr}/public/bb:1", creds=CREDS)
    skopeo_push(big_layout, f"{srv.addr}/private/big:1", creds=CREDS)
    tokens = srv.token
    c = pyctr_client_factory()
    # anonymous: public repositories only
    res = _fetch(c, f"{srv.addr}/public/bb:1", plain_http=True)
    assert res.blobs >= 3
    with pytest.raises(PermissionDenied) as ei:
        _fetch(c, f"{srv.addr}/private/big:1", plain_http=True)
    assert "private/big" in str(ei.value) and "\n" not in str(ei.value)
    # with credentials; one token serves every request of the same scope
    tokens.requests.clear()
    res = _fetch(c, f"{srv.addr}/private/big:1", plain_http=True, user=CREDS)
    assert res.blobs == len(big_layout.blobs)
    assert len(tokens.requests) == 1
    assert tokens.requests[0] == (USER, ["repository:private/big:pull"])
    with pytest.raises(PermissionDenied) as ei:
        _fetch(pyctr_client_factory(), f"{srv.addr}/private/big:1", plain_http=True, user=f"{USER}:nope")
    assert "token service refused" in str(ei.value)
    # push needs pull,push
    rec = c.plugin("metadata").content
    assert rec.exists("default", res.target.digest)
    c.plugin("distribution").push("default", f"{srv.addr}/private/copy:2", res.target, plain_http=True,
                                  user=CREDS)
    assert any("repository:private/copy:pull,push" in s for _, scopes in tokens.requests for s in scopes)
    back = _fetch(pyctr_client_factory(), f"{srv.addr}/private/copy:2", plain_http=True, user=CREDS)
    assert back.target.digest == res.target.digest


# -- TLS -------------------------------------------------------------------------------------------


def test_tls_needs_the_ca(registry_factory: RegistryFactory, busybox_layout: Any, tls_files: TLSFiles,
                          pyctr_client_factory: ClientFactory, tmp_path: Path) -> None:
    srv = registry_factory("tls")
    skopeo_push(busybox_layout, f"{srv.addr}/t/bb:1")
    ref = f"{srv.addr}/t/bb:1"
    certs_d = tmp_path / "certs.d"
    c = pyctr_client_factory(config_path=str(certs_d), retries=0)
    with pytest.raises(Unavailable) as ei:
        _fetch(c, ref)
    assert "certificate" in str(ei.value) and srv.addr in str(ei.value)
    # plain HTTP to a TLS port is an error too, not a hang
    with pytest.raises(PyctrError):
        _fetch(c, ref, plain_http=True)
    # certs.d/<host:port>/ca.crt
    (certs_d / srv.addr).mkdir(parents=True)
    shutil.copy(tls_files.ca, certs_d / srv.addr / "ca.crt")
    c2 = pyctr_client_factory(config_path=str(certs_d))
    assert _fetch(c2, ref).blobs >= 3
    # the hosts table: insecure (no verification) or a CA file
    c3 = pyctr_client_factory(config_path="", hosts={srv.addr: {"insecure": True}})
    assert _fetch(c3, ref).blobs >= 3
    c4 = pyctr_client_factory(config_path="", hosts={srv.addr: {"ca": str(tls_files.ca)}})
    assert _fetch(c4, ref).blobs >= 3


def test_tls_client_certificate(registry_factory: RegistryFactory, busybox_layout: Any, tls_files: TLSFiles,
                                pyctr_client_factory: ClientFactory, tmp_path: Path) -> None:
    srv = registry_factory("tls", client_certs=True)
    certs_d = tmp_path / "certs.d"
    host_dir = certs_d / srv.addr
    host_dir.mkdir(parents=True)
    shutil.copy(tls_files.ca, host_dir / "ca.crt")
    c = pyctr_client_factory(config_path=str(certs_d), retries=0)
    with pytest.raises(PyctrError):
        _fetch(c, f"{srv.addr}/t/bb:1")  # no client certificate: the handshake fails
    shutil.copy(tls_files.client_cert, host_dir / "client.cert")
    shutil.copy(tls_files.client_key, host_dir / "client.key")
    c2 = pyctr_client_factory(config_path=str(certs_d))
    # push with pyctr (skopeo would need the same files), then pull back
    plain = registry_factory()
    skopeo_push(busybox_layout, f"{plain.addr}/t/bb:1")
    src = _fetch(c2, f"{plain.addr}/t/bb:1", plain_http=True)
    c2.plugin("distribution").push("default", f"{srv.addr}/t/bb:1", src.target)
    c3 = pyctr_client_factory(config_path=str(certs_d))
    assert _fetch(c3, f"{srv.addr}/t/bb:1").target.digest == src.target.digest


def test_hosts_toml_server_and_pull_mirror(seeded_registry: Any, registry_factory: RegistryFactory,
                                           pyctr_client_factory: ClientFactory, tmp_path: Path) -> None:
    from fixtures_registry import free_port

    certs_d = tmp_path / "certs.d"
    # a name that resolves nowhere, served by the seeded registry through hosts.toml's server
    (certs_d / "registry.invalid").mkdir(parents=True)
    (certs_d / "registry.invalid" / "hosts.toml").write_text(
        f'server = "http://{seeded_registry.addr}"\n[header]\n  X-Pyctr-Test = "1"\n')
    c = pyctr_client_factory(config_path=str(certs_d))
    res = _fetch(c, "registry.invalid/test/busybox:1")
    assert res.target.digest == seeded_registry.busybox.root_digest
    # a pull mirror: pulls go to the mirror, pushes to the server (here a closed port)
    dead = f"127.0.0.1:{free_port()}"
    (certs_d / "mirrored.invalid").mkdir()
    (certs_d / "mirrored.invalid" / "hosts.toml").write_text(
        f'server = "http://{dead}"\n'
        f'[host."http://{seeded_registry.addr}"]\n  capabilities = ["pull", "resolve"]\n')
    c2 = pyctr_client_factory(config_path=str(certs_d), retries=0)
    res2 = _fetch(c2, "mirrored.invalid/test/busybox:1")
    assert res2.target.digest == res.target.digest
    with pytest.raises(Unavailable) as ei:
        c2.plugin("distribution").push("default", "mirrored.invalid/test/busybox:2", res2.target)
    assert "connection refused" in str(ei.value)
    (certs_d / "bad.invalid").mkdir()
    (certs_d / "bad.invalid" / "hosts.toml").write_text('servr = "x"\n')
    with pytest.raises(PyctrError) as ei2:
        _fetch(c2, "bad.invalid/a:1")
    assert "servr" in str(ei2.value)


def test_host_configuration(tmp_path: Path) -> None:
    from pyctr.plugins.distribution.registry.hosts import Hosts

    h = Hosts(str(tmp_path), {"reg.example:5000": {"plain_http": True, "headers": {"X-A": "1"}}})
    hub = h.get("docker.io")
    assert (hub.host, hub.scheme, hub.api_url) == ("registry-1.docker.io", "https", "https://registry-1.docker.io/v2")
    r = h.get("reg.example:5000")
    assert r.scheme == "http" and r.headers == {"X-A": "1"}
    assert h.get("other.example", plain_http=True).scheme == "http"
    with pytest.raises(PyctrError) as ei:
        Hosts("", {"x": {"insecur": True}})
    assert "insecur" in str(ei.value)
    d = tmp_path / "tls.example"
    d.mkdir()
    (d / "client.cert").write_text("x")
    with pytest.raises(PyctrError) as ei:
        h.get("tls.example")
    assert "client.key" in str(ei.value)
