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


def _with_console(args: list[str], id: str, console_socket: str) -> list[str]:
    return [*args, *(["--console-socket", console_socket] if console_socket else []), id]


def create_args(bundle: str, pid_file: str, id: str, console_socket: str = "") -> list[str]:
    return _with_console(["create", "--bundle", bundle, "--pid-file", pid_file], id, console_socket)


def run_args(bundle: str, pid_file: str, id: str, console_socket: str = "") -> list[str]:
    """``runc run --detach``: create and start in one runc invocation (one Go process start less)."""
    return _with_console(["run", "--detach", "--bundle", bundle, "--pid-file", pid_file], id, console_socket)


def exec_args(process_file: str, pid_file: str, id: str, console_socket: str = "") -> list[str]:
    return _with_console(["exec", "--detach", "--process", process_file, "--pid-file", pid_file], id,
                         console_socket)


def kill_args(id: str, signal: int, all: bool = False) -> list[str]:
    return ["kill", *(["--all"] if all else []), id, str(signal)]


def delete_args(id: str, force: bool = False) -> list[str]:
    return ["delete", *(["--force"] if force else []), id]


def delete_stopped(root: str, id: str) -> bool:
    """Do what ``runc delete`` does for a container whose init has exited, without starting runc.

    ``runc delete`` of a stopped container removes the container's cgroups and its state directory
    (``<root>/<id>``), then runs poststop hooks; starting the Go program for that costs ~8 ms, on
    every ``run --rm``.  This does the same for the plain case runc itself handles that way: a private
    PID namespace (the kernel killed every other process of the container with its init), no hooks,
    no Intel RDT, the cgroupfs driver, not rootless.  Returns False, having removed nothing, when any
    of that does not hold or the init still runs: the caller then runs ``runc delete``.  Returns True
    when the container is gone (or was never there)."""
    import json

    state_dir = os.path.join(root, id)
    try:
        with open(os.path.join(state_dir, "state.json"), "rb") as f:
            state = json.loads(f.read())
    except FileNotFoundError:
        return not os.path.lexists(state_dir)
    except (OSError, ValueError):
        return False
    try:
        cfg = state["config"]
        own_pid_ns = any(n.get("type") == "NEWPID" and not n.get("path") for n in cfg.get("namespaces") or ())
        hooks = any(v for v in (cfg.get("Hooks") or cfg.get("hooks") or {}).values())
        plain = (own_pid_ns and not hooks and not state.get("rootless") and not state.get("intel_rdt_path")
                 and not cfg.get("intel_rdt") and not (cfg.get("cgroups") or {}).get("systemd"))
        paths = sorted({str(v) for v in (state.get("cgroup_paths") or {}).values() if v})
        pid, start = int(state.get("init_process_pid") or 0), int(state.get("init_process_start") or 0)
    except (AttributeError, KeyError, TypeError, ValueError):
        return False
    if not plain or (pid and _same_process(pid, start)):
        return False
    from . import cgroups

    if not all(p.startswith(cgroups.CGROUP_ROOT + "/") for p in paths) or not cgroups.remove_dirs(paths):
        return False  # still busy: runc delete retries longer and reports what stays
    try:
        for name in os.listdir(state_dir):
            os.unlink(os.path.join(state_dir, name))  # state.json (exec.fifo is gone once started)
        os.rmdir(state_dir)
    except FileNotFoundError:
        pass
    except OSError:
        return False  # something unexpected in there: runc delete removes it all
    return True


def _same_process(pid: int, start: int) -> bool:
    """Whether ``pid`` still runs and started at ``start`` (clock ticks, as runc records it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    fields = stat[stat.rfind(b")") + 2:].split()
    try:
        return int(fields[19]) == start  # field 22 of stat: starttime
    except (IndexError, ValueError):
        return True  # cannot tell: let runc decide


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
