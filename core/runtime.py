"""The runtime interface: tasks (running containers) and the processes in them.

A ``runtime`` plugin (``pyctr.runtime.runc``) turns an OCI spec and a list of rootfs mounts into a
:class:`Task`: a container process supervised by a shim that outlives the caller.  The types here
are plain data (``to_dict``/``from_dict``) so they can cross the daemon's wire unchanged::

    rt = client.plugin("runtime")
    task = rt.create("default", "web", spec, mounts, ProcessIO(stdout="/tmp/out", stderr="/tmp/err"))
    task.start()
    status = task.wait()          # ExitStatus(exit_status=0, exited_at=...)
    task.delete()

Exec'd processes are addressed with ``exec_id`` on the same task methods (``""`` is the init
process), as in containerd's task API.  Status values and event topics match containerd's
(``/tasks/create``, ``/tasks/start``, ``/tasks/exit``, ``/tasks/delete``, ``/tasks/oom``,
``/tasks/exec-added``, ``/tasks/exec-started``, ``/tasks/paused``, ``/tasks/resumed``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from .errdefs import CommandNotFound, NotFound


class TaskStatus(enum.StrEnum):
    UNKNOWN = "unknown"
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    PAUSED = "paused"
    PAUSING = "pausing"


#: Exit status reported for a process whose shim died before recording how it ended
#: (containerd uses the same value).
EXIT_STATUS_SHIM_DIED = 255

#: Exit status of a process whose command could not be found or executed (what a shell reports).
EXIT_STATUS_NOT_FOUND = 127


@dataclass(frozen=True)
class ProcessIO:
    """Where a process's standard streams go.

    Each of ``stdin``/``stdout``/``stderr`` is one of:

    * ``""``: nothing (``/dev/null``);
    * a path: a FIFO (opened by the shim; the caller reads/writes the other end) or a regular
      file (stdout/stderr are appended to it, created 0644 if missing; stdin is read from it);
    * an ``int`` file descriptor of the calling process (embedded mode only: it is passed to the
      shim with SCM_RIGHTS and, when nothing else must see the bytes, handed to the container as-is,
      so output goes straight to the caller's terminal or pipe with no copy).

    ``terminal`` allocates a pty (runc's ``--console-socket``): stdout carries both streams.
    ``log_uri`` additionally appends raw output: ``file:///path``.  ``json_log`` (a path) additionally
    appends docker json-file lines ``{"log": ..., "stream": "stdout", "time": ...}`` for ``pyctr logs``.
    """

    stdin: str | int = ""
    stdout: str | int = ""
    stderr: str | int = ""
    terminal: bool = False
    log_uri: str = ""
    json_log: str = ""

    def fds(self) -> list[int]:
        """The file descriptors among the three streams (to pass with SCM_RIGHTS)."""
        return [s for s in (self.stdin, self.stdout, self.stderr) if isinstance(s, int)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProcessIO:
        return cls(
            stdin=d.get("stdin", ""),
            stdout=d.get("stdout", ""),
            stderr=d.get("stderr", ""),
            terminal=bool(d.get("terminal", False)),
            log_uri=str(d.get("log_uri", "")),
            json_log=str(d.get("json_log", "")),
        )


@dataclass(frozen=True)
class ExitStatus:
    """How a process ended: its status (128+signal when killed) and when (Unix time, seconds)."""

    exit_status: int
    exited_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExitStatus:
        return cls(exit_status=int(d["exit_status"]), exited_at=float(d["exited_at"]))


@dataclass(frozen=True)
class TaskState:
    """A process's state, as the shim sees it (``exec_id`` ``""`` is the task's init process).

    ``reason`` explains an abnormal end in one line (``"shim died"``, ``"oom"``); ``exited_at`` is
    0.0 while the process has not exited.
    """

    id: str
    namespace: str
    pid: int
    status: TaskStatus
    exec_id: str = ""
    exit_status: int = 0
    exited_at: float = 0.0
    bundle: str = ""
    terminal: bool = False
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    shim_pid: int = 0
    group: str = ""
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = str(self.status)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TaskState:
        known = cls.__dataclass_fields__
        kw = {k: v for k, v in d.items() if k in known}
        kw["status"] = TaskStatus(d.get("status", "unknown"))
        return cls(**kw)


@dataclass(frozen=True)
class ProcessInfo:
    """One process in a task's cgroup (``pyctr tasks ps``)."""

    pid: int
    info: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "info": dict(self.info)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProcessInfo:
        return cls(pid=int(d["pid"]), info=dict(d.get("info") or {}))


@dataclass(frozen=True)
class RuntimeEvent:
    """An event a shim publishes (``topic`` as in containerd, ``event`` its payload fields)."""

    topic: str
    namespace: str
    event: Mapping[str, Any]
    timestamp: float

    def to_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "namespace": self.namespace, "event": dict(self.event),
                "timestamp": self.timestamp}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RuntimeEvent:
        return cls(topic=str(d["topic"]), namespace=str(d["namespace"]), event=dict(d["event"]),
                   timestamp=float(d["timestamp"]))


