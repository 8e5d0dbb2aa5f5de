"""OCI runtime spec generation: an image config plus :class:`RunOptions` become ``config.json``.

The defaults are containerd's (``pkg/oci/spec.go`` ``populateDefaultUnixSpec`` + ``WithDefaultUnixDevices``
+ ``WithImageConfigArgs``):

* new pid, ipc, uts, mount and network namespaces (``--net host`` shares the host's network, its
  ``/etc/hosts`` and ``/etc/resolv.conf``);
* the standard mounts ``/proc``, ``/dev``, ``/dev/pts``, ``/dev/shm``, ``/dev/mqueue``, ``/sys``,
  ``/run`` and a read-only cgroup file system at ``/sys/fs/cgroup``;
* containerd's default capability set, masked and read-only ``/proc`` and ``/sys`` paths,
  ``RLIMIT_NOFILE`` 1024, ``noNewPrivileges``, a device cgroup that denies all but the usual nodes,
  and the cgroup ``/<namespace>/<id>``;
* the default seccomp profile (:mod:`pyctr.seccomp_default`), unless ``seccomp=False`` (the CLI's
  ``--security-opt seccomp=unconfined``) or ``--privileged``;
* from the image: ``Env`` (or a default ``PATH``; the user's values replace by key), ``Entrypoint`` +
  (user args or ``Cmd``), ``WorkingDir`` (or ``/``) and ``User`` resolved from the rootfs's
  ``/etc/passwd`` and ``/etc/group`` (:mod:`pyctr.usergroup`).

Everything here is pure: no process, mount or file is created.  The spec is a plain dict, ready for
``json.dumps``.
"""

from __future__ import annotations

import copy
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errdefs import InvalidArgument
from .usergroup import RootReader, resolve_user

OCI_VERSION = "1.0.2-dev"
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_NOFILE = 1024
#: Label containerd gives a container for its image's ``StopSignal``.
LABEL_STOP_SIGNAL = "io.containerd.image.config.stop-signal"

#: Every capability the kernel defines (by number), for ``--privileged`` and ``--cap-add ALL``.
ALL_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN",
    "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)

#: containerd's default capability set (``defaultUnixCaps``).
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

DEFAULT_MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)
DEFAULT_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

_DEFAULT_MOUNTS: tuple[dict[str, Any], ...] = (
    {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
     "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs",
     "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
     "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
)

# (path, major, minor) of the nodes every container gets, as runc's and containerd's defaults.
_DEFAULT_DEVICES = (
    ("/dev/null", 1, 3), ("/dev/zero", 1, 5), ("/dev/full", 1, 7), ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9), ("/dev/tty", 5, 0),
)
_DEFAULT_DEVICE_RULES = (
    {"allow": True, "type": "c", "major": None, "minor": None, "access": "m"},
    {"allow": True, "type": "b", "major": None, "minor": None, "access": "m"},
    *({"allow": True, "type": "c", "major": maj, "minor": mi, "access": "rwm"}
      for _, maj, mi in _DEFAULT_DEVICES),
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},   # /dev/console
    {"allow": True, "type": "c", "major": 136, "minor": None, "access": "rwm"},  # /dev/pts/*
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},   # /dev/ptmx
    {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rwm"},  # /dev/net/tun
)

NET_MODES = ("none", "host")


@dataclass
class RunOptions:
    """What the user asks for on top of the image (``pyctr run``/``containers create`` flags).

    ``entrypoint`` replaces the image's (``[""]`` or ``[]`` clears it); ``args`` replace its ``Cmd``.
    ``env`` entries ``K=V`` replace or append by key, a bare ``K`` removes the key.  ``mounts`` are
    OCI mount dicts (see :func:`parse_mount` and :func:`parse_volume`).  ``memory`` is in bytes,
    ``cpus`` a fraction of CPUs.  ``net`` is ``none`` (a private network namespace with only ``lo``),
    ``host``, or a network's name (see :mod:`pyctr.network`); ``publish`` holds ``-p`` values.
    """

    args: list[str] = field(default_factory=list)
    entrypoint: list[str] | None = None
    env: list[str] = field(default_factory=list)
    workdir: str = ""
    user: str = ""
    mounts: list[dict[str, Any]] = field(default_factory=list)
    read_only: bool = False
    hostname: str = ""
    net: str = "none"
    publish: list[str] = field(default_factory=list)
    privileged: bool = False
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    memory: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    tty: bool = False
    seccomp: bool = True
    annotations: dict[str, str] = field(default_factory=dict)
    cgroups_path: str = ""
    rlimit_nofile: int = DEFAULT_NOFILE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunOptions:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InvalidArgument(f"unknown run options: {', '.join(sorted(unknown))}")
        return cls(**copy.deepcopy(dict(d)))


