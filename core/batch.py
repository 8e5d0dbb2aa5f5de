"""Launching containers in bulk (``pyctr batch run``): the batch engine.

:func:`batch_run` starts N containers -- ``count`` copies of one image and command, or a list of
:class:`BatchSpec` entries (image, command, env, mounts, resources, labels each) -- with at most
``parallel`` alive at once, and yields a :class:`BatchResult` per container as it finishes (or, with
``detach``, as it is started), interleaved with :class:`BatchProgress` ticks for progress bars.

Where the time goes, and what is done about it (figures in ``bench/RESULTS.md``):

* **Once per batch**: each distinct image is resolved and unpacked once; each distinct set of options
  gets one OCI spec, generated once (default seccomp profile included) and serialised once with a
  placeholder for the container id, so a container's ``config.json`` and its record's spec are a
  string replace.  Its seccomp profile is compiled once too (:mod:`pyctr.seccomp_filter`): in direct
  mode each container's process starts as the ``pyctr-seccomp-exec`` helper, which loads the compiled
  filter and executes the command, instead of runc compiling the profile in every container (~6 ms
  of the ~26 ms of CPU a short container costs).
* **Once per chunk** (up to 64 containers): the active snapshots and the container records are written
  in ONE metadata transaction (a savepoint per entry, so one bad entry fails alone); removal with
  ``rm`` likewise deletes a chunk of snapshots and records in one transaction.
* **Per container**, run to completion (the default): one ``runc run`` (create, start, wait and delete
  in one invocation -- a third of the runc processes of create + start + delete) spawned with
  ``posix_spawn`` and supervised by the batch itself, which waits for it anyway; the rootfs is mounted
  into a bundle on the batch's own tmpfs in the runtime's state directory, beside runc's state (a
  later batch clears what a crashed one left).  No per-container interpreter, no shim round trips.
* **Writable layers of ``rm`` batches** (``rootfs="tmpfs"``, the default with ``rm`` on the overlayfs
  snapshotter): each container's overlay upper and work directories live on that tmpfs, over one
  read-only view of the image (a snapshot per batch, not per container): no snapshot record and no
  directories on disk per container.  What a container writes to its root file system is memory,
  charged to its memory cgroup, and gone with it -- as ``--rm`` means.  ``rootfs="snapshot"`` gives
  each container an active snapshot of the snapshotter instead (the only way without ``rm``, where
  the containers stay for inspection).
* **Per container, detached** (``detach``): the containers must outlive the caller, so they are
  tasks of the runtime plugin, put in shared shims of ``group_size`` containers each (``group=``
  of :meth:`pyctr.runtime.Runtime.create`): one Python shim per group instead of one per container.
* Nothing here lists or scans what already runs: every lookup is by id.

Failure of one entry (a missing command, a runc error, a taken id) is reported in that entry's result
(``error``, ``exit_status`` 127 for a missing command) and the others go on.  Closing the iterator
early (Ctrl-C in the CLI, a client gone from the daemon) stops launching, kills the containers this
batch runs in the foreground, and removes what it made that is not a finished container kept on
purpose: with ``rm`` nothing of the batch is left (no mount, shim, cgroup, runc state or record).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import queue
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from pyctr.plugins.containers.metadata.service import DEFAULT_RUNTIME, EXT_RUN_OPTIONS, LABEL_IMAGE_STOP_SIGNAL

from .errdefs import AlreadyExists, InvalidArgument, NotFound, PyctrError

log = logging.getLogger("pyctr.batch")

#: The label every container of a batch carries (``pyctr batch rm`` finds a batch by it).
LABEL_BATCH_ID = "pyctr.batch.id"

#: Stands for the container id in a serialised spec template (no JSON escaping needed).
_TOKEN = "@@pyctr-batch-id@@"
_CHUNK = 64
_TICK = 0.25


@dataclass
class BatchSpec:
    """One entry of a batch (a line of ``--spec FILE.jsonl``).

    ``args`` replace the image's command (``None``: the image's own).  ``mounts`` are OCI mount dicts
    or ``--mount`` strings (``type=bind,src=...,dst=...``).  ``resources``: ``memory`` (bytes or
    ``64m``), ``cpus``, ``pids_limit``.  ``net``: ``none`` (own namespace, lo only) or ``host``.
    ``id``: the container id (default: the batch id and the entry's index).
    """

    image: str = ""
    args: list[str] | None = None
    env: list[str] = field(default_factory=list)
    mounts: list[Any] = field(default_factory=list)
    resources: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    net: str = "none"
    id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BatchSpec:
        known = {"image", "args", "command", "cmd", "env", "mounts", "resources", "labels", "net", "id",
                 "memory", "cpus", "pids_limit"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidArgument(f"batch entry: unknown field(s) {', '.join(unknown)} (known: "
                                  f"{', '.join(sorted(known))})")
        args = d.get("args", d.get("command", d.get("cmd")))
        if isinstance(args, str):
            args = [args]
        if args is not None and (not isinstance(args, list) or not all(isinstance(a, str) for a in args)):
            raise InvalidArgument("batch entry: args must be a list of strings")
        env = d.get("env") or []
        if isinstance(env, Mapping):
            env = [f"{k}={v}" for k, v in env.items()]
        labels = d.get("labels") or {}
        if not isinstance(labels, Mapping):
            raise InvalidArgument("batch entry: labels must be an object of strings")
        resources = dict(d.get("resources") or {})
        for k in ("memory", "cpus", "pids_limit"):
            if k in d:
                resources[k] = d[k]
        return cls(image=str(d.get("image") or ""), args=list(args) if args is not None else None,
                   env=[str(e) for e in env], mounts=list(d.get("mounts") or []), resources=resources,
                   labels={str(k): str(v) for k, v in labels.items()}, net=str(d.get("net") or "none"),
                   id=str(d.get("id") or ""))


@dataclass
class BatchResult:
    """How one container of a batch went.

    ``exit_status`` is ``None`` while it runs (detached); ``error`` is set when the container could
    not be made or started (``exit_status`` then 127 for a missing command, else 125 as docker does).
    ``started_at`` is Unix time, ``duration`` seconds from launch to exit (or to started, detached).
    """

    id: str
    index: int
    pid: int = 0
    started_at: float = 0.0
    exit_status: int | None = None
    duration: float = 0.0
    error: str = ""
    status: str = "exited"  # exited | running | failed

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = "result"
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BatchResult:
        es = d.get("exit_status")
        return cls(id=str(d["id"]), index=int(d.get("index", 0)), pid=int(d.get("pid") or 0),
                   started_at=float(d.get("started_at") or 0.0), exit_status=None if es is None else int(es),
                   duration=float(d.get("duration") or 0.0), error=str(d.get("error") or ""),
                   status=str(d.get("status") or "exited"))


@dataclass
class BatchProgress:
    """Counts so far: ``total`` to launch, ``started``, ``running`` now, ``exited``, ``failed``."""

    batch_id: str
    total: int
    started: int = 0
    running: int = 0
    exited: int = 0
    failed: int = 0
    elapsed: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = "progress"
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BatchProgress:
        return cls(batch_id=str(d.get("batch_id", "")), total=int(d.get("total", 0)),
                   started=int(d.get("started", 0)), running=int(d.get("running", 0)),
                   exited=int(d.get("exited", 0)), failed=int(d.get("failed", 0)),
                   elapsed=float(d.get("elapsed", 0.0)))


def from_wire(d: Mapping[str, Any]) -> BatchResult | BatchProgress:
    return BatchProgress.from_dict(d) if d.get("kind") == "progress" else BatchResult.from_dict(d)


def new_batch_id() -> str:
    return "b" + secrets.token_hex(4)


def _run_options(entry: BatchSpec) -> Any:
    from . import oci

    mounts = [oci.parse_mount(m) if isinstance(m, str) else dict(m) for m in entry.mounts]
    res = entry.resources
    memory = res.get("memory")
    if isinstance(memory, str):
        memory = oci.parse_size(memory)
    cpus = res.get("cpus")
    if isinstance(cpus, str):
        cpus = oci.parse_cpus(cpus)
    pids = res.get("pids_limit")
    net = entry.net or "none"
    if net not in oci.NET_MODES:
        raise InvalidArgument(f"batch: --net {net!r} is not supported (none or host)")
    return oci.RunOptions(args=list(entry.args or []), env=list(entry.env), mounts=mounts, net=net,
                          memory=int(memory) if memory is not None else None,
                          cpus=float(cpus) if cpus is not None else None,
                          pids_limit=int(pids) if pids is not None else None)


class _Image:
    """What a batch needs of an image, found once: record name, config, top chain id, snapshotter."""

    def __init__(self, svc: Any, ns: str, name: str) -> None:
        img, self.config, self.top = svc.image_config(ns, name)
        self.name = str(img.name)
        self.sn_name = str(svc.snapshotter_name(ns))
        svc._ensure_unpacked(ns, name, self.sn_name, self.top)
        self.sn = svc.md.snapshotter(self.sn_name)
        from .oci import stop_signal

        self.stop_signal = stop_signal(self.config)


# A precompiled seccomp filter reaches the container's process on fd 3 and the helper that loads it
# on fd 4 (``runc run --preserve-fds 2``); the process is the helper, executed through its descriptor.
_FILTER_FD = 3
_HELPER_FD = 4
_HELPER_ARG0 = f"/proc/self/fd/{_HELPER_FD}"


def _command_in_image(root: Any, spec: Mapping[str, Any], mounts: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the command is an executable file of the image, found as runc would find it (absolute
    path, or the first absolute ``$PATH`` entry holding it) and not under a mount of the entry's.
    Only then may the helper start it: a missing command must stay runc's error, which names it."""
    import stat

    if root is None:
        return False
    args = spec["process"].get("args") or []
    if not args or not args[0]:
        return False
    name = args[0]
    if "/" in name:
        if not name.startswith("/"):
            return False
        candidates = [name]
    else:
        path = next((e[5:] for e in spec["process"].get("env") or [] if e.startswith("PATH=")), "")
        candidates = [f"{d.rstrip('/')}/{name}" for d in path.split(":") if d.startswith("/")]
    dests = [str(m.get("destination", "")).rstrip("/") + "/" for m in mounts]
    for c in candidates:
        if any((c + "/").startswith(d) for d in dests):
            return False  # a mount may bring (or hide) it
        found = root.resolve(c)
        if found is not None:
            st = found[1]
            return stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)
    return False


