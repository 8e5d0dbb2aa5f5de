"""The plugin registry: typed registrations, ordering by requirements, lazy initialisation, status.

pluggy discovers plugin modules (entry-point group ``pyctr.plugins``) and validates their hooks; each
module answers :func:`~pyctr.hookspecs.pyctr_plugin_registrations` with :class:`Registration` records.
The :class:`Registry` here orders the records by what they require, refuses duplicates, cycles and
missing requirements with errors naming the plugins, and initialises each plugin on first use with an
:class:`InitContext`.  The outcome of every initialisation is kept as a :class:`PluginStatus`:
``ok``, ``skipped`` (the plugin raised :class:`SkipPlugin`, with its reason) or ``error``.
"""

from __future__ import annotations

import enum
import logging
import os
import platform
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errdefs import FailedPrecondition, InvalidArgument, NotFound, PyctrError

if TYPE_CHECKING:
    import pluggy

    from .config import Config

log = logging.getLogger("pyctr.registry")
# pyctr is a library too: its loggers stay silent unless the application configures logging.
logging.getLogger("pyctr").addHandler(logging.NullHandler())

ENTRY_POINT_GROUP = "pyctr.plugins"


class PluginType(enum.StrEnum):
    """The kinds of plugin the core knows.  Third parties may use other strings too."""

    METADATA = "metadata"
    CONTENT = "content"
    SNAPSHOT = "snapshot"
    DIFF = "diff"
    IMAGES = "images"
    DISTRIBUTION = "distribution"
    RUNTIME = "runtime"
    METRICS = "metrics"
    EVENTS = "events"
    GC = "gc"
    LEASES = "leases"
    NETWORK = "network"
    SERVICE = "service"


class SkipPlugin(PyctrError):
    """Raised by a plugin's init function when it cannot run here (the reason is shown as-is)."""

    code = "skipped"


def _never(ctx: InitContext) -> Any:
    raise FailedPrecondition("this plugin failed to load")


def host_platform() -> str:
    """The host's platform as ``os/arch[/variant]`` in OCI spelling (``linux/amd64``)."""
    machine = platform.machine().lower()
    arch = {
        "x86_64": "amd64",
        "amd64": "amd64",
        "aarch64": "arm64",
        "arm64": "arm64",
        "armv7l": "arm/v7",
        "armv6l": "arm/v6",
        "i686": "386",
        "i386": "386",
        "ppc64le": "ppc64le",
        "s390x": "s390x",
        "riscv64": "riscv64",
    }.get(machine, machine)
    return f"{platform.system().lower()}/{arch}"


@dataclass(frozen=True)
class Registration:
    """What a plugin declares about itself.

    :param type: the plugin's kind (a :class:`PluginType` or any string).
    :param id: a unique dotted id, ``<vendor>.<type>.<name>`` by convention (``pyctr.snapshot.overlayfs``).
    :param init: called once with an :class:`InitContext`; returns the plugin's instance.
    :param requires: kinds (``"content"``) or exact plugins (``"snapshot/pyctr.snapshot.native"``) that
        must be initialised first; ``"*"`` means after every other plugin.
    :param config: the default configuration (a flat or nested mapping of TOML-compatible values).
    :param platforms: platforms supported, ``os/arch``; empty means any.
    :param description: one line for ``pyctr plugins ls --detailed``.
    """

    type: str
    id: str
    init: Callable[[InitContext], Any]
    requires: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    platforms: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", str(self.type))
        object.__setattr__(self, "requires", tuple(str(r) for r in self.requires))

    @property
    def name(self) -> str:
        """The short name: the last component of the id (``overlayfs``)."""
        return self.id.rsplit(".", 1)[-1]

    def platform_list(self) -> list[str]:
        return list(self.platforms) or [host_platform()]


class Status(enum.StrEnum):
    PENDING = "pending"
    OK = "ok"
    SKIPPED = "skipped"
    ERROR = "error"
    DISABLED = "disabled"


@dataclass
class PluginStatus:
    registration: Registration
    status: Status = Status.PENDING
    message: str = ""
    instance: Any = None
    config: dict[str, Any] = field(default_factory=dict)


