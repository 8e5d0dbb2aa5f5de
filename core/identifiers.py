"""Identifiers for namespaces, containers, leases and event-topic components, as containerd checks them.

An identifier is one or more runs of ASCII letters and digits joined by single ``.``, ``_`` or ``-``
(``^[A-Za-z0-9]+([._-][A-Za-z0-9]+)*$``), at most 76 characters; ``version`` is reserved (it names the
database's version record in containerd).
"""

from __future__ import annotations

import re

from .errdefs import InvalidArgument

MAX_LENGTH = 76
_RE = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*\Z")
_RESERVED = frozenset({"version"})


def validate_identifier(value: str, what: str = "identifier") -> str:
    """Return ``value`` if it is a valid identifier; raise :class:`InvalidArgument` naming ``what``."""
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{what} must not be empty")
    if len(value) > MAX_LENGTH:
        raise InvalidArgument(
            f"{what} {value[:20]!r}... is {len(value)} characters long; the limit is {MAX_LENGTH}"
        )
    if not _RE.match(value):
        raise InvalidArgument(
            f"{what} {value!r} is invalid: use letters and digits, joined by single '.', '_' or '-'"
        )
    if value in _RESERVED:
        raise InvalidArgument(f"{what} {value!r} is reserved")
    return value


def is_identifier(value: str) -> bool:
    try:
        validate_identifier(value)
    except InvalidArgument:
        return False
    return True


#: containerd caps one label (key plus value) at 4096 bytes.
MAX_LABEL_SIZE = 4096


def validate_labels(labels: dict[str, str] | None, what: str = "label") -> dict[str, str]:
    """Return ``labels`` as a plain dict if every key is a non-empty string and every key plus value fits
    in :data:`MAX_LABEL_SIZE` bytes; otherwise :class:`InvalidArgument` naming the offending key."""
    out: dict[str, str] = {}
    for key, value in (labels or {}).items():
        if not isinstance(key, str) or not key:
            raise InvalidArgument(f"{what} keys must be non-empty strings, not {key!r}")
        if not isinstance(value, str):
            raise InvalidArgument(f"{what} {key!r} must have a string value, not {type(value).__name__}")
        size = len(key.encode()) + len(value.encode())
        if size > MAX_LABEL_SIZE:
            raise InvalidArgument(f"{what} {key[:40]!r} is {size} bytes long (key plus value); the limit is "
                                  f"{MAX_LABEL_SIZE}")
        out[key] = value
    return out