def _compiled_seccomp(spec: Mapping[str, Any]) -> int:
    """A sealed memfd holding the spec's seccomp profile compiled by :mod:`pyctr.seccomp_filter`, or
    -1 when it is to be left to runc."""
    from . import seccomp_filter

    if not seccomp_filter.loadable(spec):
        return -1
    try:
        program = seccomp_filter.compile_profile(spec["linux"]["seccomp"])
    except seccomp_filter.CompileError as e:
        log.debug("batch: seccomp profile left to runc: %s", e)
        return -1
    fd = os.memfd_create("pyctr-seccomp-filter", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, program)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK
                    | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return _above_stdio(fd)


def _above_stdio(fd: int) -> int:
    """``fd`` moved to 10 or above (close-on-exec), never one of the numbers a runc child's
    descriptors are dup'ed to (0-4); the original is closed."""
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    finally:
        os.close(fd)


class _Template:
    """A spec generated once (with the first container's rootfs for user lookups), kept serialised
    with :data:`_TOKEN` for the id, and the record fields that go with it.

    With ``precompile`` (direct mode) and a profile :mod:`pyctr.seccomp_filter` can take over, the
    seccomp profile is compiled here, once, into a sealed memfd (:attr:`filter_fd`), and the bundle's
    spec starts the container's process as the ``pyctr-seccomp-exec`` helper, which loads it; the
    record keeps the spec as asked for (profile and command)."""

    def __init__(self, image: _Image, opts: Any, ns: str, cgroup_path: Callable[[str], str],
                 mounts: Sequence[Any], precompile: bool = False) -> None:
        from .oci import generate_spec
        from .usergroup import root_for_mounts

        root = root_for_mounts(mounts)
        spec = generate_spec(image.config, root, opts, container_id=_TOKEN, namespace=ns)
        spec["hostname"] = _TOKEN if opts.net != "host" else spec.get("hostname", "")
        if not spec["hostname"]:
            spec.pop("hostname")
        spec["linux"]["cgroupsPath"] = cgroup_path(_TOKEN)
        spec["root"]["path"] = "rootfs"
        spec["process"]["terminal"] = False
        self.filter_fd = -1
        bundle = spec
        if precompile and _command_in_image(root, spec, opts.mounts):
            self.filter_fd = _compiled_seccomp(spec)
        if self.filter_fd >= 0:
            bundle = {**spec, "linux": {k: v for k, v in spec["linux"].items() if k != "seccomp"},
                      "process": {**spec["process"], "args": [_HELPER_ARG0, *spec["process"]["args"]]}}
        self.bundle_json = json.dumps(bundle, separators=(",", ":"))
        # the record keeps the same spec with the ns/id cgroup path the runtime would fill in
        spec["linux"]["cgroupsPath"] = f"/{ns}/{_TOKEN}"
        self.record_json = json.dumps(spec, separators=(",", ":"), sort_keys=True)
        self.opts_json = json.dumps({EXT_RUN_OPTIONS: opts.to_dict()}, separators=(",", ":"), sort_keys=True)

    def close(self) -> None:
        if self.filter_fd >= 0:
            os.close(self.filter_fd)
            self.filter_fd = -1

    @staticmethod
    def _fill(text: str, cid: str) -> str:
        # the hostname is the id's first 12 characters, as generate_spec makes it
        return text.replace(f'"hostname":"{_TOKEN}"', f'"hostname":"{cid[:12]}"').replace(_TOKEN, cid)

    def bundle_spec(self, cid: str) -> str:
        return self._fill(self.bundle_json, cid)

    def record_spec(self, cid: str) -> str:
        return self._fill(self.record_json, cid)


