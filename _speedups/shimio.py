"""Shim stdio loop: the Cython ``_shimio_c`` (epoll + splice) or its twin ``_shimio_py``.

See :mod:`pyctr._speedups._shimio_py` for the interface.  ``PYCTR_NO_EXTENSIONS=1`` forces the twin.
"""

from __future__ import annotations

import os

if os.environ.get("PYCTR_NO_EXTENSIONS"):
    from ._shimio_py import JSON, RAW, READ, WRITE, Loop, json_lines, json_time, set_subreaper
else:
    try:
        from ._shimio_c import (  # type: ignore[assignment]
            JSON,
            RAW,
            READ,
            WRITE,
            Loop,
            json_lines,
            json_time,
            set_subreaper,
        )
    except ImportError:
        from ._shimio_py import JSON, RAW, READ, WRITE, Loop, json_lines, json_time, set_subreaper

__all__ = ["JSON", "RAW", "READ", "WRITE", "Loop", "json_lines", "json_time", "set_subreaper"]
