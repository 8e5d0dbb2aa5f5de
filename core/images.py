"""Images: the image record, walking an image's graph, platform selection, GC labels, configs, chain ids.

Everything here is pure (no store, no network): functions take blob bytes, or a ``read(desc) -> bytes``
callable, so the images store, the registry client, import/export and unpack share them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import mediatypes as mt
from . import platforms as plat
from .content import Descriptor, validate_digest
from .errdefs import DataLoss, InvalidArgument, NotFound

#: label prefixes the garbage collector follows (containerd's names)
GC_REF_CONTENT = "containerd.io/gc.ref.content"
GC_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot"
LABEL_DISTRIBUTION_SOURCE = "containerd.io/distribution.source"
LABEL_UNCOMPRESSED = "containerd.io/uncompressed"

#: containerd's MaxManifestSize
MAX_MANIFEST_SIZE = 4 * 1048 * 1048

ReadFn = Callable[[Descriptor], bytes]


def _now_ns() -> int:
    return time.time_ns()


@dataclass
class Image:
    """An image record: a name (a full reference) pointing at a root descriptor."""

    name: str
    target: Descriptor
    labels: dict[str, str] = field(default_factory=dict)
    created_at: int = field(default_factory=_now_ns)  # ns since the epoch
    updated_at: int = field(default_factory=_now_ns)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target.to_dict(),
            "labels": dict(self.labels),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Image:
        return cls(
            name=str(d["name"]),
            target=Descriptor.from_dict(d["target"]),
            labels=dict(d.get("labels") or {}),
            created_at=int(d.get("created_at", 0)),
            updated_at=int(d.get("updated_at", 0)),
        )


# -- parsing manifests and indexes ------------------------------------------------------------------


def _load_json(blob: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(blob)
    except (ValueError, UnicodeDecodeError) as e:
        raise DataLoss(f"{what} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise DataLoss(f"{what} is not a JSON object")
    return doc


def check_media_type(desc: Descriptor, doc: Mapping[str, Any]) -> None:
    """The document's own ``mediaType`` (when present) must agree with the descriptor's kind."""
    own = doc.get("mediaType")
    if not isinstance(own, str) or not own:
        return
    mt.check_supported(own, desc.digest)
    dmt = desc.media_type
    if mt.is_index(dmt) != mt.is_index(own) or mt.is_manifest(dmt) != mt.is_manifest(own):
        raise DataLoss(f"{desc.digest}: descriptor says {desc.media_type} but the document says {own}")


def parse_index(desc: Descriptor, blob: bytes) -> list[Descriptor]:
    doc = _load_json(blob, f"index {desc.digest}")
    check_media_type(desc, doc)
    try:
        return [Descriptor.from_oci(m) for m in doc.get("manifests") or []]
    except (InvalidArgument, TypeError) as e:
        raise DataLoss(f"index {desc.digest} has a bad entry: {e}") from None


def parse_manifest(desc: Descriptor, blob: bytes) -> tuple[Descriptor, list[Descriptor]]:
    """``(config, layers)`` of an image manifest."""
    doc = _load_json(blob, f"manifest {desc.digest}")
    check_media_type(desc, doc)
    try:
        config = Descriptor.from_oci(doc["config"])
        layers = [Descriptor.from_oci(x) for x in doc.get("layers") or []]
    except (KeyError, InvalidArgument, TypeError) as e:
        raise DataLoss(f"manifest {desc.digest} is malformed: {e}") from None
    return config, layers


def children(desc: Descriptor, blob: bytes) -> list[Descriptor]:
    """The descriptors ``desc`` points at: an index's manifests, a manifest's config then layers.

    Configs, layers and unknown types have none.  Schema 1 is refused.
    """
    mt.check_supported(desc.media_type, desc.digest)
    if mt.is_index(desc.media_type):
        return parse_index(desc, blob)
    if mt.is_manifest(desc.media_type):
        config, layers = parse_manifest(desc, blob)
        return [config, *layers]
    return []


def child_gc_label_keys(child: Descriptor) -> list[str]:
    """containerd's ``ChildGCLabels``: the key prefix for a child of this kind."""
    if mt.is_config(child.media_type):
        return [f"{GC_REF_CONTENT}.config"]
    if mt.is_manifest(child.media_type):
        return [f"{GC_REF_CONTENT}.m."]
    if mt.is_layer(child.media_type):
        return [f"{GC_REF_CONTENT}.l."]
    return [f"{GC_REF_CONTENT}."]


