"""Helpers for the seccomp tests: read the filter a process runs under, and evaluate a classic BPF
seccomp program for a given system call, so two programs can be compared decision by decision."""

from __future__ import annotations

import ctypes
import operator
import os
import struct
from collections.abc import Iterator, Sequence

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_BIT = 1 << 30

_INSN = struct.Struct("=HBBI")
_ALU = {0x00: operator.add, 0x10: operator.sub, 0x20: operator.mul, 0x30: operator.floordiv,
        0x40: operator.or_, 0x50: operator.and_, 0x60: operator.lshift, 0x70: operator.rshift,
        0x90: operator.mod, 0xA0: operator.xor}
_PTRACE_SEIZE = 0x4206
_PTRACE_INTERRUPT = 0x4207
_PTRACE_DETACH = 17
_PTRACE_SECCOMP_GET_FILTER = 0x420C
_WALL = 0x40000000


def process_filter(pid: int) -> bytes:
    """The (single) seccomp filter of ``pid`` as a ``sock_filter`` array, read with
    ``PTRACE_SECCOMP_GET_FILTER`` (root only; the process is stopped for the read and let go)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]

    def call(req: int, addr: int, data: ctypes.c_void_p | int | None) -> int:
        rc = int(libc.ptrace(req, pid, ctypes.c_void_p(addr), data))
        if rc < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"ptrace({req:#x}, {pid}): {os.strerror(e)}")
        return rc

    call(_PTRACE_SEIZE, 0, None)
    try:
        call(_PTRACE_INTERRUPT, 0, None)
        os.waitpid(pid, _WALL)
        count = call(_PTRACE_SECCOMP_GET_FILTER, 0, None)
        buf = ctypes.create_string_buffer(count * _INSN.size)
        call(_PTRACE_SECCOMP_GET_FILTER, 0, ctypes.cast(buf, ctypes.c_void_p))
        return buf.raw
    finally:
        libc.ptrace(_PTRACE_DETACH, pid, None, None)


def seccomp_data(nr: int, arch: int, args: Sequence[int] = (0, 0, 0, 0, 0, 0), ip: int = 0) -> bytes:
    """``struct seccomp_data`` in host byte order."""
    full = list(args) + [0] * (6 - len(args))
    return struct.pack("=iIQ6Q", nr, arch, ip, *full)


def run_bpf(program: bytes, data: bytes) -> int:
    """What a seccomp filter returns for ``data`` (classic BPF, the instructions seccomp accepts)."""
    insns = [_INSN.unpack_from(program, i) for i in range(0, len(program), _INSN.size)]
    a = x = 0
    mem = [0] * 16
    pc = 0
    mask = 0xFFFFFFFF
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        cls = code & 0x07
        if cls == 0x00:  # BPF_LD
            mode = code & 0xE0
            if mode == 0x20:  # ABS, W
                a = struct.unpack_from("=I", data, k)[0]
            elif mode == 0x00:  # IMM
                a = k
            elif mode == 0x60:  # MEM
                a = mem[k]
            elif mode == 0x80:  # LEN
                a = len(data)
            else:
                raise ValueError(f"unsupported ld {code:#x}")
        elif cls == 0x01:  # BPF_LDX
            mode = code & 0xE0
            x = k if mode == 0x00 else mem[k] if mode == 0x60 else len(data)
        elif cls == 0x02:  # BPF_ST
            mem[k] = a
        elif cls == 0x03:  # BPF_STX
            mem[k] = x
        elif cls == 0x04:  # BPF_ALU
            op = code & 0xF0
            src = x if code & 0x08 else k
            a = (-a if op == 0x80 else _ALU[op](a, src)) & mask
        elif cls == 0x05:  # BPF_JMP
            op = code & 0xF0
            src = x if code & 0x08 else k
            if op == 0x00:
                pc += k
                continue
            taken = {0x10: a == src, 0x20: a > src, 0x30: a >= src, 0x40: bool(a & src)}[op]
            pc += jt if taken else jf
        elif cls == 0x06:  # BPF_RET
            return (a if code & 0x18 == 0x10 else k) & mask
        elif cls == 0x07:  # BPF_MISC
            if code & 0xF8 == 0x00:
                x = a
            else:
                a = x
        else:
            raise ValueError(f"unsupported instruction {code:#x}")


# argument values that tell apart the conditional rules of the default profile (clone's namespace
# flags, personality's allowed personas, socket's AF_VSOCK) and a few ordinary ones
ARG_SAMPLES: tuple[tuple[int, ...], ...] = (
    (0, 0, 0, 0, 0, 0), (1, 1, 1, 1, 1, 1), (0x7E020000,) * 6, (0x11,) * 6, (40,) * 6, (8,) * 6,
    (0x20000,) * 6, (0x20008,) * 6, (0xFFFFFFFF,) * 6, (0x10000000,) * 6, (0xFFFFFFFFFFFFFFFF,) * 6,
)


def decisions(program: bytes, arches: Sequence[int] = (AUDIT_ARCH_X86_64, AUDIT_ARCH_I386, AUDIT_ARCH_AARCH64),
              max_nr: int = 1100) -> Iterator[tuple[int, int, tuple[int, ...], int]]:
    """(arch, nr, args, action) over every system call number up to ``max_nr`` (x32 numbers too on
    x86_64) and :data:`ARG_SAMPLES`."""
    for arch in arches:
        nrs = list(range(max_nr))
        if arch == AUDIT_ARCH_X86_64:
            nrs += [X32_BIT | n for n in range(0, max_nr, 7)]
        for nr in nrs:
            for args in ARG_SAMPLES:
                yield arch, nr, args, run_bpf(program, seccomp_data(nr, arch, args))
