"""The default seccomp profile: moby's/containerd's allow list, kept here as data.

``default_profile(capabilities, arch)`` returns the OCI ``linux.seccomp`` object: deny (``EPERM``) by
default, allow the syscalls an ordinary program needs, and open up the privileged ones only when the
container holds the capability that would let it use them anyway (``mount`` with ``CAP_SYS_ADMIN``,
``ptrace`` with ``CAP_SYS_PTRACE``, ...).  Without ``CAP_SYS_ADMIN``, ``clone`` may not create new
namespaces and ``clone3`` fails with ``ENOSYS`` so that libc falls back to ``clone``.  ``socket`` may
not open ``AF_VSOCK``; ``personality`` accepts only the harmless personas.

Syscall names unknown to the host's libseccomp are skipped by runc, so one list serves every kernel.

One departure from moby's profile: on amd64 the x32 ABI is listed only when the running kernel has it
(most distribution kernels are built without it, or keep it off).  Every architecture listed makes
runc compile the filter once more (~5 ms of CPU per container here); an x32 system call on a kernel
without x32 cannot happen, and if the kernel had it but the profile did not list it, seccomp would
kill the caller (stricter, never looser).
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from typing import Any


def _words(text: str) -> list[str]:
    return text.split()


# Everyday syscalls: processes, files, memory, signals, time, sockets, IPC, polling.
_ALLOWED = _words("""
accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown chown32
clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3
epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old
eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate
fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync
fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync
ftruncate ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake futimesat
get_robust_list get_thread_area getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32
getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority
getrandom getresgid getresgid32 getresuid getresuid32 getrlimit getrusage getsid getsockname getsockopt
gettid gettimeofday getuid getuid32 getxattr inotify_add_watch inotify_init inotify_init1
inotify_rm_watch io_cancel io_destroy io_getevents io_pgetevents io_pgetevents_time64 io_setup
io_submit ioctl ioprio_get ioprio_set ipc kill landlock_add_rule landlock_create_ruleset
landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listxattr llistxattr _llseek
lremovexattr lseek lsetxattr lstat lstat64 madvise map_shadow_stack membarrier memfd_create
memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect
mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend
mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock munlockall munmap
name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause pidfd_open
pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64
preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read
readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages
removexattr rename renameat renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending
rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64
rt_tgsigqueueinfo sched_get_priority_max sched_get_priority_min sched_getaffinity sched_getattr
sched_getparam sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64
sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select semctl
semget semop semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto
set_robust_list set_thread_area set_tid_address setfsgid setfsgid32 setfsuid setfsuid32 setgid
setgid32 setgroups setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid
setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit setsid setsockopt setuid setuid32
setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask sigreturn
socketcall socketpair splice stat stat64 statfs statfs64 statx symlink symlinkat sync
sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete timer_getoverrun
timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime
timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask
uname unlink unlinkat utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid
write writev
""")

# Allowed on every kernel pyctr runs on (moby gates it on 4.8, when ptrace stopped bypassing seccomp).
_ALLOWED_MODERN = ["ptrace"]

# Allowed when the container holds the capability.
_BY_CAPABILITY: dict[str, list[str]] = {
    "CAP_DAC_READ_SEARCH": ["open_by_handle_at"],
    "CAP_SYS_ADMIN": [
        "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
        "lookup_dcookie", "mount", "mount_setattr", "move_mount", "open_tree", "perf_event_open",
        "quotactl", "quotactl_fd", "setdomainname", "sethostname", "setns", "syslog", "umount",
        "umount2", "unshare",
    ],
    "CAP_SYS_BOOT": ["reboot"],
    "CAP_SYS_CHROOT": ["chroot"],
    "CAP_SYS_MODULE": ["delete_module", "init_module", "finit_module"],
    "CAP_SYS_PACCT": ["acct"],
    "CAP_SYS_PTRACE": ["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev",
                       "ptrace"],
    "CAP_SYS_RAWIO": ["iopl", "ioperm"],
    "CAP_SYS_TIME": ["settimeofday", "stime", "clock_settime", "clock_settime64"],
    "CAP_SYS_TTY_CONFIG": ["vhangup"],
    "CAP_SYS_NICE": ["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"],
    "CAP_SYSLOG": ["syslog"],
    "CAP_BPF": ["bpf"],
    "CAP_PERFMON": ["perf_event_open"],
}

# Per-architecture extras and the seccomp architectures a filter must cover.
_ARCH: dict[str, tuple[list[str], list[str]]] = {
    "amd64": (["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"], ["arch_prctl", "modify_ldt"]),
    "386": (["SCMP_ARCH_X86"], ["arch_prctl", "modify_ldt"]),
    "arm64": (["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
              ["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush",
               "set_tls"]),
    "arm": (["SCMP_ARCH_ARM"],
            ["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush",
             "set_tls"]),
    "ppc64le": (["SCMP_ARCH_PPC64LE"], ["sync_file_range2", "swapcontext"]),
    "s390x": (["SCMP_ARCH_S390X", "SCMP_ARCH_S390"],
              ["s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"]),
    "riscv64": (["SCMP_ARCH_RISCV64"], ["riscv_flush_icache"]),
}
_MACHINE = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
            "armv6l": "arm", "i686": "386", "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x",
            "riscv64": "riscv64"}

# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_CLONE_NS_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
_AF_VSOCK = 40
_ENOSYS = 38
_EPERM = 1
# PER_LINUX, UNAME26, PER_LINUX32, UNAME26|PER_LINUX32, and 0xffffffff (query the persona)
_PERSONAS = (0x0, 0x0020000, 0x0008, 0x0020008, 0xFFFFFFFF)


_X32: bool | None = None


def kernel_has_x32() -> bool:
    """Whether this kernel runs x32 system calls (``getpid`` with the x32 bit set answers)."""
    global _X32
    if _X32 is None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            _X32 = int(libc.syscall(ctypes.c_long(0x40000000 | 39))) > 0
        except Exception:
            _X32 = True  # cannot tell: keep moby's list
    return _X32


def host_arch() -> str:
    m = platform.machine().lower()
    return _MACHINE.get(m, m)


def _arg(index: int, value: int, op: str, value_two: int = 0) -> dict[str, Any]:
    return {"index": index, "value": value, "valueTwo": value_two, "op": op}


def _rule(names: Iterable[str], action: str = "SCMP_ACT_ALLOW", args: list[dict[str, Any]] | None = None,
          errno: int | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"names": sorted(set(names)), "action": action}
    if args:
        r["args"] = args
    if errno is not None:
        r["errnoRet"] = errno
    return r


def default_profile(capabilities: Iterable[str], arch: str | None = None,
                    x32: bool | None = None) -> dict[str, Any]:
    """The OCI ``linux.seccomp`` object for a container whose bounding set is ``capabilities``.
    ``x32`` (amd64): list the x32 ABI; default: when the running kernel has it."""
    caps = {c.upper() if c.upper().startswith("CAP_") else "CAP_" + c.upper() for c in capabilities}
    arch = arch or host_arch()
    archs, extra = _ARCH.get(arch, ([], []))
    if arch == "amd64" and not (kernel_has_x32() if x32 is None else x32):
        archs = [a for a in archs if a != "SCMP_ARCH_X32"]
    rules: list[dict[str, Any]] = [_rule([*_ALLOWED, *_ALLOWED_MODERN, *extra])]
    rules.append(_rule(["socket"], args=[_arg(0, _AF_VSOCK, "SCMP_CMP_NE")]))
    for p in _PERSONAS:
        rules.append(_rule(["personality"], args=[_arg(0, p, "SCMP_CMP_EQ")]))
    for cap in sorted(caps):
        names = _BY_CAPABILITY.get(cap)
        if names:
            rules.append(_rule(names))
    if "CAP_SYS_ADMIN" not in caps:
        # clone's flags are its first argument except on s390, where the stack comes first
        idx = 1 if arch == "s390x" else 0
        rules.append(_rule(["clone"], args=[_arg(idx, _CLONE_NS_FLAGS, "SCMP_CMP_MASKED_EQ", 0)]))
        rules.append(_rule(["clone3"], action="SCMP_ACT_ERRNO", errno=_ENOSYS))
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": _EPERM,
        "architectures": list(archs),
        "syscalls": rules,
    }


def allowed_syscalls(capabilities: Iterable[str], arch: str | None = None) -> set[str]:
    """Every syscall name the default profile allows unconditionally or with arguments."""
    out: set[str] = set()
    for r in default_profile(capabilities, arch)["syscalls"]:
        if r["action"] == "SCMP_ACT_ALLOW":
            out.update(r["names"])
    return out
