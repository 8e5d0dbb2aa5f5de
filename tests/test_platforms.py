"""Platform parsing, normalisation and matching (containerd's ``platforms`` rules)."""

from __future__ import annotations

import platform as _platform

import pytest
from pyctr import platforms as plat
from pyctr.errdefs import InvalidArgument


@pytest.mark.parametrize(("given", "want"), [
    ("linux/amd64", "linux/amd64"),
    ("linux/x86_64", "linux/amd64"),
    ("linux/x86-64", "linux/amd64"),
    ("linux/amd64/v1", "linux/amd64"),
    ("linux/amd64/v3", "linux/amd64/v3"),
    ("linux/aarch64", "linux/arm64"),
    ("linux/arm64/v8", "linux/arm64"),
    ("linux/arm64/8", "linux/arm64"),
    ("linux/armhf", "linux/arm/v7"),
    ("linux/armel", "linux/arm/v6"),
    ("linux/arm", "linux/arm/v7"),
    ("linux/arm/7", "linux/arm/v7"),
    ("linux/arm/6", "linux/arm/v6"),
    ("linux/i386", "linux/386"),
    ("Linux/AMD64", "linux/amd64"),
    ("windows/amd64", "windows/amd64"),
    ("arm64", "linux/arm64"),
    ("macos/arm64", "darwin/arm64"),
])
def test_parse_and_format(given: str, want: str) -> None:
    p = plat.parse(given)
    assert plat.format_platform(p) == want
    assert plat.format_platform(plat.parse(want)) == want


def test_lone_os_gets_host_arch() -> None:
    assert plat.parse("linux") == plat.host()


@pytest.mark.parametrize("bad", ["", "linux/", "/amd64", "linux/amd64/v1/x", "plan10/amd64", "linux/nope",
                                 "linux/am d64", "nope"])
def test_invalid(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        plat.parse(bad)


def test_host() -> None:
    h = plat.host()
    assert h.os == "linux"
    if _platform.machine() == "x86_64":
        assert plat.host_string() == "linux/amd64"


def _m(s: str) -> plat.Platform:
    return plat.parse(s)


def test_only_arm_variants_fall_back_downwards() -> None:
    m = plat.only("linux/arm/v7")
    assert m.match(_m("linux/arm/v7")) and m.match(_m("linux/arm/v6")) and m.match(_m("linux/arm/v5"))
    assert not m.match(_m("linux/arm/v8")) and not m.match(_m("linux/arm64"))
    assert m.less(_m("linux/arm/v7"), _m("linux/arm/v6")) and m.less(_m("linux/arm/v6"), _m("linux/arm/v5"))
    m6 = plat.only("linux/arm/v6")
    assert not m6.match(_m("linux/arm/v7"))
    # arm64 runs 32-bit arm too, preferring its own
    a64 = plat.only("linux/arm64")
    for ok in ("linux/arm64", "linux/arm64/v8", "linux/arm/v8", "linux/arm/v7", "linux/arm/v5"):
        assert a64.match(_m(ok)), ok
    assert a64.less(_m("linux/arm64"), _m("linux/arm/v7"))
    assert not a64.match(_m("linux/amd64"))
    # a descriptor platform without variant for arm means v7
    assert m.match(plat.Platform("linux", "arm"))


def test_only_amd64_levels_and_386() -> None:
    m = plat.only("linux/amd64/v3")
    for ok in ("linux/amd64/v3", "linux/amd64/v2", "linux/amd64", "linux/386"):
        assert m.match(_m(ok)), ok
    assert not m.match(_m("linux/amd64/v4"))
    assert not plat.only("linux/amd64").match(_m("linux/amd64/v2"))
    assert not plat.only("linux/amd64").match(_m("windows/amd64"))


def test_matcher_for_cli_flags() -> None:
    assert isinstance(plat.matcher_for(None, True), plat.AnyMatcher)
    default = plat.matcher_for(None)
    assert default.match(plat.host())
    several = plat.matcher_for(["linux/arm64", "linux/amd64"])
    assert several.match(_m("linux/amd64")) and several.match(_m("linux/arm/v7"))
    assert several.less(_m("linux/arm64"), _m("linux/amd64"))
    assert not several.match(_m("linux/s390x"))


def test_oci_dict_round_trip() -> None:
    p = plat.Platform.from_oci({"os": "linux", "architecture": "arm", "variant": "v7"})
    assert plat.Platform.from_oci(p.to_oci()) == p
    assert plat.from_any({"os": "linux", "architecture": "aarch64"}) == _m("linux/arm64")
