"""Framing and value encoding for pyctr's RPC (see PROTOCOL.md).

A frame is a 4-byte big-endian length followed by that many bytes of msgpack.  Values are plain
msgpack types plus these extension types:

====  ===========  ==========================================================================
code  name         payload (msgpack)
====  ===========  ==========================================================================
1     tuple        array of values
2     record       ``[qualified class name, {field: value}]`` -- a dataclass of a ``pyctr``
                   module, rebuilt field by field on the other side
3     enum         ``[qualified class name, value]``
4     handle       integer: an object living in the server, called through the connection
5     error        ``[code, message]`` (only inside stream items)
6     path         the raw bytes of a file system path
====  ===========  ==========================================================================
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib
import os
import pathlib
import struct
import types
from collections.abc import Callable
from typing import Any

import msgpack

from ..errdefs import Internal, InvalidArgument

MAX_FRAME = 64 << 20
HEADER = struct.Struct(">I")

EXT_TUPLE, EXT_RECORD, EXT_ENUM, EXT_HANDLE, EXT_ERROR, EXT_PATH = 1, 2, 3, 4, 5, 6
_FUNCTIONS = (types.FunctionType, types.MethodType, types.BuiltinFunctionType, functools.partial)


class Handle:
    """A reference to an object held by the server for one connection."""

    __slots__ = ("id",)

    def __init__(self, id: int) -> None:
        self.id = id

    def __repr__(self) -> str:
        return f"Handle({self.id})"


def _qualname(obj: type) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


_CLASS_CACHE: dict[str, type] = {}


def _resolve_class(name: str) -> type:
    cls = _CLASS_CACHE.get(name)
    if cls is not None:
        return cls
    module, _, qual = name.partition(":")
    if not (module == "pyctr" or module.startswith("pyctr.")):
        raise InvalidArgument(f"refusing to rebuild {name!r}: not a pyctr type")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise InvalidArgument(f"{name!r} is not a class")
    _CLASS_CACHE[name] = obj
    return obj


def make_packer(to_handle: Callable[[Any], int] | None) -> msgpack.Packer:
    """A packer for one side: ``to_handle`` turns an object that has no value encoding into a handle
    id (server side); without it such objects are an error (client side, except proxies)."""

    def default(obj: Any) -> Any:
        if isinstance(obj, tuple):
            return msgpack.ExtType(EXT_TUPLE, pack_value([*obj]))
        if isinstance(obj, enum.Enum):
            return msgpack.ExtType(EXT_ENUM, pack_value([_qualname(type(obj)), obj.value]))
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
            return msgpack.ExtType(EXT_RECORD, pack_value([_qualname(type(obj)), fields]))
        if isinstance(obj, pathlib.PurePath):
            return msgpack.ExtType(EXT_PATH, os.fsencode(obj))
        if isinstance(obj, os.PathLike):
            return os.fspath(obj)
        if isinstance(obj, (set, frozenset)):
            return list(obj)
        h = getattr(obj, "__pyctr_handle__", None)
        if isinstance(h, int):
            return msgpack.ExtType(EXT_HANDLE, msgpack.packb(h))
        if isinstance(obj, _FUNCTIONS):
            return None
        if to_handle is not None:
            return msgpack.ExtType(EXT_HANDLE, msgpack.packb(to_handle(obj)))
        raise InvalidArgument(f"cannot send a {type(obj).__name__} over the RPC connection")

    def pack_value(v: Any) -> bytes:
        out: bytes = msgpack.packb(v, default=default, use_bin_type=True, strict_types=True)
        return out

    return msgpack.Packer(default=default, use_bin_type=True, strict_types=True)


def make_ext_hook(from_handle: Callable[[int], Any]) -> Callable[[int, bytes], Any]:
    def unpack(data: bytes) -> Any:
        return msgpack.unpackb(data, ext_hook=hook, raw=False, strict_map_key=False)

    def hook(code: int, data: bytes) -> Any:
        if code == EXT_TUPLE:
            return tuple(unpack(data))
        if code == EXT_ENUM:
            name, value = unpack(data)
            return _resolve_class(name)(value)
        if code == EXT_RECORD:
            name, fields = unpack(data)
            cls = _resolve_class(name)
            obj: Any = object.__new__(cls)
            for k, v in fields.items():
                object.__setattr__(obj, k, v)
            return obj
        if code == EXT_HANDLE:
            return from_handle(unpack(data))
        if code == EXT_PATH:
            return pathlib.Path(os.fsdecode(data))
        if code == EXT_ERROR:
            from ..errdefs import from_code

            c, m = unpack(data)
            return from_code(c, m)
        return msgpack.ExtType(code, data)

    return hook


def encode_frame(packer: msgpack.Packer, msg: Any) -> bytes:
    body: bytes = packer.pack(msg)
    if len(body) > MAX_FRAME:
        raise InvalidArgument(f"message of {len(body)} bytes exceeds the {MAX_FRAME}-byte frame limit")
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes, ext_hook: Callable[[int, bytes], Any]) -> Any:
    try:
        return msgpack.unpackb(body, ext_hook=ext_hook, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise Internal(f"malformed RPC frame: {e}") from None


def recv_exact(sock: Any, n: int) -> bytes | None:
    """Read exactly ``n`` bytes; None on a clean EOF before the first byte."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            if not buf:
                return None
            raise ConnectionError("connection closed in the middle of a frame")
        buf += chunk
    return bytes(buf)


def read_frame(sock: Any) -> bytes | None:
    head = recv_exact(sock, HEADER.size)
    if head is None:
        return None
    (n,) = HEADER.unpack(head)
    if n > MAX_FRAME:
        raise ConnectionError(f"frame of {n} bytes exceeds the limit ({MAX_FRAME})")
    body = recv_exact(sock, n)
    if body is None:
        raise ConnectionError("connection closed after a frame header")
    return body
