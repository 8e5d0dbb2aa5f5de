"""``pyctr content``: the real console script in a subprocess, under a private root and state."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from tests.conftest import PyctrCli, Roots, Speedups, child_env, pyctr_executable


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def run_bytes(roots: Roots, *args: str, input: bytes = b"", env: dict[str, str] | None = None,
              ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([pyctr_executable(), *roots.args(), *args], input=input, capture_output=True,
                          env=child_env(env), timeout=120)


def blob_files(roots: Roots) -> list[Path]:
    return sorted(p for p in roots.root.rglob("*") if p.is_file() and "blobs" in p.parts)


def ingest_dirs(roots: Roots) -> list[Path]:
    d = roots.root / "pyctr.content.local" / "ingest"
    return sorted(d.iterdir()) if d.exists() else []


def test_ingest_and_get_with_each_hasher(tmp_root: Roots, speedups: Speedups) -> None:
    data = os.urandom(300_000) + b"\n\0\xff"
    r = run_bytes(tmp_root, "content", "ingest", "--ref", "blob1", "--expected-size", str(len(data)),
                  input=data, env=speedups.env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == sha(data)
    got = run_bytes(tmp_root, "content", "get", sha(data), env=speedups.env)
    assert got.returncode == 0 and got.stdout == data


def test_ls_label_rm(pyctr_cli: PyctrCli, tmp_root: Roots) -> None:
    d = pyctr_cli("content", "ingest", "--ref", "r", input="some bytes", check=True).stdout.strip()
    assert d == sha(b"some bytes")
    ls = pyctr_cli("content", "ls", check=True).stdout.splitlines()
    assert ls[0].split() == ["DIGEST", "SIZE", "AGE", "LABELS"]
    assert ls[1].split()[0] == d and ls[1].split()[-1] == "-"
    assert pyctr_cli("content", "ls", "-q", check=True).stdout.split() == [d]

    labelled = pyctr_cli("content", "label", d, "kind=layer", "x=1", check=True)
    assert labelled.stdout.strip() == "kind=layer,x=1"
    assert pyctr_cli("content", "label", d, "x=", check=True).stdout.strip() == "kind=layer"
    assert pyctr_cli("content", "ls", "-q", "labels.kind==layer", check=True).stdout.split() == [d]
    assert pyctr_cli("content", "ls", "-q", "labels.kind==other", check=True).stdout.split() == []
    assert "kind=layer" in pyctr_cli("content", "ls", check=True).stdout
    bad = pyctr_cli("content", "ls", "labels.kind==")
    assert bad.returncode == 2 and "position" in bad.stderr

    assert pyctr_cli("content", "rm", d, check=True).stdout.strip() == d
    assert pyctr_cli("content", "ls", "-q", check=True).stdout.strip() == ""
    r2 = pyctr_cli("content", "get", d)
    assert r2.returncode == 3 and "not found" in r2.stderr and "Traceback" not in r2.stderr


def test_digest_mismatch_is_a_clean_error(pyctr_cli: PyctrCli, tmp_root: Roots) -> None:
    good = pyctr_cli("content", "ingest", "--ref", "good", input="hello pyctr\n", check=True).stdout.strip()
    assert good == sha(b"hello pyctr\n")
    bad = pyctr_cli("content", "ingest", "--ref", "bad", "--expected-digest", sha(b"x"),
                    input="hello pyctr\n")
    assert bad.returncode == 10, bad.stderr
    assert "digest mismatch" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    size = pyctr_cli("content", "ingest", "--ref", "size", "--expected-size", "3", input="four")
    assert size.returncode == 10 and "size mismatch" in size.stderr
    assert len(blob_files(tmp_root)) == 1
    assert ingest_dirs(tmp_root) == []
    assert pyctr_cli("content", "active", "-q", check=True).stdout.strip() == ""


def test_bad_digests_are_invalid_arguments(pyctr_cli: PyctrCli, tmp_root: Roots) -> None:
    for args in (["ingest", "--ref", "r", "--expected-digest", "sha512:" + "0" * 128],
                 ["ingest", "--ref", "r", "--expected-digest", "sha256:zz"],
                 ["get", "nonsense"], ["rm", "md5:00"], ["label", "sha256:1", "a=b"]):
        r = pyctr_cli("content", *args, input="data")
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert "unsupported digest algorithm" in pyctr_cli(
        "content", "ingest", "--ref", "r", "--expected-digest", "sha512:" + "0" * 128, input="x").stderr
    assert blob_files(tmp_root) == [] and ingest_dirs(tmp_root) == []


def test_namespaces_isolate(pyctr_cli: PyctrCli) -> None:
    d = pyctr_cli("content", "ingest", "--ref", "r", input="mine", check=True).stdout.strip()
    assert pyctr_cli("-n", "other", "content", "ls", "-q", check=True).stdout.strip() == ""
    r = pyctr_cli("-n", "other", "content", "get", d)
    assert r.returncode == 3
    assert pyctr_cli("-n", "other", "content", "rm", d).returncode == 3
    # the same bytes ingested in `other` become visible there; removing them there leaves default's
    # (default's is labelled a GC root: an rm triggers a collection, which frees unreferenced content)
    pyctr_cli("content", "label", d, "containerd.io/gc.root=1", check=True)
    again = pyctr_cli("-n", "other", "content", "ingest", "--ref", "r", input="mine", check=True)
    assert again.stdout.strip() == d
    pyctr_cli("-n", "other", "content", "rm", d, check=True)
    assert pyctr_cli("content", "ls", "-q", check=True).stdout.strip() == d


def test_expected_digest_already_present_is_success(pyctr_cli: PyctrCli) -> None:
    d = pyctr_cli("content", "ingest", "--ref", "r", input="abc", check=True).stdout.strip()
    again = pyctr_cli("content", "ingest", "--ref", "r2", "--expected-digest", d, input="abc", check=True)
    assert again.stdout.strip() == d
    # linked into another namespace without sending bytes (containerd's shared policy)
    other = pyctr_cli("-n", "other", "content", "ingest", "--ref", "r", "--expected-digest", d, input="",
                      check=True)
    assert other.stdout.strip() == d
    assert pyctr_cli("-n", "other", "content", "ls", "-q", check=True).stdout.strip() == d


def test_active_and_abort(pyctr_cli: PyctrCli, tmp_root: Roots) -> None:
    from pyctr.plugins.content.local.store import LocalStore

    store = LocalStore(tmp_root.root / "pyctr.content.local")
    w = store.writer("default/partial", total=10)
    w.write(b"12345")
    w.close()
    out = pyctr_cli("content", "active", check=True).stdout.splitlines()
    assert out[0].split() == ["REF", "SIZE", "TOTAL", "EXPECTED", "UPDATED"]
    assert out[1].split()[:3] == ["partial", "5", "10"]
    assert pyctr_cli("-n", "other", "content", "active", "-q", check=True).stdout.strip() == ""
    # resuming the ingest from the CLI sends only the rest
    d = pyctr_cli("content", "ingest", "--ref", "partial", input="67890", check=True).stdout.strip()
    assert d == sha(b"1234567890")
    w = store.writer("default/gone")
    w.close()
    assert pyctr_cli("content", "abort", "gone", check=True).stdout.strip() == "gone"
    assert pyctr_cli("content", "abort", "gone").returncode == 3
    assert ingest_dirs(tmp_root) == []


def test_busy_ref_is_refused(pyctr_cli: PyctrCli, tmp_root: Roots) -> None:
    from pyctr.plugins.content.local.store import LocalStore

    store = LocalStore(tmp_root.root / "pyctr.content.local")
    w = store.writer("default/busy")
    try:
        r = pyctr_cli("content", "ingest", "--ref", "busy", input="x")
        assert r.returncode == 5 and "locked" in r.stderr and "default/busy" not in r.stderr
    finally:
        w.abort()
    assert ingest_dirs(tmp_root) == [] and blob_files(tmp_root) == []


def test_interrupted_ingest_resumes(tmp_root: Roots, speedups: Speedups) -> None:
    """Ctrl-C during a blocked read stops the copy loop (the compiled one runs without the GIL) and keeps
    what arrived; a second ingest with the same ref sends only the rest."""
    import signal
    import time

    part1, part2 = os.urandom(200_000), os.urandom(100_000)
    with subprocess.Popen([pyctr_executable(), *tmp_root.args(), "content", "ingest", "--ref", "slow"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=child_env(speedups.env)) as proc:
        try:
            assert proc.stdin is not None
            proc.stdin.write(part1)
            proc.stdin.flush()
            data = tmp_root.root / "pyctr.content.local" / "ingest"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # wait until every byte sent has reached the ingest
                sizes = [f.stat().st_size for f in data.glob("*/data")] if data.exists() else []
                if sizes == [len(part1)]:
                    break
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=20)  # stdin stays open: only the signal can end the copy
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, err
    assert b"Traceback" not in err
    r = run_bytes(tmp_root, "content", "active", "-q")
    assert r.stdout.split() == [b"slow"]
    r = run_bytes(tmp_root, "content", "ingest", "--ref", "slow", "--expected-digest", sha(part1 + part2),
                  input=part2, env=speedups.env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == sha(part1 + part2)
    assert ingest_dirs(tmp_root) == []
