"""Media types of OCI and Docker schema 2 images, and what each kind of blob is.

Schema 1 manifests (``application/vnd.docker.distribution.manifest.v1+json`` and the signed variant) are
refused with :func:`check_supported`, as containerd 2.x does.
"""

from __future__ import annotations

import json
from typing import Any

from .errdefs import InvalidArgument, NotImplementedErr

# -- OCI --------------------------------------------------------------------------------------------
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYOUT_FILE = "oci-layout"

# -- Docker schema 2 --------------------------------------------------------------------------------
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_PLUGIN_CONFIG = "application/vnd.docker.plugin.v1+json"

# -- Docker schema 1 (refused) ----------------------------------------------------------------------
DOCKER_SCHEMA1_MANIFEST = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1_MANIFEST, DOCKER_SCHEMA1_SIGNED})

#: layer media type -> compression ("" for none, "gzip", "zstd")
_LAYERS: dict[str, str] = {
    OCI_LAYER: "",
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    OCI_LAYER_NONDIST: "",
    OCI_LAYER_NONDIST_GZIP: "gzip",
    OCI_LAYER_NONDIST_ZSTD: "zstd",
    DOCKER_LAYER: "",
    DOCKER_LAYER_GZIP: "gzip",
    DOCKER_LAYER_ZSTD: "zstd",
    DOCKER_FOREIGN_LAYER: "gzip",
}

#: what a registry is asked for when resolving a reference (containerd's Accept list, in its order)
MANIFEST_ACCEPT = ", ".join([DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX, "*/*"])


def _base(media_type: str) -> str:
    return media_type.split(";", 1)[0].strip()


def is_index(media_type: str) -> bool:
    return _base(media_type) in INDEX_TYPES


def is_manifest(media_type: str) -> bool:
    return _base(media_type) in MANIFEST_TYPES


def is_config(media_type: str) -> bool:
    return _base(media_type) in CONFIG_TYPES


def is_schema1(media_type: str) -> bool:
    return _base(media_type) in SCHEMA1_TYPES


def is_layer(media_type: str) -> bool:
    mt = _base(media_type)
    if mt in _LAYERS:
        return True
    # unknown suffixes (e.g. +encrypted) on a known layer base still count as layers
    return mt.startswith(("application/vnd.oci.image.layer.", "application/vnd.docker.image.rootfs."))


def is_non_distributable(media_type: str) -> bool:
    mt = _base(media_type)
    return mt.startswith("application/vnd.oci.image.layer.nondistributable.") or mt == DOCKER_FOREIGN_LAYER


def layer_compression(media_type: str) -> str:
    """``""`` (plain tar), ``"gzip"`` or ``"zstd"``.

    :raises NotImplementedErr: for a layer type whose compression pyctr cannot read (e.g. encrypted).
    :raises InvalidArgument: for a media type that is not a layer.
    """
    mt = _base(media_type)
    if mt in _LAYERS:
        return _LAYERS[mt]
    if is_layer(mt):
        raise NotImplementedErr(f"unsupported layer media type {media_type!r}")
    raise InvalidArgument(f"{media_type!r} is not a layer media type")


def layer_type(compression: str, *, docker: bool = False) -> str:
    """The layer media type for a compression (``""``, ``"gzip"``, ``"zstd"``)."""
    table = {
        (False, ""): OCI_LAYER, (False, "gzip"): OCI_LAYER_GZIP, (False, "zstd"): OCI_LAYER_ZSTD,
        (True, ""): DOCKER_LAYER, (True, "gzip"): DOCKER_LAYER_GZIP, (True, "zstd"): DOCKER_LAYER_ZSTD,
    }
    try:
        return table[(docker, compression)]
    except KeyError:
        raise InvalidArgument(f"unknown layer compression {compression!r}") from None


def kind(media_type: str) -> str:
    """``index``, ``manifest``, ``config``, ``layer`` or ``unknown`` (the prefix of an ingest ref)."""
    if is_index(media_type):
        return "index"
    if is_manifest(media_type):
        return "manifest"
    if is_config(media_type):
        return "config"
    if is_layer(media_type):
        return "layer"
    return "unknown"


SCHEMA1_MESSAGE = (
    "Docker Image Format v1 and Docker Image manifest version 2, schema 1 are not supported; "
    "convert the image to schema 2 or OCI (e.g. push it again with a current docker or skopeo)"
)


def check_supported(media_type: str, where: str = "") -> None:
    """Refuse schema 1 with a message saying what to do."""
    if is_schema1(media_type):
        raise NotImplementedErr(f"{where}: {SCHEMA1_MESSAGE}" if where else SCHEMA1_MESSAGE)


def detect(blob: bytes) -> str:
    """The media type of a manifest or index from its JSON (``mediaType``, else by shape).

    :raises NotImplementedErr: for schema 1.
    :raises InvalidArgument: for bytes that are not a manifest or index.
    """
    try:
        doc: Any = json.loads(blob)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"not a JSON manifest: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("not a JSON manifest: top level is not an object")
    mt = doc.get("mediaType")
    if isinstance(mt, str) and mt:
        check_supported(mt)
        return mt
    if doc.get("schemaVersion") == 1 or "fsLayers" in doc:
        raise NotImplementedErr(SCHEMA1_MESSAGE)
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc and "layers" in doc:
        return OCI_MANIFEST
    raise InvalidArgument("JSON is neither an image manifest nor an index")