@dataclass
class _Lower:
    """A batch's read-only view of an image, under the containers' transient writable layers."""

    key: str  # the view snapshot
    options: list[str]  # a container rootfs's overlay options but upperdir and workdir
    mounts: list[Any]  # the view's mounts
    uid: int  # owner of the image's root directory
    gid: int


@dataclass
class _Item:
    index: int
    entry: BatchSpec
    id: str
    image: _Image | None = None
    template: _Template | None = None
    mounts: list[Any] = field(default_factory=list)
    result: BatchResult | None = None
    pid_file: str = ""
    runc_pid: int = 0
    killed: bool = False
    made: bool = False  # snapshot and record exist
    task: Any = None  # shim mode: the task while it runs
    mounted: bool = False  # direct mode: the rootfs mount point was made
    transient: bool = False  # writable layer on the batch's tmpfs (no snapshot of its own)


class Batch:
    """One batch run: see :func:`batch_run` (which drives it)."""

    def __init__(self, svc: Any, ns: str, entries: Sequence[BatchSpec], *, parallel: int = 8,
                 rm: bool = False, detach: bool = False, group_size: int = 50, batch_id: str = "",
                 labels: Mapping[str, str] | None = None, mode: str = "auto", rootfs: str = "auto") -> None:
        from .identifiers import validate_identifier

        if rm and detach:
            raise InvalidArgument("--rm and --detach cannot be used together")
        if parallel < 1:
            raise InvalidArgument("--parallel must be at least 1")
        if group_size < 1:
            raise InvalidArgument("--group-size must be at least 1")
        if mode not in ("auto", "direct", "shim"):
            raise InvalidArgument(f"batch mode {mode!r}: auto, direct or shim")
        if detach and mode == "direct":
            raise InvalidArgument("detached containers need shims: mode direct is for run-to-completion")
        if rootfs not in ("auto", "tmpfs", "snapshot"):
            raise InvalidArgument(f"batch rootfs {rootfs!r}: auto, tmpfs or snapshot")
        if rootfs == "tmpfs" and (not rm or detach or mode == "shim"):
            raise InvalidArgument("--rootfs tmpfs is for --rm batches run to completion: without --rm the "
                                  "containers stay, and their root file systems with them")
        self.svc = svc
        self.ns = ns
        self.parallel = parallel
        self.rm = rm
        self.detach = detach
        self.group_size = group_size
        self.mode = "shim" if detach or mode == "shim" else "direct"
        #: writable layers on the batch's tmpfs ("tmpfs") or active snapshots ("snapshot")
        self.rootfs = "tmpfs" if rootfs != "snapshot" and rm and self.mode == "direct" else "snapshot"
        self._lowers: dict[str, _Lower | None] = {}  # by image name
        self.batch_id = batch_id or new_batch_id()
        validate_identifier(self.batch_id, "batch id")
        self.labels = dict(labels or {})
        self.labels[LABEL_BATCH_ID] = self.batch_id
        from .metadata.containers import validate_id

        width = len(str(max(len(entries) - 1, 0)))
        self.items: list[_Item] = []
        seen: set[str] = set()
        for i, e in enumerate(entries):
            cid = e.id or f"{self.batch_id}-{i:0{width}d}"
            validate_id(cid)
            if cid in seen:
                raise InvalidArgument(f"batch: container id {cid!r} appears twice")
            seen.add(cid)
            self.items.append(_Item(i, e, cid))
        self._images: dict[str, _Image] = {}
        self._views: list[tuple[_Image, str]] = []  # (image, view key) made by _lower
        self._templates: dict[str, _Template] = {}
        self._lock = threading.Lock()
        self._running: dict[str, _Item] = {}
        self.stopping = threading.Event()
        self.progress = BatchProgress(self.batch_id, len(self.items))
        self._t0 = time.monotonic()
        rt = svc.runtime(DEFAULT_RUNTIME)
        self.rt = rt
        self.md = svc.md
        self.db = svc.md.db
        # runc is a short sequential Go program: one P spares the runtime's idle-thread spinning (~8%
        # less CPU per container measured here); the container's own environment comes from its spec
        self._runc_env = {**os.environ, "GOMAXPROCS": "1"}
        self._bundles = ""
        self._lock_fd = -1
        # seccomp profiles compiled once per template, loaded in each container by the helper (direct
        # mode only: a shim's task is started by the runtime plugin, which leaves it to runc)
        self._helper = ""
        if self.mode == "direct":
            from .seccomp_filter import exec_helper

            self._helper = exec_helper() or ""
        self._helper_fd = -1
        self._janitor: ThreadPoolExecutor | None = None
        svc.store  # noqa: B018 -- the containers table exists before the first chunk's insert

    # -- shared work ---------------------------------------------------------------------------------

    def _image(self, name: str) -> _Image:
        img = self._images.get(name)
        if img is None:
            if not name:
                raise InvalidArgument("batch entry without an image")
            img = self._images[name] = _Image(self.svc, self.ns, name)
        return img

    def _template(self, it: _Item, mounts: Sequence[Any]) -> _Template:
        e = it.entry
        key = json.dumps([e.image, e.args, e.env, e.mounts, e.resources, e.net], sort_keys=True, default=str)
        t = self._templates.get(key)
        if t is None:
            assert it.image is not None
            t = self._templates[key] = _Template(it.image, _run_options(e), self.ns,
                                                 lambda cid: str(self.rt.cgroup_path(self.ns, cid)), mounts,
                                                 precompile=bool(self._helper))
            if t.filter_fd >= 0 and self._helper_fd < 0:
                self._helper_fd = _above_stdio(os.open(self._helper, os.O_RDONLY | os.O_CLOEXEC))
        return t

    def _lower(self, image: _Image) -> _Lower | None:
        """The read-only view of ``image`` that this batch's transient writable layers go over (None
        when the snapshotter's mounts are not overlay or bind mounts of directories: then each container
        gets an active snapshot)."""
        if image.name in self._lowers:
            return self._lowers[image.name]
        from .mount import _split_lowerdirs, overlay_index_known

        got: _Lower | None = None
        if image.sn_name == "overlayfs":
            key = f"{self.batch_id}-lower-{len(self._lowers)}"
            # a GC root while the batch runs (the image could be removed meanwhile); labelled with the
            # batch id, so a later batch removes it if this one dies
            mounts = image.sn.view(self.ns, key, image.top, labels={LABEL_BATCH_ID: self.batch_id,
                                                                    "containerd.io/gc.root": "batch"})
            self._views.append((image, key))
            opts: list[str] = []
            lowers: list[str] = []
            if len(mounts) == 1 and mounts[0].type == "bind":
                lowers = [mounts[0].source]
                opts = ["index=off"] if overlay_index_known() else []
            elif len(mounts) == 1 and mounts[0].type == "overlay":
                for o in mounts[0].options:
                    if o.startswith("lowerdir="):
                        lowers = _split_lowerdirs(o[len("lowerdir="):])
                    elif not o.startswith(("upperdir=", "workdir=")):
                        opts.append(o)
            if lowers:
                st = os.stat(lowers[0])  # the writable layer's root takes the image's owner, as a snapshot's
                got = _Lower(key, [*opts, "lowerdir=" + ":".join(lowers)], mounts, st.st_uid, st.st_gid)
        self._lowers[image.name] = got
        return got

    def _remove_views(self) -> None:
        for image, key in self._views:
            try:
                image.sn.remove(self.ns, key)
            except NotFound:
                pass
            except Exception:
                log.warning("batch %s: removing the view %s failed", self.batch_id, key, exc_info=True)
        self._views.clear()

    # -- records -------------------------------------------------------------------------------------

    def _make_chunk(self, chunk: list[_Item]) -> list[_Item]:
        """Snapshots and records of ``chunk`` in one transaction; returns the entries made (the others
        carry a failed result)."""
        from .metadata.db import now_ns

        made: list[_Item] = []
        with self.db.tx() as tx:
            for it in chunk:
                tx.execute("SAVEPOINT batch_entry")
                try:
                    it.image = self._image(it.entry.image)
                    labels = {**self.labels, **it.entry.labels}
                    if it.image.stop_signal:
                        labels.setdefault(LABEL_IMAGE_STOP_SIGNAL, it.image.stop_signal)
                    from .metadata.containers import validate_labels

                    validate_labels(labels)
                    if tx.execute("SELECT 1 FROM containers WHERE ns=? AND id=?", (self.ns, it.id)).fetchone():
                        raise AlreadyExists(f"container {it.id!r} already exists in namespace {self.ns!r}")
                    sn = it.image.sn
                    lower = self._lower(it.image) if self.rootfs == "tmpfs" else None
                    if lower is not None:
                        it.transient = True
                        mounts = lower.mounts  # the image's layers, for user and group look-ups
                    else:
                        try:
                            mounts = sn.prepare(self.ns, it.id, it.image.top)
                        except PyctrError as e:
                            if "already exists" in str(e):
                                raise AlreadyExists(f"snapshot {it.id!r} already exists: remove it or choose "
                                                    "another id") from None
                            raise
                        it.mounts = [m.to_dict() for m in mounts]
                    t = it.template = self._template(it, mounts)
                    now = now_ns()
                    tx.execute(
                        "INSERT INTO containers(ns, id, image, snapshotter, snapshot_key, runtime, spec, labels, "
                        "extensions, created_at, updated_at) VALUES(?,?,?,?,?,?,?,?,?,?,?)",
                        (self.ns, it.id, it.image.name, it.image.sn_name, "" if it.transient else it.id,
                         '{"name":"' + DEFAULT_RUNTIME + '","options":{}}', t.record_spec(it.id),
                         json.dumps(labels, separators=(",", ":"), sort_keys=True), t.opts_json, now, now))
                    tx.execute("RELEASE batch_entry")
                    it.made = True
                    made.append(it)
                except Exception as e:
                    tx.execute("ROLLBACK TO batch_entry")
                    tx.execute("RELEASE batch_entry")
                    self._fail(it, e)
        if made:
            self.db.mutated("create")
        return made

    def _remove_chunk(self, chunk: list[_Item]) -> None:
        """Snapshots and records of ``chunk`` gone, in one transaction."""
        if not chunk:
            return
        with self.db.tx() as tx:
            for it in chunk:
                if not it.made:
                    continue
                if it.image is not None and not it.transient:
                    try:
                        it.image.sn.remove(self.ns, it.id)
                    except NotFound:
                        pass
                    except PyctrError as e:
                        log.warning("batch: removing snapshot %s: %s", it.id, e)
                tx.execute("DELETE FROM containers WHERE ns=? AND id=?", (self.ns, it.id))
                it.made = False
        self.db.mutated("delete")

    def _fail(self, it: _Item, e: BaseException, exit_status: int = 125, started: float = 0.0) -> None:
        from .runtime import CommandNotFound

        if isinstance(e, CommandNotFound):
            exit_status = 127
        it.result = BatchResult(it.id, it.index, started_at=started, exit_status=exit_status,
                                duration=time.time() - started if started else 0.0, error=_message(e),
                                status="failed")

    # -- one container, run to completion by runc itself -----------------------------------------------

    def _run_direct(self, it: _Item) -> _Item:
        from .mount import mount_all
        from .snapshots import Mount

        assert it.template is not None
        path = os.path.join(self._bundle_dir(), it.id)
        rootfs = os.path.join(path, "rootfs")
        runc_log = os.path.join(path, "log.json")
        it.pid_file = os.path.join(path, "init.pid")
        started = 0.0
        mounted = False
        try:
            if self.stopping.is_set():
                raise PyctrError("batch interrupted before this container started")
            os.mkdir(path, 0o700)
            fd = os.open(os.path.join(path, "config.json"), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         0o600)
            try:
                os.write(fd, it.template.bundle_spec(it.id).encode())
            finally:
                os.close(fd)
            os.mkdir(rootfs, 0o711)
            mounted = True
            if it.transient:
                assert it.image is not None
                lower = self._lowers[it.image.name]
                assert lower is not None
                upper, work = os.path.join(path, "upper"), os.path.join(path, "work")
                os.mkdir(upper, 0o755)
                if lower.uid or lower.gid:
                    os.chown(upper, lower.uid, lower.gid)
                os.mkdir(work, 0o711)
                mounts = [Mount("overlay", "overlay", [f"workdir={work}", f"upperdir={upper}", *lower.options])]
            else:
                mounts = [Mount.from_dict(m) for m in it.mounts]
            mount_all(mounts, rootfs)
            argv = [self.rt.runc_path, "--root", self._runc_root(), "--log", runc_log,
                    "--log-format", "json", "run", "--bundle", path, "--pid-file", it.pid_file, it.id]
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            actions = [(os.POSIX_SPAWN_DUP2, null, i) for i in range(3)]
            if it.template.filter_fd >= 0:
                argv[-1:-1] = ["--preserve-fds", "2"]
                actions += [(os.POSIX_SPAWN_DUP2, it.template.filter_fd, _FILTER_FD),
                            (os.POSIX_SPAWN_DUP2, self._helper_fd, _HELPER_FD)]
            try:
                with self._lock:
                    if self.stopping.is_set():
                        raise PyctrError("batch interrupted before this container started")
                    started = time.time()
                    it.runc_pid = os.posix_spawn(argv[0], argv, self._runc_env,
                                                 file_actions=actions,
                                                 setsigdef=(signal.SIGINT, signal.SIGTERM, signal.SIGPIPE,
                                                            signal.SIGHUP))
                    self._running[it.id] = it
                    self.progress.started += 1
            finally:
                os.close(null)
            try:
                _, status = os.waitpid(it.runc_pid, 0)  # retried on EINTR (PEP 475)
            finally:
                with self._lock:
                    self._running.pop(it.id, None)
            ended = time.time()
            code = os.waitstatus_to_exitcode(status)
            if code < 0:
                code = 128 - code
            pid = _read_pid(it.pid_file)
            err = ""
            if code != 0:
                from pyctr.plugins.runtime.runc import runc as R

                err = R.last_error(runc_log, 0)
                if err and R.is_command_not_found(err):
                    code = 127
            if it.killed and not err:
                err = "killed: the batch was interrupted"
            it.result = BatchResult(it.id, it.index, pid=pid, started_at=started, exit_status=code,
                                    duration=ended - started, error=err, status="failed" if err else "exited")
        except Exception as e:
            self._fail(it, e, started=started)
        finally:
            it.mounted = mounted
        return it

    def _clean_direct(self, it: _Item) -> _Item:
        """Unmount the rootfs and remove the bundle of a direct container that ended (or never ran).

        Runs on the janitor threads: ``umount2`` waits for an RCU grace period (~10 ms here, no CPU),
        which would otherwise keep a launch slot idle."""
        from .mount import unmount

        path = os.path.join(self._bundles, it.id)
        rootfs = os.path.join(path, "rootfs")
        try:
            if it.mounted:
                try:
                    unmount(rootfs, lazy=True, retries=2)  # one umount2: no scan of the mount table
                except Exception as e:
                    log.warning("batch: unmounting %s: %s", rootfs, e)
            if it.runc_pid and it.result is not None and it.result.status == "failed":
                self._runc_delete(it.id)  # runc's own clean-up did not run (an error, a kill)
            _remove_bundle(path, rootfs)
        except Exception:
            log.warning("batch: cleaning up %s failed", it.id, exc_info=True)
        return it

    # -- bundles of direct containers ---------------------------------------------------------------
    # ``<runtime state>/.batch/<ns>/<batch id>/<container id>``, beside (not in) the runtime's own
    # per-namespace bundle directories: the runtime's ``load()`` (any pyctr command that starts the
    # runtime plugin) settles bundles it finds there that have no shim, and these never have one.  The
    # batch holds ``<batch id>.lock`` (flock) while it runs; a later batch clears what a batch that
    # died left (mounts, runc state, bundles; its records stay for ``pyctr batch rm``).

    def _bundle_dir(self) -> str:
        if self._bundles:
            return self._bundles
        base = self.rt.state / ".batch" / self.ns
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        clear_dead_batches(self.rt, self.md, self.ns)
        lock = base / f"{self.batch_id}.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyExists(f"a batch named {self.batch_id!r} is running: choose another --name") from None
        self._lock_fd = fd
        d = base / self.batch_id
        d.mkdir(mode=0o700, exist_ok=True)
        _mount_scratch(str(d))  # a plain directory when refused (logged)
        os.makedirs(os.path.join(d, "runc"), mode=0o700, exist_ok=True)
        self._bundles = str(d)
        return self._bundles

    def _runc_root(self) -> str:
        """runc's ``--root`` for this batch's direct containers: in the batch's own scratch directory
        (they are never tasks of the runtime plugin; runc's state files come and go with them)."""
        return os.path.join(self._bundle_dir(), "runc")

    def _release_bundle_dir(self) -> None:
        if not self._bundles:
            return
        _release_scratch(self._bundles)  # unmounted and removed unless something could not be removed
        if self._lock_fd >= 0:
            if not os.path.isdir(self._bundles):
                with contextlib.suppress(OSError):
                    os.unlink(self._bundles + ".lock")
            os.close(self._lock_fd)
            self._lock_fd = -1
        self._bundles = ""

    def _runc_delete(self, cid: str) -> None:
        _runc_delete(self.rt, self.ns, self._runc_root(), cid)

    def _kill_running(self) -> None:
        """SIGKILL the containers this batch runs in the foreground (runc then cleans up after them; in
        shim mode the workers waiting for them then delete their tasks)."""
        if self.mode == "shim":
            if self.detach:
                return  # workers do not wait for detached containers
            with self._lock:
                items = list(self._running.values())
            for it in items:
                with contextlib.suppress(Exception):
                    it.killed = True
                    it.task.kill(int(signal.SIGKILL))
            return
        start = time.monotonic()
        asked: set[str] = set()
        while time.monotonic() < start + 10.0:
            with self._lock:
                items = list(self._running.values())
            if not items:
                return
            for it in items:
                pid = _read_pid(it.pid_file)
                if pid:
                    it.killed = True
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                elif time.monotonic() > start + 1.0 and it.id not in asked:
                    # no pid file yet after a second (a slow start on a loaded machine): ask runc, which
                    # knows the init process from its state as soon as the container exists
                    it.killed = True
                    asked.add(it.id)
                    self._runc_kill(it.id)
            time.sleep(0.02)

    def _runc_kill(self, cid: str) -> None:
        _runc(self.rt, self._runc_root(), "kill", cid, "KILL")

    # -- one container through the runtime plugin (shared shims) ---------------------------------------

    def _group(self, it: _Item) -> str:
        return f"{self.batch_id}-g{it.index // self.group_size}"

    def _run_shim(self, it: _Item) -> _Item:
        from .runtime import ProcessIO

        started = 0.0
        task = None
        try:
            if self.stopping.is_set():
                raise PyctrError("batch interrupted before this container started")
            started = time.time()
            log_dir = self.svc.root / self.ns / it.id
            log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            io = ProcessIO(json_log=str(log_dir / "log.json")) if self.detach else ProcessIO()
            task = it.task = self.svc.create_task(self.ns, it.id, io, group=self._group(it))
            with self._lock:
                self._running[it.id] = it
                self.progress.started += 1
            pid = task.start()
            if self.detach:
                it.result = BatchResult(it.id, it.index, pid=pid, started_at=started, exit_status=None,
                                        duration=time.time() - started, status="running")
                return it
            st = task.wait()
            with self._lock:
                self._running.pop(it.id, None)
            it.result = BatchResult(it.id, it.index, pid=pid, started_at=started, exit_status=st.exit_status,
                                    duration=st.exited_at - started if st.exited_at else time.time() - started)
            task.delete(force=True)
            task = None
        except Exception as e:
            self._fail(it, e, started=started)
        finally:
            with self._lock:
                self._running.pop(it.id, None)
            if task is not None and (it.result is None or it.result.status != "running"):
                with contextlib.suppress(Exception):
                    task.delete(force=True)
        return it

    # -- driving ---------------------------------------------------------------------------------------

    def _snapshot(self) -> BatchProgress:
        p = self.progress
        with self._lock:
            p.running = len(self._running)
        p.elapsed = time.monotonic() - self._t0
        return BatchProgress(**asdict(p))

    def run(self, progress: bool = True) -> Iterator[BatchResult | BatchProgress]:
        """Launch everything; yield results as containers finish (and progress ticks)."""
        done_q: queue.Queue[_Item] = queue.Queue()
        pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="pyctr-batch")
        work = self._run_shim if self.mode == "shim" else self._run_direct
        finished: list[_Item] = []  # finished, to remove (rm, or never started)
        live = 0  # made (or failed) and not reported yet
        next_i = 0
        total = len(self.items)
        emitted = 0
        clean = False
        last_tick = 0.0

        janitor = ThreadPoolExecutor(min(4, self.parallel), thread_name_prefix="pyctr-batch-clean")
        self._janitor = janitor

        def direct(it: _Item) -> None:
            self._run_direct(it)
            try:
                janitor.submit(self._clean_direct, it).add_done_callback(lambda _f: done_q.put(it))
            except RuntimeError:  # shutting down
                self._clean_direct(it)
                done_q.put(it)

        def submit(it: _Item) -> None:
            if self.mode == "direct":
                fut = pool.submit(direct, it)
                # a launch cancelled by an interrupt never ran (or broke): report it, records go at the end
                fut.add_done_callback(lambda f: done_q.put(it) if f.cancelled() or f.exception() else None)
            else:
                pool.submit(work, it).add_done_callback(lambda _f: done_q.put(it))

        try:
            if self.mode == "direct":
                self._bundle_dir()
            if progress:
                yield self._snapshot()  # at once: a caller (or a daemon's stream) knows the batch is under way
            while emitted < total:
                # keep the pool's queue fed (workers never wait for the metadata), a bounded distance
                # ahead: records a chunk at a time, the first chunk small to start at once
                while next_i < total and live < self.parallel + _CHUNK:
                    size = _CHUNK if next_i else min(_CHUNK, self.parallel)
                    chunk = self.items[next_i:next_i + size]
                    next_i += len(chunk)
                    live += len(chunk)
                    self._make_chunk(chunk)
                    for it in chunk:
                        if it.made:
                            submit(it)
                        else:
                            done_q.put(it)  # failed already
                try:
                    it = done_q.get(timeout=_TICK)
                except queue.Empty:
                    if progress:
                        yield self._snapshot()
                    continue
                batch = [it]
                with contextlib.suppress(queue.Empty):
                    while True:
                        batch.append(done_q.get_nowait())
                for it in batch:
                    live -= 1
                    if it.result is None:
                        it.result = BatchResult(it.id, it.index, error="no result", status="failed")
                    if it.result.status == "failed":
                        self.progress.failed += 1
                    elif it.result.status == "exited":
                        self.progress.exited += 1
                    if it.made and (self.rm or it.result.status == "failed"):
                        finished.append(it)
                for it in batch:
                    emitted += 1
                    assert it.result is not None
                    yield it.result
                if len(finished) >= _CHUNK // 2 or (finished and emitted >= total):
                    self._remove_chunk(finished)
                    finished = []
                now = time.monotonic()
                if progress and now - last_tick >= _TICK:
                    last_tick = now
                    yield self._snapshot()
            if progress:
                yield self._snapshot()
            clean = True
        finally:
            self._finish(pool, clean)

    def _finish(self, pool: ThreadPoolExecutor, clean: bool) -> None:
        restore = None
        if threading.current_thread() is threading.main_thread():
            with contextlib.suppress(ValueError):
                restore = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this
        try:
            self.stopping.set()
            if not clean:
                self._kill_running()
            pool.shutdown(wait=True, cancel_futures=True)
            if not clean:
                self._kill_running()
            if self._janitor is not None:
                self._janitor.shutdown(wait=True)
            if not clean and self.rm and self.mode == "shim":
                for it in self.items:
                    if it.made and it.result is not None and it.result.status == "running":
                        with contextlib.suppress(Exception):
                            self.svc.get_task(self.ns, it.id).delete(force=True)
            self._release_bundle_dir()
            for t in self._templates.values():
                t.close()
            if self._helper_fd >= 0:
                os.close(self._helper_fd)
                self._helper_fd = -1
            leftovers = [it for it in self.items if it.made and (
                it.result is None or self.rm or it.result.status == "failed")]
            for i in range(0, len(leftovers), _CHUNK):
                try:
                    self._remove_chunk(leftovers[i:i + _CHUNK])
                except Exception:
                    log.warning("batch %s: removing containers failed", self.batch_id, exc_info=True)
            self._remove_views()
        finally:
            if restore is not None:
                signal.signal(signal.SIGINT, restore)


