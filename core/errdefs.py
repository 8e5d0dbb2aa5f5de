"""The error tree every part of pyctr raises, and the stable codes the CLI and the wire use.

::

    PyctrError                       (code "unknown", exit 1)
     +-- InvalidArgument(ValueError)  bad name, malformed reference, bad flag value   (exit 2)
     +-- NotFound(LookupError)        no such image, container, blob, snapshot, ...   (exit 3)
     |    +-- CommandNotFound          a container's command does not exist            (exit 127)
     +-- AlreadyExists                a name or key in use                            (exit 4)
     +-- FailedPrecondition           the object is in the wrong state for the call   (exit 5)
     |    +-- Conflict                 two writers at once, a lock held elsewhere
     +-- Unavailable                  a daemon, registry, shim or plugin cannot be reached  (exit 6)
     +-- DeadlineExceeded(TimeoutError)  a deadline or timeout ran out                (exit 7)
     +-- PermissionDenied             credentials refused, a forbidden operation      (exit 8)
     +-- NotImplementedErr            a plugin does not support this call             (exit 9)
     +-- DataLoss                     bytes that do not match their digest or size    (exit 10)
     +-- Internal                     a bug or an unexpected system failure           (exit 11)

Each class has a ``code`` (a short stable string sent on the wire) and an ``exit_code`` (the CLI's exit
status).  Messages say what failed and, where it helps, what the user can do about it.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing pyctr stays cheap for ``pyctr run``
if TYPE_CHECKING:
    from typing import ClassVar


class PyctrError(Exception):
    """Base of every error pyctr raises on purpose."""

    code: ClassVar[str] = "unknown"
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message or self.code


class InvalidArgument(PyctrError, ValueError):
    code = "invalid_argument"
    exit_code = 2


class NotFound(PyctrError, LookupError):
    code = "not_found"
    exit_code = 3


class CommandNotFound(NotFound):
    """The process's command does not exist in the container (or is not executable).

    The CLI exits 127 for it, as a shell does; the message is the OCI runtime's.
    """

    code = "command_not_found"
    exit_code = 127


class AlreadyExists(PyctrError):
    code = "already_exists"
    exit_code = 4


class FailedPrecondition(PyctrError):
    code = "failed_precondition"
    exit_code = 5


class Conflict(FailedPrecondition):
    code = "conflict"


class Unavailable(PyctrError):
    code = "unavailable"
    exit_code = 6


class DeadlineExceeded(PyctrError, TimeoutError):
    code = "deadline_exceeded"
    exit_code = 7


class PermissionDenied(PyctrError):
    code = "permission_denied"
    exit_code = 8


class NotImplementedErr(PyctrError):
    code = "not_implemented"
    exit_code = 9


class DataLoss(PyctrError):
    code = "data_loss"
    exit_code = 10


class Internal(PyctrError):
    code = "internal"
    exit_code = 11


_BY_CODE: dict[str, type[PyctrError]] = {
    cls.code: cls
    for cls in (
        PyctrError,
        InvalidArgument,
        NotFound,
        CommandNotFound,
        AlreadyExists,
        FailedPrecondition,
        Conflict,
        Unavailable,
        DeadlineExceeded,
        PermissionDenied,
        NotImplementedErr,
        DataLoss,
        Internal,
    )
}


def from_code(code: str, message: str) -> PyctrError:
    """Rebuild an error received on the wire; an unknown code becomes a plain :class:`PyctrError`."""
    return _BY_CODE.get(code, PyctrError)(message)


__all__ = [
    "AlreadyExists",
    "CommandNotFound",
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
    "from_code",
]
