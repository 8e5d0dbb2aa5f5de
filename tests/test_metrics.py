"""``pyctr.metrics.prometheus``: the collectors on recorded cgroup v2 files, the daemon's own figures,
the HTTP endpoint, third-party collectors, ``pyctr metrics``; then, with root and runc, a real
``pyctrd --metrics-address`` scraped over HTTP while real containers run (memory limit, CPU burner,
OOM kill, stopped container), every answer parsed with prometheus_client's parser."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import PyctrCli, Roots, child_env, pyctr_executable
from daemon_helpers import pyctrd_executable, wait_for_socket
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from pyctr import metrics_api
from pyctr.hookspecs import hookimpl
from pyctr.plugins.runtime.runc import cgroups

V2_ROOT = str(Path(__file__).parent / "data" / "cgroupv2")
MiB = 1024 * 1024

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> tuple[set[str], Samples]:
    """(family names, samples by sample name) of an exposition text."""
    fams = list(text_string_to_metric_families(text))
    out: Samples = {}
    for f in fams:
        for s in f.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return {f.name for f in fams}, out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    for lab, v in samples.get(name, []):
        if all(lab.get(k) == x for k, x in labels.items()):
            return v
    return None


# -- collectors on recorded files ------------------------------------------------------------------


def test_container_collector_on_recorded_v2_files() -> None:
    from pyctr.plugins.metrics.prometheus.collector import ContainerCollector, TaskRef

    refs = [TaskRef("default", "web", "/pyctr/default/web", "running"),
            TaskRef("default", "paused", "/pyctr/default/paused", "paused"),
            TaskRef("default", "gone", "/pyctr/default/gone", "running"),      # empty cgroup
            TaskRef("default", "done", "/pyctr/default/web", "stopped"),       # exited, not deleted
            TaskRef("other", "nocg", "/pyctr/other/nothing", "running")]       # cgroup removed
    reg = CollectorRegistry(auto_describe=False)
    cc = ContainerCollector(lambda: refs, V2_ROOT)
    reg.register(cc)  # type: ignore[arg-type]
    _, s = parse(generate_latest(reg).decode())
    web = {"container_id": "web", "namespace": "default"}
    assert value(s, "container_cpu_total_nanoseconds", **web) == 2_500_000_000
    assert value(s, "container_cpu_user_nanoseconds", **web) == 2_000_000_000
    assert value(s, "container_cpu_kernel_nanoseconds", **web) == 500_000_000
    assert value(s, "container_cpu_throttled_periods_total", **web) == 45
    assert value(s, "container_cpu_throttled_time_nanoseconds", **web) == 1_800_000_000
    assert value(s, "container_memory_usage_bytes", **web) == 26345472
    assert value(s, "container_memory_usage_limit_bytes", **web) == 64 * MiB
    assert value(s, "container_memory_usage_max_bytes", **web) == 31457280
    assert value(s, "container_memory_rss_bytes", **web) == 20971520
    assert value(s, "container_memory_cache_bytes", **web) == 4096000
    assert value(s, "container_memory_swap_usage_bytes", **web) == 4096
    assert value(s, "container_memory_oom_total", **web) == 2
    assert value(s, "container_pids_current", **web) == 3
    assert value(s, "container_pids_limit", **web) is None  # unlimited: no series
    assert value(s, "container_blkio_io_service_bytes_recursive_bytes", op="Read", major="8", minor="0",
                 **web) == 1048576
    assert value(s, "container_blkio_io_serviced_recursive_total", op="Write", major="253", minor="0",
                 **web) == 2
    paused = {"container_id": "paused", "namespace": "default"}
    assert value(s, "container_pids_limit", **paused) == 100
    assert value(s, "container_memory_usage_limit_bytes", **paused) is None
    ids = {lab["container_id"] for samples in s.values() for lab, _ in samples}
    assert ids == {"web", "paused"}
    assert cc.last_count == 2 and cc.frozen == {("default", "paused")}


def test_oom_notifications_count_when_the_cgroup_does_not() -> None:
    from pyctr.plugins.metrics.prometheus.collector import ContainerCollector, TaskRef

    metrics_api.reset()
    try:
        for _ in range(3):
            metrics_api.count_oom("default", "paused")
        reg = CollectorRegistry(auto_describe=False)
        reg.register(ContainerCollector(  # type: ignore[arg-type]
            lambda: [TaskRef("default", "paused", "/pyctr/default/paused", "paused")], V2_ROOT))
        _, s = parse(generate_latest(reg).decode())
        assert value(s, "container_memory_oom_total", container_id="paused") == 3
    finally:
        metrics_api.reset()


def test_daemon_collector_figures() -> None:
    from pyctr.events.exchange import Exchange
    from pyctr.plugins.metrics.prometheus.collector import DaemonCollector, TaskRef

    metrics_api.reset()
    ex = Exchange()
    sub = ex.subscribe(['topic=="/tasks/start"'], queue_size=1)
    try:
        metrics_api.rpc_request_hook("ContainerService.list", 0.002, None)
        metrics_api.rpc_request_hook("ContainerService.list", 0.2, None)
        metrics_api.rpc_request_hook("ImageService.get", 0.0001, "not_found")
        metrics_api.observe_pull(1000, 1.5)
        metrics_api.observe_pull(24, 0.5)
        metrics_api.observe_push(7, 0.1)
        metrics_api.observe_unpack(0.3)
        for _ in range(3):
            ex.publish("default", "/tasks/start", {"container_id": "a"})
        ex.publish("default", "/tasks/exit", {"container_id": "a"})
        tasks = [TaskRef("default", "a", "/x", "running"), TaskRef("default", "b", "/y", "stopped"),
                 TaskRef("ns2", "c", "/z", "running")]
        dc = DaemonCollector(events=lambda: ex, containers=lambda: {"default": 2, "ns2": 1}, tasks=lambda: tasks,
                             plugins=lambda: [("runtime", "pyctr.runtime.runc", "ok"),
                                              ("snapshot", "pyctr.snapshot.zfs", "skipped")])
        reg = CollectorRegistry(auto_describe=False)
        reg.register(dc)  # type: ignore[arg-type]
        names, s = parse(generate_latest(reg).decode())
    finally:
        sub.close()
        metrics_api.reset()
    assert {"pyctr_rpc_requests", "pyctr_rpc_errors", "pyctr_rpc_request_duration_seconds",
            "pyctr_events_published", "pyctr_events_delivered", "pyctr_events_dropped", "pyctr_containers",
            "pyctr_tasks", "pyctr_plugin_status", "pyctr_pull_bytes", "pyctr_pull_duration_seconds",
            "pyctr_unpack_duration_seconds"} <= names
    lst = {"service": "ContainerService", "method": "list"}
    assert value(s, "pyctr_rpc_requests_total", **lst) == 2
    assert value(s, "pyctr_rpc_errors_total", service="ImageService", method="get", code="not_found") == 1
    assert value(s, "pyctr_rpc_request_duration_seconds_count", **lst) == 2
    assert value(s, "pyctr_rpc_request_duration_seconds_bucket", le="0.0025", **lst) == 1
    assert value(s, "pyctr_rpc_request_duration_seconds_bucket", le="+Inf", **lst) == 2
    assert abs((value(s, "pyctr_rpc_request_duration_seconds_sum", **lst) or 0) - 0.202) < 1e-9
    assert value(s, "pyctr_events_published_total", topic="/tasks/start") == 3
    assert value(s, "pyctr_events_published_total", topic="/tasks/exit") == 1
    assert value(s, "pyctr_events_delivered_total", topic="/tasks/start") == 1
    assert value(s, "pyctr_events_dropped_total", topic="/tasks/start") == 2
    assert value(s, "pyctr_pull_bytes_total") == 1024 and value(s, "pyctr_push_bytes_total") == 7
    assert value(s, "pyctr_pull_duration_seconds_count") == 2
    assert value(s, "pyctr_pull_duration_seconds_bucket", le="1.0") == 1
    assert value(s, "pyctr_unpack_duration_seconds_count") == 1
    assert value(s, "pyctr_containers", namespace="default") == 2
    assert value(s, "pyctr_tasks", namespace="default", status="running") == 1
    assert value(s, "pyctr_tasks", namespace="default", status="stopped") == 1
    assert value(s, "pyctr_tasks", namespace="ns2", status="running") == 1
    assert value(s, "pyctr_plugin_status", type="snapshot", id="pyctr.snapshot.zfs", status="skipped") == 1


def test_daemon_request_hook_counts_launches() -> None:
    from pyctr.plugins.metrics.prometheus.plugin import request_hook

    metrics_api.reset()
    try:
        request_hook("ContainerService.start_task", 0.3, None)
        request_hook("ContainerService.start_task", 0.1, "not_found")  # failed: not a launch
        request_hook("ContainerService.list", 0.001, None)
        snap = metrics_api.snapshot()
        assert snap["durations"]["launch"].count == 1 and snap["durations"]["launch"].sum == 0.3
        assert snap["rpc"][("ContainerService", "start_task")].count == 2
        assert snap["rpc_errors"] == {("ContainerService", "start_task", "not_found"): 1}
    finally:
        metrics_api.reset()


def test_oom_events_on_the_bus_are_counted() -> None:
    from pyctr.events.exchange import Exchange
    from pyctr.registry import make_plugin_manager

    metrics_api.reset()
    try:
        ex = Exchange(make_plugin_manager())  # the installed plugins' hooks, this one's among them
        ex.publish("default", "/tasks/oom", {"container_id": "web"})
        ex.publish("default", "/tasks/oom", {"container_id": "web"})
        ex.publish("default", "/tasks/exit", {"container_id": "web"})
        assert metrics_api.snapshot()["oom_events"] == {("default", "web"): 2}
    finally:
        metrics_api.reset()


# -- HTTP endpoint ---------------------------------------------------------------------------------


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read()


def test_address_parsing() -> None:
    from pyctr.errdefs import InvalidArgument
    from pyctr.plugins.metrics.prometheus.server import parse_address

    assert parse_address("127.0.0.1:1338") == ("127.0.0.1", 1338)
    assert parse_address(":1338") == ("127.0.0.1", 1338)
    assert parse_address("1338") == ("127.0.0.1", 1338)
    assert parse_address("[::1]:9") == ("::1", 9)
    assert parse_address("0.0.0.0:80") == ("0.0.0.0", 80)
    for bad in ("localhost:http", "1.2.3.4:70000", "nope"):
        with pytest.raises(InvalidArgument):
            parse_address(bad)


def test_http_endpoint_paths_methods_and_gzip() -> None:
    from pyctr.errdefs import Unavailable
    from pyctr.plugins.metrics.prometheus.server import MetricsHTTPServer

    srv = MetricsHTTPServer(lambda: b"# TYPE up gauge\nup 1.0\n", "127.0.0.1:0")
    srv.start()
    try:
        host, port = srv.address
        assert port != 0
        base = f"http://{host}:{port}"
        code, headers, body = _get(base + "/v1/metrics")
        assert code == 200 and body == b"# TYPE up gauge\nup 1.0\n"
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        code, headers, body = _get(base + "/v1/metrics", {"Accept-Encoding": "gzip"})
        assert code == 200 and headers.get("Content-Encoding") == "gzip"
        assert gzip.decompress(body) == b"# TYPE up gauge\nup 1.0\n"
        assert _get(base + "/metrics")[0] == 404
        assert _get(base + "/")[0] == 404
        assert _get(base + "/v1/metrics", method="POST")[0] == 405
        # the port is taken: a clear error
        other = MetricsHTTPServer(lambda: b"", f"127.0.0.1:{port}")
        with pytest.raises(Unavailable, match="cannot serve metrics"):
            other.start()
    finally:
        srv.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


# -- the plugin in an engine: third-party collectors, pyctr metrics ----------------------------------


class _ThirdParty:
    @hookimpl
    def pyctr_metrics_collectors(self, engine: Any) -> list[Any]:
        class Good:
            def collect(self) -> Iterator[Any]:
                g = GaugeMetricFamily("acme_widgets", "Widgets", labels=["kind"])
                g.add_metric(["blue"], 42)
                yield g

        class Broken:
            def collect(self) -> Iterator[Any]:
                raise RuntimeError("boom")

        return [Good(), Broken()]


def test_third_party_collectors_in_the_same_endpoint(tmp_root: Roots) -> None:
    from pyctr import config as _config
    from pyctr.engine import Engine
    from pyctr.registry import make_plugin_manager

    pm = make_plugin_manager()
    pm.register(_ThirdParty(), name="acme-metrics")
    cfg = _config.load(str(tmp_root.config), root=str(tmp_root.root), state=str(tmp_root.state))
    engine = Engine(cfg, plugin_manager=pm)
    try:
        m = engine.plugin("metrics")
        m.attach(engine)
        m.attach(engine)  # once only
        srv_host, srv_port = m.start_server("127.0.0.1:0")
        try:
            code, _, body = _get(f"http://{srv_host}:{srv_port}/v1/metrics")
        finally:
            m.stop_server()
    finally:
        engine.close()
    assert code == 200
    names, s = parse(body.decode())
    assert s["acme_widgets"] == [({"kind": "blue"}, 42.0)]  # once, and the broken one cost nothing else
    assert "pyctr_plugin_status" in names and "container_cpu_total_nanoseconds" in names


def test_pyctr_metrics_embedded(pyctr_cli: PyctrCli) -> None:
    p = pyctr_cli("metrics", check=True)
    names, s = parse(p.stdout)
    assert "container_memory_usage_bytes" in names and "pyctr_rpc_requests" in names
    assert value(s, "pyctr_plugin_status", id="pyctr.metrics.prometheus", status="ok") == 1
    assert p.stderr == ""


# -- a real daemon, real containers ----------------------------------------------------------------

IMAGE = "localhost/busybox:latest"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Env:
    roots: Roots
    cgroup_parent: str
    socket: str
    metrics_url: str
    ns: str = "default"
    daemon: subprocess.Popen[bytes] | None = None

    def start_daemon(self) -> None:
        port = self.metrics_url.split(":")[2].split("/")[0]
        with open(self.roots.root.parent / "pyctrd.log", "ab") as log:
            self.daemon = subprocess.Popen(
                [pyctrd_executable(), *self.roots.args(), "--address", self.socket, "--metrics-address",
                 f"127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT, env=child_env(),
                start_new_session=True)
        wait_for_socket(self.socket, self.daemon)
        assert _wait_for(lambda: _reachable(self.metrics_url)), "the metrics endpoint never answered"

    def stop_daemon(self) -> None:
        proc, self.daemon = self.daemon, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def run(self, *args: str, remote: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        addr = ["--address", self.socket] if remote else []
        return subprocess.run([pyctr_executable(), *self.roots.args(), *addr, "-n", self.ns, *args],
                              capture_output=True, text=True, env=child_env(), timeout=timeout)

    def ok(self, *args: str, remote: bool = False) -> str:
        p = self.run(*args, remote=remote)
        assert p.returncode == 0, f"pyctr {' '.join(args)} exited {p.returncode}: {p.stderr}"
        return p.stdout

    def scrape(self) -> tuple[set[str], Samples]:
        code, _, body = _get(self.metrics_url)
        assert code == 200
        return parse(body.decode())

    def shim_pids(self) -> list[int]:
        needles = [str(self.roots.state).encode(), str(self.roots.state).encode().hex().encode()]
        pids = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                cmdline = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if b"pyctrd" not in cmdline and any(n in cmdline for n in needles):
                pids.append(int(d.name))
        return pids


def _wait_for(pred: Any, timeout: float = 10.0, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(every)


@pytest.fixture
def env(tmp_root: Roots) -> Iterator[Env]:
    if os.geteuid() != 0 or shutil.which("runc") is None or not os.path.exists("/bin/busybox"):
        pytest.skip("needs root, runc and busybox-static")
    parent = f"/pyctr-test-{uuid.uuid4().hex[:10]}"
    tmp_root.config.write_text(f'[plugins."pyctr.runtime.runc"]\ncgroup_parent = "{parent}"\n')
    # the daemon listens away from <state>/pyctr.sock: the CLI below runs containers embedded, in the
    # same root and state, and the daemon's metrics see them as they see their own
    sock = str(tmp_root.root.parent / "d.sock")
    port = _free_port()
    subprocess.run([pyctr_executable(), *tmp_root.args(), "images", "build-busybox"], check=True,
                   capture_output=True, env=child_env(), timeout=120)
    e = Env(tmp_root, parent, sock, f"http://127.0.0.1:{port}/v1/metrics")
    try:
        e.start_daemon()
        yield e
    finally:
        _cleanup(e)
        e.stop_daemon()


def _reachable(url: str) -> bool:
    try:
        return _get(url)[0] == 200
    except OSError:
        return False


def _cleanup(e: Env) -> None:
    with contextlib.suppress(Exception):
        for t in json.loads(e.run("tasks", "ls", "-o", "json").stdout or "[]"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(t["pid"]), signal.SIGKILL)
        for cid in e.run("containers", "ls", "-q").stdout.split():
            e.run("containers", "rm", "--force", cid)
    for pid in e.shim_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    here = (str(e.roots.root), str(e.roots.state))
    with open("/proc/self/mounts") as f:
        mounts = [ln.split()[1] for ln in f if ln.split()[1].startswith(here)]
    for m in sorted(mounts, reverse=True):
        subprocess.run(["umount", "-l", m], check=False)
    cgroups.remove(e.cgroup_parent)  # every hierarchy, children first; what still holds a process stays


# ash execs the last command of -c: the trailing echo keeps the shell (and its 20 MB variable) alive
HOLD_20MB = 'x=$(head -c 20000000 /dev/zero | tr "\\0" a); sleep 300; echo ${#x}'
BURN = "while :; do :; done"


@pytest.mark.integration
def test_daemon_serves_container_and_daemon_metrics(env: Env) -> None:
    env.ok("run", "-d", "--name", "mem", "--memory", "64m", IMAGE, "sh", "-c", HOLD_20MB)
    env.ok("run", "-d", "--name", "cpu", "--cpus", "0.5", IMAGE, "sh", "-c", BURN)
    mem = {"container_id": "mem", "namespace": "default"}
    cpu = {"container_id": "cpu", "namespace": "default"}

    def mem_ready() -> Samples | None:
        _, s = env.scrape()
        usage = value(s, "container_memory_usage_bytes", **mem)
        return s if usage is not None and usage >= 20_000_000 else None

    s = _wait_for(mem_ready, 20)
    assert s, "the 20 MB container never showed 20 MB of memory"
    assert value(s, "container_memory_usage_limit_bytes", **mem) == 64 * MiB
    assert (value(s, "container_memory_rss_bytes", **mem) or 0) >= 19_000_000
    assert (value(s, "container_pids_current", **mem) or 0) >= 1
    assert value(s, "container_memory_oom_total", **mem) == 0
    assert value(s, "container_memory_usage_limit_bytes", **cpu) is None  # no limit: no series
    cpu1 = value(s, "container_cpu_total_nanoseconds", **cpu)
    assert cpu1 is not None
    time.sleep(1.0)
    names, s = env.scrape()
    cpu2 = value(s, "container_cpu_total_nanoseconds", **cpu)
    assert cpu2 is not None and cpu2 - cpu1 >= 10_000_000, "the CPU burner's usage did not grow"
    assert (value(s, "container_cpu_throttle_periods_total", **cpu) or 0) > 0  # --cpus 0.5: CFS periods
    per_cpu = [v for lab, v in s["container_per_cpu_nanoseconds"] if lab["container_id"] == "cpu"]
    assert per_cpu and sum(per_cpu) >= 0.9 * cpu2
    # restart-safe: a new daemon reads the same kernel counters (containers outlive the daemon)
    env.stop_daemon()
    env.start_daemon()
    _, s = env.scrape()
    cpu3 = value(s, "container_cpu_total_nanoseconds", **cpu)
    assert cpu3 is not None and cpu3 >= cpu2
    assert value(s, "container_memory_usage_limit_bytes", **mem) == 64 * MiB
    names, s = env.scrape()
    # daemon families
    assert value(s, "pyctr_plugin_status", id="pyctr.runtime.runc", status="ok") == 1
    assert value(s, "pyctr_containers", namespace="default") == 2
    assert value(s, "pyctr_tasks", namespace="default", status="running") == 2
    assert {"pyctr_rpc_requests", "pyctr_rpc_request_duration_seconds", "pyctr_events_published",
            "pyctr_pull_bytes", "pyctr_unpack_duration_seconds"} <= names
    # the same statistics through the daemon: pyctr tasks metrics, pyctr metrics (RPC, counted)
    stats = json.loads(env.ok("tasks", "metrics", "mem", "--format", "json", remote=True))
    assert stats["memory_limit"] == 64 * MiB and stats["memory_usage"] >= 20_000_000 and stats["version"] == 1
    table = env.ok("tasks", "metrics", "cpu", remote=True)
    assert table.splitlines()[0].split() == ["METRIC", "VALUE"] and "cpu_usage_ns" in table
    p = env.run("tasks", "metrics", "nosuch", remote=True)
    assert p.returncode != 0 and "nosuch" in p.stderr and "Traceback" not in p.stderr
    _, text_s = parse(env.ok("metrics", remote=True))
    assert value(text_s, "container_memory_usage_limit_bytes", **mem) == 64 * MiB
    _, s = env.scrape()
    assert (value(s, "pyctr_rpc_requests_total", service="PrometheusMetrics", method="container_stats")
            or 0) >= 3
    assert (value(s, "pyctr_rpc_errors_total", service="PrometheusMetrics", method="container_stats",
                  code="not_found") or 0) >= 1
    # a paused task is counted as paused (its freezer), and keeps its series
    env.ok("tasks", "pause", "mem")
    try:
        _, s = env.scrape()
        assert value(s, "pyctr_tasks", namespace="default", status="paused") == 1
        assert value(s, "pyctr_tasks", namespace="default", status="running") == 1
        assert value(s, "container_memory_usage_limit_bytes", **mem) == 64 * MiB
    finally:
        env.ok("tasks", "resume", "mem")
    # a stopped container's series are gone at the next scrape
    env.ok("tasks", "kill", "-s", "KILL", "cpu")
    assert env.ok("tasks", "wait", "cpu").strip() == "137"
    _, s = env.scrape()
    assert not [n for n, v in s.items() for lab, _ in v if lab.get("container_id") == "cpu"]
    assert value(s, "pyctr_tasks", namespace="default", status="stopped") == 1
    assert value(s, "container_memory_usage_limit_bytes", **mem) == 64 * MiB
    p = env.run("tasks", "metrics", "cpu", remote=True)
    assert p.returncode != 0 and "stopped" in p.stderr


def _swap_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("SwapTotal:"):
                return int(line.split()[1])
    return 0


@pytest.mark.integration
@pytest.mark.skipif(_swap_total() > 0, reason="with swap on, --memory alone lets the container swap, not OOM")
def test_oom_kill_is_counted(env: Env) -> None:
    # a child of the container is OOM-killed; the container lives on and its series show the kill
    child = 'sh -c "x=\\$(head -c 64000000 /dev/zero | tr \\"\\\\0\\" a); echo \\${#x}"; sleep 300; echo done'
    env.ok("run", "-d", "--name", "oomc", "--memory", "16m", IMAGE, "sh", "-c", child)

    def ooms() -> float | None:
        _, s = env.scrape()
        return value(s, "container_memory_oom_total", container_id="oomc")

    got = _wait_for(lambda: (ooms() or 0) >= 1, 20)
    assert got, f"no OOM kill counted (container_memory_oom_total={ooms()})"
    _, s = env.scrape()
    assert (value(s, "container_pids_current", container_id="oomc") or 0) >= 1  # still running
    # the init itself killed: exit 137 and its series removed
    p = env.run("run", "--name", "oomi", "--memory", "16m", IMAGE, "sh", "-c",
                'x=$(head -c 64000000 /dev/zero | tr "\\0" a); echo ${#x}')
    assert p.returncode == 137, (p.returncode, p.stderr)
    _, s = env.scrape()
    assert not [n for n, v in s.items() for lab, _ in v if lab.get("container_id") == "oomi"]


def test_a_stuck_scrape_does_not_block_the_api(tmp_root: Roots) -> None:
    """A collector that hangs holds up its scrape only: the daemon's RPC keeps answering, the metrics
    plugin's own calls included."""
    import threading

    from pyctr import config as _config
    from pyctr.client import Client
    from pyctr.engine import Engine
    from pyctr.errdefs import NotFound
    from pyctr.registry import make_plugin_manager
    from pyctr.rpc.server import RootService, RPCServer

    release = threading.Event()
    entered = threading.Event()

    class Stuck:
        @hookimpl
        def pyctr_metrics_collectors(self, engine: Any) -> list[Any]:
            class C:
                def collect(self) -> Iterator[Any]:
                    entered.set()
                    release.wait(30)
                    yield from ()

            return [C()]

    pm = make_plugin_manager()
    pm.register(Stuck(), name="stuck-metrics")
    cfg = _config.load(str(tmp_root.config), root=str(tmp_root.root), state=str(tmp_root.state))
    engine = Engine(cfg, plugin_manager=pm)
    sock = str(tmp_root.state / "rpc.sock")
    server = RPCServer(RootService(engine, {}), sock, request_hook=metrics_api.rpc_request_hook)
    server.listen()
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    m = engine.plugin("metrics")
    m.attach(engine)
    host, port = m.start_server("127.0.0.1:0")
    scrape = threading.Thread(target=_get, args=(f"http://{host}:{port}/v1/metrics",), daemon=True)
    try:
        scrape.start()
        assert entered.wait(10), "the scrape never reached the collector"
        with Client(address=sock) as c:
            t0 = time.monotonic()
            assert c.version() is not None
            remote = c.plugin("metrics")
            with pytest.raises(NotFound, match="no task"):
                remote.container_stats("default", "nothing")
            assert time.monotonic() - t0 < 2.0
        assert scrape.is_alive()  # still stuck in the collector
    finally:
        release.set()
        scrape.join(10)
        m.stop_server()
        server.shutdown(grace=1.0)
        engine.close()