# -- parsing helpers for the CLI ------------------------------------------------------------------

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``512m``, ``1g``, ``1.5GiB``, ``65536`` (bytes) -> bytes (powers of 1024, as docker does)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise InvalidArgument(f"invalid size {text!r}: want a number with an optional unit (k, m, g, t)")
    mult = 1024 ** " kmgtp".index(m.group(2).lower() or " ")
    value = int(float(m.group(1)) * mult)
    if value <= 0:
        raise InvalidArgument(f"invalid size {text!r}: must be positive")
    return value


def parse_cpus(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise InvalidArgument(f"invalid --cpus {text!r}: want a number such as 0.5 or 2") from None
    if v <= 0 or v > (os.cpu_count() or 1) * 64:
        raise InvalidArgument(f"invalid --cpus {text!r}: must be greater than 0")
    return v


def parse_env_file(path: str) -> list[str]:
    """Lines ``K=V`` (or ``K``) of an env file; blank lines and ``#`` comments are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise InvalidArgument(f"cannot read env file {path}: {e.strerror}") from None
    out: list[str] = []
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        key = s.split("=", 1)[0]
        if not key or any(c.isspace() for c in key):
            raise InvalidArgument(f"{path}:{n}: invalid variable name {key!r}")
        out.append(s)
    return out


def expand_host_env(env: Iterable[str], host: Mapping[str, str] | None = None) -> list[str]:
    """Docker's rule for ``-e KEY`` without a value: take ``KEY`` from the host's environment, or drop
    it when unset there."""
    host = os.environ if host is None else host
    out: list[str] = []
    for e in env:
        if "=" in e:
            out.append(e)
        elif e in host:
            out.append(f"{e}={host[e]}")
    return out


def _mount_dict(src: str, dst: str, opts: list[str], mtype: str = "bind") -> dict[str, Any]:
    if not dst.startswith("/"):
        raise InvalidArgument(f"mount destination {dst!r} must be an absolute path")
    if mtype == "bind":
        if not src:
            raise InvalidArgument(f"bind mount to {dst} needs a source")
        src = os.path.abspath(src)
        if not os.path.exists(src):
            raise InvalidArgument(f"bind mount source {src} does not exist")
        if "bind" not in opts and "rbind" not in opts:
            opts = ["rbind", *opts]
        if "ro" not in opts and "rw" not in opts:
            opts.append("rw")
    return {"destination": os.path.normpath(dst), "type": mtype, "source": src, "options": opts}


def parse_mount(text: str) -> dict[str, Any]:
    """``--mount type=bind,src=/a,dst=/b,options=rbind:ro`` (ctr) or ``type=bind,source=/a,target=/b,
    readonly`` (docker).  Types: ``bind`` (default) and ``tmpfs``."""
    kv: dict[str, str] = {}
    flags: list[str] = []
    for part in text.split(","):
        if not part:
            continue
        k, sep, v = part.partition("=")
        if not sep:
            flags.append(k.strip().lower())
        else:
            kv[k.strip().lower()] = v.strip()
    mtype = kv.pop("type", "bind")
    src = kv.pop("src", kv.pop("source", ""))
    dst = kv.pop("dst", kv.pop("destination", kv.pop("target", "")))
    opts = [o for o in kv.pop("options", "").split(":") if o]
    ro = kv.pop("readonly", kv.pop("ro", None))
    if "readonly" in flags or "ro" in flags or (ro is not None and ro.lower() in ("1", "true", "yes", "")):
        opts.append("ro")
    flags = [f for f in flags if f not in ("readonly", "ro")]
    if kv or flags:
        raise InvalidArgument(f"invalid --mount {text!r}: unknown keys {', '.join([*kv, *flags])}")
    if not dst:
        raise InvalidArgument(f"invalid --mount {text!r}: dst= (or target=) is required")
    if mtype == "tmpfs":
        return {"destination": dst, "type": "tmpfs", "source": "tmpfs",
                "options": opts or ["nosuid", "nodev", "noexec", "mode=1777"]}
    if mtype != "bind":
        raise InvalidArgument(f"invalid --mount {text!r}: type must be bind or tmpfs")
    return _mount_dict(src, dst, opts)


def parse_volume(text: str) -> dict[str, Any]:
    """``-v /host:/container[:ro|rw[,...]]`` bind mounts."""
    parts = text.split(":")
    if len(parts) < 2 or len(parts) > 3 or not parts[0] or not parts[1]:
        raise InvalidArgument(f"invalid volume {text!r}: want HOST_PATH:CONTAINER_PATH[:ro]")
    if not parts[0].startswith("/") and not parts[0].startswith("."):
        raise InvalidArgument(f"invalid volume {text!r}: named volumes are not supported, give a host path")
    opts = [o for o in (parts[2].split(",") if len(parts) == 3 else []) if o]
    for o in opts:
        if o not in ("ro", "rw", "z", "Z", "rprivate", "private", "rshared", "shared", "rslave", "slave"):
            raise InvalidArgument(f"invalid volume option {o!r} in {text!r}")
    return _mount_dict(parts[0], parts[1], [o for o in opts if o not in ("z", "Z")])


def normalize_capability(name: str) -> str:
    n = name.strip().upper()
    if n == "ALL":
        return n
    if not n.startswith("CAP_"):
        n = "CAP_" + n
    if n not in ALL_CAPABILITIES:
        raise InvalidArgument(f"unknown capability {name!r}")
    return n


def host_capabilities() -> list[str]:
    """The capabilities in this process's bounding set (``--privileged`` grants these)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapBnd:"):
                    mask = int(line.split()[1], 16)
                    return [c for i, c in enumerate(ALL_CAPABILITIES) if mask & (1 << i)]
    except OSError:
        pass
    return list(ALL_CAPABILITIES)


def host_devices(root: str = "/dev") -> list[dict[str, Any]]:
    """Every character and block device under ``/dev`` (``--privileged``), as OCI device dicts."""
    skip = {"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"}
    out: list[dict[str, Any]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not (dirpath == root and d in skip)]
        for name in filenames:
            p = os.path.join(dirpath, name)
            if p == "/dev/console":
                continue
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode):
                kind = "c"
            elif stat.S_ISBLK(st.st_mode):
                kind = "b"
            else:
                continue
            out.append({"path": p, "type": kind, "major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev),
                        "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid})
    return out


# -- the spec -------------------------------------------------------------------------------------

def merge_env(base: Sequence[str], overrides: Iterable[str]) -> list[str]:
    """containerd's ``replaceOrAppendEnvValues``: ``K=V`` replaces ``K`` or appends; bare ``K`` removes."""
    out = list(base)
    for e in overrides:
        key, sep, _ = e.partition("=")
        idx = next((i for i, b in enumerate(out) if b.partition("=")[0] == key), None)
        if not sep:
            if idx is not None:
                del out[idx]
            continue
        if idx is None:
            out.append(e)
        else:
            out[idx] = e
    return out


def image_process_config(image_config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``config`` object of an OCI image config (accepts the whole config blob or just it)."""
    inner = image_config.get("config")
    if isinstance(inner, Mapping):
        return dict(inner)
    if "Cmd" in image_config or "Env" in image_config or "Entrypoint" in image_config:
        return dict(image_config)
    return {}


def _caps(options: RunOptions) -> list[str]:
    caps = host_capabilities() if options.privileged else list(DEFAULT_CAPABILITIES)
    adds = [normalize_capability(c) for c in options.cap_add]
    drops = [normalize_capability(c) for c in options.cap_drop]
    if "ALL" in drops:
        caps = []
    for c in adds:
        if c == "ALL":
            caps = list(ALL_CAPABILITIES)
        elif c not in caps:
            caps.append(c)
    return [c for c in caps if c not in drops]


def generate_spec(image_config: Mapping[str, Any], rootfs: RootReader | str | os.PathLike[str] | None,
                  options: RunOptions, *, container_id: str = "",
                  namespace: str = "default") -> dict[str, Any]:
    """The OCI runtime spec for a container of ``image_config`` run with ``options``.

    :param rootfs: where to read ``/etc/passwd`` and ``/etc/group`` (a :class:`RootReader` or a
        directory); ``None`` when there is none, in which case a user given by name is an error.
    """
    img = image_process_config(image_config)
    if options.net not in NET_MODES or options.publish:
        from .network import check_run_network

        check_run_network(options.net, list(options.publish))  # a network name: joined at task creation

    # process: args, env, cwd, user
    entrypoint = list(img.get("Entrypoint") or [])
    if options.entrypoint is not None:
        entrypoint = [e for e in options.entrypoint if e]
    args = entrypoint + (list(options.args) if options.args else
                         ([] if options.entrypoint is not None else list(img.get("Cmd") or [])))
    if not args:
        raise InvalidArgument("no command: the image has no Entrypoint or Cmd, give one after the image name")
    env = list(img.get("Env") or []) or [DEFAULT_PATH_ENV]
    if options.tty:
        env = merge_env(env, ["TERM=xterm"])
    env = merge_env(env, options.env)
    cwd = options.workdir or str(img.get("WorkingDir") or "") or "/"
    if not cwd.startswith("/"):
        raise InvalidArgument(f"working directory {cwd!r} must be an absolute path")
    user_spec = options.user or str(img.get("User") or "")
    # with no User, root's supplementary groups still come from the image (WithAdditionalGIDs("root"))
    user = resolve_user(user_spec or "0", rootfs).to_dict()

    caps = _caps(options)
    process: dict[str, Any] = {
        "terminal": bool(options.tty),
        "user": user,
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {"bounding": list(caps), "effective": list(caps), "permitted": list(caps)},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": options.rlimit_nofile, "soft": options.rlimit_nofile}],
        "noNewPrivileges": True,
    }

    mounts = [copy.deepcopy(m) for m in _DEFAULT_MOUNTS]
    if options.privileged:
        for m in mounts:
            if m["type"] in ("sysfs", "cgroup"):
                m["options"] = [o for o in m["options"] if o != "ro"] + ["rw"]
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")]
    hostname = options.hostname
    if options.net == "host":
        namespaces = [n for n in namespaces if n["type"] != "network"]
        for f in ("/etc/hosts", "/etc/resolv.conf"):
            if os.path.exists(f):
                mounts.append({"destination": f, "type": "bind", "source": f, "options": ["rbind", "ro"]})
    elif not hostname and container_id:
        hostname = container_id[:12]
    user_dests = {os.path.normpath(m["destination"]) for m in options.mounts}
    mounts = [m for m in mounts if m["destination"] not in user_dests]
    mounts.extend(copy.deepcopy(m) for m in options.mounts)

    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if options.privileged:
        resources["devices"] = [{"allow": True, "access": "rwm"}]
        devices = host_devices()
    else:
        resources["devices"].extend(copy.deepcopy(list(_DEFAULT_DEVICE_RULES)))
        devices = [{"path": p, "type": "c", "major": ma, "minor": mi, "fileMode": 0o666, "uid": 0, "gid": 0}
                   for p, ma, mi in _DEFAULT_DEVICES]
    if options.memory is not None:
        if options.memory < 6 * 1024 * 1024:
            raise InvalidArgument("the memory limit must be at least 6 MiB")
        resources["memory"] = {"limit": int(options.memory)}
    if options.cpus is not None:
        period = 100_000
        resources["cpu"] = {"quota": int(options.cpus * period), "period": period}
    if options.pids_limit is not None:
        if options.pids_limit <= 0 and options.pids_limit != -1:
            raise InvalidArgument("--pids-limit must be positive (or -1 for no limit)")
        resources["pids"] = {"limit": int(options.pids_limit)}

    linux: dict[str, Any] = {
        "resources": resources,
        "cgroupsPath": options.cgroups_path or f"/{namespace}/{container_id}",
        "namespaces": namespaces,
        "devices": devices,
    }
    if not options.privileged:
        linux["maskedPaths"] = list(DEFAULT_MASKED_PATHS)
        linux["readonlyPaths"] = list(DEFAULT_READONLY_PATHS)
        if options.seccomp:
            from .seccomp_default import default_profile

            linux["seccomp"] = default_profile(caps)

    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": "rootfs", "readonly": bool(options.read_only)},
        "mounts": mounts,
        "linux": linux,
    }
    if hostname:
        spec["hostname"] = hostname
    if options.annotations:
        spec["annotations"] = dict(options.annotations)
    return spec


def stop_signal(image_config: Mapping[str, Any]) -> str:
    """The image's ``StopSignal`` (empty when it has none)."""
    return str(image_process_config(image_config).get("StopSignal") or "")