def clear_dead_batches(rt: Any, md: Any, ns: str) -> None:
    """Clear what batches of ``ns`` that died left behind (each batch holds a flock on
    ``<runtime state>/.batch/<ns>/<batch id>.lock`` while it runs): their containers' rootfs mounts,
    runc state and bundles, their scratch tmpfs, and their views of images.  Their container records
    stay, for ``pyctr batch rm``.  Every batch run and ``batch rm`` calls this first."""
    from .mount import unmount

    base = os.path.join(rt.state, ".batch", ns)
    try:
        entries = os.listdir(base)
    except FileNotFoundError:
        return
    for entry in entries:
        if not entry.endswith(".lock"):
            continue
        lock = os.path.join(base, entry)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # its batch just ended
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # that batch still runs
            d = lock[:-len(".lock")]
            runc_root = os.path.join(d, "runc")
            for cid in os.listdir(d) if os.path.isdir(d) else []:
                if cid == "runc":
                    continue
                log.warning("batch: clearing container %s left by a batch that died", cid)
                with contextlib.suppress(Exception):
                    unmount(os.path.join(d, cid, "rootfs"), lazy=True, retries=2)
                with contextlib.suppress(Exception):
                    _runc_delete(rt, ns, runc_root, cid)
                _remove_bundle(os.path.join(d, cid), os.path.join(d, cid, "rootfs"))
            if not _release_scratch(d):
                continue  # something is still mounted in there: try again next time
            _remove_dead_views(md, ns, os.path.basename(d))
            os.unlink(lock)
        finally:
            os.close(fd)


