"""containerd's filter grammar: the cases of containerd's own pkg/filters tests, plus pyctr's extras."""

from __future__ import annotations

from typing import Any

import pytest
from pyctr.errdefs import InvalidArgument
from pyctr.filters import ALWAYS, match_dict, parse

CORPUS: list[dict[str, Any]] = [
    {"name": "foo", "labels": {"foo": "true"}},
    {"name": "bar"},
    {"name": "foo", "labels": {"foo": "present", "more complex label": "present"}},
    {"name": "bar", "labels": {"bar": "true"}},
    {"name": "fooer", "labels": {'more complex label with \\ and "': "present"}},
    {"name": "fooer", "labels": {'more complex label with \\ and ".post': "present"}},
    {"name": "baz", "other": "too complex, yo"},
    {"name": "bazo", "other": "abc"},
    {"name": "compound", "labels": {"foo": "omg_asdf.asdf-qwer"}},
]


def select(flt: str | list[str]) -> list[int]:
    f = parse(flt)
    return [i for i, o in enumerate(CORPUS) if f.match_dict(o)]


@pytest.mark.parametrize(("flt", "want"), [
    ("", list(range(9))),
    ("name", list(range(9))),
    ("labels.foo", [0, 2, 8]),
    ("labels.foo,name", [0, 2, 8]),
    ("labels.foo==true", [0]),
    ("labels.foo==omg_asdf.asdf-qwer", [8]),
    ("name==bar", [1, 3]),
    ("name!=bar", [0, 2, 4, 5, 6, 7, 8]),
    ("name==bar,labels.bar", [3]),
    ('other=="too complex, yo"', [6]),
    ("other~=[abc]+,name!=foo", [6, 7]),
    ("other~=/[abc]+/,name!=foo", [6, 7]),
    ("other~=/[abc]{1,2}/,name!=foo", [6, 7]),
    ("other~=|[abc]{1,2}|,name!=foo", [6, 7]),
    ('other~=/[abc]{0,1}"\\//,name!=foo', []),
    ("name==bar,labels.bar==true", [3]),
    ("name==bar,labels.bar==wrong", []),
    ('name==foo,labels."more complex label"', [2]),
    ('labels."more complex label with \\\\ and \\""==present', [4]),
    ('labels."more complex label with \\\\ and \\"".post==present', [5]),
    ("labels.missing!=x", list(range(9))),  # != matches absent fields, as containerd
    ("name == foo", [0, 2]),  # whitespace between tokens is ignored
])
def test_containerd_cases(flt: str, want: list[int]) -> None:
    assert select(flt) == want


def test_several_filters_are_ored() -> None:
    assert select(["name==bar", "labels.foo==true"]) == [0, 1, 3]
    assert select([]) == list(range(9))
    assert parse([]) is ALWAYS
    assert parse(None) is ALWAYS
    assert parse(["name==x", ""]) is ALWAYS  # an empty filter matches everything


@pytest.mark.parametrize(("flt", "pos", "msg"), [
    ("labels.|foo|==omg", 7, "invalid quote encountered"),
    ('labels.?"more"==present', 7, "expected field or quoted"),
    ("name==foo,", 10, "expected field or quoted"),
    ("labels.", 7, "expected field or quoted"),
    ("image~=,id?=?fbaq", 7, "expected value or quoted"),
    ("labels.ns/key==value", 9, "quoted literal not terminated"),
    ("labels.key==/value", 12, "quoted literal not terminated"),
    ('labels."\\g"', 7, "illegal escape"),
    ('labels."\\xzz"', 7, "illegal"),
    ("name=foo", 4, "unsupported operator"),
    ("name===foo", 4, "unsupported operator"),
    ("name foo", 5, "expected an operator"),
    ("name==foo bar", 10, "unexpected input"),
    ("name~=[", 6, "invalid regular expression"),
    ("a\x00b", 1, "unexpected null"),
])
def test_syntax_errors_name_the_position(flt: str, pos: int, msg: str) -> None:
    with pytest.raises(InvalidArgument) as ei:
        parse([flt])
    text = str(ei.value)
    assert f"position {pos}" in text, text
    assert msg in text, text
    assert isinstance(ei.value, ValueError)


def test_quoted_values_and_escapes() -> None:
    obj = {"labels": {"a b": "x,y", "nl": "1\n2", "u": "é", "x": "\x01"}}
    assert match_dict(obj, ['labels."a b"=="x,y"'])
    assert match_dict(obj, ['labels.nl=="1\\n2"'])
    assert match_dict(obj, ['labels.u=="\\u00e9"'])
    assert match_dict(obj, ['labels.u=="\\U000000e9"'])
    assert match_dict(obj, ['labels.x=="\\x01"'])
    assert match_dict(obj, ['labels.x=="\\001"'])
    assert not match_dict(obj, ['labels."a b"==x'])


def test_match_dict_walks_nested_mappings_and_dotted_keys() -> None:
    env = {"topic": "/tasks/exit", "namespace": "default",
           "event": {"container_id": "c1", "exit_status": 0, "io": {"terminal": False}},
           "labels": {"containerd.io/gc.ref.content.l.0": "sha256:abc", "a.b": "c"}}
    assert match_dict(env, ['topic~="/tasks/"'])
    assert match_dict(env, ["topic~=^/tasks/,namespace==default"])
    assert match_dict(env, ["event.container_id==c1"])
    assert match_dict(env, ["event.exit_status==0"])
    assert match_dict(env, ["event.io.terminal==false"])
    assert match_dict(env, ["event.io"])  # a present mapping counts as present
    assert not match_dict(env, ["event.pid"])
    assert match_dict(env, ['labels."containerd.io/gc.ref.content.l.0"==sha256:abc'])
    assert match_dict(env, ["labels.a.b==c"])  # the rest of the path joined with dots
    assert not match_dict(env, ["topic~=^/images/"])
    assert match_dict({"v": None}, ["v!=x"]) and not match_dict({"v": None}, ["v"])


def test_custom_adaptor() -> None:
    seen: list[list[str]] = []

    def adaptor(path: list[str]) -> tuple[str, bool]:
        seen.append(path)
        return ("yes", True) if path == ["x", "y z"] else ("", False)

    assert parse(['x."y z"==yes']).match(adaptor)
    assert seen == [["x", "y z"]]
