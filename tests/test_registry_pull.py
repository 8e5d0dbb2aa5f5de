"""Pulling from a real docker-registry on 127.0.0.1 (images pushed there with skopeo)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures_images import skopeo_push
from fixtures_registry import RegistryFactory, SeededRegistry
from pyctr import images as img
from pyctr import mediatypes as mt
from pyctr.errdefs import DataLoss, DeadlineExceeded, NotFound, NotImplementedErr, PyctrError, Unavailable

pytestmark = pytest.mark.integration
ClientFactory = Callable[..., Any]

SOURCE = "containerd.io/distribution.source."


def _dist(client: Any) -> Any:
    return client.plugin("distribution")


def _content(client: Any) -> Any:
    return client.plugin("metadata").content


def test_pull_single_platform(seeded_registry: SeededRegistry, pyctr_client_factory: ClientFactory) -> None:
    c = pyctr_client_factory()
    events: list[Any] = []
    lock = threading.Lock()

    def progress(ev: Any) -> None:
        with lock:
            events.append(ev)

    ref = f"{seeded_registry.addr}/test/busybox:1"
    res = _dist(c).fetch("default", ref, plain_http=True, progress=progress)
    lay = seeded_registry.busybox
    assert res.name == f"{seeded_registry.addr}/test/busybox:1"
    assert res.target.digest == lay.root_digest
    cs = _content(c)
    for dgst, size in lay.blobs.items():
        info = cs.info("default", dgst)
        assert info.size == size
        assert info.labels[f"{SOURCE}{seeded_registry.addr}"] == "test/busybox"
    # the manifest names its children for the GC
    labels = cs.info("default", lay.root_digest).labels
    manifest = json.loads(cs.read("default", lay.root_digest))
    assert labels["containerd.io/gc.ref.content.config"] == manifest["config"]["digest"]
    for i, layer in enumerate(manifest["layers"]):
        assert labels[f"containerd.io/gc.ref.content.l.{i}"] == layer["digest"]
    assert res.bytes_fetched == sum(lay.blobs.values())
    assert any(e.state == "done" and e.kind == "layer" for e in events)
    # the pull's own lease is gone; nothing is left ingesting
    assert c.plugin("metadata").leases.list("default") == []
    assert cs.list_statuses("default") == []
    # the result crosses the wire as a plain dict
    from pyctr.plugins.distribution.registry.pull import FetchResult

    assert FetchResult.from_dict(json.loads(json.dumps(res.to_dict()))) == res
    name, desc = _dist(c).resolve(ref, plain_http=True)
    assert name == ref and desc.digest == lay.root_digest and desc.size == lay.blobs[lay.root_digest]
    # a second fetch finds everything present
    again = _dist(c).fetch("default", f"{seeded_registry.addr}/test/busybox:1", plain_http=True)
    assert again.fetched == 0 and again.bytes_fetched == 0 and again.blobs == res.blobs


def test_pull_index_picks_host_platform(
    seeded_registry: SeededRegistry, pyctr_client_factory: ClientFactory
) -> None:
    c = pyctr_client_factory()
    res = _dist(c).fetch("default", f"{seeded_registry.addr}/test/multi:1", plain_http=True)
    assert res.target.digest == seeded_registry.multi_digest
    assert len(res.manifests) == 1
    cs = _content(c)
    index = json.loads(cs.read("default", seeded_registry.multi_digest))
    by_arch = {m["platform"]["architecture"]: m["digest"] for m in index["manifests"]}
    assert res.manifests[0].digest == by_arch["amd64"]
    assert not cs.exists("default", by_arch["arm64"])
    labels = cs.info("default", seeded_registry.multi_digest).labels
    assert {labels["containerd.io/gc.ref.content.m.0"], labels["containerd.io/gc.ref.content.m.1"]} == set(
        by_arch.values()
    )
    # the image helpers find the same manifest in the store
    read = lambda d: cs.read("default", d.digest)  # noqa: E731
    assert img.manifest_for_platform(read, res.target).digest == by_arch["amd64"]


def test_pull_platform_flags(seeded_registry: SeededRegistry, pyctr_client_factory: ClientFactory) -> None:
    c = pyctr_client_factory()
    ref = f"{seeded_registry.addr}/test/multi:1"
    res = _dist(c).fetch("default", ref, plain_http=True, platforms=["linux/arm64"])
    cs = _content(c)
    index = json.loads(cs.read("default", seeded_registry.multi_digest))
    by_arch = {m["platform"]["architecture"]: m["digest"] for m in index["manifests"]}
    assert [m.digest for m in res.manifests] == [by_arch["arm64"]]
    allp = _dist(c).fetch("default", ref, plain_http=True, all_platforms=True)
    assert {m.digest for m in allp.manifests} == set(by_arch.values())
    for d in seeded_registry.multi.blobs:
        if d != seeded_registry.multi.root_digest:  # skopeo re-serialised the index
            assert cs.exists("default", d)


def test_no_matching_platform_lists_what_the_index_has(
    seeded_registry: SeededRegistry, pyctr_client_factory: ClientFactory
) -> None:
    c = pyctr_client_factory()
    with pytest.raises(NotFound) as ei:
        _dist(c).fetch(
            "default", f"{seeded_registry.addr}/test/multi:1", plain_http=True, platforms=["linux/s390x"]
        )
    msg = str(ei.value)
    assert "linux/s390x" in msg and "linux/amd64" in msg and "linux/arm64" in msg


def test_unknown_tag_is_one_line(
    seeded_registry: SeededRegistry, pyctr_client_factory: ClientFactory
) -> None:
    c = pyctr_client_factory()
    with pytest.raises(NotFound) as ei:
        _dist(c).fetch("default", f"{seeded_registry.addr}/test/busybox:nope", plain_http=True)
    msg = str(ei.value)
    assert "\n" not in msg
    assert seeded_registry.addr in msg and "test/busybox" in msg and "nope" in msg
    with pytest.raises(NotFound) as ei2:
        _dist(c).fetch("default", f"{seeded_registry.addr}/test/nosuchrepo:1", plain_http=True)
    assert "test/nosuchrepo" in str(ei2.value)


def test_pull_by_digest(seeded_registry: SeededRegistry, pyctr_client_factory: ClientFactory) -> None:
    c = pyctr_client_factory()
    d = seeded_registry.busybox.root_digest
    res = _dist(c).fetch("default", f"{seeded_registry.addr}/test/busybox@{d}", plain_http=True)
    assert res.target.digest == d and res.name.endswith(f"@{d}")
    both = _dist(c).fetch("default", f"{seeded_registry.addr}/test/busybox:1@{d}", plain_http=True)
    assert both.target.digest == d


def test_parallel_fetch_reuses_connections(
    seeded_registry: SeededRegistry, pyctr_client_factory: ClientFactory
) -> None:
    c = pyctr_client_factory(max_concurrent_downloads=3)
    svc = _dist(c)
    active: set[str] = set()
    peak = [0]
    lock = threading.Lock()

    def progress(ev: Any) -> None:
        with lock:
            if ev.state == "downloading":
                active.add(ev.digest)
            elif ev.state in ("done", "exists"):
                active.discard(ev.digest)
            peak[0] = max(peak[0], len(active))

    res = svc.fetch("default", f"{seeded_registry.addr}/test/big:1", plain_http=True, progress=progress)
    assert res.blobs == len(seeded_registry.big.blobs)
    assert peak[0] >= 2  # layers really were in flight together
    # keep-alive: far fewer connections than requests (HEAD + manifest + 4 blobs)
    assert svc.transport.connections_made <= 4


def _break_blob(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_blob_is_refused_and_not_committed(
    tmp_path: Path,
    registry_factory: RegistryFactory,
    busybox_layout: Any,
    pyctr_client_factory: ClientFactory,
) -> None:
    srv = registry_factory()
    skopeo_push(busybox_layout, f"{srv.addr}/x/bb:1")
    layer = busybox_layout.layers[0]
    _break_blob(srv.blob_path(layer))
    c = pyctr_client_factory()
    with pytest.raises(DataLoss) as ei:
        _dist(c).fetch("default", f"{srv.addr}/x/bb:1", plain_http=True)
    assert layer in str(ei.value)
    cs = _content(c)
    assert not cs.exists("default", layer)
    assert cs.list_statuses("default") == []  # the bad bytes are not kept for a "resume"


def test_schema1_is_refused(pyctr_client_factory: ClientFactory) -> None:
    # docker-registry 2.8 no longer accepts schema 1 uploads, so a tiny server in the test plays an old
    # registry that answers with a signed schema 1 manifest
    import http.server

    body = json.dumps({"schemaVersion": 1, "name": "old/img", "tag": "1", "fsLayers": []}).encode()

    class Old(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.docker.distribution.manifest.v1+prettyjws")
            self.send_header("Docker-Content-Digest", "sha256:" + hashlib.sha256(body).hexdigest())
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

        do_GET = do_HEAD = _answer

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Old)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        c = pyctr_client_factory()
        with pytest.raises(NotImplementedErr) as ei:
            _dist(c).fetch("default", f"127.0.0.1:{srv.server_address[1]}/old/img:1", plain_http=True)
    finally:
        srv.shutdown()
        srv.server_close()
    msg = str(ei.value)
    assert "schema 1" in msg and "\n" not in msg and "old/img" in msg
    with pytest.raises(NotImplementedErr):
        mt.detect(json.dumps({"schemaVersion": 1, "fsLayers": []}).encode())


def test_stalled_registry_times_out_then_resumes(
    registry_factory: RegistryFactory, big_layout: Any, pyctr_client_factory: ClientFactory
) -> None:
    srv = registry_factory()
    skopeo_push(big_layout, f"{srv.addr}/x/big:1")
    c = pyctr_client_factory(read_timeout=1.0, retries=1, retry_backoff=0.05, max_concurrent_downloads=1)
    big = max(big_layout.blobs, key=lambda d: big_layout.blobs[d])
    paused = threading.Event()

    def progress(ev: Any) -> None:
        if ev.digest == big and ev.state == "downloading" and ev.offset > 0 and not paused.is_set():
            paused.set()
            srv.pause()

    try:
        with pytest.raises((DeadlineExceeded, Unavailable)) as ei:
            _dist(c).fetch("default", f"{srv.addr}/x/big:1", plain_http=True, progress=progress)
    finally:
        srv.resume()
    assert paused.is_set()
    assert "resume" in str(ei.value)
    st = [s for s in _content(c).list_statuses("default") if s.ref == f"layer-{big}"]
    assert st and 0 < st[0].offset < st[0].total
    kept = st[0].offset
    res = _dist(c).fetch("default", f"{srv.addr}/x/big:1", plain_http=True)
    assert res.bytes_resumed >= kept
    assert res.bytes_fetched <= sum(big_layout.blobs.values()) - kept
    assert _content(c).exists("default", big)


def test_registry_killed_mid_pull_resumes_after_restart(
    registry_factory: RegistryFactory, big_layout: Any, pyctr_client_factory: ClientFactory
) -> None:
    srv = registry_factory()
    skopeo_push(big_layout, f"{srv.addr}/x/big:1")
    c = pyctr_client_factory(retries=1, retry_backoff=0.05, max_concurrent_downloads=1)
    big = max(big_layout.blobs, key=lambda d: big_layout.blobs[d])
    killed = threading.Event()

    def progress(ev: Any) -> None:
        if ev.digest == big and ev.state == "downloading" and ev.offset > 0 and not killed.is_set():
            killed.set()
            srv.kill()

    with pytest.raises(PyctrError) as ei:
        _dist(c).fetch("default", f"{srv.addr}/x/big:1", plain_http=True, progress=progress)
    assert killed.is_set() and isinstance(ei.value, Unavailable | DeadlineExceeded)
    assert "\n" not in str(ei.value)
    st = [s for s in _content(c).list_statuses("default") if s.ref == f"layer-{big}"]
    assert st and 0 < st[0].offset < st[0].total
    kept = st[0].offset
    srv.start()
    res = _dist(c).fetch("default", f"{srv.addr}/x/big:1", plain_http=True)
    assert res.bytes_resumed >= kept
    assert res.bytes_fetched <= sum(big_layout.blobs.values()) - kept
    assert _content(c).info("default", big).size == big_layout.blobs[big]


def test_manifest_over_size_limit_is_refused(
    monkeypatch: pytest.MonkeyPatch, seeded_registry: SeededRegistry, pyctr_client_factory: ClientFactory
) -> None:
    # the limit is containerd's 4*1048*1048 bytes; lower it so the test's manifest is "too big"
    monkeypatch.setattr(img, "MAX_MANIFEST_SIZE", 100)
    c = pyctr_client_factory()
    with pytest.raises(DataLoss) as ei:
        _dist(c).fetch("default", f"{seeded_registry.addr}/test/busybox:1", plain_http=True)
    assert "limit" in str(ei.value)


def test_unreachable_registry_is_one_line(pyctr_client_factory: ClientFactory) -> None:
    from fixtures_registry import free_port

    c = pyctr_client_factory(retries=1, retry_backoff=0.01)
    with pytest.raises(Unavailable) as ei:
        _dist(c).fetch("default", f"127.0.0.1:{free_port()}/a/b:1", plain_http=True)
    assert "connection refused" in str(ei.value) and "\n" not in str(ei.value)


class Front:
    """An HTTP server in the test that answers every request with a redirect to ``target`` (another
    host:port), after failing each path ``failures`` times (503 with Retry-After: 0, then 429)."""

    def __init__(self, target: str, failures: int = 0) -> None:
        import http.server

        self.target = target
        self.failures = failures
        self.seen: dict[str, int] = {}
        self.auth_headers: list[str] = []
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                n = front.seen.get(self.path, 0)
                front.seen[self.path] = n + 1
                if n < front.failures:
                    self.send_response(503 if n == 0 else 429)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(307)
                self.send_header("Location", f"http://{front.target}{self.path}")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = _answer

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.addr = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_redirects_to_another_host_and_retries_5xx_429(seeded_registry: SeededRegistry,
                                                        pyctr_client_factory: ClientFactory) -> None:
    front = Front(seeded_registry.addr, failures=2)
    try:
        c = pyctr_client_factory(retries=3, retry_backoff=0.01)
        # the front answers for repository test/busybox; every request is redirected to the registry
        res = _dist(c).fetch("default", f"{front.addr}/test/busybox:1", plain_http=True)
    finally:
        front.close()
    assert res.target.digest == seeded_registry.busybox.root_digest
    assert res.blobs == len(seeded_registry.busybox.blobs)
    blob_paths = [p for p in front.seen if "/blobs/" in p]
    assert blob_paths and all(front.seen[p] == 3 for p in blob_paths)  # 503, 429, then the redirect
    # the distribution source names the host the user asked for
    info = _content(c).info("default", seeded_registry.busybox.layers[0])
    assert info.labels[f"{SOURCE}{front.addr}"] == "test/busybox"


def test_retries_run_out_with_a_clear_error(seeded_registry: SeededRegistry,
                                            pyctr_client_factory: ClientFactory) -> None:
    front = Front(seeded_registry.addr, failures=100)
    try:
        c = pyctr_client_factory(retries=2, retry_backoff=0.01)
        with pytest.raises(Unavailable) as ei:
            _dist(c).fetch("default", f"{front.addr}/test/busybox:1", plain_http=True)
    finally:
        front.close()
    assert "429" in str(ei.value) or "503" in str(ei.value) or "Too Many" in str(ei.value)
    assert front.addr in str(ei.value)


def test_second_namespace_links_without_download(seeded_registry: SeededRegistry,
                                                 pyctr_client_factory: ClientFactory) -> None:
    c = pyctr_client_factory()
    ref = f"{seeded_registry.addr}/test/busybox:1"
    first = _dist(c).fetch("a", ref, plain_http=True)
    second = _dist(c).fetch("b", ref, plain_http=True)
    assert first.bytes_fetched > 0
    assert second.bytes_fetched == 0 and second.blobs == first.blobs
    labels = _content(c).info("b", first.target.digest).labels
    assert labels[f"{SOURCE}{seeded_registry.addr}"] == "test/busybox"
    assert "containerd.io/gc.ref.content.config" in labels


def test_concurrent_pulls_of_one_image_share_the_work(seeded_registry: SeededRegistry,
                                                      pyctr_client_factory: ClientFactory) -> None:
    c = pyctr_client_factory()
    # one service for both threads (pyctr.Client builds its engine lazily, and not under a lock)
    dist = _dist(c)
    ref = f"{seeded_registry.addr}/test/big:1"
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(dist.fetch("default", ref, plain_http=True))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(results) == 2
    total = sum(seeded_registry.big.blobs.values())
    # each blob was downloaded once between the two pulls
    assert sum(r.bytes_fetched for r in results) <= total + 1024
    assert _content(c).list_statuses("default") == []


def test_progress_renderer_draws_per_blob_lines() -> None:
    import io

    from pyctr.cli.images_remote import ProgressRenderer
    from pyctr.plugins.distribution.registry.pull import ProgressEvent

    out = io.StringIO()
    r = ProgressRenderer(out, enabled=True)
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    r(ProgressEvent(f"layer-{a}", a, "layer", "downloading", 5_000_000, 10_000_000, resumed_from=1_000_000))
    r(ProgressEvent(f"layer-{b}", b, "layer", "exists", 3_000_000, 3_000_000))
    r(ProgressEvent(f"layer-{a}", a, "layer", "done", 10_000_000, 10_000_000))
    r.finish()
    text = out.getvalue()
    assert "layer-aaaaaaaaaaaa" in text and "50.0%" in text and "resumed at 1.0 MB" in text
    assert "layer-bbbbbbbbbbbb  exists" in text and "\x1b[2F" in text  # redrawn in place
    quiet = io.StringIO()
    ProgressRenderer(quiet)(ProgressEvent(f"layer-{a}", a, "layer", "done", 1, 1))
    assert quiet.getvalue() == ""  # not a terminal: no bars


def test_interrupted_pull_resumes(registry_factory: RegistryFactory, big_layout: Any,
                                  pyctr_client_factory: ClientFactory) -> None:
    """Ctrl-C in the middle of a parallel pull stops every transfer promptly; a rerun resumes."""
    import os
    import signal
    import time

    srv = registry_factory()
    skopeo_push(big_layout, f"{srv.addr}/x/big:1")
    c = pyctr_client_factory(max_concurrent_downloads=3)
    big = max(big_layout.blobs, key=lambda d: big_layout.blobs[d])
    fired = threading.Event()

    def progress(ev: Any) -> None:
        if ev.digest == big and ev.state == "downloading" and ev.offset > 0 and not fired.is_set():
            fired.set()
            srv.pause()  # hold the transfer where it is, then press "Ctrl-C"
            os.kill(os.getpid(), signal.SIGINT)

    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            _dist(c).fetch("default", f"{srv.addr}/x/big:1", plain_http=True, progress=progress)
            time.sleep(5)  # the interrupt may land just after fetch returned
    finally:
        srv.resume()
    assert fired.is_set()
    assert time.monotonic() - t0 < 20  # did not wait for the paused transfer to time out fully
    assert c.plugin("metadata").leases.list("default") == []
    res = _dist(c).fetch("default", f"{srv.addr}/x/big:1", plain_http=True)
    assert res.bytes_resumed > 0
    assert _content(c).exists("default", big)


class NoRangeProxy:
    """Forwards GET and HEAD to a registry but drops the ``Range`` header (a server without ranges)."""

    def __init__(self, target: str) -> None:
        import http.server
        import urllib.request

        proxy = self
        self.ranged = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                if self.headers.get("Range"):
                    proxy.ranged += 1
                hdrs = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "authorization")}
                req = urllib.request.Request(f"http://{target}{self.path}", method=self.command, headers=hdrs)
                try:
                    with urllib.request.urlopen(req, timeout=30) as up:
                        status, headers, body = up.status, up.headers, up.read()
                except urllib.error.HTTPError as e:
                    status, headers, body = e.code, e.headers, e.read()
                self.send_response(status)
                for k in ("Content-Type", "Docker-Content-Digest"):
                    if headers.get(k):
                        self.send_header(k, headers[k])
                self.send_header("Content-Length", headers.get("Content-Length") or str(len(body)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body)

            do_GET = do_HEAD = _answer

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.addr = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _seed_partial_ingest(c: Any, layout: Any, digest: str, nbytes: int) -> None:
    """Leave an interrupted ingest of ``digest`` holding its first ``nbytes`` (as a killed pull would)."""
    data = (layout.path / "blobs" / "sha256" / digest[7:]).read_bytes()[:nbytes]
    w = _content(c).writer("default", f"layer-{digest}", layout.blobs[digest], digest)
    w.write(data)
    w.close()


def test_resume_uses_a_range_request(seeded_registry: SeededRegistry, pyctr_client_factory: ClientFactory) -> None:
    big = seeded_registry.big
    layer = max(big.blobs, key=lambda d: big.blobs[d])
    c = pyctr_client_factory()
    half = big.blobs[layer] // 2
    _seed_partial_ingest(c, big, layer, half)
    res = _dist(c).fetch("default", f"{seeded_registry.addr}/test/big:1", plain_http=True)
    assert res.bytes_resumed == half
    assert res.bytes_fetched == sum(big.blobs.values()) - half
    assert _content(c).info("default", layer).size == big.blobs[layer]


def test_server_ignoring_ranges_gets_the_whole_blob(seeded_registry: SeededRegistry,
                                                    pyctr_client_factory: ClientFactory) -> None:
    big = seeded_registry.big
    layer = max(big.blobs, key=lambda d: big.blobs[d])
    c = pyctr_client_factory()
    _seed_partial_ingest(c, big, layer, 1000)
    proxy = NoRangeProxy(seeded_registry.addr)
    try:
        res = _dist(c).fetch("default", f"{proxy.addr}/test/big:1", plain_http=True)
    finally:
        proxy.close()
    assert proxy.ranged == 1  # it asked for the rest ...
    assert res.bytes_resumed == 0 and res.bytes_fetched == sum(big.blobs.values())  # ... and took it all
    assert _content(c).info("default", layer).size == big.blobs[layer]


def test_pull_and_run_through_the_daemon(seeded_registry: SeededRegistry, tmp_root: Any, pyctr_cli: Any) -> None:
    """``images pull`` and ``run``'s implicit pull work through pyctrd (the pull runs in the daemon and
    streams its progress), and a missing tag there is still one line."""
    from daemon_helpers import running_daemon
    from pyctr.plugins.runtime.runc.manager import RuncRuntime
    from runtime_helpers import cgroup_parent_for, teardown

    ref = f"{seeded_registry.addr}/test/busybox:1"
    parent = cgroup_parent_for(tmp_root.state)  # the container's cgroups, and the shims, are the test's own
    with open(tmp_root.config, "a") as f:
        f.write(f'\n[plugins."pyctr.runtime.runc"]\ncgroup_parent = "{parent}"\n')
    try:
        with running_daemon(tmp_root) as (_proc, sock):
            p = pyctr_cli("--address", sock, "images", "pull", "--plain-http", ref, check=True)
            assert "pulled" in p.stdout and "unpacked" in p.stdout
            assert ref in pyctr_cli("--address", sock, "images", "ls", "-q", check=True).stdout.split()
            bad = pyctr_cli("--address", sock, "images", "pull", "--plain-http", ref.replace(":1", ":nope"))
            assert bad.returncode == NotFound.exit_code and "Traceback" not in bad.stderr
            assert len(bad.stderr.strip().splitlines()) == 1
            out = pyctr_cli("--address", sock, "run", "--rm", ref, "echo", "pulled-and-ran", check=True).stdout
            assert out.strip().splitlines()[-1] == "pulled-and-ran"
            assert pyctr_cli("--address", sock, "containers", "ls", "-q", check=True).stdout.strip() == ""
    finally:
        teardown(RuncRuntime(tmp_root.state / "pyctr.runtime.runc", cgroup_parent=parent, load=False))