def child_gc_labels(desc: Descriptor, kids: Sequence[Descriptor]) -> dict[str, str]:
    """The labels the parent blob ``desc`` gets so the GC keeps its children
    (``...content.m.<i>``, ``...content.config``, ``...content.l.<i>``), numbered per key as
    containerd's ``SetChildrenMappedLabels`` does."""
    del desc  # the labels depend only on the children; kept for symmetry with containerd's handler
    labels: dict[str, str] = {}
    counts: dict[str, int] = {}
    for ch in kids:
        for key in child_gc_label_keys(ch):
            idx = counts.get(key, 0)
            counts[key] = idx + 1
            if idx > 0 or key.endswith("."):
                key = f"{key}{idx}"
            labels[key] = ch.digest
    return labels


def distribution_source_label(domain: str, repository: str) -> tuple[str, str]:
    """``containerd.io/distribution.source.<host>`` = ``<repo>`` (the value is a comma list when merged)."""
    return f"{LABEL_DISTRIBUTION_SOURCE}.{domain}", repository


def merge_distribution_source(existing: str | None, repository: str) -> str:
    repos = [r for r in (existing or "").split(",") if r]
    if repository not in repos:
        repos.append(repository)
    return ",".join(sorted(repos))


# -- platforms --------------------------------------------------------------------------------------


def descriptor_platform(desc: Descriptor) -> plat.Platform | None:
    return plat.normalize(plat.Platform.from_oci(desc.platform)) if desc.platform else None


def select_manifests(
    manifests: Sequence[Descriptor], matcher: plat.Matcher, limit: int = 0
) -> list[Descriptor]:
    """The entries of an index that ``matcher`` accepts, best first (stable), at most ``limit`` (0: all).

    Entries without a platform are kept (containerd's ``FilterPlatforms`` does the same); entries that are
    not manifests or indexes (attestations, signatures) are kept only with ``AnyMatcher``.
    """
    keep: list[tuple[int, Descriptor]] = []
    for i, m in enumerate(manifests):
        p = descriptor_platform(m)
        if p is None:
            if mt.is_manifest(m.media_type) or mt.is_index(m.media_type):
                keep.append((i, m))
            continue
        if matcher.match(p):
            keep.append((i, m))

    def sort_key(item: tuple[int, Descriptor]) -> tuple[int, int]:
        i, m = item
        p = descriptor_platform(m)
        if p is None:
            return (1 << 30, i)
        better = sum(1 for _, o in keep if (q := descriptor_platform(o)) is not None and matcher.less(q, p))
        return (better, i)

    ordered = [m for _, m in sorted(keep, key=sort_key)]
    return ordered[:limit] if limit > 0 else ordered


def index_platforms(manifests: Sequence[Descriptor]) -> list[str]:
    out: list[str] = []
    for m in manifests:
        p = descriptor_platform(m)
        s = plat.format_platform(p) if p else "unknown"
        if s not in out:
            out.append(s)
    return out


def no_match_error(digest: str, manifests: Sequence[Descriptor], matcher: plat.Matcher) -> NotFound:
    have = ", ".join(index_platforms(manifests)) or "none"
    return NotFound(f"no manifest in {digest} matches platform {matcher} (the index has: {have})")


def manifest_for_platform(
    read: ReadFn, desc: Descriptor, matcher: plat.Matcher | None = None, *, depth: int = 0
) -> Descriptor:
    """The best image manifest under ``desc`` for ``matcher`` (default: the host).

    A manifest without platform in its index entry is checked through its config.
    :raises NotFound: naming the platforms the index has.
    """
    matcher = matcher or plat.default()
    if depth > 8:
        raise DataLoss(f"{desc.digest}: indexes nested too deep")
    mt.check_supported(desc.media_type, desc.digest)
    if mt.is_manifest(desc.media_type):
        return desc
    if not mt.is_index(desc.media_type):
        raise InvalidArgument(f"{desc.digest} is a {desc.media_type}, not an image manifest or index")
    manifests = parse_index(desc, read(desc))
    for m in select_manifests(manifests, matcher):
        if mt.is_index(m.media_type):
            try:
                return manifest_for_platform(read, m, matcher, depth=depth + 1)
            except NotFound:
                continue
        if m.platform is None:
            config, _ = parse_manifest(m, read(m))
            cfg = parse_config(read(config))
            if cfg.platform.os and not matcher.match(cfg.platform):
                continue
        return m
    raise no_match_error(desc.digest, manifests, matcher)


