"""An OCI seccomp profile compiled once into the BPF program runc would load, for batches.

runc compiles a container's ``linux.seccomp`` profile with libseccomp inside ``runc init``, for every
container: with the default profile that is ~5 ms of CPU of the ~25 ms a short container costs here
(``bench/RESULTS.md``).  A batch starts hundreds of containers with one profile, so it compiles the
profile here, once, and each container loads the finished program itself:

* :func:`compile_profile` makes the program runc would make from the profile: the same libseccomp
  calls in the same order (one rule per system call name, conditions split the way runc splits them),
  exported as classic BPF, behind a stub that does what runc's does: system calls newer than any the
  profile names fail with ``ENOSYS`` instead of the default action (programs probe for new calls and
  fall back on ``ENOSYS``).  Like runc 1.1 it leaves libseccomp's binary-tree layout off (runc 1.2
  turns it on above 32 rules: a program of another shape with the same decisions; the kernel's
  per-syscall cache makes the layout moot for calls whose arguments are not inspected).
* The container's process is started as the small static program ``pyctr-seccomp-exec`` (built from
  ``_speedups/seccomp_exec.c``), handed to runc as an inherited descriptor and executed through
  ``/proc/self/fd``: it reads the program from another inherited descriptor, closes both, loads the
  filter with ``prctl(PR_SET_SECCOMP)`` exactly as runc does, and executes the container's command.
  The filter is in force from that ``execve`` on, as with runc; nothing is added to the container's
  root file system, and the command sees no extra descriptor.

Batches use it for their direct containers only: those have no task in the runtime, so nothing can
``exec`` into them (``runc exec`` takes the seccomp profile from the container's config, which here
has none; a task started through a shim keeps runc's own compilation for that reason).

Only what this reproduces exactly is taken over (:func:`loadable`): ``noNewPrivileges`` (an unprivileged
process can only load a filter under it, as runc then does too), no seccomp ``flags``, no listener
(``SCMP_ACT_NOTIFY``), architectures whose audit numbers are known here.  Anything else, or a host
without libseccomp or without the helper, leaves the profile to runc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["EXEC_HELPER", "CompileError", "compile_profile", "exec_helper", "loadable"]

#: The helper's file name next to the compiled speedups (``pyctr._speedups``).
EXEC_HELPER = "pyctr-seccomp-exec"

# classic BPF opcodes (linux/bpf_common.h) used by the stub
_LD_W_ABS = 0x20
_JMP_JA = 0x05
_JMP_JEQ_K = 0x15
_JMP_JGT_K = 0x25
_JMP_JSET_K = 0x45
_RET_K = 0x06
_INSN = struct.Struct("=HBBI")  # struct sock_filter, host byte order as seccomp_export_bpf writes it
_MAX_INSNS = 4096  # BPF_MAXINSNS

_ACT_KILL_THREAD = 0x00000000
_ACT_KILL_PROCESS = 0x80000000
_ACT_TRAP = 0x00030000
_ACT_ERRNO = 0x00050000
_ACT_TRACE = 0x7FF00000
_ACT_LOG = 0x7FFC0000
_ACT_ALLOW = 0x7FFF0000
_ACTIONS = {"SCMP_ACT_KILL": _ACT_KILL_THREAD, "SCMP_ACT_KILL_THREAD": _ACT_KILL_THREAD,
            "SCMP_ACT_KILL_PROCESS": _ACT_KILL_PROCESS, "SCMP_ACT_TRAP": _ACT_TRAP,
            "SCMP_ACT_ERRNO": _ACT_ERRNO, "SCMP_ACT_TRACE": _ACT_TRACE, "SCMP_ACT_LOG": _ACT_LOG,
            "SCMP_ACT_ALLOW": _ACT_ALLOW}
_ALLOWISH = {"SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_TRACE"}  # no -ENOSYS stub in front of these
_OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5,
        "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}

# AUDIT_ARCH_* of each seccomp architecture (linux/audit.h); x32 shares x86_64's and sets bit 30 of nr
_AUDIT_ARCH = {"x86_64": 0xC000003E, "x32": 0xC000003E, "x86": 0x40000003, "aarch64": 0xC00000B7,
               "arm": 0x40000028, "ppc64le": 0xC0000015, "ppc64": 0x80000015, "riscv64": 0xC00000F3}
_X32_BIT = 1 << 30

_SCMP_FLTATR_CTL_NNP = 3
_NR_SCMP_ERROR = -1


class CompileError(Exception):
    """The profile cannot be compiled here exactly as runc would; leave it to runc."""


class _Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


_lib: Any = None


def _libseccomp() -> Any:
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as e:
            raise CompileError(f"libseccomp is not available: {e}") from None
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        lib.seccomp_arch_native.restype = ctypes.c_uint32
        lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                               ctypes.POINTER(_Cmp)]
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        _lib = lib
    return _lib


def _arch_name(oci: str) -> str:
    if not oci.startswith("SCMP_ARCH_"):
        raise CompileError(f"unknown seccomp architecture {oci!r}")
    return oci[len("SCMP_ARCH_"):].lower()


def _action(name: str, errno_ret: int | None) -> int:
    if name not in _ACTIONS:
        raise CompileError(f"seccomp action {name!r} is left to runc")
    act = _ACTIONS[name]
    if act in (_ACT_ERRNO, _ACT_TRACE):
        act |= (errno.EPERM if errno_ret is None else int(errno_ret)) & 0xFFFF
    return act


def loadable(spec: Mapping[str, Any]) -> bool:
    """Whether the spec's seccomp profile can be loaded by the helper exactly as runc would load it."""
    linux = spec.get("linux") or {}
    prof = linux.get("seccomp")
    if not prof or not (spec.get("process") or {}).get("noNewPrivileges"):
        return False
    if prof.get("flags") or prof.get("listenerPath") or prof.get("listenerMetadata"):
        return False
    actions = [prof.get("defaultAction", "")] + [r.get("action", "") for r in prof.get("syscalls") or []]
    if any(a not in _ACTIONS for a in actions):
        return False
    return all(a.startswith("SCMP_ARCH_") and _arch_name(a) in _AUDIT_ARCH
               for a in prof.get("architectures") or [])


