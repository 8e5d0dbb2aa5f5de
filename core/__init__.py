"""pyctr: a core container runtime for Linux, in the mould of containerd.

The public API is small and loads lazily, so importing :mod:`pyctr` costs little::

    from pyctr import Client, hookimpl, errors

:class:`Client` drives pyctr in-process (``Client(root=..., state=...)``) or through the daemon
(``Client(address=...)``); :data:`hookimpl` marks a plugin module's hook implementations; the error
classes live in :mod:`pyctr.errdefs` and are re-exported here.
"""

from __future__ import annotations

from .errdefs import (
    AlreadyExists,
    Conflict,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    NotImplementedErr,
    PermissionDenied,
    PyctrError,
    Unavailable,
)

__version__ = "0.1.0"

TYPE_CHECKING = False  # not typing's: ``pyctr run`` starts faster without importing typing


if TYPE_CHECKING:
    from typing import Any

    from .client import Client
    from .hookspecs import hookimpl


def __getattr__(name: str) -> Any:
    if name == "Client":
        from .client import Client

        return Client
    if name == "hookimpl":
        from .hookspecs import hookimpl

        return hookimpl
    if name == "errors":
        from . import errdefs

        return errdefs
    raise AttributeError(f"module 'pyctr' has no attribute {name!r}")


__all__ = [
    "AlreadyExists",
    "Client",
    "Conflict",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "NotImplementedErr",
    "PermissionDenied",
    "PyctrError",
    "Unavailable",
    "__version__",
    "hookimpl",
]
