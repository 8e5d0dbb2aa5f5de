"""Pushing to a real docker-registry: blobs before manifests, skip what exists, cross-repository mounts,
monolithic and chunked uploads, indexes and platform selection; checked with skopeo and by pulling back."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import pytest
from fixtures_images import skopeo_push
from fixtures_registry import RegistryFactory, SeededRegistry, registry_digest
from pyctr.errdefs import NotFound

pytestmark = pytest.mark.integration
ClientFactory = Callable[..., Any]


class Recorder:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.lock = threading.Lock()

    def __call__(self, ev: Any) -> None:
        with self.lock:
            self.events.append(ev)

    def states(self, state: str) -> set[str]:
        return {e.digest for e in self.events if e.state == state}


def _skopeo_inspect(addr: str, repo_tag: str) -> dict[str, Any]:
    out = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{addr}/{repo_tag}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def test_push_mounts_across_repositories_then_skips(seeded_registry: SeededRegistry,
                                                    pyctr_client_factory: ClientFactory) -> None:
    c = pyctr_client_factory()
    dist = c.plugin("distribution")
    addr = seeded_registry.addr
    res = dist.fetch("default", f"{addr}/test/busybox:1", plain_http=True)
    rec = Recorder()
    dist.push("default", f"{addr}/pushed/mounted:1", res.target, plain_http=True, progress=rec)
    layers_and_config = set(seeded_registry.busybox.blobs) - {res.target.digest}
    assert rec.states("mounted") == layers_and_config  # source label -> cross-repo mount, no upload
    assert not rec.states("uploading") - {res.target.digest}
    assert registry_digest(addr, "pushed/mounted", "1") == res.target.digest
    assert _skopeo_inspect(addr, "pushed/mounted:1")["config"]["digest"] in layers_and_config
    rec2 = Recorder()
    dist.push("default", f"{addr}/pushed/mounted:2", res.target, plain_http=True, progress=rec2)
    rec3 = Recorder()
    dist.push("default", f"{addr}/pushed/mounted:1", res.target, plain_http=True, progress=rec3)
    assert rec3.states("exists") == layers_and_config  # HEAD finds them: nothing sent again


@pytest.mark.parametrize("chunk", [0, 1 << 20], ids=["monolithic", "chunked"])
def test_push_uploads_to_another_registry(chunk: int, seeded_registry: SeededRegistry,
                                          registry_factory: RegistryFactory,
                                          pyctr_client_factory: ClientFactory) -> None:
    dst = registry_factory()
    c = pyctr_client_factory(upload_chunk_size=chunk, max_concurrent_uploads=2)
    dist = c.plugin("distribution")
    res = dist.fetch("default", f"{seeded_registry.addr}/test/big:1", plain_http=True)
    rec = Recorder()
    dist.push("default", f"{dst.addr}/copy/big:7", res.target, plain_http=True, progress=rec)
    blobs = set(seeded_registry.big.blobs) - {res.target.digest}
    assert rec.states("done") >= blobs
    assert not rec.states("mounted")
    for d in blobs:  # the registry holds exactly our bytes
        assert dst.blob_path(d).stat().st_size == seeded_registry.big.blobs[d]
    back = pyctr_client_factory().plugin("distribution").fetch("default", f"{dst.addr}/copy/big:7",
                                                                plain_http=True)
    assert back.target.digest == res.target.digest and back.blobs == res.blobs


def test_push_index_and_platform_selection(seeded_registry: SeededRegistry, registry_factory: RegistryFactory,
                                           pyctr_client_factory: ClientFactory) -> None:
    dst = registry_factory()
    c = pyctr_client_factory()
    dist = c.plugin("distribution")
    src = f"{seeded_registry.addr}/test/multi:1"
    host_only = dist.fetch("default", src, plain_http=True)
    # only the host's manifest is here: pushing the whole index names what is missing
    with pytest.raises(NotFound) as ei:
        dist.push("default", f"{dst.addr}/m/multi:1", host_only.target, plain_http=True)
    assert "not in the content store" in str(ei.value)
    # --platform linux/amd64 pushes that manifest as the tag
    dist.push("default", f"{dst.addr}/m/amd:1", host_only.target, plain_http=True, platforms=["linux/amd64"])
    assert registry_digest(dst.addr, "m/amd", "1") == host_only.manifests[0].digest
    # with every platform fetched the index goes up whole, children first
    full = dist.fetch("default", src, plain_http=True, all_platforms=True)
    dist.push("default", f"{dst.addr}/m/multi:1", full.target, plain_http=True)
    assert registry_digest(dst.addr, "m/multi", "1") == full.target.digest
    index = _skopeo_inspect(dst.addr, "m/multi:1")
    assert {m["platform"]["architecture"] for m in index["manifests"]} == {"amd64", "arm64"}


def test_push_cli_and_pull_cli(seeded_registry: SeededRegistry, registry_factory: RegistryFactory,
                               pyctr_cli: Any, busybox_layout: Any) -> None:
    dst = registry_factory()
    addr = seeded_registry.addr
    out = pyctr_cli("images", "pull", "--plain-http", "--no-unpack", f"{addr}/test/busybox:1", check=True)
    assert f"{addr}/test/busybox:1: pulled {busybox_layout.root_digest}" in out.stdout
    assert "MB/s" in out.stdout
    assert pyctr_cli("images", "ls", "-q", check=True).stdout.split() == [f"{addr}/test/busybox:1"]
    bad = pyctr_cli("images", "pull", "--plain-http", "--no-unpack", f"{addr}/test/busybox:nope")
    assert bad.returncode == 3 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and "nope" in bad.stderr
    out = pyctr_cli("images", "push", "--plain-http", f"{dst.addr}/cli/bb:1", f"{addr}/test/busybox:1",
                    check=True)
    assert "pushed" in out.stdout
    assert registry_digest(dst.addr, "cli/bb", "1") == busybox_layout.root_digest
    # top-level shortcut
    out = pyctr_cli("pull", "--plain-http", "--no-unpack", f"{dst.addr}/cli/bb:1", check=True)
    assert "pulled" in out.stdout


def test_skopeo_reads_what_pyctr_pushed(registry_factory: RegistryFactory, busybox_layout: Any,
                                        pyctr_client_factory: ClientFactory) -> None:
    a, b = registry_factory(), registry_factory()
    skopeo_push(busybox_layout, f"{a.addr}/src/bb:1")
    c = pyctr_client_factory()
    dist = c.plugin("distribution")
    res = dist.fetch("default", f"{a.addr}/src/bb:1", plain_http=True)
    dist.push("default", f"{b.addr}/dst/bb:latest", res.target, plain_http=True)
    raw = _skopeo_inspect(b.addr, "dst/bb:latest")
    assert raw["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert [ly["digest"] for ly in raw["layers"]] == busybox_layout.layers


def test_pull_and_push_are_counted_for_metrics(seeded_registry: SeededRegistry, registry_factory: RegistryFactory,
                                               pyctr_client_factory: ClientFactory) -> None:
    from pyctr import metrics_api

    before = metrics_api.snapshot()
    c = pyctr_client_factory()
    dist = c.plugin("distribution")
    res = dist.fetch("default", f"{seeded_registry.addr}/test/busybox:1", plain_http=True)
    dst = registry_factory()
    dist.push("default", f"{dst.addr}/m/bb:1", res.target, plain_http=True)
    after = metrics_api.snapshot()
    assert after["bytes"]["pull"] - before["bytes"]["pull"] == res.bytes_fetched
    assert after["bytes"]["push"] - before["bytes"]["push"] == sum(seeded_registry.busybox.blobs.values())
    assert after["durations"]["pull"].count == before["durations"].get("pull", _Zero()).count + 1
    assert after["durations"]["push"].count == before["durations"].get("push", _Zero()).count + 1


class _Zero:
    count = 0
