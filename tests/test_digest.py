"""The SHA-256 speedup: both implementations (ids c and py) against hashlib, checkpoints, copy loop."""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import Speedups

SIZES = [0, 1, 55, 56, 63, 64, 65, 127, 128, 1000, 65536, 65537, (1 << 20) + 3]


@pytest.fixture
def impl(speedups: Speedups) -> ModuleType:
    return speedups.load("digest")


def test_compiled_extension_loaded() -> None:
    """Fails when the Cython module did not build or load, unless the twin is forced on purpose."""
    if os.environ.get("PYCTR_NO_EXTENSIONS"):
        pytest.skip("PYCTR_NO_EXTENSIONS is set")
    from pyctr._speedups import digest

    assert digest.IMPLEMENTATION == "c"
    assert digest.Sha256.__module__ == "pyctr._speedups._digest_c"


@pytest.mark.parametrize("size", SIZES)
def test_matches_hashlib(impl: ModuleType, size: int) -> None:
    data = os.urandom(size)
    h = impl.Sha256()
    # uneven pieces, through every buffer type
    for piece in (data[: size // 3], bytearray(data[size // 3: size // 2]), memoryview(data)[size // 2:]):
        h.update(piece)
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    assert h.digest() == hashlib.sha256(data).digest()
    assert h.count == size
    assert impl.Sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()


def test_copy_is_independent(impl: ModuleType) -> None:
    h = impl.Sha256(b"abc")
    c = h.copy()
    c.update(b"def")
    assert h.hexdigest() == hashlib.sha256(b"abc").hexdigest()
    assert c.hexdigest() == hashlib.sha256(b"abcdef").hexdigest()
    assert (h.count, c.count) == (3, 6)


def test_digest_does_not_finalise(impl: ModuleType) -> None:
    h = impl.Sha256(b"abc")
    h.hexdigest()
    h.update(b"def")
    assert h.hexdigest() == hashlib.sha256(b"abcdef").hexdigest()


@pytest.mark.parametrize("split", [0, 1, 63, 64, 65, 1000, 100_001])
def test_state_roundtrip(impl: ModuleType, speedups: Speedups, split: int) -> None:
    data = os.urandom(200_000)
    h = impl.Sha256(data[:split])
    blob = h.state()
    if speedups.name == "py" and split:
        with pytest.raises(ValueError, match="re-hash"):
            impl.Sha256.from_state(blob)
        return
    r = impl.Sha256.from_state(blob)
    assert r.count == split
    r.update(data[split:])
    assert r.hexdigest() == hashlib.sha256(data).hexdigest()


def test_states_are_portable_between_implementations(speedups: Speedups) -> None:
    c = speedups.load("digest") if speedups.name == "c" else pytest.skip("runs once, under the c parameter")
    from pyctr._speedups import _digest_py as py

    # an empty state from either side restores anywhere; a count-only state never restores non-empty
    assert c.Sha256.from_state(py.Sha256().state()).count == 0
    assert py.Sha256.from_state(c.Sha256().state()).count == 0
    with pytest.raises(ValueError):
        c.Sha256.from_state(py.Sha256(b"x").state())
    with pytest.raises(ValueError):
        py.Sha256.from_state(c.Sha256(b"x").state())


def test_corrupt_states_are_refused(impl: ModuleType) -> None:
    from pyctr._speedups import _digest_py as py

    blob = impl.Sha256(b"x" * 1000).state()
    bad = [b"", blob[:10], blob[:-1], b"X" + blob[1:], blob + b"\0"]
    for i in range(len(blob)):
        flipped = bytearray(blob)
        flipped[i] ^= 0x40
        bad.append(bytes(flipped))
    # a well-formed checksum over a payload of the wrong length
    bad.append(py.pack_state(py.KIND_MIDSTATE, 1000, b"\0" * 33))
    bad.append(py.pack_state(ord("Z"), 0))
    for b in bad:
        with pytest.raises(ValueError):
            impl.Sha256.from_state(b)


def test_copy_and_hash(impl: ModuleType, tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(data)
    sfd = os.open(src, os.O_RDONLY)
    dfd = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        h = impl.Sha256()
        assert impl.copy_and_hash(sfd, dfd, h, 1000) == 1000
        assert impl.copy_and_hash(sfd, dfd, h) == len(data) - 1000
        assert impl.copy_and_hash(sfd, dfd, h) == 0
        assert h.count == len(data)
        assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    finally:
        os.close(sfd)
        os.close(dfd)
    assert dst.read_bytes() == data
    # hash only (dst -1), small buffer
    sfd = os.open(src, os.O_RDONLY)
    try:
        h = impl.Sha256()
        assert impl.copy_and_hash(sfd, -1, h, -1, 4096) == len(data)
        assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    finally:
        os.close(sfd)


def test_copy_and_hash_from_a_pipe(impl: ModuleType, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    r, w = os.pipe()
    t = threading.Thread(target=lambda: (os.write(w, data), os.close(w)))
    t.start()
    dst = tmp_path / "dst"
    dfd = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        h = impl.Sha256()
        assert impl.copy_and_hash(r, dfd, h) == len(data)
    finally:
        t.join()
        os.close(r)
        os.close(dfd)
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    assert dst.read_bytes() == data


def test_copy_and_hash_write_error_keeps_count_honest(impl: ModuleType, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"abc" * 1000)
    sfd = os.open(src, os.O_RDONLY)
    dfd = os.open(src, os.O_RDONLY)  # writing to a read-only fd fails
    try:
        h = impl.Sha256()
        with pytest.raises(OSError):
            impl.copy_and_hash(sfd, dfd, h)
        assert h.count == 0
    finally:
        os.close(sfd)
        os.close(dfd)


def test_threads_hash_in_parallel(impl: ModuleType) -> None:
    blobs = [os.urandom(2 << 20) for _ in range(4)]
    results: dict[int, str] = {}

    def run(i: int) -> None:
        h = impl.Sha256()
        for _ in range(3):
            h.update(blobs[i])
        results[i] = h.hexdigest()

    ts = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for i, b in enumerate(blobs):
        assert results[i] == hashlib.sha256(b * 3).hexdigest()


def test_resume_uses_a_valid_checkpoint(impl: ModuleType, speedups: Speedups, tmp_path: Path) -> None:
    from pyctr._speedups.digest import resume

    data = os.urandom(500_000)
    f = tmp_path / "data"
    f.write_bytes(data)
    fd = os.open(f, os.O_RDONLY)
    try:
        want = hashlib.sha256(data).hexdigest()
        full = impl.Sha256(data).state()
        part = impl.Sha256(data[:123_456]).state()
        h, reread = resume(fd, len(data), full, impl.Sha256)
        assert h.hexdigest() == want
        assert reread == (0 if speedups.name == "c" else len(data))
        h, reread = resume(fd, len(data), part, impl.Sha256)  # stale: only the tail is read
        assert h.hexdigest() == want
        assert reread == (len(data) - 123_456 if speedups.name == "c" else len(data))
        for bad in (None, b"garbage", full[:-2] + b"zz", impl.Sha256(data + b"more").state()):
            h, reread = resume(fd, len(data), bad, impl.Sha256)
            assert h.hexdigest() == want
            assert reread == len(data)
        with pytest.raises(OSError):
            resume(fd, len(data) + 10, None, impl.Sha256)
    finally:
        os.close(fd)


def _progress_during(fn: Callable[[], object]) -> int:
    """How far another thread gets while ``fn`` runs.  With a huge switch interval the other thread can
    only run where ``fn`` releases the GIL, so 0 means ``fn`` held the GIL throughout."""
    counter = [0]
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            counter[0] += 1
            time.sleep(0)  # releases the GIL, so the main thread gets it back when it needs it

    old = sys.getswitchinterval()
    sys.setswitchinterval(30)
    t = threading.Thread(target=spin)
    t.start()
    try:
        while counter[0] == 0:
            time.sleep(0.001)
        before = counter[0]
        fn()
        return counter[0] - before
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(old)


def test_large_updates_release_the_gil(impl: ModuleType) -> None:
    data = os.urandom(64 << 20)
    h = impl.Sha256()
    assert _progress_during(lambda: h.update(data)) > 0
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()


def test_copy_and_hash_releases_the_gil(impl: ModuleType, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(32 << 20))
    sfd = os.open(src, os.O_RDONLY)
    try:
        assert _progress_during(lambda: impl.copy_and_hash(sfd, -1, impl.Sha256())) > 0
    finally:
        os.close(sfd)
