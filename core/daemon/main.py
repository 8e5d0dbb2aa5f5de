"""``pyctrd``: load the plugins once and serve pyctr's API on a unix socket.

Start-up: read the configuration, take the daemon locks (one daemon per root and per socket), load
every plugin through the registry, tell plugins the daemon has started (``pyctr_daemon_started``:
the runtime reconnects to live shims, the GC timer starts), then serve.  SIGTERM or SIGINT stops
accepting, lets requests in flight finish, and closes cleanly; containers keep running in their shims.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import sys
import threading
from typing import Annotated, Any

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
log = logging.getLogger("pyctr.daemon")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "warn": logging.WARNING,
           "error": logging.ERROR}


def _lock(path: str, what: str) -> int:
    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            other = os.pread(fd, 32, 0).decode().strip() or "?"
        except OSError:
            other = "?"
        os.close(fd)
        from ..errdefs import FailedPrecondition

        raise FailedPrecondition(f"another pyctrd (pid {other}) already serves {what}; stop it first") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@app.command()
def serve(
    config: Annotated[str | None, typer.Option("--config", "-c", envvar="PYCTR_CONFIG",
                                               help="Configuration file [default: /etc/pyctr/config.toml].")] = None,
    root: Annotated[str | None, typer.Option("--root", envvar="PYCTR_ROOT",
                                             help="Persistent data directory [default: /var/lib/pyctr].")] = None,
    state: Annotated[str | None, typer.Option("--state", envvar="PYCTR_STATE",
                                              help="Runtime state directory [default: /run/pyctr].")] = None,
    address: Annotated[str | None, typer.Option("--address", "-a",
                                                help="Unix socket to serve on [default: <state>/pyctr.sock]."
                                                )] = None,
    metrics_address: Annotated[str | None, typer.Option(
        "--metrics-address", help="HOST:PORT to serve Prometheus metrics at /v1/metrics (overrides "
                                  "[metrics] address; empty turns it off).")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
) -> None:
    """pyctrd: serve pyctr's API (namespaces, content, images, distribution, snapshots, diff,
    containers, tasks, events, leases, gc, introspection, version, health) on a unix socket, with the
    plugins loaded once for every client.  Containers keep running when the daemon stops."""
    level = _LEVELS.get(log_level.lower())
    if level is None:
        print(f"pyctrd: invalid --log-level {log_level!r} (debug, info, warning, error)", file=sys.stderr)
        raise typer.Exit(2)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..errdefs import PyctrError

    try:
        code = _run(config, root, state, address, metrics_address)
    except PyctrError as e:
        print(f"pyctrd: {e}", file=sys.stderr)
        raise typer.Exit(e.exit_code) from None
    raise typer.Exit(code)


def _run(config_path: str | None, root: str | None, state: str | None, address: str | None,
         metrics_address: str | None) -> int:
    from .. import __version__
    from .. import config as _config
    from ..engine import Engine
    from ..rpc.server import RootService, RPCServer

    cfg = _config.load(config_path, root=root, state=state)
    addr = os.path.abspath(address or cfg.daemon.get("address") or os.path.join(cfg.state, "pyctr.sock"))
    if metrics_address is not None:
        cfg.metrics["address"] = metrics_address
    os.makedirs(cfg.root, mode=0o711, exist_ok=True)
    os.makedirs(cfg.state, mode=0o711, exist_ok=True)
    locks = [_lock(os.path.join(cfg.root, "pyctrd.lock"), f"root {cfg.root}"),
             _lock(addr + ".lock", f"socket {addr}")]
    engine = Engine(cfg)
    statuses = engine.plugin_statuses()
    for st in statuses:
        lvl = logging.INFO if st.status.value in ("ok", "disabled", "skipped") else logging.WARNING
        log.log(lvl, "plugin %s (%s): %s%s", st.registration.id, st.registration.type, st.status.value,
                f" ({st.message})" if st.message else "")
    info: dict[str, Any] = {"root": cfg.root, "state": cfg.state, "address": addr}
    server = RPCServer(RootService(engine, info), addr)
    engine.rpc_server = server  # type: ignore[attr-defined]
    server.listen()
    try:
        engine.pm.hook.pyctr_daemon_started(engine=engine)
    except Exception:
        log.warning("a pyctr_daemon_started hook failed", exc_info=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("received %s: shutting down", signal.Signals(signum).name)
        stop.set()
        threading.Thread(target=server.shutdown, name="shutdown", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("pyctrd %s serving on %s (root %s, state %s)", __version__, addr, cfg.root, cfg.state)
    try:
        server.serve_forever()
    finally:
        server.shutdown(grace=10.0)
        try:
            engine.pm.hook.pyctr_daemon_stopping(engine=engine)
        except Exception:
            log.warning("a pyctr_daemon_stopping hook failed", exc_info=True)
        engine.close()
        for fd in locks:
            with contextlib.suppress(OSError):
                os.close(fd)
        log.info("pyctrd stopped")
    return 0


def main() -> None:
    app()
