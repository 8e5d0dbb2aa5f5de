"""containerd's filter grammar (``pkg/filters``), used by content, images, snapshots, containers and
events to select objects.

A filter string is one or more *selectors* joined by ``,`` (all must match); several filter strings
are ORed.  No filter at all, or the empty string, matches everything::

    selectors := selector ("," selector)*
    selector  := fieldpath [operator value]
    fieldpath := field ("." field)*
    field     := quoted | [A-Za-z0-9_-]+
    operator  := "==" | "!=" | "~="
    value     := quoted | [^\\s,]+
    quoted    := "..." (Go escapes); after ~= also /.../ and |...|

A bare field path tests presence; ``==`` needs the field present and equal; ``!=`` matches when the
value differs (an absent field has the value ``""``); ``~=`` is a regular expression search (Python
``re`` syntax, close to Go's RE2 for the common cases).  Examples::

    labels."a b"==x          name~=/^foo/,labels.bar          topic~="/tasks/"

Matching goes through an *adaptor*: a function from a field path (``["labels", "a b"]``) to
``(value, present)``.  :func:`match_dict` adapts nested mappings; :func:`labels_adaptor` helps objects
whose remaining path is a label key (containerd joins ``labels.a.b`` back to the key ``a.b``).

Differences from containerd, on purpose: whitespace between tokens is ignored everywhere (containerd
rejects it before ``,`` and at the end), and an invalid regular expression is an
:class:`~pyctr.errdefs.InvalidArgument` at parse time instead of silently matching nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errdefs import InvalidArgument

Adaptor = Callable[[list[str]], tuple[str, bool]]

_OPERATORS = ("==", "!=", "~=")


class Filter:
    """A parsed filter; :meth:`match` runs it against an adaptor."""

    def match(self, adaptor: Adaptor) -> bool:
        raise NotImplementedError

    def match_dict(self, obj: Mapping[str, Any]) -> bool:
        return self.match(dict_adaptor(obj))


class _Always(Filter):
    def match(self, adaptor: Adaptor) -> bool:
        return True

    def __repr__(self) -> str:
        return "Always"


ALWAYS: Filter = _Always()


@dataclass(frozen=True)
class Selector(Filter):
    fieldpath: tuple[str, ...]
    operator: str  # "?" (present), "==", "!=", "~="
    value: str = ""
    regex: re.Pattern[str] | None = None

    def match(self, adaptor: Adaptor) -> bool:
        value, present = adaptor(list(self.fieldpath))
        if self.operator == "?":
            return present
        if self.operator == "==":
            return present and value == self.value
        if self.operator == "!=":
            return value != self.value
        assert self.regex is not None
        return self.regex.search(value) is not None


@dataclass(frozen=True)
class All(Filter):
    filters: tuple[Filter, ...]

    def match(self, adaptor: Adaptor) -> bool:
        return all(f.match(adaptor) for f in self.filters)


@dataclass(frozen=True)
class Any_(Filter):
    filters: tuple[Filter, ...]

    def match(self, adaptor: Adaptor) -> bool:
        return any(f.match(adaptor) for f in self.filters)


# -- scanning ----------------------------------------------------------------------------------------

_EOF, _FIELD, _VALUE, _QUOTED, _SEP, _OP, _OTHER = "EOF", "field", "value", "quoted", "sep", "op", "other"
_QUOTES = '"/|'


def _is_field_char(c: str) -> bool:
    return c == "-" or c == "_" or ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9")


def _is_value_char(c: str) -> bool:
    return c != "," and not c.isspace() and c.isprintable()


@dataclass
class _Tok:
    kind: str
    pos: int
    text: str


class _ParseError(Exception):
    def __init__(self, pos: int, msg: str) -> None:
        super().__init__(msg)
        self.pos = pos
        self.msg = msg


class _Scanner:
    def __init__(self, s: str) -> None:
        self.s = s
        self.pos = 0
        self.value_mode = False

    def _skip_space(self) -> None:
        while self.pos < len(self.s) and self.s[self.pos].isspace():
            self.pos += 1

    def peek(self) -> _Tok:
        saved = (self.pos, self.value_mode)
        try:
            return self.scan()
        except _ParseError as e:
            return _Tok(_OTHER, e.pos, "")
        finally:
            self.pos, self.value_mode = saved

    def scan(self) -> _Tok:
        self._skip_space()
        s, start = self.s, self.pos
        if start >= len(s):
            return _Tok(_EOF, start, "")
        c = s[start]
        if c == "\x00":
            raise _ParseError(start, "unexpected null")
        if c in _QUOTES:
            end = self._scan_quoted(c)
            self.value_mode = False
            return _Tok(_QUOTED, start, s[start:end])
        if c in ",.":
            self.pos += 1
            self.value_mode = False
            return _Tok(_SEP, start, c)
        if c in "=!~":
            end = start
            while end < len(s) and s[end] in "=!~":
                end += 1
            self.pos = end
            self.value_mode = True
            return _Tok(_OP, start, s[start:end])
        if self.value_mode:
            end = start
            while end < len(s) and _is_value_char(s[end]):
                end += 1
            if end == start:
                self.pos += 1
                return _Tok(_OTHER, start, c)
            self.pos = end
            self.value_mode = False
            return _Tok(_VALUE, start, s[start:end])
        if _is_field_char(c):
            end = start
            while end < len(s) and _is_field_char(s[end]):
                end += 1
            self.pos = end
            return _Tok(_FIELD, start, s[start:end])
        self.pos += 1
        return _Tok(_OTHER, start, c)

    def _scan_quoted(self, quote: str) -> int:
        s, start = self.s, self.pos
        i = start + 1
        while True:
            if i >= len(s) or s[i] == "\n":
                raise _ParseError(start, "quoted literal not terminated")
            c = s[i]
            if c == quote:
                self.pos = i + 1
                return i + 1
            i += 2 if c == "\\" else 1


_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


def _unquote(text: str) -> str:
    """Go string-literal unquoting, with ``/`` and ``|`` also allowed as the quote character."""
    quote, body = text[0], text[1:-1]
    out: list[str] = []
    raw = bytearray()  # \x and octal escapes are bytes (Go strings are bytes); decode at the end

    def flush() -> None:
        if raw:
            out.append(raw.decode("utf-8", "surrogateescape"))
            raw.clear()

    i = 0
    while i < len(body):
        c = body[i]
        if c == quote:
            raise ValueError("unescaped quote")
        if c != "\\":
            flush()
            out.append(c)
            i += 1
            continue
        if i + 1 >= len(body):
            raise ValueError("trailing backslash")
        e = body[i + 1]
        i += 2
        if e in _SIMPLE_ESCAPES:
            flush()
            out.append(_SIMPLE_ESCAPES[e])
        elif e in "xuU":
            n = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i:i + n]
            if len(digits) != n or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise ValueError(f"illegal \\{e} escape")
            v = int(digits, 16)
            i += n
            if e == "x":
                raw.append(v)
            else:
                if v > 0x10FFFF or 0xD800 <= v <= 0xDFFF:
                    raise ValueError("escaped code point out of range")
                flush()
                out.append(chr(v))
        elif e in "01234567":
            digits = body[i - 1:i + 2]
            if len(digits) != 3 or any(d not in "01234567" for d in digits):
                raise ValueError("illegal octal escape")
            v = int(digits, 8)
            if v > 255:
                raise ValueError("octal escape out of range")
            raw.append(v)
            i += 2
        elif e in "'\"|/":
            if e != quote:
                raise ValueError(f"illegal escape \\{e}")
            flush()
            out.append(e)
        else:
            raise ValueError(f"illegal escape sequence \\{e}")
    flush()
    return "".join(out)


class _Parser:
    def __init__(self, s: str) -> None:
        self.s = s
        self.sc = _Scanner(s)

    def parse(self) -> Filter:
        sels: list[Filter] = [self.selector()]
        while True:
            tok = self.sc.peek()
            if tok.kind == _EOF:
                break
            if tok.kind == _SEP and tok.text == ",":
                self.sc.scan()
                sels.append(self.selector())
                continue
            raise _ParseError(tok.pos, f"unexpected input: {self.s[tok.pos:tok.pos + 1]!r}")
        return sels[0] if len(sels) == 1 else All(tuple(sels))

    def selector(self) -> Selector:
        path = self.fieldpath()
        nxt = self.sc.peek()
        if nxt.kind == _EOF or (nxt.kind == _SEP and nxt.text == ","):
            return Selector(tuple(path), "?")
        tok = self.sc.scan()
        if tok.kind != _OP:
            raise _ParseError(tok.pos, 'expected an operator ("=="|"!="|"~=")')
        if tok.text not in _OPERATORS:
            raise _ParseError(tok.pos, f"unsupported operator {tok.text!r}")
        value = self.value(tok.text == "~=")
        regex = None
        if tok.text == "~=":
            try:
                regex = re.compile(value)
            except re.error as e:
                raise _ParseError(tok.pos + 2, f"invalid regular expression {value!r}: {e}") from None
        return Selector(tuple(path), tok.text, value, regex)

    def fieldpath(self) -> list[str]:
        path = [self.field()]
        while True:
            tok = self.sc.peek()
            if tok.kind == _SEP and tok.text == ".":
                self.sc.scan()
                path.append(self.field())
            else:
                return path

    def field(self) -> str:
        tok = self.sc.scan()
        if tok.kind == _FIELD:
            return tok.text
        if tok.kind == _QUOTED:
            return self.unquote(tok, alt=False)
        raise _ParseError(tok.pos, "expected field or quoted")

    def value(self, alt: bool) -> str:
        tok = self.sc.scan()
        if tok.kind in (_VALUE, _FIELD):
            return tok.text
        if tok.kind == _QUOTED:
            return self.unquote(tok, alt=alt)
        raise _ParseError(tok.pos, "expected value or quoted")

    def unquote(self, tok: _Tok, alt: bool) -> str:
        if not alt and tok.text[0] != '"':
            raise _ParseError(tok.pos, "invalid quote encountered")
        try:
            return _unquote(tok.text)
        except ValueError as e:
            raise _ParseError(tok.pos, f"unquoting failed: {e}") from None


def _describe(s: str, pos: int, msg: str) -> str:
    if pos < len(s):
        return f"invalid filter: [{s[:pos]} >|{s[pos]}|< {s[pos + 1:]}] (at position {pos}): {msg}"
    return f"invalid filter: [{s}] (at position {pos}, the end): {msg}"


def parse_one(s: str) -> Filter:
    """Parse one filter string (selectors ANDed); ``""`` matches everything."""
    if s == "":
        return ALWAYS
    try:
        return _Parser(s).parse()
    except _ParseError as e:
        raise InvalidArgument(_describe(s, e.pos, e.msg)) from None


def parse(filters: Iterable[str] | str | None) -> Filter:
    """Parse filter strings (ORed); none at all matches everything.  InvalidArgument on bad syntax,
    naming the position."""
    if filters is None:
        return ALWAYS
    if isinstance(filters, str):
        filters = [filters]
    parsed = [parse_one(f) for f in filters]
    if not parsed:
        return ALWAYS
    if any(f is ALWAYS for f in parsed):
        return ALWAYS
    return parsed[0] if len(parsed) == 1 else Any_(tuple(parsed))


# -- adaptors ----------------------------------------------------------------------------------------


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def dict_adaptor(obj: Mapping[str, Any]) -> Adaptor:
    """An adaptor over nested mappings: ``a.b.c`` walks ``obj["a"]["b"]["c"]``.  When a step does not
    exist, the rest of the path is also tried joined with dots (``labels.a.b`` finds the key ``a.b``).
    A present mapping value is present with the value ``""``; ``None`` counts as absent."""

    def adapt(path: list[str]) -> tuple[str, bool]:
        return _lookup(obj, path)

    return adapt


def _lookup(node: Any, path: Sequence[str]) -> tuple[str, bool]:
    if not path:
        if node is None:
            return "", False
        if isinstance(node, Mapping | list | tuple):
            return "", True
        return _scalar(node), True
    if not isinstance(node, Mapping):
        return "", False
    key = path[0]
    if key in node:
        value, present = _lookup(node[key], path[1:])
        if present:
            return value, present
    joined = ".".join(path)
    if len(path) > 1 and joined in node and node[joined] is not None:
        return _lookup(node[joined], [])
    return "", False


def labels_adaptor(labels: Mapping[str, str], path: Sequence[str]) -> tuple[str, bool]:
    """containerd's ``checkMap``: the rest of the path, joined with dots, is a key of ``labels``."""
    if not path:
        return "", False
    key = ".".join(path)
    if key in labels:
        return labels[key], True
    return "", False


def match_dict(obj: Mapping[str, Any], filters: Iterable[str] | str | Filter | None) -> bool:
    """Whether the nested mapping ``obj`` matches ``filters`` (strings, or an already parsed Filter)."""
    f = filters if isinstance(filters, Filter) else parse(filters)
    return f.match(dict_adaptor(obj))


__all__ = [
    "ALWAYS",
    "Adaptor",
    "All",
    "Any_",
    "Filter",
    "Selector",
    "dict_adaptor",
    "labels_adaptor",
    "match_dict",
    "parse",
    "parse_one",
]
