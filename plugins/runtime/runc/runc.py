"""runc command lines and error messages (stdlib only: the shim imports this module).

Every runc call carries ``--root <runc_root> --log <bundle>/log.json --log-format json``; errors are
read back from that log (the last ``"level":"error"`` entry written during the call).
"""

from __future__ import annotations

import os

#: runc's message when the process's command is missing from the image: the caller reports 127.
_NOT_FOUND_MARKERS = ("executable file not found", "no such file or directory")


def global_args(binary: str, root: str, log: str) -> list[str]:
    return [binary, "--root", root, "--log", log, "--log-format", "json"]


def create_args(bundle: str, pid_file: str, id: str, console_socket: str = "") -> list[str]:
    args = ["create", "--bundle", bundle, "--pid-file", pid_file]
    if console_socket:
        args += ["--console-socket", console_socket]
    return [*args, id]


def run_args(bundle: str, pid_file: str, id: str, console_socket: str = "") -> list[str]:
    """``runc run --detach``: create and start in one runc invocation (one Go process start less)."""
    args = ["run", "--detach", "--bundle", bundle, "--pid-file", pid_file]
    if console_socket:
        args += ["--console-socket", console_socket]
    return [*args, id]


def exec_args(process_file: str, pid_file: str, id: str, console_socket: str = "") -> list[str]:
    args = ["exec", "--detach", "--process", process_file, "--pid-file", pid_file]
    if console_socket:
        args += ["--console-socket", console_socket]
    return [*args, id]


def kill_args(id: str, signal: int, all: bool = False) -> list[str]:
    return ["kill", *(["--all"] if all else []), id, str(signal)]


def delete_args(id: str, force: bool = False) -> list[str]:
    return ["delete", *(["--force"] if force else []), id]


def log_size(log: str) -> int:
    try:
        return os.stat(log).st_size
    except OSError:
        return 0


def last_error(log: str, offset: int) -> str:
    """The last error runc logged after ``offset`` (its message, one line), or ``""``."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            data = f.read(1 << 20)
    except OSError:
        return ""
    import json

    msg = ""
    for line in data.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            msg = str(entry.get("msg", ""))
    return " ".join(msg.split())


def is_command_not_found(message: str) -> bool:
    """Whether a create/exec failure means the process's command does not exist."""
    m = message.lower()
    return "exec:" in m and any(k in m for k in _NOT_FOUND_MARKERS)


def is_not_running(message: str) -> bool:
    m = message.lower()
    return "not running" in m or "container not running" in m or "process already finished" in m


def is_not_exist(message: str) -> bool:
    m = message.lower()
    return "does not exist" in m or "not exist" in m or "container not found" in m