class InitContext:
    """What a plugin's init function receives.

    :ivar root: the plugin's persistent directory, ``<root>/<plugin id>`` (created on demand).
    :ivar state: the plugin's runtime directory, ``<state>/<plugin id>`` (created on demand).
    :ivar config: the plugin's configuration: its defaults merged with ``[plugins."<id>"]``.
    :ivar registration: the plugin's own registration.
    """

    def __init__(self, registry: Registry, reg: Registration, config: dict[str, Any]) -> None:
        self._registry = registry
        self.registration = reg
        self.config = config
        self.root = Path(registry.root) / reg.id
        self.state = Path(registry.state) / reg.id
        self.global_root = Path(registry.root)
        self.global_state = Path(registry.state)
        self.global_config = registry.config

    @property
    def registry(self) -> Registry:
        return self._registry

    def get(self, type_: str) -> Any:
        """The single initialised plugin of ``type_`` (error if none or several are ok)."""
        return self._registry.get(type_)

    def get_all(self, type_: str) -> dict[str, Any]:
        """Every initialised plugin of ``type_``, by short name; skipped and failed ones are left out."""
        return self._registry.get_all(type_)

    def get_by_id(self, plugin_id: str) -> Any:
        return self._registry.get_by_id(plugin_id)

    @property
    def events(self) -> Any:
        """The process's event exchange (:class:`pyctr.events.exchange.Exchange`): plugins publish
        ``exchange.publish(ns, topic, payload)`` and subscribe ``exchange.subscribe(filters)``."""
        return self._registry.events


