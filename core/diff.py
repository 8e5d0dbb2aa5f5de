"""The diff service: apply a layer onto mounts, and compute a layer from two mounts.

A ``diff`` plugin (``pyctr.diff.walking`` by default) satisfies :class:`Differ`:

* :meth:`Differ.apply` extracts a layer blob (tar, tar+gzip, tar+zstd; detected by magic bytes) onto
  the mounts a snapshotter returned for an active snapshot, and returns :class:`Applied`, whose
  ``diff_id`` (sha256 of the uncompressed stream) the caller checks against the image config's
  ``rootfs.diff_ids``.  A single overlay mount is written straight into its ``upperdir`` (overlay
  whiteouts, the lowerdirs as parents), a single bind mount into its source (whiteouts delete); other
  mounts are mounted on a temporary directory first.  On error the snapshot holds a partial layer:
  the caller removes it.
* :meth:`Differ.compare` writes the changes of ``upper`` over ``lower`` as a layer (deletions as
  ``.wh.`` whiteouts) to a temporary file and returns :class:`Compared`; the caller moves the file
  into the content store (labelled ``containerd.io/uncompressed=<diff_id>``) and removes it.

Mounts are :class:`~pyctr.snapshots.Mount` objects or their plain-dict form.  Errors come from
:mod:`pyctr.errdefs`: DataLoss for a corrupt or truncated blob, InvalidArgument for a layer the
rules refuse or unsupported media type, NotImplementedErr for mounts the plugin cannot handle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from .content import Descriptor

MEDIA_TYPE_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
LABEL_UNCOMPRESSED = "containerd.io/uncompressed"

MountLike = Any  # a pyctr.snapshots.Mount or its dict form ({type, source, options, target?})


@dataclass(frozen=True)
class Applied:
    """What applying a layer produced.

    :ivar diff_id: ``sha256:<hex>`` of the uncompressed tar stream.
    :ivar size: bytes of the uncompressed stream.
    :ivar entries: tar entries applied.
    :ivar media_type: always the uncompressed layer type (as containerd's Apply result).
    """

    diff_id: str
    size: int
    entries: int = 0
    media_type: str = MEDIA_TYPE_LAYER_TAR

    @property
    def digest(self) -> str:
        """Alias of :attr:`diff_id` (containerd returns the applied layer as a descriptor)."""
        return self.diff_id

    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.diff_id, self.size)

    def to_dict(self) -> dict[str, Any]:
        return {"diff_id": self.diff_id, "size": self.size, "entries": self.entries,
                "media_type": self.media_type}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Applied:
        return cls(str(d["diff_id"]), int(d["size"]), int(d.get("entries", 0)),
                   str(d.get("media_type", MEDIA_TYPE_LAYER_TAR)))


@dataclass(frozen=True)
class Compared:
    """A layer computed by :meth:`Differ.compare`.

    :ivar path: a temporary file holding the (compressed) layer; the caller owns it and removes it.
    :ivar descriptor: media type, digest and size of that file.
    :ivar diff_id: digest of the uncompressed tar stream.
    :ivar entries: tar entries written.
    """

    path: str
    descriptor: Descriptor
    diff_id: str
    entries: int = 0

    @property
    def labels(self) -> dict[str, str]:
        """The content labels containerd puts on the blob."""
        return {LABEL_UNCOMPRESSED: self.diff_id}

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "descriptor": self.descriptor.to_dict(), "diff_id": self.diff_id,
                "entries": self.entries}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Compared:
        return cls(str(d["path"]), Descriptor.from_dict(d["descriptor"]), str(d["diff_id"]),
                   int(d.get("entries", 0)))


class Differ(Protocol):
    """What a ``diff`` plugin provides."""

    def apply(self, media_type: str, blob: BinaryIO, mounts: Sequence[MountLike], *,
              max_uncompressed: int | None = None) -> Applied:
        """Extract ``blob`` (a layer of ``media_type``) onto ``mounts``."""
        ...

    def compare(self, lower: Sequence[MountLike], upper: Sequence[MountLike], *,
                media_type: str = MEDIA_TYPE_LAYER_GZIP) -> Compared:
        """The changes of ``upper`` over ``lower`` (empty ``lower``: everything) as a layer file."""
        ...


__all__ = [
    "LABEL_UNCOMPRESSED",
    "MEDIA_TYPE_LAYER_GZIP",
    "MEDIA_TYPE_LAYER_TAR",
    "MEDIA_TYPE_LAYER_ZSTD",
    "Applied",
    "Compared",
    "Differ",
    "MountLike",
]
