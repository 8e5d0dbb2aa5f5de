"""pyctr's TOML configuration: defaults, loading, validation, and each plugin's section.

The file (``/etc/pyctr/config.toml`` by default, ``--config`` or ``PYCTR_CONFIG`` otherwise) holds::

    version = 1
    root = "/var/lib/pyctr"          # persistent data
    state = "/run/pyctr"             # runtime state (sockets, shims' state)
    disabled_plugins = []            # plugin ids never loaded
    required_plugins = []            # plugin ids whose failure is fatal

    [daemon]
    address = "/run/pyctr/pyctr.sock"

    [metrics]
    address = ""                     # "127.0.0.1:1338" serves /v1/metrics; empty turns it off

    [plugins."pyctr.snapshot.overlayfs"]
    mount_options = []

Unknown keys are errors that name the key and the file, so a typo is never silently ignored; a
``[plugins."X"]`` table for a plugin that is not installed is reported as a warning.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errdefs import InvalidArgument

if TYPE_CHECKING:
    from .registry import Registration

log = logging.getLogger("pyctr.config")

DEFAULT_CONFIG_PATH = "/etc/pyctr/config.toml"
DEFAULT_ROOT = "/var/lib/pyctr"
DEFAULT_STATE = "/run/pyctr"
DEFAULT_ADDRESS = "/run/pyctr/pyctr.sock"
CONFIG_VERSION = 1

_SECTIONS: dict[str, dict[str, Any]] = {
    "daemon": {"address": "", "log_level": "info"},
    "metrics": {"address": ""},
}
_TOP = {"version", "root", "state", "disabled_plugins", "required_plugins", "plugins", *_SECTIONS}


@dataclass
class Config:
    """The loaded configuration.  ``plugins`` holds the raw ``[plugins."ID"]`` tables."""

    root: str = DEFAULT_ROOT
    state: str = DEFAULT_STATE
    version: int = CONFIG_VERSION
    disabled_plugins: list[str] = field(default_factory=list)
    required_plugins: list[str] = field(default_factory=list)
    daemon: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(_SECTIONS["daemon"]))
    metrics: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(_SECTIONS["metrics"]))
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: str | None = None

    @property
    def address(self) -> str:
        return str(self.daemon.get("address") or os.path.join(self.state, "pyctr.sock"))

    def plugin_config(self, reg: Registration) -> dict[str, Any]:
        """The plugin's defaults with its ``[plugins."ID"]`` table merged over them, checked."""
        defaults = copy.deepcopy(dict(reg.config))
        user = self.plugins.get(reg.id, {})
        return merge_checked(defaults, user, f'[plugins."{reg.id}"]', self.path)

    def warn_unknown_plugins(self, known_ids: set[str]) -> list[str]:
        """Warn about plugin ids the configuration names that are not installed; return them."""
        unknown = sorted(set(self.plugins) - known_ids)
        for pid in unknown:
            log.warning("configuration has a section for plugin %r, which is not installed", pid)
        for pid in self.disabled_plugins:
            if pid not in known_ids:
                log.warning("disabled_plugins names %r, which is not installed", pid)
                unknown.append(pid)
        return unknown


