"""The content store conformance suite (containerd's ``core/content/testsuite``), for pytest.

Every check is a plain function ``check_<name>(store, work)`` taking a fresh backend
:class:`~pyctr.content.ContentStore` and a scratch directory; :data:`CHECKS` lists them.
:func:`content_store_suite` turns a *factory* (a function from an empty root directory to a store) into
a pytest test class running them all, one test each::

    # tests/test_my_content_store.py in a plugin's repository
    from pyctr.testsuite.content import content_store_suite
    from acme_content import S3Store

    TestS3 = content_store_suite(lambda root: S3Store(root), name="s3")

The checks use only the :class:`~pyctr.content.ContentStore` and :class:`~pyctr.content.Writer`
protocols; nothing here looks at the store's files.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..content import ContentStore
from ..errdefs import AlreadyExists, Conflict, DataLoss, FailedPrecondition, InvalidArgument, NotFound

Factory = Callable[[Path], ContentStore]
Check = Callable[[ContentStore, Path], None]


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _raises(exc: type[BaseException], fn: Callable[[], Any], what: str) -> BaseException:
    try:
        fn()
    except exc as e:
        return e
    except BaseException as e:
        raise AssertionError(f"{what}: expected {exc.__name__}, got {type(e).__name__}: {e}") from e
    raise AssertionError(f"{what}: expected {exc.__name__}, nothing was raised")


def _clean(store: ContentStore, what: str) -> None:
    assert list(store.walk()) == [], f"{what}: blobs left behind"
    assert store.list_statuses() == [], f"{what}: ingests left behind"


# -- checks ----------------------------------------------------------------------------------------


def check_write_commit_read(store: ContentStore, work: Path) -> None:
    """A written blob commits to its digest and reads back whole, at offsets and through open()."""
    data = os.urandom(70_000)
    w = store.writer("r", len(data), _sha(data))
    w.write(data[:5])
    w.write(memoryview(data)[5:])
    assert w.offset == len(data) and w.digest() == _sha(data)
    info = w.commit()
    assert (info.digest, info.size) == (_sha(data), len(data))
    assert store.exists(_sha(data))
    assert store.info(_sha(data)).size == len(data)
    assert store.read(_sha(data)) == data
    assert store.read(_sha(data), 100, 50) == data[100:150]
    assert store.read(_sha(data), len(data) - 3) == data[-3:]
    with store.open(_sha(data)) as f:
        assert f.read() == data
    assert [i.digest for i in store.walk()] == [_sha(data)]
    assert store.list_statuses() == []


def check_empty_blob(store: ContentStore, work: Path) -> None:
    """The empty blob is a blob like any other."""
    w = store.writer("empty", 0, _sha(b""))
    assert w.commit().digest == _sha(b"")
    assert store.read(_sha(b"")) == b""


def check_copy_from(store: ContentStore, work: Path) -> None:
    """copy_from appends what a file descriptor yields, honouring the limit."""
    data = os.urandom(300_000)
    src = work / "src"
    src.write_bytes(data)
    with open(src, "rb") as f:
        w = store.writer("copy")
        assert w.copy_from(f, 1000) == 1000
        assert w.copy_from(f.fileno()) == len(data) - 1000
    assert w.commit(len(data), _sha(data)).digest == _sha(data)


def check_resume(store: ContentStore, work: Path) -> None:
    """Close keeps the ingest; reopening the ref resumes at its offset and commits the whole."""
    data = os.urandom(200_000)
    w = store.writer("resume", len(data))
    w.write(data[:123_456])
    w.close()
    st = store.status("resume")
    assert (st.ref, st.offset, st.total) == ("resume", 123_456, len(data))
    assert [s.ref for s in store.list_statuses()] == ["resume"]
    w = store.writer("resume", len(data))
    assert w.offset == 123_456
    w.write(data[123_456:])
    assert w.commit().digest == _sha(data)
    assert store.list_statuses() == []


def check_one_writer_per_ref(store: ContentStore, work: Path) -> None:
    """A second writer on an active ref is refused (Conflict) until the first closes."""
    w = store.writer("busy")
    w.write(b"abc")
    _raises(Conflict, lambda: store.writer("busy"), "second writer")
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            store.writer("busy")
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], Conflict), errors
    w.close()
    w = store.writer("busy")
    assert w.offset == 3
    w.abort()
    _clean(store, "after abort")


def check_digest_mismatch(store: ContentStore, work: Path) -> None:
    """A digest mismatch is DataLoss and leaves neither blob nor ingest."""
    w = store.writer("bad", -1, _sha(b"other"))
    w.write(b"payload")
    _raises(DataLoss, w.commit, "digest mismatch")
    _clean(store, "digest mismatch")


def check_size_mismatch(store: ContentStore, work: Path) -> None:
    """A size mismatch is DataLoss and leaves neither blob nor ingest."""
    w = store.writer("bad")
    w.write(b"payload")
    _raises(DataLoss, lambda: w.commit(3), "size mismatch")
    _clean(store, "size mismatch")


def check_bad_digests(store: ContentStore, work: Path) -> None:
    """Unsupported algorithms and malformed digests are InvalidArgument and leave nothing."""
    import functools

    for bad in ("sha512:" + "0" * 128, "sha256:abc", "nonsense"):
        e = _raises(InvalidArgument, functools.partial(store.writer, "r", -1, bad), f"writer({bad!r})")
        if bad.startswith("sha512"):
            assert "unsupported" in str(e), e
        _raises(InvalidArgument, functools.partial(store.info, bad), f"info({bad!r})")
        w = store.writer("r")
        w.write(b"x")
        _raises(InvalidArgument, functools.partial(w.commit, -1, bad), f"commit(expected={bad!r})")
        _clean(store, f"commit(expected={bad!r})")


def check_empty_ref(store: ContentStore, work: Path) -> None:
    """An empty ref is InvalidArgument."""
    _raises(InvalidArgument, lambda: store.writer(""), "empty ref")


def check_already_exists(store: ContentStore, work: Path) -> None:
    """Opening with an expected digest already stored, or committing existing bytes, is AlreadyExists."""
    w = store.writer("a")
    w.write(b"same")
    w.commit()
    _raises(AlreadyExists, lambda: store.writer("b", -1, _sha(b"same")), "writer for an existing blob")
    w = store.writer("c")
    w.write(b"same")
    _raises(AlreadyExists, w.commit, "commit of an existing blob")
    assert store.list_statuses() == []


def check_truncate(store: ContentStore, work: Path) -> None:
    """Truncate(0) resets the ingest and its digest."""
    w = store.writer("t")
    w.write(b"discard me")
    w.truncate(0)
    assert w.offset == 0 and w.digest() == _sha(b"")
    w.write(b"keep")
    assert w.commit().digest == _sha(b"keep")


def check_abort(store: ContentStore, work: Path) -> None:
    """Abort removes an ingest; aborting an unknown ref is NotFound."""
    w = store.writer("gone")
    w.write(b"x")
    w.close()
    store.abort("gone")
    _raises(NotFound, lambda: store.status("gone"), "status after abort")
    _raises(NotFound, lambda: store.abort("gone"), "second abort")
    _clean(store, "abort")


def check_resume_with_other_total(store: ContentStore, work: Path) -> None:
    """Resuming with a different total is refused (FailedPrecondition)."""
    w = store.writer("t", 10)
    w.write(b"12345")
    w.close()
    _raises(FailedPrecondition, lambda: store.writer("t", 11), "resume with another total")
    store.abort("t")


def check_delete(store: ContentStore, work: Path) -> None:
    """Delete removes a blob; deleting or reading it again is NotFound."""
    w = store.writer("d")
    w.write(b"bye")
    d = w.commit().digest
    store.delete(d)
    assert not store.exists(d)
    _raises(NotFound, lambda: store.delete(d), "second delete")
    _raises(NotFound, lambda: store.info(d), "info after delete")
    _raises(NotFound, lambda: store.read(d), "read after delete")


def check_closed_writer(store: ContentStore, work: Path) -> None:
    """A committed or closed writer refuses further writes."""
    w = store.writer("c")
    w.write(b"x")
    w.commit()
    _raises(FailedPrecondition, lambda: w.write(b"y"), "write after commit")


CHECKS: dict[str, Check] = {
    name[len("check_"):]: fn for name, fn in sorted(globals().items())
    if name.startswith("check_") and callable(fn)
}


def run_check(factory: Factory, check: str, work: Path) -> None:
    """Run one check against a store made by ``factory`` in ``work/root``."""
    root = work / "root"
    root.mkdir(parents=True, exist_ok=True)
    scratch = work / "scratch"
    scratch.mkdir(exist_ok=True)
    store = factory(root)
    try:
        CHECKS[check](store, scratch)
    finally:
        close = getattr(store, "close", None)
        if callable(close):
            close()


def content_store_suite(factory: Factory, *, name: str = "", marks: Sequence[Any] = (),
                        skip: Sequence[str] = ()) -> type:
    """A pytest test class with one ``test_<check>`` per check in :data:`CHECKS`.

    :param factory: makes a store in the empty directory it is given.
    :param marks: pytest marks for every test.
    :param skip: names of checks this store cannot pass (reported as skipped, with the name).
    """
    import pytest

    def make(check: str) -> Callable[..., None]:
        def test(self: Any, tmp_path: Path) -> None:
            if check in skip:
                pytest.skip(f"{check} is not supported by this content store")
            run_check(factory, check, tmp_path)

        test.__name__ = f"test_{check}"
        test.__doc__ = CHECKS[check].__doc__
        for m in marks:
            test = m(test)
        return test

    attrs: dict[str, Any] = {f"test_{c}": make(c) for c in CHECKS}
    attrs["__doc__"] = f"The content store conformance suite{' for ' + name if name else ''}."
    return type(f"ContentStoreSuite{name.title().replace('-', '')}", (), attrs)


__all__ = ["CHECKS", "Factory", "content_store_suite", "run_check"]
