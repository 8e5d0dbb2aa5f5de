"""The containers service: container records, their snapshots and their tasks, together.

:class:`ContainerService` is what the CLI (and later the daemon) calls.  It combines the container
store (:mod:`pyctr.metadata.containers`), the images service (to find an image's config and unpack
it), the namespaced snapshotter (the container's writable rootfs) and the runtime plugin (tasks)::

    svc = client.plugin("service", "pyctr.containers.metadata")
    c = svc.create_container("default", "web", "docker.io/library/alpine:latest", RunOptions(args=["sh"]))
    task = svc.create_task("default", "web", ProcessIO(stdout=1, stderr=2))
    task.start(); task.wait(); svc.delete_container("default", "web", force=True)

Every method that creates several things undoes what it made, in reverse order, when a later step
fails: no snapshot, record, mount, cgroup or shim is left behind by a failed call.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyctr.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PyctrError
from pyctr.metadata.containers import Container, ContainerStore, RuntimeInfo, validate_id

if TYPE_CHECKING:
    from pyctr.oci import RunOptions
    from pyctr.runtime import ExitStatus, ProcessIO, Task, TaskState

log = logging.getLogger("pyctr.plugin.pyctr.containers.metadata")

DEFAULT_RUNTIME = "pyctr.runtime.runc"
EXT_RUN_OPTIONS = "pyctr.run-options"
LABEL_IMAGE_STOP_SIGNAL = "io.containerd.image.config.stop-signal"
LABEL_DEFAULT_SNAPSHOTTER = "containerd.io/defaults/snapshotter"


def new_id() -> str:
    """A fresh container id: 12 random hex digits (docker's short-id length)."""
    return secrets.token_hex(6)


class ContainerService:
    """Containers + snapshots + tasks, per namespace.  Plugins are reached lazily: listing containers
    never starts the runtime plugin."""

    def __init__(self, registry: Any, *, root: Path, state: Path, config: Mapping[str, Any]) -> None:
        self.registry = registry
        self.root = Path(root)
        self.state = Path(state)
        self.config = dict(config)
        self._store: ContainerStore | None = None

    # -- plugins -----------------------------------------------------------------------------------

    @property
    def md(self) -> Any:
        return self.registry.get("metadata")

    @property
    def store(self) -> ContainerStore:
        if self._store is None:
            self._store = ContainerStore(self.md.db, publish=self.md.publish)
        return self._store

    @property
    def images(self) -> Any:
        return self.registry.get("images")

    def runtime(self, name: str = "") -> Any:
        if not name or name == DEFAULT_RUNTIME or name in ("io.containerd.runc.v2", "runc"):
            return self.registry.get("runtime")
        return self.registry.get_named("runtime", name)

    # -- records -----------------------------------------------------------------------------------

    def get(self, ns: str, id_: str) -> Container:
        return self.store.get(ns, id_)

    def list(self, ns: str, filters: Iterable[str] = ()) -> list[Container]:
        return self.store.list(ns, filters)

    def set_labels(self, ns: str, id_: str, labels: Mapping[str, str]) -> Container:
        return self.store.set_labels(ns, id_, labels)

    def log_path(self, ns: str, id_: str) -> Path:
        """Where a container's output is kept for ``pyctr logs`` (docker's json-file format)."""
        return self.root / ns / id_ / "log.json"

    def image_config(self, ns: str, image_name: str) -> tuple[Any, dict[str, Any], str]:
        """``(image record, image config document, top layer chain id)`` for the host platform."""
        from pyctr import images as imgs
        from pyctr import platforms as plat

        svc = self.images
        img = svc.resolve(ns, image_name)
        read = svc.reader(ns)
        manifest = imgs.manifest_for_platform(read, img.target, plat.default())
        config_desc, _ = imgs.parse_manifest(manifest, read(manifest))
        cfg = imgs.parse_config(read(config_desc))
        return img, cfg.raw, imgs.chain_id(cfg.diff_ids) if cfg.diff_ids else ""

    def snapshotter_name(self, ns: str, name: str | None = None) -> str:
        """The images service's choice (``name``, the namespace's default label, the configured one),
        but without starting every snapshot plugin just to learn the default: overlayfs when it loads."""
        if name:
            return name
        images = self.images
        labels = self.md.namespaces.labels(ns) if self.md.namespaces.exists(ns) else {}
        if labels.get(LABEL_DEFAULT_SNAPSHOTTER) or images.config.get("snapshotter"):
            return str(images.snapshotter_name(ns))
        try:
            self.md.snapshotter("overlayfs")
            return "overlayfs"
        except PyctrError:
            return str(images.snapshotter_name(ns))

    def _ensure_unpacked(self, ns: str, image_name: str, snapshotter: str, top: str) -> None:
        if not top:
            return
        sn = self.md.snapshotter(snapshotter)
        try:
            info = sn.stat(ns, top)
            if str(getattr(info, "kind", "")).lower() == "committed":
                return
        except NotFound:
            pass
        self.images.unpack(ns, image_name, snapshotter)

    def create_container(
        self,
        ns: str,
        id_: str,
        image_name: str,
        options: RunOptions | Mapping[str, Any],
        *,
        snapshotter: str | None = None,
        runtime: str = "",
        runtime_options: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Container:
        """Make the container ``id_`` from ``image_name``: unpack the image if needed, prepare the
        writable snapshot (key = the id), generate the OCI spec and write the record.  On failure
        nothing is left (AlreadyExists when the id is taken, NotFound when the image is missing)."""
        from pyctr.oci import RunOptions, generate_spec, stop_signal
        from pyctr.usergroup import root_for_mounts

        opts = options if isinstance(options, RunOptions) else RunOptions.from_dict(options)
        validate_id(id_)
        if self.store.exists(ns, id_):
            raise AlreadyExists(f"container {id_!r} already exists in namespace {ns!r}")
        from pyctr.runner import trace

        img, config, top = self.image_config(ns, image_name)
        sn_name = self.snapshotter_name(ns, snapshotter)
        trace(f"snapshotter {sn_name} ready")
        self._ensure_unpacked(ns, image_name, sn_name, top)
        sn = self.md.snapshotter(sn_name)
        all_labels = dict(labels or {})
        sig = stop_signal(config)
        if sig:
            all_labels.setdefault(LABEL_IMAGE_STOP_SIGNAL, sig)
        # One write transaction for the snapshot and the record: the collector never sees the snapshot
        # without the record that holds it, and a failure leaves neither.
        with self.md.db.tx():
            try:
                mounts = sn.prepare(ns, id_, top)
            except AlreadyExists:
                raise AlreadyExists(
                    f"snapshot {id_!r} already exists in {sn_name}: remove it or choose another name"
                ) from None
            trace("snapshot prepared")
            try:
                spec = generate_spec(config, root_for_mounts(mounts), opts, container_id=id_, namespace=ns)
                trace("spec generated")
                rec = Container(
                    id=id_,
                    image=img.name,
                    snapshotter=sn_name,
                    snapshot_key=id_,
                    runtime=RuntimeInfo(runtime or DEFAULT_RUNTIME, dict(runtime_options or {})),
                    spec=spec,
                    labels=all_labels,
                    extensions={EXT_RUN_OPTIONS: opts.to_dict()},
                )
                return self.store.create(ns, rec)
            except BaseException:
                _rollback([lambda: sn.remove(ns, id_)])
                raise

    def delete_container(self, ns: str, id_: str, *, force: bool = False,
                         keep_snapshot: bool = False) -> None:
        """Remove the record and its snapshot.  A task that still exists must be stopped first:
        FailedPrecondition names it, unless ``force`` (then the task is killed and deleted)."""
        c = self.store.get(ns, id_)
        task = self._find_task(ns, id_, c)
        if task is not None:
            st = task.state()
            running = str(st.status) not in ("stopped", "created", "unknown")
            if running and not force:
                raise FailedPrecondition(
                    f"container {id_!r} has a {st.status} task: stop it (pyctr tasks kill) or use --force"
                )
            task.delete(force=True)
        self.release_network(ns, id_, c, quiet=force)
        if not keep_snapshot and c.snapshot_key:
            with contextlib.suppress(NotFound):
                self.md.snapshotter(c.snapshotter).remove(ns, c.snapshot_key)
        self.store.delete(ns, id_)
        d = self.root / ns / id_
        if d.exists():
            shutil.rmtree(d, ignore_errors=True)

    # -- tasks -------------------------------------------------------------------------------------

    def _find_task(self, ns: str, id_: str, c: Container | None = None) -> Task | None:
        c = c or self.store.get(ns, id_)
        try:
            return self.runtime(c.runtime.name).get(ns, id_)  # type: ignore[no-any-return]
        except NotFound:
            return None

    def get_task(self, ns: str, id_: str) -> Task:
        c = self.store.get(ns, id_)
        task = self._find_task(ns, id_, c)
        if task is None:
            raise NotFound(f"container {id_!r} has no task in namespace {ns!r}")
        return task

    def create_task(self, ns: str, id_: str, io: ProcessIO | Mapping[str, Any], *,
                    group: str | None = None, start: bool = False) -> Task:
        """Create the container's task (state CREATED): mount the snapshot, start a shim, ``runc
        create``.  CommandNotFound (exit 127) when the command is not in the image.  ``io`` may be a
        :class:`~pyctr.runtime.ProcessIO` or its dict."""
        io = _process_io(io)
        c = self.store.get(ns, id_)
        mounts = self.md.snapshotter(c.snapshotter).mounts(ns, c.snapshot_key) if c.snapshot_key else []
        rt = self.runtime(c.runtime.name)
        try:
            rt.get(ns, id_)
        except NotFound:
            pass
        else:
            raise AlreadyExists(f"container {id_!r} already has a task")
        net = self._network(c)
        spec = c.spec if net is None else net.attach(ns, id_, c.spec, c.extensions.get(EXT_RUN_OPTIONS) or {})
        try:
            # ``start`` only when asked: a third-party runtime written before it existed still serves the rest
            kw = {"start": True} if start else {}
            task: Task = rt.create(ns, id_, spec, [m.to_dict() for m in mounts], io, group, **kw)
        except BaseException:
            self.release_network(ns, id_, c, quiet=True)
            raise
        return task

    def _network(self, c: Container) -> Any:
        """The network plugin when the container asked for a network (``--net NAME``, ``-p``)."""
        from pyctr.network import wants_network

        return self.registry.get("network") if wants_network(c.extensions.get(EXT_RUN_OPTIONS)) else None

    def release_network(self, ns: str, id_: str, c: Container | None = None, *, quiet: bool = False) -> None:
        """Detach the container from its network (after its task is deleted); ``quiet`` logs failures."""
        try:
            net = self._network(c or self.store.get(ns, id_))
            if net is not None:
                net.detach(ns, id_)
        except Exception:
            if not quiet:
                raise
            log.warning("detaching %s/%s from its network failed", ns, id_, exc_info=True)

    def start_task(self, ns: str, id_: str, io: ProcessIO | Mapping[str, Any], *,
                   group: str | None = None) -> Task:
        """Create and start the task; if starting fails, the task is deleted again."""
        task = self.create_task(ns, id_, io, group=group)
        try:
            task.start()
        except BaseException:
            with contextlib.suppress(Exception):
                task.delete(force=True)
            self.release_network(ns, id_, quiet=True)
            raise
        return task

    def list_tasks(self, ns: str) -> builtins.list[TaskState]:
        """States of every task in ``ns`` (of containers' runtimes, the default one at least)."""
        names = {c.runtime.name for c in self.store.list(ns)} or {DEFAULT_RUNTIME}
        out: dict[str, TaskState] = {}
        for name in sorted(names):
            try:
                rt = self.runtime(name)
            except PyctrError:
                continue
            for t in rt.tasks(ns):
                try:
                    out.setdefault(t.id, t.state())
                except NotFound:
                    continue
        return [out[k] for k in sorted(out)]

    def kill_task(self, ns: str, id_: str, signal: int = 15, *, all: bool = False, exec_id: str = "") -> None:
        """Send ``signal`` (see :func:`effective_signal` for a container init that would drop it)."""
        task = self.get_task(ns, id_)
        if not exec_id and not all:
            from pyctr.signals import effective_signal

            signal = effective_signal(task.pid, signal)
        task.kill(signal, all=all, exec_id=exec_id)

    def delete_task(self, ns: str, id_: str, *, force: bool = False, exec_id: str = "") -> ExitStatus:
        task = self.get_task(ns, id_)
        status = task.delete(exec_id=exec_id, force=force)
        if not exec_id:
            self.release_network(ns, id_)
        return status

    def exec_process(
        self,
        ns: str,
        id_: str,
        args: builtins.list[str],
        io: ProcessIO | Mapping[str, Any],
        *,
        exec_id: str = "",
        tty: bool = False,
        env: Iterable[str] = (),
        cwd: str = "",
        user: str = "",
    ) -> tuple[Task, str]:
        """Add a process to the running task (not started yet: ``task.start(exec_id)``).  Returns the
        task and the exec id.  FailedPrecondition when the task is not running."""
        from pyctr.oci import merge_env
        from pyctr.usergroup import resolve_user, root_for_mounts

        if not args:
            raise InvalidArgument("exec needs a command")
        io = _process_io(io)
        c = self.store.get(ns, id_)
        task = self._find_task(ns, id_, c)
        if task is None:
            raise FailedPrecondition(f"container {id_!r} is not running (it has no task)")
        st = task.state()
        if str(st.status) != "running":
            raise FailedPrecondition(f"container {id_!r} is not running (task is {st.status})")
        exec_id = exec_id or "exec-" + secrets.token_hex(4)
        proc = dict(c.spec.get("process") or {})
        proc["args"] = list(args)
        proc["terminal"] = bool(tty)
        env_list = list(proc.get("env") or [])
        if tty:
            env_list = merge_env(env_list, ["TERM=xterm"])
        proc["env"] = merge_env(env_list, env)
        if cwd:
            if not cwd.startswith("/"):
                raise InvalidArgument(f"working directory {cwd!r} must be an absolute path")
            proc["cwd"] = cwd
        if user:
            mounts = self.md.snapshotter(c.snapshotter).mounts(ns, c.snapshot_key) if c.snapshot_key else []
            proc["user"] = resolve_user(user, root_for_mounts(mounts)).to_dict()
        proc.pop("consoleSize", None)
        task.exec(exec_id, proc, io)
        return task, exec_id

    def batch_run(self, ns: str, specs: builtins.list[Mapping[str, Any]] | None = None,
                  **kw: Any) -> Iterator[dict[str, Any]]:
        """Launch containers in bulk (:func:`pyctr.batch.batch_run`): result and progress dicts, streamed."""
        from pyctr.batch import batch_run, dicts

        kw["progress"] = True  # the ticks keep a daemon's stream checking that its client is still there
        return dicts(batch_run(self, ns, specs, **kw))

    def batch_remove(self, ns: str, filters: builtins.list[str], parallel: int = 8) -> Iterator[dict[str, Any]]:
        """Remove every container matching ``filters`` with its task: ``{"id", "error"}`` each."""
        from pyctr.batch import batch_remove

        return batch_remove(self, ns, filters, parallel=parallel)

    def close(self) -> None:
        pass


def _process_io(io: ProcessIO | Mapping[str, Any]) -> ProcessIO:
    from pyctr.runtime import ProcessIO

    return io if isinstance(io, ProcessIO) else ProcessIO.from_dict(io)


def _rollback(undo: list[Callable[[], None]]) -> None:
    for fn in reversed(undo):
        try:
            fn()
        except Exception:
            log.warning("rollback step failed", exc_info=True)


__all__ = ["DEFAULT_RUNTIME", "ContainerService", "new_id"]