# -- image config -----------------------------------------------------------------------------------


@dataclass
class ImageConfig:
    """An OCI / Docker image configuration, the parts pyctr uses plus the raw document."""

    platform: plat.Platform
    diff_ids: list[str]
    env: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    working_dir: str = ""
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    exposed_ports: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    created: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"raw": self.raw}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ImageConfig:
        return parse_config(json.dumps(d["raw"]).encode())


def _str_list(v: Any, what: str) -> list[str]:
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise DataLoss(f"image config: {what} is not a list of strings")
    return list(v)


def _keys(v: Any) -> list[str]:
    return sorted(str(k) for k in v) if isinstance(v, dict) else []


def parse_config(blob: bytes) -> ImageConfig:
    doc = _load_json(blob, "image config")
    c = doc.get("config") or {}
    if not isinstance(c, dict):
        raise DataLoss("image config: 'config' is not an object")
    rootfs = doc.get("rootfs") or {}
    if not isinstance(rootfs, dict):
        raise DataLoss("image config: 'rootfs' is not an object")
    diff_ids = _str_list(rootfs.get("diff_ids"), "rootfs.diff_ids")
    for d in diff_ids:
        try:
            validate_digest(d)
        except InvalidArgument as e:
            raise DataLoss(f"image config: {e}") from None
    p = plat.Platform(
        os=str(doc.get("os", "")), architecture=str(doc.get("architecture", "")),
        variant=str(doc.get("variant", "") or ""), os_version=str(doc.get("os.version", "") or ""),
    )
    if p.os or p.architecture:
        p = plat.normalize(p)
    labels = c.get("Labels") or {}
    return ImageConfig(
        platform=p,
        diff_ids=diff_ids,
        env=_str_list(c.get("Env"), "Env"),
        entrypoint=_str_list(c.get("Entrypoint"), "Entrypoint"),
        cmd=_str_list(c.get("Cmd"), "Cmd"),
        working_dir=str(c.get("WorkingDir") or ""),
        user=str(c.get("User") or ""),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
        stop_signal=str(c.get("StopSignal") or ""),
        exposed_ports=_keys(c.get("ExposedPorts")),
        volumes=_keys(c.get("Volumes")),
        created=str(doc.get("created") or ""),
        raw=doc,
    )


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """``chain[0] = diff[0]``, ``chain[i] = sha256(chain[i-1] + " " + diff[i])``."""
    out: list[str] = []
    for d in diff_ids:
        if not out:
            out.append(d)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def chain_id(diff_ids: Sequence[str]) -> str:
    ids = chain_ids(diff_ids)
    if not ids:
        raise InvalidArgument("an image without layers has no chain id")
    return ids[-1]


# -- walking ----------------------------------------------------------------------------------------


def walk(read: ReadFn, root: Descriptor, matcher: plat.Matcher | None = None) -> list[Descriptor]:
    """Every descriptor reachable from ``root`` (parents before children), index entries filtered by
    ``matcher`` (None: all).  Blobs that are not available locally raise whatever ``read`` raises."""
    out: list[Descriptor] = []
    seen: set[str] = set()
    stack = [root]
    while stack:
        d = stack.pop(0)
        if d.digest in seen:
            continue
        seen.add(d.digest)
        out.append(d)
        if mt.is_index(d.media_type) or mt.is_manifest(d.media_type):
            kids = children(d, read(d))
            if mt.is_index(d.media_type) and matcher is not None:
                kids = select_manifests(kids, matcher)
            stack.extend(kids)
    return out


def ingest_ref(desc: Descriptor) -> str:
    """containerd's ``MakeRefKey``: ``{index,manifest,layer,config,unknown}-<digest>``."""
    return f"{mt.kind(desc.media_type)}-{desc.digest}"


__all__ = [
    "GC_REF_CONTENT",
    "GC_REF_SNAPSHOT",
    "LABEL_DISTRIBUTION_SOURCE",
    "LABEL_UNCOMPRESSED",
    "MAX_MANIFEST_SIZE",
    "Image",
    "ImageConfig",
    "chain_id",
    "chain_ids",
    "child_gc_labels",
    "children",
    "distribution_source_label",
    "ingest_ref",
    "manifest_for_platform",
    "parse_config",
    "parse_index",
    "parse_manifest",
    "select_manifests",
    "walk",
]