def _rules(prof: Mapping[str, Any]) -> list[tuple[str, int, list[dict[str, Any]]]]:
    """runc's view of the profile: one (name, action, args) per system call name, in order."""
    out = []
    for r in prof.get("syscalls") or []:
        act = _action(r.get("action", ""), r.get("errnoRet"))
        for name in r.get("names") or []:
            if not name:
                raise CompileError("empty system call name in the seccomp profile")
            out.append((name, act, list(r.get("args") or [])))
    return out


def _conditions(args: Sequence[Mapping[str, Any]]) -> list[list[_Cmp]]:
    """The condition sets of one rule: all together, or one rule per condition when two of them
    test the same argument (runc's rule for that case)."""
    conds = []
    seen: set[int] = set()
    split = False
    for a in args:
        index = int(a["index"])
        if not 0 <= index < 6 or a.get("op") not in _OPS:
            raise CompileError(f"invalid seccomp argument condition {dict(a)!r}")
        split = split or index in seen
        seen.add(index)
        conds.append(_Cmp(index, _OPS[a["op"]], int(a.get("value", 0)), int(a.get("valueTwo", 0))))
    return [[c] for c in conds] if split else [conds]


def _export(lib: Any, ctx: int) -> bytes:
    fd = os.memfd_create("pyctr-seccomp-export", os.MFD_CLOEXEC)
    try:
        rc = lib.seccomp_export_bpf(ctx, fd)
        if rc < 0:
            raise CompileError(f"libseccomp could not export the filter: {os.strerror(-rc)}")
        size = os.fstat(fd).st_size
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def _libseccomp_program(lib: Any, prof: Mapping[str, Any], rules: Sequence[tuple[str, int, list[Any]]],
                        default: int) -> bytes:
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise CompileError("libseccomp could not create a filter")
    try:
        for oci in prof.get("architectures") or []:
            arch = lib.seccomp_arch_resolve_name(_arch_name(oci).encode())
            if arch == 0:
                raise CompileError(f"libseccomp does not know the architecture {oci!r}")
            rc = lib.seccomp_arch_add(ctx, arch)
            if rc < 0 and rc != -errno.EEXIST:
                raise CompileError(f"libseccomp could not add the architecture {oci!r}: {os.strerror(-rc)}")
        lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_NNP, 0)
        for name, act, args in rules:
            if act == default:
                continue  # redundant: runc skips it
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr == _NR_SCMP_ERROR:
                continue  # unknown to this libseccomp: runc ignores it
            for conds in _conditions(args) if args else [[]]:
                arr = (_Cmp * len(conds))(*conds) if conds else None
                rc = lib.seccomp_rule_add_array(ctx, act, nr, len(conds), arr)
                if rc < 0:
                    raise CompileError(f"libseccomp refused the rule for {name}: {os.strerror(-rc)}")
        return _export(lib, ctx)
    finally:
        lib.seccomp_release(ctx)