def _remove_dead_views(md: Any, ns: str, batch_id: str) -> None:
    """The image views a batch that died left (see :meth:`Batch._lower`)."""
    try:
        sn = md.snapshotter("overlayfs")
        keys = [i.name for i in sn.walk(ns, f'labels."{LABEL_BATCH_ID}"=={batch_id}')]
    except Exception:
        return  # no overlayfs snapshotter: no views
    for key in keys:
        with contextlib.suppress(Exception):
            sn.remove(ns, key)


def _runc(rt: Any, runc_root: str, *args: str) -> None:
    """One quiet runc call for clean-up (its outcome is checked by what stays, not by its status)."""
    import subprocess

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run([rt.runc_path, "--root", runc_root, *args], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30, check=False)


def _runc_delete(rt: Any, ns: str, runc_root: str, cid: str) -> None:
    _runc(rt, runc_root, "delete", "--force", cid)
    from pyctr.plugins.runtime.runc import cgroups

    with contextlib.suppress(OSError):
        cgroups.remove(str(rt.cgroup_path(ns, cid)))


def _mount_scratch(path: str) -> bool:
    """Mount a private tmpfs on ``path`` (the batch's bundles and runc state): they are written and
    removed for every container, ~10 files each; on a disk file system that churn of inodes costs CPU
    (ext4 without a journal scans past recently deleted inodes on every allocation: ~10 % of a batch's
    CPU measured here), on tmpfs it is free.  False (a plain directory) when the mount is refused."""
    from .mount import MS_NODEV, MS_NOSUID, _sys_mount

    try:
        _sys_mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700")
    except PyctrError as e:
        log.debug("batch: no tmpfs for %s (%s): bundles on the state directory's file system", path, e)
        return False
    return True


