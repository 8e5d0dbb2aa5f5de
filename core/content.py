"""Content: descriptors, blob info, ingest status, and the store interfaces.

Two layers, as in containerd:

* the *backend* store (a ``content`` plugin, e.g. ``pyctr.content.local``) keeps blobs once per root,
  with no notion of namespaces;
* the *namespaced* store (:mod:`pyctr.metadata.content`) wraps it: a blob is visible in a namespace
  only once written or committed there; labels are per namespace; deleting removes the namespace's
  record and lets the garbage collector remove the bytes when nothing references them.

Both satisfy :class:`ContentStore` (the namespaced one takes ``ns`` as first argument of every call,
see :class:`NamespacedContentStore`).  Every object here converts to and from plain dicts, so it can go
over the wire unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO, Protocol

from .errdefs import InvalidArgument

DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
SUPPORTED_ALGORITHMS = ("sha256",)


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is ``sha256:<64 lowercase hex>``; otherwise InvalidArgument."""
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        algo = digest.split(":", 1)[0] if isinstance(digest, str) and ":" in digest else ""
        if algo and algo not in SUPPORTED_ALGORITHMS:
            raise InvalidArgument(f"unsupported digest algorithm {algo!r} in {digest!r} (supported: sha256)")
        raise InvalidArgument(f"invalid digest {digest!r}: want sha256:<64 hex characters>")
    return digest


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Mapping[str, Any] | None = None
    urls: tuple[str, ...] = ()

    def to_oci(self) -> dict[str, Any]:
        """The descriptor as it appears in OCI JSON (camelCase keys)."""
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        if self.platform:
            d["platform"] = dict(self.platform)
        if self.urls:
            d["urls"] = list(self.urls)
        return d

    @classmethod
    def from_oci(cls, d: Mapping[str, Any]) -> Descriptor:
        try:
            size = d["size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidArgument(f"descriptor size {size!r} is not a non-negative integer")
            return cls(
                media_type=str(d.get("mediaType", "")),
                digest=validate_digest(d["digest"]),
                size=size,
                annotations=dict(d.get("annotations") or {}),
                platform=dict(d["platform"]) if d.get("platform") else None,
                urls=tuple(d.get("urls") or ()),
            )
        except KeyError as e:
            raise InvalidArgument(f"descriptor without {e.args[0]!r}: {dict(d)!r}") from None

    def to_dict(self) -> dict[str, Any]:
        return self.to_oci()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Descriptor:
        return cls.from_oci(d)


@dataclass
class Info:
    """What the store knows of one committed blob."""

    digest: str
    size: int
    created_at: int  # ns since the epoch
    updated_at: int
    labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Info:
        return cls(**dict(d))


@dataclass
class Status:
    """An ingest in progress: its ref, bytes written so far, and what is expected."""

    ref: str
    offset: int
    total: int  # expected size, or -1 when unknown
    expected: str  # expected digest, or ""
    started_at: int
    updated_at: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Status:
        return cls(**dict(d))


class Writer(Protocol):
    """An open ingest.  Write at the current offset; commit verifies size and digest, fsyncs and renames
    into place atomically; close keeps the partial ingest for a later resume; abort removes it."""

    ref: str

    @property
    def offset(self) -> int: ...

    def write(self, data: bytes | memoryview) -> int: ...

    def copy_from(self, src: int | BinaryIO, limit: int = -1) -> int:
        """Append what ``src`` (a file descriptor or binary file) yields until EOF, or ``limit`` bytes;
        returns the bytes copied.  The local store hashes while it copies, without the GIL."""
        ...

    def digest(self) -> str: ...

    def truncate(self, size: int) -> None: ...

    def status(self) -> Status: ...

    def commit(self, size: int = -1, expected: str = "", labels: Mapping[str, str] | None = None) -> Info: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class ContentStore(Protocol):
    """The backend blob store (one per root, no namespaces)."""

    def info(self, digest: str) -> Info: ...

    def exists(self, digest: str) -> bool: ...

    def read(self, digest: str, offset: int = 0, size: int = -1) -> bytes: ...

    def open(self, digest: str) -> BinaryIO: ...

    def path(self, digest: str) -> str: ...

    def walk(self) -> Iterator[Info]: ...

    def delete(self, digest: str) -> None: ...

    def writer(self, ref: str, total: int = -1, expected: str = "") -> Writer: ...

    def status(self, ref: str) -> Status: ...

    def list_statuses(self, prefix: str = "") -> list[Status]:
        """Ingests in progress whose ref starts with ``prefix`` (all when empty), by ref."""
        ...

    def abort(self, ref: str) -> None: ...