def merge_checked(defaults: dict[str, Any], user: Mapping[str, Any], where: str,
                  path: str | None) -> dict[str, Any]:
    """Merge ``user`` over ``defaults``; unknown keys and wrongly typed values are errors."""
    src = f" in {path}" if path else ""
    if not isinstance(user, Mapping):
        raise InvalidArgument(f"{where}{src} must be a table, not {type(user).__name__} ({user!r})")
    for key, value in user.items():
        if key not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise InvalidArgument(f"unknown key {key!r} in {where}{src} (known keys: {known})")
        default = defaults[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise InvalidArgument(f"{where}.{key}{src} must be a table")
            if default:
                defaults[key] = merge_checked(default, value, f"{where}.{key}", path)
            else:  # an empty default table accepts any keys (free-form maps)
                defaults[key] = dict(value)
            continue
        if default is not None and not _same_kind(default, value):
            raise InvalidArgument(
                f"{where}.{key}{src} must be {type(default).__name__}, not {type(value).__name__} ({value!r})"
            )
        defaults[key] = value
    return defaults


def _same_kind(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def load(path: str | None = None, *, root: str | None = None, state: str | None = None) -> Config:
    """Load the configuration.

    ``path`` is ``--config``; when ``None`` the ``PYCTR_CONFIG`` environment variable is used, then the
    default path (a missing default file means all defaults; a missing explicit file is an error).
    ``root`` and ``state`` override the file.
    """
    explicit = path or os.environ.get("PYCTR_CONFIG")
    cfg_path = explicit or DEFAULT_CONFIG_PATH
    data: dict[str, Any] = {}
    if os.path.exists(cfg_path):
        try:
            with open(cfg_path, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise InvalidArgument(f"configuration file {cfg_path} is not valid TOML: {e}") from None
        except OSError as e:
            raise InvalidArgument(f"cannot read configuration file {cfg_path}: {e.strerror}") from None
    elif explicit:
        raise InvalidArgument(f"configuration file {cfg_path} does not exist")
    cfg = from_dict(data, path=cfg_path if data else None)
    if root:
        cfg.root = root
    if state:
        cfg.state = state
    cfg.root = os.path.abspath(cfg.root)
    cfg.state = os.path.abspath(cfg.state)
    return cfg


def from_dict(data: Mapping[str, Any], path: str | None = None) -> Config:
    src = f" in {path}" if path else ""
    for key in data:
        if key not in _TOP:
            raise InvalidArgument(f"unknown key {key!r}{src} (known keys: {', '.join(sorted(_TOP))})")
    cfg = Config(path=path)
    version = data.get("version", CONFIG_VERSION)
    if isinstance(version, bool) or version != CONFIG_VERSION:
        raise InvalidArgument(
            f"configuration version {version!r}{src} is not supported (want {CONFIG_VERSION})")
    for key in ("root", "state"):
        if key in data:
            if not isinstance(data[key], str) or not data[key]:
                raise InvalidArgument(f"{key!r}{src} must be a non-empty path")
            setattr(cfg, key, data[key])
    for key in ("disabled_plugins", "required_plugins"):
        if key in data:
            value = data[key]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InvalidArgument(f"{key!r}{src} must be a list of plugin ids")
            setattr(cfg, key, list(value))
    for section, defaults in _SECTIONS.items():
        merged = merge_checked(copy.deepcopy(defaults), data.get(section, {}), f"[{section}]", path)
        setattr(cfg, section, merged)
    plugins = data.get("plugins", {})
    if not isinstance(plugins, dict) or not all(isinstance(v, dict) for v in plugins.values()):
        raise InvalidArgument(f'[plugins]{src} must hold one table per plugin id, [plugins."ID"]')
    cfg.plugins = {k: dict(v) for k, v in plugins.items()}
    return cfg


def dump_default(registrations: list[Registration], root: str = DEFAULT_ROOT,
                 state: str = DEFAULT_STATE) -> str:
    """The full default configuration as TOML text, every installed plugin's section included."""
    cfg = Config(root=root, state=state)
    cfg.daemon["address"] = DEFAULT_ADDRESS
    return dump(cfg, registrations, merged=False)


def dump(cfg: Config, registrations: list[Registration], *, merged: bool = True) -> str:
    """``cfg`` as TOML text: its top-level values and sections, and every installed plugin's section
    (its defaults with the file's ``[plugins."ID"]`` table merged over them when ``merged``).  Plugins
    that failed to load (no known defaults) are left out; a section for a plugin that is not installed
    is kept, commented."""
    lines = [
        f"version = {CONFIG_VERSION}",
        f"root = {_toml(cfg.root)}",
        f"state = {_toml(cfg.state)}",
        f"disabled_plugins = {_toml(cfg.disabled_plugins)}",
        f"required_plugins = {_toml(cfg.required_plugins)}",
        "",
    ]
    for section in _SECTIONS:
        lines.append(f"[{section}]")
        lines.extend(_table_lines(dict(getattr(cfg, section)), section))
        lines.append("")
    known = set()
    for reg in registrations:
        if reg.init is _never_loaded():
            continue
        known.add(reg.id)
        values = cfg.plugin_config(reg) if merged else copy.deepcopy(dict(reg.config))
        lines.append(f"[plugins.{_toml(reg.id)}]")
        lines.extend(_table_lines(values, f"plugins.{_toml(reg.id)}"))
        lines.append("")
    for pid in sorted(set(cfg.plugins) - known) if merged else []:
        lines.append(f"# [plugins.{_toml(pid)}] is configured, but no such plugin is installed")
        lines.append("")
    return "\n".join(lines)


def _never_loaded() -> Any:
    from .registry import _never

    return _never


def _table_lines(d: Mapping[str, Any], prefix: str) -> list[str]:
    plain = [f"{_key(k)} = {_toml(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            plain.append("")
            plain.append(f"[{prefix}.{_key(k)}]")
            plain.extend(_table_lines(v, f"{prefix}.{_key(k)}"))
    return plain


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")


def _key(k: str) -> str:
    return k if _BARE_KEY.match(k) else _toml(k)


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a valid TOML basic string, control characters escaped
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if v is None:
        return '""'
    raise InvalidArgument(f"cannot write {v!r} as TOML")


def ensure_dir(path: str | Path, mode: int = 0o711) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=mode)
    return p