def _enosys_stub(lib: Any, prof: Mapping[str, Any], rules: Sequence[tuple[str, int, list[Any]]]) -> bytes:
    """The instructions that run first: for a listed architecture, a system call number above the
    highest one the profile names (on that architecture, x32 counted apart) gets ``ENOSYS``;
    everything else goes on to libseccomp's program, which starts right after."""
    highest: dict[int, dict[str, int]] = {}  # audit arch -> {"x86_64"/"x32"/...: highest nr}
    for oci in prof.get("architectures") or []:
        name = _arch_name(oci)
        audit = _AUDIT_ARCH[name]
        if name in highest.get(audit, {}):
            continue
        arch = lib.seccomp_arch_resolve_name(name.encode())
        top = 0
        for rule_name, _, _ in rules:
            nr = lib.seccomp_syscall_resolve_name_arch(arch, rule_name.encode())
            if nr != _NR_SCMP_ERROR and nr > top:
                top = nr
        if top:
            highest.setdefault(audit, {})[name] = top
    enosys = _ACT_ERRNO | errno.ENOSYS
    # Laid out as: ld arch; one jeq per architecture to its section; ja <filter>; sections; filter.
    # Each section ends by returning ENOSYS or jumping to the filter ("filter": resolved below).
    sections: list[list[tuple[int, int, int, int | str]]] = []
    for tops in highest.values():
        sec: list[tuple[int, int, int, int | str]] = [(_LD_W_ABS, 0, 0, 0)]  # ld nr
        if set(tops) == {"x86_64", "x32"}:
            sec += [(_JMP_JSET_K, 2, 0, _X32_BIT),  # x32 call: two on
                    (_JMP_JGT_K, 3, 0, tops["x86_64"]),
                    (_JMP_JA, 0, 0, "filter"),
                    (_JMP_JGT_K, 1, 0, tops["x32"] | _X32_BIT)]
        elif "x86_64" in tops:
            sec += [(_JMP_JSET_K, 0, 1, _X32_BIT),  # an x32 call: not ours, to the filter
                    (_JMP_JA, 0, 0, "filter"),
                    (_JMP_JGT_K, 1, 0, tops["x86_64"])]
        elif "x32" in tops:
            sec += [(_JMP_JSET_K, 1, 0, _X32_BIT),
                    (_JMP_JA, 0, 0, "filter"),
                    (_JMP_JGT_K, 1, 0, tops["x32"] | _X32_BIT)]
        else:
            (top,) = tops.values()
            sec += [(_JMP_JGT_K, 1, 0, top)]
        sec += [(_JMP_JA, 0, 0, "filter"), (_RET_K, 0, 0, enosys)]
        sections.append(sec)
    if not sections:
        return b""
    head = 1 + len(sections) + 1
    starts = []
    pos = head
    for sec in sections:
        starts.append(pos)
        pos += len(sec)
    end = pos
    insns: list[tuple[int, int, int, int]] = [(_LD_W_ABS, 0, 0, 4)]
    for i, audit in enumerate(highest):
        jt = starts[i] - (len(insns) + 1)
        if jt > 255:
            raise CompileError("seccomp stub too long")
        insns.append((_JMP_JEQ_K, jt, 0, audit))
    insns.append((_JMP_JA, 0, 0, end - (len(insns) + 1)))
    for sec in sections:
        for code, jt, jf, k in sec:
            if k == "filter":
                k = end - (len(insns) + 1)
            assert isinstance(k, int)
            insns.append((code, jt, jf, k))
    return b"".join(_INSN.pack(*i) for i in insns)


def compile_profile(profile: Mapping[str, Any]) -> bytes:
    """The classic BPF program (``struct sock_filter`` array) that runc would load for ``profile``.

    :raises CompileError: when libseccomp is missing or the profile uses something :func:`loadable`
        leaves to runc.
    """
    lib = _libseccomp()
    default = _action(profile.get("defaultAction", ""), profile.get("defaultErrnoRet"))
    rules = _rules(profile)
    for oci in profile.get("architectures") or []:
        if _arch_name(oci) not in _AUDIT_ARCH:
            raise CompileError(f"seccomp architecture {oci!r} is left to runc")
    program = _libseccomp_program(lib, profile, rules, default)
    stub = b""
    default_errno = profile.get("defaultErrnoRet")
    if profile.get("defaultAction") not in _ALLOWISH and not (
            default_errno is not None and int(default_errno) == errno.ENOSYS):
        stub = _enosys_stub(lib, profile, rules)
    out = stub + program
    if not program or len(program) % _INSN.size or len(out) // _INSN.size > _MAX_INSNS:
        raise CompileError("the compiled seccomp program does not fit in one filter")
    return out


def exec_helper() -> str | None:
    """Path of the built ``pyctr-seccomp-exec`` helper, or ``None`` if this install has none (or has
    it on a file system mounted ``noexec``, where runc could not start it)."""
    from . import _speedups

    path = Path(_speedups.__file__).parent / EXEC_HELPER
    try:
        if not os.access(path, os.X_OK) or os.statvfs(path).f_flag & os.ST_NOEXEC:
            return None
    except OSError:
        return None
    return str(path)