@pytest.mark.integration
def test_runtime_task_cgroups_follow_the_task_life_cycle(tmp_path: Path) -> None:
    """``RuncRuntime.task_cgroups()`` (what a scrape lists, no shim called): created, running, stopped;
    the container series appear while the task runs and go when it stops."""
    from pyctr.plugins.metrics.prometheus.collector import ContainerCollector, runtime_tasks
    from pyctr.runtime import ProcessIO
    from runtime_helpers import busybox_spec, make_busybox_rootfs, need_runc, runtime

    need_runc()
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    with runtime(tmp_path / "state") as rt:
        cc = ContainerCollector(lambda: runtime_tasks([rt]))

        def status() -> str:
            return {d["id"]: d["status"] for d in rt.task_cgroups()}["t1"]

        def series() -> Samples:
            return parse(cc.exposition())[1]

        t = rt.create("default", "t1", busybox_spec(rootfs, ["sleep", "300"], memory=32 * MiB), [], ProcessIO())
        assert status() == "created"
        assert rt.task_cgroups()[0]["cgroup"] == rt.cgroup_path("default", "t1")
        t.start()
        assert status() == "running"
        s = series()
        assert value(s, "container_memory_usage_limit_bytes", container_id="t1") == 32 * MiB
        assert (value(s, "container_pids_current", container_id="t1") or 0) >= 1  # threads count too
        assert cc.reader.open_files > 0
        t.kill(9)
        t.wait(timeout=20)
        assert status() == "stopped"
        assert series() == {}
        assert cc.reader.open_files == 0  # the stopped task's files were let go
        t.delete()
        assert rt.task_cgroups() == []