def _release_scratch(path: str) -> bool:
    """Unmount (if mounted) and remove a batch's scratch directory; False if something in it stays."""
    from .mount import is_mountpoint, unmount

    runc_root = os.path.join(path, "runc")
    with contextlib.suppress(OSError):
        os.rmdir(runc_root)  # empty once runc removed every container's state
    try:
        left = os.listdir(path)
    except FileNotFoundError:
        return True
    if left:
        log.warning("batch: %s left in place: %s", path, ", ".join(sorted(left)[:5]))
        return False
    if is_mountpoint(path):
        try:
            unmount(path, lazy=True, retries=2)
        except PyctrError as e:
            log.warning("batch: unmounting %s: %s", path, e)
            return False
    with contextlib.suppress(OSError):
        os.rmdir(path)
    return True


def _remove_bundle(path: str, rootfs: str) -> None:
    """Remove a bundle this module wrote (known files first: cheaper than a tree walk)."""
    for name in ("config.json", "log.json", "init.pid"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(path, name))
    try:
        os.rmdir(rootfs)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("batch: rootfs %s left in place: %s", rootfs, e)  # still mounted: never rm -rf it
        return
    for layer in ("upper", "work"):  # a transient writable layer, unmounted now
        if os.path.isdir(os.path.join(path, layer)):
            shutil.rmtree(os.path.join(path, layer), ignore_errors=True)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


