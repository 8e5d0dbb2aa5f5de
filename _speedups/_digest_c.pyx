# cython: language_level=3, boundscheck=False, wraparound=False
"""SHA-256 over OpenSSL libcrypto's ``SHA256_CTX``, with a checkpoint that can be restored, and a
read/hash/write loop that runs without the GIL.

Same API as the pure-Python twin :mod:`pyctr._speedups._digest_py` (see its docstring for the
checkpoint format, which both share).  The midstate checkpoint lets an interrupted ingest resume without
re-reading what was already written.
"""

from libc.errno cimport EINTR, errno
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset, strerror
from posix.unistd cimport read, write
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.exc cimport PyErr_CheckSignals

from pyctr._speedups._digest_py import KIND_MIDSTATE, pack_state, unpack_state

cdef extern from *:
    """
    #define OPENSSL_SUPPRESS_DEPRECATED 1
    #include <openssl/sha.h>
    """
    ctypedef struct SHA256_CTX:
        unsigned int h[8]
        unsigned int Nl
        unsigned int Nh
        unsigned int data[16]
        unsigned int num
        unsigned int md_len
    int SHA256_Init(SHA256_CTX *c) nogil
    int SHA256_Update(SHA256_CTX *c, const void *data, size_t n) nogil
    int SHA256_Final(unsigned char *md, SHA256_CTX *c) nogil

cdef enum:
    NOGIL_THRESHOLD = 65536  # release the GIL for updates at least this large
BUFSIZE = 1 << 20


cdef class Sha256:
    """SHA-256 that knows how many bytes it has hashed and can checkpoint and restore itself."""

    cdef SHA256_CTX ctx
    cdef bint busy

    def __cinit__(self, data=b""):
        SHA256_Init(&self.ctx)
        self.busy = False
        if data:
            self.update(data)

    @property
    def count(self):
        """Bytes hashed so far."""
        return self._count()

    cdef uint64_t _count(self):
        return ((<uint64_t>self.ctx.Nh << 32) | <uint64_t>self.ctx.Nl) >> 3

    def update(self, data):
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if self.busy:
                raise RuntimeError("Sha256.update called concurrently from two threads")
            if view.len >= NOGIL_THRESHOLD:
                self.busy = True
                with nogil:
                    SHA256_Update(&self.ctx, view.buf, <size_t>view.len)
                self.busy = False
            else:
                SHA256_Update(&self.ctx, view.buf, <size_t>view.len)
        finally:
            PyBuffer_Release(&view)

    def digest(self):
        cdef SHA256_CTX c
        cdef unsigned char md[32]
        memcpy(&c, &self.ctx, sizeof(SHA256_CTX))
        SHA256_Final(md, &c)
        return md[:32]

    def hexdigest(self):
        return self.digest().hex()

    def copy(self):
        cdef Sha256 other = Sha256.__new__(Sha256)
        memcpy(&other.ctx, &self.ctx, sizeof(SHA256_CTX))
        return other

    def state(self):
        """A checkpoint (kind ``M``): chaining words, byte count and the pending partial block."""
        cdef uint64_t count = self._count()
        cdef int i
        words = b"".join(int(self.ctx.h[i]).to_bytes(4, "big") for i in range(8))
        pending = (<unsigned char *>self.ctx.data)[:self.ctx.num]
        if <uint64_t>self.ctx.num != count % 64:
            raise RuntimeError("inconsistent SHA-256 context")
        return pack_state(KIND_MIDSTATE, count, words + pending)

    @classmethod
    def from_state(cls, blob):
        """Restore a checkpoint; ValueError if it is invalid or cannot be resumed here."""
        kind, count, payload = unpack_state(blob)
        cdef Sha256 h = Sha256.__new__(Sha256)
        if count == 0:
            return h
        if kind != KIND_MIDSTATE:
            raise ValueError("a count-only hash state cannot be resumed; re-hash the data")
        cdef bytes p = payload
        cdef const unsigned char *src = p
        cdef int i
        cdef uint64_t bits = <uint64_t>count * 8
        memset(&h.ctx, 0, sizeof(SHA256_CTX))
        for i in range(8):
            h.ctx.h[i] = ((<unsigned int>src[4 * i] << 24) | (<unsigned int>src[4 * i + 1] << 16)
                          | (<unsigned int>src[4 * i + 2] << 8) | <unsigned int>src[4 * i + 3])
        h.ctx.Nl = <unsigned int>(bits & 0xffffffff)
        h.ctx.Nh = <unsigned int>(bits >> 32)
        h.ctx.num = <unsigned int>(count % 64)
        h.ctx.md_len = 32
        memcpy(<unsigned char *>h.ctx.data, src + 32, h.ctx.num)
        return h


def copy_and_hash(int src_fd, int dst_fd, hasher, long long limit=-1, Py_ssize_t bufsize=BUFSIZE):
    """Read ``src_fd`` until EOF (or ``limit`` bytes), write each chunk fully to ``dst_fd`` (unless it is
    -1) and hash it, all without the GIL.  A chunk is hashed only once written, so after an OSError
    ``hasher.count`` still says how many bytes reached ``dst_fd``.  Signals interrupt the loop as they
    would Python code (a blocked read returns EINTR, then the handlers run: Ctrl-C raises
    KeyboardInterrupt).  Returns the bytes copied."""
    if not isinstance(hasher, Sha256):
        from pyctr._speedups._digest_py import copy_and_hash as py_copy

        return py_copy(src_fd, dst_fd, hasher, limit, bufsize)
    cdef Sha256 h = <Sha256>hasher
    if h.busy:
        raise RuntimeError("hasher in use by another thread")
    if bufsize <= 0:
        raise ValueError("bufsize must be positive")
    cdef unsigned char *buf = <unsigned char *>malloc(bufsize)
    if buf == NULL:
        raise MemoryError()
    cdef long long total = 0
    cdef Py_ssize_t want, n, done, w
    cdef int err = 0
    h.busy = True
    try:
        with nogil:
            while limit < 0 or total < limit:
                want = bufsize
                if limit >= 0 and limit - total < want:
                    want = <Py_ssize_t>(limit - total)
                n = read(src_fd, buf, want)
                if n < 0:
                    if errno == EINTR:
                        with gil:
                            PyErr_CheckSignals()  # Ctrl-C raises KeyboardInterrupt here
                        continue
                    err = errno
                    break
                if n == 0:
                    break
                if dst_fd >= 0:
                    done = 0
                    while done < n:
                        w = write(dst_fd, buf + done, n - done)
                        if w < 0:
                            if errno == EINTR:
                                with gil:
                                    PyErr_CheckSignals()
                                continue
                            err = errno
                            break
                        done += w
                    if err:
                        break
                SHA256_Update(&h.ctx, buf, <size_t>n)
                total += n
    finally:
        h.busy = False
        free(buf)
    if err:
        raise OSError(err, strerror(err).decode())
    return total
