"""Configuration: loading, validation (unknown keys and wrong types name the key and the file), the
default configuration and the merged dump, and how the CLI reports configuration problems."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pyctr.config import CONFIG_VERSION, Config, dump, dump_default, from_dict, load
from pyctr.errdefs import FailedPrecondition, InvalidArgument
from pyctr.registry import InitContext, Registration


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return str(p)


def regs() -> list[Registration]:
    def init(ctx: InitContext) -> Any:
        return None

    return [
        Registration(type="gc", id="t.gc.s", init=init,
                     config={"interval": 300.0, "on": True, "name": "x\ny \"q\"", "tags": ["a"],
                             "nested": {"depth": 1}, "free": {}}),
        Registration(type="content", id="t.content.c", init=init),
    ]


def test_missing_default_file_means_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYCTR_CONFIG", raising=False)
    monkeypatch.setattr("pyctr.config.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    cfg = load(None, root=str(tmp_path / "r"), state="relative/state")
    assert cfg.root == str(tmp_path / "r")
    assert Path(cfg.state).is_absolute() and cfg.state.endswith("relative/state")
    assert cfg.plugins == {} and cfg.disabled_plugins == [] and cfg.version == CONFIG_VERSION


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="does not exist"):
        load(str(tmp_path / "nope.toml"))


def test_env_var_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYCTR_CONFIG", write(tmp_path, 'root = "/srv/pyctr"\n'))
    assert load().root == "/srv/pyctr"


def test_file_values_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, 'version = 1\nroot = "/a"\nstate = "/b"\ndisabled_plugins = ["x.y.z"]\n'
                           '[daemon]\naddress = "/b/s.sock"\n[plugins."t.gc.s"]\ninterval = 10\n')
    cfg = load(path, root="/override")
    assert (cfg.root, cfg.state, cfg.disabled_plugins) == ("/override", "/b", ["x.y.z"])
    assert cfg.address == "/b/s.sock"
    assert cfg.plugin_config(regs()[0])["interval"] == 10
    assert cfg.path == path


@pytest.mark.parametrize(("text", "message"), [
    ("bogus = 1\n", "unknown key 'bogus' in "),
    ("[daemon]\nadress = 'x'\n", r"unknown key 'adress' in \[daemon\] in "),
    ("daemon = 'x'\n", r"\[daemon\] in .* must be a table"),
    ("version = 2\n", "configuration version 2"),
    ("version = true\n", "configuration version True"),
    ("root = ''\n", "'root' in .* must be a non-empty path"),
    ("disabled_plugins = 'x'\n", "must be a list of plugin ids"),
    ("plugins = 3\n", r"\[plugins\] in .* must hold one table per plugin id"),
    ("[metrics]\naddress = 1338\n", r"\[metrics\]\.address in .* must be str, not int"),
    ("root = [\n", "is not valid TOML"),
])
def test_bad_files_are_refused_naming_key_and_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InvalidArgument, match=message) as e:
        load(path)
    assert path in str(e.value)


def test_plugin_sections_are_checked_against_the_plugins_defaults() -> None:
    gc = regs()[0]
    cfg = from_dict({"plugins": {"t.gc.s": {"interval": 1, "nested": {"depth": 3}, "free": {"any": "key"}}}})
    merged = cfg.plugin_config(gc)
    assert merged["interval"] == 1 and merged["nested"] == {"depth": 3} and merged["free"] == {"any": "key"}
    assert merged["on"] is True and gc.config["interval"] == 300.0  # defaults untouched
    for bad, message in [({"intervall": 1}, "unknown key 'intervall'"),
                         ({"interval": "soon"}, "must be float, not str"),
                         ({"on": 1}, "must be bool, not int"),
                         ({"nested": {"deep": 1}}, "unknown key 'deep'"),
                         ({"nested": 5}, "must be a table")]:
        with pytest.raises(InvalidArgument, match=message):
            from_dict({"plugins": {"t.gc.s": bad}}).plugin_config(gc)


def test_unknown_plugin_ids_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    cfg = from_dict({"plugins": {"not.installed": {}}, "disabled_plugins": ["also.missing", "t.gc.s"]})
    with caplog.at_level(logging.WARNING, logger="pyctr.config"):
        unknown = cfg.warn_unknown_plugins({"t.gc.s", "t.content.c"})
    assert sorted(unknown) == ["also.missing", "not.installed"]
    assert "not.installed" in caplog.text and "also.missing" in caplog.text


def test_default_dump_round_trips() -> None:
    text = dump_default(regs())
    data = tomllib.loads(text)
    assert data["version"] == CONFIG_VERSION and data["root"] == "/var/lib/pyctr"
    assert data["plugins"]["t.gc.s"] == {"interval": 300.0, "on": True, "name": "x\ny \"q\"", "tags": ["a"],
                                         "nested": {"depth": 1}, "free": {}}
    assert data["plugins"]["t.content.c"] == {}
    cfg = from_dict(data)
    assert cfg.plugin_config(regs()[0]) == regs()[0].config


def test_merged_dump_shows_the_values_in_effect() -> None:
    cfg = from_dict({"root": "/x", "plugins": {"t.gc.s": {"interval": 5.0}, "gone": {"a": 1}}})
    data = tomllib.loads(dump(cfg, regs()))
    assert data["root"] == "/x"
    assert data["plugins"]["t.gc.s"]["interval"] == 5.0
    assert "gone" not in data["plugins"]
    assert '# [plugins."gone"] is configured, but no such plugin is installed' in dump(cfg, regs())


def test_required_plugin_that_is_not_installed_stops_the_engine(tmp_path: Path) -> None:
    from pyctr.engine import Engine

    cfg = Config(root=str(tmp_path / "r"), state=str(tmp_path / "s"), required_plugins=["acme.nothing"])
    with pytest.raises(FailedPrecondition, match=r"required plugin acme\.nothing is not installed"):
        Engine(cfg)


# -- through the CLI --------------------------------------------------------------------------------


def test_cli_config_default_is_complete_and_valid(pyctr_cli: Any) -> None:
    p = pyctr_cli("config", "default", check=True)
    data = tomllib.loads(p.stdout)
    for pid in ("pyctr.metadata.sqlite", "pyctr.content.local", "pyctr.gc.scheduler"):
        assert pid in data["plugins"]
    assert data["plugins"]["pyctr.gc.scheduler"]["interval"] == 300.0
    from_dict(data)  # what it prints is a valid configuration


def test_cli_config_dump_merges_the_file(pyctr_cli: Any, tmp_root: Any) -> None:
    tmp_root.config.write_text('[plugins."pyctr.gc.scheduler"]\ninterval = 42.0\n')
    data = tomllib.loads(pyctr_cli("config", "dump", check=True).stdout)
    assert data["root"] == str(tmp_root.root)
    assert data["plugins"]["pyctr.gc.scheduler"]["interval"] == 42.0
    assert data["plugins"]["pyctr.gc.scheduler"]["pause_threshold"] == 0.02


def test_cli_reports_a_bad_file_in_one_line(pyctr_cli: Any, tmp_root: Any) -> None:
    tmp_root.config.write_text("[daemon]\nadress = 'x'\n")
    p = pyctr_cli("namespaces", "ls")
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        f"pyctr: unknown key 'adress' in [daemon] in {tmp_root.config} (known keys: address, log_level)"]
    assert "Traceback" not in p.stderr


def test_cli_warns_about_sections_for_missing_plugins(pyctr_cli: Any, tmp_root: Any) -> None:
    tmp_root.config.write_text('[plugins."acme.snapshot.zfs"]\npool = "tank"\n')
    p = pyctr_cli("namespaces", "ls", check=True)
    assert "pyctr: warning: configuration has a section for plugin 'acme.snapshot.zfs'" in p.stderr