class Registry:
    """Orders registrations, initialises plugins lazily and records their status.

    Thread-safe: plugins are initialised once, under a re-entrant lock.
    """

    def __init__(self, config: Config, plugin_manager: pluggy.PluginManager | None = None) -> None:
        self.config = config
        self.root = config.root
        self.state = config.state
        self._regs: dict[str, Registration] = {}
        self._status: dict[str, PluginStatus] = {}
        self._order: list[str] | None = None
        self._initialised: list[str] = []  # ids in the order their init ran, for close()
        self._lock = threading.RLock()
        self.pm = plugin_manager
        self.events_source: Callable[[], Any] | None = None

    @property
    def events(self) -> Any:
        """The event exchange of the engine that owns this registry (a private one when standalone)."""
        if self.events_source is None:
            from .events.exchange import Exchange

            ex = Exchange(self.pm)
            self.events_source = lambda: ex
        return self.events_source()

    # -- registration --------------------------------------------------------------------------

    def register(self, reg: Registration) -> None:
        if not reg.type or not reg.id:
            raise InvalidArgument(f"plugin registration without a type or id: {reg!r}")
        if reg.id in self._regs:
            raise FailedPrecondition(f"plugin {reg.id!r} is registered twice")
        for req in reg.requires:
            if req == reg.type:
                raise InvalidArgument(f"plugin {reg.id!r} requires its own type {req!r}")
        if "*" in reg.requires and len(reg.requires) > 1:
            raise InvalidArgument(f"plugin {reg.id!r} mixes '*' with other requirements")
        self._regs[reg.id] = reg
        status = PluginStatus(reg)
        if reg.id in self.config.disabled_plugins:
            status.status = Status.DISABLED
            status.message = "disabled in configuration"
        self._status[reg.id] = status
        self._order = None

    def register_all(self, regs: Iterable[Registration]) -> None:
        for reg in regs:
            self.register(reg)

    def load_from_plugin_manager(self) -> None:
        """Ask every module known to the plugin manager for its registrations."""
        if self.pm is None:
            return
        for regs in self.pm.hook.pyctr_plugin_registrations():
            self.register_all(regs or [])
        for name, message in LOAD_ERRORS.items():
            if name not in self._regs:
                reg = Registration(type="unknown", id=name, init=_never)
                self._regs[name] = reg
                self._status[name] = PluginStatus(reg, Status.ERROR, message)
                self._order = None

    # -- ordering ------------------------------------------------------------------------------

    def registrations(self) -> list[Registration]:
        return [self._regs[i] for i in self.order()]

    def _deps(self, reg: Registration) -> list[str]:
        out: list[str] = []
        for req in reg.requires:
            if req == "*":
                out.extend(i for i, r in self._regs.items() if i != reg.id and "*" not in r.requires)
                continue
            if "/" in req:
                type_, _, pid = req.partition("/")
                target = self._regs.get(pid)
                if target is None or target.type != type_:
                    raise NotFound(f"plugin {reg.id!r} requires {req!r}, which is not registered")
                out.append(pid)
            else:
                matches = [i for i, r in self._regs.items() if r.type == req]
                if not matches:
                    raise NotFound(f"plugin {reg.id!r} requires a {req!r} plugin, and none is registered")
                out.extend(matches)
        return out

    def order(self) -> list[str]:
        """Plugin ids in initialisation order (requirements first, then registration order)."""
        with self._lock:
            if self._order is not None:
                return self._order
            order: list[str] = []
            state: dict[str, int] = {}  # 1 visiting, 2 done

            def visit(pid: str, path: list[str]) -> None:
                st = state.get(pid)
                if st == 2:
                    return
                if st == 1:
                    cycle = [*path[path.index(pid):], pid]
                    raise FailedPrecondition("plugin requirements form a cycle: " + " -> ".join(cycle))
                state[pid] = 1
                try:
                    deps = self._deps(self._regs[pid])
                except NotFound:
                    deps = []  # reported as this plugin's error status when it is initialised
                for dep in deps:
                    visit(dep, [*path, pid])
                state[pid] = 2
                order.append(pid)

            for pid in self._regs:
                visit(pid, [])
            self._order = order
            return order

    # -- initialisation ------------------------------------------------------------------------

    def _init(self, pid: str, chain: tuple[str, ...] = ()) -> PluginStatus:
        status = self._status[pid]
        if status.status != Status.PENDING:
            return status
        reg = status.registration
        if pid in chain:
            raise FailedPrecondition("plugin requirements form a cycle: " + " -> ".join([*chain, pid]))
        try:
            deps = self._deps(reg)
        except PyctrError as e:
            status.status, status.message = Status.ERROR, str(e)
            return status
        for dep in deps:
            dst = self._init(dep, (*chain, pid))
            explicit = any(r == f"{self._regs[dep].type}/{dep}" for r in reg.requires)
            if dst.status != Status.OK and explicit:
                status.status = Status.ERROR
                status.message = f"required plugin {dep} is {dst.status}: {dst.message}"
                return status
        for req in reg.requires:
            if req != "*" and "/" not in req and not any(
                self._status[d].status == Status.OK for d in deps if self._regs[d].type == req
            ):
                status.status = Status.ERROR
                status.message = f"no {req} plugin is available (required by {pid})"
                return status
        plats = reg.platforms
        if plats and host_platform() not in plats and not any(
            host_platform().startswith(p.rstrip("*")) for p in plats
        ):
            status.status = Status.SKIPPED
            status.message = f"platform {host_platform()} not supported (plugin supports {', '.join(plats)})"
            return status
        try:
            # a bad [plugins."<id>"] table (unknown key, wrong type) fails this plugin, naming the key
            cfg = self.config.plugin_config(reg)
            status.config = cfg
            status.instance = reg.init(InitContext(self, reg, cfg))
            status.status = Status.OK
            self._initialised.append(pid)
        except SkipPlugin as e:
            status.status, status.message = Status.SKIPPED, str(e)
            log.info("skip loading plugin %s: %s", pid, e)
        except Exception as e:  # one failing plugin must not take the others down
            status.status, status.message = Status.ERROR, f"{type(e).__name__}: {e}" if not isinstance(
                e, PyctrError) else str(e)
            log.warning("failed to load plugin %s: %s", pid, status.message, exc_info=log.isEnabledFor(10))
        if status.status != Status.OK and pid in self.config.required_plugins:
            raise FailedPrecondition(f"required plugin {pid} did not load: {status.message}")
        return status

    def init_all(self) -> list[PluginStatus]:
        """Initialise every plugin (in order) and return their statuses."""
        with self._lock:
            for pid in self.order():
                self._init(pid)
            return [self._status[p] for p in self.order()]

    def status(self, plugin_id: str) -> PluginStatus:
        with self._lock:
            if plugin_id not in self._status:
                raise NotFound(f"no plugin with id {plugin_id!r}")
            return self._init(plugin_id)

    # -- lookups -------------------------------------------------------------------------------

    def ids_of_type(self, type_: str) -> list[str]:
        return [i for i in self.order() if self._regs[i].type == type_]

    def get_all(self, type_: str) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {}
            for pid in self.ids_of_type(type_):
                st = self._init(pid)
                if st.status == Status.OK:
                    out[st.registration.name] = st.instance
            return out

    def get(self, type_: str) -> Any:
        with self._lock:
            ids = self.ids_of_type(type_)
            if not ids:
                raise NotFound(f"no {type_} plugin is registered")
            ok = [self._init(i) for i in ids]
            good = [s for s in ok if s.status == Status.OK]
            if len(good) == 1:
                return good[0].instance
            if not good:
                why = "; ".join(f"{s.registration.id}: {s.status} {s.message}".strip() for s in ok)
                raise FailedPrecondition(f"no {type_} plugin is available ({why})")
            raise FailedPrecondition(
                f"several {type_} plugins are loaded ({', '.join(s.registration.id for s in good)}); name one"
            )

    def get_by_id(self, plugin_id: str) -> Any:
        st = self.status(plugin_id)
        if st.status != Status.OK:
            raise FailedPrecondition(f"plugin {plugin_id} is {st.status}: {st.message}")
        return st.instance

    def get_named(self, type_: str, name: str) -> Any:
        """The plugin of ``type_`` whose short name or full id is ``name``."""
        for pid in self.ids_of_type(type_):
            reg = self._regs[pid]
            if name in (reg.name, reg.id):
                return self.get_by_id(pid)
        known = ", ".join(self._regs[p].name for p in self.ids_of_type(type_)) or "none"
        raise NotFound(f"no {type_} plugin named {name!r} (known: {known})")

    def close(self) -> None:
        """Close every initialised plugin that has a ``close()``, in reverse order of initialisation
        (a plugin closes before the plugins it used; one initialised while closing is closed too)."""
        with self._lock:
            closed: set[str] = set()
            while True:
                todo = [p for p in reversed(self._initialised) if p not in closed]
                if not todo:
                    break
                pid = todo[0]
                closed.add(pid)
                st = self._status[pid]
                if st.status == Status.OK and hasattr(st.instance, "close"):
                    try:
                        st.instance.close()
                    except Exception:
                        log.warning("closing plugin %s failed", pid, exc_info=True)


