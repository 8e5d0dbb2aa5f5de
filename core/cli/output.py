"""Plain-text output helpers: aligned tables (like Go's tabwriter in ``ctr``), sizes and ages."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TextIO, TypeVar

T = TypeVar("T")


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


def each(items: Iterable[T], action: Callable[[T], object], *, echo: bool = False) -> None:
    """Apply ``action`` to every item (``rm A B C``): one failure does not stop the rest.

    A single item's error is raised as it is (one line, its own exit status); with several, each error
    is printed as it happens and the command exits with the last one's status.  ``echo`` prints each
    item that succeeded.
    """
    import typer

    from ..errdefs import PyctrError

    items = list(items)
    failed: PyctrError | None = None
    for item in items:
        try:
            action(item)
        except PyctrError as e:
            if len(items) == 1:
                raise
            print(f"pyctr: {e}", file=sys.stderr)
            failed = e
            continue
        if echo:
            print(item)
    if failed is not None:
        raise typer.Exit(failed.exit_code)
