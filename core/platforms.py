"""Platforms (``os/arch[/variant]``): parsing, normalisation, formatting and matching.

Modelled on containerd's ``platforms`` package:

* :func:`normalize` folds the spellings tools use (``x86_64`` -> ``amd64``, ``aarch64`` -> ``arm64``,
  ``armhf`` -> ``arm/v7``, ``armel`` -> ``arm/v6``, ``arm`` -> ``arm/v7``, ``arm64/v8`` -> ``arm64``);
* :func:`only` is ``platforms.Only``: a matcher that accepts the platform and the ones it can run,
  best first: ``linux/arm/v7`` also runs ``v6`` and ``v5``; ``linux/arm64`` also runs ``arm/v8`` down to
  ``arm/v5``; ``linux/amd64/v3`` also runs ``v2``, ``amd64`` and ``386``;
* :func:`host` is the host's platform (``linux/amd64`` here).
"""

from __future__ import annotations

import os
import platform as _platform
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errdefs import InvalidArgument

_COMPONENT = re.compile(r"^[A-Za-z0-9_-]+$")

_KNOWN_OS = frozenset({
    "aix", "android", "darwin", "dragonfly", "freebsd", "hurd", "illumos", "ios", "js", "linux", "nacl",
    "netbsd", "openbsd", "plan9", "solaris", "windows", "zos", "wasip1",
})
_KNOWN_ARCH = frozenset({
    "386", "amd64", "amd64p32", "arm", "armbe", "arm64", "arm64be", "ppc64", "ppc64le", "loong64", "mips",
    "mipsle", "mips64", "mips64le", "mips64p32", "mips64p32le", "ppc", "riscv", "riscv64", "s390", "s390x",
    "sparc", "sparc64", "wasm",
})


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        return format_platform(self)

    def to_oci(self) -> dict[str, Any]:
        d: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            d["variant"] = self.variant
        if self.os_version:
            d["os.version"] = self.os_version
        if self.os_features:
            d["os.features"] = list(self.os_features)
        return d

    @classmethod
    def from_oci(cls, d: Mapping[str, Any]) -> Platform:
        return cls(
            os=str(d.get("os", "")),
            architecture=str(d.get("architecture", "")),
            variant=str(d.get("variant", "") or ""),
            os_version=str(d.get("os.version", "") or ""),
            os_features=tuple(d.get("os.features") or ()),
        )

    to_dict = to_oci

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Platform:
        return cls.from_oci(d)


def _normalize_os(os_: str) -> str:
    os_ = os_.lower()
    return "darwin" if os_ == "macos" else os_


def _normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    arch, variant = arch.lower(), variant.lower()
    if arch == "i386":
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        return "arm64", "" if variant in ("8", "v8", "") else variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch in ("armv5l", "armv6l", "armv7l", "armv8l"):
        return "arm", "v" + arch[4]
    if arch == "arm":
        if variant in ("", "7"):
            return "arm", "v7"
        if variant in ("5", "6", "8"):
            return "arm", "v" + variant
        return "arm", variant
    return arch, variant


def normalize(p: Platform) -> Platform:
    """The canonical spelling of ``p``."""
    arch, variant = _normalize_arch(p.architecture, p.variant)
    return Platform(_normalize_os(p.os), arch, variant, p.os_version, p.os_features)


def format_platform(p: Platform) -> str:
    """``os/arch[/variant]`` (``unknown`` for an empty os)."""
    if not p.os:
        return "unknown"
    parts = [p.os, p.architecture]
    if p.variant:
        parts.append(p.variant)
    return "/".join(x for x in parts if x)


def host() -> Platform:
    """The host's platform, normalised (``linux/amd64``; arm hosts get their variant)."""
    machine = _platform.machine() or "unknown"
    system = (_platform.system() or "linux").lower()
    variant = ""
    arch = machine
    if machine.startswith("armv") and machine[4:5].isdigit():
        arch, variant = "arm", "v" + machine[4]
    return normalize(Platform(system, arch, variant))


def host_string() -> str:
    return format_platform(host())