#: A plugin manager with every installed plugin, made ahead by a warm process (the run zygote) for the
#: next engine of this process to take (:func:`take_prebuilt_plugin_manager`).
PREBUILT_PLUGIN_MANAGER: list[pluggy.PluginManager] = []


def take_prebuilt_plugin_manager() -> pluggy.PluginManager | None:
    """The plugin manager made ahead for this process, once; None when there is none."""
    if PREBUILT_PLUGIN_MANAGER and not os.environ.get("PYCTR_NO_PLUGIN_AUTOLOAD"):
        return PREBUILT_PLUGIN_MANAGER.pop()
    return None


def make_plugin_manager(load_entrypoints: bool = True, blocked: Iterable[str] = ()) -> pluggy.PluginManager:
    """A pluggy manager with pyctr's hook specifications and, by default, every installed plugin."""
    import pluggy

    from . import hookspecs

    pm = pluggy.PluginManager("pyctr")
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    if load_entrypoints and not os.environ.get("PYCTR_NO_PLUGIN_AUTOLOAD"):
        load_entrypoints_into(pm)
    pm.check_pending()
    return pm


#: Entry points that failed to load, by entry-point name: shown by ``pyctr plugins ls`` as errors.
LOAD_ERRORS: dict[str, str] = {}


def load_entrypoints_into(pm: pluggy.PluginManager) -> None:
    """Load every module of the ``pyctr.plugins`` group; one that fails to import is recorded in
    :data:`LOAD_ERRORS` instead of stopping the others."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as e:
            LOAD_ERRORS[ep.name] = f"cannot load {ep.value}: {type(e).__name__}: {e}"
            log.info("plugin entry point %s failed to load: %s", ep.name, e)
            continue
        # A hook implementation with no specification (a misspelt hook name) would make pluggy's
        # check_pending() fail for every plugin: refuse this module alone.
        unknown = [c.name for c in pm.get_hookcallers(module) or [] if not c.has_spec()
                   and not all(i.optionalhook for i in c.get_hookimpls() if i.plugin is module)]
        if unknown:
            pm.unregister(module)
            LOAD_ERRORS[ep.name] = f"{ep.value} implements unknown hooks: {', '.join(sorted(unknown))}"
            log.info("plugin entry point %s refused: %s", ep.name, LOAD_ERRORS[ep.name])
