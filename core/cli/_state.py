"""Global options (``--root``, ``--state``, ``--address``, ``-n``, ``--config``, ``--debug``) and the
per-invocation state every command reaches through ``ctx.obj``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from ..client import Client


@dataclass
class GlobalOptions:
    root: str | None = None
    state: str | None = None
    address: str | None = None
    namespace: str = "default"
    config: str | None = None
    debug: bool = False
    _client: Any = field(default=None, repr=False)

    def client(self) -> Client:
        """The client for this invocation (embedded for now), made once."""
        if self._client is None:
            from ..client import Client

            address = self.address or self._daemon_address()
            self._client = Client(
                root=self.root, state=self.state, address=address, namespace=self.namespace,
                config=self.config,
            )
        return self._client  # type: ignore[no-any-return]

    def _daemon_address(self) -> str | None:
        """The daemon's socket when one answers there (the CLI then goes through it), else None.

        Looked for at ``<state>/pyctr.sock`` (``--state``, ``PYCTR_STATE``, or the default state).
        """
        import socket

        from ..config import DEFAULT_STATE

        path = os.path.join(self.state or DEFAULT_STATE, "pyctr.sock")
        if not os.path.exists(path):
            return None
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(0.5)
        try:
            s.connect(path)
        except OSError:
            return None
        finally:
            s.close()
        return path

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def global_callback(
    ctx: typer.Context,
    root: Annotated[str | None, typer.Option(
        "--root", envvar="PYCTR_ROOT", help="Persistent data directory [default: /var/lib/pyctr].")] = None,
    state: Annotated[str | None, typer.Option("--state", envvar="PYCTR_STATE",
                                              help="Runtime state directory [default: /run/pyctr].")] = None,
    address: Annotated[str | None, typer.Option("--address", "-a", envvar="PYCTR_ADDRESS",
                                                help="The daemon's socket; forces remote mode.")] = None,
    namespace: Annotated[str, typer.Option("--namespace", "-n", envvar="PYCTR_NAMESPACE",
                                           help="Namespace to work in.")] = "default",
    config: Annotated[str | None, typer.Option(
        "--config", "-c", envvar="PYCTR_CONFIG",
        help="Configuration file [default: /etc/pyctr/config.toml].")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    opts = GlobalOptions(root=root, state=state, address=address, namespace=namespace, config=config,
                         debug=debug)
    import logging

    if debug:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
        os.environ["PYCTR_DEBUG"] = "1"
    else:
        # Configuration problems that are not errors (a section for a plugin that is not installed)
        # are still worth a line on stderr.
        cfg_log = logging.getLogger("pyctr.config")
        if not cfg_log.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("pyctr: warning: %(message)s"))
            handler.setLevel(logging.WARNING)
            cfg_log.addHandler(handler)
    ctx.obj = opts
    ctx.call_on_close(opts.close)


def opts(ctx: typer.Context) -> GlobalOptions:
    """The global options from any (sub)command's context."""
    root = ctx.find_root()
    obj = root.obj
    assert isinstance(obj, GlobalOptions)
    return obj