class _RecordedRuntime:
    """A third-party runtime plugin whose tasks live in the recorded cgroup v2 tree."""

    @hookimpl
    def pyctr_plugin_registrations(self) -> list[Any]:
        from pyctr.registry import Registration

        class Runtime:
            def task_cgroups(self) -> list[dict[str, str]]:
                return [{"namespace": "prod", "id": "web", "cgroup": "/pyctr/default/web", "status": "running"},
                        {"namespace": "prod", "id": "old", "cgroup": "/pyctr/default/gone", "status": "running"}]

        return [Registration(type="runtime", id="test.runtime.recorded", init=lambda ctx: Runtime())]


def test_service_on_cgroup_v2_with_a_third_party_runtime(tmp_root: Roots) -> None:
    from pyctr import config as _config
    from pyctr.engine import Engine
    from pyctr.registry import make_plugin_manager

    tmp_root.config.write_text(f'[plugins."pyctr.metrics.prometheus"]\ncgroup_root = "{V2_ROOT}"\n')
    pm = make_plugin_manager()
    pm.register(_RecordedRuntime(), name="recorded-runtime")
    cfg = _config.load(str(tmp_root.config), root=str(tmp_root.root), state=str(tmp_root.state))
    engine = Engine(cfg, plugin_manager=pm)
    try:
        m = engine.plugin("metrics")
        _, s = parse(m.render())
        stats = m.container_stats("prod", "web")
    finally:
        engine.close()
    web = {"container_id": "web", "namespace": "prod"}
    assert value(s, "container_memory_usage_limit_bytes", **web) == 64 * MiB
    assert value(s, "container_cpu_total_nanoseconds", **web) == 2_500_000_000
    assert value(s, "container_memory_oom_total", **web) == 2
    assert value(s, "pyctr_tasks", namespace="prod", status="running") == 2
    assert not [lab for v in s.values() for lab, _ in v if lab.get("container_id") == "old"]  # empty cgroup
    assert value(s, "pyctr_metrics_containers_read") == 1
    assert stats["version"] == 2 and stats["memory_usage"] == 26345472
