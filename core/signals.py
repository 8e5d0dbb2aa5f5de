"""Signals for containers: parsing names, and what to send to a container's init process."""

from __future__ import annotations

from .errdefs import InvalidArgument

# Signals whose default action ends a process.
_TERMINATING = frozenset({1, 2, 3, 6, 10, 12, 13, 14, 15})


def parse_signal(value: str | int) -> int:
    """``KILL``, ``SIGKILL``, ``kill`` or ``9`` -> 9."""
    import signal

    v = str(value).strip()
    if v.isdigit():
        n = int(v)
        if not 0 < n < signal.NSIG:
            raise InvalidArgument(f"invalid signal number {n}")
        return n
    name = v.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(getattr(signal.Signals, name))
    except AttributeError:
        raise InvalidArgument(f"unknown signal {value!r}") from None


def effective_signal(pid: int, signal: int) -> int:
    """The signal to send to a container's init process so that it means what the user meant.

    The kernel drops a signal sent to a PID namespace's init when the init neither handles nor
    ignores it (pid_namespaces(7)): ``tasks kill`` of ``sleep 300`` would do nothing at all.  When the
    signal's default action would end any other process, SIGKILL is sent instead; a signal the init
    handles or ignores on purpose is sent as it is, and so is every signal to other processes.
    """
    if signal not in _TERMINATING or pid <= 0:
        return signal
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        nspid = fields.get("NSpid", "").split()
        caught = int(fields.get("SigCgt", "0").strip(), 16)
        ignored = int(fields.get("SigIgn", "0").strip(), 16)
    except (OSError, ValueError):
        return signal
    bit = 1 << (signal - 1)
    if len(nspid) > 1 and nspid[-1] == "1" and not (caught | ignored) & bit:
        return 9
    return signal