def parse(spec: str) -> Platform:
    """Parse ``os``, ``arch``, ``os/arch`` or ``os/arch/variant`` (normalised).

    A lone known OS gets the host's architecture; a lone known architecture gets the host's OS.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidArgument("empty platform; want os/arch[/variant], e.g. linux/amd64")
    parts = spec.strip().split("/")
    for p in parts:
        if not _COMPONENT.match(p):
            raise InvalidArgument(f"invalid platform {spec!r}: bad component {p!r}; want os/arch[/variant]")
    h = host()
    if len(parts) == 1:
        word = parts[0].lower()
        if word in _KNOWN_OS:
            if word == h.os:
                return h
            return normalize(Platform(word, h.architecture, h.variant))
        arch, variant = _normalize_arch(word, "")
        if arch in _KNOWN_ARCH:
            return normalize(Platform(h.os, arch, variant))
        raise InvalidArgument(f"invalid platform {spec!r}: unknown operating system or architecture")
    if len(parts) > 3:
        raise InvalidArgument(f"invalid platform {spec!r}: want os/arch[/variant]")
    os_ = _normalize_os(parts[0])
    if os_ not in _KNOWN_OS:
        raise InvalidArgument(f"invalid platform {spec!r}: unknown operating system {parts[0]!r}")
    arch, variant = _normalize_arch(parts[1], parts[2] if len(parts) == 3 else "")
    if arch not in _KNOWN_ARCH:
        raise InvalidArgument(f"invalid platform {spec!r}: unknown architecture {parts[1]!r}")
    return Platform(os_, arch, variant)


def from_any(p: Platform | str | Mapping[str, Any]) -> Platform:
    if isinstance(p, Platform):
        return normalize(p)
    if isinstance(p, str):
        return parse(p)
    return normalize(Platform.from_oci(p))


class Matcher(Protocol):
    def match(self, p: Platform) -> bool: ...

    def less(self, a: Platform, b: Platform) -> bool: ...


def _vector(p: Platform) -> list[Platform]:
    """``p`` and the platforms it can also run, best first (containerd's ``platformVector``)."""
    out = [p]
    if p.architecture == "amd64":
        v = p.variant[1:] if p.variant.startswith("v") else ""
        if v.isdigit() and int(v) > 1:
            for n in range(int(v) - 1, 0, -1):
                out.append(Platform(p.os, "amd64", "" if n == 1 else f"v{n}", p.os_version, p.os_features))
        out.append(Platform(p.os, "386", "", p.os_version, p.os_features))
    elif p.architecture == "arm":
        v = p.variant[1:] if p.variant.startswith("v") else ""
        if v.isdigit() and int(v) > 5:
            for n in range(int(v) - 1, 4, -1):
                out.append(Platform(p.os, "arm", f"v{n}", p.os_version, p.os_features))
    elif p.architecture == "arm64":
        out.extend(_vector(Platform(p.os, "arm", p.variant or "v8", p.os_version, p.os_features)))
    return out


def _same(a: Platform, b: Platform) -> bool:
    return a.os == b.os and a.architecture == b.architecture and a.variant == b.variant


class OrderedMatcher:
    """Matches any of ``platforms``; earlier ones are preferred."""

    def __init__(self, platforms: Sequence[Platform]) -> None:
        self.platforms = [normalize(p) for p in platforms]

    def _rank(self, p: Platform) -> int:
        n = normalize(p)
        for i, q in enumerate(self.platforms):
            if _same(n, q):
                return i
        return len(self.platforms)

    def match(self, p: Platform) -> bool:
        return self._rank(p) < len(self.platforms)

    def less(self, a: Platform, b: Platform) -> bool:
        return self._rank(a) < self._rank(b)

    def __str__(self) -> str:
        return ", ".join(format_platform(p) for p in self.platforms)


class AnyMatcher:
    """Matches every platform (``--all-platforms``)."""

    def match(self, p: Platform) -> bool:
        return True

    def less(self, a: Platform, b: Platform) -> bool:
        return False

    def __str__(self) -> str:
        return "all platforms"


def only(p: Platform | str) -> OrderedMatcher:
    """``platforms.Only``: ``p`` and what it can run (arm variants downwards, amd64 levels, 386)."""
    return OrderedMatcher(_vector(from_any(p)))


def exact(p: Platform | str) -> OrderedMatcher:
    """Exactly ``p`` (normalised), nothing else."""
    return OrderedMatcher([from_any(p)])


def any_of(specs: Iterable[Platform | str]) -> OrderedMatcher:
    """Each platform with its fallbacks (``only``), in the given order."""
    out: list[Platform] = []
    for s in specs:
        for q in _vector(from_any(s)):
            if not any(_same(q, o) for o in out):
                out.append(q)
    return OrderedMatcher(out)


def default() -> OrderedMatcher:
    """The host platform and what it can run."""
    return only(host())


def matcher_for(platforms: Sequence[str] | None, all_platforms: bool = False) -> Matcher:
    """The matcher for the CLI's ``--platform`` list / ``--all-platforms`` (none given: the host)."""
    if all_platforms:
        return AnyMatcher()
    if not platforms:
        return default()
    return any_of(platforms)


def running_on_linux() -> bool:
    return os.name == "posix" and _platform.system().lower() == "linux"


__all__ = [
    "AnyMatcher",
    "Matcher",
    "OrderedMatcher",
    "Platform",
    "any_of",
    "default",
    "exact",
    "format_platform",
    "from_any",
    "host",
    "host_string",
    "matcher_for",
    "normalize",
    "only",
    "parse",
]
