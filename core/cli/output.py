"""Plain-text output helpers: aligned tables (like Go's tabwriter in ``ctr``), sizes and ages."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from typing import TextIO


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], out: TextIO | None = None) -> None:
    """Print rows under headers, columns separated by at least two spaces."""
    out = out or sys.stdout
    data = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in data) for i in range(len(headers))]
    for r in data:
        line = "  ".join(c.ljust(widths[i]) if i < len(r) - 1 else c for i, c in enumerate(r))
        out.write(line.rstrip() + "\n")


def human_size(n: int | float) -> str:
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    v = float(n)
    for u in units:
        if v < 1024 or u == units[-1]:
            return f"{int(v)} {u}" if u == "B" else f"{v:.1f} {u}"
        v /= 1024
    return f"{v:.1f} TiB"


def human_age(ts_ns: int, now_ns: int | None = None) -> str:
    d = ((now_ns or time.time_ns()) - ts_ns) / 1e9
    if d < 0:
        d = 0
    for unit, secs in (("d", 86400), ("h", 3600), ("m", 60)):
        if d >= secs:
            return f"{int(d // secs)}{unit}"
    return f"{int(d)}s"


def labels_str(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def parse_labels(items: Iterable[str]) -> dict[str, str]:
    """``k=v`` strings to a dict; ``k=`` (or ``k``) maps to an empty value, which removes the label."""
    from ..errdefs import InvalidArgument

    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise InvalidArgument(f"invalid label {item!r}: want KEY=VALUE")
        out[key] = value if sep else ""
    return out