def _message(e: BaseException) -> str:
    """A failure as a result's ``error``: a pyctr error's own message, else the exception's type too."""
    return str(e) if isinstance(e, PyctrError) else f"{type(e).__name__}: {e}"


def _read_pid(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def entries_for(specs: Iterable[BatchSpec | Mapping[str, Any]] | None = None, image: str = "",
                args: Sequence[str] | None = None, count: int = 1, env: Sequence[str] = (),
                net: str = "none") -> list[BatchSpec]:
    """The batch's entries: ``specs`` (missing images and commands taken from ``image``/``args``), or
    ``count`` copies of ``image`` running ``args``."""
    if specs is not None:
        out = []
        for s in specs:
            e = s if isinstance(s, BatchSpec) else BatchSpec.from_dict(s)
            if not e.image:
                e.image = image
            if e.args is None and args:
                e.args = list(args)
            out.append(e)
        return out
    if count < 0:
        raise InvalidArgument("--count must not be negative")
    if not image:
        raise InvalidArgument("batch run needs an image (or --spec entries that name one)")
    return [BatchSpec(image=image, args=list(args) if args else None, env=list(env), net=net)
            for _ in range(count)]


def batch_run(svc: Any, ns: str, specs: Iterable[BatchSpec | Mapping[str, Any]] | None = None, *,
              image: str = "", args: Sequence[str] | None = None, count: int = 1, parallel: int = 8,
              rm: bool = False, detach: bool = False, group_size: int = 50, batch_id: str = "",
              labels: Mapping[str, str] | None = None, env: Sequence[str] = (), net: str = "none",
              mode: str = "auto", rootfs: str = "auto",
              progress: bool = True) -> Iterator[BatchResult | BatchProgress]:
    """Launch a batch through the containers service ``svc`` (see the module docstring)."""
    b = Batch(svc, ns, entries_for(specs, image, args, count, env, net), parallel=parallel, rm=rm,
              detach=detach, group_size=group_size, batch_id=batch_id, labels=labels, mode=mode, rootfs=rootfs)
    return b.run(progress)


def dicts(it: Iterator[BatchResult | BatchProgress]) -> Iterator[dict[str, Any]]:
    """``it`` as wire dicts; closing this closes ``it`` (the batch cleans up at once).  Progress ticks
    (every quarter second at least) also let the daemon notice a client that went away."""
    try:
        for r in it:
            yield r.to_dict()
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


class BatchStream(Iterator["BatchResult | BatchProgress"]):
    """What :meth:`pyctr.Client.batch_run` returns: the batch's results (and progress ticks when asked)
    as they come; :meth:`close` stops the batch, even before the first item was read."""

    def __init__(self, stream: Any, progress: bool) -> None:
        self._stream = stream
        self._it = iter(stream)
        self._progress = progress
        # a daemon's stream arrives as a generator that only takes a close() (which cancels the batch)
        # once it has started: take the first item (a progress tick comes within a quarter second)
        self._first: list[Any] = []
        try:
            self._first.append(next(self._it))
        except StopIteration:
            pass
        except BaseException:  # Ctrl-C while waiting: the batch must stop all the same
            self.close()
            raise

    def __next__(self) -> BatchResult | BatchProgress:
        while True:
            d = self._first.pop() if self._first else next(self._it)
            if isinstance(d, Mapping) and (self._progress or d.get("kind") != "progress"):
                return from_wire(d)

    def close(self) -> None:
        for obj in (self._it, self._stream):
            close = getattr(obj, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def batch_results(client: Any, specs: Iterable[Any] | None = None, *, progress: bool = False,
                  **kw: Any) -> BatchStream:
    """:meth:`pyctr.Client.batch_run`: the containers service's stream (embedded or from the daemon) as
    :class:`BatchResult` (and, with ``progress``, :class:`BatchProgress`) objects."""
    from .runner import service

    svc = service(client)
    wire = None if specs is None else [s.to_dict() if isinstance(s, BatchSpec) else dict(s) for s in specs]
    return BatchStream(svc.batch_run(client.namespace, wire, **kw), progress)


def batch_remove(svc: Any, ns: str, filters: Sequence[str], *, parallel: int = 8) -> Iterator[dict[str, Any]]:
    """Remove every container matching ``filters`` (e.g. ``labels."pyctr.batch.id"==b1234``): tasks
    killed and deleted, snapshots and records gone; yields ``{"id", "error"}`` per container."""
    if not filters:
        raise InvalidArgument("batch rm needs a filter (a label or a batch id)")
    with contextlib.suppress(Exception):
        clear_dead_batches(svc.runtime(DEFAULT_RUNTIME), svc.md, ns)  # their mounts and image views too
    containers = svc.list(ns, list(filters))

    def one(c: Any) -> dict[str, Any]:
        try:
            svc.delete_container(ns, c.id, force=True)
            return {"id": c.id, "error": ""}
        except NotFound:
            return {"id": c.id, "error": ""}
        except Exception as e:
            return {"id": c.id, "error": _message(e)}

    if not containers:
        return iter(())
    with ThreadPoolExecutor(max(1, min(parallel, len(containers))), thread_name_prefix="pyctr-batch-rm") as ex:
        results = list(ex.map(one, containers))
    return iter(results)


__all__ = ["LABEL_BATCH_ID", "Batch", "BatchProgress", "BatchResult", "BatchSpec", "BatchStream", "batch_remove",
           "batch_results", "batch_run", "dicts", "entries_for", "from_wire", "new_batch_id"]
