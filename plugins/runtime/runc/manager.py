"""The runc runtime: bundles, shims (started, found again, grouped) and tasks.

:class:`RuncRuntime` implements :class:`pyctr.runtime.Runtime`.  A task lives in a bundle directory
and is supervised by a shim process listening on ``<sockets>/<sha256(state/ns/group)[:32]>.sock``;
tasks created with the same ``group`` share one shim, and tasks created without one share pooled
shims of at most ``shim_pool_size`` live tasks (:meth:`RuncRuntime.current_pool`).  Neither the
daemon nor the CLI needs to stay: :meth:`RuncRuntime.load` (run when the plugin starts) finds every
bundle again, reconnects to live shims, and settles the tasks of dead ones (exit status from the
``exit`` file the shim wrote, or 255 ``shim died``; runc state, cgroup and rootfs mount removed).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import signal as _signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pyctr.errdefs import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PyctrError,
    Unavailable,
)
from pyctr.identifiers import validate_identifier
from pyctr.runtime import (
    EXIT_STATUS_SHIM_DIED,
    ExitStatus,
    ProcessInfo,
    ProcessIO,
    Publisher,
    RuntimeEvent,
    TaskState,
    TaskStatus,
    task_not_found,
)

from . import cgroups
from . import runc as R
from .bundle import Bundle
from .shim_client import ShimClient, ShimFull, ShimGone

log = logging.getLogger("pyctr.runtime.runc")

_SOCK_MAX = 100  # sun_path is 108 bytes
# How a shim process is started: python -S -I (no site, ~6 ms) with the package paths handed over,
# a fork first so that the shim is reparented to init and the spawner only waits for the fork.
# argv: search path entries ("\n"-separated), package paths ("name=dir\tdir\n..."), msgpack config (hex).
_BOOT = (
    "import os,sys\n"
    "if os.fork():os._exit(0)\n"
    "a=sys.argv\n"
    "sys.path[:0]=a[1].split('\\n')\n"
    "M=type(sys)\n"
    "for x in a[2].split('\\n'):\n"
    " n,_,p=x.partition('=');m=M(n);m.__path__=p.split('\\t');sys.modules[n]=m\n"
    "from pyctr.plugins.runtime.runc.shim import main\n"
    "main(a[3])\n"
)


def _boot_paths() -> tuple[list[str], list[tuple[str, list[str]]]]:
    import msgpack
    import pyctr
    import pyctr._speedups
    import pyctr.plugins
    import pyctr.plugins.runtime
    import pyctr.plugins.runtime.runc

    path = [os.path.dirname(os.path.dirname(os.path.abspath(msgpack.__file__)))]
    pkgs = [(m.__name__, list(m.__path__)) for m in (
        pyctr, pyctr._speedups, pyctr.plugins, pyctr.plugins.runtime, pyctr.plugins.runtime.runc)]
    return path, pkgs


class RuncRuntime:
    """The ``pyctr.runtime.runc`` plugin instance.

    :param state: the plugin's state directory (bundles, runc root, shim sockets and logs).
    :param runc_root: runc's ``--root`` (default ``<state>/runc``; per namespace below it).
    :param cgroup_parent: containers go to ``<cgroup_parent>/<ns>/<id>`` unless the spec says otherwise.
    :param zygote: fork shims from a warm parent; ``zygote_idle`` seconds before it exits unused.
    :param stdio_copy: always copy output through the shim (never hand a destination to the container).
    :param default_group: the shim group of tasks created without one ("": pooled shims, see below).
    :param shim_pool_size: tasks created without a group (and no ``default_group``) share pooled
        shims of at most this many live tasks each, per namespace (1 or 0: one shim per task).
    :param load: find running tasks and settle dead shims now (:meth:`load`).
    """

    def __init__(self, state: Path, *, runc_binary: str = "runc", runc_root: str = "",
                 cgroup_parent: str = "/pyctr", shim_debug: bool = False, zygote: bool = True,
                 zygote_idle: float = 120.0, stdio_copy: bool = False, default_group: str = "",
                 shim_pool_size: int = 32, shim_sweep: float = 10.0, load: bool = True) -> None:
        self.state = Path(state)
        self.runc_binary = runc_binary
        self.runc_root = Path(runc_root) if runc_root else self.state / "runc"
        self.cgroup_parent = cgroup_parent
        self.shim_debug = shim_debug
        self.zygote = zygote
        self.stdio_copy = stdio_copy
        self.default_group = default_group
        self.shim_pool_size = max(0, int(shim_pool_size))
        self.shim_sweep = shim_sweep
        self.zygote_idle = zygote_idle
        self._children: list[subprocess.Popen[bytes]] = []
        resolved = shutil.which(runc_binary)
        self.runc_path = os.path.abspath(resolved) if resolved else runc_binary
        self.state.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.sock_dir = self._socket_dir()  # made when a shim, the zygote or the event socket needs it
        self._sock_dir_ready = False
        self._clients: dict[str, ShimClient] = {}
        self._lock = threading.Lock()
        self._publisher: Publisher | None = None
        self._event_sock: socket.socket | None = None
        self._event_thread: threading.Thread | None = None
        self._event_address = ""
        self._closed = False
        self.loaded: list[RuntimeEvent] = []
        if load:
            self.loaded = self.load()

    # -- paths ---------------------------------------------------------------------------------------

    def _socket_dir(self) -> Path:
        d = self.state / "s"
        if len(str(d)) + 1 + 32 + 8 > _SOCK_MAX:
            # a deep state directory (tests): a short private directory named after it
            h = hashlib.sha256(str(self.state.resolve()).encode()).hexdigest()[:16]
            d = Path(f"/tmp/pyctr-s-{h}")
        return d

    def _ensure_sock_dir(self) -> Path:
        d = self.sock_dir
        if self._sock_dir_ready:
            return d
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise PermissionDenied(f"shim socket directory {d} is not a directory of ours; remove it")
        os.chmod(d, 0o700)
        self._sock_dir_ready = True
        return d

    def _tidy_sock_dir(self) -> None:
        """Remove the short /tmp socket directory of a deep state directory once nothing listens in it."""
        d = self.sock_dir
        if self.state / "s" == d or not d.is_dir():
            return
        try:
            names = os.listdir(d)
        except OSError:
            return
        if set(names) <= {"spawn.lock"}:
            with contextlib.suppress(OSError):
                os.unlink(d / "spawn.lock")
                os.rmdir(d)

    def bundle(self, ns: str, id: str) -> Bundle:
        return Bundle(self.state / ns / id)

    def shim_address(self, ns: str, group: str) -> str:
        h = hashlib.sha256(f"{self.state}/{ns}/{group}".encode()).hexdigest()[:32]
        return str(self.sock_dir / f"{h}.sock")

    def cgroup_path(self, ns: str, id: str) -> str:
        return cgroups.container_path(self.cgroup_parent, ns, id)

    def runc_root_for(self, ns: str) -> str:
        return str(self.runc_root / ns)

    # -- shims ---------------------------------------------------------------------------------------

    def client(self, address: str) -> ShimClient:
        with self._lock:
            c = self._clients.get(address)
            if c is None:
                c = self._clients[address] = ShimClient(address)
            return c

    def _forget_client(self, address: str) -> None:
        with self._lock:
            c = self._clients.pop(address, None)
        if c is not None:
            c.close()

    def ensure_shim(self, ns: str, group: str) -> tuple[str, bool]:
        """The address of the group's shim, started if none answers (and whether it is new)."""
        address = self.shim_address(ns, group)
        if self.client(address).ping() is not None:
            return address, False
        # one lock for every spawn (a few ms each): per-group lock files would pile up
        lock = self._ensure_sock_dir() / "spawn.lock"
        lock_fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            if os.path.exists(address):
                if self.client(address).ping() is not None:
                    return address, False
                self._forget_client(address)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(address)  # a dead shim's socket
            self._spawn(address, ns, group)
            return address, True
        finally:
            os.close(lock_fd)

    @property
    def zygote_address(self) -> str:
        return str(self.sock_dir / "zygote.sock")

    def _boot(self, cfg: dict[str, Any], listen_fd: int, log_path: Path) -> None:
        """Start ``python -S -I`` running a shim or the zygote (it forks at once; reaped later)."""
        import msgpack

        path, pkgs = _boot_paths()
        argv = ["\n".join(path), "\n".join(f"{n}={chr(9).join(p)}" for n, p in pkgs),
                msgpack.packb({**cfg, "listen_fd": listen_fd}).hex()]
        with open(log_path, "ab") as logf:
            self._children.append(subprocess.Popen(
                [os.path.realpath(sys.executable), "-S", "-I", "-c", _BOOT, *argv],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=logf,
                pass_fds=(listen_fd,), start_new_session=True, cwd="/",
            ))
        self._reap_children()

    def _reap_children(self, wait: bool = False) -> None:
        left = []
        for p in self._children:
            if wait:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=5)
            if p.poll() is None:
                left.append(p)
        self._children = left

    def _spawn(self, address: str, ns: str, group: str) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        logs = self.state / "shims"
        try:
            sock.bind(address)
            os.chmod(address, 0o600)
            sock.listen(512)
            logs.mkdir(exist_ok=True, mode=0o700)
            log_path = logs / (Path(address).stem + ".log")
            cfg = {"address": address, "group": group, "ns": ns, "debug": self.shim_debug,
                   "log": str(log_path), "sweep": self.shim_sweep}
            if self.zygote:
                try:
                    ShimClient(self.zygote_address, timeout=5.0).call(
                        "spawn", {"cfg": cfg, "code": _code_id()}, fds=[sock.fileno()], dedicated=True)
                    return
                except PyctrError:
                    self._start_zygote()  # for the next shims; this one starts cold
            self._boot(cfg, sock.fileno(), log_path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(address)
            raise Unavailable(f"cannot start a shim: {e}") from None
        finally:
            sock.close()

    def _start_zygote(self) -> None:
        self._ensure_sock_dir()
        address = self.zygote_address
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                sock.bind(address)
            except OSError:
                if _ping(address) is not None:
                    return
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(address)  # a dead zygote's socket
                sock.bind(address)
            os.chmod(address, 0o600)
            sock.listen(64)
            logs = self.state / "shims"
            logs.mkdir(exist_ok=True, mode=0o700)
            self._boot({"zygote": True, "address": address, "idle": self.zygote_idle, "code": _code_id(),
                        "state": str(self.state)},
                       sock.fileno(),
                       logs / "zygote.log")
        except OSError as e:
            log.warning("cannot start the shim zygote: %s", e)
        finally:
            sock.close()

    def stop_zygote(self) -> None:
        """Stop this state directory's zygote (tests; it otherwise exits when idle)."""
        res = _ping(self.zygote_address)
        if res and res.get("zygote_pid"):
            with contextlib.suppress(OSError):
                os.kill(int(res["zygote_pid"]), _signal.SIGTERM)
        with contextlib.suppress(OSError):
            os.unlink(self.zygote_address)

    # -- Runtime API -----------------------------------------------------------------------------------

    def set_publisher(self, publisher: Publisher | None) -> None:
        """Forward every event to ``publisher``: shims send theirs to a datagram socket read here."""
        self._publisher = publisher
        if publisher is not None and self._event_sock is None:
            self._start_event_listener()
            for ns, id in self._all_ids():
                rec = self.bundle(ns, id).read("shim.json") or {}
                with contextlib.suppress(PyctrError):
                    self.client(str(rec.get("address", ""))).call(
                        "set_publish", {"ns": ns, "id": id, "address": self._event_address}, timeout=2.0)
            for ev in self.loaded:
                try:
                    publisher(ev)
                except Exception:
                    log.warning("publishing %s failed", ev.topic, exc_info=True)
            self.loaded = []

    def _start_event_listener(self) -> None:
        address = str(self._ensure_sock_dir() / "events.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        s.bind(address)
        os.chmod(address, 0o600)
        self._event_sock = s
        self._event_address = address
        t = threading.Thread(target=self._event_reader, name="pyctr-runtime-events", daemon=True)
        self._event_thread = t
        t.start()

    def _event_reader(self) -> None:
        import msgpack

        s = self._event_sock
        assert s is not None
        while not self._closed:
            try:
                data = s.recv(1 << 16)
            except OSError:
                return
            if not data:
                continue
            try:
                ev = RuntimeEvent.from_dict(msgpack.unpackb(data))
            except Exception:
                log.warning("malformed event from a shim", exc_info=True)
                continue
            pub = self._publisher
            if pub is not None:
                try:
                    pub(ev)
                except Exception:
                    log.warning("publishing %s failed", ev.topic, exc_info=True)

    def _publish(self, topic: str, ns: str, event: dict[str, Any]) -> None:
        ev = RuntimeEvent(topic, ns, event, time.time())
        if self._publisher is not None:
            self._publisher(ev)
        else:
            self.loaded.append(ev)
            del self.loaded[:-1000]

    # -- shim pools -----------------------------------------------------------------------------------

    def _pool_file(self, ns: str) -> Path:
        return self.state / ".pools" / ns

    def current_pool(self, ns: str) -> str:
        """The pool group that tasks of ``ns`` created without a group go to (one small file read)."""
        try:
            name = self._pool_file(ns).read_text().strip()
        except OSError:
            name = ""
        if name.startswith("pool-"):
            with contextlib.suppress(InvalidArgument):
                validate_identifier(name, "shim group")
                return name
        return self.new_pool(ns)

    def new_pool(self, ns: str) -> str:
        """Open a fresh pool for ``ns`` (its shim starts with its first task) and make it the current one.

        Concurrent creators may both open one: harmless, the older pool just stops filling up."""
        name = f"pool-{os.urandom(4).hex()}"
        d = self.state / ".pools"
        d.mkdir(exist_ok=True, mode=0o700)
        tmp = d / f".{ns}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            with open(tmp, "w") as f:
                f.write(name + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, self._pool_file(ns))
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise Unavailable(f"cannot record the shim pool of namespace {ns!r} in {d}: {e}") from None
        return name

    def create(self, ns: str, id: str, bundle_spec: Mapping[str, Any], rootfs_mounts: list[Mapping[str, Any]],
               io: ProcessIO, group: str | None = None, *, start: bool = False) -> RuncTask:
        validate_identifier(ns, "namespace")
        validate_identifier(id, "task id")
        pooled = not group and not self.default_group and self.shim_pool_size > 1
        group = (self.current_pool(ns) if pooled else "") or group or self.default_group or id
        validate_identifier(group, "shim group")
        max_tasks = self.shim_pool_size if pooled else 0
        b = self.bundle(ns, id)
        if b.path.exists():
            rec = b.read("shim.json")
            if (rec is not None and self._alive_task(ns, id, rec)) or _age(b.path) < _CREATE_GRACE:
                raise AlreadyExists(f"task {id!r} already exists in namespace {ns!r}")
            self._cleanup_dead(ns, id, publish=False)  # leftovers of a crash: clear them
        spec = json.loads(json.dumps(dict(bundle_spec)))
        cg = self._prepare_spec(spec, ns, id, io, bool(rootfs_mounts))
        # the shim starts (or is found) while the bundle is written and the rootfs mounted
        shim: list[tuple[str, bool] | BaseException] = []
        first_group = group

        def find_shim() -> None:
            try:
                shim.append(self.ensure_shim(ns, first_group))
            except BaseException as e:
                shim.append(e)

        finder = threading.Thread(target=find_shim, name="pyctr-shim-start", daemon=True)
        finder.start()
        address = ""
        try:
            try:
                b.create(spec)
            except FileExistsError:
                raise AlreadyExists(f"task {id!r} already exists in namespace {ns!r}") from None
        except BaseException:
            finder.join()
            found = shim[0]
            if isinstance(found, tuple) and found[1]:  # a shim started for nothing
                with contextlib.suppress(PyctrError):
                    self.client(found[0]).call("shutdown", {}, timeout=2.0)
            raise
        try:
            try:
                b.mount_rootfs(rootfs_mounts)
            finally:
                finder.join()
            found = shim[0]
            if isinstance(found, BaseException):
                raise found
            address, fresh = found
            params = {"ns": ns, "id": id, "bundle": str(b.path), "group": group, "cgroup": cg,
                      "runc": {"binary": self.runc_path, "root": self.runc_root_for(ns)},
                      "publish": self._event_address, "io": _io_params(io, self.stdio_copy), "start": start,
                      "max_tasks": max_tasks}
            regone = full = 0
            while True:
                rec = {"address": address, "group": group, "ns": ns, "id": id, "cgroup": cg,
                       "runc_root": self.runc_root_for(ns), "created_at": time.time()}
                b.write("shim.json", rec)  # before the create: a crash in between leaves it findable
                try:
                    res = self.client(address).call("create", {**params, "group": group}, fds=io.fds())
                    break
                except ShimFull:
                    # the pool is full: the current one if another creator opened it meanwhile, else a new one
                    full += 1
                    if full > 3:
                        raise Unavailable(f"no shim pool of namespace {ns!r} takes task {id!r}; "
                                          "retry, or raise shim_pool_size") from None
                    current = self.current_pool(ns)
                    group = current if current != group and full == 1 else self.new_pool(ns)
                except (ShimGone, Unavailable) as e:
                    # the group's shim was exiting as we came: start a fresh one, once
                    if fresh or regone or not (isinstance(e, ShimGone) or "shutting down" in str(e)):
                        raise
                    regone += 1
                    self._forget_client(address)
                address, fresh = self.ensure_shim(ns, group)
            return RuncTask(self, ns, id, rec, int(res["pid"]))
        except BaseException:
            if address:
                with contextlib.suppress(PyctrError):
                    self.client(address).call("shutdown", {}, timeout=2.0)
            with contextlib.suppress(Exception):
                self._remove_runc_state(ns, id)
            with contextlib.suppress(Exception):
                cgroups.remove(cg)
            with contextlib.suppress(Exception):
                b.remove()
            raise

    def _prepare_spec(self, spec: dict[str, Any], ns: str, id: str, io: ProcessIO, mounted: bool) -> str:
        if not isinstance(spec.get("process"), dict):
            raise InvalidArgument("the OCI spec has no process")
        spec["process"]["terminal"] = bool(io.terminal)
        root = spec.setdefault("root", {})
        if mounted or not root.get("path"):
            root["path"] = "rootfs"
        linux = spec.setdefault("linux", {})
        cg = linux.get("cgroupsPath") or ""
        if not cg or cg == f"/{ns}/{id}":
            cg = self.cgroup_path(ns, id)
            linux["cgroupsPath"] = cg
        return str(cg)

    def get(self, ns: str, id: str) -> RuncTask:
        b = self.bundle(ns, id)
        rec = b.read("shim.json")
        if rec is None:
            raise task_not_found(ns, id)
        return RuncTask(self, ns, id, rec)

    def tasks(self, ns: str) -> list[RuncTask]:
        out = []
        d = self.state / ns
        if not d.is_dir():
            return []
        for entry in sorted(os.listdir(d)):
            with contextlib.suppress(NotFound):
                out.append(self.get(ns, entry))
        return out

    def namespaces(self) -> list[str]:
        skip = {"s", "shims", "runc"}
        return sorted(e.name for e in os.scandir(self.state)
                      if e.is_dir() and e.name not in skip and not e.name.startswith("."))

    def _all_ids(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for ns in self.namespaces():
            with contextlib.suppress(OSError):
                out.extend((ns, id) for id in sorted(os.listdir(self.state / ns)))
        return out

    def task_cgroups(self) -> list[dict[str, str]]:
        """Every task's ``namespace``, ``id``, ``cgroup`` and ``status`` as its files tell, calling no
        shim (the metrics plugin lists tasks so at every scrape): ``stopped`` once the shim wrote
        ``exit`` (or ``status.json``), ``created`` while runc's ``exec.fifo`` is there, else ``running``."""
        out: list[dict[str, str]] = []
        for ns, id in self._all_ids():
            b = self.bundle(ns, id)
            rec = b.read("shim.json")
            if rec is None:
                continue
            if (b.path / "exit").exists() or (b.path / "status.json").exists():
                status = "stopped"
            elif os.path.exists(os.path.join(str(rec.get("runc_root") or self.runc_root_for(ns)), id, "exec.fifo")):
                status = "created"
            else:
                status = "running"
            out.append({"namespace": ns, "id": id, "cgroup": str(rec.get("cgroup") or self.cgroup_path(ns, id)),
                        "status": status})
        return out

    # -- recovery -------------------------------------------------------------------------------------

    def _alive_task(self, ns: str, id: str, rec: Mapping[str, Any]) -> bool:
        try:
            self.client(str(rec.get("address", ""))).call("state", {"ns": ns, "id": id}, timeout=5.0)
        except (ShimGone, NotFound):
            return False
        except DeadlineExceeded:
            return True  # a shim that does not answer is not known to be dead
        return True

    def load(self) -> list[RuntimeEvent]:
        """Find every task again after a restart; settle those whose shim died.

        Returns the events to publish for them (``/tasks/exit`` with the recorded status or 255).
        """
        ids = self._all_ids()
        if len(ids) > 4:  # a hung shim costs its timeout: look at the bundles side by side
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(16, len(ids))) as ex:
                settled = list(ex.map(lambda k: self._load_one(*k), ids))
        else:
            settled = [self._load_one(ns, id) for ns, id in ids]
        events = [ev for evs in settled for ev in evs]
        return events

    def _load_one(self, ns: str, id: str) -> list[RuntimeEvent]:
        b = self.bundle(ns, id)
        young = _age(b.path) < _CREATE_GRACE  # maybe being created right now by another pyctr process
        rec = b.read("shim.json")
        if rec is None:
            if b.read("status.json") is None and not young:
                log.info("removing incomplete bundle %s/%s", ns, id)
                with contextlib.suppress(Exception):
                    self._remove_runc_state(ns, id)
                with contextlib.suppress(Exception):
                    b.remove()
            return []
        if b.read("status.json") is not None:
            return []
        try:
            self.client(str(rec.get("address", ""))).call("state", {"ns": ns, "id": id}, timeout=5.0)
            return []
        except NotFound:
            if young:
                return []  # its shim answers but does not know it yet: a create in flight
        except DeadlineExceeded:
            log.warning("task %s/%s: its shim does not answer (busy or stopped); left alone", ns, id)
            return []
        except ShimGone:
            pass
        self._cleanup_dead(ns, id, publish=False)
        st = b.read("status.json") or {}
        return [RuntimeEvent("/tasks/exit", ns, {"container_id": id, "id": id, "pid": int(st.get("pid", 0)),
                                                 "exit_status": int(st.get("exit_status", EXIT_STATUS_SHIM_DIED)),
                                                 "exited_at": float(st.get("exited_at", 0.0))}, time.time())]

    def _remove_runc_state(self, ns: str, id: str) -> None:
        subprocess.run([*R.global_args(self.runc_binary, self.runc_root_for(ns), os.devnull),
                        *R.delete_args(id, force=True)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=30, check=False)

    def _cleanup_dead(self, ns: str, id: str, publish: bool = True) -> ExitStatus:
        """The shim of ``ns/id`` is gone: record how the task ended and clear everything but the bundle."""
        b = self.bundle(ns, id)
        rec = b.read("shim.json") or {}
        self._forget_client(str(rec.get("address", "")))
        st = b.read("status.json")
        if st is not None:
            return ExitStatus(int(st["exit_status"]), float(st["exited_at"]))
        ex = b.read("exit")
        if ex is not None:
            status = ExitStatus(int(ex["exit_status"]), float(ex["exited_at"]))
            reason = ""
        else:
            status = ExitStatus(EXIT_STATUS_SHIM_DIED, time.time())
            reason = "shim died"
        pid = _read_pid(b.path / "init.pid")
        self._remove_runc_state(ns, id)  # kills what is left of the container
        cg = str(rec.get("cgroup") or self.cgroup_path(ns, id))
        with contextlib.suppress(OSError):
            cgroups.remove(cg)
        b.unmount_rootfs()
        b.write("status.json", {"exit_status": status.exit_status, "exited_at": status.exited_at,
                                "reason": reason, "pid": pid}, sync=True)
        log.warning("task %s/%s: shim gone; %s", ns, id, reason or f"exited with {status.exit_status}")
        if publish:
            self._publish("/tasks/exit", ns, {"container_id": id, "id": id, "pid": pid, **status.to_dict()})
        return status

    def close(self) -> None:
        self._closed = True
        self._reap_children(wait=True)
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            c.close()
        if self._event_sock is not None:
            # wake the reader with an empty datagram (closing does not interrupt its recv)
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as w:
                w.sendto(b"", self._event_address)
            if self._event_thread is not None:
                self._event_thread.join(timeout=2.0)
            self._event_sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self._event_address)
        self._tidy_sock_dir()


@functools.cache
def _code_id() -> str:
    """What the shim code is (sizes and times of its files): a zygote of other code is replaced."""
    here = Path(__file__).parent
    files = [here / "shim.py", here / "runc.py"]
    import pyctr._speedups

    for d in pyctr._speedups.__path__:
        files.extend(sorted(Path(d).glob("*shimio*")))
    parts = []
    for f in files:
        with contextlib.suppress(OSError):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _ping(address: str) -> dict[str, Any] | None:
    c = ShimClient(address)
    try:
        return c.ping(timeout=1.0)
    finally:
        c.close()


#: A bundle younger than this may be in the middle of a create by another process: load() leaves it.
_CREATE_GRACE = 30.0


def _age(path: Path) -> float:
    try:
        return time.time() - os.stat(path / "config.json").st_mtime
    except OSError:
        try:
            return time.time() - os.stat(path).st_mtime
        except OSError:
            return float("inf")


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def _io_params(io: ProcessIO, copy: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"terminal": io.terminal, "log_uri": io.log_uri, "json_log": io.json_log,
                           "copy": copy}
    idx = 0
    for name in ("stdin", "stdout", "stderr"):
        v = getattr(io, name)
        if isinstance(v, int) and not isinstance(v, bool):
            out[name] = {"fd": idx}
            idx += 1
        else:
            out[name] = str(v or "")
    return out


class RuncTask:
    """A task of :class:`RuncRuntime` (see :class:`pyctr.runtime.Task`)."""

    def __init__(self, rt: RuncRuntime, ns: str, id: str, record: Mapping[str, Any], pid: int = 0) -> None:
        self._rt = rt
        self._ns = ns
        self._id = id
        self.record = dict(record)
        self._pid = pid
        self.address = str(record.get("address", ""))

    @property
    def namespace(self) -> str:
        return self._ns

    @property
    def id(self) -> str:
        return self._id

    @property
    def pid(self) -> int:
        if not self._pid:
            self._pid = _read_pid(self._rt.bundle(self._ns, self._id).path / "init.pid") or self.state().pid
        return self._pid

    @property
    def bundle(self) -> Bundle:
        return self._rt.bundle(self._ns, self._id)

    def __repr__(self) -> str:
        return f"RuncTask({self._ns}/{self._id})"

    def _call(self, method: str, exec_id: str = "", timeout: float | None = -1.0,
              fds: list[int] | None = None, dedicated: bool = False, **params: Any) -> Any:
        dead = self.bundle.read("status.json")
        if dead is not None:
            raise FailedPrecondition(f"task {self._id!r} is stopped ({dead.get('reason') or 'exited'})")
        p = {"ns": self._ns, "id": self._id, "exec_id": exec_id, **params}
        try:
            return self._rt.client(self.address).call(method, p, fds=fds or (), timeout=timeout,
                                                       dedicated=dedicated)
        except ShimGone:
            if not self.bundle.path.exists():
                raise task_not_found(self._ns, self._id) from None
            self._rt._cleanup_dead(self._ns, self._id)
            raise
        except NotFound:
            # the group's socket answers, but from a later shim that never had this task: its own
            # shim died (an exec that is not found is just that)
            if exec_id or not self.bundle.path.exists() or _age(self.bundle.path) < _CREATE_GRACE:
                raise
            self._rt._cleanup_dead(self._ns, self._id)
            raise ShimGone(f"the shim of task {self._id!r} is gone") from None

    def _dead_state(self, exec_id: str) -> TaskState | None:
        st = self.bundle.read("status.json")
        if st is None:
            return None
        if exec_id:
            raise NotFound(f"exec {exec_id!r} not found in task {self._id!r} (its shim is gone)")
        return TaskState(id=self._id, namespace=self._ns, pid=int(st.get("pid", 0)),
                         status=TaskStatus.STOPPED,
                         exit_status=int(st["exit_status"]), exited_at=float(st["exited_at"]),
                         bundle=str(self.bundle.path), group=str(self.record.get("group", "")),
                         reason=str(st.get("reason", "")))

    def state(self, exec_id: str = "") -> TaskState:
        dead = self._dead_state(exec_id)
        if dead is not None:
            return dead
        try:
            return TaskState.from_dict(self._call("state", exec_id))
        except ShimGone:
            dead = self._dead_state(exec_id)
            if dead is None:
                raise
            return dead

    def start(self, exec_id: str = "") -> int:
        res = self._call("start", exec_id)
        pid = int(res["pid"])
        if not exec_id:
            self._pid = pid
        return pid

    def kill(self, signal: int = int(_signal.SIGTERM), all: bool = False, exec_id: str = "") -> None:
        self._call("kill", exec_id, signal=int(signal), all=bool(all))

    def exec(self, exec_id: str, process_spec: Mapping[str, Any], io: ProcessIO) -> None:
        spec = dict(process_spec)
        spec["terminal"] = bool(io.terminal)
        self._call("exec", exec_id, spec=spec, io=_io_params(io, self._rt.stdio_copy), fds=io.fds())

    def pause(self) -> None:
        self._call("pause")

    def resume(self) -> None:
        self._call("resume")

    def pids(self) -> list[ProcessInfo]:
        return [ProcessInfo.from_dict(d) for d in self._call("pids")]

    def stats(self) -> dict[str, Any]:
        st = self.state()
        if st.status == TaskStatus.STOPPED:
            raise FailedPrecondition(f"task {self._id!r} is stopped: no stats")
        return cgroups.stats(str(self.record.get("cgroup") or self._rt.cgroup_path(self._ns, self._id)))

    def wait(self, timeout: float | None = None, exec_id: str = "") -> ExitStatus:
        dead = self._dead_state(exec_id)
        if dead is not None:
            return ExitStatus(dead.exit_status, dead.exited_at)
        try:
            res = self._call("wait", exec_id, timeout=timeout, dedicated=True)
        except DeadlineExceeded:
            raise DeadlineExceeded(f"task {self._id!r} still running after {timeout:g} s") from None
        except ShimGone:
            dead = self._dead_state(exec_id)
            if dead is None:
                raise
            return ExitStatus(dead.exit_status, dead.exited_at)
        return ExitStatus.from_dict(res)

    def delete(self, exec_id: str = "", force: bool = False) -> ExitStatus:
        b = self.bundle
        cg = str(self.record.get("cgroup") or self._rt.cgroup_path(self._ns, self._id))
        if exec_id:
            res = self._call("delete", exec_id, force=force)
            return ExitStatus(int(res["exit_status"]), float(res["exited_at"]))
        dead = b.read("status.json")
        if dead is not None:
            status = ExitStatus(int(dead["exit_status"]), float(dead["exited_at"]))
        else:
            try:
                res = self._call("delete", force=force)
                status = ExitStatus(int(res["exit_status"]), float(res["exited_at"]))
            except ShimGone:
                dead = b.read("status.json") or {"exit_status": EXIT_STATUS_SHIM_DIED,
                                                 "exited_at": time.time()}
                status = ExitStatus(int(dead["exit_status"]), float(dead["exited_at"]))
        with contextlib.suppress(OSError):
            cgroups.remove(cg)  # runc delete removed it; a dead shim's is removed here
        b.remove()
        if dead is not None:
            self._rt._publish("/tasks/delete", self._ns, {"container_id": self._id, "id": self._id,
                                                          "pid": int(dead.get("pid", 0)), **status.to_dict()})
        return status

    def resize_pty(self, width: int, height: int, exec_id: str = "") -> None:
        self._call("resize_pty", exec_id, width=int(width), height=int(height))

    def close_stdin(self, exec_id: str = "") -> None:
        self._call("close_stdin", exec_id)