#: Receives every event a runtime learns of (exits, OOMs, task lifecycle).  The daemon sets one
#: that forwards to its event exchange; exits found at start-up (``load``) are published too.
Publisher = Callable[[RuntimeEvent], None]


class Task(Protocol):
    """A container's processes, driven through its shim.  ``exec_id=""`` is the init process."""

    @property
    def namespace(self) -> str: ...

    @property
    def id(self) -> str: ...

    @property
    def pid(self) -> int:
        """The init process's pid (0 before create completes)."""
        ...

    def state(self, exec_id: str = "") -> TaskState: ...

    def start(self, exec_id: str = "") -> int:
        """Start the init process (or a created exec); returns its pid."""
        ...

    def kill(self, signal: int = 15, all: bool = False, exec_id: str = "") -> None:
        """Send ``signal`` to the process (``all``: every process in the container).

        FailedPrecondition when the process is not running.
        """
        ...

    def exec(self, exec_id: str, process_spec: Mapping[str, Any], io: ProcessIO) -> None:
        """Add a process (an OCI ``process`` object) to the running task; ``start(exec_id)`` runs it."""
        ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def pids(self) -> list[ProcessInfo]: ...

    def stats(self) -> dict[str, Any]:
        """Cgroup figures: ``memory_usage``, ``memory_limit``, ``cpu_usage_ns``, ``pids_current``, ..."""
        ...

    def wait(self, timeout: float | None = None, exec_id: str = "") -> ExitStatus:
        """Block until the process exits (DeadlineExceeded after ``timeout`` seconds)."""
        ...

    def delete(self, exec_id: str = "", force: bool = False) -> ExitStatus:
        """Remove a stopped process; for the init process, the whole task: runc state, cgroup,
        rootfs mount, bundle.  ``force`` kills a running task first.  FailedPrecondition when
        the process still runs and ``force`` is false.
        """
        ...

    def resize_pty(self, width: int, height: int, exec_id: str = "") -> None: ...

    def close_stdin(self, exec_id: str = "") -> None: ...


class Runtime(Protocol):
    """What a ``runtime`` plugin provides."""

    def create(
        self,
        ns: str,
        id: str,
        bundle_spec: Mapping[str, Any],
        rootfs_mounts: list[Mapping[str, Any]],
        io: ProcessIO,
        group: str | None = None,
        *,
        start: bool = False,
    ) -> Task:
        """Create a task (state CREATED; RUNNING with ``start=True``, which creates and starts it in one
        step) from an OCI spec and its rootfs mounts (containerd ``Mount``
        dicts: ``{"type", "source", "options": [...]}``; an empty list means the spec's
        ``root.path`` is used as-is).  ``group`` puts the task in the shim of that group (a batch, a
        pod); without one the runtime chooses (the runc runtime: a pooled shim of at most
        ``shim_pool_size`` tasks).
        AlreadyExists when the task exists; CommandNotFound when the command is missing.
        """
        ...

    def get(self, ns: str, id: str) -> Task:
        """The task (NotFound when none)."""
        ...

    def tasks(self, ns: str) -> list[Task]: ...

    def set_publisher(self, publisher: Publisher | None) -> None:
        """Where events go (the daemon's exchange); ``None`` drops them."""
        ...


def task_not_found(ns: str, id: str) -> NotFound:
    return NotFound(f"task {id!r} not found in namespace {ns!r}")


__all__ = [
    "EXIT_STATUS_NOT_FOUND",
    "EXIT_STATUS_SHIM_DIED",
    "CommandNotFound",
    "ExitStatus",
    "ProcessIO",
    "ProcessInfo",
    "Publisher",
    "Runtime",
    "RuntimeEvent",
    "Task",
    "TaskState",
    "TaskStatus",
    "task_not_found",
]
