"""Image references: parsing and normalisation, as users of ``docker`` and ``ctr`` expect.

A reference names a repository on a registry, optionally with a tag and/or a digest::

    busybox                          -> docker.io/library/busybox:latest
    user/app:1.0                     -> docker.io/user/app:1.0
    127.0.0.1:5000/acc/busybox:1     -> 127.0.0.1:5000/acc/busybox:1
    alpine@sha256:<64 hex>           -> docker.io/library/alpine@sha256:<64 hex>
    alpine:3.19@sha256:<64 hex>      -> docker.io/library/alpine:3.19@sha256:<64 hex>

The grammar is the one of ``github.com/distribution/reference``: the first path component is a domain
when it contains a ``.`` or a ``:`` or is ``localhost`` (or has an upper-case letter); otherwise the
reference is on Docker Hub, and a one-component path gets the ``library/`` prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errdefs import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_ALPHANUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALPHANUM}(?:{_SEPARATOR}{_ALPHANUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_HOST = rf"(?:{_DOMAIN_NAME}|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_PATH_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_DOMAIN_RE = re.compile(rf"^{_DOMAIN}$")
_TAG_RE = re.compile(rf"^{_TAG}$")
_DIGEST_RE = re.compile(rf"^{_DIGEST}$")
_SHA256_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_ID_RE = re.compile(r"^[a-f0-9]{64}$")


@dataclass(frozen=True)
class Reference:
    """A parsed, normalised reference.

    :ivar domain: the registry host (``docker.io``, ``127.0.0.1:5000``).
    :ivar path: the repository path on that host (``library/busybox``).
    :ivar tag: the tag, or ``""``.
    :ivar digest: ``sha256:...``, or ``""``.
    """

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """``domain/path``: the repository's full name without tag or digest."""
        return f"{self.domain}/{self.path}"

    @property
    def repository(self) -> str:
        return self.path

    @property
    def object(self) -> str:
        """What to ask the registry for: the digest when there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @property
    def familiar_name(self) -> str:
        """The short name Docker shows (``busybox``, ``user/app``, ``127.0.0.1:5000/acc/busybox``)."""
        if self.domain == DEFAULT_DOMAIN:
            p = self.path
            return p[len(OFFICIAL_REPO_PREFIX):] if p.startswith(OFFICIAL_REPO_PREFIX) else p
        return self.name

    @property
    def familiar(self) -> str:
        """The familiar name with tag and digest (``busybox:latest``)."""
        out = self.familiar_name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    def with_tag(self, tag: str) -> Reference:
        if not _TAG_RE.match(tag):
            raise InvalidArgument(f"invalid tag {tag!r}")
        return Reference(self.domain, self.path, tag, "")

    def with_digest(self, digest: str) -> Reference:
        if not _DIGEST_RE.match(digest):
            raise InvalidArgument(f"invalid digest {digest!r}")
        return Reference(self.domain, self.path, self.tag, digest)

    def to_dict(self) -> dict[str, Any]:
        return {"domain": self.domain, "path": self.path, "tag": self.tag, "digest": self.digest}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reference:
        return cls(str(d["domain"]), str(d["path"]), str(d.get("tag", "")), str(d.get("digest", "")))


def _split_domain(name: str) -> tuple[str, str]:
    i = name.find("/")
    first = name[:i] if i != -1 else ""
    if i == -1 or (
        "." not in first and ":" not in first and first != "localhost" and first.lower() == first
    ):
        domain, rest = DEFAULT_DOMAIN, name
    else:
        domain, rest = name[:i], name[i + 1:]
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in rest:
        rest = OFFICIAL_REPO_PREFIX + rest
    return domain, rest


def parse(ref: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise ``ref``.

    :param default_tag: add ``:latest`` when the reference has neither tag nor digest.
    :raises InvalidArgument: with a message saying what is wrong.
    """
    if not isinstance(ref, str) or not ref:
        raise InvalidArgument("empty image reference")
    if ref != ref.strip() or any(c.isspace() for c in ref):
        raise InvalidArgument(f"invalid reference {ref!r}: contains white space")
    if _ID_RE.match(ref):
        raise InvalidArgument(
            f"invalid reference {ref!r}: a 64-character hex string is an image id, not a repository name"
        )
    rest, digest = ref, ""
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        if not _DIGEST_RE.match(digest):
            raise InvalidArgument(f"invalid reference {ref!r}: bad digest {digest!r}")
        if digest.startswith("sha256:") and not _SHA256_RE.match(digest):
            raise InvalidArgument(f"invalid reference {ref!r}: sha256 wants 64 lower-case hex digits")
    tag = ""
    # A tag follows the last ':' that comes after the last '/'.
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG_RE.match(tag):
            raise InvalidArgument(f"invalid reference {ref!r}: bad tag {tag!r}")
    if not rest:
        raise InvalidArgument(f"invalid reference {ref!r}: no repository name")
    domain, path = _split_domain(rest)
    if not _DOMAIN_RE.match(domain):
        raise InvalidArgument(f"invalid reference {ref!r}: bad registry host {domain!r}")
    if not _PATH_RE.match(path):
        if path.lower() != path:
            raise InvalidArgument(f"invalid reference {ref!r}: repository name must be lowercase")
        raise InvalidArgument(f"invalid reference {ref!r}: bad repository name {path!r}")
    if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidArgument(f"invalid reference {ref!r}: name over {NAME_TOTAL_LENGTH_MAX} characters")
    if default_tag and not tag and not digest:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


def normalize(ref: str) -> str:
    """``parse(ref)`` as a string: ``busybox`` -> ``docker.io/library/busybox:latest``."""
    return str(parse(ref))


def try_parse(ref: str) -> Reference | None:
    try:
        return parse(ref)
    except InvalidArgument:
        return None


__all__ = ["DEFAULT_DOMAIN", "DEFAULT_TAG", "Reference", "normalize", "parse", "try_parse"]
