"""The plugin registry: ordering by requirements, cycles, missing requirements, failing, skipped and
disabled plugins, duplicates, lookups, configuration and closing; and ``pyctr plugins ls``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pyctr.config import Config
from pyctr.errdefs import FailedPrecondition, InvalidArgument, NotFound
from pyctr.registry import InitContext, Registration, Registry, SkipPlugin, Status, host_platform

Init = Callable[[InitContext], Any]


def make(tmp_path: Path, **cfg: Any) -> Registry:
    return Registry(Config(root=str(tmp_path / "root"), state=str(tmp_path / "state"), **cfg))


def recorder(log: list[str], name: str, value: Any = None) -> Init:
    def init(ctx: InitContext) -> Any:
        log.append(name)
        return value if value is not None else {"name": name}

    return init


def reg(type_: str, id_: str, init: Init, *requires: str, **kw: Any) -> Registration:
    return Registration(type=type_, id=id_, init=init, requires=requires, **kw)


# -- ordering ---------------------------------------------------------------------------------------


def test_requirements_come_first_then_registration_order(tmp_path: Path) -> None:
    log: list[str] = []
    r = make(tmp_path)
    r.register_all([
        reg("service", "t.service.api", recorder(log, "api"), "metadata", "snapshot"),
        reg("metadata", "t.metadata.db", recorder(log, "db"), "content"),
        reg("snapshot", "t.snapshot.b", recorder(log, "snap-b")),
        reg("content", "t.content.local", recorder(log, "content")),
        reg("snapshot", "t.snapshot.a", recorder(log, "snap-a")),
        reg("events", "t.events.last", recorder(log, "last"), "*"),
    ])
    assert r.order() == ["t.content.local", "t.metadata.db", "t.snapshot.b", "t.snapshot.a", "t.service.api",
                         "t.events.last"]
    statuses = r.init_all()
    assert [s.status for s in statuses] == [Status.OK] * 6
    assert log == ["content", "db", "snap-b", "snap-a", "api", "last"]


def test_lazy_initialisation_only_initialises_what_is_needed(tmp_path: Path) -> None:
    log: list[str] = []
    r = make(tmp_path)
    r.register_all([
        reg("content", "t.content.local", recorder(log, "content")),
        reg("metadata", "t.metadata.db", recorder(log, "db"), "content"),
        reg("runtime", "t.runtime.heavy", recorder(log, "runtime")),
    ])
    assert r.get("metadata") == {"name": "db"}
    assert log == ["content", "db"]
    r.get("metadata")
    assert log == ["content", "db"]  # once only


def test_explicit_requirement_by_id(tmp_path: Path) -> None:
    log: list[str] = []
    r = make(tmp_path)
    r.register_all([
        reg("service", "t.service.x", recorder(log, "x"), "snapshot/t.snapshot.b"),
        reg("snapshot", "t.snapshot.a", recorder(log, "a")),
        reg("snapshot", "t.snapshot.b", recorder(log, "b")),
    ])
    assert r.order() == ["t.snapshot.b", "t.service.x", "t.snapshot.a"]


def test_cycle_is_refused_naming_the_plugins(tmp_path: Path) -> None:
    r = make(tmp_path)
    r.register_all([
        reg("a", "t.a.one", recorder([], "one"), "b"),
        reg("b", "t.b.two", recorder([], "two"), "c"),
        reg("c", "t.c.three", recorder([], "three"), "a"),
    ])
    cycle = r"cycle: t\.a\.one -> t\.b\.two -> t\.c\.three -> t\.a\.one"
    with pytest.raises(FailedPrecondition, match=cycle):
        r.order()


# -- failures ---------------------------------------------------------------------------------------


def test_missing_requirement_is_that_plugins_error(tmp_path: Path) -> None:
    r = make(tmp_path)
    r.register_all([
        reg("service", "t.service.orphan", recorder([], "orphan"), "nothing"),
        reg("content", "t.content.local", recorder([], "content")),
        reg("service", "t.service.byid", recorder([], "byid"), "content/t.content.missing"),
    ])
    st = {s.registration.id: s for s in r.init_all()}
    assert st["t.service.orphan"].status == Status.ERROR
    assert "requires a 'nothing' plugin" in st["t.service.orphan"].message
    assert st["t.service.byid"].status == Status.ERROR
    assert "t.content.missing" in st["t.service.byid"].message
    assert st["t.content.local"].status == Status.OK


def test_failing_plugin_does_not_take_the_others_down(tmp_path: Path) -> None:
    def boom(ctx: InitContext) -> Any:
        raise RuntimeError("disk on fire")

    log: list[str] = []
    r = make(tmp_path)
    r.register_all([
        reg("snapshot", "t.snapshot.broken", boom),
        reg("snapshot", "t.snapshot.fine", recorder(log, "fine")),
        reg("service", "t.service.user", recorder(log, "user"), "snapshot"),
        reg("service", "t.service.strict", recorder(log, "strict"), "snapshot/t.snapshot.broken"),
        reg("content", "t.content.other", recorder(log, "other")),
    ])
    st = {s.registration.id: s for s in r.init_all()}
    assert st["t.snapshot.broken"].status == Status.ERROR
    assert st["t.snapshot.broken"].message == "RuntimeError: disk on fire"
    assert st["t.snapshot.fine"].status == Status.OK
    assert st["t.service.user"].status == Status.OK  # one snapshotter of the type is enough
    assert st["t.service.strict"].status == Status.ERROR
    assert "t.snapshot.broken" in st["t.service.strict"].message
    assert st["t.content.other"].status == Status.OK
    assert r.get_all("snapshot") == {"fine": {"name": "fine"}}
    assert r.get("snapshot") == {"name": "fine"}
    with pytest.raises(FailedPrecondition, match="disk on fire"):
        r.get_by_id("t.snapshot.broken")


def test_a_requirement_of_which_no_plugin_loaded(tmp_path: Path) -> None:
    def skip(ctx: InitContext) -> Any:
        raise SkipPlugin("no zfs here")

    r = make(tmp_path)
    r.register_all([reg("snapshot", "t.snapshot.zfs", skip), reg("service", "t.service.s", recorder([], "s"),
                                                                   "snapshot")])
    st = {s.registration.id: s for s in r.init_all()}
    assert (st["t.snapshot.zfs"].status, st["t.snapshot.zfs"].message) == (Status.SKIPPED, "no zfs here")
    assert st["t.service.s"].status == Status.ERROR
    assert "no snapshot plugin is available" in st["t.service.s"].message
    with pytest.raises(FailedPrecondition, match="no zfs here"):
        r.get("snapshot")


def test_required_plugin_that_fails_is_fatal(tmp_path: Path) -> None:
    def boom(ctx: InitContext) -> Any:
        raise OSError("nope")

    r = make(tmp_path, required_plugins=["t.content.must"])
    r.register(reg("content", "t.content.must", boom))
    with pytest.raises(FailedPrecondition,
                       match=r"required plugin t\.content\.must did not load: OSError: nope"):
        r.init_all()


def test_disabled_plugin_is_never_initialised(tmp_path: Path) -> None:
    log: list[str] = []
    r = make(tmp_path, disabled_plugins=["t.snapshot.off"])
    r.register_all([reg("snapshot", "t.snapshot.off", recorder(log, "off")),
                    reg("snapshot", "t.snapshot.on", recorder(log, "on"))])
    st = {s.registration.id: s for s in r.init_all()}
    assert st["t.snapshot.off"].status == Status.DISABLED
    assert log == ["on"]
    assert r.get("snapshot") == {"name": "on"}
    with pytest.raises(FailedPrecondition, match="disabled"):
        r.get_by_id("t.snapshot.off")


def test_unsupported_platform_is_skipped(tmp_path: Path) -> None:
    r = make(tmp_path)
    r.register_all([reg("snapshot", "t.snapshot.win", recorder([], "w"), platforms=("windows/amd64",)),
                    reg("snapshot", "t.snapshot.here", recorder([], "h"), platforms=(host_platform(),)),
                    reg("snapshot", "t.snapshot.anyarch", recorder([], "a"), platforms=("linux/*",))])
    st = {s.registration.id: s.status for s in r.init_all()}
    assert st == {"t.snapshot.win": Status.SKIPPED, "t.snapshot.here": Status.OK,
                  "t.snapshot.anyarch": Status.OK}


# -- registration checks ----------------------------------------------------------------------------


def test_duplicates_and_bad_registrations_are_refused(tmp_path: Path) -> None:
    r = make(tmp_path)
    r.register(reg("content", "t.content.a", recorder([], "a")))
    with pytest.raises(FailedPrecondition, match="registered twice"):
        r.register(reg("snapshot", "t.content.a", recorder([], "b")))
    with pytest.raises(InvalidArgument, match="its own type"):
        r.register(reg("content", "t.content.b", recorder([], "b"), "content"))
    with pytest.raises(InvalidArgument, match=r"mixes '\*'"):
        r.register(reg("service", "t.service.c", recorder([], "c"), "*", "content"))
    with pytest.raises(InvalidArgument):
        r.register(reg("", "t.x", recorder([], "x")))


def test_several_plugins_of_one_type_need_a_name(tmp_path: Path) -> None:
    r = make(tmp_path)
    r.register_all([reg("snapshot", "t.snapshot.a", recorder([], "a")),
                    reg("snapshot", "t.snapshot.b", recorder([], "b"))])
    with pytest.raises(FailedPrecondition, match="several snapshot plugins"):
        r.get("snapshot")
    assert r.get_named("snapshot", "b") == {"name": "b"}
    assert r.get_named("snapshot", "t.snapshot.a") == {"name": "a"}
    with pytest.raises(NotFound, match="known: a, b"):
        r.get_named("snapshot", "zfs")
    with pytest.raises(NotFound):
        r.get("runtime")


# -- context, configuration, closing ----------------------------------------------------------------


def test_init_context_gives_dirs_merged_config_and_lookups(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def init(ctx: InitContext) -> Any:
        seen.update(root=ctx.root, state=ctx.state, config=ctx.config, content=ctx.get("content"))
        return "svc"

    cfg = Config(root=str(tmp_path / "root"), state=str(tmp_path / "state"),
                 plugins={"t.service.s": {"workers": 8, "nested": {"b": True}}})
    r = Registry(cfg)
    r.register_all([reg("content", "t.content.c", recorder([], "c")),
                    reg("service", "t.service.s", init, "content",
                        config={"workers": 2, "name": "x", "nested": {"a": 1, "b": False}})])
    assert r.get("service") == "svc"
    assert seen["root"] == tmp_path / "root" / "t.service.s"
    assert seen["state"] == tmp_path / "state" / "t.service.s"
    assert seen["config"] == {"workers": 8, "name": "x", "nested": {"a": 1, "b": True}}
    assert seen["content"] == {"name": "c"}


def test_bad_plugin_config_fails_that_plugin_naming_the_key(tmp_path: Path) -> None:
    cfg = Config(root=str(tmp_path / "r"), state=str(tmp_path / "s"),
                 plugins={"t.service.s": {"wrokers": 8}, "t.service.t": {"workers": "many"}})
    r = Registry(cfg)
    r.register_all([reg("service", "t.service.s", recorder([], "s"), config={"workers": 2}),
                    reg("service", "t.service.t", recorder([], "t"), config={"workers": 2}),
                    reg("content", "t.content.ok", recorder([], "ok"))])
    st = {s.registration.id: s for s in r.init_all()}
    assert st["t.service.s"].status == Status.ERROR and "'wrokers'" in st["t.service.s"].message
    assert st["t.service.t"].status == Status.ERROR and "must be int" in st["t.service.t"].message
    assert st["t.content.ok"].status == Status.OK


def test_close_runs_in_reverse_order_of_initialisation(tmp_path: Path) -> None:
    closed: list[str] = []

    class Closer:
        def __init__(self, name: str) -> None:
            self.name = name

        def close(self) -> None:
            closed.append(self.name)

    r = make(tmp_path)
    r.register_all([reg("content", "t.content.c", lambda ctx: Closer("c")),
                    reg("metadata", "t.metadata.m", lambda ctx: Closer("m"), "content"),
                    reg("snapshot", "t.snapshot.s", lambda ctx: Closer("s")),
                    reg("runtime", "t.runtime.never", lambda ctx: Closer("never"))])
    r.get("snapshot")
    r.get("metadata")
    r.close()
    assert closed == ["m", "c", "s"]


# -- the CLI ----------------------------------------------------------------------------------------


def test_plugins_ls_lists_every_builtin_with_status(pyctr_cli: Any) -> None:
    p = pyctr_cli("plugins", "ls", check=True)
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["TYPE", "ID", "PLATFORMS", "STATUS"]
    rows = {line.split()[1]: line.split() for line in lines[1:]}
    for pid in ("pyctr.metadata.sqlite", "pyctr.content.local", "pyctr.gc.scheduler"):
        assert rows[pid][-1] == "ok", p.stdout
    assert rows["pyctr.gc.scheduler"][0] == "gc"
    q = pyctr_cli("plugins", "ls", "-q", check=True)
    assert set(q.stdout.split()) == set(rows)


def test_plugins_ls_detailed_and_disabled(pyctr_cli: Any, tmp_root: Any) -> None:
    tmp_root.config.write_text('disabled_plugins = ["pyctr.snapshot.native"]\n'
                               '[plugins."pyctr.gc.scheduler"]\ninterval = 60.0\n')
    p = pyctr_cli("plugins", "ls", check=True)
    rows = {line.split()[1]: line.split()[-1] for line in p.stdout.splitlines()[1:]}
    assert rows["pyctr.snapshot.native"] == "disabled"
    d = pyctr_cli("plugins", "ls", "--detailed", check=True)
    block = next(b for b in d.stdout.split("\n\n") if "ID:         pyctr.gc.scheduler" in b)
    assert "Type:       gc" in block
    assert "Requires:   metadata" in block
    assert "Status:     ok" in block
    assert "interval = 60.0" in block
    native = next(b for b in d.stdout.split("\n\n") if "ID:         pyctr.snapshot.native" in b)
    assert "disabled in configuration" in native


def test_plugins_ls_shows_a_bad_config_key_as_that_plugins_error(pyctr_cli: Any, tmp_root: Any) -> None:
    tmp_root.config.write_text('[plugins."pyctr.gc.scheduler"]\nintervall = 60\n')
    p = pyctr_cli("plugins", "ls", "-d", check=True)
    block = next(b for b in p.stdout.split("\n\n") if "ID:         pyctr.gc.scheduler" in b)
    assert "Status:     error" in block and "'intervall'" in block
